/**
 * Which epoch a resync must use (docs/resync.md). Pure.
 *
 * While a VM is in `resync-required`, its row carries `resync: {epoch, requestedAt, reason}`:
 * the epoch in which the appliance sends the differing extents of every disk. It is set
 * - by POST .../resync: the highest disk epoch + 1 (asking again restarts in a fresh epoch);
 * - when a sequence gap moves the VM to `resync-required`: likewise;
 * - when a gap happens inside the resync epoch itself (a disk already in that epoch lost a
 *   batch): the resync restarts in the highest disk epoch + 1.
 * A gap a disk records in an epoch older than the resync's is ignored: that disk restarts in
 * the resync epoch anyway. Outside `resync-required` the field is dropped.
 */
import type { VmState } from './state-machine';

export type ResyncReason = 'requested' | 'sequence-gap';

export interface ResyncRecord {
  /** The epoch every disk's resync batches carry (sequences restart at 1). */
  epoch: number;
  /** ms since epoch. */
  requestedAt: number;
  reason: ResyncReason;
}

export interface ResyncDiskPosition {
  epoch: number;
  /** Set while the disk has a sequence gap in `epoch`. */
  missingSequence?: number;
}

/** The epoch after every disk's current one. */
export function nextEpoch(disks: readonly ResyncDiskPosition[]): number {
  return disks.reduce((max, d) => Math.max(max, d.epoch), 0) + 1;
}

/**
 * The `resync` record a VM row must carry after a change from `before` to `after` (both the
 * row's state and record), given its disks as of the change. `after.resync` differing from
 * `before.resync` means the change set it on purpose (POST .../resync): it is kept.
 */
export function maintainResync(
  before: { state: VmState; resync?: ResyncRecord | undefined },
  after: { state: VmState; resync?: ResyncRecord | undefined },
  disks: readonly ResyncDiskPosition[],
  now: number,
): ResyncRecord | undefined {
  if (after.state !== 'resync-required') return undefined;
  if (after.resync !== before.resync && after.resync !== undefined) return after.resync;
  const current = before.state === 'resync-required' ? before.resync : undefined;
  const gapAt = (from: number) => disks.some((d) => d.missingSequence !== undefined && d.epoch >= from);
  if (current === undefined) return { epoch: nextEpoch(disks), requestedAt: now, reason: gapAt(0) ? 'sequence-gap' : 'requested' };
  if (gapAt(current.epoch)) return { epoch: Math.max(current.epoch + 1, nextEpoch(disks)), requestedAt: now, reason: 'sequence-gap' };
  return current;
}
