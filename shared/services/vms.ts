/**
 * Use cases of the VM resource: enable replication, read, list, disable, rotate the data key. HTTP functions call
 * these with untrusted input; every input is validated here with zod and every failure is an
 * ApiError with a `{code, message}` the caller can act on.
 */
import { z } from 'zod';
import { wrapDataKey } from '../codec/key-wrap';
import { computeHealth, type HealthReason, type Health } from '../domain/health';
import { diskSpecSchema, vmIdSchema } from '../domain/ids';
import { DEFAULT_POLICY, replicationPolicySchema, type ReplicationPolicy } from '../domain/policy';
import { maintainResync, nextEpoch, type ResyncReason } from '../domain/resync';
import { acceptsBatches, initialState, transition, type VmState } from '../domain/state-machine';
import { isStateStoreError, MAX_RETIREMENTS_PER_ROTATION, type DiskRecord, type KeyRetirement, type VmRecord, type VmWithDisks } from '../ports/state-store';
import { ApiError, apiErrors } from './api-error';
import type { ReplicationDeps } from './deps';

/** At most this many disks per VM (Azure VMs take up to 64 data disks plus the OS disk). */
export const MAX_DISKS_PER_VM = 65;

export const enableRequestSchema = z.strictObject({
  disks: z
    .array(diskSpecSchema)
    .min(1, 'list at least one disk')
    .max(MAX_DISKS_PER_VM, `at most ${MAX_DISKS_PER_VM} disks per VM`)
    .refine((d) => new Set(d.map((x) => x.diskId)).size === d.length, 'diskIds must be unique'),
  policy: replicationPolicySchema.optional(),
});
export type EnableRequest = z.infer<typeof enableRequestSchema>;

export interface DiskView {
  diskId: string;
  sizeBytes: number;
  initialReplicationPercent: number;
  epoch: number;
  appliedSequence: number;
  /** ISO-8601, or null before the first batch. */
  lastAppliedAt: string | null;
  lastCapturedAt: string | null;
}

export interface VmView {
  vmId: string;
  state: VmState;
  health: Health;
  healthReasons: HealthReason[];
  rpoSeconds: number | null;
  policy: ReplicationPolicy;
  keyId: number;
  createdAt: string;
  /**
   * In `resync-required`: the epoch the appliance sends every disk's resync batches in
   * (docs/resync.md); null in every other state.
   */
  resync: ResyncView | null;
  disks: DiskView[];
}

export interface ResyncView {
  epoch: number;
  requestedAt: string;
  reason: ResyncReason;
}

export function parseVmId(raw: unknown): string {
  const r = vmIdSchema.safeParse(raw);
  if (!r.success) throw apiErrors.invalidId('vmId');
  return r.data;
}

const iso = (ms: number): string | null => (ms > 0 ? new Date(ms).toISOString() : null);

export function toVmView({ vm, disks }: VmWithDisks, now: number): VmView {
  const ordered = [...disks].sort((a, b) => a.diskId.localeCompare(b.diskId, 'en', { numeric: true }));
  const report = computeHealth({
    state: vm.state,
    vmId: vm.vmId,
    policy: vm.policy,
    now,
    disks: ordered.map((d) => ({
      diskId: d.diskId,
      appliedSequence: d.appliedSequence,
      lastCaptureTime: d.lastCapturedAt > 0 ? d.lastCapturedAt : null,
      deadLetteredCount: 0,
      gap: d.missingSequence !== undefined ? { expectedSequence: d.missingSequence } : null,
    })),
  });
  const healthReasons = [...report.healthReasons];
  if (vm.deadLetteredCount > 0) {
    const last = vm.recentIssues[vm.recentIssues.length - 1];
    healthReasons.push({
      code: 'DEAD_LETTERED',
      message: `${vm.deadLetteredCount} batch(es) of this VM were dead-lettered${last ? `; the last: ${last.message}` : ''}. Inspect the dead-letter queue of 'replication-batches'.`,
    });
  }
  const health: Health = report.health === 'healthy' && healthReasons.length > 0 ? 'warning' : report.health;
  return {
    vmId: vm.vmId,
    state: vm.state,
    health,
    healthReasons,
    rpoSeconds: report.rpoSeconds,
    policy: vm.policy,
    keyId: vm.keyId,
    createdAt: new Date(vm.createdAt).toISOString(),
    resync: toResyncView(vm, ordered),
    disks: ordered.map((d) => ({
      diskId: d.diskId,
      sizeBytes: d.sizeBytes,
      initialReplicationPercent: d.initialComplete ? 100 : Math.min(99.99, Math.floor((d.initialCoveredBytes / d.sizeBytes) * 10_000) / 100),
      epoch: d.epoch,
      appliedSequence: d.appliedSequence,
      lastAppliedAt: iso(d.lastAppliedAt),
      lastCapturedAt: iso(d.lastCapturedAt),
    })),
  };
}

