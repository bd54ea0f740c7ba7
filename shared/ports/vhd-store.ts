/**
 * VhdStore: where migrated disks are written as fixed VHDs (page blobs in containers
 * `test-migrated` and `migrated` in Azure; buffers in memory).
 *
 * Contract:
 * - `create(target, totalBytes)` makes a page blob of exactly `totalBytes` (a multiple of 512)
 *   that reads as zeros; if it exists with that size it is kept as it is (a resumed operation
 *   rewrites the same pages), with another size it is replaced.
 * - `writePages` writes at most 4 MiB (Azure's Put Page limit) at a 512-aligned offset.
 * - `url` is the blob's URL without any SAS or key: readable with the storage connection string.
 * - `deletePrefix` deletes every VHD of a container under a prefix; idempotent.
 */
export type VhdContainer = 'test-migrated' | 'migrated';

export interface VhdTarget {
  container: VhdContainer;
  /** Blob name, e.g. `<vmId>/<operationId>/<diskId>.vhd`. */
  name: string;
}

/** Azure: "The maximum size of a page write is 4 MiB." */
export const MAX_PAGE_WRITE_BYTES = 4 * 1024 * 1024;

export interface VhdStore {
  create(target: VhdTarget, totalBytes: number): Promise<void>;
  writePages(target: VhdTarget, offset: number, data: Uint8Array): Promise<void>;
  url(target: VhdTarget): string;
  deletePrefix(container: VhdContainer, prefix: string): Promise<{ deleted: number }>;
}
