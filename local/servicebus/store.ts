/**
 * Persistence of messages and session state.
 *
 * The broker acknowledges a send, a settlement or a dead-lettering only once the change is
 * durable: it queues the change here, then waits for `afterCommit`. Changes are grouped: all
 * those queued during one event-loop turn are written in one SQLite transaction (WAL journal,
 * synchronous=NORMAL: a committed transaction survives a kill of the process, which is the
 * failure the emulator promises to survive; not a power cut).
 *
 * Two implementations pass the same conformance suite: `SqliteStore` (a file, or `:memory:`)
 * and `MemoryStore` (no persistence; the benchmark's baseline).
 *
 * Message bodies (`payload`) live in the store, not in the broker's memory: the broker keeps
 * only a bounded cache of them.
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

/** One message's metadata as stored (everything but its payload). */
export interface StoredMessage {
  /** Sequence number; unique across the namespace, increasing in send order. */
  seq: number;
  /** Lower-cased entity path the message is in (`q`, `q/$deadletterqueue`, `t/subscriptions/s`). */
  entity: string;
  messageId: string;
  sessionId: string | null;
  enqueuedAt: number;
  /** When the message becomes available (its scheduled enqueue time; else its enqueue time). */
  visibleAt: number;
  /** Absolute expiry in ms since epoch; null: never. */
  expiresAt: number | null;
  /** 0 active, 1 deferred, 2 scheduled (until visibleAt). */
  state: number;
  /** Deliveries that ended without settlement (header.delivery_count of the next delivery). */
  deliveryCount: number;
  deadLetterSource: string | null;
  ttlMs: number | null;
  priority: number | null;
  durable: boolean | null;
  annotations: Buffer;
  annCount: number;
  /** Payload size in bytes (for quotas and the cache). */
  size: number;
}

export type MessageUpdate = Partial<
  Pick<StoredMessage, 'entity' | 'state' | 'deliveryCount' | 'visibleAt' | 'expiresAt' | 'deadLetterSource'>
> & { payload?: Buffer };

export interface SessionStateRow {
  entity: string;
  sessionId: string;
  state: Buffer;
}

export interface LoadedState {
  messages: StoredMessage[];
  sessionStates: SessionStateRow[];
  maxSeq: number;
}

export interface MessageStore {
  readonly persistent: boolean;
  load(): LoadedState;
  insert(m: StoredMessage, payload: Buffer): void;
  update(seq: number, u: MessageUpdate): void;
  delete(seq: number): void;
  setSessionState(entity: string, sessionId: string, state: Buffer | null): void;
  readPayload(seq: number): Buffer | undefined;
  /** Runs `cb` once every change queued so far is committed. */
  afterCommit(cb: () => void): void;
  /** Commits what is pending, then closes. */
  close(): void;
}

type Op =
  | { kind: 'insert'; m: StoredMessage; payload: Buffer }
  | { kind: 'update'; seq: number; u: MessageUpdate }
  | { kind: 'delete'; seq: number }
  | { kind: 'session'; entity: string; sessionId: string; state: Buffer | null };

/** Queues changes and commits them once per event-loop turn. */
abstract class BatchingStore implements MessageStore {
  abstract readonly persistent: boolean;
  private ops: Op[] = [];
  private callbacks: Array<() => void> = [];
  private scheduled = false;
  private closed = false;
  /** Payloads queued but not yet committed, so reads see them. */
  protected readonly pendingPayloads = new Map<number, Buffer>();

  abstract load(): LoadedState;
  abstract readPayload(seq: number): Buffer | undefined;
  protected abstract apply(ops: Op[]): void;
  protected abstract closeStore(): void;

  insert(m: StoredMessage, payload: Buffer): void {
    this.pendingPayloads.set(m.seq, payload);
    this.push({ kind: 'insert', m, payload });
  }
  update(seq: number, u: MessageUpdate): void {
    if (u.payload) this.pendingPayloads.set(seq, u.payload);
    this.push({ kind: 'update', seq, u });
  }
  delete(seq: number): void {
    this.pendingPayloads.delete(seq);
    this.push({ kind: 'delete', seq });
  }
  setSessionState(entity: string, sessionId: string, state: Buffer | null): void {
    this.push({ kind: 'session', entity, sessionId, state });
  }
  afterCommit(cb: () => void): void {
    this.callbacks.push(cb);
    this.schedule();
  }

