import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TableStateStore } from '../../../shared/azure/table-state-store';
import { DEFAULT_POLICY } from '../../../shared/domain/policy';
import { isStateStoreError, type DiskRecord, type VmRecord } from '../../../shared/ports/state-store';
import { startAzurite, type TestAzurite } from '../../support/azurite';

function vm(vmId: string): VmRecord {
  return { vmId, state: 'initial-replication', policy: DEFAULT_POLICY, createdAt: 1, updatedAt: 1, keyId: 1, deadLetteredCount: 0, recentIssues: [] };
}
function disk(vmId: string, diskId: string): DiskRecord {
  return { vmId, diskId, sizeBytes: 1 << 20, epoch: 1, appliedSequence: 0, lastAppliedAt: 0, lastCapturedAt: 0, initialCoveredBytes: 0, initialComplete: false };
}

describe('TableStateStore (Azurite)', () => {
  let azurite: TestAzurite;
  let store: TableStateStore;
  beforeAll(async () => {
    azurite = await startAzurite();
    store = TableStateStore.fromConnectionString(azurite.connectionString, `t${process.pid}`);
  });
  afterAll(async () => azurite?.stop());

  it('creates a VM with disks and key atomically, and refuses a second create', async () => {
    const wrapped = randomBytes(61);
    await store.createVm(vm('a1'), [disk('a1', 'disk0'), disk('a1', 'disk1')], { vmId: 'a1', keyId: 1, wrapped, createdAt: 5 });
    const got = await store.getVm('a1');
    expect(got?.vm).toMatchObject({ vmId: 'a1', state: 'initial-replication', policy: DEFAULT_POLICY });
    expect(got?.disks.map((d) => d.diskId)).toEqual(['disk0', 'disk1']);
    expect((await store.getKey('a1', 1))?.wrapped.equals(wrapped)).toBe(true);
    expect(await store.getKey('a1', 2)).toBeUndefined();
    const err = await store.createVm(vm('a1'), [disk('a1', 'disk9')], { vmId: 'a1', keyId: 1, wrapped, createdAt: 5 }).catch((e: unknown) => e);
    expect(isStateStoreError(err) && err.code).toBe('ALREADY_EXISTS');
    expect(await store.getDisk('a1', 'disk9')).toBeUndefined();
  });

  it('guards updates with ETags so concurrent writers cannot lose an update', async () => {
    await store.createVm(vm('b1'), [disk('b1', 'disk0')], { vmId: 'b1', keyId: 1, wrapped: randomBytes(61), createdAt: 5 });
    const d1 = (await store.getDisk('b1', 'disk0'))!;
    const d2 = (await store.getDisk('b1', 'disk0'))!;
    const etag = await store.putDisk({ ...d1, appliedSequence: 1 });
    expect(etag).toBeTruthy();
    const err = await store.putDisk({ ...d2, appliedSequence: 7 }).catch((e: unknown) => e);
    expect(isStateStoreError(err) && err.code).toBe('CONFLICT');
    expect((await store.getDisk('b1', 'disk0'))?.appliedSequence).toBe(1);
    const v = (await store.getVm('b1'))!.vm;
    await store.putVm({ ...v, state: 'protected' });
    const stale = await store.putVm({ ...v, state: 'disabled' }).catch((e: unknown) => e);
    expect(isStateStoreError(stale) && stale.code).toBe('CONFLICT');
  });

  it('lists VMs with their disks and deletes a VM whole', async () => {
    await store.createVm(vm('c1'), [disk('c1', 'disk0')], { vmId: 'c1', keyId: 1, wrapped: randomBytes(61), createdAt: 5 });
    const all = await store.listVms();
    expect(all.map((v) => v.vm.vmId)).toEqual(expect.arrayContaining(['a1', 'b1', 'c1']));
    expect(all.find((v) => v.vm.vmId === 'a1')?.disks).toHaveLength(2);
    await store.deleteVm('c1');
    await store.deleteVm('c1');
    expect(await store.getVm('c1')).toBeUndefined();
    expect(await store.getKey('c1', 1)).toBeUndefined();
  });
});
