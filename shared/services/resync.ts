/**
 * Checksum resync and verification, cloud side (docs/resync.md):
 * - `requestResync`: POST /api/vms/{vmId}/resync moves the VM to `resync-required` and records
 *   the epoch the appliance sends the differing extents in.
 * - `diskHashes`: GET /api/vms/{vmId}/disks/{diskId}/hashes, the extent hashes of the live
 *   replica or of a recovery point's capture, one page at a time, read from committed block
 *   ids (never from disk bytes).
 */
import { z } from 'zod';
import { diskIdSchema } from '../domain/ids';
import { HASH_ALGORITHM, MAX_HASHES_PER_PAGE, hashOfBlockId, type ExtentHash } from '../domain/manifest';
import { nextEpoch } from '../domain/resync';
import { EXTENT_BYTES, extentCount } from '../domain/extents';
import { parseRecoveryPointId, recoveryPointId, recoveryPointIdSchema } from '../domain/recovery-points';
import { transition, type VmState } from '../domain/state-machine';
import type { CaptureStore } from '../ports/capture-store';
import { isDiskStoreError } from '../ports/disk-store';
import type { ReplicaManifest } from '../ports/replica-manifest';
import { isStateStoreError, type DiskRecord } from '../ports/state-store';
import { ApiError, apiErrors } from './api-error';
import type { ReplicationDeps } from './deps';
import { recoveryPointsOf } from './recovery-points';
import { parseVmId, updateVmWithRetry } from './vms';

export interface HashDeps extends ReplicationDeps {
  manifests: ReplicaManifest;
  captures: CaptureStore;
}

/** Reads of a live manifest that may race an apply before giving up with REPLICA_CHANGING. */
const CONSISTENT_READ_ATTEMPTS = 5;

const resyncBodySchema = z.strictObject({});

export interface ResyncAccepted {
  vmId: string;
  state: VmState;
  /** The epoch every disk's resync batches must carry. */
  epoch: number;
}

async function guard<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof ApiError) throw err;
    if ((isStateStoreError(err) && err.code === 'STORAGE_UNAVAILABLE') || (isDiskStoreError(err) && err.retryable)) throw apiErrors.unavailable(what, err);
    throw err;
  }
}

/**
 * `resyncRequested` under the VM row's ETag (409 naming the state when illegal). Asking again
 * while in resync-required restarts the resync in a fresh epoch (an appliance that crashed
 * mid-resync starts over cleanly; extents already sent compare equal and are not sent again).
 */
export async function requestResync(deps: ReplicationDeps, rawVmId: unknown, body: unknown): Promise<ResyncAccepted> {
  const vmId = parseVmId(rawVmId);
  const parsed = resyncBodySchema.safeParse(body === undefined ? {} : body);
  if (!parsed.success) throw apiErrors.invalidRequest('resync request (it takes no body, or {})', parsed.error);
  return guard(`Requesting a resync of VM '${vmId}'`, async () => {
    const { vm } = await updateVmWithRetry(deps, vmId, (v, disks) => {
      const t = transition(v.state, { type: 'resyncRequested' }, { vmId });
      if (!t.ok) throw apiErrors.invalidTransition(t.error.message);
      return { ...v, state: t.state, resync: { epoch: nextEpoch(disks), requestedAt: deps.now(), reason: 'requested' } };
    });
    return { vmId, state: vm.state, epoch: vm.resync?.epoch ?? 0 };
  });
}

export interface DiskHashesPage {
  vmId: string;
  diskId: string;
  sizeBytes: number;
  blockBytes: number;
  algorithm: typeof HASH_ALGORITHM;
  /** The live replica: null; a capture: its recovery point. */
  recoveryPointId: string | null;
  /** Epoch and sequence the hashes reflect (a capture: those of its tagged batch). */
  epoch: number;
  appliedSequence: number;
  totalBlocks: number;
  from: number;
  count: number;
  blocks: ExtentHash[];
  /** `from` of the next page, or null on the last. */
  next: number | null;
}

const wholeNumber = (field: string, max: number) =>
  z
    .string()
    .regex(/^(0|[1-9][0-9]{0,15})$/, `${field} must be a whole number`)
    .transform(Number)
    .refine((n) => n <= max, `${field} must be at most ${max}`);

/** Query parameters; `code` is the function key, read by the host. */
const hashesQuerySchema = z.strictObject({
  recoveryPointId: recoveryPointIdSchema.optional(),
  from: wholeNumber('from', Number.MAX_SAFE_INTEGER).optional(),
  count: wholeNumber('count', MAX_HASHES_PER_PAGE)
    .refine((n) => n >= 1, 'count must be at least 1')
    .optional(),
  code: z.string().optional(),
});

