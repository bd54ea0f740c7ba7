/**
 * Long-running operations on a VM: test-migrate, test-migrate-cleanup and migrate
 * (docs/recovery-points.md, "Operations").
 *
 * `startOperation` (HTTP) validates, records the operation (`op:<id>` row, status running),
 * moves the VM through the state machine and marks it busy (`activeOperationId`, under the
 * VM row's ETag, so two operations can never run at once), then enqueues it; the caller gets
 * 202 at once. `runOperation` (queue trigger, at least once) does the work and is idempotent:
 * a finished operation is skipped, finished disks are skipped, a half-written VHD is written
 * again over the same page blob (page writes are absolute; the footer is derived from the
 * operation, not the clock). So a host restart mid-way resumes where the state says.
 *
 * Order of the final steps: the VM's transition (and clearing `activeOperationId`, only if it
 * is still this operation) before the operation's status, so a crash between them is repaired
 * by the redelivery, which finds the VM already moved and only records the status.
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { EXTENT_BYTES } from '../domain/extents';
import { faultPoint } from '../faults';
import { parseRecoveryPointId, recoveryPointId, recoveryPointIdSchema } from '../domain/recovery-points';
import { transition, type VmEventType } from '../domain/state-machine';
import { encodeVhdFooter, vhdDataBytes } from '../domain/vhd';
import { isDiskStoreError, type DiskRef } from '../ports/disk-store';
import type { OperationMessage, OperationQueue } from '../ports/operation-queue';
import { isStateStoreError, type OperationDiskResult, type OperationRecord, type OperationType, type VmRecord } from '../ports/state-store';
import { MAX_PAGE_WRITE_BYTES, type VhdContainer, type VhdStore, type VhdTarget } from '../ports/vhd-store';
import { ApiError, apiErrors, isApiError } from './api-error';
import { recoveryPointsOf, type RecoveryDeps } from './recovery-points';
import { parseVmId, updateVmWithRetry } from './vms';

export interface OperationDeps extends RecoveryDeps {
  vhds: VhdStore;
  queue: OperationQueue;
}

export const OPERATION_TYPES: readonly OperationType[] = ['test-migrate', 'test-migrate-cleanup', 'migrate'];

const startSchema = z.strictObject({ recoveryPointId: recoveryPointIdSchema.optional() });
const cleanupSchema = z.strictObject({});

/** What each operation does to the VM: the event at its start, on success, on failure. */
const EVENTS: Readonly<Record<OperationType, { start: VmEventType; succeeded: VmEventType; failed?: VmEventType; moveAtStart: boolean }>> = {
  // The VM is test-migrating from the start (replication goes on); it stays so until cleanup.
  'test-migrate': { start: 'testMigrateStarted', succeeded: 'testMigrateFinished', failed: 'testMigrateFinished', moveAtStart: true },
  // Checked at the start, applied at the end: the VM leaves test-migrating only once its test VHDs are gone.
  'test-migrate-cleanup': { start: 'testCleanup', succeeded: 'testCleanup', moveAtStart: false },
  migrate: { start: 'migrateStarted', succeeded: 'migrateCompleted', failed: 'migrateFailed', moveAtStart: true },
};

const CONTAINER: Readonly<Record<'test-migrate' | 'migrate', VhdContainer>> = { 'test-migrate': 'test-migrated', migrate: 'migrated' };

export interface OperationView {
  operationId: string;
  type: OperationType;
  status: OperationRecord['status'];
  recoveryPointId?: string;
  createdAt: string;
  updatedAt: string;
  error?: { code: string; message: string };
  disks?: OperationDiskResult[];
}

export function toOperationView(op: OperationRecord): OperationView {
  return {
    operationId: op.operationId,
    type: op.type,
    status: op.status,
    ...(op.tagId !== undefined ? { recoveryPointId: recoveryPointId(op.tagId) } : {}),
    createdAt: new Date(op.createdAt).toISOString(),
    updatedAt: new Date(op.updatedAt).toISOString(),
    ...(op.error ? { error: op.error } : {}),
    ...(op.type !== 'test-migrate-cleanup' ? { disks: op.disks } : {}),
  };
}

