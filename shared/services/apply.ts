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
import { batchSessionId, isBinaryBatchBody, parseEnvelope, type BatchEnvelope } from '../domain/envelope';
import { decideBatch } from '../domain/sequencing';
import { acceptsBatches, transition } from '../domain/state-machine';
import { isWireFormatError } from '../domain/wire-format-error';
import { claimedVmId, type DecodedBatch } from '../domain/wire-format';
import { isDiskStoreError, type ApplyStats } from '../ports/disk-store';
import type { CaptureStore } from '../ports/capture-store';
import { isStateStoreError, type DiskRecord, type VmRecord, type VmWithDisks } from '../ports/state-store';
import { isStagingTooLargeError, type StagingStore } from '../ports/staging-store';
import type { ReplicationDeps } from './deps';
import { faultPoint, journalApplied } from '../faults';
import { shouldRequestCompaction, type CompactionQueue } from '../ports/compaction-queue';
import { captureAtTag } from './recovery-points';
import { PrefetchingStaging, type StagedRef } from './staging-prefetch';
import { updateVmWithRetry } from './vms';

export type DeadLetterReason =
  | 'InvalidEnvelope'
  | 'UnknownVm'
  | 'VmNotReplicating'
  | 'UnknownDisk'
  | 'WrongSession'
  | 'SequenceGap'
  | 'StagingBlobMissing'
  | 'StagingBlobMismatch'
  | 'UnknownKey'
  | 'KeyRetired'
  | 'AuthenticationFailed'
  | 'BatchMismatch'
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
  /** Where to ask for a disk's delta log to be compacted (docs/disk-log.md); absent: only tags compact. */
  compactions?: CompactionQueue;
}

/** Issues kept on the VM row for its health (newest last). */
const MAX_RECENT_ISSUES = 10;
const KEY_CACHE_MAX = 1024;
/**
 * Unwrapped data keys, per state store (a key id never changes meaning within one store), with
 * their retirement. A key's `retiresAt` changes only in a rotation, which also raises the VM's
 * current key id: an entry read while that was `asOfKeyId` holds until it changes.
 */
const keyCaches = new WeakMap<object, Map<string, { key: Buffer; retiresAt?: number; asOfKeyId: number }>>();

async function dataKey(deps: ApplyDeps, vmId: string, keyId: number, currentKeyId: number): Promise<{ key: Buffer; retiresAt?: number } | undefined> {
  let keyCache = keyCaches.get(deps.state);
  if (!keyCache) keyCaches.set(deps.state, (keyCache = new Map()));
  const id = `${vmId}:${keyId}`;
  const hit = keyCache.get(id);
  if (hit && hit.asOfKeyId === currentKeyId) return hit;
  const stored = await deps.state.getKey(vmId, keyId);
  if (!stored) return undefined;
  const key = hit?.key ?? unwrapDataKey(deps.masterKey, stored.wrapped, vmId, keyId);
  if (!hit && keyCache.size >= KEY_CACHE_MAX) keyCache.delete(keyCache.keys().next().value as string);
  const entry = { key, asOfKeyId: currentKeyId, ...(stored.retiresAt !== undefined ? { retiresAt: stored.retiresAt } : {}) };
  keyCache.set(id, entry);
  return entry;
}

function deadLetter(reason: DeadLetterReason, description: string, env?: { vmId: string; diskId: string }): ApplyOutcome {
  return { kind: 'dead-letter', reason, description, ...(env ? { vmId: env.vmId, diskId: env.diskId } : {}) };
}

export interface ApplyMessageOptions {
  /**
   * The Service Bus session the message(s) came in. A batch must arrive in its disk's session
   * (`<vmId>/<diskId>`): only that keeps its disk's batches in order and applied by one consumer
   * at a time. Absent: not checked.
   */
  sessionId?: string;
}

function wrongSession(env: BatchEnvelope, sessionId: string | undefined): ApplyOutcome | undefined {
  const want = batchSessionId(env.vmId, env.diskId);
  if (sessionId === undefined || sessionId === want) return undefined;
  return deadLetter(
    'WrongSession',
    `Batch for VM '${env.vmId}' disk '${env.diskId}' epoch ${env.epoch} sequence ${env.seq} arrived in session '${sessionId}'; a disk's batches must be sent in session '${want}' (the appliance sets it), so it was not applied.`,
    env,
  );
}

