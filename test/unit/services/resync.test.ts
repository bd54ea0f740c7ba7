import { randomBytes } from 'node:crypto';
import { beforeEach, describe, expect, it } from 'vitest';
import { sealBatch } from '../../../shared/codec/batch';
import { envelopeFor } from '../../../shared/codec/envelope';
import { EXTENT_BYTES } from '../../../shared/domain/extents';
import { diffManifests, manifestOf } from '../../../shared/domain/manifest';
import type { Batch, BatchRecord } from '../../../shared/domain/wire-format';
import { HashingReplicaManifest } from '../../../shared/memory/replica-manifest';
import { MemoryCaptureStore, MemoryDiskStore, MemoryStagingStore, MemoryStateStore } from '../../../shared/memory/stores';
import { applyBatchMessage, type ApplyDeps } from '../../../shared/services/apply';
import { diskHashes, requestResync, type HashDeps } from '../../../shared/services/resync';
import { enableReplication, getVm, updateVmWithRetry } from '../../../shared/services/vms';

const SIZE = 2 * EXTENT_BYTES + 4096; // three extents, the last one short
const VM = 'vm1';

interface World {
  deps: ApplyDeps & HashDeps;
  disks: MemoryDiskStore;
  key: Buffer;
  next: Record<string, { epoch: number; sequence: number }>;
  models: Record<string, Buffer>;
}

async function world(diskIds = ['disk0']): Promise<World> {
  const disks = new MemoryDiskStore();
  const captures = new MemoryCaptureStore(disks);
  const deps = {
    state: new MemoryStateStore(),
    disks,
    staging: new MemoryStagingStore(() => 0),
    captures,
    manifests: new HashingReplicaManifest(disks),
    masterKey: randomBytes(32),
    now: () => 1_700_000_000_000,
    randomBytes: (n: number) => randomBytes(n),
  };
  const { dataKey } = await enableReplication(deps, VM, { disks: diskIds.map((diskId) => ({ diskId, sizeBytes: SIZE })) });
  return {
    deps,
    disks,
    key: Buffer.from(dataKey, 'base64'),
    next: Object.fromEntries(diskIds.map((d) => [d, { epoch: 1, sequence: 1 }])),
    models: Object.fromEntries(diskIds.map((d) => [d, Buffer.alloc(SIZE)])),
  };
}

/** Seals, applies and mirrors a batch into the disk's model; returns the outcome kind. */
async function send(w: World, diskId: string, records: BatchRecord[], extra: Partial<Batch> = {}): Promise<string> {
  const pos = w.next[diskId]!;
  const b: Batch = { vmId: VM, diskId, epoch: pos.epoch, sequence: pos.sequence++, capturedAt: 1_700_000_000_000, diskSizeBytes: SIZE, records, ...extra };
  const out = envelopeFor(sealBatch(b, w.key, 1, randomBytes));
  if (out.staged) await w.deps.staging.put(out.staged.name, out.staged.body);
  const env = JSON.parse(JSON.stringify(out.envelope));
  for (const r of records) if (r.kind === 'data') w.models[diskId]!.set(r.data, r.offset);
  const outcome = await applyBatchMessage(w.deps, env);
  if (outcome.kind === 'dead-letter' && outcome.reason !== 'SequenceGap') throw new Error(outcome.description);
  return outcome.kind;
}

const full = (size = SIZE): BatchRecord[] => [{ kind: 'data', offset: 0, data: randomBytes(size) }];

async function hashes(w: World, diskId = 'disk0', query: Record<string, string> = {}) {
  return diskHashes(w.deps, VM, diskId, query);
}

describe('requestResync', () => {
  let w: World;
  beforeEach(async () => {
    w = await world();
  });

  it('moves a protected VM to resync-required with the next epoch, shown on the VM', async () => {
    await send(w, 'disk0', full(), { initialReplicationComplete: true });
    expect((await getVm(w.deps, VM)).state).toBe('protected');
    expect((await getVm(w.deps, VM)).resync).toBeNull();
    expect(await requestResync(w.deps, VM, undefined)).toEqual({ vmId: VM, state: 'resync-required', epoch: 2 });
    expect((await getVm(w.deps, VM)).resync).toEqual({ epoch: 2, requestedAt: '2023-11-14T22:13:20.000Z', reason: 'requested' });
  });

  it('is 409 naming the state when illegal, and 400 for a body', async () => {
    await updateVmWithRetry(w.deps, VM, (v) => ({ ...v, state: 'disabled' }));
    await expect(requestResync(w.deps, VM, {})).rejects.toMatchObject({ status: 409, code: 'INVALID_TRANSITION', message: expect.stringContaining("is in state 'disabled'") });
    await expect(requestResync(w.deps, VM, { full: true })).rejects.toMatchObject({ status: 400, code: 'INVALID_REQUEST' });
    await expect(requestResync(w.deps, 'Bad_Id', {})).rejects.toMatchObject({ status: 400, code: 'INVALID_ID' });
    await expect(requestResync(w.deps, 'nope', {})).rejects.toMatchObject({ status: 404, code: 'VM_NOT_FOUND' });
  });

  it('a sequence gap exposes the next epoch too', async () => {
    await send(w, 'disk0', full(), { initialReplicationComplete: true });
    w.next.disk0!.sequence++; // sequence 2 is lost
    expect(await send(w, 'disk0', [])).toBe('dead-letter');
    const vm = await getVm(w.deps, VM);
    expect(vm.state).toBe('resync-required');
    expect(vm.resync).toMatchObject({ epoch: 2, reason: 'sequence-gap' });
  });

  it('a single batch flagged complete in the new epoch returns the VM to protected', async () => {
    await send(w, 'disk0', full(), { initialReplicationComplete: true });
    const { epoch } = await requestResync(w.deps, VM, undefined);
    w.next.disk0 = { epoch, sequence: 1 };
    expect(await send(w, 'disk0', [], { initialReplicationComplete: true })).toBe('applied');
    const vm = await getVm(w.deps, VM);
    expect(vm.state).toBe('protected');
    expect(vm.resync).toBeNull();
    expect(vm.disks[0]).toMatchObject({ epoch: 2, appliedSequence: 1 });
  });

  it('stays resync-required until every disk completed the new epoch', async () => {
    w = await world(['disk0', 'disk1']);
    for (const d of ['disk0', 'disk1']) await send(w, d, full(), { initialReplicationComplete: true });
    const { epoch } = await requestResync(w.deps, VM, undefined);
    w.next.disk0 = { epoch, sequence: 1 };
    w.next.disk1 = { epoch, sequence: 1 };
    await send(w, 'disk0', [], { initialReplicationComplete: true });
    expect((await getVm(w.deps, VM)).state).toBe('resync-required');
    await send(w, 'disk1', [], { initialReplicationComplete: true });
    expect((await getVm(w.deps, VM)).state).toBe('protected');
  });
});

