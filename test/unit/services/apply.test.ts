import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { beforeEach, describe, expect, it } from 'vitest';
import { sealBatch } from '../../../shared/codec/batch';
import { envelopeFor } from '../../../shared/codec/envelope';
import type { Batch, BatchRecord } from '../../../shared/domain/wire-format';
import { MemoryDiskStore, MemoryStagingStore, MemoryStateStore } from '../../../shared/memory/stores';
import { applyBatchMessage, applyBatchMessages, type ApplyDeps } from '../../../shared/services/apply';
import { cleanStaging, monitorHealth } from '../../../shared/services/maintenance';
import { disableReplication, enableReplication, getVm } from '../../../shared/services/vms';

const KiB = 1024;
const SIZE = 256 * KiB;

interface World {
  deps: ApplyDeps;
  disks: MemoryDiskStore;
  staging: MemoryStagingStore;
  clock: { now: number };
  key: Buffer;
}

async function world(vmId = 'vm1', diskIds = ['disk0', 'disk1']): Promise<World> {
  const clock = { now: 1_700_000_000_000 };
  const disks = new MemoryDiskStore();
  const staging = new MemoryStagingStore(() => clock.now);
  const deps: ApplyDeps = { state: new MemoryStateStore(), disks, staging, masterKey: randomBytes(32), now: () => clock.now, randomBytes: (n) => randomBytes(n) };
  const { dataKey } = await enableReplication(deps, vmId, { disks: diskIds.map((diskId) => ({ diskId, sizeBytes: SIZE })) });
  return { deps, disks, staging, clock, key: Buffer.from(dataKey, 'base64') };
}

function batch(diskId: string, sequence: number, records: BatchRecord[], extra: Partial<Batch> = {}): Batch {
  return { vmId: 'vm1', diskId, epoch: 1, sequence, capturedAt: 1_700_000_000_000, diskSizeBytes: SIZE, records, ...extra };
}

/** The message body for a batch, staging it when large (inlineMax small to exercise both paths). */
async function message(w: World, b: Batch, { key = w.key, keyId = 1, inlineMax = 8 * KiB } = {}): Promise<unknown> {
  const out = envelopeFor(sealBatch(b, key, keyId, randomBytes), { inlineMaxBytes: inlineMax });
  if (out.staged) await w.staging.put(out.staged.name, out.staged.body);
  return JSON.parse(JSON.stringify(out.envelope));
}

const data = (offset: number, len: number, fill: number): BatchRecord => ({ kind: 'data', offset, data: Buffer.alloc(len, fill) });
/** Incompressible, so its sealed batch exceeds the inline limit and goes through staging. */
const big = (offset: number, len: number): BatchRecord => ({ kind: 'data', offset, data: randomBytes(len) });

