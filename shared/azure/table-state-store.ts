/**
 * StateStore over Azure Tables: table `ferrystate`, one partition per VM.
 * Rows: `vm` (the VM), `disk:<diskId>` (one per disk), `key:<keyId, 10 digits>` (wrapped keys,
 * with `retiresAt` once a rotation replaced them; -1 while current).
 * Numbers are ms timestamps and byte counts below 2^53, stored as Double; structured fields
 * (policy, recent issues) as JSON strings (a property holds at most 64 KiB; both are bounded).
 */
import { TableClient, type TableEntity, type TableEntityResult } from '@azure/data-tables';
import { DEFAULT_POLICY, replicationPolicySchema } from '../domain/policy';
import type { CaptureRecord } from '../domain/recovery-points';
import { isVmState } from '../domain/state-machine';
import {
  MAX_RETIREMENTS_PER_ROTATION,
  StateStoreError,
  type DiskRecord,
  type KeyRetirement,
  type OperationRecord,
  type StateStore,
  type VmRecord,
  type VmWithDisks,
  type WrappedKeyRecord,
} from '../ports/state-store';
import { statusOf } from './rest';

export const STATE_TABLE = 'ferrystate';
const VM_ROW = 'vm';
const DISK_PREFIX = 'disk:';
const KEY_PREFIX = 'key:';
const CAPTURE_PREFIX = 'cap:';
const OP_PREFIX = 'op:';
/** The rows getVm needs: the VM and its disks (not its captures, keys or operations). */
const VM_AND_DISKS = `RowKey eq '${VM_ROW}' or (RowKey ge '${DISK_PREFIX}' and RowKey lt 'disk;')`;
const captureRow = (tagId: number, diskId: string): string => `${CAPTURE_PREFIX}${String(tagId).padStart(16, '0')}:${diskId}`;

type Row = TableEntityResult<Record<string, unknown>>;

function wrap(err: unknown, what: string): StateStoreError {
  if (err instanceof StateStoreError) return err;
  const status = statusOf(err);
  if (status === 412) return new StateStoreError('CONFLICT', `${what}: changed by someone else meanwhile; re-read and retry.`, { cause: err });
  if (status === 409) return new StateStoreError('ALREADY_EXISTS', `${what}: already exists.`, { cause: err });
  if (status === 404) return new StateStoreError('NOT_FOUND', `${what}: not found.`, { cause: err });
  const detail = err instanceof Error ? err.message.split('\n')[0] : String(err);
  return new StateStoreError('STORAGE_UNAVAILABLE', `${what}: table storage failed (${status ?? 'no status'}: ${detail}).`, { cause: err });
}

const num = (v: unknown): number => (typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : Number(v ?? 0));
const keyRow = (keyId: number): string => `${KEY_PREFIX}${String(keyId).padStart(10, '0')}`;

function keyToEntity(k: WrappedKeyRecord): TableEntity {
  return { partitionKey: k.vmId, rowKey: keyRow(k.keyId), wrapped: k.wrapped, createdAt: k.createdAt, retiresAt: k.retiresAt ?? -1 };
}

function keyFromEntity(vmId: string, e: Row): WrappedKeyRecord | undefined {
  const wrapped = e.wrapped;
  if (!(wrapped instanceof Uint8Array)) return undefined;
  const retiresAt = num(e.retiresAt);
  return { vmId, keyId: Number((e.rowKey ?? '').slice(KEY_PREFIX.length)), wrapped: Buffer.from(wrapped), createdAt: num(e.createdAt), ...(retiresAt >= 0 && e.retiresAt !== undefined ? { retiresAt } : {}) };
}

function vmToEntity(vm: VmRecord): TableEntity {
  return {
    partitionKey: vm.vmId,
    rowKey: VM_ROW,
    state: vm.state,
    policy: JSON.stringify(vm.policy),
    createdAt: vm.createdAt,
    updatedAt: vm.updatedAt,
    keyId: vm.keyId,
    deadLetteredCount: vm.deadLetteredCount,
    recentIssues: JSON.stringify(vm.recentIssues),
    lastHealth: vm.lastHealth ? JSON.stringify(vm.lastHealth) : '',
    activeOperationId: vm.activeOperationId ?? '',
    resync: vm.resync ? JSON.stringify(vm.resync) : '',
  };
}

