/**
 * DiskStore over Azure block blobs (layout in shared/domain/disk-layout.ts, docs/disk-layout.md).
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
import { createHash } from 'node:crypto';
import type { BlockBlobClient, ContainerClient } from '@azure/storage-blob';
import {
  EXTENT_BYTES,
  SEGMENT_BYTES,
  SEGMENT_EXTENTS,
  diskPrefix,
  extentAt,
  extentsTouched,
  segmentBlobName,
  segmentExtents,
  type Extent,
} from '../domain/disk-layout';
import type { BatchRecord } from '../domain/wire-format';
import { DiskStoreError, type ApplyStats, type DiskRef, type DiskStore } from '../ports/disk-store';

const LAYOUT_VERSION = 1;
/** Parallel block uploads within one apply. */
const STAGE_CONCURRENCY = 4;

/** A block id: base64 of 32 hex digits of the content's SHA-256 (all ids the same length, as Azure requires). */
export function contentBlockId(content: Uint8Array): string {
  const hex = createHash('sha256').update(content).digest('hex').slice(0, 32);
  return Buffer.from(hex, 'ascii').toString('base64');
}

const zeroIds = new Map<number, string>();
function zeroBlockId(length: number): string {
  let id = zeroIds.get(length);
  if (!id) {
    id = contentBlockId(Buffer.alloc(length));
    zeroIds.set(length, id);
  }
  return id;
}

function statusOf(err: unknown): number | undefined {
  const s = (err as { statusCode?: unknown })?.statusCode;
  return typeof s === 'number' ? s : undefined;
}

function wrap(err: unknown, what: string): DiskStoreError {
  if (err instanceof DiskStoreError) return err;
  const status = statusOf(err);
  if (status === 412 || status === 409) {
    return new DiskStoreError('CONCURRENT_WRITE', `${what}: another writer changed the disk at the same time (HTTP ${status}); retry.`, true, { cause: err });
  }
  const detail = err instanceof Error ? err.message.split('\n')[0] : String(err);
  return new DiskStoreError('STORAGE_UNAVAILABLE', `${what}: storage failed (${status ?? 'no status'}: ${detail}); retry.`, true, { cause: err });
}

interface PlannedExtent {
  extent: Extent;
  records: BatchRecord[];
}

export class BlobDiskStore implements DiskStore {
  constructor(private readonly container: ContainerClient) {}