describe('applyBatchMessage', () => {
  let w: World;
  beforeEach(async () => {
    w = await world();
  });

  it('applies in order, inline and staged, deletes the staging blob, and tracks progress', async () => {
    expect((await applyBatchMessage(w.deps, await message(w, batch('disk0', 1, [data(0, 4 * KiB, 1)], { initialCoveredBytes: 4 * KiB })))).kind).toBe('applied');
    const second = await message(w, batch('disk0', 2, [data(64 * KiB, 64 * KiB, 2), big(192 * KiB, 16 * KiB)]));
    expect(w.staging.blobs.size).toBe(1);
    expect((await applyBatchMessage(w.deps, second)).kind).toBe('applied');
    expect(w.staging.blobs.size).toBe(0);
    const disk = await w.disks.read({ vmId: 'vm1', diskId: 'disk0' }, SIZE, 0, SIZE);
    expect(disk.subarray(0, 4 * KiB).every((b) => b === 1)).toBe(true);
    expect(disk.subarray(64 * KiB, 128 * KiB).every((b) => b === 2)).toBe(true);
    const vm = await getVm(w.deps, 'vm1');
    expect(vm.disks[0]).toMatchObject({ appliedSequence: 2, initialReplicationPercent: 1.56 });
    expect(vm.state).toBe('initial-replication');
  });

  it('moves the VM to protected when every disk has completed its initial pass', async () => {
    await applyBatchMessage(w.deps, await message(w, batch('disk0', 1, [], { initialReplicationComplete: true })));
    expect((await getVm(w.deps, 'vm1')).state).toBe('initial-replication');
    const out = await applyBatchMessage(w.deps, await message(w, batch('disk1', 1, [], { initialReplicationComplete: true })));
    expect(out).toMatchObject({ kind: 'applied', vmState: 'protected' });
    expect((await getVm(w.deps, 'vm1')).disks.map((d) => d.initialReplicationPercent)).toEqual([100, 100]);
  });

  it('completes duplicates without changing anything', async () => {
    await applyBatchMessage(w.deps, await message(w, batch('disk0', 1, [data(0, 512, 7)])));
    const writes = w.disks.writes;
    const dup = await applyBatchMessage(w.deps, await message(w, batch('disk0', 1, [data(0, 512, 9)])));
    expect(dup).toMatchObject({ kind: 'duplicate', appliedSequence: 1 });
    expect(w.disks.writes).toBe(writes);
    expect((await w.disks.read({ vmId: 'vm1', diskId: 'disk0' }, SIZE, 0, 1))[0]).toBe(7);
  });

  it('a staged batch whose blob a racing apply of the same batch removed (after a lost session lock) completes as a duplicate, not StagingBlobMissing', async () => {
    const body = await message(w, batch('disk0', 1, [big(0, 64 * KiB)]));
    const get = w.staging.get.bind(w.staging);
    let raced = false;
    // the racing apply runs between this apply's read of the disk and its read of the blob
    w.staging.get = async (name, maxBytes) => {
      if (!raced) {
        raced = true;
        expect(await applyBatchMessage({ ...w.deps, staging: Object.assign(Object.create(w.staging), { get }) }, body)).toMatchObject({ kind: 'applied', sequence: 1 });
        expect(w.staging.blobs.size).toBe(0);
      }
      return get(name, maxBytes);
    };
    const out = await applyBatchMessage(w.deps, body);
    expect(out).toMatchObject({ kind: 'duplicate', sequence: 1, appliedSequence: 1 });
    const vm = await getVm(w.deps, 'vm1');
    expect(vm.state).not.toBe('resync-required');
    expect(vm.healthReasons.map((r) => r.code)).not.toContain('DEAD_LETTERED');
  });

  it('dead-letters a gap naming the missing sequence and requires a resync', async () => {
    const out = await applyBatchMessage(w.deps, await message(w, batch('disk0', 3, [data(0, 512, 1)])));
    expect(out).toMatchObject({ kind: 'dead-letter', reason: 'SequenceGap' });
    expect(out.kind === 'dead-letter' && out.description).toMatch(/sequence 1 never did/);
    const vm = await getVm(w.deps, 'vm1');
    expect(vm.state).toBe('resync-required');
    expect(vm.health).toBe('critical');
    expect(vm.healthReasons.map((r) => r.code)).toEqual(expect.arrayContaining(['RESYNC_REQUIRED', 'SEQUENCE_GAP', 'DEAD_LETTERED']));
    expect(w.disks.writes).toBe(0);
  });

  it.each([
    ['a body that is not JSON', async () => 'not json', 'InvalidEnvelope'],
    ['an envelope with an unknown field', async () => ({ ...((await message(w, batch('disk0', 1, []))) as object), extra: 1 }), 'InvalidEnvelope'],
    ['a batch for an unknown VM', async () => message(w, batch('disk0', 1, [], { vmId: 'ghost' })), 'UnknownVm'],
    ['a batch for an unknown disk', async () => message(w, batch('disk7', 1, [])), 'UnknownDisk'],
    ['a batch sealed with another key', async () => message(w, batch('disk0', 1, [data(0, 512, 1)]), { key: randomBytes(32) }), 'AuthenticationFailed'],
    ['an unknown key id', async () => message(w, batch('disk0', 1, []), { keyId: 9 }), 'UnknownKey'],
    ['a disk-size mismatch', async () => message(w, batch('disk0', 1, [], { diskSizeBytes: SIZE * 2 })), 'DiskSizeMismatch'],
    ['a missing staging blob', async () => {
      const body = (await message(w, batch('disk0', 1, [big(0, 64 * KiB)]))) as object;
      expect(w.staging.blobs.size).toBe(1);
      w.staging.blobs.clear();
      return body;
    }, 'StagingBlobMissing'],
    ['a replayed batch of another disk', async () => {
      const env = (await message(w, batch('disk1', 1, [data(0, 512, 5)]))) as Record<string, unknown>;
      return { ...env, diskId: 'disk0' };
    }, 'BatchMismatch'],
  ])('dead-letters %s and touches no disk', async (_what, make, reason) => {
    const out = await applyBatchMessage(w.deps, await make());
    expect(out).toMatchObject({ kind: 'dead-letter', reason });
    expect(w.disks.writes).toBe(0);
  });

  it('refuses batches for a disabled VM', async () => {
    await disableReplication(w.deps, 'vm1');
    expect(await applyBatchMessage(w.deps, await message(w, batch('disk0', 1, [])))).toMatchObject({ kind: 'dead-letter', reason: 'VmNotReplicating' });
  });

  it('converges to the model whatever mix of good, duplicate, forged and out-of-order messages arrives', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            kind: fc.constantFrom('good', 'good', 'good', 'dup', 'forged', 'future'),
            offset: fc.integer({ min: 0, max: SIZE / 512 - 8 }),
            sectors: fc.integer({ min: 1, max: 8 }),
            fill: fc.integer({ min: 0, max: 255 }),
          }),
          { minLength: 1, maxLength: 12 },
        ),
        async (steps) => {
          const ww = await world();
          const model = Buffer.alloc(SIZE);
          let next = 1;
          for (const s of steps) {
            const rec = data(s.offset * 512, s.sectors * 512, s.fill);
            if (s.kind === 'good') {
              expect((await applyBatchMessage(ww.deps, await message(ww, batch('disk0', next, [rec])))).kind).toBe('applied');
              model.fill(s.fill, rec.offset, rec.offset + s.sectors * 512);
              next++;
            } else if (s.kind === 'dup' && next > 1) {
              expect((await applyBatchMessage(ww.deps, await message(ww, batch('disk0', next - 1, [rec])))).kind).toBe('duplicate');
            } else if (s.kind === 'forged') {
              expect((await applyBatchMessage(ww.deps, await message(ww, batch('disk0', next, [rec]), { key: randomBytes(32) }))).kind).toBe('dead-letter');
            }
            expect((await ww.disks.read({ vmId: 'vm1', diskId: 'disk0' }, SIZE, 0, SIZE)).equals(model)).toBe(true);
          }
        },
      ),
      { numRuns: 60 },
    );
  });
});