/** `body`: the message body as the trigger hands it over (parsed JSON, JSON text or bytes). */
export async function applyBatchMessage(deps: ApplyDeps, body: unknown, options: ApplyMessageOptions = {}): Promise<ApplyOutcome> {
  let env: BatchEnvelope;
  try {
    env = parseEnvelope(body);
  } catch (err) {
    const outcome = deadLetter('InvalidEnvelope', `The message is not a Ferry batch envelope v1: ${err instanceof Error ? err.message : String(err)}`);
    await recordDeadLetter(deps, vmIdOf(body), outcome);
    return outcome;
  }
  const outcome = wrongSession(env, options.sessionId) ?? (await applyEnvelope(deps, env));
  if (outcome.kind === 'dead-letter') await recordDeadLetter(deps, env.vmId, outcome);
  return outcome;
}

/** The envelope of a body, or undefined if it is not one (judged, and dead-lettered, in order by the loop). */
function tryParseEnvelope(body: unknown): BatchEnvelope | undefined {
  try {
    return parseEnvelope(body);
  } catch {
    return undefined;
  }
}

/** The staged payloads a receive refers to, in order. */
function stagedRefs(envelopes: readonly (BatchEnvelope | undefined)[]): StagedRef[] {
  const refs: StagedRef[] = [];
  for (const env of envelopes) if (env && 'blob' in env.payload) refs.push({ name: env.payload.blob.name, sizeBytes: env.payload.blob.sizeBytes });
  return refs;
}

/** A batch ready to be written: checked, authenticated and decoded; nothing written yet. */
interface Ready {
  kind: 'ready';
  env: BatchEnvelope;
  found: VmWithDisks;
  disk: DiskRecord;
  batch: DecodedBatch;
  where: string;
  /** Once written: the disk row as recorded (the next group's write starts from it). */
  recorded?: DiskRecord;
}

async function applyEnvelope(deps: ApplyDeps, env: BatchEnvelope): Promise<ApplyOutcome> {
  const ready = await prepare(deps, env);
  if (ready.kind === 'single') throw new Error('unreachable: prepare without a group');
  return ready.kind === 'ready' ? commit(deps, ready) : ready;
}

/** A group holds at most this much record data (the decoded batches stay in memory until written). */
const GROUP_MAX_DATA_BYTES = 64 * 1024 * 1024;

/**
 * Applies the messages of one session receive, in order, with the same outcomes as
 * applyBatchMessage one by one; but consecutive batches of one disk that are plainly next in
 * sequence are written together (DiskStore.applyBatches: each extent read and rewritten once),
 * with one applied-sequence record for the group. A group ends at a batch that carries a
 * consistency tag or completes the initial copy (recovery points and state changes see exactly
 * that batch), at another disk, at 64 MiB of data, and at any message that is not plainly next
 * (duplicate, gap, bad...), which then takes the single path after the group is written.
 * A crash mid-group redelivers the whole receive: writes are absolute, so it converges.
 */