  private push(op: Op): void {
    if (this.closed) throw new Error('The message store is closed.');
    this.ops.push(op);
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => this.flush());
  }

  /** Commits pending changes, then runs the callbacks waiting for them. */
  flush(): void {
    this.scheduled = false;
    const ops = this.ops;
    const callbacks = this.callbacks;
    this.ops = [];
    this.callbacks = [];
    if (ops.length > 0) this.apply(ops);
    this.pendingPayloads.clear();
    for (const cb of callbacks) cb();
  }

  close(): void {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    this.closeStore();
  }
}

/** Keeps everything in process memory: fast, and gone when the process ends. */
export class MemoryStore extends BatchingStore {
  readonly persistent = false;
  private readonly payloads = new Map<number, Buffer>();
  private readonly sessions = new Map<string, SessionStateRow>();

  load(): LoadedState {
    return { messages: [], sessionStates: [...this.sessions.values()], maxSeq: 0 };
  }
  readPayload(seq: number): Buffer | undefined {
    return this.pendingPayloads.get(seq) ?? this.payloads.get(seq);
  }
  protected apply(ops: Op[]): void {
    for (const op of ops) {
      if (op.kind === 'insert') this.payloads.set(op.m.seq, op.payload);
      else if (op.kind === 'update') {
        if (op.u.payload) this.payloads.set(op.seq, op.u.payload);
      } else if (op.kind === 'delete') this.payloads.delete(op.seq);
      else {
        const key = `${op.entity}\n${op.sessionId}`;
        if (op.state) this.sessions.set(key, { entity: op.entity, sessionId: op.sessionId, state: op.state });
        else this.sessions.delete(key);
      }
    }
  }
  protected closeStore(): void {
    this.payloads.clear();
  }
}

const COLUMNS: Record<keyof Omit<MessageUpdate, 'payload'>, string> = {
  entity: 'entity',
  state: 'state',
  deliveryCount: 'delivery_count',
  visibleAt: 'visible_at',
  expiresAt: 'expires_at',
  deadLetterSource: 'dl_source',
};

interface MessageRow {
  seq: number; entity: string; message_id: string; session_id: string | null; enqueued_at: number;
  visible_at: number; expires_at: number | null; state: number; delivery_count: number;
  dl_source: string | null; ttl: number | null; priority: number | null; durable: number | null;
  ann: Buffer | null; ann_count: number; size: number;
}

/** SQLite through better-sqlite3: `<dir>/servicebus.db`, or `:memory:`. */
export class SqliteStore extends BatchingStore {
  readonly persistent: boolean;
  private readonly db: Database.Database;
  private readonly stmts;
  private readonly updateStmts = new Map<string, Database.Statement>();
  private readonly applyTx: (ops: Op[]) => void;