describe('applyBatchMessages (a session receive, written in groups)', () => {
  it('gives the same outcomes and disks as applying the messages one by one, for any mix', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            kind: fc.constantFrom('good', 'good', 'good', 'good', 'dup', 'forged', 'future', 'tag', 'other-disk', 'junk'),
            offset: fc.integer({ min: 0, max: SIZE / 512 - 8 }),
            sectors: fc.integer({ min: 1, max: 8 }),
            fill: fc.integer({ min: 0, max: 255 }),
          }),
          { minLength: 1, maxLength: 14 },
        ),
        async (steps) => {
          const one = await world();
          const many = await world();
          // the same message bodies for both worlds (they share no key: seal per world)
          const next: Record<string, number> = { disk0: 1, disk1: 1 };
          const plan: { diskId: string; seq: number; rec: BatchRecord; forged: boolean; tag: boolean; junk: boolean }[] = [];
          for (const s of steps) {
            const diskId = s.kind === 'other-disk' ? 'disk1' : 'disk0';
            const rec = data(s.offset * 512, s.sectors * 512, s.fill);
            if (s.kind === 'junk') plan.push({ diskId, seq: 0, rec, forged: false, tag: false, junk: true });
            else if (s.kind === 'dup') plan.push({ diskId, seq: Math.max(1, next[diskId]! - 1), rec, forged: false, tag: false, junk: false });
            else if (s.kind === 'future') plan.push({ diskId, seq: next[diskId]! + 2, rec, forged: false, tag: false, junk: false });
            else if (s.kind === 'forged') plan.push({ diskId, seq: next[diskId]!, rec, forged: true, tag: false, junk: false });
            else plan.push({ diskId, seq: next[diskId]!++, rec, forged: false, tag: s.kind === 'tag', junk: false });
          }
          const bodies = async (w: World) => {
            const out: unknown[] = [];
            for (const p of plan) {
              if (p.junk) out.push('not an envelope');
              else out.push(await message(w, batch(p.diskId, p.seq, [p.rec], p.tag ? { consistency: { kind: 'crash-consistent', tagId: p.seq } } : {}), p.forged ? { key: randomBytes(32) } : {}));
            }
            return out;
          };
          const singles: string[] = [];
          for (const b of await bodies(one)) singles.push((await applyBatchMessage(one.deps, b)).kind);
          const grouped = (await applyBatchMessages(many.deps, await bodies(many))).map((o) => o.kind);
          expect(grouped).toEqual(singles);
          for (const diskId of ['disk0', 'disk1']) {
            const a = await one.disks.read({ vmId: 'vm1', diskId }, SIZE, 0, SIZE);
            const b = await many.disks.read({ vmId: 'vm1', diskId }, SIZE, 0, SIZE);
            expect(b.equals(a)).toBe(true);
          }
          const va = await getVm(one.deps, 'vm1');
          const vb = await getVm(many.deps, 'vm1');
          expect(vb.state).toBe(va.state);
          expect(vb.disks.map((d) => d.appliedSequence)).toEqual(va.disks.map((d) => d.appliedSequence));
        },
      ),
      { numRuns: 80 },
    );
  });

  it('writes consecutive batches of a disk once', async () => {
    const w = await world();
    const bodies = [];
    for (let seq = 1; seq <= 5; seq++) bodies.push(await message(w, batch('disk0', seq, [data(seq * 4096, 512, seq)])));
    const outcomes = await applyBatchMessages(w.deps, bodies);
    expect(outcomes.map((o) => o.kind)).toEqual(['applied', 'applied', 'applied', 'applied', 'applied']);
    expect(w.disks.writes).toBe(1);
    expect((await getVm(w.deps, 'vm1')).disks[0]?.appliedSequence).toBe(5);
  });
});

