/**
 * Key rotation (shared/services/vms.ts rotateKey) and how apply treats batches sealed with a
 * replaced key (shared/services/apply.ts): accepted until the cut-off, dead-lettered
 * `KeyRetired` after it, with the memory stores.
 */
import { randomBytes } from 'node:crypto';
import { beforeEach, describe, expect, it } from 'vitest';
import { sealBatch } from '../../../shared/codec/batch';
import { envelopeFor } from '../../../shared/codec/envelope';
import { unwrapDataKey } from '../../../shared/codec/key-wrap';
import type { Batch, BatchRecord } from '../../../shared/domain/wire-format';
import { MemoryDiskStore, MemoryStagingStore, MemoryStateStore } from '../../../shared/memory/stores';
import type { KeyRetirement, VmRecord, WrappedKeyRecord } from '../../../shared/ports/state-store';
import { applyBatchMessage, applyBatchMessages, type ApplyDeps } from '../../../shared/services/apply';
import { DEFAULT_KEY_GRACE_SECONDS, disableReplication, enableReplication, getVm, rotateKey, updateVmWithRetry } from '../../../shared/services/vms';

const SIZE = 64 * 1024;
const T0 = 1_700_000_000_000;

interface World {
  deps: ApplyDeps;
  state: MemoryStateStore;
  disks: MemoryDiskStore;
  clock: { now: number };
  key1: Buffer;
}

async function world(): Promise<World> {
  const clock = { now: T0 };
  const state = new MemoryStateStore();
  const disks = new MemoryDiskStore();
  const deps: ApplyDeps = { state, disks, staging: new MemoryStagingStore(() => clock.now), masterKey: randomBytes(32), now: () => clock.now, randomBytes: (n) => randomBytes(n) };
  const { dataKey } = await enableReplication(deps, 'vm1', { disks: [{ diskId: 'disk0', sizeBytes: SIZE }] });
  return { deps, state, disks, clock, key1: Buffer.from(dataKey, 'base64') };
}

const data = (offset: number, len: number, fill: number): BatchRecord => ({ kind: 'data', offset, data: Buffer.alloc(len, fill) });

function message(sequence: number, key: Buffer, keyId: number, records: BatchRecord[]): unknown {
  const b: Batch = { vmId: 'vm1', diskId: 'disk0', epoch: 1, sequence, capturedAt: T0, diskSizeBytes: SIZE, records };
  return JSON.parse(JSON.stringify(envelopeFor(sealBatch(b, key, keyId, randomBytes)).envelope));
}

const disk = (w: World) => w.disks.read({ vmId: 'vm1', diskId: 'disk0' }, SIZE, 0, SIZE);

