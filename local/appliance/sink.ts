/**
 * Where the mobility agent hands its batches: the process server, in the same process
 * (`ferry replicate`) or over HTTPS (`ferry agent`). Both implement this port, so the agent
 * runs the same code either way.
 */
import type { PlainBatch } from './batching';
import type { OutboxStats } from './outbox';

export interface BatchSink {
  /** The sequence to continue from: one past the newest batch the sink accepted for the disk. */
  nextSequence(vmId: string, diskId: string, epoch: number): Promise<number>;
  /**
   * Hands over one batch. Calls `release` as soon as `plain.data` may be reused; resolves once
   * the batch is durably accepted (sealed and spooled). Batches of a disk may be submitted
   * before earlier ones resolve; the sink keeps their sequence order on the queue.
   */
  submit(plain: PlainBatch, release: () => void): Promise<void>;
  /** Flushes the spool of the VM to stable storage (before the agent saves its checkpoint). */
  sync(vmId: string): Promise<void>;
  stats(vmId: string): Promise<OutboxStats>;
  /**
   * Called when the agent goes back to its last checkpoint after the sink failed with
   * PROCESS_SERVER_RESTARTED: calls made from here on start afresh (calls begun before keep
   * failing, so nothing of the abandoned pass reaches the sink).
   */
  restart?(): void;
}