function vmFromEntity(e: Row): VmRecord {
  const state = e.state;
  const policy = replicationPolicySchema.safeParse(JSON.parse(String(e.policy ?? '{}')));
  return {
    vmId: e.partitionKey ?? '',
    state: isVmState(state) ? state : 'disabled',
    policy: policy.success ? policy.data : DEFAULT_POLICY,
    createdAt: num(e.createdAt),
    updatedAt: num(e.updatedAt),
    keyId: num(e.keyId),
    deadLetteredCount: num(e.deadLetteredCount),
    recentIssues: JSON.parse(String(e.recentIssues ?? '[]')) as VmRecord['recentIssues'],
    ...(typeof e.lastHealth === 'string' && e.lastHealth ? { lastHealth: JSON.parse(e.lastHealth) as NonNullable<VmRecord['lastHealth']> } : {}),
    ...(typeof e.activeOperationId === 'string' && e.activeOperationId ? { activeOperationId: e.activeOperationId } : {}),
    ...(typeof e.resync === 'string' && e.resync ? { resync: JSON.parse(e.resync) as NonNullable<VmRecord['resync']> } : {}),
    etag: e.etag,
  };
}

function diskToEntity(d: DiskRecord): TableEntity {
  return {
    partitionKey: d.vmId,
    rowKey: DISK_PREFIX + d.diskId,
    sizeBytes: d.sizeBytes,
    epoch: d.epoch,
    appliedSequence: d.appliedSequence,
    lastAppliedAt: d.lastAppliedAt,
    lastCapturedAt: d.lastCapturedAt,
    initialCoveredBytes: d.initialCoveredBytes,
    initialComplete: d.initialComplete,
    missingSequence: d.missingSequence ?? -1,
  };
}

function diskFromEntity(e: Row): DiskRecord {
  const missing = num(e.missingSequence);
  return {
    vmId: e.partitionKey ?? '',
    diskId: (e.rowKey ?? '').slice(DISK_PREFIX.length),
    sizeBytes: num(e.sizeBytes),
    epoch: num(e.epoch) || 1,
    appliedSequence: num(e.appliedSequence),
    lastAppliedAt: num(e.lastAppliedAt),
    lastCapturedAt: num(e.lastCapturedAt),
    initialCoveredBytes: num(e.initialCoveredBytes),
    initialComplete: e.initialComplete === true,
    ...(missing >= 0 ? { missingSequence: missing } : {}),
    etag: e.etag,
  };
}

export class TableStateStore implements StateStore {
  private ensured: Promise<void> | undefined;

  constructor(private readonly table: TableClient) {}

  static fromConnectionString(connectionString: string, tableName = STATE_TABLE): TableStateStore {
    // quick retries (as the host's blob clients, composition.ts): the SDK's default backoff (up to 64 s) outlived session locks
    return new TableStateStore(TableClient.fromConnectionString(connectionString, tableName, { allowInsecureConnection: true, retryOptions: { maxRetries: 3, retryDelayInMs: 500, maxRetryDelayInMs: 4000 } }));
  }

  private ensureTable(): Promise<void> {
    this.ensured ??= this.table.createTable().catch((err: unknown) => {
      this.ensured = undefined;
      throw wrap(err, `creating table ${this.table.tableName}`);
    });
    return this.ensured;
  }

  async createVm(vm: VmRecord, disks: DiskRecord[], key: WrappedKeyRecord): Promise<void> {
    await this.ensureTable();
    try {
      await this.table.submitTransaction([
        ['create', vmToEntity(vm)],
        ...disks.map((d) => ['create', diskToEntity(d)] as ['create', TableEntity]),
        ['create', keyToEntity(key)],
      ]);
    } catch (err) {
      throw wrap(err, `VM '${vm.vmId}'`);
    }
  }

  private async partition(vmId: string, rowFilter?: string): Promise<Row[]> {
    await this.ensureTable();
    const rows: Row[] = [];
    try {
      const filter = `PartitionKey eq '${vmId.replace(/'/g, "''")}'${rowFilter ? ` and (${rowFilter})` : ''}`;
      for await (const e of this.table.listEntities<Record<string, unknown>>({ queryOptions: { filter } })) rows.push(e);
    } catch (err) {
      throw wrap(err, `reading VM '${vmId}'`);
    }
    return rows;
  }

