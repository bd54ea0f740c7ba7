import { randomBytes } from 'node:crypto';
import { BlobServiceClient, type ContainerClient } from '@azure/storage-blob';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobDiskStore } from '../../../shared/azure/blob-disk-store';
import { EXTENT_BYTES, SEGMENT_BYTES } from '../../../shared/domain/extents';
import { isDiskStoreError } from '../../../shared/ports/disk-store';
import { startAzurite, type TestAzurite } from '../../support/azurite';
import { applyToModel, randomRecords, rng } from '../../support/batches';

const MiB = 1024 * 1024;

describe('BlobDiskStore (Azurite)', () => {
  let azurite: TestAzurite;
  let container: ContainerClient;
  let store: BlobDiskStore;
  let n = 0;
  const disk = () => ({ vmId: `vm-${process.pid}-${++n}`, diskId: 'disk0' });

  beforeAll(async () => {
    azurite = await startAzurite();
    container = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient('disks');
    await container.createIfNotExists();
    store = new BlobDiskStore(container);
  });
  afterAll(async () => azurite?.stop());

  it('reads a new disk as zeros and creates it idempotently', async () => {
    const d = disk();
    await store.create(d, 64 * MiB);
    await store.create(d, 64 * MiB);
    expect((await store.read(d, 64 * MiB, 0, 64 * MiB)).equals(Buffer.alloc(64 * MiB))).toBe(true);
  });

  it('matches an in-memory model through random partial, whole-extent and zero writes', async () => {
    const size = 24 * MiB + 3 * 512; // the last extent is short
    const d = disk();
    const model = Buffer.alloc(size);
    const next = rng(42);
    await store.create(d, size);
    for (let round = 0; round < 6; round++) {
      const records = randomRecords(next, size, 12, round % 2 ? 64 * 1024 : 6 * MiB);
      await store.apply(d, size, records);
      applyToModel(model, records);
    }
    expect((await store.read(d, size, 0, size)).equals(model)).toBe(true);
    // ranged reads across extent boundaries
    const part = await store.read(d, size, EXTENT_BYTES - 1024, 2048 + EXTENT_BYTES);
    expect(part.equals(model.subarray(EXTENT_BYTES - 1024, EXTENT_BYTES - 1024 + 2048 + EXTENT_BYTES))).toBe(true);
  });

  it('does not read an extent that the records cover whole', async () => {
    const size = 16 * MiB;
    const d = disk();
    await store.apply(d, size, [{ kind: 'data', offset: 0, data: randomBytes(size) }]);
    const stats = await store.apply(d, size, [{ kind: 'data', offset: 4 * MiB, data: randomBytes(8 * MiB) }]);
    expect(stats.extentsRead).toBe(0);
    expect(stats.extentsWritten).toBe(2);
    const partial = await store.apply(d, size, [{ kind: 'data', offset: 512, data: randomBytes(512) }]);
    expect(partial.extentsRead).toBe(1);
    expect(partial.bytesUploaded).toBe(EXTENT_BYTES);
  });

  it('re-applying the same records changes nothing and uploads nothing', async () => {
    const size = 12 * MiB;
    const d = disk();
    const records = randomRecords(rng(7), size, 8, 2 * MiB);
    await store.apply(d, size, records);
    const before = await store.read(d, size, 0, size);
    const again = await store.apply(d, size, records);
    expect(again.bytesUploaded).toBe(0);
    expect(again.segmentsCommitted).toBe(0);
    expect((await store.read(d, size, 0, size)).equals(before)).toBe(true);
  });

  it('spans segments: a record across the 1 GiB boundary of a 2 GiB disk that is otherwise never written', async () => {
    const size = 2 * SEGMENT_BYTES;
    const d = disk();
    const data = randomBytes(2 * MiB);
    const offset = SEGMENT_BYTES - MiB;
    const stats = await store.apply(d, size, [{ kind: 'data', offset, data }]);
    expect(stats.segmentsCommitted).toBe(2);
    expect((await store.read(d, size, offset, 2 * MiB)).equals(data)).toBe(true);
    expect((await store.read(d, size, 0, MiB)).equals(Buffer.alloc(MiB))).toBe(true);
    const blocks = await container.getBlockBlobClient(`${d.vmId}/${d.diskId}/seg-000000`).getBlockList('committed');
    expect(blocks.committedBlocks).toHaveLength(256);
  });

  it('refuses records outside the disk without touching it', async () => {
    const size = 8 * MiB;
    const d = disk();
    await store.apply(d, size, [{ kind: 'data', offset: 0, data: Buffer.alloc(512, 1) }]);
    const err = await store.apply(d, size, [{ kind: 'data', offset: size - 512, data: Buffer.alloc(1024, 2) }]).catch((e: unknown) => e);
    expect(isDiskStoreError(err) && err.code).toBe('OUT_OF_BOUNDS');
    expect((await store.read(d, size, 0, 512)).equals(Buffer.alloc(512, 1))).toBe(true);
    expect((await store.read(d, size, size - 512, 512)).equals(Buffer.alloc(512))).toBe(true);
  });

  it('detects a concurrent writer instead of losing its write', async () => {
    const size = 8 * MiB;
    for (let i = 0; i < 6; i++) {
      const d = disk();
      await store.apply(d, size, [{ kind: 'data', offset: 0, data: Buffer.alloc(512, 9) }]);
      const a = Buffer.alloc(512, 1);
      const b = Buffer.alloc(512, 2);
      const results = await Promise.allSettled([
        store.apply(d, size, [{ kind: 'data', offset: 1024, data: a }]),
        new BlobDiskStore(container).apply(d, size, [{ kind: 'data', offset: 2048, data: b }]),
      ]);
      const content = await store.read(d, size, 0, 4096);
      const aIn = content.subarray(1024, 1536).equals(a);
      const bIn = content.subarray(2048, 2560).equals(b);
      for (const [r, present] of [[results[0], aIn], [results[1], bIn]] as const) {
        if (r?.status === 'fulfilled') expect(present).toBe(true); // a write that succeeded is never lost
        else expect(isDiskStoreError(r?.reason) && r.reason.code).toBe('CONCURRENT_WRITE');
      }
    }
  });
});
