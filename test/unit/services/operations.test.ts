import { randomBytes } from 'node:crypto';
import { beforeEach, describe, expect, it } from 'vitest';
import { sealBatch } from '../../../shared/codec/batch';
import { envelopeFor } from '../../../shared/codec/envelope';
import { EXTENT_BYTES } from '../../../shared/domain/extents';
import { MiB, vhdChecksum } from '../../../shared/domain/vhd';
import type { Batch, BatchRecord } from '../../../shared/domain/wire-format';
import { MemoryCaptureStore, MemoryDiskStore, MemoryStagingStore, MemoryStateStore, MemoryVhdStore } from '../../../shared/memory/stores';
import type { OperationMessage } from '../../../shared/ports/operation-queue';
import { isApiError } from '../../../shared/services/api-error';
import { applyBatchMessage, type ApplyDeps } from '../../../shared/services/apply';
import { getOperation, runOperation, startOperation, type OperationDeps } from '../../../shared/services/operations';
import { enforceRetention, listRecoveryPoints } from '../../../shared/services/recovery-points';
import { enableReplication, getVm } from '../../../shared/services/vms';

const SIZE = 3 * EXTENT_BYTES + 512 * 3; // the last extent is short
const VM = 'vm1';

interface World {
  deps: OperationDeps & ApplyDeps;
  disks: MemoryDiskStore;
  captures: MemoryCaptureStore;
  vhds: MemoryVhdStore;
  queued: OperationMessage[];
  clock: { now: number };
  key: Buffer;
  seq: Record<string, number>;
}

async function world(diskIds = ['disk0', 'disk1']): Promise<World> {
  const clock = { now: 1_700_000_000_000 };
  const disks = new MemoryDiskStore();
  const captures = new MemoryCaptureStore(disks);
  const vhds = new MemoryVhdStore();
  const queued: OperationMessage[] = [];
  const deps = {
    state: new MemoryStateStore(),
    disks,
    captures,
    vhds,
    staging: new MemoryStagingStore(() => clock.now),
    queue: { enqueue: async (m: OperationMessage) => void queued.push(m) },
    masterKey: randomBytes(32),
    now: () => clock.now,
    randomBytes: (n: number) => randomBytes(n),
  };
  const { dataKey } = await enableReplication(deps, VM, { disks: diskIds.map((diskId) => ({ diskId, sizeBytes: SIZE })) });
  return { deps, disks, captures, vhds, queued, clock, key: Buffer.from(dataKey, 'base64'), seq: Object.fromEntries(diskIds.map((d) => [d, 0])) };
}

async function send(w: World, diskId: string, records: BatchRecord[], extra: Partial<Batch> = {}) {
  const b: Batch = { vmId: VM, diskId, epoch: 1, sequence: ++w.seq[diskId]!, capturedAt: w.clock.now, diskSizeBytes: SIZE, records, ...extra };
  const out = envelopeFor(sealBatch(b, w.key, 1, randomBytes), { inlineMaxBytes: 64 * MiB });
  return applyBatchMessage(w.deps, JSON.parse(JSON.stringify(out.envelope)));
}

const data = (offset: number, len: number, fill: number): BatchRecord => ({ kind: 'data', offset, data: Buffer.alloc(len, fill) });
const tag = (tagId: number, kind: 'crash-consistent' | 'app-consistent' = 'crash-consistent') => ({ consistency: { kind, tagId } });
const errorOf = async (p: Promise<unknown>) => p.then(() => undefined, (e: unknown) => e);

/** Initial copy of both disks, ending with tag 1. */
async function protect(w: World): Promise<void> {
  await send(w, 'disk0', [data(0, 4096, 1), data(2 * EXTENT_BYTES, 512, 2)], { initialReplicationComplete: true, ...tag(1) });
  await send(w, 'disk1', [data(EXTENT_BYTES, 8192, 3)], { initialReplicationComplete: true, ...tag(1) });
}