describe('applyBatchMessages: the next group is prepared while the previous one is written', () => {
  /** Disk and state stores that log the order of writes and records; group 1's write waits on a gate. */
  function traced(w: World) {
    const events: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let writes = 0;
    const disks = w.deps.disks;
    const state = w.deps.state;
    const staging = w.deps.staging;
    w.deps = {
      ...w.deps,
      disks: Object.assign(Object.create(disks) as typeof disks, {
        applyBatches: async (...args: Parameters<typeof disks.applyBatches>) => {
          const n = ++writes;
          events.push(`write ${n}`);
          if (n === 1) await gate;
          if (n === 1 && (w as World & { failFirst?: boolean }).failFirst) throw new Error('storage went away');
          return disks.applyBatches(...args);
        },
      }),
      state: Object.assign(Object.create(state) as typeof state, {
        putDisk: async (d: Parameters<typeof state.putDisk>[0]) => {
          events.push(`record ${d.appliedSequence}`);
          return state.putDisk(d);
        },
      }),
      staging: Object.assign(Object.create(staging) as typeof staging, {
        get: async (...args: Parameters<typeof staging.get>) => {
          events.push('fetch');
          return staging.get(...args);
        },
      }),
    };
    return { events, release };
  }

  const payloads = new Map<number, Buffer>();
  /** Six staged batches; batch 2 carries a tag, so it ends group 1 (1-2), and group 2 is 3-6. */
  async function sixBatches(w: World): Promise<unknown[]> {
    const bodies: unknown[] = [];
    for (let seq = 1; seq <= 6; seq++) {
      const payload = randomBytes(16 * KiB);
      payloads.set(seq, payload);
      const rec: BatchRecord = { kind: 'data', offset: seq * 16 * KiB, data: payload };
      bodies.push(await message(w, batch('disk0', seq, [rec], seq === 2 ? { consistency: { kind: 'crash-consistent', tagId: 1 } } : {})));
    }
    return bodies;
  }

  it('writes group 2 only after group 1 is recorded, from the disk row group 1 stored (no conflict retry)', async () => {
    const w = await world();
    const bodies = await sixBatches(w);
    const { events, release } = traced(w);
    const done = applyBatchMessages(w.deps, bodies);
    // while group 1's write waits, batches 3 and 4 are prepared, so the prefetch (4 ahead) moves on to 5 and 6
    const deadline = Date.now() + 5000;
    while (events.filter((e) => e === 'fetch').length < 6 && Date.now() < deadline) await new Promise((r) => setImmediate(r));
    expect(events.filter((e) => e === 'fetch').length).toBe(6);
    expect(events).not.toContain('write 2');
    release();
    const outcomes = await done;
    expect(outcomes.map((o) => o.kind)).toEqual(['applied', 'applied', 'applied', 'applied', 'applied', 'applied']);
    expect(events.filter((e) => e !== 'fetch')).toEqual(['write 1', 'record 2', 'write 2', 'record 6']);
    expect((await getVm(w.deps, 'vm1')).disks[0]?.appliedSequence).toBe(6);
    const disk = await w.disks.read({ vmId: 'vm1', diskId: 'disk0' }, SIZE, 0, SIZE);
    for (let seq = 1; seq <= 6; seq++) expect(disk.subarray(seq * 16 * KiB, (seq + 1) * 16 * KiB).equals(payloads.get(seq)!)).toBe(true);
  });

  it('a failed write of group 1 fails the receive and group 2 is never written', async () => {
    const w = await world();
    const bodies = await sixBatches(w);
    const { events, release } = traced(w);
    (w as World & { failFirst?: boolean }).failFirst = true;
    const done = applyBatchMessages(w.deps, bodies);
    release();
    await expect(done).rejects.toThrow('storage went away');
    expect(events.filter((e) => e !== 'fetch')).toEqual(['write 1']);
    expect((await getVm(w.deps, 'vm1')).disks[0]?.appliedSequence).toBe(0);
  });
});

