/**
 * Exactly-once in effect: what the apply function does with a batch, given what its disk
 * has applied (docs/wire-format.md, "Order, duplicates and epochs"). Service Bus delivers
 * at least once and, with one session per disk, in order; this decides duplicates, stale
 * epochs and gaps from the stored (epoch, appliedSequence) alone.
 */

export interface AppliedPosition {
  /** Epoch of the disk's replication as stored; 0 before anything was applied. */
  epoch: number;
  /** Newest applied sequence within `epoch`; 0 = none. */
  appliedSequence: number;
}

export type BatchDecision =
  /** The next batch: apply it, then store (epoch, sequence). */
  | { action: 'apply'; startsEpoch: boolean }
  /** Already applied (a redelivery): complete the message, change nothing. */
  | { action: 'duplicate' }
  /** From an epoch a resync has replaced: complete the message, change nothing. */
  | { action: 'stale-epoch' }
  /** Batches are missing before this one: record the gap (the VM needs a resync). */
  | { action: 'gap'; expectedSequence: number };

export function decideBatch(disk: AppliedPosition, batch: { epoch: number; sequence: number }): BatchDecision {
  if (batch.epoch < disk.epoch) return { action: 'stale-epoch' };
  if (batch.epoch > disk.epoch) {
    // A new epoch (first enable or a resync) must start at sequence 1.
    return batch.sequence === 1 ? { action: 'apply', startsEpoch: true } : { action: 'gap', expectedSequence: 1 };
  }
  if (batch.sequence <= disk.appliedSequence) return { action: 'duplicate' };
  if (batch.sequence === disk.appliedSequence + 1) return { action: 'apply', startsEpoch: false };
  return { action: 'gap', expectedSequence: disk.appliedSequence + 1 };
}
