/**
 * Crash injection for the crash-safety tests (in the manner of FoundationDB's "buggify"):
 * `FERRY_FAULT_KILL_AT=<point>` makes the process kill itself with SIGKILL the first time it
 * reaches that point, so a test can crash an apply between any two of its steps and check that
 * redelivery converges. Unset (always, outside those tests) it costs one string comparison.
 *
 * Points, in the order an apply passes them:
 *   apply.state-read       state read and the batch judged, nothing fetched
 *   apply.batch-opened     batch fetched, authenticated and decoded, disk untouched
 *   disk.blocks-staged     a segment's blocks staged, its block list not committed
 *   disk.segment-committed one segment committed, the batch's other segments not yet
 *   apply.disk-written     every segment written, applied sequence not recorded
 *   capture.snapshotted    (tagged batches) changed segments snapshotted, capture manifest not written
 *   apply.captured         (tagged batches) capture manifest and row written, sequence not recorded
 *   apply.recorded         applied sequence recorded, VM state and staging blob not updated
 *   apply.done             everything done but the message not yet completed
 *
 * And in an operation (services/operations.ts):
 *   operation.disk-exported  one disk's VHD written and recorded, the others and the VM's state not yet
 */
export type FaultPoint =
  | 'apply.state-read'
  | 'apply.batch-opened'
  | 'disk.blocks-staged'
  | 'disk.segment-committed'
  | 'apply.disk-written'
  | 'capture.snapshotted'
  | 'apply.captured'
  | 'apply.recorded'
  | 'apply.done'
  | 'operation.disk-exported';

const armed = process.env.FERRY_FAULT_KILL_AT;

export function faultPoint(point: FaultPoint): void {
  if (armed === undefined || armed !== point) return;
  process.stderr.write(`FERRY_FAULT_KILL_AT=${point}: killing this process (crash-safety test)\n`);
  process.kill(process.pid, 'SIGKILL');
}