  async create(disk: DiskRef, sizeBytes: number): Promise<void> {
    const manifest = this.container.getBlockBlobClient(`${diskPrefix(disk.vmId, disk.diskId)}disk.json`);
    const body = JSON.stringify({ layoutVersion: LAYOUT_VERSION, sizeBytes, extentBytes: EXTENT_BYTES, segmentExtents: SEGMENT_EXTENTS });
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

  async apply(disk: DiskRef, sizeBytes: number, records: readonly BatchRecord[]): Promise<ApplyStats> {
    const stats: ApplyStats = { extentsWritten: 0, extentsRead: 0, bytesUploaded: 0, bytesDownloaded: 0, segmentsCommitted: 0 };
    const bySegment = planBySegment(records, sizeBytes);
    for (const [segment, planned] of bySegment) {
      await this.applySegment(disk, sizeBytes, segment, planned, stats);
    }
    return stats;
  }

  private async applySegment(disk: DiskRef, sizeBytes: number, segment: number, planned: PlannedExtent[], stats: ApplyStats): Promise<void> {
    const blob = this.container.getBlockBlobClient(segmentBlobName(disk.vmId, disk.diskId, segment));
    const what = `applying to ${disk.vmId}/${disk.diskId} segment ${segment}`;
    const extents = segmentExtents(segment, sizeBytes);
    let ids: string[];
    let etag: string | undefined;
    try {
      const list = await blob.getBlockList('committed');
      etag = list.etag;
      ids = (list.committedBlocks ?? []).map((b) => b.name);
      const sizes = (list.committedBlocks ?? []).map((b) => b.size);
      if (ids.length !== extents.length || extents.some((e, i) => sizes[i] !== e.length)) {
        throw new DiskStoreError('STORAGE_UNAVAILABLE', `${what}: the segment has ${ids.length} blocks, expected ${extents.length} extents; it was not written by Ferry's layout ${LAYOUT_VERSION}.`, false);
      }
    } catch (err) {
      if (statusOf(err) !== 404) throw wrap(err, what);
      ids = extents.map((e) => zeroBlockId(e.length));
      etag = undefined;
    }

    const staged = new Set<string>();
    const toStage: { id: string; data: Buffer }[] = [];
    for (const { extent, records } of planned) {
      const currentId = ids[extent.slot] ?? zeroBlockId(extent.length);
      const content = await this.extentContent(blob, extent, currentId, records, stats, what);
      const id = contentBlockId(content);
      if (id === currentId) continue; // unchanged: a redelivered batch lands here
      ids[extent.slot] = id;
      if (!staged.has(id)) {
        staged.add(id);
        toStage.push({ id, data: content });
      }
    }
    if (etag === undefined) {
      // New segment: its untouched extents refer to the zero block(s), which must be staged too.
      for (const e of extents) {
        const zid = zeroBlockId(e.length);
        if (ids[e.slot] === zid && !staged.has(zid)) {
          staged.add(zid);
          toStage.push({ id: zid, data: Buffer.alloc(e.length) });
        }
      }
    }
    if (toStage.length === 0) return;

    try {
      await runLimited(toStage, STAGE_CONCURRENCY, async ({ id, data }) => {
        await blob.stageBlock(id, data, data.length);
      });
    } catch (err) {
      throw wrap(err, what);
    }
    stats.extentsWritten += toStage.length;
    stats.bytesUploaded += toStage.reduce((n, s) => n + s.data.length, 0);
    try {
      await blob.commitBlockList(ids, { conditions: etag === undefined ? { ifNoneMatch: '*' } : { ifMatch: etag } });
    } catch (err) {
      throw wrap(err, what);
    }
    stats.segmentsCommitted++;
  }

  /** The extent's new bytes: its records laid over its current content (read only when needed). */
  private async extentContent(blob: BlockBlobClient, extent: Extent, currentId: string, records: BatchRecord[], stats: ApplyStats, what: string): Promise<Buffer> {
    let buf: Buffer;
    if (coversWhole(extent, records) || currentId === zeroBlockId(extent.length)) {
      buf = Buffer.alloc(extent.length);
    } else {
      try {
        buf = await blob.downloadToBuffer(extent.slot * EXTENT_BYTES, extent.length);
      } catch (err) {
        throw wrap(err, what);
      }
      stats.extentsRead++;
      stats.bytesDownloaded += extent.length;
    }
    for (const r of records) {
      const start = Math.max(r.offset, extent.offset);
      const end = Math.min(r.offset + recordLen(r), extent.offset + extent.length);
      if (r.kind === 'zero') buf.fill(0, start - extent.offset, end - extent.offset);
      else buf.set(r.data.subarray(start - r.offset, end - r.offset), start - extent.offset);
    }
    return buf;
  }

  async read(disk: DiskRef, sizeBytes: number, offset: number, length: number): Promise<Buffer> {
    if (offset < 0 || length < 0 || offset + length > sizeBytes) {
      throw new DiskStoreError('OUT_OF_BOUNDS', `Read of ${length} bytes at ${offset} is outside the ${sizeBytes}-byte disk ${disk.vmId}/${disk.diskId}.`, false);
    }
    const out = Buffer.alloc(length);
    let pos = offset;
    while (pos < offset + length) {
      const ext = extentAt(Math.floor(pos / EXTENT_BYTES), sizeBytes);
      const segStart = ext.segment * SEGMENT_BYTES;
      const segEnd = Math.min(segStart + SEGMENT_BYTES, sizeBytes);
      const end = Math.min(offset + length, segEnd);
      const blob = this.container.getBlockBlobClient(segmentBlobName(disk.vmId, disk.diskId, ext.segment));
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
      for await (const item of this.container.listBlobsFlat({ prefix: diskPrefix(disk.vmId, disk.diskId) })) {
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

function recordLen(r: BatchRecord): number {
  return r.kind === 'zero' ? r.length : r.data.length;
}

/** Groups records by the extents they touch, segment by segment, in disk order. */
export function planBySegment(records: readonly BatchRecord[], sizeBytes: number): Map<number, PlannedExtent[]> {
  const byExtent = new Map<number, PlannedExtent>();
  for (const r of records) {
    const len = recordLen(r);
    if (r.offset < 0 || len <= 0 || r.offset + len > sizeBytes) {
      throw new DiskStoreError('OUT_OF_BOUNDS', `A record of ${len} bytes at ${r.offset} is outside the ${sizeBytes}-byte disk.`, false);
    }
    const { first, last } = extentsTouched(r.offset, len);
    for (let i = first; i <= last; i++) {
      let p = byExtent.get(i);
      if (!p) byExtent.set(i, (p = { extent: extentAt(i, sizeBytes), records: [] }));
      p.records.push(r);
    }
  }
  const bySegment = new Map<number, PlannedExtent[]>();
  for (const p of [...byExtent.values()].sort((a, b) => a.extent.index - b.extent.index)) {
    const list = bySegment.get(p.extent.segment) ?? [];
    list.push(p);
    bySegment.set(p.extent.segment, list);
  }
  return bySegment;
}

/** True when the records (non-overlapping) together cover every byte of the extent. */
function coversWhole(extent: Extent, records: BatchRecord[]): boolean {
  let covered = 0;
  for (const r of records) {
    const start = Math.max(r.offset, extent.offset);
    const end = Math.min(r.offset + recordLen(r), extent.offset + extent.length);
    if (end > start) covered += end - start;
  }
  return covered >= extent.length;
}

async function runLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const item = items[next++] as T;
      await fn(item);
    }
  });
  await Promise.all(workers);
}
