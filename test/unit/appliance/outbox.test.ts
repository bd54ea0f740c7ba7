/**
 * The outbox (offline cache): each disk's messages leave in sequence order whatever order
 * batches are spooled or staged in; an unreachable cloud keeps them spooled and retried; a
 * restart resumes from the files; producers pause when the cache is full.
 */
import { randomBytes } from 'node:crypto';
import { cpSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { sealBatch } from '../../../shared/codec/batch';
import { Outbox, type CloudTransport } from '../../../local/appliance/outbox';
import { waitFor } from '../../support/wait';

const dir = mkdtempSync(join(tmpdir(), 'ferry-outbox-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const key = Buffer.alloc(32, 3);

function sealed(diskId: string, seq: number, bytes = 1024): Buffer {
  return sealBatch({ vmId: 'vm', diskId, epoch: 1, sequence: seq, capturedAt: 1, diskSizeBytes: 1024 * 1024, records: [{ kind: 'data', offset: 0, data: randomBytes(bytes) }] }, key, 1, randomBytes, { codec: 'none' });
}

class FakeTransport implements CloudTransport {
  sent: { sessionId: string; seq: number }[] = [];
  staged: string[] = [];
  down = false;
  async stage(_c: string, name: string): Promise<void> {
    await new Promise((r) => setTimeout(r, Math.random() * 5));
    if (this.down) throw new Error('storage down');
    this.staged.push(name);
  }
  async send(m: { body: unknown; sessionId: string }): Promise<void> {
    if (this.down) throw new Error('service bus down');
    this.sent.push({ sessionId: m.sessionId, seq: (m.body as { seq: number }).seq });
  }
  async close(): Promise<void> {}
}

describe('Outbox', () => {
  it('sends each disk in sequence order though batches arrive out of order; staged ones too', async () => {
    const t = new FakeTransport();
    const box = new Outbox(join(dir, 'a'), t, { threads: 4, maxBytes: 1e9 });
    const order = [3, 1, 2, 5, 4, 6];
    for (const seq of order) {
      box.put('disk0', 1, seq, sealed('disk0', seq, seq % 2 ? 200 * 1024 : 1024)); // odd ones are staged (> 96 KiB)
      box.put('disk1', 1, seq, sealed('disk1', seq));
    }
    await box.idle();
    for (const disk of ['disk0', 'disk1']) expect(t.sent.filter((s) => s.sessionId === `vm/${disk}`).map((s) => s.seq)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(t.staged).toHaveLength(3);
    expect(existsSync(join(dir, 'a', 'disk0'))).toBe(false); // never needed the disk
    expect(box.acceptedThrough('disk0', 1)).toBe(6);
    box.close();
  });

  it('holds back everything after a missing sequence', async () => {
    const t = new FakeTransport();
    const box = new Outbox(join(dir, 'b'), t, { threads: 2, maxBytes: 1e9 });
    box.put('disk0', 1, 1, sealed('disk0', 1));
    box.put('disk0', 1, 3, sealed('disk0', 3));
    await waitFor(() => t.sent.length === 1, 'seq 1 sent');
    expect(box.acceptedThrough('disk0', 1)).toBe(1);
    box.put('disk0', 1, 2, sealed('disk0', 2));
    await box.idle();
    expect(t.sent.map((s) => s.seq)).toEqual([1, 2, 3]);
    box.close();
  });

  it('keeps batches in the cache while the cloud is down, resumes after a restart, and drains in order', async () => {
    const t = new FakeTransport();
    t.down = true;
    const path = join(dir, 'c');
    const makeMarker = (diskId: string, _e: number, seq: number) => sealBatch({ vmId: 'vm', diskId, epoch: 1, sequence: seq, capturedAt: 1, diskSizeBytes: 1024 * 1024, records: [] }, key, 1, randomBytes);
    const box = new Outbox(path, t, { threads: 2, maxBytes: 1e9, makeMarker });
    for (let seq = 1; seq <= 5; seq++) box.put('disk0', 1, seq, sealed('disk0', seq, seq === 2 ? 200 * 1024 : 1024));
    await waitFor(() => box.stats.retries > 0, 'a failed attempt');
    expect(box.stats.offline).toBe(true);
    expect(box.acceptedThrough('disk0', 1)).toBe(5);
    await box.sync(); // what the agent's checkpoint does: everything handed over is now on disk
    // a crash now: what is on disk at this moment is all the next start gets
    const crashed = join(dir, 'c-crashed');
    cpSync(path, crashed, { recursive: true });
    box.close();
    expect(readdirSync(join(crashed, 'disk0'))).toHaveLength(5);

    t.down = false;
    const again = new Outbox(crashed, t, { threads: 2, maxBytes: 1e9, makeMarker });
    // sequence 1 was about to be sent when the cloud went away: 1..16 are reserved, so 6..16
    // may have left too and are re-sent as empty markers; the agent continues at 17
    expect(again.acceptedThrough('disk0', 1)).toBe(16);
    await again.idle();
    expect(t.sent.map((s) => s.seq)).toEqual(Array.from({ length: 16 }, (_, i) => i + 1));
    again.close();
    const third = new Outbox(crashed, t, { threads: 2, maxBytes: 1e9, makeMarker });
    expect(third.acceptedThrough('disk0', 1)).toBe(16); // from sent.json once the files are gone
    third.close();
  });

  it('after a clean stop, the next start sends what was left, with no markers', async () => {
    const t = new FakeTransport();
    t.down = true;
    const path = join(dir, 'f');
    const box = new Outbox(path, t, { threads: 2, maxBytes: 1e9 });
    for (let seq = 1; seq <= 3; seq++) box.put('disk0', 1, seq, sealed('disk0', seq));
    await waitFor(() => box.stats.retries > 0, 'a failed attempt');
    box.close();
    t.down = false;
    const again = new Outbox(path, t, { threads: 2, maxBytes: 1e9 }); // no makeMarker: none may be needed
    expect(again.acceptedThrough('disk0', 1)).toBe(3);
    await again.idle();
    expect(t.sent.map((s) => s.seq)).toEqual([1, 2, 3]);
    again.close();
  });

  it('while the cloud is away, spills to disk beyond its memory budget, newest first', async () => {
    const t = new FakeTransport();
    t.down = true;
    const path = join(dir, 'e');
    const box = new Outbox(path, t, { threads: 1, maxBytes: 1e9, memoryBudgetBytes: 5000 });
    box.put('disk0', 1, 1, sealed('disk0', 1, 1024));
    await waitFor(() => box.stats.offline, 'the outbox to notice the cloud is down');
    for (let seq = 2; seq <= 6; seq++) box.put('disk0', 1, seq, sealed('disk0', seq, 1024));
    const files = readdirSync(join(path, 'disk0'));
    expect(files.length).toBeGreaterThanOrEqual(2);
    expect(files).toContain('0000000001-00000000000000000006.fryb');
    t.down = false;
    await box.idle();
    expect(t.sent.map((s) => s.seq)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(readdirSync(join(path, 'disk0'))).toEqual([]);
    box.close();
  });

  it('while the cloud is reachable but slow, makes producers wait at the memory budget instead of spilling to disk', async () => {
    const t = new FakeTransport();
    let open!: () => void;
    let gate = new Promise<void>((r) => (open = r));
    const send = t.send.bind(t);
    t.send = async (m) => {
      await gate;
      return send(m);
    };
    const path = join(dir, 'g');
    const box = new Outbox(path, t, { threads: 1, maxBytes: 1e9, memoryBudgetBytes: 5000 });
    for (let seq = 1; seq <= 6; seq++) box.put('disk0', 1, seq, sealed('disk0', seq, 1024));
    let roomy = false;
    const wait = box.waitForRoom().then(() => (roomy = true));
    await new Promise((r) => setTimeout(r, 50));
    expect(roomy).toBe(false); // 6 KiB in memory, budget 5000 bytes: the agent waits
    expect(existsSync(join(path, 'disk0'))).toBe(false); // nothing spilled meanwhile
    open();
    gate = Promise.resolve();
    await wait;
    expect(roomy).toBe(true);
    await box.idle();
    expect(t.sent.map((s) => s.seq)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(box.stats.offline).toBe(false);
    expect(existsSync(join(path, 'disk0'))).toBe(false); // never written
    box.close();
  });

  it('makes producers wait while the cache is full instead of dropping', async () => {
    const t = new FakeTransport();
    t.down = true;
    const box = new Outbox(join(dir, 'd'), t, { threads: 1, maxBytes: 3000 });
    box.put('disk0', 1, 1, sealed('disk0', 1, 2048));
    box.put('disk0', 1, 2, sealed('disk0', 2, 2048));
    let roomy = false;
    const wait = box.waitForRoom().then(() => (roomy = true));
    await new Promise((r) => setTimeout(r, 50));
    expect(roomy).toBe(false);
    t.down = false;
    await wait;
    expect(roomy).toBe(true);
    await box.idle();
    expect(t.sent.map((s) => s.seq)).toEqual([1, 2]);
    box.close();
  });
});
