/**
 * The storage side of recovery points and migration on Azurite alone: captures snapshot only
 * the segments changed since the previous capture, read back exactly as of their tag, are
 * garbage-collected when no capture needs them, and export to a fixed VHD page blob that
 * qemu-img reads as the disk. The Table rows of captures and operations round-trip.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlobServiceClient } from '@azure/storage-blob';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobCaptureStore } from '../../../shared/azure/blob-capture-store';
import { BlobDiskStore } from '../../../shared/azure/blob-disk-store';
import { BlobVhdStore } from '../../../shared/azure/blob-vhd-store';
import { TableStateStore } from '../../../shared/azure/table-state-store';
import { DEFAULT_POLICY } from '../../../shared/domain/policy';
import { EXTENT_BYTES, SEGMENT_BYTES } from '../../../shared/domain/extents';
import type { BatchRecord } from '../../../shared/domain/wire-format';
import { exportFixedVhd } from '../../../shared/services/operations';
import { captureAtTag, enforceRetention, listRecoveryPoints } from '../../../shared/services/recovery-points';
import type { BatchHeader } from '../../../shared/domain/wire-format';
import { startAzurite, type TestAzurite } from '../../support/azurite';
import { imageRecords, makeExt4Image } from './ext4';

const MiB = 1024 * 1024;

describe('BlobCaptureStore and BlobVhdStore (Azurite)', () => {
  let azurite: TestAzurite;
  let service: BlobServiceClient;
  let disks: BlobDiskStore;
  let captures: BlobCaptureStore;
  let vhds: BlobVhdStore;
  let work: string;

  beforeAll(async () => {
    azurite = await startAzurite();
    service = BlobServiceClient.fromConnectionString(azurite.connectionString);
    const container = service.getContainerClient('disks');
    disks = new BlobDiskStore(container);
    captures = new BlobCaptureStore(container);
    vhds = new BlobVhdStore(service);
    work = mkdtempSync(join(tmpdir(), 'ferry-capture-'));
  });
  afterAll(async () => {
    await azurite?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('snapshots only the segments changed since the previous capture and reads each tag back as it was', async () => {
    const disk = { vmId: 'cap-01', diskId: 'disk0' };
    const size = 2 * SEGMENT_BYTES + 4 * MiB; // three segments, the last one extent long
    await disks.create(disk, size);
    const a = randomBytes(4096);
    const b = randomBytes(4096);
    await disks.apply(disk, size, [{ kind: 'data', offset: 0, data: a }, { kind: 'data', offset: 2 * SEGMENT_BYTES, data: b }]);
    expect(await captures.capture(disk, size, 1)).toEqual({ alreadyCaptured: false, segmentsSnapshotted: 2, segmentsReused: 0 });
    expect(await captures.capture(disk, size, 1)).toMatchObject({ alreadyCaptured: true });

    const b2 = randomBytes(4096);
    await disks.apply(disk, size, [{ kind: 'data', offset: 2 * SEGMENT_BYTES, data: b2 }]);
    expect(await captures.capture(disk, size, 2)).toEqual({ alreadyCaptured: false, segmentsSnapshotted: 1, segmentsReused: 1 });

    expect((await captures.readExtent(disk, size, 1, 512)).subarray(0, 4096).equals(b)).toBe(true);
    expect((await captures.readExtent(disk, size, 2, 512)).subarray(0, 4096).equals(b2)).toBe(true);
    expect((await captures.readExtent(disk, size, 2, 0)).subarray(0, 4096).equals(a)).toBe(true);
    expect((await captures.readExtent(disk, size, 2, 300)).every((x) => x === 0)).toBe(true); // never written
    const manifest = await captures.extents(disk, size, 2);
    expect(manifest.length).toBe(513);
    expect(manifest.filter((e) => !e.zero).map((e) => e.extentIndex)).toEqual([0, 512]);

    // Dropping tag 1 frees the old snapshot of segment 2 only; segment 0's is shared with tag 2.
    await captures.deleteCapture(disk, 1);
    expect(await captures.collectGarbage(disk, 0)).toEqual({ deleted: 1 });
    expect((await captures.readExtent(disk, size, 2, 0)).subarray(0, 4096).equals(a)).toBe(true);
    await expect(captures.readExtent(disk, size, 1, 0)).rejects.toMatchObject({ code: 'CAPTURE_NOT_FOUND' });
  });

  it('exports an ext4 image captured at a tag to a fixed VHD that qemu-img converts back byte for byte', async () => {
    const disk = { vmId: 'cap-02', diskId: 'disk0' };
    const image = makeExt4Image(work, 'src', 64);
    const size = image.length;
    await disks.create(disk, size);
    await disks.apply(disk, size, imageRecords(image));
    await captures.capture(disk, size, 7);
    const after: BatchRecord[] = [{ kind: 'data', offset: 0, data: randomBytes(EXTENT_BYTES) }];
    await disks.apply(disk, size, after); // after the tag: must not show in the VHD

    const target = { container: 'test-migrated' as const, name: 'cap-02/op-0000000000000001/disk0.vhd' };
    const result = await exportFixedVhd({ captures, vhds }, disk, size, 7, target, { operationId: 'op-0000000000000001', createdAt: Date.now() });
    expect(result).toEqual({ diskId: 'disk0', vhdUrl: expect.stringMatching(/\/test-migrated\/cap-02\/op-0000000000000001\/disk0\.vhd$/), sizeBytes: 64 * MiB });
    expect(result.vhdUrl).not.toMatch(/[?&](sig|sv|se)=/);
    const ranges = await service.getContainerClient('test-migrated').getPageBlobClient(target.name).getPageRanges();
    const written = (ranges.pageRange ?? []).reduce((n, r) => n + (r.count ?? 0), 0);
    expect(written).toBeLessThan(size / 2); // sparse: the image is mostly zeros

    const vhdPath = join(work, 'disk0.vhd');
    await service.getContainerClient('test-migrated').getBlobClient(target.name).downloadToFile(vhdPath);
    const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', '-f', 'vpc', vhdPath], { encoding: 'utf8' })) as { 'virtual-size': number };
    expect(info['virtual-size']).toBe(size);
    const rawPath = join(work, 'disk0.raw');
    execFileSync('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', vhdPath, rawPath]);
    expect(readFileSync(rawPath).equals(image)).toBe(true);
    execFileSync('e2fsck', ['-fn', rawPath], { stdio: 'pipe' });
    writeFileSync(rawPath, ''); // free the space early
  });

  it('keeps capture and operation rows in Tables beside the VM, apart from getVm', async () => {
    const state = TableStateStore.fromConnectionString(azurite.connectionString, `rp${process.pid}`);
    await state.createVm(
      { vmId: 'rows-01', state: 'protected', policy: DEFAULT_POLICY, createdAt: 1, updatedAt: 1, keyId: 1, deadLetteredCount: 0, recentIssues: [], activeOperationId: 'op-00000000000000aa' },
      [{ vmId: 'rows-01', diskId: 'disk0', sizeBytes: MiB, epoch: 1, appliedSequence: 3, lastAppliedAt: 0, lastCapturedAt: 0, initialCoveredBytes: MiB, initialComplete: true }],
      { vmId: 'rows-01', keyId: 1, wrapped: randomBytes(61), createdAt: 1 },
    );
    const capture = { vmId: 'rows-01', diskId: 'disk0', tagId: 12, kind: 'app-consistent' as const, capturedAt: 5, createdAt: 6, sizeBytes: MiB, epoch: 1, sequence: 3 };
    await state.putCapture(capture);
    await state.putCapture(capture); // idempotent
    expect(await state.listCaptures('rows-01')).toEqual([capture]);
    const got = await state.getVm('rows-01');
    expect(got?.vm.activeOperationId).toBe('op-00000000000000aa');
    expect(got?.disks.length).toBe(1);

    const op = { vmId: 'rows-01', operationId: 'op-00000000000000aa', type: 'migrate' as const, status: 'running' as const, tagId: 12, createdAt: 7, updatedAt: 7, disks: [] };
    const etag = await state.putOperation(op);
    await expect(state.putOperation(op)).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
    const done = { ...op, status: 'succeeded' as const, disks: [{ diskId: 'disk0', vhdUrl: 'http://x/migrated/a.vhd', sizeBytes: 20 * MiB }], etag };
    await state.putOperation(done);
    await expect(state.putOperation(done)).rejects.toMatchObject({ code: 'CONFLICT' });
    expect(await state.getOperation('rows-01', op.operationId)).toMatchObject({ status: 'succeeded', tagId: 12, disks: done.disks });

    await state.deleteCapture('rows-01', 'disk0', 12);
    await state.deleteCapture('rows-01', 'disk0', 12);
    expect(await state.listCaptures('rows-01')).toEqual([]);
  });

  it('retention deletes expired points, their manifests and the snapshots only they used', async () => {
    const state = TableStateStore.fromConnectionString(azurite.connectionString, `ret${process.pid}`);
    const clock = { now: Date.now() };
    const deps = { state, disks, captures, masterKey: randomBytes(32), now: () => clock.now, randomBytes };
    const vmId = 'ret-01';
    const size = SEGMENT_BYTES + 4 * MiB;
    const disk = { vmId, diskId: 'disk0', sizeBytes: size, epoch: 1, appliedSequence: 0, lastAppliedAt: 0, lastCapturedAt: 0, initialCoveredBytes: size, initialComplete: true };
    await state.createVm({ vmId, state: 'protected', policy: { ...DEFAULT_POLICY, recoveryPointRetentionHours: 1 }, createdAt: 1, updatedAt: 1, keyId: 1, deadLetteredCount: 0, recentIssues: [] }, [disk], { vmId, keyId: 1, wrapped: randomBytes(61), createdAt: 1 });
    await disks.create(disk, size);
    const header = (tagId: number) => ({ consistency: { kind: 'crash-consistent', tagId }, epoch: 1, sequence: tagId, capturedAt: clock.now, initialReplicationComplete: false }) as BatchHeader;
    for (let tag = 1; tag <= 3; tag++) {
      await disks.apply(disk, size, [{ kind: 'data', offset: SEGMENT_BYTES, data: Buffer.alloc(4096, tag) }]); // segment 1 changes each time
      if (tag === 1) await disks.apply(disk, size, [{ kind: 'data', offset: 0, data: Buffer.alloc(4096, 9) }]); // segment 0 once
      await captureAtTag(deps, disk, header(tag));
      clock.now += 3600_000;
    }
    const snapshots = async () => {
      let n = 0;
      for await (const b of service.getContainerClient('disks').listBlobsFlat({ prefix: `${vmId}/disk0/seg-`, includeSnapshots: true })) if (b.snapshot) n++;
      return n;
    };
    expect(await snapshots()).toBe(4); // segment 0 once, segment 1 three times
    expect((await listRecoveryPoints(deps, vmId)).map((p) => p.id)).toEqual(['rp-3', 'rp-2', 'rp-1']);

    const [report] = await enforceRetention(deps, { graceMs: 0 });
    expect(report).toEqual({ vmId, deletedCaptures: 2, deletedSnapshots: 2 });
    expect((await listRecoveryPoints(deps, vmId)).map((p) => p.id)).toEqual(['rp-3']);
    expect(await snapshots()).toBe(2);
    expect(await captures.hasCapture(disk, 1)).toBe(false);
    expect((await captures.readExtent(disk, size, 3, 0)).subarray(0, 4096).every((b) => b === 9)).toBe(true); // shared with rp-1, kept
    expect((await captures.readExtent(disk, size, 3, 256)).subarray(0, 4096).every((b) => b === 3)).toBe(true);
  });
});
