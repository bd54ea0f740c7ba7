/**
 * The store contract, run against both implementations where it applies, plus what only the
 * SQLite store promises: reopening finds what was committed, and segment files of large bodies
 * disappear once nothing refers to them.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { MemoryStore, SqliteStore, type MessageStore, type StoredMessage } from '../../../local/servicebus/store';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'ferry-sb-store-'));
  dirs.push(d);
  return d;
}

function message(seq: number, size: number): StoredMessage {
  return {
    seq, entity: 'q', messageId: `m${seq}`, sessionId: null, enqueuedAt: 1, visibleAt: 1, expiresAt: null, state: 0,
    deliveryCount: 0, deadLetterSource: null, ttlMs: null, priority: null, durable: null,
    annotations: Buffer.alloc(0), annCount: 0, size,
  };
}

const committed = (store: MessageStore): Promise<void> => new Promise((r) => store.afterCommit(r));

describe.each([
  ['MemoryStore', (): MessageStore => new MemoryStore()],
  ['SqliteStore', (): MessageStore => new SqliteStore(tempDir())],
])('%s', (_name, open) => {
  it('returns bodies before and after commit, small and large, and forgets deleted ones', async () => {
    const store = open();
    store.load();
    const small = Buffer.alloc(100, 1);
    const large = Buffer.alloc(300 * 1024, 2);
    store.insert(message(1, small.length), small);
    store.insert(message(2, large.length), large);
    expect(store.readPayload(2)?.equals(large)).toBe(true);
    await committed(store);
    expect(store.readPayload(1)?.equals(small)).toBe(true);
    expect(store.readPayload(2)?.equals(large)).toBe(true);
    const replaced = Buffer.alloc(200 * 1024, 3);
    store.update(2, { entity: 'q/$deadletterqueue', payload: replaced });
    store.delete(1);
    await committed(store);
    expect(store.readPayload(1)).toBeUndefined();
    expect(store.readPayload(2)?.equals(replaced)).toBe(true);
    store.close();
  });
});

describe('SqliteStore', () => {
  it('finds committed messages, updates and session state after reopening', async () => {
    const dir = tempDir();
    const a = new SqliteStore(dir);
    a.load();
    a.insert(message(1, 3), Buffer.from('one'));
    a.insert(message(2, 200 * 1024), Buffer.alloc(200 * 1024, 9));
    a.insert(message(3, 5), Buffer.from('three'));
    a.setSessionState('q', 's', Buffer.from('st'));
    await committed(a);
    a.delete(1);
    a.update(3, { deliveryCount: 4, state: 1 });
    await committed(a);
    a.close();

    const b = new SqliteStore(dir);
    const loaded = b.load();
    expect(loaded.messages.map((m) => [m.seq, m.deliveryCount, m.state])).toEqual([[2, 0, 0], [3, 4, 1]]);
    expect(loaded.maxSeq).toBe(3);
    expect(loaded.sessionStates).toEqual([{ entity: 'q', sessionId: 's', state: Buffer.from('st') }]);
    expect(b.readPayload(2)?.equals(Buffer.alloc(200 * 1024, 9))).toBe(true);
    b.close();
  });

  it('keeps the highest sequence number when every message is gone', async () => {
    const dir = tempDir();
    const a = new SqliteStore(dir);
    a.load();
    a.insert(message(41, 1), Buffer.from('x'));
    await committed(a);
    a.delete(41);
    await committed(a);
    a.close();
    const b = new SqliteStore(dir);
    expect(b.load().maxSeq).toBe(41);
    b.close();
  });

  it('deletes segment files of large bodies once nothing refers to them', async () => {
    const dir = tempDir();
    const store = new SqliteStore(dir);
    store.load();
    const body = Buffer.alloc(1024 * 1024, 7);
    // 70 MiB fill the first 64 MiB segment; the next write starts a second one.
    for (let i = 1; i <= 70; i++) store.insert(message(i, body.length), body);
    await committed(store);
    store.insert(message(71, body.length), body);
    await committed(store);
    expect(readdirSync(join(dir, 'segments')).length).toBe(2);
    for (let i = 1; i <= 71; i++) store.delete(i);
    await committed(store);
    // The first segment is gone; the active one stays for the next appends.
    expect(readdirSync(join(dir, 'segments')).length).toBe(1);
    store.close();
  });
});
