/**
 * DiskStore over Azure block blobs (layout and block ids: shared/domain/extents.ts).
 *
 * Blocks are content-addressed: a block's id is derived from the SHA-256 of its bytes. So
 * - staging the same extent twice (a redelivered batch, a retry after a crash) stages the same
 *   id with the same bytes, and an extent whose new content equals its committed content is not
 *   uploaded at all: re-applying a batch is a no-op in storage, not just in effect;
 * - every all-zero extent of a segment refers to one staged zero block, so a new segment is
 *   "committed as all zeros at once by referencing one staged zero block many times";
 * - a stale uncommitted block left by a crashed attempt can never be mistaken for other bytes.
 * Each segment commit is guarded by the ETag read with its block list (or If-None-Match * for a
 * new segment), so two writers racing on one disk cannot silently lose a write: the loser gets
 * 412 and a retryable CONCURRENT_WRITE.
 *
 * Segments come into existence when first written; a missing segment reads as zeros. A 32 TiB
 * disk therefore costs nothing until data arrives, and creating a disk writes one small
 * manifest blob.
 */
import type { BlockBlobClient, ContainerClient } from '@azure/storage-blob';
import { isDomainError } from '../domain/domain-error';
import {
  EXTENT_BYTES,
  EXTENTS_PER_SEGMENT,
  SEGMENT_BYTES,
  composeExtent,
  contentBlockId,
  diskBlobPrefix,
  mergeExtentWrites,
  planExtentWrites,
  segmentBlobName,
  segmentInfo,
  zeroBlockId,
  type ExtentWrite,
} from '../domain/extents';
import type { BatchRecord } from '../domain/wire-format';
import { DiskStoreError, type ApplyStats, type DiskRef, type DiskStore } from '../ports/disk-store';
import { faultPoint } from '../faults';
import { statusOf, runLimited } from './rest';

const LAYOUT_VERSION = 1;
/** Parallel block uploads within one apply. */
const STAGE_CONCURRENCY = 4;

function wrap(err: unknown, what: string): DiskStoreError {
  if (err instanceof DiskStoreError) return err;
  const status = statusOf(err);
  if (status === 412 || status === 409) {
    return new DiskStoreError('CONCURRENT_WRITE', `${what}: another writer changed the disk at the same time (HTTP ${status}); retry.`, true, { cause: err });
  }
  const detail = err instanceof Error ? err.message.split('\n')[0] : String(err);
  return new DiskStoreError('STORAGE_UNAVAILABLE', `${what}: storage failed (${status ?? 'no status'}: ${detail}); retry.`, true, { cause: err });
}

export class BlobDiskStore implements DiskStore {
  constructor(private readonly container: ContainerClient) {}

  async create(disk: DiskRef, sizeBytes: number): Promise<void> {
    const manifest = this.container.getBlockBlobClient(`${diskBlobPrefix(disk.vmId, disk.diskId)}disk.json`);
    const body = JSON.stringify({ layoutVersion: LAYOUT_VERSION, sizeBytes, extentBytes: EXTENT_BYTES, segmentExtents: EXTENTS_PER_SEGMENT });
    try {
      await this.container.createIfNotExists();
      await manifest.upload(body, Buffer.byteLength(body), {
        conditions: { ifNoneMatch: '*' },
        blobHTTPHeaders: { blobContentType: 'application/json' },
      });
    } catch (err) {
      if (statusOf(err) === 409 || statusOf(err) === 412) return; // already created
      throw wrap(err, `creating disk ${disk.vmId}/${disk.diskId}`);
    }
  }

  apply(disk: DiskRef, sizeBytes: number, records: readonly BatchRecord[]): Promise<ApplyStats> {
    return this.applyBatches(disk, sizeBytes, [records]);
  }

  async applyBatches(disk: DiskRef, sizeBytes: number, batches: readonly (readonly BatchRecord[])[]): Promise<ApplyStats> {
    const stats: ApplyStats = { extentsWritten: 0, extentsRead: 0, bytesUploaded: 0, bytesDownloaded: 0, segmentsCommitted: 0 };
    let writes: ExtentWrite[];
    try {
      writes = mergeExtentWrites(batches.map((records) => planExtentWrites(records, sizeBytes)));
    } catch (err) {
      if (isDomainError(err)) throw new DiskStoreError('OUT_OF_BOUNDS', `Records do not fit the ${sizeBytes}-byte disk ${disk.vmId}/${disk.diskId}: ${err.message}`, false);
      throw err;
    }
    const bySegment = new Map<number, ExtentWrite[]>();
    for (const w of writes) {
      const list = bySegment.get(w.segment);
      if (list) list.push(w);
      else bySegment.set(w.segment, [w]);
    }
    for (const [segment, segmentWrites] of bySegment) await this.applySegment(disk, sizeBytes, segment, segmentWrites, stats);
    return stats;
  }

