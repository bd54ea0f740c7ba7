/**
 * Recovery points (docs/recovery-points.md): captured by the apply path at consistency tags,
 * listed over HTTP, and pruned by the retention timer.
 */
import { completeRecoveryPoints, expiredCaptures, type CaptureRecord, type RecoveryPoint } from '../domain/recovery-points';
import type { BatchHeader } from '../domain/wire-format';
import type { CaptureStore } from '../ports/capture-store';
import type { DiskRecord, StateStore } from '../ports/state-store';
import { apiErrors } from './api-error';
import type { ReplicationDeps } from './deps';
import { parseVmId } from './vms';

export interface RecoveryDeps extends ReplicationDeps {
  captures: CaptureStore;
}

/**
 * The apply path's hook, called after a tagged batch is written to its disk and before its
 * sequence is recorded: captures the disk at the tag and records the capture. A redelivered
 * batch (crash after the capture, before the record) finds the capture and records it again:
 * both steps are idempotent. Tags carried before the disk's initial copy is complete (in its
 * current epoch) capture nothing: such a disk is not yet a copy of the source.
 */
export async function captureAtTag(
  deps: { state: StateStore; captures: CaptureStore; now: () => number },
  disk: DiskRecord,
  header: Pick<BatchHeader, 'consistency' | 'epoch' | 'sequence' | 'capturedAt' | 'initialReplicationComplete'>,
): Promise<CaptureRecord | undefined> {
  const tag = header.consistency;
  if (!tag) return undefined;
  const copied = (header.epoch === disk.epoch && disk.initialComplete) || header.initialReplicationComplete;
  if (!copied) return undefined;
  await deps.captures.capture({ vmId: disk.vmId, diskId: disk.diskId }, disk.sizeBytes, tag.tagId);
  const record: CaptureRecord = {
    vmId: disk.vmId,
    diskId: disk.diskId,
    tagId: tag.tagId,
    kind: tag.kind,
    capturedAt: header.capturedAt,
    createdAt: deps.now(),
    sizeBytes: disk.sizeBytes,
    epoch: header.epoch,
    sequence: header.sequence,
  };
  await deps.state.putCapture(record);
  return record;
}

export interface RecoveryPointView {
  id: string;
  /** When the point came to exist in the cloud (its last disk captured). */
  createdAt: string;
  /** The moment on the source it represents (newest capture time of its batches). */
  capturedAt: string;
  type: 'crash-consistent' | 'app-consistent';
  disks: { diskId: string; sizeBytes: number; capturedAt: string; epoch: number; sequence: number }[];
}

export function toRecoveryPointView(p: RecoveryPoint): RecoveryPointView {
  return {
    id: p.id,
    createdAt: new Date(p.createdAt).toISOString(),
    capturedAt: new Date(p.capturedAt).toISOString(),
    type: p.kind,
    disks: p.disks.map((d) => ({ diskId: d.diskId, sizeBytes: d.sizeBytes, capturedAt: new Date(d.capturedAt).toISOString(), epoch: d.epoch, sequence: d.sequence })),
  };
}

/** The VM's complete recovery points, newest first (none for a disabled VM: its disks are gone). */
export async function recoveryPointsOf(deps: ReplicationDeps, vmId: string): Promise<{ points: RecoveryPoint[]; state: string; diskIds: string[] }> {
  const found = await deps.state.getVm(vmId);
  if (!found) throw apiErrors.vmNotFound(vmId);
  const diskIds = found.disks.map((d) => d.diskId);
  if (found.vm.state === 'disabled') return { points: [], state: found.vm.state, diskIds };
  return { points: completeRecoveryPoints(await deps.state.listCaptures(vmId), diskIds), state: found.vm.state, diskIds };
}

export async function listRecoveryPoints(deps: ReplicationDeps, rawVmId: unknown): Promise<RecoveryPointView[]> {
  const vmId = parseVmId(rawVmId);
  return (await recoveryPointsOf(deps, vmId)).points.map(toRecoveryPointView);
}

export interface RetentionOptions {
  /** Snapshots younger than this are never collected (a capture may be taking them now). Default 1 hour. */
  graceMs?: number;
}

export interface RetentionReport {
  vmId: string;
  deletedCaptures: number;
  deletedSnapshots: number;
}

/**
 * Deletes expired recovery points (domain/recovery-points.ts `expiredCaptures` says which),
 * then the snapshots no remaining capture refers to. Each capture's manifest goes before its
 * row, so a crash in between leaves a row that the next run deletes again (never a listed point
 * without its data). A disabled VM's captures all go (its disks were deleted with it).
 */
export async function enforceRetention(deps: RecoveryDeps, options: RetentionOptions = {}): Promise<RetentionReport[]> {
  const graceMs = options.graceMs ?? 3600_000;
  const reports: RetentionReport[] = [];
  for (const { vm, disks } of await deps.state.listVms()) {
    const captures = await deps.state.listCaptures(vm.vmId);
    if (captures.length === 0) continue;
    let expired: CaptureRecord[];
    if (vm.state === 'disabled') {
      expired = captures;
    } else {
      const inUse = new Set<number>();
      if (vm.activeOperationId) {
        const op = await deps.state.getOperation(vm.vmId, vm.activeOperationId);
        if (op?.tagId !== undefined) inUse.add(op.tagId);
      }
      expired = expiredCaptures({ captures, diskIds: disks.map((d) => d.diskId), retentionHours: vm.policy.recoveryPointRetentionHours, now: deps.now(), inUse });
    }
    for (const c of expired) {
      if (vm.state !== 'disabled') await deps.captures.deleteCapture({ vmId: c.vmId, diskId: c.diskId }, c.tagId);
      await deps.state.deleteCapture(c.vmId, c.diskId, c.tagId);
    }
    let deletedSnapshots = 0;
    if (vm.state !== 'disabled') {
      for (const d of disks) deletedSnapshots += (await deps.captures.collectGarbage({ vmId: vm.vmId, diskId: d.diskId }, graceMs)).deleted;
    }
    reports.push({ vmId: vm.vmId, deletedCaptures: expired.length, deletedSnapshots });
  }
  return reports;
}
