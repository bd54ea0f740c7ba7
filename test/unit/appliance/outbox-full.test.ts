/**
 * The outbox on a full cache disk (ENOSPC): producers pause and it says so once, the agent's
 * checkpoint (`sync`) waits instead of failing, sends go on without needing a new write
 * (the reservation uses the ballast), it says when it resumes, and every batch leaves once, in
 * order, byte for byte. The cache is a real tmpfs when this machine lets us mount one; without
 * that right (or with FERRY_TEST_NO_MOUNT=1), an injected writer fails with ENOSPC over the same
 * capacity.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sealBatch } from '../../../shared/codec/batch';
import { writeFileAtomic } from '../../../local/appliance/files';
import { Outbox, writeFileReplacing, type CloudTransport, type OutboxOptions } from '../../../local/appliance/outbox';
import type { Logger } from '../../../local/log';
import { waitFor } from '../../support/wait';

const root = mkdtempSync(join(tmpdir(), 'ferry-outbox-full-'));
const CAPACITY = 512 * 1024;
let mounted: string[] = [];
const key = Buffer.alloc(32, 5);

/** A directory on a file system of CAPACITY bytes: a tmpfs, or (no mount right) an injected one. */
function smallFs(name: string): { dir: string; writeFile?: OutboxOptions['writeFile']; fill(): void; unfill(): void } {
  const dir = join(root, name);
  mkdirSync(dir, { recursive: true });
  const filler = join(dir, 'filler');
  try {
    if (process.env.FERRY_TEST_NO_MOUNT) throw new Error('told not to mount');
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${CAPACITY}`, 'tmpfs', dir], { stdio: 'pipe' });
    mounted.push(dir);
    return {
      dir,
      fill() {
        // every free block taken
        const fd = openSync(filler, 'w');
        const chunk = Buffer.alloc(4096, 1);
        try {
          for (;;) writeSync(fd, chunk);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
        } finally {
          closeSync(fd);
        }
      },
      unfill: () => rmSync(filler, { force: true }),
    };
  } catch {
    // the injected file system: the bytes of the files under `dir`, in 4 KiB blocks
    let capacity = CAPACITY;
    const used = (d: string): number =>
      readdirSync(d, { withFileTypes: true }).reduce((n, e) => n + (e.isDirectory() ? used(join(d, e.name)) : Math.ceil(statSync(join(d, e.name)).size / 4096) * 4096), 0);
    return {
      dir,
      writeFile(file, data, fsync) {
        const size = Math.ceil(Buffer.byteLength(data) / 4096) * 4096;
        if (used(dir) + size > capacity) throw Object.assign(new Error(`ENOSPC: no space left on device, write '${file}.tmp'`), { code: 'ENOSPC', path: `${file}.tmp` });
        writeFileReplacing(file, data, fsync);
      },
      fill: () => void (capacity = used(dir)),
      unfill: () => void (capacity = CAPACITY),
    };
  }
}

beforeAll(() => {
  mounted = [];
});
afterAll(() => {
  for (const d of mounted) execFileSync('umount', ['-l', d], { stdio: 'pipe' });
  rmSync(root, { recursive: true, force: true });
});

function sealed(seq: number, bytes: number): Buffer {
  return sealBatch({ vmId: 'vm', diskId: 'disk0', epoch: 1, sequence: seq, capturedAt: 1, diskSizeBytes: 1024 * 1024, records: [{ kind: 'data', offset: 0, data: randomBytes(bytes) }] }, key, 1, randomBytes, { codec: 'none' });
}

/** Keeps what it sends: every message's inline payload, in order. */
class GatedTransport implements CloudTransport {
  sent: { seq: number; bytes: Buffer }[] = [];
  down = true;
  async stage(): Promise<void> {
    throw new Error('these batches are all inline');
  }
  async send(m: { body: unknown }): Promise<void> {
    if (this.down) throw new Error('service bus down');
    const body = m.body as { seq: number; payload: { inline: string } };
    this.sent.push({ seq: body.seq, bytes: Buffer.from(body.payload.inline, 'base64') });
  }
  async close(): Promise<void> {}
}

function lineLog(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const at = (_o: unknown, msg: string) => void lines.push(msg);
  return { log: { info: at, warn: at, error: at, debug: at } as unknown as Logger, lines };
}

describe('Outbox on a full cache disk', () => {
  it('pauses producers and the checkpoint, says so once, resumes once the cloud drains it, loses nothing', async () => {
    const fs = smallFs('spill');
    const t = new GatedTransport();
    const { log, lines } = lineLog();
    const box = new Outbox(join(fs.dir, 'vm'), t, { threads: 2, maxBytes: 1e9, memoryBudgetBytes: 64 * 1024, log, ...(fs.writeFile ? { writeFile: fs.writeFile } : {}) });
    const batches: Buffer[] = [];
    // an agent: waits for room, then hands over a 48 KiB batch, until the cache holds it back
    for (let seq = 1; seq <= 40; seq++) {
      let room = false;
      const wait = box.waitForRoom().then(() => (room = true));
      await new Promise((r) => setImmediate(r));
      if (!room) {
        expect(box.paused).toBe(true);
        void wait;
        break;
      }
      const b = sealed(seq, 48 * 1024);
      batches.push(b);
      box.put('disk0', 1, seq, b);
    }
    expect(box.paused).toBe(true);
    expect(batches.length).toBeGreaterThan(5);
    expect(batches.length).toBeLessThan(40);
    const paused = lines.filter((l) => /cache .*full.*paus/i.test(l));
    expect(paused).toHaveLength(1);
    expect(paused[0]).toMatch(/ENOSPC/);
    expect(paused[0]).toContain(join(fs.dir, 'vm'));
    // the checkpoint cannot make everything durable: it waits (the agent with it) instead of failing
    let synced = false;
    const sync = box.sync().then(() => (synced = true));
    await new Promise((r) => setTimeout(r, 100));
    expect(synced).toBe(false);
    expect(box.stats.pendingBatches).toBe(batches.length); // nothing dropped
    t.down = false;
    await sync;
    await box.idle();
    await waitFor(() => !box.paused, 'the outbox to resume');
    expect(t.sent.map((s) => s.seq)).toEqual(batches.map((_, i) => i + 1));
    t.sent.forEach((s, i) => expect(s.bytes.equals(batches[i]!)).toBe(true));
    expect(lines.filter((l) => /cache .*full.*paus/i.test(l))).toHaveLength(1);
    expect(lines.filter((l) => /resum/i.test(l))).toHaveLength(1);
    expect(readdirSync(join(fs.dir, 'vm', 'disk0'))).toEqual([]);
    box.close();
  });

  it('drains a completely full disk: sending needs no space (the reservation takes the ballast)', async () => {
    const fs = smallFs('drain');
    const t = new GatedTransport();
    const { log, lines } = lineLog();
    const box = new Outbox(join(fs.dir, 'vm'), t, { threads: 2, maxBytes: 1e9, log, ...(fs.writeFile ? { writeFile: fs.writeFile } : {}) });
    const batches: Buffer[] = [];
    // more than one reservation's worth (16), all in memory; then not one free block
    for (let seq = 1; seq <= 40; seq++) {
      batches.push(sealed(seq, 1024));
      box.put('disk0', 1, seq, batches[seq - 1]!);
    }
    await waitFor(() => box.stats.retries > 0, 'a failed send');
    fs.fill();
    t.down = false;
    await box.idle();
    expect(t.sent.map((s) => s.seq)).toEqual(batches.map((_, i) => i + 1));
    t.sent.forEach((s, i) => expect(s.bytes.equals(batches[i]!)).toBe(true));
    // the reservation took the ballast: the disk is full, producers pause, and it said so
    expect(existsSync(join(fs.dir, 'vm', 'ballast'))).toBe(false);
    expect(box.paused).toBe(true);
    expect(lines.filter((l) => /cache .*full.*paus/i.test(l))).toHaveLength(1);
    // space freed outside: noticed while the producer waits; the ballast is back
    fs.unfill();
    await box.waitForRoom();
    expect(lines.filter((l) => /resum/i.test(l))).toHaveLength(1);
    expect(existsSync(join(fs.dir, 'vm', 'ballast'))).toBe(true);
    box.put('disk0', 1, 41, sealed(41, 1024));
    await box.sync();
    await box.idle();
    expect(t.sent.at(-1)!.seq).toBe(41);
    box.close();
  });

  it('a state file that does not fit leaves no partial temp file behind (it would keep the disk full)', () => {
    const fs = smallFs('state');
    const file = join(fs.dir, 'state.json');
    writeFileAtomic(file, 'old');
    const big = Buffer.alloc(CAPACITY * 2, 7);
    const write = fs.writeFile ? () => fs.writeFile!(file, big, true) : () => writeFileAtomic(file, big);
    expect(write).toThrow(/ENOSPC/);
    expect(readdirSync(fs.dir).sort()).toEqual(['state.json']);
  });

  it('at the --cache-max-gb bound: pauses and says why, resumes below 3/4 of it, says so', async () => {
    const t = new GatedTransport();
    const { log, lines } = lineLog();
    const box = new Outbox(join(root, 'bound'), t, { threads: 1, maxBytes: 8 * 1024, log });
    for (let seq = 1; seq <= 3; seq++) box.put('disk0', 1, seq, sealed(seq, 3 * 1024));
    let roomy = false;
    const wait = box.waitForRoom().then(() => (roomy = true));
    await new Promise((r) => setTimeout(r, 50));
    expect(roomy).toBe(false);
    expect(lines.filter((l) => /cache .*full.*paus/i.test(l) && /--cache-max-gb/.test(l))).toHaveLength(1);
    t.down = false;
    await wait;
    await box.idle();
    expect(t.sent.map((s) => s.seq)).toEqual([1, 2, 3]);
    expect(lines.filter((l) => /resum/i.test(l))).toHaveLength(1);
    box.close();
  });
});