describe('monitorHealth', () => {
  it('turns a stalled VM to warning, then critical, recording each change once', async () => {
    const w = await world('vm1', ['disk0']);
    await applyBatchMessage(w.deps, await message(w, batch('disk0', 1, [], { initialReplicationComplete: true, capturedAt: w.clock.now })));
    expect((await monitorHealth(w.deps)).map((c) => c.to)).toEqual(['healthy']);
    expect(await monitorHealth(w.deps)).toEqual([]);
    w.clock.now += 16 * 60_000;
    const warn = await monitorHealth(w.deps);
    expect(warn).toMatchObject([{ vmId: 'vm1', from: 'healthy', to: 'warning' }]);
    expect(warn[0]?.rpoSeconds).toBe(960);
    w.clock.now += 15 * 60_000;
    expect((await monitorHealth(w.deps)).map((c) => c.to)).toEqual(['critical']);
  });
});

describe('cleanStaging', () => {
  it('deletes applied, orphaned and foreign blobs, keeps pending and young ones', async () => {
    const w = await world('vm1', ['disk0']);
    const applied = await message(w, batch('disk0', 1, [big(0, 64 * KiB)]));
    await applyBatchMessage(w.deps, applied);
    await message(w, batch('disk0', 1, [big(0, 64 * KiB)])); // a duplicate never sent: orphan
    await message(w, batch('disk0', 2, [big(0, 64 * KiB)])); // pending: its message is on the way
    await w.staging.put('not-ferry', Buffer.alloc(10));
    expect(w.staging.blobs.size).toBe(3);
    expect(await cleanStaging(w.deps)).toEqual({ examined: 3, deleted: 0 }); // all younger than the grace period
    w.clock.now += 2 * 3600_000;
    expect(await cleanStaging(w.deps)).toEqual({ examined: 3, deleted: 2 });
    expect([...w.staging.blobs.keys()]).toEqual([expect.stringMatching(/^vm1\/disk0\/0000000001-00000000000000000002-/)]);
  });
});