export async function applyBatchMessages(given: ApplyDeps, bodies: readonly unknown[], options: ApplyMessageOptions = {}): Promise<ApplyOutcome[]> {
  const envelopes = bodies.map(tryParseEnvelope);
  const deps: ApplyDeps = { ...given, staging: new PrefetchingStaging(given.staging, stagedRefs(envelopes)) };
  const outcomes: ApplyOutcome[] = new Array<ApplyOutcome>(bodies.length);
  let group: { index: number; ready: Ready }[] = [];
  let groupBytes = 0;
  /**
   * The group being written while the next one is prepared (downloaded, authenticated, decoded):
   * at most one, and a group is written only once the one before it is recorded, so the disk
   * and its applied sequence move exactly as one by one. Preparing a batch with `after` set
   * reads nothing the write changes and writes nothing (see prepare).
   */
  let writing: { last: Ready; done: Promise<void> } | undefined;
  const settle = async (): Promise<void> => {
    const w = writing;
    writing = undefined;
    if (w) await w.done;
  };
  /** Starts writing the group (after the previous write is done); does not wait for it. */
  const startWrite = async (): Promise<void> => {
    const members = group;
    group = [];
    groupBytes = 0;
    if (members.length === 0) return;
    const previous = writing?.last;
    await settle();
    // prepared against the previous group: start from the disk row that group recorded
    const head = (members[0] as { ready: Ready }).ready;
    if (previous?.recorded && head.found === previous.found) (members[0] as { ready: Ready }).ready = { ...head, disk: previous.recorded };
    const done = commitGroup(deps, members.map((m) => m.ready)).then((results) => {
      members.forEach((m, i) => (outcomes[m.index] = results[i] as ApplyOutcome));
    });
    done.catch(() => undefined); // observed by settle()
    writing = { last: (members[members.length - 1] as { ready: Ready }).ready, done };
  };
  const flush = async (): Promise<void> => {
    await startWrite();
    await settle();
  };
  try {
    for (const [index, body] of bodies.entries()) {
      const env = envelopes[index];
      if (!env || wrongSession(env, options.sessionId)) {
        await flush();
        outcomes[index] = await applyBatchMessage(deps, body, options);
        continue;
      }
      let after = group[group.length - 1]?.ready ?? writing?.last;
      if (after && (env.vmId !== after.env.vmId || env.diskId !== after.env.diskId)) {
        await flush();
        after = undefined;
      }
      const prepared = await prepare(deps, env, after);
      if (prepared.kind === 'ready') {
        group.push({ index, ready: prepared });
        groupBytes += prepared.batch.records.reduce((n, r) => n + (r.kind === 'data' ? r.data.length : 0), 0);
        const h = prepared.batch.header;
        if (h.consistency || h.initialReplicationComplete || groupBytes >= GROUP_MAX_DATA_BYTES) await startWrite();
        continue;
      }
      await flush();
      if (prepared.kind === 'single' || after) {
        // Judged against the group's position: judge it again against the stored state, now current.
        outcomes[index] = await applyBatchMessage(deps, body, options);
      } else {
        if (prepared.kind === 'dead-letter') await recordDeadLetter(deps, env.vmId, prepared);
        outcomes[index] = prepared;
      }
    }
    await flush();
  } catch (err) {
    // nothing may go on writing once the receive is given up (it is redelivered)
    await writing?.done.catch(() => undefined);
    throw err;
  }
  return outcomes;
}

/** Writes a group of prepared, consecutive batches of one disk as one write (see applyBatchMessages). */
async function commitGroup(deps: ApplyDeps, group: Ready[]): Promise<ApplyOutcome[]> {
  const first = group[0];
  const last = group[group.length - 1];
  if (!first || !last) return [];
  if (group.length === 1) return [await commit(deps, first)];
  const { vmId, diskId } = first.env;
  faultPoint('apply.batch-opened');
  let stats: ApplyStats;
  try {
    stats = await deps.disks.applyBatches(
      { vmId, diskId },
      first.disk.sizeBytes,
      group.map((g) => g.batch.records),
      { position: { epoch: last.env.epoch, sequence: last.env.seq } },
    );
  } catch (err) {
    if (!(isDiskStoreError(err) && !err.retryable)) throw err;
    // Cannot happen for batches openBatch accepted for this disk's size; apply one by one to name the culprit.
    const out: ApplyOutcome[] = [];
    for (const g of group) out.push(await commit(deps, g));
    return out;
  }
  faultPoint('apply.disk-written');
  if (last.batch.header.consistency && deps.captures) {
    await captureTag(deps, deps.captures, first.disk, last.batch.header);
    faultPoint('apply.captured');
  }
  const { vmState, recorded } = await recordApplied(deps, first.found.vm, first.disk, last.batch);
  last.recorded = recorded;
  await requestCompaction(deps, { vmId, diskId }, stats);
  journalApplied(vmId, diskId, last.env.epoch, first.env.seq, last.env.seq);
  faultPoint('apply.recorded');
  await Promise.all(group.map((g) => deleteStaged(deps, g.env)));
  faultPoint('apply.done');
  return group.map((g, i) => ({
    kind: 'applied' as const,
    vmId,
    diskId,
    epoch: g.env.epoch,
    sequence: g.env.seq,
    stats: i === group.length - 1 ? { ...stats, groupedBatches: group.length } : { extentsWritten: 0, extentsRead: 0, bytesUploaded: 0, bytesDownloaded: 0, segmentsCommitted: 0 },
    ...(vmState && i === group.length - 1 ? { vmState } : {}),
  }));
}