function toResyncView(vm: VmRecord, disks: readonly DiskRecord[]): ResyncView | null {
  if (vm.state !== 'resync-required') return null;
  // A row moved to resync-required before rows carried `resync`: the next epoch, as the hook would set.
  const r = vm.resync ?? { epoch: nextEpoch(disks), requestedAt: vm.updatedAt, reason: 'sequence-gap' as const };
  return { epoch: r.epoch, requestedAt: new Date(r.requestedAt).toISOString(), reason: r.reason };
}

async function guard<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof ApiError) throw err;
    if (isStateStoreError(err) && err.code === 'STORAGE_UNAVAILABLE') throw apiErrors.unavailable(what, err);
    throw err;
  }
}

export async function enableReplication(deps: ReplicationDeps, rawVmId: unknown, body: unknown): Promise<{ vm: VmView; dataKey: string }> {
  const vmId = parseVmId(rawVmId);
  const parsed = enableRequestSchema.safeParse(body);
  if (!parsed.success) throw apiErrors.invalidRequest('enable-replication request', parsed.error);
  const request = parsed.data;
  return guard(`Enabling replication of VM '${vmId}'`, async () => {
    const existing = await deps.state.getVm(vmId);
    if (existing) {
      if (existing.vm.state !== 'disabled') throw apiErrors.alreadyEnabled(vmId, existing.vm.state);
      // Re-enabling a disabled VM starts over: a new key, new disks, sequences from 1.
      await deps.state.deleteVm(vmId);
    }
    const now = deps.now();
    const dataKey = deps.randomBytes(32);
    const keyId = (existing?.vm.keyId ?? 0) + 1;
    const vm: VmRecord = {
      vmId,
      state: initialState(),
      policy: request.policy ?? DEFAULT_POLICY,
      createdAt: now,
      updatedAt: now,
      keyId,
      deadLetteredCount: 0,
      recentIssues: [],
    };
    const disks: DiskRecord[] = request.disks.map((d) => ({
      vmId,
      diskId: d.diskId,
      sizeBytes: d.sizeBytes,
      epoch: 1,
      appliedSequence: 0,
      lastAppliedAt: 0,
      lastCapturedAt: 0,
      initialCoveredBytes: 0,
      initialComplete: false,
    }));
    try {
      await deps.state.createVm(vm, disks, { vmId, keyId, wrapped: wrapDataKey(deps.masterKey, dataKey, vmId, keyId, deps.randomBytes), createdAt: now });
    } catch (err) {
      if (isStateStoreError(err) && err.code === 'ALREADY_EXISTS') throw apiErrors.alreadyEnabled(vmId, 'initial-replication');
      throw err;
    }
    for (const d of disks) await deps.disks.create({ vmId, diskId: d.diskId }, d.sizeBytes);
    return { vm: toVmView({ vm, disks }, now), dataKey: dataKey.toString('base64') };
  });
}

export async function getVm(deps: ReplicationDeps, rawVmId: unknown): Promise<VmView> {
  const vmId = parseVmId(rawVmId);
  return guard(`Reading VM '${vmId}'`, async () => {
    const found = await deps.state.getVm(vmId);
    if (!found) throw apiErrors.vmNotFound(vmId);
    return toVmView(found, deps.now());
  });
}

export async function listVms(deps: ReplicationDeps): Promise<VmView[]> {
  return guard('Listing VMs', async () => {
    const now = deps.now();
    return (await deps.state.listVms()).map((v) => toVmView(v, now));
  });
}

/**
 * Moves the VM to `disabled` (with its ETag, retrying on a concurrent update) and deletes its
 * replica disks. The VM's row stays, so its state can still be read; enabling it again starts over.
 */
export async function disableReplication(deps: ReplicationDeps, rawVmId: unknown): Promise<VmView> {
  const vmId = parseVmId(rawVmId);
  return guard(`Disabling replication of VM '${vmId}'`, async () => {
    const found = await updateVmWithRetry(deps, vmId, (vm) => {
      const t = transition(vm.state, { type: 'disable' }, { vmId });
      if (!t.ok) throw apiErrors.invalidTransition(t.error.message);
      return { ...vm, state: t.state };
    });
    for (const d of found.disks) await deps.disks.delete({ vmId, diskId: d.diskId });
    return toVmView(found, deps.now());
  });
}

/**
 * Read-modify-write of the VM row under its ETag; re-reads and retries on a conflict. Every
 * writer of the row goes through here, so this also keeps `resync` right (domain/resync.ts):
 * set whenever the VM is in resync-required (a gap included), dropped otherwise.
 */
export async function updateVmWithRetry(deps: ReplicationDeps, vmId: string, change: (vm: VmRecord, disks: DiskRecord[]) => VmRecord, attempts = 8): Promise<VmWithDisks> {
  for (let i = 0; ; i++) {
    const found = await deps.state.getVm(vmId);
    if (!found) throw apiErrors.vmNotFound(vmId);
    const now = deps.now();
    const next: VmRecord = { ...change(found.vm, found.disks), updatedAt: now };
    const resync = maintainResync(found.vm, next, found.disks, now);
    if (resync) next.resync = resync;
    else delete next.resync;
    try {
      const etag = await deps.state.putVm(next);
      return { vm: { ...next, etag }, disks: found.disks };
    } catch (err) {
      if (!(isStateStoreError(err) && err.code === 'CONFLICT') || i + 1 >= attempts) throw err;
    }
  }
}