export async function diskHashes(deps: HashDeps, rawVmId: unknown, rawDiskId: unknown, query: Record<string, string>): Promise<DiskHashesPage> {
  const vmId = parseVmId(rawVmId);
  const diskIdParsed = diskIdSchema.safeParse(rawDiskId);
  if (!diskIdParsed.success) throw apiErrors.invalidId('diskId');
  const diskId = diskIdParsed.data;
  const q = hashesQuerySchema.safeParse(query);
  if (!q.success) throw apiErrors.invalidRequest('hashes query', q.error);
  const { recoveryPointId: rpId, from = 0, count = MAX_HASHES_PER_PAGE } = q.data;

  return guard(`Reading the hashes of VM '${vmId}' disk '${diskId}'`, async () => {
    const found = await deps.state.getVm(vmId);
    if (!found) throw apiErrors.vmNotFound(vmId);
    const diskIds = found.disks.map((d) => d.diskId);
    const disk = found.disks.find((d) => d.diskId === diskId);
    if (!disk || found.vm.state === 'disabled') {
      if (disk) throw new ApiError('DISK_NOT_FOUND', `VM '${vmId}' is disabled: its replica disks were deleted. Enable replication again (POST /api/vms/${vmId}/enable-replication).`);
      throw apiErrors.diskNotFound(vmId, diskId, diskIds);
    }
    const total = extentCount(disk.sizeBytes);
    if (from >= total) {
      throw new ApiError('INVALID_REQUEST', `Invalid hashes query: from ${from} is past the last extent of disk '${diskId}' (it has ${total} extents of ${EXTENT_BYTES} bytes, 0..${total - 1}).`);
    }
    const n = Math.min(count, total - from);
    const page: Omit<DiskHashesPage, 'recoveryPointId' | 'epoch' | 'appliedSequence' | 'blocks'> = { vmId, diskId, sizeBytes: disk.sizeBytes, blockBytes: EXTENT_BYTES, algorithm: HASH_ALGORITHM, totalBlocks: total, from, count: n, next: from + n < total ? from + n : null };

    if (rpId !== undefined) {
      const tagId = parseRecoveryPointId(rpId);
      const point = tagId === undefined ? undefined : (await recoveryPointsOf(deps, vmId)).points.find((p) => p.tagId === tagId);
      const capture = point?.disks.find((d) => d.diskId === diskId);
      if (!point || !capture) throw apiErrors.recoveryPointNotFound(vmId, rpId);
      let ids: string[];
      try {
        ids = (await deps.captures.extents({ vmId, diskId }, disk.sizeBytes, point.tagId)).slice(from, from + n).map((e) => e.blockId);
      } catch (err) {
        if (isDiskStoreError(err) && err.code === 'CAPTURE_NOT_FOUND') throw apiErrors.recoveryPointNotFound(vmId, rpId);
        throw err;
      }
      return { ...page, recoveryPointId: recoveryPointId(point.tagId), epoch: capture.epoch, appliedSequence: capture.sequence, blocks: toHashes(ids, from) };
    }

    const { ids, position } = await consistentBlockIds(deps, disk, from, n);
    return { ...page, recoveryPointId: null, epoch: position.epoch, appliedSequence: position.appliedSequence, blocks: toHashes(ids, from) };
  });
}

/**
 * Block ids of a live disk as of one applied position: the disk row's (epoch, appliedSequence)
 * before and after the read must agree, else a batch was recorded meanwhile and the read is
 * retried. (An apply is recorded only after its blocks are committed, so equal positions mean
 * no batch finished during the read; the resync protocol has the appliance stop sending before
 * it reads, so none is in progress either.)
 */
async function consistentBlockIds(deps: HashDeps, disk: DiskRecord, from: number, count: number): Promise<{ ids: string[]; position: DiskRecord }> {
  const ref = { vmId: disk.vmId, diskId: disk.diskId };
  let before: DiskRecord = disk;
  for (let attempt = 1; ; attempt++) {
    const ids = await deps.manifests.blockIds(ref, disk.sizeBytes, from, count);
    const after = await deps.state.getDisk(disk.vmId, disk.diskId);
    if (!after) throw apiErrors.diskNotFound(disk.vmId, disk.diskId, []);
    if (after.epoch === before.epoch && after.appliedSequence === before.appliedSequence) return { ids, position: after };
    if (attempt >= CONSISTENT_READ_ATTEMPTS) throw apiErrors.replicaChanging(disk.vmId, disk.diskId, attempt);
    before = after;
  }
}

function toHashes(ids: readonly string[], from: number): ExtentHash[] {
  return ids.map((id, i) => ({ index: from + i, hash: hashOfBlockId(id) }));
}