/**
 * Everything before the disk is touched. `after` (group mode) is the batch this one would follow
 * in the same write, and the VM as read for it; a result other than `ready` is then recomputed
 * on the single path once the group is written, so side effects keep their order.
 */
async function prepare(deps: ApplyDeps, env: BatchEnvelope, after?: Ready): Promise<ApplyOutcome | Ready | { kind: 'single' }> {
  const { vmId, diskId } = env;
  const where = `VM '${vmId}' disk '${diskId}' epoch ${env.epoch} sequence ${env.seq}`;
  const found = after?.found ?? (await deps.state.getVm(vmId));
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

  const position = after ? { epoch: after.batch.header.epoch, appliedSequence: after.batch.header.sequence } : disk;
  const decision = decideBatch(position, { epoch: env.epoch, sequence: env.seq });
  if (after && decision.action !== 'apply') return { kind: 'single' };
  if (decision.action === 'duplicate' || decision.action === 'stale-epoch') {
    await deleteStaged(deps, env);
    return { kind: 'duplicate', vmId, diskId, epoch: env.epoch, sequence: env.seq, appliedSequence: disk.appliedSequence };
  }
  // A gap is judged only for an authentic batch (below): the envelope is not authenticated, and
  // a forged or misrouted message must not force a resync.

  faultPoint('apply.state-read');
  let sealed: Buffer;
  if (!('blob' in env.payload)) {
    sealed = sealedBytesFrom(env);
  } else {
    const ref = env.payload.blob;
    let blob: Buffer | undefined;
    try {
      // Bounded by the envelope's size (itself at most a sealed batch's): nothing larger is read.
      blob = await deps.staging.get(ref.name, ref.sizeBytes);
    } catch (err) {
      if (!isStagingTooLargeError(err)) throw err;
      return deadLetter('StagingBlobMismatch', `Batch for ${where}: ${err.message} The blob was overwritten or belongs to another batch; the appliance resends the batch.`, env);
    }
    if (!blob) {
      // A racing apply of this same batch (a redelivery after a lost session lock) may have
      // recorded it and removed its blob since the disk was read above: then it is a duplicate.
      const now = await deps.state.getDisk(vmId, diskId);
      const again = now ? decideBatch(now, { epoch: env.epoch, sequence: env.seq }).action : undefined;
      if (now && (again === 'duplicate' || again === 'stale-epoch')) {
        return { kind: 'duplicate', vmId, diskId, epoch: env.epoch, sequence: env.seq, appliedSequence: now.appliedSequence };
      }
      return deadLetter('StagingBlobMissing', `Batch for ${where}: its payload blob staging/${ref.name} does not exist.`, env);
    }
    try {
      sealed = sealedBytesFrom(env, blob);
    } catch (err) {
      return deadLetter('StagingBlobMismatch', `Batch for ${where}: ${err instanceof Error ? err.message : String(err)}`, env);
    }
  }

  let keyEntry: { key: Buffer; retiresAt?: number } | undefined;
  try {
    keyEntry = await dataKey(deps, vmId, env.keyId, found.vm.keyId);
  } catch (err) {
    if (isStateStoreError(err)) throw err;
    return deadLetter('UnknownKey', `Batch for ${where}: ${err instanceof Error ? err.message : String(err)}`, env);
  }
  if (!keyEntry) return deadLetter('UnknownKey', `Batch for ${where}: VM '${vmId}' has no data key ${env.keyId}.`, env);
  if (keyEntry.retiresAt !== undefined && deps.now() >= keyEntry.retiresAt) {
    return deadLetter(
      'KeyRetired',
      `Batch for ${where} is sealed with data key ${env.keyId}, retired at ${new Date(keyEntry.retiresAt).toISOString()} (the VM's current key is ${found.vm.keyId}): batches sealed with a retired key are refused after its cut-off. Make the appliance seal with the current key (ferry rotate-key stores it; rotate again if the appliance lost it), then resync the VM (POST /api/vms/${vmId}/resync) to send this batch's changes again.`,
      env,
    );
  }
  const key = keyEntry.key;

  let batch: DecodedBatch;
  let sealedKeyId = env.keyId;
  try {
    batch = openBatch(
      sealed,
      (v, k) => {
        sealedKeyId = k;
        return v === vmId && k === env.keyId ? key : undefined;
      },
      { vmId, diskId, epoch: env.epoch, sequence: env.seq },
    );
  } catch (err) {
    if (!isWireFormatError(err)) throw err;
    const refused = `Batch for ${where} was refused (${err.code} in ${err.field})`;
    if (err.code === 'AUTH_FAILED') {
      return deadLetter(
        'AuthenticationFailed',
        `${refused}: it was not sealed with key ${env.keyId} of VM '${vmId}' (but with another VM's key, or one from before replication was enabled again), or its bytes were altered. Check that the appliance uses the VM's current data key; if it does, the message was tampered with.`,
        env,
      );
    }
    if (err.code === 'UNEXPECTED_BATCH') return deadLetter('BatchMismatch', `${refused}: the envelope and the sealed batch disagree, so it was replayed or misrouted: ${err.message}`, env);
    if (err.code === 'UNKNOWN_KEY') return deadLetter('BatchMismatch', `${refused}: the envelope names key ${env.keyId} but the sealed batch key ${sealedKeyId}.`, env);
    return deadLetter('InvalidBatch', `${refused}: ${err.message}`, env);
  }
  if (batch.header.diskSizeBytes !== disk.sizeBytes) {
    return deadLetter('DiskSizeMismatch', `Batch for ${where} is for a ${batch.header.diskSizeBytes}-byte disk; the registered disk is ${disk.sizeBytes} bytes.`, env);
  }
  if (batch.header.capturedAt !== env.capturedAt) {
    return deadLetter('BatchMismatch', `Batch for ${where}: the envelope's capturedAt ${env.capturedAt} differs from the sealed one ${batch.header.capturedAt}, so it was altered or misrouted.`, env);
  }
  if (decision.action === 'gap') {
    await recordGap(deps, found.vm, disk, env.epoch, decision.expectedSequence);
    return deadLetter(
      'SequenceGap',
      `Batch for ${where} arrived but sequence ${decision.expectedSequence} never did: it was lost or dead-lettered. The disk needs a resync (POST /api/vms/${vmId}/resync).`,
      env,
    );
  }
  return { kind: 'ready', env, found, disk, batch, where };
}