  async getVm(vmId: string): Promise<VmWithDisks | undefined> {
    const rows = await this.partition(vmId, VM_AND_DISKS);
    const vmRow = rows.find((r) => r.rowKey === VM_ROW);
    if (!vmRow) return undefined;
    return { vm: vmFromEntity(vmRow), disks: rows.filter((r) => r.rowKey?.startsWith(DISK_PREFIX)).map(diskFromEntity) };
  }

  async listVms(): Promise<VmWithDisks[]> {
    await this.ensureTable();
    const byVm = new Map<string, { vm?: VmRecord; disks: DiskRecord[] }>();
    try {
      const filter = VM_AND_DISKS;
      for await (const e of this.table.listEntities<Record<string, unknown>>({ queryOptions: { filter } })) {
        const entry = byVm.get(e.partitionKey ?? '') ?? { disks: [] };
        if (e.rowKey === VM_ROW) entry.vm = vmFromEntity(e);
        else entry.disks.push(diskFromEntity(e));
        byVm.set(e.partitionKey ?? '', entry);
      }
    } catch (err) {
      throw wrap(err, 'listing VMs');
    }
    return [...byVm.values()].filter((e): e is VmWithDisks => e.vm !== undefined).sort((a, b) => a.vm.vmId.localeCompare(b.vm.vmId));
  }

  async getDisk(vmId: string, diskId: string): Promise<DiskRecord | undefined> {
    await this.ensureTable();
    try {
      return diskFromEntity(await this.table.getEntity<Record<string, unknown>>(vmId, DISK_PREFIX + diskId));
    } catch (err) {
      if (statusOf(err) === 404) return undefined;
      throw wrap(err, `reading disk '${vmId}/${diskId}'`);
    }
  }

  async getKey(vmId: string, keyId: number): Promise<WrappedKeyRecord | undefined> {
    await this.ensureTable();
    try {
      return keyFromEntity(vmId, await this.table.getEntity<Record<string, unknown>>(vmId, keyRow(keyId)));
    } catch (err) {
      if (statusOf(err) === 404) return undefined;
      throw wrap(err, `reading key ${keyId} of VM '${vmId}'`);
    }
  }

  async listKeys(vmId: string): Promise<WrappedKeyRecord[]> {
    const rows = await this.partition(vmId, `RowKey ge '${KEY_PREFIX}' and RowKey lt 'key;'`);
    return rows.map((r) => keyFromEntity(vmId, r)).filter((k): k is WrappedKeyRecord => k !== undefined).sort((a, b) => a.keyId - b.keyId);
  }

  async rotateKey(vm: VmRecord, key: WrappedKeyRecord, retire: readonly KeyRetirement[]): Promise<string> {
    if (retire.length > MAX_RETIREMENTS_PER_ROTATION) throw new Error(`At most ${MAX_RETIREMENTS_PER_ROTATION} keys can be retired in one rotation.`);
    await this.ensureTable();
    try {
      // One entity group transaction: the VM row under its ETag (If-Match), the new key
      // (insert: 409 if it exists) and the retirements (merge: 404 if missing); all or nothing.
      const res = await this.table.submitTransaction([
        ['update', vmToEntity(vm), 'Replace', { etag: vm.etag ?? '*' }],
        ['create', keyToEntity(key)],
        ...retire.map((r) => ['update', { partitionKey: vm.vmId, rowKey: keyRow(r.keyId), retiresAt: r.retiresAt }, 'Merge'] as ['update', TableEntity, 'Merge']),
      ]);
      return res.getResponseForEntity(VM_ROW)?.etag ?? res.subResponses[0]?.etag ?? '';
    } catch (err) {
      throw wrap(err, `rotating the data key of VM '${vm.vmId}'`);
    }
  }

  private async put(entity: TableEntity, etag: string | undefined, what: string): Promise<string> {
    await this.ensureTable();
    try {
      const res = etag
        ? await this.table.updateEntity(entity, 'Replace', { etag })
        : await this.table.upsertEntity(entity, 'Replace');
      return res.etag ?? '';
    } catch (err) {
      throw wrap(err, what);
    }
  }

