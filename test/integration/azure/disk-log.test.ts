/**
 * The delta log of BlobDiskStore (docs/disk-log.md) against Azurite: sparse writes go to the
 * log, reads overlay it, compaction folds it (in part or whole, beside reads and beside another
 * compaction) without changing a byte, and the replica manifest sees logged writes.
 */
import { BlobServiceClient, type ContainerClient } from '@azure/storage-blob';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobDiskStore } from '../../../shared/azure/blob-disk-store';
import { BlobReplicaManifest } from '../../../shared/azure/blob-replica-manifest';
import { EXTENT_BYTES, contentBlockId } from '../../../shared/domain/extents';
import type { BatchRecord } from '../../../shared/domain/wire-format';
import { startAzurite, type TestAzurite } from '../../support/azurite';
import { applyToModel, rng } from '../../support/batches';

const MiB = 1024 * 1024;

/** `count` random 4 KiB writes (data, some zeros), non-overlapping within the batch, sorted. */
function churn(next: () => number, size: number, count: number): BatchRecord[] {
  const blocks = new Set<number>();
  while (blocks.size < count) blocks.add(Math.floor(next() * (size / 4096)));
  return [...blocks]
    .sort((a, b) => a - b)
    .map((b): BatchRecord => (next() < 0.1 ? { kind: 'zero', offset: b * 4096, length: 4096 } : { kind: 'data', offset: b * 4096, data: Buffer.alloc(4096, Math.floor(next() * 255) + 1) }));
}