// ---- key rotation --------------------------------------------------------------------------

/** Default and bounds of the grace during which batches sealed with replaced keys still apply. */
export const DEFAULT_KEY_GRACE_SECONDS = 24 * 3600;
export const MAX_KEY_GRACE_SECONDS = 7 * 24 * 3600;

export const rotateKeyRequestSchema = z.strictObject({
  graceSeconds: z
    .number()
    .int('graceSeconds must be a whole number of seconds')
    .min(0, 'graceSeconds must be at least 0 (0 retires the previous keys at once)')
    .max(MAX_KEY_GRACE_SECONDS, `graceSeconds must be at most ${MAX_KEY_GRACE_SECONDS} (7 days)`)
    .optional(),
});

export interface RotateKeyResult {
  vmId: string;
  /** The new current key id: batches sealed from now on carry it. */
  keyId: number;
  createdAt: string;
  graceSeconds: number;
  /** The replaced keys still accepted, each until its cut-off (ISO-8601). */
  previousKeys: { keyId: number; retiresAt: string }[];
  /** base64 of the new 32-byte data key: on this response only. */
  dataKey: string;
}

/**
 * `POST /api/vms/{vmId}/rotate-key`: a new data key (current key id + 1, stored wrapped by the
 * master key) becomes current; every older key that would outlive the cut-off (now + grace) is
 * stamped with it, so batches sealed with them apply until then and are dead-lettered
 * `KeyRetired` afterwards. One transaction guarded by the VM row's ETag: of two rotations at
 * once exactly one wins; the other gets 409 CONCURRENT_ROTATION. Other writers of the VM row
 * (health, dead-letter counts) only make it retry.
 */
export async function rotateKey(deps: ReplicationDeps, rawVmId: unknown, body: unknown): Promise<RotateKeyResult> {
  const vmId = parseVmId(rawVmId);
  const parsed = rotateKeyRequestSchema.safeParse(body === undefined ? {} : body); // a `null` body is a wrong type, not "no body"
  if (!parsed.success) throw apiErrors.invalidRequest('rotate-key request', parsed.error);
  const graceSeconds = parsed.data.graceSeconds ?? DEFAULT_KEY_GRACE_SECONDS;
  return guard(`Rotating the data key of VM '${vmId}'`, async () => {
    let readKeyId: number | undefined;
    for (let attempt = 0; ; attempt++) {
      const found = await deps.state.getVm(vmId);
      if (!found) throw apiErrors.vmNotFound(vmId);
      const { vm } = found;
      if (readKeyId !== undefined && vm.keyId !== readKeyId) throw apiErrors.concurrentRotation(vmId, vm.keyId);
      readKeyId = vm.keyId;
      if (!acceptsBatches(vm.state)) {
        throw apiErrors.invalidTransition(
          `VM '${vmId}' is in state '${vm.state}' and takes no batches, so its data key cannot be rotated; rotation needs a replicating VM (initial-replication, protected, test-migrating, migrating or resync-required).`,
        );
      }
      const now = deps.now();
      const cutoff = now + graceSeconds * 1000;
      const keys = await deps.state.listKeys(vmId);
      const keyId = Math.max(vm.keyId, ...keys.map((k) => k.keyId)) + 1;
      const retire: KeyRetirement[] = keys.filter((k) => k.retiresAt === undefined || k.retiresAt > cutoff).map((k) => ({ keyId: k.keyId, retiresAt: cutoff }));
      if (retire.length > MAX_RETIREMENTS_PER_ROTATION) {
        // cannot happen in practice: each rotation caps every older key at its own cut-off
        throw apiErrors.invalidTransition(`VM '${vmId}' has ${retire.length} keys still accepted; rotate with a grace no longer than the last rotation's.`);
      }
      const dataKey = deps.randomBytes(32);
      const wrapped = wrapDataKey(deps.masterKey, dataKey, vmId, keyId, deps.randomBytes);
      try {
        await deps.state.rotateKey({ ...vm, keyId, updatedAt: now }, { vmId, keyId, wrapped, createdAt: now }, retire);
      } catch (err) {
        if (isStateStoreError(err) && err.code === 'ALREADY_EXISTS') throw apiErrors.concurrentRotation(vmId, keyId);
        if (isStateStoreError(err) && err.code === 'CONFLICT' && attempt + 1 < 8) continue;
        throw err;
      }
      const cutoffs = new Map(retire.map((r) => [r.keyId, r.retiresAt]));
      const previousKeys = keys
        .map((k) => ({ keyId: k.keyId, retiresAt: cutoffs.get(k.keyId) ?? k.retiresAt ?? cutoff }))
        .filter((k) => k.retiresAt > now)
        .map((k) => ({ keyId: k.keyId, retiresAt: new Date(k.retiresAt).toISOString() }));
      return { vmId, keyId, createdAt: new Date(now).toISOString(), graceSeconds, previousKeys, dataKey: dataKey.toString('base64') };
    }
  });
}
