/**
 * The mobility agent against an in-memory sink that applies batches to a model disk: the
 * initial copy, zero extents, fingerprint-based rescans, resuming an interrupted initial copy,
 * sequence numbers without gaps, and the pass's tag on every disk.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { MobilityAgent } from '../../../local/appliance/agent';
import type { PlainBatch } from '../../../local/appliance/batching';
import type { OutboxStats } from '../../../local/appliance/outbox';
import type { BatchSink } from '../../../local/appliance/sink';
import { loadVmState, saveVmState } from '../../../local/appliance/state';
import { TrackedDisk } from '../../../local/appliance/tracked-disk';
import { rng } from '../../support/batches';

const MiB = 1024 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'ferry-agent-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

class ModelSink implements BatchSink {
  models = new Map<string, Buffer>();
  accepted = new Map<string, number>();
  batches: PlainBatch['meta'][] = [];
  failAt?: number;
  dataBytes = 0;

  async nextSequence(_vm: string, diskId: string): Promise<number> {
    return (this.accepted.get(diskId) ?? 0) + 1;
  }
  async submit(plain: PlainBatch, release: () => void): Promise<void> {
    const { diskId, sequence } = plain.meta;
    if (this.failAt !== undefined && this.batches.length >= this.failAt) {
      release();
      throw new Error('sink down');
    }
    expect(sequence).toBe((this.accepted.get(diskId) ?? 0) + 1);
    let model = this.models.get(diskId);
    if (!model) this.models.set(diskId, (model = Buffer.alloc(plain.meta.diskSizeBytes)));
    let pos = 0;
    for (const r of plain.records) {
      if (r.kind === 'zero') model.fill(0, r.offset, r.offset + r.length);
      else {
        plain.data.copy(model, r.offset, pos, pos + r.length);
        pos += r.length;
        this.dataBytes += r.length;
      }
    }
    release();
    this.accepted.set(diskId, sequence);
    this.batches.push(plain.meta);
  }
  async sync(): Promise<void> {}
  async stats(): Promise<OutboxStats> {
    return { sentBatches: 0, sentBytes: 0, spooledBytes: 0, pendingBatches: 0, retries: 0, offline: false };
  }
}

function diskImage(path: string, size: number, seed: number): Buffer {
  const next = rng(seed);
  const img = Buffer.alloc(size);
  for (let off = 0; off < size; off += 4 * MiB) {
    const kind = next();
    const end = Math.min(size, off + 4 * MiB);
    if (kind < 0.4) continue; // zero extent
    for (let i = off; i < end; i += 4) img.writeUInt32LE(kind < 0.7 ? 0x61626364 + (i % 7) : Math.floor(next() * 0xffffffff), i);
  }
  writeFileSync(path, img);
  return img;
}

function enableLocally(stateDir: string, vmId: string, disks: { path: string; size: number }[]): void {
  saveVmState(stateDir, {
    version: 1,
    vmId,
    apiUrl: 'http://127.0.0.1:7071',
    keyId: 1,
    dataKey: Buffer.alloc(32, 1).toString('base64'),
    agentToken: 't',
    enabledAt: new Date().toISOString(),
    nextTagId: 1,
    disks: disks.map((d, i) => ({ diskId: `disk${i}`, path: d.path, sizeBytes: d.size, epoch: 1, initialCoveredBytes: 0, initialComplete: false, journal: {} })),
  });
}

describe('MobilityAgent', () => {
  it('copies two disks, tags both with one tagId, and a rescan after changes sends only the changed blocks', async () => {
    const stateDir = join(dir, 's1');
    const a = join(dir, 'a.img');
    const b = join(dir, 'b.img');
    const imgA = diskImage(a, 40 * MiB + 512 * 3, 1);
    const imgB = diskImage(b, 12 * MiB, 2);
    enableLocally(stateDir, 'vm1', [{ path: a, size: imgA.length }, { path: b, size: imgB.length }]);
    const sink = new ModelSink();
    const agent = new MobilityAgent(stateDir, 'vm1', sink);
    const r = await agent.pass({ tag: 'crash-consistent' });
    expect(sink.models.get('disk0')!.equals(imgA)).toBe(true);
    expect(sink.models.get('disk1')!.equals(imgB)).toBe(true);
    for (const diskId of ['disk0', 'disk1']) {
      const mine = sink.batches.filter((m) => m.diskId === diskId);
      const last = mine[mine.length - 1]!;
      expect(last.consistency).toEqual({ kind: 'crash-consistent', tagId: 1 });
      expect(last.initialReplicationComplete).toBe(true);
      expect(mine.slice(0, -1).every((m) => !m.initialReplicationComplete && !m.consistency)).toBe(true);
      expect(mine.map((m) => m.initialCoveredBytes)).toEqual([...mine.map((m) => m.initialCoveredBytes!)].sort((x, y) => x - y));
    }
    expect(r.disks[0]!.dataBytes + r.disks[0]!.zeroBytes).toBe(imgA.length);
    agent.close();

    // change 3 bytes in two places and zero one 64 KiB block, on disk0 only
    const changed = Buffer.from(imgA);
    changed[5 * MiB + 10] = (changed[5 * MiB + 10]! + 1) % 256;
    changed[33 * MiB] = (changed[33 * MiB]! + 1) % 256;
    changed.fill(0, 20 * MiB, 20 * MiB + 65536);
    writeFileSync(a, changed);
    const sink2 = sink;
    sink2.dataBytes = 0;
    const again = new MobilityAgent(stateDir, 'vm1', sink2);
    const r2 = await again.pass({ tag: 'crash-consistent' });
    again.close();
    expect(sink.models.get('disk0')!.equals(changed)).toBe(true);
    expect(r2.tagId).toBe(2);
    const zeroBlockWasData = !imgA.subarray(20 * MiB, 20 * MiB + 65536).equals(Buffer.alloc(65536));
    expect(r2.disks[0]!.zeroBytes).toBe(zeroBlockWasData ? 65536 : 0);
    expect(r2.disks[0]!.dataBytes).toBeLessThanOrEqual(2 * 65536);
    expect(r2.disks[1]).toMatchObject({ dataBytes: 0, zeroBytes: 0, batches: 1, records: 0 });
  });

  it('resumes an interrupted initial copy where it stopped, without a gap in sequence numbers', async () => {
    const stateDir = join(dir, 's2');
    const a = join(dir, 'c.img');
    const img = diskImage(a, 64 * MiB, 3);
    for (let off = 0; off < img.length; off += 4 * MiB) img.writeUInt32LE(off + 1, off); // no zero extents: many batches
    writeFileSync(a, img);
    enableLocally(stateDir, 'vm2', [{ path: a, size: img.length }]);
    const sink = new ModelSink();
    sink.failAt = 2;
    const agent = new MobilityAgent(stateDir, 'vm2', sink, { checkpointMs: 0 });
    await expect(agent.pass({ tag: 'crash-consistent' })).rejects.toThrow('sink down');
    agent.close();
    const covered = loadVmState(stateDir, 'vm2').disks[0]!.initialCoveredBytes;
    expect(covered).toBeGreaterThan(0);
    expect(covered).toBeLessThan(img.length);
    delete sink.failAt;
    const resumed = new MobilityAgent(stateDir, 'vm2', sink, { checkpointMs: 0 });
    const r = await resumed.pass({ tag: 'crash-consistent' });
    resumed.close();
    expect(r.disks[0]!.firstSequence).toBe(3);
    expect(r.disks[0]!.scannedBytes).toBe(img.length - covered);
    expect(sink.models.get('disk0')!.equals(img)).toBe(true);
    expect(loadVmState(stateDir, 'vm2').disks[0]!.initialComplete).toBe(true);
  });
  it('TrackedDisk writes made before the initial copy reaches their blocks: the copy still sends those blocks whole', async () => {
    // Found by the fault suite: the journal path refreshed the fingerprint of each 64 KiB block
    // it touched, so the initial scan skipped the rest of those blocks, which never reached the cloud.
    const stateDir = join(dir, 's-journal-before-copy');
    const path = join(dir, 'jb.img');
    const img = diskImage(path, 8 * MiB, 9);
    img.fill(0x5a, 0, 4 * MiB); // data in every block of the first extent
    writeFileSync(path, img);
    enableLocally(stateDir, 'vmj', [{ path, size: img.length }]);
    const disk = TrackedDisk.open(path, stateDir);
    for (const off of [4096, 300 * 1024, 6 * MiB + 8192]) {
      const data = Buffer.alloc(4096, 0xc3);
      disk.write(off, data);
      data.copy(img, off);
    }
    disk.close();
    const sink = new ModelSink();
    const agent = new MobilityAgent(stateDir, 'vmj', sink);
    await agent.pass({ tag: 'crash-consistent' });
    agent.close();
    expect(sink.models.get('disk0')!.equals(img)).toBe(true);
  });

  it('a rescan after TrackedDisk writes and a plain write to the same 64 KiB blocks sends both (the journal does not vouch for the rest of a block)', async () => {
    // Found by CI under load: churn through TrackedDisk, then a plain write into blocks the churn
    // had touched, then `replicate --once` (a rescan): the journal path refreshed the blocks'
    // fingerprints from their whole content, so the scan skipped the plain write.
    const stateDir = join(dir, 's-mixed');
    const path = join(dir, 'mixed.img');
    const img = diskImage(path, 8 * MiB, 31);
    enableLocally(stateDir, 'vmm', [{ path, size: img.length }]);
    const sink = new ModelSink();
    const first = new MobilityAgent(stateDir, 'vmm', sink);
    await first.pass({ tag: 'crash-consistent' });
    first.close();
    const disk = TrackedDisk.open(path, stateDir);
    for (const off of [2 * MiB, 2 * MiB + 65536 + 512, 5 * MiB + 4096]) {
      const data = Buffer.alloc(4096, 0xa1);
      disk.write(off, data);
      data.copy(img, off);
    }
    disk.close();
    // plain writes (not through TrackedDisk) into the same blocks, beside the tracked sectors
    img.fill(0x77, 2 * MiB + 8192, 2 * MiB + 12288);
    img.fill(0x78, 5 * MiB + 32768, 5 * MiB + 65536);
    writeFileSync(path, img);
    const agent = new MobilityAgent(stateDir, 'vmm', sink);
    const r = await agent.pass({ rescan: true, tag: 'crash-consistent' });
    expect(sink.models.get('disk0')!.equals(img)).toBe(true);
    // the three touched blocks, whole, after the journal's three 4 KiB writes (a rescan sends
    // the journal too: see the next test)
    expect(r.disks[0]!.dataBytes).toBe(3 * 65536 + 3 * 4096);
    // and nothing is sent twice afterwards: the journal is consumed, the fingerprints are right
    const again = await agent.pass({ rescan: true, tag: 'crash-consistent' });
    agent.close();
    expect(again.disks[0]!.dataBytes).toBe(0);
  });

  it('a TrackedDisk write made while a delta pass runs, into a block that pass refreshes, reaches the cloud even if the next pass is a rescan', async () => {
    // Found by the process-server-kill fault test (one 4 KiB write lost): a delta pass reads the
    // journal, a write lands in a touched block before the pass reads that block, and the
    // block's fingerprint is refreshed from content that holds the write, though only the
    // journal's older sectors were sent. The write's record stays for the next pass; when that
    // pass is a rescan (after going back to a checkpoint, or `replicate --once`), the block
    // matches its fingerprint, so only the journal can send the write.
    const stateDir = join(dir, 's-race');
    const path = join(dir, 'race.img');
    const img = diskImage(path, 24 * MiB, 41);
    enableLocally(stateDir, 'vmr', [{ path, size: img.length }]);
    let during: (() => void) | undefined;
    class HookedSink extends ModelSink {
      override async submit(plain: PlainBatch, release: () => void): Promise<void> {
        const hook = during;
        during = undefined;
        hook?.(); // runs when the pass hands over its first full batch, before it reads the later blocks
        return super.submit(plain, release);
      }
    }
    const sink = new HookedSink();
    const first = new MobilityAgent(stateDir, 'vmr', sink);
    await first.pass({ tag: 'crash-consistent' });
    first.close();
    expect(sink.models.get('disk0')!.equals(img)).toBe(true);

    const disk = TrackedDisk.open(path, stateDir);
    const write = (off: number, data: Buffer): void => {
      disk.write(off, data);
      data.copy(img, off);
    };
    // 17 MiB of journal first, so the pass fills a 16 MiB batch and hands it over mid-journal,
    write(0, Buffer.alloc(17 * MiB, 0x31));
    // then a 4 KiB write in the 64 KiB block at 20 MiB
    write(20 * MiB, Buffer.alloc(4096, 0x32));
    // and, while the pass runs, one more in that block, beside it
    during = () => write(20 * MiB + 32768, Buffer.alloc(4096, 0x33));
    const agent = new MobilityAgent(stateDir, 'vmr', sink);
    const delta = await agent.pass({ rescan: false, tag: 'crash-consistent' });
    expect(during).toBeUndefined(); // the write happened during the delta pass
    expect(delta.disks[0]!.dataBytes).toBe(17 * MiB + 4096); // the journal as read at its start
    agent.close();
    disk.close();

    // the next pass is a rescan from a new agent, as after going back to the checkpoint
    const again = new MobilityAgent(stateDir, 'vmr', sink);
    const r = await again.pass({ rescan: true, tag: 'crash-consistent' });
    again.close();
    const model = sink.models.get('disk0')!;
    expect(model.subarray(20 * MiB + 32768, 20 * MiB + 36864).equals(Buffer.alloc(4096, 0x33))).toBe(true);
    expect(model.equals(img)).toBe(true);
    expect(r.disks[0]!.dataBytes).toBe(4096); // the journal's one write; the scan finds every block as sent
  });

  it('a sink that releases a batch buffer as soon as it has copied it (the HTTPS client): two disks changing between passes stay exact', async () => {
    // Found by the fault suite (split roles): the end of a disk's pass released its last batch's
    // buffer to the pool a second time after the sink had released it, so two builders later
    // shared one buffer and one disk's changes went out in the other disk's batch.
    const stateDir = join(dir, 's-release');
    const paths = [join(dir, 'r0.img'), join(dir, 'r1.img')];
    const imgs = paths.map((p, i) => diskImage(p, 4 * MiB, 20 + i));
    enableLocally(stateDir, 'vmr', paths.map((path, i) => ({ path, size: imgs[i]!.length })));
    const sink = new ModelSink();
    const agent = new MobilityAgent(stateDir, 'vmr', sink);
    await agent.pass({ marker: true });
    const next = rng(77);
    for (let pass = 0; pass < 4; pass++) {
      for (const [i, path] of paths.entries()) {
        const disk = TrackedDisk.open(path, stateDir);
        for (let w = 0; w < 40; w++) {
          const off = Math.floor(next() * 1024) * 4096;
          const data = Buffer.alloc(4096, (i * 100 + pass * 10 + w) % 251 + 1);
          disk.write(off, data);
          data.copy(imgs[i]!, off);
        }
        disk.close();
      }
      await agent.pass({ marker: true });
      for (const [i] of paths.entries()) expect(sink.models.get(`disk${i}`)!.equals(imgs[i]!), `disk${i} after pass ${pass + 2}`).toBe(true);
    }
    agent.close();
  });
});
