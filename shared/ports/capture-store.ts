/**
 * CaptureStore: point-in-time captures of replicated disks (block blob snapshots in Azure;
 * copies in memory), the storage side of recovery points (docs/recovery-points.md).
 *
 * Contract (every implementation):
 * - `capture(disk, sizeBytes, tagId)` freezes the disk's current content under `tagId`.
 *   Idempotent: if the capture of that tag exists, it is left as it is and `alreadyCaptured`
 *   is true (a redelivered batch after a crash between capture and record lands here). The
 *   caller guarantees nothing writes the disk meanwhile (one session per disk).
 * - Its cost follows what changed since the disk's newest earlier capture, not the disk size:
 *   unchanged parts are shared with that capture.
 * - `extents` is the capture's hash manifest: per 4 MiB extent (shared/domain/extents.ts), its
 *   content block id and whether it is all zeros, without reading any disk bytes.
 * - `readExtent` reads one extent of a capture (an extent never written reads as zeros).
 * - `deleteCapture` forgets one capture; idempotent. Storage it shared with other captures
 *   stays until `collectGarbage`, which deletes what no remaining capture refers to and is at
 *   least `graceMs` old (a capture being taken right now is not yet a reference).
 * - Errors: `DiskStoreError` (shared/ports/disk-store.ts), retryable or not; a capture that
 *   does not exist is `CAPTURE_NOT_FOUND` (not retryable).
 */
import type { DiskRef } from './disk-store';

export interface CapturedExtent {
  extentIndex: number;
  /** contentBlockId of the extent's bytes (zeroBlockId for zeros). */
  blockId: string;
  zero: boolean;
}

export interface CaptureStats {
  alreadyCaptured: boolean;
  /** Segments frozen anew by this capture. */
  segmentsSnapshotted: number;
  /** Segments shared with the previous capture (unchanged since). */
  segmentsReused: number;
}

export interface CaptureStore {
  capture(disk: DiskRef, sizeBytes: number, tagId: number): Promise<CaptureStats>;
  hasCapture(disk: DiskRef, tagId: number): Promise<boolean>;
  extents(disk: DiskRef, sizeBytes: number, tagId: number): Promise<CapturedExtent[]>;
  readExtent(disk: DiskRef, sizeBytes: number, tagId: number, extentIndex: number): Promise<Buffer>;
  deleteCapture(disk: DiskRef, tagId: number): Promise<void>;
  collectGarbage(disk: DiskRef, graceMs: number): Promise<{ deleted: number }>;
}