describe('recovery points', () => {
  let w: World;
  beforeEach(async () => {
    w = await world();
  });

  it('exist only once every disk has captured the tag, newest first', async () => {
    await send(w, 'disk0', [data(0, 512, 9)], { initialReplicationComplete: true, ...tag(1) });
    expect(await listRecoveryPoints(w.deps, VM)).toEqual([]);
    await send(w, 'disk1', [], { initialReplicationComplete: true, ...tag(1) });
    await send(w, 'disk0', [data(0, 512, 8)], tag(2, 'app-consistent'));
    await send(w, 'disk1', [], tag(2, 'app-consistent'));
    const points = await listRecoveryPoints(w.deps, VM);
    expect(points.map((p) => [p.id, p.type])).toEqual([['rp-2', 'app-consistent'], ['rp-1', 'crash-consistent']]);
    expect(points[0]!.disks.map((d) => d.diskId)).toEqual(['disk0', 'disk1']);
  });

  it('capture the disk as of the tagged batch, not later batches', async () => {
    await protect(w);
    await send(w, 'disk0', [data(0, 4096, 7)]);
    expect((await w.captures.readExtent({ vmId: VM, diskId: 'disk0' }, SIZE, 1, 0)).subarray(0, 4096).every((b) => b === 1)).toBe(true);
  });

  it('are not taken before a disk\'s initial copy is complete', async () => {
    await send(w, 'disk0', [data(0, 512, 1)], tag(1));
    await send(w, 'disk1', [data(0, 512, 1)], tag(1));
    expect(w.captures.captures.size).toBe(0);
  });

  it('are idempotent when the tagged batch is redelivered', async () => {
    await protect(w);
    w.seq.disk0 = 0;
    const again = await send(w, 'disk0', [data(0, 4096, 1), data(2 * EXTENT_BYTES, 512, 2)], { initialReplicationComplete: true, ...tag(1) });
    expect(again.kind).toBe('duplicate');
    expect((await listRecoveryPoints(w.deps, VM)).length).toBe(1);
  });

  it('converge when the host dies after the capture and before the sequence is recorded', async () => {
    await send(w, 'disk1', [], { initialReplicationComplete: true, ...tag(1) });
    const putDisk = w.deps.state.putDisk.bind(w.deps.state);
    let failed = false;
    w.deps.state.putDisk = async (d) => {
      if (!failed) {
        failed = true;
        throw new Error('host killed');
      }
      return putDisk(d);
    };
    const records = [data(0, 4096, 1)];
    await expect(send(w, 'disk0', records, { initialReplicationComplete: true, ...tag(1) })).rejects.toThrow('host killed');
    expect(await w.captures.hasCapture({ vmId: VM, diskId: 'disk0' }, 1)).toBe(true);
    w.seq.disk0 = 0;
    expect((await send(w, 'disk0', records, { initialReplicationComplete: true, ...tag(1) })).kind).toBe('applied');
    expect((await listRecoveryPoints(w.deps, VM)).map((p) => p.id)).toEqual(['rp-1']);
    expect(w.captures.captures.size).toBe(2);
  });

  it('expire by retention, keeping the newest', async () => {
    await protect(w);
    await send(w, 'disk0', [], tag(2));
    await send(w, 'disk1', [], tag(2));
    w.clock.now += 25 * 3600_000;
    const [report] = await enforceRetention(w.deps);
    expect(report).toMatchObject({ vmId: VM, deletedCaptures: 2 });
    expect((await listRecoveryPoints(w.deps, VM)).map((p) => p.id)).toEqual(['rp-2']);
    expect(await w.captures.hasCapture({ vmId: VM, diskId: 'disk0' }, 1)).toBe(false);
  });
});

