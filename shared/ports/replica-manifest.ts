/**
 * ReplicaManifest: the hash manifest of a live replica disk, read without its bytes.
 *
 * Contract (every implementation):
 * - `blockIds(disk, sizeBytes, from, count)` returns the content block ids
 *   (shared/domain/extents.ts `contentBlockId`) of extents [from, from + count) of the disk as
 *   currently committed, in order; an extent never written has `zeroBlockId(its length)`.
 *   `from + count` must not pass the disk's last extent.
 * - It is a plain read: not atomic against a concurrent apply. Callers that need a
 *   consistent manifest compare the disk's applied position before and after
 *   (services/hashes.ts).
 * - Errors: `DiskStoreError` (shared/ports/disk-store.ts); a segment not written in Ferry's
 *   layout is a non-retryable `STORAGE_UNAVAILABLE`.
 */
import type { DiskRef } from './disk-store';

export interface ReplicaManifest {
  blockIds(disk: DiskRef, sizeBytes: number, from: number, count: number): Promise<string[]>;
}