  private async applySegment(disk: DiskRef, sizeBytes: number, segment: number, writes: ExtentWrite[], stats: ApplyStats): Promise<void> {
    const blob = this.container.getBlockBlobClient(segmentBlobName(disk.vmId, disk.diskId, segment));
    const what = `applying to ${disk.vmId}/${disk.diskId} segment ${segment}`;
    const info = segmentInfo(segment, sizeBytes);
    const lengths = Array.from({ length: info.extentCount }, (_, i) => Math.min(EXTENT_BYTES, sizeBytes - (info.firstExtent + i) * EXTENT_BYTES));
    let ids: string[];
    let etag: string | undefined;
    try {
      const list = await blob.getBlockList('committed');
      etag = list.etag;
      const blocks = list.committedBlocks ?? [];
      if (blocks.length !== lengths.length || blocks.some((b, i) => b.size !== lengths[i])) {
        throw new DiskStoreError('STORAGE_UNAVAILABLE', `${what}: the segment has ${blocks.length} blocks, expected ${lengths.length} extents; it was not written by Ferry's layout ${LAYOUT_VERSION}.`, false);
      }
      ids = blocks.map((b) => b.name);
    } catch (err) {
      if (statusOf(err) !== 404) throw wrap(err, what);
      ids = lengths.map((len) => zeroBlockId(len)); // a segment never written reads as zeros
      etag = undefined;
    }

    // Compose and stage extent by extent, at most STAGE_CONCURRENCY at a time: memory holds a few
    // 4 MiB extents, never all the extents a large batch touches.
    const staged = new Set<string>();
    let uploaded = 0;
    try {
      await runLimited(writes, STAGE_CONCURRENCY, async (w) => {
        const currentId = ids[w.blockIndex] ?? zeroBlockId(w.extentLength);
        const content = await this.extentContent(blob, w, currentId, stats, what);
        const id = w.allZero ? zeroBlockId(w.extentLength) : contentBlockId(content);
        if (id === currentId) return; // unchanged: a redelivered batch lands here
        ids[w.blockIndex] = id;
        if (staged.has(id)) return;
        staged.add(id);
        await blob.stageBlock(id, content, content.length);
        uploaded += content.length;
      });
      if (etag === undefined) {
        // New segment: its untouched extents refer to the zero block(s), which must be staged too.
        for (const [i, len] of lengths.entries()) {
          const zid = zeroBlockId(len);
          if (ids[i] !== zid || staged.has(zid)) continue;
          staged.add(zid);
          await blob.stageBlock(zid, Buffer.alloc(len), len);
          uploaded += len;
        }
      }
    } catch (err) {
      throw wrap(err, what);
    }
    if (staged.size === 0) return;
    stats.extentsWritten += staged.size;
    stats.bytesUploaded += uploaded;
    faultPoint('disk.blocks-staged');
    try {
      await blob.commitBlockList(ids, { conditions: etag === undefined ? { ifNoneMatch: '*' } : { ifMatch: etag } });
    } catch (err) {
      throw wrap(err, what);
    }
    stats.segmentsCommitted++;
    faultPoint('disk.segment-committed');
  }

  /** The extent's new bytes: the write laid over its current content (read only when needed). */
  private async extentContent(blob: BlockBlobClient, w: ExtentWrite, currentId: string, stats: ApplyStats, what: string): Promise<Buffer> {
    if (w.allZero) return Buffer.alloc(w.extentLength);
    if (w.full || currentId === zeroBlockId(w.extentLength)) return composeExtent(w, null);
    let previous: Buffer;
    try {
      previous = await blob.downloadToBuffer(w.blockIndex * EXTENT_BYTES, w.extentLength);
    } catch (err) {
      throw wrap(err, what);
    }
    stats.extentsRead++;
    stats.bytesDownloaded += w.extentLength;
    return composeExtent(w, previous);
  }

  async read(disk: DiskRef, sizeBytes: number, offset: number, length: number): Promise<Buffer> {
    if (offset < 0 || length < 0 || offset + length > sizeBytes) {
      throw new DiskStoreError('OUT_OF_BOUNDS', `Read of ${length} bytes at ${offset} is outside the ${sizeBytes}-byte disk ${disk.vmId}/${disk.diskId}.`, false);
    }
    const out = Buffer.alloc(length);
    let pos = offset;
    while (pos < offset + length) {
      const segment = Math.floor(pos / SEGMENT_BYTES);
      const segStart = segment * SEGMENT_BYTES;
      const end = Math.min(offset + length, segStart + SEGMENT_BYTES, sizeBytes);
      const blob = this.container.getBlockBlobClient(segmentBlobName(disk.vmId, disk.diskId, segment));
      try {
        const part = await blob.downloadToBuffer(pos - segStart, end - pos);
        part.copy(out, pos - offset);
      } catch (err) {
        if (statusOf(err) !== 404) throw wrap(err, `reading ${disk.vmId}/${disk.diskId}`);
        out.fill(0, pos - offset, end - offset); // a segment never written reads as zeros
      }
      pos = end;
    }
    return out;
  }

  async delete(disk: DiskRef): Promise<void> {
    try {
      for await (const item of this.container.listBlobsFlat({ prefix: diskBlobPrefix(disk.vmId, disk.diskId) })) {
        await this.container.deleteBlob(item.name, { deleteSnapshots: 'include' }).catch((err: unknown) => {
          if (statusOf(err) !== 404) throw err;
        });
      }
    } catch (err) {
      if (statusOf(err) === 404) return;
      throw wrap(err, `deleting ${disk.vmId}/${disk.diskId}`);
    }
  }
}