describe('rotateKey', () => {
  let w: World;
  beforeEach(async () => {
    w = await world();
  });

  it('makes key 2 current, returns it once, stores it only wrapped, and stamps key 1 with the cut-off (default 24 h)', async () => {
    const r = await rotateKey(w.deps, 'vm1', undefined);
    const cutoff = new Date(T0 + DEFAULT_KEY_GRACE_SECONDS * 1000).toISOString();
    expect(r).toMatchObject({ vmId: 'vm1', keyId: 2, graceSeconds: 86_400, createdAt: new Date(T0).toISOString(), previousKeys: [{ keyId: 1, retiresAt: cutoff }] });
    const key2 = Buffer.from(r.dataKey, 'base64');
    expect(key2.length).toBe(32);
    expect(key2.equals(w.key1)).toBe(false);
    expect((await getVm(w.deps, 'vm1')).keyId).toBe(2);
    const keys = await w.state.listKeys('vm1');
    expect(keys.map((k) => [k.keyId, k.retiresAt])).toEqual([[1, T0 + 86_400_000], [2, undefined]]);
    const stored = keys[1]!;
    expect(stored.wrapped.includes(key2)).toBe(false);
    expect(unwrapDataKey(w.deps.masterKey, stored.wrapped, 'vm1', 2).equals(key2)).toBe(true);
  });

  it('accepts batches of the old key until the cut-off and dead-letters them KeyRetired after it; new-key batches apply', async () => {
    await rotateKey(w.deps, 'vm1', { graceSeconds: 2 });
    const r2 = await w.state.getKey('vm1', 2);
    const key2 = unwrapDataKey(w.deps.masterKey, r2!.wrapped, 'vm1', 2);
    expect(await applyBatchMessage(w.deps, message(1, w.key1, 1, [data(0, 512, 1)]))).toMatchObject({ kind: 'applied', sequence: 1 });
    expect(await applyBatchMessage(w.deps, message(2, key2, 2, [data(512, 512, 2)]))).toMatchObject({ kind: 'applied', sequence: 2 });
    w.clock.now = T0 + 1999;
    expect(await applyBatchMessage(w.deps, message(3, w.key1, 1, [data(1024, 512, 3)]))).toMatchObject({ kind: 'applied', sequence: 3 });
    const before = await disk(w);
    w.clock.now = T0 + 2000;
    const out = await applyBatchMessage(w.deps, message(4, w.key1, 1, [data(2048, 512, 4)]));
    expect(out).toEqual({
      kind: 'dead-letter',
      reason: 'KeyRetired',
      vmId: 'vm1',
      diskId: 'disk0',
      description:
        "Batch for VM 'vm1' disk 'disk0' epoch 1 sequence 4 is sealed with data key 1, retired at 2023-11-14T22:13:22.000Z (the VM's current key is 2): batches sealed with a retired key are refused after its cut-off. Make the appliance seal with the current key (ferry rotate-key stores it; rotate again if the appliance lost it), then resync the VM (POST /api/vms/vm1/resync) to send this batch's changes again.",
    });
    expect((await disk(w)).equals(before)).toBe(true);
    const vm = await getVm(w.deps, 'vm1');
    expect(vm.disks[0]!.appliedSequence).toBe(3);
    expect(vm.healthReasons.find((h) => h.code === 'DEAD_LETTERED')?.message).toMatch(/data key 1, retired at/);
    expect(await applyBatchMessage(w.deps, message(4, key2, 2, [data(2048, 512, 5)]))).toMatchObject({ kind: 'applied', sequence: 4 });
  });

  it('a key cached while current is retired all the same (the cache follows the VM key id)', async () => {
    expect((await applyBatchMessages(w.deps, [message(1, w.key1, 1, [data(0, 512, 1)])]))[0]).toMatchObject({ kind: 'applied' });
    await rotateKey(w.deps, 'vm1', { graceSeconds: 0 });
    const out = await applyBatchMessages(w.deps, [message(2, w.key1, 1, [data(512, 512, 2)])]);
    expect(out[0]).toMatchObject({ kind: 'dead-letter', reason: 'KeyRetired' });
  });

  it('a later rotation with a shorter grace brings every older cut-off forward; a longer one never extends it', async () => {
    w.clock.now = T0;
    await rotateKey(w.deps, 'vm1', { graceSeconds: 3600 });
    w.clock.now = T0 + 1000;
    const r3 = await rotateKey(w.deps, 'vm1', { graceSeconds: 10 });
    expect(r3.keyId).toBe(3);
    expect(r3.previousKeys).toEqual([
      { keyId: 1, retiresAt: new Date(T0 + 11_000).toISOString() },
      { keyId: 2, retiresAt: new Date(T0 + 11_000).toISOString() },
    ]);
    w.clock.now = T0 + 2000;
    const r4 = await rotateKey(w.deps, 'vm1', { graceSeconds: 7200 });
    expect(r4.previousKeys).toEqual([
      { keyId: 1, retiresAt: new Date(T0 + 11_000).toISOString() },
      { keyId: 2, retiresAt: new Date(T0 + 11_000).toISOString() },
      { keyId: 3, retiresAt: new Date(T0 + 2000 + 7_200_000).toISOString() },
    ]);
    w.clock.now = T0 + 20_000;
    const r5 = await rotateKey(w.deps, 'vm1', {});
    // keys 1 and 2 are past their cut-off: no longer listed as accepted
    expect(r5.previousKeys.map((k) => k.keyId)).toEqual([3, 4]);
  });

  it('of two rotations at once exactly one wins; the other is 409 CONCURRENT_ROTATION', async () => {
    const results = await Promise.allSettled([rotateKey(w.deps, 'vm1', {}), rotateKey(w.deps, 'vm1', {})]);
    const won = results.filter((r) => r.status === 'fulfilled');
    const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect(won).toHaveLength(1);
    expect(lost).toHaveLength(1);
    expect(lost[0]!.reason).toMatchObject({ code: 'CONCURRENT_ROTATION', status: 409 });
    expect(String(lost[0]!.reason.message)).toMatch(/^The data key of VM 'vm1' was rotated by another request meanwhile \(current key 2\)/);
    expect((await w.state.listKeys('vm1')).map((k) => k.keyId)).toEqual([1, 2]);
    expect((await getVm(w.deps, 'vm1')).keyId).toBe(2);
  });

  it('another writer of the VM row meanwhile only makes it retry', async () => {
    let interfered = false;
    const state = w.state;
    const racy = Object.create(state) as MemoryStateStore;
    racy.rotateKey = async (vm: VmRecord, key: WrappedKeyRecord, retire: readonly KeyRetirement[]) => {
      if (!interfered) {
        interfered = true;
        await updateVmWithRetry({ ...w.deps, state }, 'vm1', (v) => ({ ...v, deadLetteredCount: v.deadLetteredCount + 1 }));
      }
      return state.rotateKey(vm, key, retire);
    };
    const r = await rotateKey({ ...w.deps, state: racy }, 'vm1', {});
    expect(interfered).toBe(true);
    expect(r.keyId).toBe(2);
    const vm = await state.getVm('vm1');
    expect(vm?.vm).toMatchObject({ keyId: 2, deadLetteredCount: 1 });
  });

  it('refuses bad input with 400 naming the field, unknown VMs with 404, and VMs that take no batches with 409', async () => {
    for (const [body, text] of [
      [{ graceSeconds: -1 }, 'graceSeconds: graceSeconds must be at least 0'],
      [{ graceSeconds: 1.5 }, 'graceSeconds: graceSeconds must be a whole number of seconds'],
      [{ graceSeconds: 604_801 }, 'graceSeconds: graceSeconds must be at most 604800 (7 days)'],
      [{ graceSeconds: '60' }, 'graceSeconds: '],
      [{ grace: 60 }, "(body): unknown field(s) 'grace'"],
      [[], '(body): '],
    ] as const) {
      await expect(rotateKey(w.deps, 'vm1', body)).rejects.toMatchObject({ code: 'INVALID_REQUEST', status: 400, message: expect.stringContaining(`Invalid rotate-key request: ${text}`) });
    }
    await expect(rotateKey(w.deps, 'VM_1', {})).rejects.toMatchObject({ code: 'INVALID_ID', status: 400 });
    await expect(rotateKey(w.deps, 'ghost', {})).rejects.toMatchObject({ code: 'VM_NOT_FOUND', status: 404 });
    await disableReplication(w.deps, 'vm1');
    await expect(rotateKey(w.deps, 'vm1', {})).rejects.toMatchObject({
      code: 'INVALID_TRANSITION',
      status: 409,
      message: expect.stringMatching(/^VM 'vm1' is in state 'disabled' and takes no batches, so its data key cannot be rotated/),
    });
    expect((await w.state.listKeys('vm1')).map((k) => k.keyId)).toEqual([1]);
  });

  it('enabling a disabled VM again after rotations starts from a key id never used before', async () => {
    await rotateKey(w.deps, 'vm1', {});
    await disableReplication(w.deps, 'vm1');
    const again = await enableReplication(w.deps, 'vm1', { disks: [{ diskId: 'disk0', sizeBytes: SIZE }] });
    expect(again.vm.keyId).toBe(3);
    expect((await w.state.listKeys('vm1')).map((k) => [k.keyId, k.retiresAt])).toEqual([[3, undefined]]);
  });
});
