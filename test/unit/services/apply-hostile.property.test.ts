/**
 * The apply path against hostile message streams (issue 6), on the in-memory stores: random
 * sequences of valid, duplicate, gapped, corrupted, relabelled, foreign, misrouted, oversize and
 * junk messages over two VMs. The model: every disk equals the valid in-order batches applied,
 * every bad message is dead-lettered with the reason its fault calls for (and a description
 * naming it), counted on the VM it names, and changes no disk; only an authentic gap requires a
 * resync. Run one message at a time and as session receives (applyBatchMessages, grouped).
 */
import { createHash, randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { sealBatch } from '../../../shared/codec/batch';
import { envelopeFor } from '../../../shared/codec/envelope';
import { batchSessionId } from '../../../shared/domain/envelope';
import type { Batch, BatchRecord } from '../../../shared/domain/wire-format';
import { MemoryDiskStore, MemoryStagingStore, MemoryStateStore } from '../../../shared/memory/stores';
import { applyBatchMessage, applyBatchMessages, type ApplyDeps, type ApplyOutcome, type DeadLetterReason } from '../../../shared/services/apply';
import { enableReplication } from '../../../shared/services/vms';
import { seededBytes } from '../../support/hostile-batches';

const SIZE = 32 * 1024;
const NOW = 1_764_147_600_000;
/** vm-a has two disks, vm-b one: relabelling can land on a disk that exists or not. */
const DISKS: readonly { vmId: string; diskId: string }[] = [
  { vmId: 'vm-a', diskId: 'disk0' },
  { vmId: 'vm-a', diskId: 'disk1' },
  { vmId: 'vm-b', diskId: 'disk0' },
];
const keyOf = (vmId: string, diskId: string): string => `${vmId}/${diskId}`;

/** What a dead-letter description must say for each reason. */
const DESCRIBES: Record<DeadLetterReason, RegExp> = {
  InvalidEnvelope: /not a Ferry batch envelope v1: \S+/,
  UnknownVm: /no such VM/,
  VmNotReplicating: /takes no more batches|migrated/,
  UnknownDisk: /has no disk '[a-z0-9-]+'/,
  WrongSession: /arrived in session '.+'; a disk's batches must be sent in session/,
  SequenceGap: /sequence \d+ never did/,
  StagingBlobMissing: /staging\/\S+ does not exist/,
  StagingBlobMismatch: /SHA-256|bytes/,
  UnknownKey: /no data key \d+/,
  KeyRetired: /retired/,
  AuthenticationFailed: /AUTH_FAILED in ciphertext.*another VM's key.*altered/,
  BatchMismatch: /UNEXPECTED_BATCH in (vmId|diskId|epoch|sequence)|UNKNOWN_KEY|capturedAt/,
  InvalidBatch: /\((TRUNCATED|TRAILING_DATA|BAD_MAGIC|UNSUPPORTED_VERSION|BAD_FIELD|SIZE_LIMIT) in \S+\)/,
  DiskSizeMismatch: /-byte disk/,
};

type Kind =
  | 'good'
  | 'replay'
  | 'stale-seq'
  | 'gap'
  | 'tamper-payload'
  | 'tamper-header'
  | 'truncate'
  | 'random-bytes'
  | 'relabel-vm'
  | 'relabel-disk'
  | 'relabel-seq'
  | 'relabel-epoch'
  | 'relabel-key'
  | 'relabel-captured'
  | 'foreign-key'
  | 'wrong-session'
  | 'missing-blob'
  | 'foreign-blob'
  | 'blob-swapped'
  | 'oversize-blob'
  | 'oversize-inline'
  | 'blob-sha'
  | 'unknown-vm'
  | 'extra-field'
  | 'junk';

const KINDS: readonly Kind[] = [
  'good', 'good', 'good', 'good', 'good', 'good', 'replay', 'stale-seq', 'gap', 'tamper-payload', 'tamper-header', 'truncate', 'random-bytes', 'relabel-vm', 'relabel-disk', 'relabel-seq',
  'relabel-epoch', 'relabel-key', 'relabel-captured', 'foreign-key', 'wrong-session', 'missing-blob', 'foreign-blob', 'blob-swapped', 'oversize-blob', 'oversize-inline', 'blob-sha', 'unknown-vm', 'extra-field', 'junk',
];

interface Step {
  kind: Kind;
  disk: number;
  other: number;
  staged: boolean;
  offsetSectors: number;
  sectors: number;
  zero: boolean;
  seed: number;
  at: number;
}

const stepArb: fc.Arbitrary<Step> = fc.record({
  kind: fc.constantFrom(...KINDS),
  disk: fc.nat({ max: DISKS.length - 1 }),
  other: fc.nat({ max: DISKS.length - 1 }),
  staged: fc.boolean(),
  offsetSectors: fc.nat({ max: SIZE / 512 - 8 }),
  sectors: fc.integer({ min: 1, max: 8 }),
  zero: fc.boolean(),
  seed: fc.integer(),
  at: fc.nat(),
});

interface World {
  deps: ApplyDeps;
  disks: MemoryDiskStore;
  staging: MemoryStagingStore;
  keys: Record<string, Buffer>;
}

async function world(): Promise<World> {
  const disks = new MemoryDiskStore();
  const staging = new MemoryStagingStore(() => NOW);
  const deps: ApplyDeps = { state: new MemoryStateStore(), disks, staging, masterKey: randomBytes(32), now: () => NOW, randomBytes: (n) => randomBytes(n) };
  const keys: Record<string, Buffer> = {};
  for (const vmId of ['vm-a', 'vm-b']) {
    const own = DISKS.filter((d) => d.vmId === vmId).map((d) => ({ diskId: d.diskId, sizeBytes: SIZE }));
    keys[vmId] = Buffer.from((await enableReplication(deps, vmId, { disks: own })).dataKey, 'base64');
  }
  return { deps, disks, staging, keys };
}

interface Planned {
  what: string;
  body: unknown;
  sessionId: string;
  /** `applied`, `duplicate`, or the dead-letter reasons allowed (one, except for a random header edit). */
  expect: 'applied' | 'duplicate' | readonly DeadLetterReason[];
  /** The VM whose health counts it (undefined: none). */
  countedOn?: string;
  /** For applied batches: the records to apply to the model. */
  disk?: string;
  records?: BatchRecord[];
  gapOn?: string;
}

/**
 * Turns abstract steps into concrete messages and their expected outcomes, tracking the model's
 * applied positions as the real code must. Staged payloads are put into `w.staging` here.
 */
async function plan(w: World, steps: readonly Step[]): Promise<Planned[]> {
  const applied: Record<string, number> = Object.fromEntries(DISKS.map((d) => [keyOf(d.vmId, d.diskId), 0]));
  const sent: Record<string, unknown[]> = Object.fromEntries(DISKS.map((d) => [keyOf(d.vmId, d.diskId), []]));
  const out: Planned[] = [];
  for (const s of steps) {
    const { vmId, diskId } = DISKS[s.disk]!;
    const here = keyOf(vmId, diskId);
    const next = applied[here]! + 1;
    const records: BatchRecord[] = [s.zero ? { kind: 'zero', offset: s.offsetSectors * 512, length: s.sectors * 512 } : { kind: 'data', offset: s.offsetSectors * 512, data: seededBytes(s.seed)(s.sectors * 512) }];
    const batch = (extra: Partial<Batch> = {}): Batch => ({ vmId, diskId, epoch: 1, sequence: next, capturedAt: NOW - 1000, diskSizeBytes: SIZE, records, ...extra });
    const seal = (b: Batch, key = w.keys[b.vmId] ?? randomBytes(32)): Buffer => sealBatch(b, key, 1, randomBytes, { codec: 'zstd' });
    /** An envelope (JSON-shaped, as the trigger hands it over), staged or inline. */
    const wrap = async (sealed: Buffer, staged = s.staged, put = true): Promise<{ env: Record<string, unknown>; blob?: { name: string; body: Buffer } }> => {
      const e = envelopeFor(sealed, staged ? { inlineMaxBytes: 0 } : {});
      if (e.staged && put) await w.staging.put(e.staged.name, e.staged.body);
      return { env: JSON.parse(JSON.stringify(e.envelope)) as Record<string, unknown>, ...(e.staged ? { blob: { name: e.staged.name, body: e.staged.body } } : {}) };
    };
    const session = batchSessionId(vmId, diskId);
    /** The envelope of `sealed`, carrying `bytes` instead (staged: the blob, with its digest and size). */
    const carrying = async (sealed: Buffer, bytes: Buffer): Promise<Record<string, unknown>> => {
      const { env, blob } = await wrap(sealed, s.staged, false);
      if (!blob) return { ...env, payload: { inline: bytes.toString('base64') } };
      await w.staging.put(blob.name, bytes);
      const ref = (env.payload as { blob: Record<string, unknown> }).blob;
      return { ...env, payload: { blob: { ...ref, sizeBytes: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex') } } };
    };
    /** Outcome of a message naming (vm, disk, seq) whose envelope is consistent but whose batch is bad. */
    const judged = (toVm: string, toDisk: string, seq: number, reasons: readonly DeadLetterReason[]): Planned['expect'] => {
      if (!DISKS.some((d) => d.vmId === toVm && d.diskId === toDisk)) return ['UnknownDisk'];
      return seq <= applied[keyOf(toVm, toDisk)]! ? 'duplicate' : reasons;
    };
    const dead = (what: string, body: unknown, reasons: Planned['expect'], countedOn: string | null = vmId, sessionId = session): Planned => ({ what, body, sessionId, expect: reasons, ...(reasons === 'duplicate' || countedOn === null ? {} : { countedOn }) });

    switch (s.kind) {
      case 'good': {
        const { env } = await wrap(seal(batch()));
        out.push({ what: `good ${here} ${next}`, body: env, sessionId: session, expect: 'applied', disk: here, records });
        sent[here]!.push(env);
        applied[here] = next;
        break;
      }
      case 'replay': {
        // the very message of an applied batch, again (a redelivery or a replay): no effect
        const earlier = sent[here]!;
        if (earlier.length === 0) break;
        out.push({ what: `replay ${here}`, body: earlier[s.at % earlier.length], sessionId: session, expect: 'duplicate' });
        break;
      }
      case 'stale-seq': {
        if (next === 1) break;
        const { env } = await wrap(seal(batch({ sequence: 1 + (s.at % (next - 1)) })));
        out.push({ what: `stale ${here}`, body: env, sessionId: session, expect: 'duplicate' });
        break;
      }
      case 'gap': {
        const { env } = await wrap(seal(batch({ sequence: next + 1 + (s.at % 3) })));
        out.push({ ...dead(`gap ${here}`, env, ['SequenceGap']), gapOn: vmId });
        break;
      }
      case 'tamper-payload':
      case 'tamper-header': {
        const sealed = seal(batch());
        const i = s.kind === 'tamper-payload' ? 196 + (s.at % (sealed.length - 196)) : s.at % 196;
        const tampered = Buffer.from(sealed);
        tampered[i] = tampered[i]! ^ (1 + ((s.seed >>> 0) % 255));
        out.push(dead(`${s.kind} byte ${i}`, await carrying(sealed, tampered),
          // past the header (nonce, ciphertext, tag) only GCM can tell; in the header a bad value
          // is refused by its rule, a valid one for another VM, disk, epoch, sequence or key by
          // the expectations, any other valid one by GCM
          s.kind === 'tamper-payload' ? ['AuthenticationFailed'] : ['InvalidBatch', 'BatchMismatch', 'AuthenticationFailed']));
        break;
      }
      case 'truncate': {
        const sealed = seal(batch());
        // a staged blob is at least 256 bytes (the smallest sealed batch), or the envelope is refused
        const cut = s.staged ? 256 + (s.at % (sealed.length - 256)) : s.at % sealed.length;
        out.push(dead(`truncated to ${cut}`, await carrying(sealed, sealed.subarray(0, cut)), ['InvalidBatch']));
        break;
      }
      case 'random-bytes': {
        const junk = seededBytes(s.seed)(300 + (s.at % 400));
        junk[0] = 0x00; // not "F": never a valid magic by chance
        out.push(dead('random payload bytes', await carrying(seal(batch()), junk), ['InvalidBatch']));
        break;
      }
      case 'relabel-vm':
      case 'relabel-disk': {
        // a valid batch re-addressed to another VM or disk, sent in that disk's session
        const to = s.kind === 'relabel-vm' ? { vmId: vmId === 'vm-a' ? 'vm-b' : 'vm-a', diskId } : { vmId, diskId: vmId === 'vm-a' ? (diskId === 'disk0' ? 'disk1' : 'disk0') : 'disk9' };
        const { env } = await wrap(seal(batch()));
        if ('blob' in (env.payload as object)) {
          // its blob name no longer matches the ids: the envelope itself is refused
          out.push(dead(`${s.kind} staged`, { ...env, ...to }, ['InvalidEnvelope'], to.vmId, batchSessionId(to.vmId, to.diskId)));
        } else {
          out.push(dead(`${s.kind} to ${keyOf(to.vmId, to.diskId)}`, { ...env, ...to }, judged(to.vmId, to.diskId, next, ['BatchMismatch']), to.vmId, batchSessionId(to.vmId, to.diskId)));
        }
        break;
      }
      case 'relabel-seq':
      case 'relabel-epoch': {
        const { env } = await wrap(seal(batch()), false);
        if (s.kind === 'relabel-seq') {
          const seq = 1 + (s.at % (next + 3));
          if (seq === next) break;
          // an unauthenticated future sequence is a forgery, not a gap: no resync
          out.push(dead(`relabel seq ${next}->${seq}`, { ...env, seq }, judged(vmId, diskId, seq, ['BatchMismatch'])));
        } else {
          out.push(dead('relabel epoch', { ...env, epoch: 2 }, ['BatchMismatch']));
        }
        break;
      }
      case 'relabel-key': {
        const { env } = await wrap(seal(batch()));
        out.push(dead('relabel keyId', { ...env, keyId: 2 + (s.at % 5) }, ['UnknownKey']));
        break;
      }
      case 'relabel-captured': {
        const { env } = await wrap(seal(batch()));
        out.push(dead('relabel capturedAt', { ...env, capturedAt: NOW - 999 }, ['BatchMismatch']));
        break;
      }
      case 'foreign-key': {
        const other = vmId === 'vm-a' ? 'vm-b' : 'vm-a';
        out.push(dead(`sealed with ${other}'s key`, (await wrap(seal(batch(), w.keys[other]))).env, ['AuthenticationFailed']));
        break;
      }
      case 'wrong-session': {
        const to = DISKS[s.other]!;
        if (to.vmId === vmId && to.diskId === diskId) break;
        out.push(dead(`in session of ${keyOf(to.vmId, to.diskId)}`, (await wrap(seal(batch()))).env, ['WrongSession'], vmId, batchSessionId(to.vmId, to.diskId)));
        break;
      }
      case 'missing-blob': {
        out.push(dead('missing blob', (await wrap(seal(batch()), true, false)).env, ['StagingBlobMissing']));
        break;
      }
      case 'foreign-blob':
      case 'blob-swapped': {
        // the staged blob holds another VM's (or disk's) authentic batch: with the envelope's
        // digest updated the batch is refused for its ids, without it the blob is
        const to = DISKS[s.other]!;
        const { env, blob } = await wrap(seal(batch()), true, false);
        const foreign = sealBatch({ ...batch(), vmId: to.vmId, diskId: to.diskId }, w.keys[to.vmId]!, 1, randomBytes);
        await w.staging.put(blob!.name, foreign);
        const ref = (env.payload as { blob: Record<string, unknown> }).blob;
        if (s.kind === 'foreign-blob') {
          const same = to.vmId === vmId && to.diskId === diskId;
          env.payload = { blob: { ...ref, sizeBytes: foreign.length, sha256: createHash('sha256').update(foreign).digest('hex') } };
          // the same disk's own batch re-sealed is authentic and consistent: it applies
          if (same) {
            out.push({ what: 'foreign blob of the same disk', body: env, sessionId: session, expect: 'applied', disk: here, records });
            sent[here]!.push(env);
            applied[here] = next;
          } else out.push(dead(`blob of ${keyOf(to.vmId, to.diskId)}`, env, ['BatchMismatch']));
        } else {
          out.push(dead(`blob swapped for ${keyOf(to.vmId, to.diskId)}'s`, env, ['StagingBlobMismatch']));
        }
        break;
      }
      case 'oversize-blob': {
        const { env, blob } = await wrap(seal(batch()), true, false);
        await w.staging.put(blob!.name, Buffer.concat([blob!.body, Buffer.alloc(1 + (s.at % 70_000))]));
        out.push(dead('oversize blob', env, ['StagingBlobMismatch']));
        break;
      }
      case 'oversize-inline': {
        const { env } = await wrap(seal(batch()), false);
        env.payload = { inline: randomBytes(97 * 1024 + (s.at % 1024)).toString('base64') };
        out.push(dead('oversize inline payload', env, ['InvalidEnvelope']));
        break;
      }
      case 'blob-sha': {
        const { env } = await wrap(seal(batch()), true);
        const ref = (env.payload as { blob: Record<string, unknown> }).blob;
        env.payload = { blob: { ...ref, sha256: 'f'.repeat(64) } };
        out.push(dead('wrong blob sha256', env, ['StagingBlobMismatch']));
        break;
      }
      case 'unknown-vm': {
        const { env } = await wrap(sealBatch({ ...batch(), vmId: 'ghost' }, randomBytes(32), 1, randomBytes), false);
        out.push(dead('unknown VM', env, ['UnknownVm'], null, batchSessionId('ghost', diskId)));
        break;
      }
      case 'extra-field': {
        const { env } = await wrap(seal(batch()));
        out.push(dead('unknown envelope field', { ...env, admin: true }, ['InvalidEnvelope']));
        break;
      }
      case 'junk': {
        const bodies: unknown[] = [seededBytes(s.seed)(s.at % 300), 'not json {', { v: 1 }, null, 42, [1, 2]];
        out.push(dead('junk body', bodies[s.at % bodies.length], ['InvalidEnvelope'], null));
        break;
      }
    }
  }
  return out;
}

async function diskBytes(w: World): Promise<Record<string, Buffer>> {
  const out: Record<string, Buffer> = {};
  for (const d of DISKS) out[keyOf(d.vmId, d.diskId)] = await w.disks.read(d, SIZE, 0, SIZE);
  return out;
}

function check(p: Planned, got: ApplyOutcome): void {
  const label = `${p.what}: got ${JSON.stringify(got.kind === 'dead-letter' ? [got.reason, got.description] : got.kind)}`;
  if (p.expect === 'applied' || p.expect === 'duplicate') {
    expect(got.kind, label).toBe(p.expect);
    return;
  }
  expect(got.kind, label).toBe('dead-letter');
  if (got.kind !== 'dead-letter') return;
  expect(p.expect, label).toContain(got.reason);
  expect(got.description, label).toMatch(DESCRIBES[got.reason]);
}

/** The end state: disks = the valid batches in order, health counts every dead letter on its VM. */
async function checkEnd(w: World, planned: readonly Planned[], outcomes: readonly ApplyOutcome[]): Promise<void> {
  const model: Record<string, Buffer> = Object.fromEntries(DISKS.map((d) => [keyOf(d.vmId, d.diskId), Buffer.alloc(SIZE)]));
  const seq: Record<string, number> = {};
  const counted: Record<string, number> = { 'vm-a': 0, 'vm-b': 0 };
  const gaps = new Set<string>();
  for (const p of planned) {
    if (p.disk && p.records) {
      for (const r of p.records) {
        if (r.kind === 'zero') model[p.disk]!.fill(0, r.offset, r.offset + r.length);
        else model[p.disk]!.set(r.data, r.offset);
      }
      seq[p.disk] = (seq[p.disk] ?? 0) + 1;
    }
    if (p.countedOn && counted[p.countedOn] !== undefined) counted[p.countedOn]!++;
    if (p.gapOn) gaps.add(p.gapOn);
  }
  const disks = await diskBytes(w);
  for (const d of DISKS) {
    const k = keyOf(d.vmId, d.diskId);
    expect(disks[k]!.equals(model[k]!), `${k} differs from the valid batches applied in order`).toBe(true);
  }
  for (const vmId of ['vm-a', 'vm-b']) {
    const found = await w.deps.state.getVm(vmId);
    expect(found!.vm.deadLetteredCount, `${vmId} dead letters counted`).toBe(counted[vmId]);
    expect(found!.disks.map((d) => d.appliedSequence)).toEqual(found!.disks.map((d) => seq[keyOf(vmId, d.diskId)] ?? 0));
    // only an authentic gap requires a resync; forged or misrouted messages never do
    expect(found!.vm.state === 'resync-required', `${vmId} state ${found!.vm.state}`).toBe(gaps.has(vmId));
    const last = [...planned.keys()].reverse().find((i) => planned[i]!.countedOn === vmId);
    const lastOutcome = last === undefined ? undefined : outcomes[last];
    if (lastOutcome?.kind === 'dead-letter') expect(found!.vm.recentIssues.at(-1)?.code).toBe(lastOutcome.reason);
  }
}

describe('apply on hostile message streams (in-memory stores)', () => {
  it('one message at a time: each outcome as its fault calls for, and a bad message changes no disk', async () => {
    let deadLetters = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(stepArb, { minLength: 1, maxLength: 24 }), async (steps) => {
        const w = await world();
        const planned = await plan(w, steps);
        const outcomes: ApplyOutcome[] = [];
        for (const p of planned) {
          const before = p.expect === 'applied' ? undefined : await diskBytes(w);
          const writes = w.disks.writes;
          const got = await applyBatchMessage(w.deps, p.body, { sessionId: p.sessionId });
          outcomes.push(got);
          check(p, got);
          if (before) {
            expect(w.disks.writes, `${p.what} wrote a disk`).toBe(writes);
            const after = await diskBytes(w);
            for (const k of Object.keys(before)) expect(after[k]!.equals(before[k]!), `${p.what} changed ${k}`).toBe(true);
            if (got.kind === 'dead-letter') deadLetters++;
          }
        }
        await checkEnd(w, planned, outcomes);
      }),
      { numRuns: 250, seed: 20261126 },
    );
    expect(deadLetters).toBeGreaterThan(400); // about 1,000 expected: the bad kinds are exercised, not skipped
  });

  it('as session receives, written in groups: the same outcomes and end state', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(stepArb, { minLength: 1, maxLength: 24 }), fc.array(fc.integer({ min: 1, max: 6 }), { minLength: 24, maxLength: 24 }), async (steps, cuts) => {
        const w = await world();
        const planned = await plan(w, steps);
        const outcomes: ApplyOutcome[] = [];
        // a receive holds consecutive messages of one session, at most `cuts[i]` of them
        let i = 0;
        let c = 0;
        while (i < planned.length) {
          const sessionId = planned[i]!.sessionId;
          let j = i;
          while (j < planned.length && j - i < (cuts[c % cuts.length] ?? 1) && planned[j]!.sessionId === sessionId) j++;
          const group = planned.slice(i, j);
          const got = await applyBatchMessages(w.deps, group.map((p) => p.body), { sessionId });
          group.forEach((p, k) => check(p, got[k]!));
          outcomes.push(...got);
          i = j;
          c++;
        }
        await checkEnd(w, planned, outcomes);
      }),
      { numRuns: 250 },
    );
  });
});