function parseBody(type: OperationType, body: unknown): { recoveryPointId?: string } {
  const input = body === undefined ? {} : body;
  if (type === 'test-migrate-cleanup') {
    const r = cleanupSchema.safeParse(input);
    if (!r.success) throw apiErrors.invalidRequest(`${type} request (it takes no body, or {})`, r.error);
    return {};
  }
  const r = startSchema.safeParse(input);
  if (!r.success) throw apiErrors.invalidRequest(`${type} request`, r.error);
  return r.data.recoveryPointId !== undefined ? { recoveryPointId: r.data.recoveryPointId } : {};
}

/** Starts an operation; resolves with its id as soon as it is recorded and queued. */
export async function startOperation(deps: OperationDeps, type: OperationType, rawVmId: unknown, body: unknown): Promise<{ operationId: string }> {
  const vmId = parseVmId(rawVmId);
  const request = parseBody(type, body);
  const found = await deps.state.getVm(vmId);
  if (!found) throw apiErrors.vmNotFound(vmId);
  const events = EVENTS[type];
  checkStartable(found.vm, type);

  let tagId: number | undefined;
  if (type !== 'test-migrate-cleanup') {
    const { points } = await recoveryPointsOf(deps, vmId);
    if (request.recoveryPointId !== undefined) {
      const wanted = parseRecoveryPointId(request.recoveryPointId);
      const point = points.find((p) => p.tagId === wanted);
      if (!point) throw apiErrors.recoveryPointNotFound(vmId, request.recoveryPointId);
      tagId = point.tagId;
    } else {
      const latest = points[0];
      if (!latest) throw apiErrors.noRecoveryPoint(vmId, found.vm.state);
      tagId = latest.tagId;
    }
  }

  const now = deps.now();
  const operationId = `op-${deps.randomBytes(8).toString('hex')}`;
  const op: OperationRecord = { vmId, operationId, type, status: 'running', ...(tagId !== undefined ? { tagId } : {}), createdAt: now, updatedAt: now, disks: [] };
  op.etag = await deps.state.putOperation(op);
  try {
    await updateVmWithRetry(deps, vmId, (vm) => {
      checkStartable(vm, type);
      if (!events.moveAtStart) return { ...vm, activeOperationId: operationId };
      const t = transition(vm.state, { type: events.start }, { vmId });
      if (!t.ok) throw apiErrors.invalidTransition(t.error.message);
      return { ...vm, state: t.state, activeOperationId: operationId };
    });
  } catch (err) {
    // Refused (or failed): the operation never ran. Say so on its row, for the record.
    const error = isApiError(err) ? { code: err.code, message: err.message } : { code: 'INTERNAL', message: 'The operation could not be started.' };
    await deps.state.putOperation({ ...op, status: 'failed', error, updatedAt: deps.now() }).catch(() => undefined);
    throw err;
  }
  try {
    await deps.queue.enqueue({ vmId, operationId });
  } catch (err) {
    // Nothing has run: undo the start so the caller can simply retry.
    await abandonStart(deps, op);
    throw new ApiError('STORAGE_UNAVAILABLE', `${type} of VM '${vmId}' could not be queued (Service Bus queue 'operations' did not answer); nothing was started, retry shortly.`, { cause: err });
  }
  return { operationId };
}

/** Reverts a start whose message could not be queued: the VM back where it was, the operation failed. */
async function abandonStart(deps: OperationDeps, op: OperationRecord): Promise<void> {
  const revert: VmEventType | undefined = op.type === 'test-migrate' ? 'testCleanup' : op.type === 'migrate' ? 'migrateFailed' : undefined;
  await updateVmWithRetry(deps, op.vmId, (vm) => {
    if (vm.activeOperationId !== op.operationId) return vm;
    const { activeOperationId: _abandoned, ...rest } = vm;
    const t = revert ? transition(vm.state, { type: revert }, { vmId: vm.vmId }) : undefined;
    return t?.ok ? { ...rest, state: t.state } : rest;
  });
  const current = (await deps.state.getOperation(op.vmId, op.operationId)) ?? op;
  await saveOperation(deps, { ...current, status: 'failed', error: { code: 'NOT_QUEUED', message: `Operation '${op.operationId}' could not be queued; nothing was started.` } });
}

