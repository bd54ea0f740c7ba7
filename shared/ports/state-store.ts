/**
 * StateStore: per-VM replication state (Azure Tables in Azure; memory in unit tests).
 *
 * Shape: one partition per VM. The VM record and each disk record are separate rows, so the
 * apply function of one disk (one Service Bus session) updates its own row without contending
 * with the other disks of the VM; VM-wide changes (state transitions) touch the VM row.
 *
 * Concurrency: every record carries an opaque `etag`. `put*` with an etag succeeds only if the
 * stored record still has it; otherwise it fails with `StateStoreError` code `CONFLICT`
 * (the caller re-reads and retries: optimistic concurrency, so concurrent function instances
 * never lose an update). `createVm` writes the VM, its disks and its wrapped key atomically
 * (one transaction) and fails with `ALREADY_EXISTS` if the VM row exists.
 *
 * Keys: a VM has one current data key (`VmRecord.keyId`) and the keys it replaced, each stamped
 * with `retiresAt` (the cut-off after which batches sealed with it are refused). Only wrapped
 * keys are stored (shared/codec/key-wrap.ts); rows are deleted only with the VM.
 */
import type { ReplicationPolicy } from '../domain/policy';
import type { CaptureRecord } from '../domain/recovery-points';
import type { ResyncRecord } from '../domain/resync';
import type { VmState } from '../domain/state-machine';

export interface HealthIssueRecord {
  code: string;
  message: string;
  /** ms since epoch. */
  at: number;
}

export interface VmRecord {
  vmId: string;
  state: VmState;
  policy: ReplicationPolicy;
  /** ms since epoch. */
  createdAt: number;
  updatedAt: number;
  /** Current data key id (the wire format's key id). */
  keyId: number;
  /** Batches dead-lettered for this VM, and the last reasons (newest last, bounded). */
  deadLetteredCount: number;
  recentIssues: HealthIssueRecord[];
  /** Health as the monitor last saw it (for transitions and cheap listing); absent before. */
  lastHealth?: { health: string; codes: string[]; rpoSeconds: number | null; at: number };
  /** The operation (test-migrate, cleanup, migrate) running on this VM; at most one at a time. */
  activeOperationId?: string;
  /** While in `resync-required`: the epoch the resync uses (shared/domain/resync.ts, docs/resync.md). */
  resync?: ResyncRecord;
  etag?: string;
}

export interface DiskRecord {
  vmId: string;
  diskId: string;
  sizeBytes: number;
  /** Replication epoch: starts at 1, raised by each resync; sequences restart at 1 in a new epoch. */
  epoch: number;
  /** Highest sequence applied in `epoch`; 0 = none. */
  appliedSequence: number;
  /** ms since epoch when the last batch was applied; 0 = never. */
  lastAppliedAt: number;
  /** Capture time (on the source) of the newest applied batch; 0 = never. */
  lastCapturedAt: number;
  /** Bytes of the disk covered by the initial copy so far. */
  initialCoveredBytes: number;
  initialComplete: boolean;
  /** Set when a batch arrived after a missing one: the sequence that is missing. */
  missingSequence?: number;
  etag?: string;
}

export interface WrappedKeyRecord {
  vmId: string;
  keyId: number;
  /** The data key wrapped by the master key (never the plain key). */
  wrapped: Buffer;
  createdAt: number;
  /**
   * ms since epoch: set when a rotation replaced this key; from then on batches sealed with it
   * are refused (dead-lettered `KeyRetired`). Absent on the current key.
   */
  retiresAt?: number;
}

/** One key's cut-off, set by a rotation. */
export interface KeyRetirement {
  keyId: number;
  retiresAt: number;
}

/** At most this many retirements per rotation (a Table transaction holds 100 operations). */
export const MAX_RETIREMENTS_PER_ROTATION = 98;

export type OperationType = 'test-migrate' | 'test-migrate-cleanup' | 'migrate';
export type OperationStatus = 'running' | 'succeeded' | 'failed';