describe('diskHashes', () => {
  let w: World;
  beforeEach(async () => {
    w = await world();
    await send(w, 'disk0', [{ kind: 'data', offset: EXTENT_BYTES + 512, data: randomBytes(4096) }], { initialReplicationComplete: true });
  });

  it('lists the live replica hashes, zero extents included, with its position', async () => {
    const page = await hashes(w);
    expect(page).toMatchObject({ vmId: VM, diskId: 'disk0', sizeBytes: SIZE, blockBytes: 4194304, algorithm: 'sha256-128', epoch: 1, appliedSequence: 1, recoveryPointId: null, totalBlocks: 3, from: 0, count: 3, next: null });
    expect(page.blocks).toEqual(manifestOf(w.models.disk0!));
  });

  it('pages with from and count and a next cursor', async () => {
    const first = await hashes(w, 'disk0', { count: '2' });
    expect(first.blocks.map((b) => b.index)).toEqual([0, 1]);
    expect(first.next).toBe(2);
    const second = await hashes(w, 'disk0', { from: String(first.next), count: '2' });
    expect(second).toMatchObject({ from: 2, count: 1, next: null });
    expect([...first.blocks, ...second.blocks]).toEqual(manifestOf(w.models.disk0!));
  });

  it('rejects bad queries and unknown ids', async () => {
    await expect(hashes(w, 'disk0', { count: '65537' })).rejects.toMatchObject({ status: 400, message: expect.stringContaining('count must be at most 65536') });
    await expect(hashes(w, 'disk0', { count: '0' })).rejects.toMatchObject({ status: 400 });
    await expect(hashes(w, 'disk0', { from: '-1' })).rejects.toMatchObject({ status: 400 });
    await expect(hashes(w, 'disk0', { from: '3' })).rejects.toMatchObject({ status: 400, message: expect.stringContaining('from 3 is past the last extent') });
    await expect(hashes(w, 'disk0', { sort: 'x' })).rejects.toMatchObject({ status: 400, message: expect.stringContaining("unknown field(s) 'sort'") });
    await expect(hashes(w, 'disk9')).rejects.toMatchObject({ status: 404, code: 'DISK_NOT_FOUND', message: expect.stringContaining('(it has disk0)') });
    await expect(hashes(w, 'Disk0')).rejects.toMatchObject({ status: 400, code: 'INVALID_ID' });
    await expect(diskHashes(w.deps, 'nope', 'disk0', {})).rejects.toMatchObject({ status: 404, code: 'VM_NOT_FOUND' });
    await expect(hashes(w, 'disk0', { recoveryPointId: 'rp-9' })).rejects.toMatchObject({ status: 404, code: 'RECOVERY_POINT_NOT_FOUND' });
    await expect(hashes(w, 'disk0', { recoveryPointId: 'garbage' })).rejects.toMatchObject({ status: 400, code: 'INVALID_REQUEST' });
  });

  it("lists a recovery point's hashes, not the live disk's", async () => {
    await send(w, 'disk0', [{ kind: 'data', offset: 0, data: randomBytes(512) }], { consistency: { kind: 'crash-consistent', tagId: 7 } });
    const atTag = manifestOf(w.models.disk0!);
    await send(w, 'disk0', [{ kind: 'data', offset: 0, data: randomBytes(512) }]);
    const page = await hashes(w, 'disk0', { recoveryPointId: 'rp-7' });
    expect(page).toMatchObject({ recoveryPointId: 'rp-7', epoch: 1, appliedSequence: 2 });
    expect(page.blocks).toEqual(atTag);
    expect(diffManifests(atTag, (await hashes(w)).blocks)).toEqual([{ start: 0, end: 1 }]);
  });

  it('retries a read that raced an apply, and gives up with REPLICA_CHANGING', async () => {
    const real = w.deps.manifests;
    let races = 1;
    w.deps.manifests = {
      async blockIds(...args) {
        const ids = await real.blockIds(...args);
        if (races-- > 0) await send(w, 'disk0', [{ kind: 'data', offset: 0, data: randomBytes(512) }]);
        return ids;
      },
    };
    const page = await hashes(w);
    expect(page.appliedSequence).toBe(2);
    expect(page.blocks).toEqual(manifestOf(w.models.disk0!));
    races = 100;
    await expect(hashes(w)).rejects.toMatchObject({ status: 503, code: 'REPLICA_CHANGING' });
  });
});