/** 409 unless the VM is idle and in a state the operation can start from. */
function checkStartable(vm: VmRecord, type: OperationType): void {
  if (vm.activeOperationId) throw apiErrors.operationInProgress(vm.vmId, vm.state, vm.activeOperationId);
  const t = transition(vm.state, { type: EVENTS[type].start }, { vmId: vm.vmId });
  if (!t.ok) throw apiErrors.invalidTransition(t.error.message);
}

export async function getOperation(deps: OperationDeps, rawVmId: unknown, rawOperationId: unknown): Promise<OperationView> {
  const vmId = parseVmId(rawVmId);
  const operationId = typeof rawOperationId === 'string' && /^op-[0-9a-f]{16}$/.test(rawOperationId) ? rawOperationId : undefined;
  // Input first: a malformed id is a 400 whether or not the VM exists.
  if (!operationId) throw new ApiError('INVALID_ID', `operationId must be 'op-' followed by 16 hex digits, as returned by the operation's 202 response.`);
  if (!(await deps.state.getVm(vmId))) throw apiErrors.vmNotFound(vmId);
  const op = await deps.state.getOperation(vmId, operationId);
  if (!op) throw apiErrors.operationNotFound(vmId, operationId);
  return toOperationView(op);
}

export interface RunOptions {
  /** The queue will not deliver this message again: record a failure instead of throwing. */
  finalAttempt?: boolean;
}

export type RunOutcome = { kind: 'skipped'; reason: string } | { kind: 'succeeded' | 'failed'; operation: OperationRecord };

/**
 * Runs (or resumes) one operation. Throws on a transient failure (the message is redelivered);
 * a permanent one (the recovery point is gone, the VM vanished, a non-retryable storage error,
 * or the last delivery) marks the operation failed and takes the VM out of its busy state.
 */
export async function runOperation(deps: OperationDeps, message: OperationMessage, options: RunOptions = {}): Promise<RunOutcome> {
  let op = await deps.state.getOperation(message.vmId, message.operationId);
  if (!op) return { kind: 'skipped', reason: `operation '${message.operationId}' of VM '${message.vmId}' does not exist` };
  if (op.status !== 'running') return { kind: 'skipped', reason: `operation '${op.operationId}' already ${op.status}` };
  try {
    const found = await deps.state.getVm(op.vmId);
    if (!found) throw apiErrors.vmNotFound(op.vmId);
    if (found.vm.activeOperationId !== op.operationId) {
      // The VM was already released by this operation (a crash before its status was saved):
      // record the outcome the VM shows.
      const done = op.type === 'test-migrate-cleanup' ? found.vm.state !== 'test-migrating' : op.disks.length === found.disks.length;
      const interrupted = { code: 'OPERATION_INTERRUPTED', message: `Operation '${op.operationId}' was interrupted and VM '${op.vmId}' released; start it again.` };
      op = await saveOperation(deps, done ? { ...op, status: 'succeeded' } : { ...op, status: 'failed', error: op.error ?? interrupted });
      return { kind: done ? 'succeeded' : 'failed', operation: op };
    }
    if (op.type === 'test-migrate-cleanup') {
      await deps.vhds.deletePrefix('test-migrated', `${op.vmId}/`);
    } else {
      const diskIds = found.disks.map((d) => d.diskId).sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
      for (const diskId of diskIds) {
        if (op.disks.some((d) => d.diskId === diskId)) continue; // done before a restart
        const disk = found.disks.find((d) => d.diskId === diskId)!;
        const result = await exportFixedVhd(deps, { vmId: op.vmId, diskId }, disk.sizeBytes, op.tagId ?? 0, vhdTarget(op, diskId), op);
        op = await saveOperation(deps, { ...op, disks: [...op.disks, result] });
        faultPoint('operation.disk-exported');
      }
    }
    await finishVm(deps, op, 'succeeded');
    op = await saveOperation(deps, { ...op, status: 'succeeded' });
    return { kind: 'succeeded', operation: op };
  } catch (err) {
    const permanent = isApiError(err) || (isDiskStoreError(err) && !err.retryable) || options.finalAttempt === true;
    if (!permanent) throw err;
    const error = isApiError(err) || isDiskStoreError(err) ? { code: err.code, message: err.message } : { code: 'OPERATION_FAILED', message: err instanceof Error ? err.message : String(err) };
    await finishVm(deps, op, 'failed');
    const current = (await deps.state.getOperation(op.vmId, op.operationId)) ?? op;
    op = await saveOperation(deps, { ...current, status: 'failed', error });
    return { kind: 'failed', operation: op };
  }
}

