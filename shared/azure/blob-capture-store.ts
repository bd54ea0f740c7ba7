/**
 * CaptureStore over block blob snapshots, in the same container as the disks
 * (BlobDiskStore; layout in shared/domain/extents.ts and docs/recovery-points.md).
 *
 * A capture of disk D at tag T is a small manifest blob `<vmId>/<diskId>/captures/<inv>.json`
 * (`inv` = 2^53 - 1 - T, 16 digits, so a listing yields the newest tag first) listing, per
 * segment that exists, the snapshot that holds it, the segment's ETag at that moment and its
 * committed block ids (the hash manifest at 4 MiB granularity). A segment absent from the
 * manifest was never written: zeros.
 *
 * Why the cost follows the changes: a capture lists the disk's segment blobs (one request per
 * 5,000 segments = 5 TiB) and snapshots only the segments whose ETag differs from the disk's
 * newest earlier capture; unchanged segments reuse that capture's snapshot and block ids.
 * Each snapshot is taken If-Match the listed ETag, so the recorded block ids are exactly the
 * snapshot's. Snapshots no remaining manifest refers to are deleted by `collectGarbage`.
 */
import type { BlobClient, ContainerClient } from '@azure/storage-blob';
import { EXTENT_BYTES, diskBlobPrefix, extentCount, extentRange, segmentOfExtent, zeroBlockId } from '../domain/extents';
import { faultPoint } from '../faults';
import type { CapturedExtent, CaptureStats, CaptureStore } from '../ports/capture-store';
import { DiskStoreError, type DiskRef } from '../ports/disk-store';
import { statusOf, runLimited } from './rest';

const MANIFEST_VERSION = 1;
const SNAPSHOT_CONCURRENCY = 4;
const MANIFEST_CACHE_MAX = 64;

interface CapturedSegment {
  segment: number;
  /** Snapshot timestamp (the `snapshot` query parameter). */
  snapshot: string;
  etag: string;
  /** Committed block ids of the segment, in order. */
  blocks: string[];
}

interface CaptureManifest {
  version: number;
  tagId: number;
  sizeBytes: number;
  segments: CapturedSegment[];
}

function wrap(err: unknown, what: string): DiskStoreError {
  if (err instanceof DiskStoreError) return err;
  const status = statusOf(err);
  if (status === 412) return new DiskStoreError('CONCURRENT_WRITE', `${what}: the disk changed while it was being captured (HTTP 412); retry.`, true, { cause: err });
  const detail = err instanceof Error ? err.message.split('\n')[0] : String(err);
  return new DiskStoreError('STORAGE_UNAVAILABLE', `${what}: storage failed (${status ?? 'no status'}: ${detail}); retry.`, true, { cause: err });
}

const MAX_TAG = Number.MAX_SAFE_INTEGER;
const capturePrefix = (d: DiskRef): string => `${diskBlobPrefix(d.vmId, d.diskId)}captures/`;
const manifestName = (d: DiskRef, tagId: number): string => `${capturePrefix(d)}${String(MAX_TAG - tagId).padStart(16, '0')}.json`;

export class BlobCaptureStore implements CaptureStore {
  /** Manifests never change once written: cache the parsed ones. */
  private readonly cache = new Map<string, CaptureManifest>();

  constructor(private readonly container: ContainerClient) {}

  async hasCapture(disk: DiskRef, tagId: number): Promise<boolean> {
    try {
      return await this.container.getBlobClient(manifestName(disk, tagId)).exists();
    } catch (err) {
      throw wrap(err, `checking the capture of ${disk.vmId}/${disk.diskId} at tag ${tagId}`);
    }
  }

  async capture(disk: DiskRef, sizeBytes: number, tagId: number): Promise<CaptureStats> {
    const what = `capturing ${disk.vmId}/${disk.diskId} at tag ${tagId}`;
    const stats: CaptureStats = { alreadyCaptured: false, segmentsSnapshotted: 0, segmentsReused: 0 };
    if (await this.hasCapture(disk, tagId)) return { ...stats, alreadyCaptured: true };
    try {
      const base = await this.newestManifest(disk);
      const previous = new Map((base?.segments ?? []).map((s) => [s.segment, s]));
      const current: { segment: number; name: string; etag: string }[] = [];
      const segPrefix = `${diskBlobPrefix(disk.vmId, disk.diskId)}seg-`;
      for await (const item of this.container.listBlobsFlat({ prefix: segPrefix })) {
        const segment = Number(item.name.slice(segPrefix.length));
        if (Number.isSafeInteger(segment) && item.properties.etag) current.push({ segment, name: item.name, etag: item.properties.etag });
      }
      const segments: CapturedSegment[] = [];
      const toSnapshot: typeof current = [];
      for (const c of current) {
        const prev = previous.get(c.segment);
        if (prev && prev.etag === c.etag) {
          segments.push(prev);
          stats.segmentsReused++;
        } else {
          toSnapshot.push(c);
        }
      }
      await runLimited(toSnapshot, SNAPSHOT_CONCURRENCY, async (c) => {
        const blob = this.container.getBlockBlobClient(c.name);
        const snap = await blob.createSnapshot({ conditions: { ifMatch: c.etag } });
        if (!snap.snapshot) throw new DiskStoreError('STORAGE_UNAVAILABLE', `${what}: the snapshot of segment ${c.segment} has no id; retry.`, true);
        const list = await blob.withSnapshot(snap.snapshot).getBlockList('committed');
        segments.push({ segment: c.segment, snapshot: snap.snapshot, etag: c.etag, blocks: (list.committedBlocks ?? []).map((b) => b.name) });
      });
      stats.segmentsSnapshotted = toSnapshot.length;
      faultPoint('capture.snapshotted');
      segments.sort((a, b) => a.segment - b.segment);
      const manifest: CaptureManifest = { version: MANIFEST_VERSION, tagId, sizeBytes, segments };
      const body = JSON.stringify(manifest);
      try {
        await this.container.getBlockBlobClient(manifestName(disk, tagId)).upload(body, Buffer.byteLength(body), {
          conditions: { ifNoneMatch: '*' },
          blobHTTPHeaders: { blobContentType: 'application/json' },
        });
      } catch (err) {
        if (statusOf(err) !== 409 && statusOf(err) !== 412) throw err;
        return { ...stats, alreadyCaptured: true }; // another attempt finished first
      }
      return stats;
    } catch (err) {
      throw wrap(err, what);
    }
  }