describe('BlobDiskStore delta log (Azurite)', () => {
  let azurite: TestAzurite;
  let container: ContainerClient;
  let store: BlobDiskStore;
  let n = 0;
  const disk = () => ({ vmId: `vm-log-${process.pid}-${++n}`, diskId: 'disk0' });
  const size = 16 * MiB;

  beforeAll(async () => {
    azurite = await startAzurite();
    container = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient('disks');
    await container.createIfNotExists();
    store = new BlobDiskStore(container);
  });
  afterAll(async () => azurite?.stop());

  async function seeded(d: { vmId: string; diskId: string }, model: Buffer): Promise<void> {
    const base = Buffer.alloc(size);
    for (let i = 0; i < size; i += 4096) base.fill(i / 4096, i, i + 2048);
    await store.apply(d, size, [{ kind: 'data', offset: 0, data: base }], { position: { epoch: 1, sequence: 1 } });
    base.copy(model);
  }

  it('writes scattered 4 KiB writes to the log, reads them back, and compaction changes nothing but where they live', async () => {
    const d = disk();
    const model = Buffer.alloc(size);
    await seeded(d, model);
    expect(await store.listLog(d)).toHaveLength(0); // whole extents went straight to the blocks
    const next = rng(5);
    let seq = 1;
    for (let round = 0; round < 5; round++) {
      const records = churn(next, size, 64);
      const stats = await store.apply(d, size, records, { position: { epoch: 1, sequence: ++seq } });
      applyToModel(model, records);
      expect(stats.logBytes).toBeGreaterThan(0);
      expect(stats.extentsWritten).toBe(0);
      expect(stats.bytesUploaded).toBeLessThan(64 * 4096 * 1.1); // not 4 extents of 4 MiB
    }
    expect((await store.listLog(d)).length).toBe(5);
    expect((await store.read(d, size, 0, size)).equals(model)).toBe(true);
    expect((await store.read(d, size, EXTENT_BYTES - 3000, 7000)).equals(model.subarray(EXTENT_BYTES - 3000, EXTENT_BYTES + 4000))).toBe(true);

    // windows of 8 KiB of log and a 16-byte first read: many windows, and tables read in two parts
    const windowed = new BlobDiskStore(container, { compactWindowBytes: 8 * 1024, indexReadBytes: 16 });
    const folded = await windowed.compact(d, size, { all: true });
    expect(folded.entriesFolded).toBe(5);
    expect(folded.remainingBytes).toBe(0);
    expect(await store.listLog(d)).toHaveLength(0);
    expect((await store.read(d, size, 0, size)).equals(model)).toBe(true);
  });

  it('folds the log a prefix at a time while reads and a second compactor run beside it', async () => {
    const d = disk();
    const model = Buffer.alloc(size);
    await seeded(d, model);
    const next = rng(11);
    let seq = 1;
    for (let round = 0; round < 8; round++) {
      const records = churn(next, size, 32);
      await store.apply(d, size, records, { position: { epoch: 1, sequence: ++seq } });
      applyToModel(model, records);
    }
    const entryBytes = (await store.listLog(d))[0]?.size ?? 0;
    const other = new BlobDiskStore(container, { compactWindowBytes: 16 * 1024 });
    let reads = 0;
    let compacting = true;
    const reader = (async () => {
      while (compacting) {
        expect((await store.read(d, size, 0, size)).equals(model)).toBe(true);
        reads++;
      }
    })();
    // Small passes (about 2 entries each) from two compactors at once: ETag conflicts make a
    // loser retry; nothing is lost or applied out of order.
    const compactor = async (s: BlobDiskStore) => {
      for (let i = 0; i < 20; i++) {
        try {
          await s.compact(d, size, { maxBytes: 2 * entryBytes });
        } catch (err) {
          if (!(err instanceof Error && /CONCURRENT_WRITE|another writer|folded or rewritten/.test(`${(err as { code?: string }).code} ${err.message}`))) throw err;
        }
        if ((await s.listLog(d)).length === 0) return;
      }
    };
    await Promise.all([compactor(store), compactor(other)]);
    compacting = false;
    await reader;
    expect(reads).toBeGreaterThan(0);
    expect(await store.listLog(d)).toHaveLength(0);
    expect((await store.read(d, size, 0, size)).equals(model)).toBe(true);
  });

  it('a damaged log entry (the damage in its last window) stops the compaction before anything is committed', async () => {
    const d = disk();
    const model = Buffer.alloc(size);
    await seeded(d, model);
    const next = rng(23);
    for (let seq = 2; seq <= 4; seq++) {
      const records = churn(next, size, 48);
      await store.apply(d, size, records, { position: { epoch: 1, sequence: seq } });
      applyToModel(model, records);
    }
    const [entry] = await store.listLog(d);
    const blob = container.getBlockBlobClient(entry!.name);
    const bytes = await blob.downloadToBuffer();
    bytes[bytes.length - 100] = (bytes[bytes.length - 100]! + 1) % 256; // data of the last window
    await blob.uploadData(bytes);
    const segment = container.getBlockBlobClient(`${d.vmId}/${d.diskId}/seg-000000`);
    const before = (await segment.getProperties()).etag;
    const windowed = new BlobDiskStore(container, { compactWindowBytes: 8 * 1024 });
    await expect(windowed.compact(d, size, { all: true })).rejects.toMatchObject({ code: 'STORAGE_UNAVAILABLE', message: expect.stringContaining('the hash does not match') });
    expect((await segment.getProperties()).etag).toBe(before); // nothing committed
    expect(await store.listLog(d)).toHaveLength(3); // nothing deleted
  });

  it('a write without a position folds the log first, so the log never hides it', async () => {
    const d = disk();
    const model = Buffer.alloc(size);
    await seeded(d, model);
    const logged = churn(rng(3), size, 16);
    await store.apply(d, size, logged, { position: { epoch: 1, sequence: 2 } });
    applyToModel(model, logged);
    const direct: BatchRecord[] = logged.slice(0, 4).map((r) => ({ kind: 'data', offset: r.offset, data: Buffer.alloc(4096, 0xee) }));
    await store.apply(d, size, direct);
    applyToModel(model, direct);
    expect(await store.listLog(d)).toHaveLength(0);
    expect((await store.read(d, size, 0, size)).equals(model)).toBe(true);
  });

  it('converges when a group is redelivered with a different grouping after its entry was folded', async () => {
    const d = disk();
    const model = Buffer.alloc(size);
    await seeded(d, model);
    const next = rng(21);
    const b = [churn(next, size, 20), churn(next, size, 20), churn(next, size, 20)];
    // First delivery: batches 2..4 as one group (entry named by 4), folded, sequence never recorded.
    await store.applyBatches(d, size, b, { position: { epoch: 1, sequence: 4 } });
    await store.compact(d, size, { all: true });
    // Redelivery: 2..3 as a group, then 4 alone.
    await store.applyBatches(d, size, b.slice(0, 2), { position: { epoch: 1, sequence: 3 } });
    await store.applyBatches(d, size, b.slice(2), { position: { epoch: 1, sequence: 4 } });
    for (const r of b) applyToModel(model, r);
    expect((await store.read(d, size, 0, size)).equals(model)).toBe(true);
    await store.compact(d, size, { all: true });
    expect((await store.read(d, size, 0, size)).equals(model)).toBe(true);
  });

  it('the replica manifest hashes logged extents by their current bytes', async () => {
    const d = disk();
    const model = Buffer.alloc(size);
    await seeded(d, model);
    const records = churn(rng(8), size, 8);
    await store.apply(d, size, records, { position: { epoch: 1, sequence: 2 } });
    applyToModel(model, records);
    const expected = Array.from({ length: size / EXTENT_BYTES }, (_, i) => contentBlockId(model.subarray(i * EXTENT_BYTES, (i + 1) * EXTENT_BYTES)));
    const manifest = new BlobReplicaManifest(container);
    expect(await manifest.blockIds(d, size, 0, size / EXTENT_BYTES)).toEqual(expected);
    await store.compact(d, size, { all: true });
    expect(await manifest.blockIds(d, size, 0, size / EXTENT_BYTES)).toEqual(expected);
  });

  it('a pending capture sends every later write to the log and stops compaction at its tag', async () => {
    const d = disk();
    const model = Buffer.alloc(size);
    await seeded(d, model);
    const next = rng(13);
    const early = churn(next, size, 24);
    await store.apply(d, size, early, { position: { epoch: 1, sequence: 2 } });
    applyToModel(model, early);
    const atTag = Buffer.from(model);
    await store.markCapture(d, { position: { epoch: 1, sequence: 2 }, tagId: 7, kind: 'crash-consistent', capturedAt: 1, initialReplicationComplete: false });
    // A whole-extent write after the tag would normally go straight to the extents.
    const whole: BatchRecord[] = [{ kind: 'data', offset: 0, data: Buffer.alloc(EXTENT_BYTES, 0x5a) }];
    const stats = await store.apply(d, size, whole, { position: { epoch: 1, sequence: 3 } });
    applyToModel(model, whole);
    expect(stats.extentsWritten).toBe(0);
    expect(stats.logBytes).toBeGreaterThan(EXTENT_BYTES);
    // A compaction with no bound still stops at the marker; the extents are then the disk at the tag.
    await store.compact(d, size, { all: true });
    expect((await store.listLog(d)).map((e) => e.name.slice(-16))).toEqual(['0000000000000003']);
    expect((await store.logState(d)).captures.map((c) => c.tagId)).toEqual([7]);
    await store.clearCapture(d, { epoch: 1, sequence: 2 });
    const extentsOnly = await new BlobDiskStore(container).read(d, size, 0, size);
    expect(extentsOnly.equals(model)).toBe(true); // reads overlay entry 3
    await store.compact(d, size, { all: true });
    expect(await store.listLog(d)).toHaveLength(0);
    expect((await store.read(d, size, 0, size)).equals(model)).toBe(true);
    expect(atTag.equals(model)).toBe(false);
  });

  it('one exclusive compaction per disk: a second finds the lease held and does nothing; delete breaks the lease', async () => {
    const d = disk();
    const model = Buffer.alloc(size);
    await seeded(d, model);
    const records = churn(rng(17), size, 16);
    await store.apply(d, size, records, { position: { epoch: 1, sequence: 2 } });
    applyToModel(model, records);
    const lock = container.getBlockBlobClient(`${d.vmId}/${d.diskId}/log-lock`);
    await lock.upload('', 0);
    const held = lock.getBlobLeaseClient();
    await held.acquireLease(15);
    const second = await store.compact(d, size, { all: true, exclusive: true });
    expect(second.skipped).toBe(true);
    expect(await store.listLog(d)).toHaveLength(1);
    await held.releaseLease();
    const first = await store.compact(d, size, { all: true, exclusive: true });
    expect(first.skipped).toBeUndefined();
    expect(first.entriesFolded).toBe(1);
    expect((await store.read(d, size, 0, size)).equals(model)).toBe(true);
    await lock.getBlobLeaseClient().acquireLease(15); // a compactor still running
    await store.delete(d);
    const left: string[] = [];
    for await (const b of container.listBlobsFlat({ prefix: `${d.vmId}/${d.diskId}/` })) left.push(b.name);
    expect(left).toEqual([]);
  });
});