function vhdTarget(op: OperationRecord, diskId: string): VhdTarget {
  return { container: CONTAINER[op.type as 'test-migrate' | 'migrate'], name: `${op.vmId}/${op.operationId}/${diskId}.vhd` };
}

async function saveOperation(deps: OperationDeps, op: OperationRecord): Promise<OperationRecord> {
  const next = { ...op, updatedAt: deps.now() };
  const etag = await deps.state.putOperation(next);
  return { ...next, etag };
}

/** Moves the VM at the end of the operation and clears its busy mark, if it is still this operation's. */
async function finishVm(deps: OperationDeps, op: OperationRecord, outcome: 'succeeded' | 'failed'): Promise<void> {
  const event = outcome === 'succeeded' ? EVENTS[op.type].succeeded : EVENTS[op.type].failed;
  try {
    await updateVmWithRetry(deps, op.vmId, (vm) => {
      if (vm.activeOperationId !== op.operationId) return vm;
      const { activeOperationId: _done, ...rest } = vm;
      const t = event ? transition(vm.state, { type: event }, { vmId: vm.vmId }) : undefined;
      return t?.ok ? { ...rest, state: t.state } : rest;
    });
  } catch (err) {
    if (isApiError(err) && err.code === 'VM_NOT_FOUND') return;
    if (isStateStoreError(err) && err.code === 'NOT_FOUND') return;
    throw err;
  }
}

/**
 * Writes disk `disk` as of tag `tagId` into a fixed VHD page blob: only the extents that are not
 * all zeros (known from the capture's block ids, without reading them), each one Put Page of at
 * most 4 MiB, then the footer. Returns what the operation reports for the disk.
 */
export async function exportFixedVhd(
  deps: Pick<OperationDeps, 'captures' | 'vhds'>,
  disk: DiskRef,
  sizeBytes: number,
  tagId: number,
  target: VhdTarget,
  op: Pick<OperationRecord, 'operationId' | 'createdAt'>,
  concurrency = 4,
): Promise<OperationDiskResult> {
  const dataBytes = vhdDataBytes(sizeBytes);
  await deps.vhds.create(target, dataBytes + 512);
  const extents = (await deps.captures.extents(disk, sizeBytes, tagId)).filter((e) => !e.zero);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, extents.length) }, async () => {
      while (next < extents.length) {
        const e = extents[next++]!;
        const data = await deps.captures.readExtent(disk, sizeBytes, tagId, e.extentIndex);
        for (let at = 0; at < data.length; at += MAX_PAGE_WRITE_BYTES) {
          await deps.vhds.writePages(target, e.extentIndex * EXTENT_BYTES + at, data.subarray(at, Math.min(data.length, at + MAX_PAGE_WRITE_BYTES)));
        }
      }
    }),
  );
  const uniqueId = createHash('sha256').update(`${op.operationId}/${disk.vmId}/${disk.diskId}`).digest().subarray(0, 16);
  await deps.vhds.writePages(target, dataBytes, encodeVhdFooter({ currentSize: dataBytes, timestampMs: op.createdAt, uniqueId }));
  return { diskId: disk.diskId, vhdUrl: deps.vhds.url(target), sizeBytes: dataBytes };
}

/**
 * Re-enqueues operations whose worker stopped without a trace (the message was lost, or the
 * process died before enqueueing): running, the VM still busy with them, and not updated for
 * `staleMs`. The worker is idempotent, so a duplicate costs only repeated page writes.
 */
export async function resumeStalledOperations(deps: OperationDeps, staleMs = 15 * 60_000): Promise<string[]> {
  const resumed: string[] = [];
  for (const { vm } of await deps.state.listVms()) {
    if (!vm.activeOperationId) continue;
    const op = await deps.state.getOperation(vm.vmId, vm.activeOperationId);
    if (op?.status !== 'running' || deps.now() - op.updatedAt < staleMs) continue;
    await deps.queue.enqueue({ vmId: vm.vmId, operationId: op.operationId });
    resumed.push(op.operationId);
  }
  return resumed;
}
