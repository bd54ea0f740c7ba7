/**
 * ReplicaManifest over the disks' segment block blobs (layout: shared/domain/extents.ts): one
 * Get Block List (committed) per segment, a few in parallel. A segment's committed block list
 * names one content-addressed block per 4 MiB extent, so 256 GiB of disk cost 256 small
 * requests and no disk bytes. A missing segment was never written: zeros.
 *
 * Extents with writes still in the disk's delta log (docs/disk-log.md) are the exception: their
 * blocks are older than the disk, so those extents are read (extents plus log) and hashed.
 */
import type { ContainerClient } from '@azure/storage-blob';
import { EXTENTS_PER_SEGMENT, contentBlockId, extentRange, segmentBlobName, segmentInfo, zeroBlockId } from '../domain/extents';
import { DiskStoreError, type DiskRef } from '../ports/disk-store';
import type { ReplicaManifest } from '../ports/replica-manifest';
import { BlobDiskStore } from './blob-disk-store';
import { statusOf } from './rest';

const LIST_CONCURRENCY = 8;

export class BlobReplicaManifest implements ReplicaManifest {
  private readonly disks: BlobDiskStore;

  constructor(private readonly container: ContainerClient) {
    this.disks = new BlobDiskStore(container);
  }

  async blockIds(disk: DiskRef, sizeBytes: number, from: number, count: number): Promise<string[]> {
    if (count <= 0) return [];
    extentRange(from + count - 1, sizeBytes); // validates the window
    const out: string[] = new Array<string>(count);
    const first = Math.floor(from / EXTENTS_PER_SEGMENT);
    const last = Math.floor((from + count - 1) / EXTENTS_PER_SEGMENT);
    const segments = Array.from({ length: last - first + 1 }, (_, i) => first + i);
    // The log first: a compaction between the two reads then leaves newer blocks, never stale ones.
    const logged = await this.disks.loggedExtents(disk, sizeBytes, new Set(segments));
    let next = 0;
    const worker = async () => {
      while (next < segments.length) {
        const segment = segments[next++] as number;
        const ids = await this.segmentIds(disk, sizeBytes, segment);
        const info = segmentInfo(segment, sizeBytes);
        for (let i = 0; i < ids.length; i++) {
          const index = info.firstExtent + i;
          if (index >= from && index < from + count) out[index - from] = ids[i] as string;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(LIST_CONCURRENCY, segments.length) }, worker));
    for (const index of logged) {
      if (index < from || index >= from + count) continue;
      const range = extentRange(index, sizeBytes);
      out[index - from] = contentBlockId(await this.disks.read(disk, sizeBytes, range.offset, range.length));
    }
    return out;
  }

  private async segmentIds(disk: DiskRef, sizeBytes: number, segment: number): Promise<string[]> {
    const info = segmentInfo(segment, sizeBytes);
    const lengths = Array.from({ length: info.extentCount }, (_, i) => extentRange(info.firstExtent + i, sizeBytes).length);
    const what = `reading the block list of ${disk.vmId}/${disk.diskId} segment ${segment}`;
    try {
      const blocks = (await this.container.getBlockBlobClient(segmentBlobName(disk.vmId, disk.diskId, segment)).getBlockList('committed')).committedBlocks ?? [];
      if (blocks.length !== lengths.length || blocks.some((b, i) => b.size !== lengths[i])) {
        throw new DiskStoreError('STORAGE_UNAVAILABLE', `${what}: the segment has ${blocks.length} blocks, expected ${lengths.length} extents; it was not written in Ferry's layout.`, false);
      }
      return blocks.map((b) => b.name);
    } catch (err) {
      if (err instanceof DiskStoreError) throw err;
      if (statusOf(err) === 404) return lengths.map((len) => zeroBlockId(len));
      const detail = err instanceof Error ? err.message.split('\n')[0] : String(err);
      throw new DiskStoreError('STORAGE_UNAVAILABLE', `${what}: storage failed (${statusOf(err) ?? 'no status'}: ${detail}); retry.`, true, { cause: err });
    }
  }
}
