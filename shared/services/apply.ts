/**
 * Applying one batch message to its disk: the heart of the cloud side.
 *
 * The function that calls this receives the messages of one disk (one Service Bus session) in
 * order, one at a time. The outcome says how to settle the message:
 * - `applied`: the batch changed the disk; complete the message.
 * - `duplicate`: already applied (a redelivery, or a batch of an older epoch); complete it.
 * - `dead-letter`: it can never be applied (malformed, forged, for an unknown VM, out of order
 *   after a gap...); dead-letter it with `reason` and `description`. The disk is untouched and
 *   the VM's health records it.
 * Anything thrown is transient (storage unavailable, a concurrent writer): let the message be
 * redelivered. The order of steps makes every crash point safe:
 *   read state -> decide -> fetch and open the batch -> write the disk -> record the sequence
 * A crash before "record" leaves the sequence unrecorded, so redelivery writes the same bytes
 * again (writes are absolute; DiskStore.apply is idempotent) and then records it.
 */
import { openBatch } from '../codec/batch';
import { sealedBytesFrom } from '../codec/envelope';
import { unwrapDataKey } from '../codec/key-wrap';
import { MAX_SEALED_BYTES, parseEnvelope, type BatchEnvelope } from '../domain/envelope';
import { decideBatch } from '../domain/sequencing';
import { acceptsBatches, transition } from '../domain/state-machine';
import { isWireFormatError } from '../domain/wire-format-error';
import type { DecodedBatch } from '../domain/wire-format';
import { isDiskStoreError, type ApplyStats } from '../ports/disk-store';
import type { CaptureStore } from '../ports/capture-store';
import { isStateStoreError, type DiskRecord, type VmRecord } from '../ports/state-store';
import type { StagingStore } from '../ports/staging-store';
import type { ReplicationDeps } from './deps';
import { faultPoint } from '../faults';
import { captureAtTag } from './recovery-points';
import { updateVmWithRetry } from './vms';

export type DeadLetterReason =
  | 'InvalidEnvelope'
  | 'UnknownVm'
  | 'VmNotReplicating'
  | 'UnknownDisk'
  | 'SequenceGap'
  | 'StagingBlobMissing'
  | 'UnknownKey'
  | 'InvalidBatch'
  | 'DiskSizeMismatch';

export type ApplyOutcome =
  | { kind: 'applied'; vmId: string; diskId: string; epoch: number; sequence: number; stats: ApplyStats; vmState?: string }
  | { kind: 'duplicate'; vmId: string; diskId: string; epoch: number; sequence: number; appliedSequence: number }
  | { kind: 'dead-letter'; reason: DeadLetterReason; description: string; vmId?: string; diskId?: string };

export interface ApplyDeps extends ReplicationDeps {
  staging: StagingStore;
  /** Recovery points at consistency tags (services/recovery-points.ts); absent: tags are ignored. */
  captures?: CaptureStore;
}

/** Issues kept on the VM row for its health (newest last). */
const MAX_RECENT_ISSUES = 10;
const KEY_CACHE_MAX = 1024;
/** Unwrapped data keys, per state store (a key id never changes meaning within one store). */
const keyCaches = new WeakMap<object, Map<string, Buffer>>();

async function dataKey(deps: ApplyDeps, vmId: string, keyId: number): Promise<Buffer | undefined> {
  let keyCache = keyCaches.get(deps.state);
  if (!keyCache) keyCaches.set(deps.state, (keyCache = new Map()));
  const id = `${vmId}:${keyId}`;
  const hit = keyCache.get(id);
  if (hit) return hit;
  const stored = await deps.state.getKey(vmId, keyId);
  if (!stored) return undefined;
  const key = unwrapDataKey(deps.masterKey, stored.wrapped, vmId, keyId);
  if (keyCache.size >= KEY_CACHE_MAX) keyCache.delete(keyCache.keys().next().value as string);
  keyCache.set(id, key);
  return key;
}

function deadLetter(reason: DeadLetterReason, description: string, env?: { vmId: string; diskId: string }): ApplyOutcome {
  return { kind: 'dead-letter', reason, description, ...(env ? { vmId: env.vmId, diskId: env.diskId } : {}) };
}

/** `body`: the message body as the trigger hands it over (parsed JSON, JSON text or bytes). */
export async function applyBatchMessage(deps: ApplyDeps, body: unknown): Promise<ApplyOutcome> {
  let env: BatchEnvelope;
  try {
    env = parseEnvelope(body);
  } catch (err) {
    const outcome = deadLetter('InvalidEnvelope', `The message is not a Ferry batch envelope v1: ${err instanceof Error ? err.message : String(err)}`);
    await recordDeadLetter(deps, vmIdOf(body), outcome);
    return outcome;
  }
  const outcome = await applyEnvelope(deps, env);
  if (outcome.kind === 'dead-letter') await recordDeadLetter(deps, env.vmId, outcome);
  return outcome;
}

