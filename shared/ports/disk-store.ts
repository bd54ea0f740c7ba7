/**
 * DiskStore: where replicated disks live. The cloud side's only view of disk bytes.
 *
 * Contract (every implementation, Azure block blobs or memory, passes the same conformance
 * tests in test/integration/azure/disk-store.test.ts):
 * - A disk is a byte array of `sizeBytes` (a multiple of 512) that reads as zeros until written.
 * - `apply` writes a set of non-overlapping records (data at an offset, or zeros over a range).
 *   Writes are absolute, so applying the same records twice gives the same content: this is
 *   what makes redelivery after a crash converge (exactly once in effect). `apply` is NOT
 *   atomic across the whole disk; callers serialize applies per disk (one Service Bus session
 *   per disk) and record the applied sequence only after `apply` resolves.
 * - Concurrent writers to one disk are detected, not merged: the losing `apply` fails with a
 *   retryable `DiskStoreError` (`CONCURRENT_WRITE`), and the caller lets the message be
 *   redelivered.
 * - Errors: `DiskStoreError` with a `code` and `retryable`; anything the storage service
 *   throws that is not understood is wrapped as retryable `STORAGE_UNAVAILABLE`.
 */
import type { CaptureMarker, LogPosition } from '../domain/disk-log';
import type { BatchRecord } from '../domain/wire-format';

export interface DiskRef {
  vmId: string;
  diskId: string;
}

export interface ApplyStats {
  /** Extents rewritten (staged) by this apply. */
  extentsWritten: number;
  /** Extents that had to be read first because the records covered them only in part. */
  extentsRead: number;
  /** Bytes uploaded to storage. */
  bytesUploaded: number;
  /** Bytes downloaded from storage (read-modify-write). */
  bytesDownloaded: number;
  /** Storage objects (segments) whose block list was committed. */
  segmentsCommitted: number;
  /** Batches written together in this write (applyBatches), when more than one. */
  groupedBatches?: number;
  /** Bytes appended to the disk's delta log instead of rewriting extents (docs/disk-log.md). */
  logBytes?: number;
  /** Bytes in the disk's delta log after this write, waiting for compaction. */
  logPendingBytes?: number;
}

export interface ApplyOptions {
  /**
   * The position (epoch, sequence of the last batch) of what is being written. A store with a
   * delta log (docs/disk-log.md) needs it to order log entries; without it, it writes extents.
   */
  position?: LogPosition;
}

export interface CompactOptions {
  /** Per pass and segment, fold at most about this many bytes of the oldest entries. */
  maxBytes?: number;
  /** Repeat passes until the log is empty (before a recovery-point capture). */
  all?: boolean;
  /** Do nothing unless the log holds at least this many bytes (a duplicate request). */
  minBytes?: number;
  /** Fold only entries up to this position (a pending capture's tag). */
  upTo?: LogPosition;
  /** Run only if no other exclusive compaction of the disk is running (background compaction). */
  exclusive?: boolean;
}

export interface DiskLogState {
  /** Bytes in the delta log waiting for compaction. */
  pendingBytes: number;
  /** Recovery-point captures waiting for compaction, earliest first. */
  captures: CaptureMarker[];
}

export interface CompactStats {
  entriesFolded: number;
  bytesFolded: number;
  /** Bytes still in the log after this compaction. */
  remainingBytes: number;
  extentsWritten: number;
  segmentsCommitted: number;
  /** An exclusive compaction found another one running and did nothing. */
  skipped?: boolean;
}

export interface DiskStore {
  /** Makes the disk exist as all zeros; idempotent (an existing disk is left as it is). */
  create(disk: DiskRef, sizeBytes: number): Promise<void>;
  apply(disk: DiskRef, sizeBytes: number, records: readonly BatchRecord[], options?: ApplyOptions): Promise<ApplyStats>;
  /**
   * Applies several batches' records, in order, as one write: the same content as applying them
   * one after another, but each extent is read and rewritten once (random writes spread over
   * consecutive batches cost one rewrite per extent, not one per batch). Same idempotence.
   */
  applyBatches(disk: DiskRef, sizeBytes: number, batches: readonly (readonly BatchRecord[])[], options?: ApplyOptions): Promise<ApplyStats>;
  /**
   * Folds the disk's delta log (if the store keeps one) into its extents: at most about
   * `maxBytes` of the oldest entries per segment, or all of it when `all` is set (CompactOptions). Reads are the
   * same before and after; what changes is where the bytes live. Safe to run beside applies and
   * beside another compaction of the same disk (writes are ETag-guarded; a loser retries).
   * A store without a log has nothing to do.
   */
  compact?(disk: DiskRef, sizeBytes: number, options?: CompactOptions): Promise<CompactStats>;
  /** The delta log's size and pending captures (stores with a log). */
  logState?(disk: DiskRef): Promise<DiskLogState>;
  /**
   * Leaves a capture for the compactor (docs/disk-log.md, "Recovery points"): from now until
   * clearCapture, every write of the disk goes to the log and compaction stops at the marker.
   */
  markCapture?(disk: DiskRef, marker: CaptureMarker): Promise<void>;
  clearCapture?(disk: DiskRef, position: LogPosition): Promise<void>;
  /** Reads `length` bytes at `offset` (both inside the disk). */
  read(disk: DiskRef, sizeBytes: number, offset: number, length: number): Promise<Buffer>;
  /** Removes the disk and everything stored for it; idempotent. */
  delete(disk: DiskRef): Promise<void>;
}

export type DiskStoreErrorCode = 'CONCURRENT_WRITE' | 'STORAGE_UNAVAILABLE' | 'OUT_OF_BOUNDS' | 'INVALID_RECORDS' | 'CAPTURE_NOT_FOUND';

export class DiskStoreError extends Error {
  override readonly name = 'DiskStoreError';
  constructor(
    readonly code: DiskStoreErrorCode,
    message: string,
    readonly retryable: boolean,
    options: { cause?: unknown } = {},
  ) {
    super(message, options);
  }
}

export function isDiskStoreError(err: unknown): err is DiskStoreError {
  return err instanceof Error && err.name === 'DiskStoreError';
}
