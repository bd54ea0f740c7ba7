/**
 * Requests to fold a disk's delta log into its extents (docs/disk-log.md). The apply function
 * sends one when a disk's log passes COMPACT_TRIGGER_BYTES; the `compact-disks` function takes
 * them from the Service Bus queue `compactions`, whose sessions (`<vmId>/<diskId>`) keep one
 * compaction per disk at a time on any number of hosts. A duplicate request is harmless: it
 * finds the log already small and does nothing.
 */
export const COMPACTIONS_QUEUE = 'compactions';

/** Pending log bytes of a disk at which the apply function asks for a compaction. */
export const COMPACT_TRIGGER_BYTES = Number(process.env.FERRY_COMPACT_TRIGGER_MB ?? 512) * 1024 * 1024;

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