/** Writes one prepared batch: disk, recovery-point capture at a tag, applied sequence, staging cleanup. */
async function commit(deps: ApplyDeps, ready: Ready): Promise<ApplyOutcome> {
  const { env, found, disk, batch, where } = ready;
  const { vmId, diskId } = env;
  faultPoint('apply.batch-opened');
  let stats: ApplyStats;
  try {
    stats = await deps.disks.apply({ vmId, diskId }, disk.sizeBytes, batch.records, { position: { epoch: env.epoch, sequence: env.seq } });
  } catch (err) {
    if (isDiskStoreError(err) && !err.retryable) return deadLetter('InvalidBatch', `Batch for ${where}: ${err.message}`, env);
    throw err;
  }

  faultPoint('apply.disk-written');
  if (batch.header.consistency && deps.captures) {
    // The disk is now exactly as of this tagged batch, and no later batch of this disk can be
    // applied before its sequence is recorded below: capture it here.
    await captureTag(deps, deps.captures, disk, batch.header);
    faultPoint('apply.captured');
  }
  const { vmState, recorded } = await recordApplied(deps, found.vm, disk, batch);
  ready.recorded = recorded;
  await requestCompaction(deps, { vmId, diskId }, stats);
  journalApplied(vmId, diskId, env.epoch, env.seq, env.seq);
  faultPoint('apply.recorded');
  await deleteStaged(deps, env);
  faultPoint('apply.done');
  return { kind: 'applied', vmId, diskId, epoch: env.epoch, sequence: env.seq, stats, ...(vmState ? { vmState } : {}) };
}