describe('operations', () => {
  let w: World;
  beforeEach(async () => {
    w = await world();
  });

  it('refuse test-migrate during initial replication, naming the state', async () => {
    const err = await errorOf(startOperation(w.deps, 'test-migrate', VM, {}));
    expect(isApiError(err) && err.status).toBe(409);
    expect((err as Error).message).toMatch(/state 'initial-replication'; test-migrate needs 'protected'/);
  });

  it('answer 404 for an unknown VM and an unknown recovery point', async () => {
    expect(await errorOf(startOperation(w.deps, 'migrate', 'ghost', {}))).toMatchObject({ code: 'VM_NOT_FOUND', status: 404 });
    await protect(w);
    expect(await errorOf(startOperation(w.deps, 'migrate', VM, { recoveryPointId: 'rp-77' }))).toMatchObject({ code: 'RECOVERY_POINT_NOT_FOUND', status: 404 });
    expect(await errorOf(startOperation(w.deps, 'migrate', VM, { recoveryPointId: 1 }))).toMatchObject({ code: 'INVALID_REQUEST', status: 400 });
  });

  it('test-migrate writes sparse fixed VHDs of the point, then cleanup deletes them', async () => {
    await protect(w);
    await send(w, 'disk0', [data(0, 4096, 7)]); // after the point
    const { operationId } = await startOperation(w.deps, 'test-migrate', VM, undefined);
    expect((await getVm(w.deps, VM)).state).toBe('test-migrating');
    expect(await getOperation(w.deps, VM, operationId)).toMatchObject({ status: 'running', type: 'test-migrate', recoveryPointId: 'rp-1' });
    expect(await errorOf(startOperation(w.deps, 'test-migrate-cleanup', VM, {}))).toMatchObject({ code: 'OPERATION_IN_PROGRESS', status: 409 });

    expect((await runOperation(w.deps, w.queued[0]!)).kind).toBe('succeeded');
    const op = await getOperation(w.deps, VM, operationId);
    expect(op.status).toBe('succeeded');
    expect(op.disks).toEqual([
      { diskId: 'disk0', vhdUrl: `memory://test-migrated/${VM}/${operationId}/disk0.vhd`, sizeBytes: 20 * MiB },
      { diskId: 'disk1', vhdUrl: `memory://test-migrated/${VM}/${operationId}/disk1.vhd`, sizeBytes: 20 * MiB },
    ]);
    const vhd = w.vhds.blobs.get(`test-migrated/${VM}/${operationId}/disk0.vhd`)!;
    expect(vhd.length).toBe(20 * MiB + 512);
    const source = w.captures.captures.get(`${VM}/disk0@1`)!;
    expect(vhd.subarray(0, SIZE).equals(source)).toBe(true);
    expect(vhd.subarray(SIZE, 20 * MiB).every((b) => b === 0)).toBe(true);
    const footer = vhd.subarray(20 * MiB);
    expect(footer.toString('ascii', 0, 8)).toBe('conectix');
    expect(footer.readUInt32BE(64)).toBe(vhdChecksum(footer));
    // only the two non-zero extents of disk0 and the footer were written
    const writes = w.vhds.pageWrites.filter((p) => p.name.endsWith('disk0.vhd'));
    expect(writes.map((p) => p.offset).sort((a, b) => a - b)).toEqual([0, 2 * EXTENT_BYTES, 20 * MiB]);
    expect(writes.every((p) => p.length <= 4 * MiB)).toBe(true);
    expect((await getVm(w.deps, VM)).state).toBe('test-migrating');

    const cleanup = await startOperation(w.deps, 'test-migrate-cleanup', VM, {});
    expect((await runOperation(w.deps, w.queued[1]!)).kind).toBe('succeeded');
    expect(w.vhds.blobs.size).toBe(0);
    expect((await getVm(w.deps, VM)).state).toBe('protected');
    expect((await getOperation(w.deps, VM, cleanup.operationId)).status).toBe('succeeded');
  });

  it('run idempotently: a redelivered message after success changes nothing', async () => {
    await protect(w);
    await startOperation(w.deps, 'test-migrate', VM, {});
    await runOperation(w.deps, w.queued[0]!);
    const writes = w.vhds.pageWrites.length;
    expect(await runOperation(w.deps, w.queued[0]!)).toMatchObject({ kind: 'skipped' });
    expect(w.vhds.pageWrites.length).toBe(writes);
  });

  it('resume after a crash mid-way, skipping finished disks', async () => {
    await protect(w);
    const { operationId } = await startOperation(w.deps, 'migrate', VM, { recoveryPointId: 'rp-1' });
    const realExtents = w.captures.extents.bind(w.captures);
    let calls = 0;
    w.captures.extents = async (...args) => {
      if (++calls === 2) throw new Error('host killed');
      return realExtents(...args);
    };
    await expect(runOperation(w.deps, w.queued[0]!)).rejects.toThrow('host killed');
    expect((await getOperation(w.deps, VM, operationId)).disks!.map((d) => d.diskId)).toEqual(['disk0']);
    expect((await runOperation(w.deps, w.queued[0]!)).kind).toBe('succeeded');
    expect(calls).toBe(3); // disk0 was not exported again
    expect((await getVm(w.deps, VM)).state).toBe('migrated');
  });

  it('migrate moves the VM to migrated; later batches are dead-lettered with a clear reason', async () => {
    await protect(w);
    await startOperation(w.deps, 'migrate', VM, {});
    expect((await getVm(w.deps, VM)).state).toBe('migrating');
    expect(await errorOf(startOperation(w.deps, 'test-migrate', VM, {}))).toMatchObject({ code: 'OPERATION_IN_PROGRESS' });
    await runOperation(w.deps, w.queued[0]!);
    expect((await getVm(w.deps, VM)).state).toBe('migrated');
    const out = await send(w, 'disk0', [data(0, 512, 5)]);
    expect(out).toMatchObject({ kind: 'dead-letter', reason: 'VmNotReplicating' });
    expect(out.kind === 'dead-letter' && out.description).toMatch(/was migrated to Azure .* Stop the appliance for this VM/);
    expect(await errorOf(startOperation(w.deps, 'migrate', VM, {}))).toMatchObject({ code: 'INVALID_TRANSITION', status: 409 });
  });

  it('a permanent failure fails the operation and returns the VM to protected', async () => {
    await protect(w);
    const { operationId } = await startOperation(w.deps, 'migrate', VM, {});
    await w.captures.deleteCapture({ vmId: VM, diskId: 'disk1' }, 1);
    expect((await runOperation(w.deps, w.queued[0]!)).kind).toBe('failed');
    expect(await getOperation(w.deps, VM, operationId)).toMatchObject({ status: 'failed', error: { code: 'CAPTURE_NOT_FOUND' } });
    expect((await getVm(w.deps, VM)).state).toBe('protected');
  });

  it('fail on the last delivery instead of throwing, releasing the VM', async () => {
    await protect(w);
    const { operationId } = await startOperation(w.deps, 'test-migrate', VM, {});
    w.vhds.create = async () => {
      throw new Error('storage down');
    };
    await expect(runOperation(w.deps, w.queued[0]!)).rejects.toThrow('storage down');
    expect((await runOperation(w.deps, w.queued[0]!, { finalAttempt: true })).kind).toBe('failed');
    expect(await getOperation(w.deps, VM, operationId)).toMatchObject({ status: 'failed', error: { code: 'OPERATION_FAILED', message: 'storage down' } });
    expect((await getVm(w.deps, VM)).state).toBe('test-migrating'); // its (partial) disks remain until cleanup
    expect((await startOperation(w.deps, 'test-migrate-cleanup', VM, {})).operationId).toMatch(/^op-/);
  });

  it('record the outcome when the VM was released but the status not saved (crash in between)', async () => {
    await protect(w);
    const { operationId } = await startOperation(w.deps, 'migrate', VM, {});
    const putOperation = w.deps.state.putOperation.bind(w.deps.state);
    w.deps.state.putOperation = async (op) => {
      if (op.status === 'succeeded') throw new Error('host killed');
      return putOperation(op);
    };
    await expect(runOperation(w.deps, w.queued[0]!)).rejects.toThrow('host killed');
    expect((await getVm(w.deps, VM)).state).toBe('migrated');
    w.deps.state.putOperation = putOperation;
    expect((await runOperation(w.deps, w.queued[0]!)).kind).toBe('succeeded');
    expect((await getOperation(w.deps, VM, operationId)).status).toBe('succeeded');
  });

  it('answer 503 and undo the start when the operation cannot be queued', async () => {
    await protect(w);
    w.deps.queue.enqueue = async () => {
      throw new Error('Service Bus down');
    };
    expect(await errorOf(startOperation(w.deps, 'migrate', VM, {}))).toMatchObject({ code: 'STORAGE_UNAVAILABLE', status: 503, message: expect.stringMatching(/nothing was started, retry shortly/) });
    const vm = await w.deps.state.getVm(VM);
    expect(vm?.vm.state).toBe('protected');
    expect(vm?.vm.activeOperationId).toBeUndefined();
  });

  it('409 without a recovery point, 404 for an unknown operation', async () => {
    await send(w, 'disk0', [], { initialReplicationComplete: true });
    await send(w, 'disk1', [], { initialReplicationComplete: true });
    expect(await errorOf(startOperation(w.deps, 'test-migrate', VM, {}))).toMatchObject({ code: 'NO_RECOVERY_POINT', status: 409 });
    expect(await errorOf(getOperation(w.deps, VM, 'op-0123456789abcdef'))).toMatchObject({ code: 'OPERATION_NOT_FOUND', status: 404 });
  });
});