  putVm(vm: VmRecord): Promise<string> {
    return this.put(vmToEntity(vm), vm.etag, `VM '${vm.vmId}'`);
  }

  putDisk(disk: DiskRecord): Promise<string> {
    return this.put(diskToEntity(disk), disk.etag, `disk '${disk.vmId}/${disk.diskId}'`);
  }

  async deleteVm(vmId: string): Promise<void> {
    const rows = await this.partition(vmId);
    // A transaction holds at most 100 operations.
    for (let i = 0; i < rows.length; i += 100) {
      try {
        await this.table.submitTransaction(rows.slice(i, i + 100).map((r) => ['delete', { partitionKey: vmId, rowKey: r.rowKey ?? '' }]));
      } catch (err) {
        if (statusOf(err) !== 404) throw wrap(err, `deleting VM '${vmId}'`);
      }
    }
  }

  async putCapture(c: CaptureRecord): Promise<void> {
    await this.put(
      {
        partitionKey: c.vmId,
        rowKey: captureRow(c.tagId, c.diskId),
        diskId: c.diskId,
        tagId: c.tagId,
        kind: c.kind,
        capturedAt: c.capturedAt,
        createdAt: c.createdAt,
        sizeBytes: c.sizeBytes,
        epoch: c.epoch,
        sequence: c.sequence,
      },
      undefined,
      `capture of '${c.vmId}/${c.diskId}' at tag ${c.tagId}`,
    );
  }

  async listCaptures(vmId: string): Promise<CaptureRecord[]> {
    const rows = await this.partition(vmId, `RowKey ge '${CAPTURE_PREFIX}' and RowKey lt 'cap;'`);
    return rows.map((e) => ({
      vmId,
      diskId: String(e.diskId ?? ''),
      tagId: num(e.tagId),
      kind: e.kind === 'app-consistent' ? 'app-consistent' : 'crash-consistent',
      capturedAt: num(e.capturedAt),
      createdAt: num(e.createdAt),
      sizeBytes: num(e.sizeBytes),
      epoch: num(e.epoch),
      sequence: num(e.sequence),
    }));
  }

  async deleteCapture(vmId: string, diskId: string, tagId: number): Promise<void> {
    await this.ensureTable();
    try {
      await this.table.deleteEntity(vmId, captureRow(tagId, diskId));
    } catch (err) {
      if (statusOf(err) !== 404) throw wrap(err, `deleting capture '${vmId}/${diskId}' at tag ${tagId}`);
    }
  }

  async putOperation(op: OperationRecord): Promise<string> {
    const entity: TableEntity = {
      partitionKey: op.vmId,
      rowKey: OP_PREFIX + op.operationId,
      type: op.type,
      status: op.status,
      tagId: op.tagId ?? -1,
      createdAt: op.createdAt,
      updatedAt: op.updatedAt,
      disks: JSON.stringify(op.disks),
      error: op.error ? JSON.stringify(op.error) : '',
    };
    const what = `operation '${op.operationId}' of VM '${op.vmId}'`;
    if (op.etag) return this.put(entity, op.etag, what);
    await this.ensureTable();
    try {
      return (await this.table.createEntity(entity)).etag ?? '';
    } catch (err) {
      throw wrap(err, what);
    }
  }

  async getOperation(vmId: string, operationId: string): Promise<OperationRecord | undefined> {
    await this.ensureTable();
    let e: Row;
    try {
      e = await this.table.getEntity<Record<string, unknown>>(vmId, OP_PREFIX + operationId);
    } catch (err) {
      if (statusOf(err) === 404) return undefined;
      throw wrap(err, `reading operation '${operationId}' of VM '${vmId}'`);
    }
    const tagId = num(e.tagId);
    return {
      vmId,
      operationId,
      type: e.type as OperationRecord['type'],
      status: e.status as OperationRecord['status'],
      ...(tagId > 0 ? { tagId } : {}),
      createdAt: num(e.createdAt),
      updatedAt: num(e.updatedAt),
      disks: JSON.parse(String(e.disks || '[]')) as OperationRecord['disks'],
      ...(typeof e.error === 'string' && e.error ? { error: JSON.parse(e.error) as NonNullable<OperationRecord['error']> } : {}),
      etag: e.etag,
    };
  }
}