/**
 * The recovery-point capture of a tagged batch. A capture snapshots the extents, so the disk's
 * delta log must be folded up to the tag first (docs/disk-log.md, "Recovery points"). With an
 * empty or small log that is done here. Otherwise folding would hold up this disk's
 * replication for as long as rewriting many extents takes, so the capture is left to the
 * compactor: a marker makes every later write go to the log, and the compactor folds exactly
 * up to the tag, captures, and clears the marker. The tag's recovery point then appears a
 * little after its batch is applied (`ferry replicate --once` waits for it).
 */
async function captureTag(deps: ApplyDeps, captures: CaptureStore, disk: DiskRecord, header: DecodedBatch['header']): Promise<void> {
  const ref = { vmId: disk.vmId, diskId: disk.diskId };
  const tag = header.consistency;
  const log = tag ? await deps.disks.logState?.(ref) : undefined;
  if (tag && log && deps.compactions && deps.disks.markCapture && (log.captures.length > 0 || log.pendingBytes > INLINE_FOLD_MAX_BYTES)) {
    await deps.disks.markCapture(ref, {
      position: { epoch: header.epoch, sequence: header.sequence },
      tagId: tag.tagId,
      kind: tag.kind,
      capturedAt: header.capturedAt,
      initialReplicationComplete: header.initialReplicationComplete,
    });
    await deps.compactions.request(ref); // a failure throws: the redelivered batch marks and asks again
    return;
  }
  await deps.disks.compact?.(ref, disk.sizeBytes, { all: true });
  await captureAtTag({ state: deps.state, captures, now: deps.now }, disk, header);
}

/** A log this small at a tag is folded inline before the capture (a few extents' rewrite). */
const INLINE_FOLD_MAX_BYTES = 4 * 1024 * 1024;

/** Asks for a background compaction once the disk's log is large; a failure to ask only delays it. */
async function requestCompaction(deps: ApplyDeps, disk: { vmId: string; diskId: string }, stats: ApplyStats): Promise<void> {
  const after = stats.logPendingBytes ?? 0;
  if (!deps.compactions || !shouldRequestCompaction(after - (stats.logBytes ?? 0), after)) return;
  try {
    await deps.compactions.request(disk);
  } catch {
    // The next apply of this disk asks again; reads and captures are correct with any log size.
  }
}

/**
 * Records the applied sequence on the disk row (ETag-guarded); moves the VM to protected when
 * every disk's initial pass is done. Returns the VM's new state if it moved, and the disk row as
 * now stored.
 */
async function recordApplied(deps: ApplyDeps, vm: VmRecord, disk: DiskRecord, batch: DecodedBatch): Promise<{ vmState: string | undefined; recorded: DiskRecord }> {
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
      const etag = await deps.state.putDisk(next);
      current = { ...next, etag };
      break;
    } catch (err) {
      if (!(isStateStoreError(err) && err.code === 'CONFLICT') || attempt >= 8) throw err;
      const fresh = await deps.state.getDisk(disk.vmId, disk.diskId);
      if (!fresh) throw err;
      // Another apply recorded this batch (or a later one) meanwhile: a redelivery that raced this
      // one after a lost session lock. Recording it again would commit it twice and could move the
      // applied sequence back; throw, and the redelivery completes it as a duplicate.
      if (fresh.epoch > h.epoch || (fresh.epoch === h.epoch && fresh.appliedSequence >= h.sequence)) throw err;
      current = fresh;
    }
  }
  // In a new epoch (a resync) the disk's stored initialComplete is the old epoch's, and every
  // disk must have completed this epoch, not an older one.
  if (!h.initialReplicationComplete || (disk.initialComplete && disk.epoch === h.epoch)) return { vmState: undefined, recorded: current };
  const after = await deps.state.getVm(vm.vmId);
  if (!after || !after.disks.every((d) => d.initialComplete && d.epoch === h.epoch)) return { vmState: undefined, recorded: current };
  let moved: string | undefined;
  await updateVmWithRetry(deps, vm.vmId, (v) => {
    const event = v.state === 'resync-required' ? 'resyncComplete' : 'initialReplicationComplete';
    const t = transition(v.state, { type: event }, { vmId: v.vmId });
    if (!t.ok) return v; // e.g. already protected: nothing to do
    moved = t.state;
    return { ...v, state: t.state };
  });
  return { vmState: moved, recorded: current };
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
  if (isBinaryBatchBody(body)) return claimedVmId(body);
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
