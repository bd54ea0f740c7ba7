/**
 * Requests to fold a disk's delta log into its extents (docs/disk-log.md). The apply function
 * sends one when a disk's log passes COMPACT_TRIGGER_BYTES (and again at every further half
 * trigger of growth, see shouldRequestCompaction); the `compact-disks` function takes them from
 * the Service Bus queue `compactions`, whose sessions (`<vmId>/<diskId>`) keep one compaction
 * per disk at a time on any number of hosts, and asks again itself when it leaves a log above
 * the trigger. A duplicate request is harmless: it finds the log already small and does nothing.
 */
export const COMPACTIONS_QUEUE = 'compactions';

/** Pending log bytes of a disk at which the apply function asks for a compaction. */
export const COMPACT_TRIGGER_BYTES = Number(process.env.FERRY_COMPACT_TRIGGER_MB ?? 2048) * 1024 * 1024;

/**
 * Whether an apply that took a disk's log from `beforeBytes` to `afterBytes` asks for a
 * compaction: when the log crosses the trigger, and at every further half trigger it grows. Not
 * at every apply: under heavy churn that was one no-op request (a lease attempt) per apply
 * while a compaction ran; a running compaction asks again itself when it leaves a large log.
 */
export function shouldRequestCompaction(beforeBytes: number, afterBytes: number, triggerBytes = COMPACT_TRIGGER_BYTES): boolean {
  if (afterBytes < triggerBytes) return false;
  if (beforeBytes < triggerBytes) return true;
  const step = triggerBytes / 2;
  return Math.floor(afterBytes / step) > Math.floor(beforeBytes / step);
}

export interface CompactionRequest {
  vmId: string;
  diskId: string;
}

export interface CompactionQueue {
  /** Asks now, or after `delayMs` (a scheduled message). */
  request(message: CompactionRequest, delayMs?: number): Promise<void>;
}

export function compactionSessionId(message: CompactionRequest): string {
  return `${message.vmId}/${message.diskId}`;
}