  constructor(dir: string | ':memory:') {
    super();
    this.persistent = dir !== ':memory:';
    if (this.persistent) mkdirSync(dir, { recursive: true });
    this.db = new Database(this.persistent ? join(dir, 'servicebus.db') : ':memory:');
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS messages (
        seq INTEGER PRIMARY KEY,
        entity TEXT NOT NULL,
        message_id TEXT NOT NULL,
        session_id TEXT,
        enqueued_at INTEGER NOT NULL,
        visible_at INTEGER NOT NULL,
        expires_at INTEGER,
        state INTEGER NOT NULL,
        delivery_count INTEGER NOT NULL,
        dl_source TEXT,
        ttl INTEGER,
        priority INTEGER,
        durable INTEGER,
        ann BLOB,
        ann_count INTEGER NOT NULL,
        size INTEGER NOT NULL,
        payload BLOB NOT NULL
      );
      CREATE TABLE IF NOT EXISTS session_states (
        entity TEXT NOT NULL,
        session_id TEXT NOT NULL,
        state BLOB NOT NULL,
        PRIMARY KEY (entity, session_id)
      );
      CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    `);
    this.stmts = {
      insert: this.db.prepare(`INSERT INTO messages (seq, entity, message_id, session_id, enqueued_at, visible_at,
        expires_at, state, delivery_count, dl_source, ttl, priority, durable, ann, ann_count, size, payload)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
      delete: this.db.prepare('DELETE FROM messages WHERE seq = ?'),
      payload: this.db.prepare('SELECT payload FROM messages WHERE seq = ?').pluck(),
      setSession: this.db.prepare('INSERT OR REPLACE INTO session_states (entity, session_id, state) VALUES (?, ?, ?)'),
      deleteSession: this.db.prepare('DELETE FROM session_states WHERE entity = ? AND session_id = ?'),
      setMaxSeq: this.db.prepare("INSERT INTO meta (key, value) VALUES ('max_seq', ?) ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)"),
    };
    this.applyTx = this.db.transaction((ops: Op[]) => {
      let maxSeq = 0;
      for (const op of ops) {
        if (op.kind === 'insert') {
          const m = op.m;
          maxSeq = Math.max(maxSeq, m.seq);
          this.stmts.insert.run(m.seq, m.entity, m.messageId, m.sessionId, m.enqueuedAt, m.visibleAt, m.expiresAt,
            m.state, m.deliveryCount, m.deadLetterSource, m.ttlMs, m.priority,
            m.durable === null ? null : m.durable ? 1 : 0, m.annotations.length ? m.annotations : null, m.annCount, m.size, op.payload);
        } else if (op.kind === 'update') {
          this.runUpdate(op.seq, op.u);
        } else if (op.kind === 'delete') {
          this.stmts.delete.run(op.seq);
        } else if (op.state) {
          this.stmts.setSession.run(op.entity, op.sessionId, op.state);
        } else {
          this.stmts.deleteSession.run(op.entity, op.sessionId);
        }
      }
      // Sequence numbers never go back, even when every message has been completed.
      if (maxSeq > 0) this.stmts.setMaxSeq.run(maxSeq);
    });
  }

  private runUpdate(seq: number, u: MessageUpdate): void {
    const keys = (Object.keys(u) as Array<keyof MessageUpdate>).filter((k) => u[k] !== undefined).sort();
    if (keys.length === 0) return;
    const sig = keys.join(',');
    let stmt = this.updateStmts.get(sig);
    if (!stmt) {
      const sets = keys.map((k) => `${k === 'payload' ? 'payload' : COLUMNS[k]} = ?`);
      if (keys.includes('payload')) sets.push('size = length(payload)');
      stmt = this.db.prepare(`UPDATE messages SET ${sets.join(', ')} WHERE seq = ?`);
      this.updateStmts.set(sig, stmt);
    }
    stmt.run(...keys.map((k) => u[k] ?? null), seq);
  }

  load(): LoadedState {
    const rows = this.db
      .prepare(`SELECT seq, entity, message_id, session_id, enqueued_at, visible_at, expires_at, state,
        delivery_count, dl_source, ttl, priority, durable, ann, ann_count, size FROM messages ORDER BY seq`)
      .all() as MessageRow[];
    const messages = rows.map((r): StoredMessage => ({
      seq: r.seq, entity: r.entity, messageId: r.message_id, sessionId: r.session_id, enqueuedAt: r.enqueued_at,
      visibleAt: r.visible_at, expiresAt: r.expires_at, state: r.state, deliveryCount: r.delivery_count,
      deadLetterSource: r.dl_source, ttlMs: r.ttl, priority: r.priority, durable: r.durable === null ? null : r.durable === 1,
      annotations: r.ann ?? Buffer.alloc(0), annCount: r.ann_count, size: r.size,
    }));
    const sessionStates = (this.db.prepare('SELECT entity, session_id, state FROM session_states').all() as Array<{ entity: string; session_id: string; state: Buffer }>)
      .map((r) => ({ entity: r.entity, sessionId: r.session_id, state: r.state }));
    const meta = this.db.prepare("SELECT value FROM meta WHERE key = 'max_seq'").pluck().get() as number | undefined;
    const maxSeq = Math.max(meta ?? 0, messages.length ? messages[messages.length - 1]!.seq : 0);
    return { messages, sessionStates, maxSeq };
  }

  readPayload(seq: number): Buffer | undefined {
    return this.pendingPayloads.get(seq) ?? (this.stmts.payload.get(seq) as Buffer | undefined);
  }

  protected apply(ops: Op[]): void {
    this.applyTx(ops);
  }

  protected closeStore(): void {
    this.db.close();
  }
}

/** `dataDir` undefined or ':memory:' -> MemoryStore (no persistence); else SQLite in that directory. */
export function openStore(dataDir: string | undefined): MessageStore {
  if (dataDir === undefined || dataDir === ':memory:') return new MemoryStore();
  return new SqliteStore(dataDir);
}