  async extents(disk: DiskRef, sizeBytes: number, tagId: number): Promise<CapturedExtent[]> {
    const m = await this.manifest(disk, tagId);
    const bySegment = new Map(m.segments.map((s) => [s.segment, s]));
    return Array.from({ length: extentCount(sizeBytes) }, (_, i) => {
      const { length } = extentRange(i, sizeBytes);
      const { segment, blockIndex } = segmentOfExtent(i);
      const zero = zeroBlockId(length);
      const blockId = bySegment.get(segment)?.blocks[blockIndex] ?? zero;
      return { extentIndex: i, blockId, zero: blockId === zero };
    });
  }

  async readExtent(disk: DiskRef, sizeBytes: number, tagId: number, extentIndex: number): Promise<Buffer> {
    const m = await this.manifest(disk, tagId);
    const { length } = extentRange(extentIndex, sizeBytes);
    const { segment, blockIndex } = segmentOfExtent(extentIndex);
    const seg = m.segments.find((s) => s.segment === segment);
    if (!seg) return Buffer.alloc(length);
    const name = `${diskBlobPrefix(disk.vmId, disk.diskId)}seg-${String(segment).padStart(6, '0')}`;
    try {
      return await this.container.getBlobClient(name).withSnapshot(seg.snapshot).downloadToBuffer(blockIndex * EXTENT_BYTES, length);
    } catch (err) {
      throw wrap(err, `reading extent ${extentIndex} of ${disk.vmId}/${disk.diskId} at tag ${tagId}`);
    }
  }

  async deleteCapture(disk: DiskRef, tagId: number): Promise<void> {
    const name = manifestName(disk, tagId);
    this.cache.delete(name);
    try {
      await this.container.deleteBlob(name);
    } catch (err) {
      if (statusOf(err) !== 404) throw wrap(err, `deleting the capture of ${disk.vmId}/${disk.diskId} at tag ${tagId}`);
    }
  }

  async collectGarbage(disk: DiskRef, graceMs: number): Promise<{ deleted: number }> {
    const what = `collecting snapshots of ${disk.vmId}/${disk.diskId}`;
    let deleted = 0;
    try {
      const referenced = new Set<string>();
      for await (const item of this.container.listBlobsFlat({ prefix: capturePrefix(disk) })) {
        const m = await this.readManifest(item.name);
        if (m) for (const s of m.segments) referenced.add(`${s.segment}@${s.snapshot}`);
      }
      const segPrefix = `${diskBlobPrefix(disk.vmId, disk.diskId)}seg-`;
      const cutoff = Date.now() - graceMs;
      for await (const item of this.container.listBlobsFlat({ prefix: segPrefix, includeSnapshots: true })) {
        if (!item.snapshot) continue;
        const segment = Number(item.name.slice(segPrefix.length));
        if (referenced.has(`${segment}@${item.snapshot}`) || Date.parse(item.snapshot) > cutoff) continue;
        await this.container
          .getBlobClient(item.name)
          .withSnapshot(item.snapshot)
          .delete()
          .catch((err: unknown) => {
            if (statusOf(err) !== 404) throw err;
          });
        deleted++;
      }
    } catch (err) {
      throw wrap(err, what);
    }
    return { deleted };
  }

  private async newestManifest(disk: DiskRef): Promise<CaptureManifest | undefined> {
    for await (const item of this.container.listBlobsFlat({ prefix: capturePrefix(disk) })) {
      const m = await this.readManifest(item.name);
      if (m) return m;
    }
    return undefined;
  }

  private async manifest(disk: DiskRef, tagId: number): Promise<CaptureManifest> {
    let m: CaptureManifest | undefined;
    try {
      m = await this.readManifest(manifestName(disk, tagId));
    } catch (err) {
      throw wrap(err, `reading the capture of ${disk.vmId}/${disk.diskId} at tag ${tagId}`);
    }
    if (!m) throw new DiskStoreError('CAPTURE_NOT_FOUND', `Disk ${disk.vmId}/${disk.diskId} has no capture at tag ${tagId} (deleted by retention, or never taken).`, false);
    return m;
  }

  private async readManifest(name: string): Promise<CaptureManifest | undefined> {
    const hit = this.cache.get(name);
    if (hit) return hit;
    let body: Buffer;
    try {
      body = await this.blob(name).downloadToBuffer();
    } catch (err) {
      if (statusOf(err) === 404) return undefined;
      throw err;
    }
    const m = JSON.parse(body.toString('utf8')) as CaptureManifest;
    if (m.version !== MANIFEST_VERSION) throw new DiskStoreError('STORAGE_UNAVAILABLE', `Capture manifest ${name} has version ${m.version}; this code reads ${MANIFEST_VERSION}.`, false);
    if (this.cache.size >= MANIFEST_CACHE_MAX) this.cache.delete(this.cache.keys().next().value as string);
    this.cache.set(name, m);
    return m;
  }

  private blob(name: string): BlobClient {
    return this.container.getBlobClient(name);
  }
}

