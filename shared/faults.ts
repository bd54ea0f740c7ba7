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
 *   disk.log-appended      (sparse writes) one segment's log entry written, the others not yet
 *   disk.log-folded        (compaction) a segment's log folded into its extents, the entries not yet deleted
 *   apply.disk-written     every segment written, applied sequence not recorded
 *   capture.snapshotted    (tagged batches) changed segments snapshotted, capture manifest not written
 *   apply.captured         (tagged batches) capture manifest and row written, sequence not recorded
 *   apply.recorded         applied sequence recorded, VM state and staging blob not updated
 *   apply.done             everything done but the message not yet completed
 *
 * And in an operation (services/operations.ts):
 *   operation.disk-exported  one disk's VHD written and recorded, the others and the VM's state not yet
 */
import { appendFileSync } from 'node:fs';

export type FaultPoint =
  | 'apply.state-read'
  | 'apply.batch-opened'
  | 'disk.blocks-staged'
  | 'disk.segment-committed'
  | 'disk.log-appended'
  | 'disk.log-folded'
  | 'apply.disk-written'
  | 'capture.snapshotted'
  | 'apply.captured'
  | 'apply.recorded'
  | 'apply.done'
  | 'operation.disk-exported';

const armed = process.env.FERRY_FAULT_KILL_AT;
const journal = process.env.FERRY_FAULT_JOURNAL;

export function faultPoint(point: FaultPoint): void {
  if (armed === undefined || armed !== point) return;
  process.stderr.write(`FERRY_FAULT_KILL_AT=${point}: killing this process (crash-safety test)\n`);
  process.kill(process.pid, 'SIGKILL');
}

/**
 * The fault suite's observable of commits (test/faults): with `FERRY_FAULT_JOURNAL=<file>`,
 * every apply appends `applied <vmId>/<diskId> <epoch> <firstSeq> <lastSeq>` once its applied
 * sequence is recorded, so the suite can check that no batch was committed twice across
 * crashes, redeliveries and several hosts (O_APPEND: lines of concurrent hosts do not mix).
 * Unset (always, outside that suite) it costs one comparison.
 */
export function journalApplied(vmId: string, diskId: string, epoch: number, firstSeq: number, lastSeq: number): void {
  if (journal === undefined) return;
  appendFileSync(journal, `applied ${vmId}/${diskId} ${epoch} ${firstSeq} ${lastSeq}\n`);
}