async function applyEnvelope(deps: ApplyDeps, env: BatchEnvelope): Promise<ApplyOutcome> {
  const { vmId, diskId } = env;
  const where = `VM '${vmId}' disk '${diskId}' epoch ${env.epoch} sequence ${env.seq}`;
  const found = await deps.state.getVm(vmId);
  if (!found) return deadLetter('UnknownVm', `Batch for ${where}: no such VM is replicating; enable replication first.`, env);
  if (!acceptsBatches(found.vm.state)) {
    const why =
      found.vm.state === 'migrated'
        ? `VM was migrated to Azure (state 'migrated'): replication has stopped and no more batches are applied. Stop the appliance for this VM`
        : `VM is in state '${found.vm.state}' and takes no more batches. Enable replication again (POST /api/vms/${vmId}/enable-replication) or stop the appliance for this VM`;
    return deadLetter('VmNotReplicating', `Batch for ${where}: the ${why}.`, env);
  }
  const disk = found.disks.find((d) => d.diskId === diskId);
  if (!disk) return deadLetter('UnknownDisk', `Batch for ${where}: the VM has no disk '${diskId}' (it has ${found.disks.map((d) => d.diskId).join(', ')}).`, env);

  const decision = decideBatch(disk, { epoch: env.epoch, sequence: env.seq });
  if (decision.action === 'duplicate' || decision.action === 'stale-epoch') {
    await deleteStaged(deps, env);
    return { kind: 'duplicate', vmId, diskId, epoch: env.epoch, sequence: env.seq, appliedSequence: disk.appliedSequence };
  }
  if (decision.action === 'gap') {
    await recordGap(deps, found.vm, disk, env.epoch, decision.expectedSequence);
    return deadLetter(
      'SequenceGap',
      `Batch for ${where} arrived but sequence ${decision.expectedSequence} never did: it was lost or dead-lettered. The disk needs a resync (POST /api/vms/${vmId}/resync).`,
      env,
    );
  }

  faultPoint('apply.state-read');
  let sealed: Buffer;
  if ('inline' in env.payload) {
    sealed = sealedBytesFrom(env);
  } else {
    const blob = await deps.staging.get(env.payload.blob.name, MAX_SEALED_BYTES);
    if (!blob) return deadLetter('StagingBlobMissing', `Batch for ${where}: its payload blob staging/${env.payload.blob.name} does not exist.`, env);
    try {
      sealed = sealedBytesFrom(env, blob);
    } catch (err) {
      return deadLetter('InvalidBatch', `Batch for ${where}: ${err instanceof Error ? err.message : String(err)}`, env);
    }
  }

  let key: Buffer | undefined;
  try {
    key = await dataKey(deps, vmId, env.keyId);
  } catch (err) {
    if (isStateStoreError(err)) throw err;
    return deadLetter('UnknownKey', `Batch for ${where}: ${err instanceof Error ? err.message : String(err)}`, env);
  }
  if (!key) return deadLetter('UnknownKey', `Batch for ${where}: VM '${vmId}' has no data key ${env.keyId}.`, env);

  let batch: DecodedBatch;
  try {
    batch = openBatch(sealed, (v, k) => (v === vmId && k === env.keyId ? key : undefined), { vmId, diskId, epoch: env.epoch, sequence: env.seq });
  } catch (err) {
    if (!isWireFormatError(err)) throw err;
    return deadLetter('InvalidBatch', `Batch for ${where} was refused (${err.code} in ${err.field}): ${err.message}`, env);
  }
  if (batch.header.diskSizeBytes !== disk.sizeBytes) {
    return deadLetter('DiskSizeMismatch', `Batch for ${where} is for a ${batch.header.diskSizeBytes}-byte disk; the registered disk is ${disk.sizeBytes} bytes.`, env);
  }
  if (batch.header.capturedAt !== env.capturedAt) {
    return deadLetter('InvalidBatch', `Batch for ${where}: the envelope's capturedAt differs from the sealed one.`, env);
  }

  faultPoint('apply.batch-opened');
  let stats: ApplyStats;
  try {
    stats = await deps.disks.apply({ vmId, diskId }, disk.sizeBytes, batch.records);
  } catch (err) {
    if (isDiskStoreError(err) && !err.retryable) return deadLetter('InvalidBatch', `Batch for ${where}: ${err.message}`, env);
    throw err;
  }

  faultPoint('apply.disk-written');
  if (batch.header.consistency && deps.captures) {
    // The disk is now exactly as of this tagged batch, and no later batch of this disk can be
    // applied before its sequence is recorded below: capture it here.
    await captureAtTag({ state: deps.state, captures: deps.captures, now: deps.now }, disk, batch.header);
    faultPoint('apply.captured');
  }
  const vmState = await recordApplied(deps, found.vm, disk, batch);
  faultPoint('apply.recorded');
  await deleteStaged(deps, env);
  faultPoint('apply.done');
  return { kind: 'applied', vmId, diskId, epoch: env.epoch, sequence: env.seq, stats, ...(vmState ? { vmState } : {}) };
}