export interface OperationDiskResult {
  diskId: string;
  /** Blob URL of the fixed VHD, without any SAS or key. */
  vhdUrl: string;
  /** The VHD's data bytes (its virtual size): the disk size rounded up to a MiB, at least 20 MiB. */
  sizeBytes: number;
}

/** One long-running operation (row `op:<operationId>` in the VM's partition). */
export interface OperationRecord {
  vmId: string;
  operationId: string;
  type: OperationType;
  status: OperationStatus;
  /** The recovery point tag it reads (test-migrate, migrate). */
  tagId?: number;
  createdAt: number;
  updatedAt: number;
  /** Disks finished so far (all of them once succeeded), in disk order. */
  disks: OperationDiskResult[];
  error?: { code: string; message: string };
  etag?: string;
}

export interface VmWithDisks {
  vm: VmRecord;
  disks: DiskRecord[];
}

export interface StateStore {
  createVm(vm: VmRecord, disks: DiskRecord[], key: WrappedKeyRecord): Promise<void>;
  getVm(vmId: string): Promise<VmWithDisks | undefined>;
  listVms(): Promise<VmWithDisks[]>;
  getDisk(vmId: string, diskId: string): Promise<DiskRecord | undefined>;
  getKey(vmId: string, keyId: number): Promise<WrappedKeyRecord | undefined>;
  /** Every key of the VM (wrapped), by key id ascending. */
  listKeys(vmId: string): Promise<WrappedKeyRecord[]>;
  /**
   * Key rotation, all or nothing (one transaction in the VM's partition): replaces the VM row
   * under `vm.etag` (the row carries the new current `keyId`), creates `key`, and stamps each
   * of `retire` (existing keys of the VM) with its `retiresAt`. Fails with `CONFLICT` when the
   * VM row changed since it was read, `ALREADY_EXISTS` when `key.keyId` exists (a concurrent
   * rotation won), `NOT_FOUND` when a key to retire does not exist; in each case nothing is
   * written. At most MAX_RETIREMENTS_PER_ROTATION retirements. Returns the VM row's new etag.
   */
  rotateKey(vm: VmRecord, key: WrappedKeyRecord, retire: readonly KeyRetirement[]): Promise<string>;
  /** Replaces the VM row; with `vm.etag` set, only if unchanged since read. Returns the new etag. */
  putVm(vm: VmRecord): Promise<string>;
  putDisk(disk: DiskRecord): Promise<string>;
  /** Deletes the VM, its disks, its keys, captures and operations. Idempotent. */
  deleteVm(vmId: string): Promise<void>;

  /** Records a disk's capture at a consistency tag (row `cap:<tagId>:<diskId>`); idempotent upsert. */
  putCapture(capture: CaptureRecord): Promise<void>;
  /** Every capture of the VM, any order. */
  listCaptures(vmId: string): Promise<CaptureRecord[]>;
  /** Idempotent. */
  deleteCapture(vmId: string, diskId: string, tagId: number): Promise<void>;

  /** Creates (no etag: fails ALREADY_EXISTS if present) or replaces under its etag. Returns the new etag. */
  putOperation(op: OperationRecord): Promise<string>;
  getOperation(vmId: string, operationId: string): Promise<OperationRecord | undefined>;
}

export type StateStoreErrorCode = 'CONFLICT' | 'ALREADY_EXISTS' | 'NOT_FOUND' | 'STORAGE_UNAVAILABLE';

export class StateStoreError extends Error {
  override readonly name = 'StateStoreError';
  constructor(
    readonly code: StateStoreErrorCode,
    message: string,
    options: { cause?: unknown } = {},
  ) {
    super(message, options);
  }
  get retryable(): boolean {
    return this.code === 'CONFLICT' || this.code === 'STORAGE_UNAVAILABLE';
  }
}

export function isStateStoreError(err: unknown): err is StateStoreError {
  return err instanceof Error && err.name === 'StateStoreError';
}