/** Records the applied sequence on the disk row (ETag-guarded); moves the VM to protected when every disk's initial pass is done. */
async function recordApplied(deps: ApplyDeps, vm: VmRecord, disk: DiskRecord, batch: DecodedBatch): Promise<string | undefined> {
  const h = batch.header;
  const now = deps.now();
  let current: DiskRecord = disk;
  for (let attempt = 0; ; attempt++) {
    const newEpoch = h.epoch !== current.epoch;
    const next: DiskRecord = {
      ...current,
      epoch: h.epoch,
      appliedSequence: h.sequence,
      lastAppliedAt: now,
      lastCapturedAt: Math.max(newEpoch ? 0 : current.lastCapturedAt, h.capturedAt),
      initialCoveredBytes: h.initialReplicationComplete ? current.sizeBytes : Math.max(newEpoch ? 0 : current.initialCoveredBytes, h.initialCoveredBytes),
      initialComplete: (newEpoch ? false : current.initialComplete) || h.initialReplicationComplete,
    };
    delete next.missingSequence;
    try {
      await deps.state.putDisk(next);
      current = next;
      break;
    } catch (err) {
      if (!(isStateStoreError(err) && err.code === 'CONFLICT') || attempt >= 8) throw err;
      const fresh = await deps.state.getDisk(disk.vmId, disk.diskId);
      if (!fresh) throw err;
      current = fresh;
    }
  }
  // In a new epoch (a resync) the disk's stored initialComplete is the old epoch's, and every
  // disk must have completed this epoch, not an older one.
  if (!h.initialReplicationComplete || (disk.initialComplete && disk.epoch === h.epoch)) return undefined;
  const after = await deps.state.getVm(vm.vmId);
  if (!after || !after.disks.every((d) => d.initialComplete && d.epoch === h.epoch)) return undefined;
  let moved: string | undefined;
  await updateVmWithRetry(deps, vm.vmId, (v) => {
    const event = v.state === 'resync-required' ? 'resyncComplete' : 'initialReplicationComplete';
    const t = transition(v.state, { type: event }, { vmId: v.vmId });
    if (!t.ok) return v; // e.g. already protected: nothing to do
    moved = t.state;
    return { ...v, state: t.state };
  });
  return moved;
}

async function recordGap(deps: ApplyDeps, vm: VmRecord, disk: DiskRecord, epoch: number, missing: number): Promise<void> {
  if (disk.missingSequence !== missing || disk.epoch !== epoch) {
    await deps.state.putDisk({ ...disk, missingSequence: missing }).catch((err: unknown) => {
      if (!(isStateStoreError(err) && err.code === 'CONFLICT')) throw err;
    });
  }
  await updateVmWithRetry(deps, vm.vmId, (v) => {
    const t = transition(v.state, { type: 'gapDetected' }, { vmId: v.vmId });
    return t.ok ? { ...v, state: t.state } : v;
  });
}

/** Counts the dead-lettered batch on its VM (when the VM is known) so its health shows it. */
async function recordDeadLetter(deps: ApplyDeps, vmId: string | undefined, outcome: ApplyOutcome): Promise<void> {
  if (!vmId || outcome.kind !== 'dead-letter') return;
  if (!(await deps.state.getVm(vmId))) return;
  const issue = { code: outcome.reason, message: outcome.description, at: deps.now() };
  await updateVmWithRetry(deps, vmId, (v) => ({
    ...v,
    deadLetteredCount: v.deadLetteredCount + 1,
    recentIssues: [...v.recentIssues, issue].slice(-MAX_RECENT_ISSUES),
  }));
}

async function deleteStaged(deps: ApplyDeps, env: BatchEnvelope): Promise<void> {
  if ('blob' in env.payload) await deps.staging.delete(env.payload.blob.name);
}

/** The vmId of an unparseable message, when it names a plausible one (for its health). */
function vmIdOf(body: unknown): string | undefined {
  let obj = body;
  if (typeof body === 'string' || body instanceof Uint8Array) {
    try {
      obj = JSON.parse(Buffer.from(body).toString('utf8')) as unknown;
    } catch {
      return undefined;
    }
  }
  const v = (obj as { vmId?: unknown } | null)?.vmId;
  return typeof v === 'string' && /^[a-z0-9][a-z0-9-]{0,62}$/.test(v) ? v : undefined;
}
