/**
 * Persistence of messages and session state.
 *
 * The broker acknowledges a send, a settlement or a dead-lettering only once the change is
 * durable: it queues the change here, then waits for `afterCommit`. Changes are grouped: all
 * those queued during one event-loop turn are written in one SQLite transaction (WAL journal,
 * synchronous=NORMAL: a committed transaction survives a kill of the process, which is the
 * failure the emulator promises to survive; not a power cut).
 *
 * Two implementations pass the same conformance suite: `SqliteStore` (a directory: SQLite for
 * metadata and small bodies, an append-only segment log for large bodies) and `MemoryStore`
 * (no persistence; the benchmark's baseline).
 *
 * Message bodies (`payload`) live in the store, not in the broker's memory: the broker keeps
 * only a bounded cache of them.
 */
import Database from 'better-sqlite3';
import { closeSync, mkdirSync, openSync, readSync, readdirSync, rmSync, writevSync } from 'node:fs';
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
  ann: Buffer | null; ann_count: number; size: number; seg: number | null;
}

/**
 * Bodies at least this large go to the segment log instead of SQLite rows. Measured: a 1 KiB
 * body costs about twice as much to insert and delete as a row as it does appended to the log
 * (SQLite writes it to the WAL, then again at checkpoint). Tiny bodies stay in their row.
 */
const LOG_THRESHOLD = 512;
const SEGMENT_BYTES = 64 * 1024 * 1024;
const DELETE_CHUNK = 32;

/**
 * Append-only files for message bodies (`<dir>/segments/<n>.log`): appending a body to the page
 * cache is a memcpy, where SQLite would write it twice (WAL, then checkpoint) and free its pages
 * again on delete. A row keeps (segment, offset); a segment file is deleted once no stored
 * message refers to it, so one long-lived message keeps its whole segment (up to 64 MiB) on
 * disk: the price of never rewriting a file. Bytes are appended before the transaction that
 * refers to them commits, so a committed row never points at missing bytes.
 */
class SegmentLog {
  private readonly fds = new Map<number, number>();
  private readonly live = new Map<number, number>();
  private active: number;
  private activeSize = 0;

  constructor(private readonly dir: string, liveCounts: Map<number, number>) {
    mkdirSync(dir, { recursive: true });
    for (const [seg, n] of liveCounts) this.live.set(seg, n);
    const existing = readdirSync(dir).map((f) => /^(\d+)\.log$/.exec(f)).filter((m) => m !== null).map((m) => Number(m[1]));
    // Files nothing refers to are leftovers of completed messages (or of a crash mid-flush).
    for (const seg of existing) if (!this.live.get(seg)) rmSync(this.path(seg), { force: true });
    this.active = Math.max(0, ...existing) + 1;
  }

  private path(seg: number): string {
    return join(this.dir, `${String(seg).padStart(8, '0')}.log`);
  }

  private fd(seg: number): number {
    let fd = this.fds.get(seg);
    if (fd === undefined) {
      fd = openSync(this.path(seg), 'a+');
      this.fds.set(seg, fd);
    }
    return fd;
  }

  /** Appends bodies (one write); returns where each went. */
  append(bodies: Buffer[]): Array<{ seg: number; off: number }> {
    if (this.activeSize >= SEGMENT_BYTES) {
      const old = this.active;
      this.active++;
      this.activeSize = 0;
      this.releaseIfDead(old);
    }
    const seg = this.active;
    const out = bodies.map((b) => {
      const loc = { seg, off: this.activeSize };
      this.activeSize += b.length;
      return loc;
    });
    const fd = this.fd(seg);
    let total = 0;
    for (const b of bodies) total += b.length;
    let written = 0;
    while (written < total) {
      written += writevSync(fd, written === 0 ? bodies : [Buffer.concat(bodies).subarray(written)]);
    }
    this.live.set(seg, (this.live.get(seg) ?? 0) + bodies.length);
    return out;
  }

  read(seg: number, off: number, size: number): Buffer {
    const buf = Buffer.allocUnsafeSlow(size);
    let got = 0;
    while (got < size) {
      const n = readSync(this.fd(seg), buf, got, size - got, off + got);
      if (n === 0) throw new Error(`segment ${seg} is shorter than expected (offset ${off}, size ${size})`);
      got += n;
    }
    return buf;
  }

  /** One fewer message refers to `seg`. Call after the commit that dropped the reference. */
  unref(seg: number): void {
    this.live.set(seg, (this.live.get(seg) ?? 1) - 1);
    this.releaseIfDead(seg);
  }

  private releaseIfDead(seg: number): void {
    if (seg === this.active || (this.live.get(seg) ?? 0) > 0) return;
    const fd = this.fds.get(seg);
    if (fd !== undefined) closeSync(fd);
    this.fds.delete(seg);
    this.live.delete(seg);
    rmSync(this.path(seg), { force: true });
  }

  close(): void {
    for (const fd of this.fds.values()) closeSync(fd);
    this.fds.clear();
  }
}

/** SQLite through better-sqlite3 (`<dir>/servicebus.db`), large bodies in a segment log. */
export class SqliteStore extends BatchingStore {
  readonly persistent = true;
  private readonly db: Database.Database;
  private readonly stmts;
  private readonly updateStmts = new Map<string, Database.Statement>();
  private readonly applyTx: (ops: Op[], locs: Map<Op, { seg: number; off: number }>) => void;
  /** Segment of every message whose body is in the log. */
  private readonly segOf = new Map<number, number>();
  private log!: SegmentLog;
  private readonly dir: string;

  constructor(dir: string) {
    super();
    this.dir = dir;
    mkdirSync(dir, { recursive: true });
    this.db = new Database(join(dir, 'servicebus.db'));
    this.db.pragma('journal_mode = WAL');
    // A commit survives a kill of the process (not a power cut): what the emulator promises.
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
        payload BLOB,
        seg INTEGER,
        off INTEGER
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
        expires_at, state, delivery_count, dl_source, ttl, priority, durable, ann, ann_count, size, payload, seg, off)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
      delete: this.db.prepare('DELETE FROM messages WHERE seq = ?'),
      deleteMany: this.db.prepare(`DELETE FROM messages WHERE seq IN (${Array(DELETE_CHUNK).fill('?').join(', ')})`),
      body: this.db.prepare('SELECT payload, seg, off, size FROM messages WHERE seq = ?'),
      setBody: this.db.prepare('UPDATE messages SET payload = ?, seg = ?, off = ?, size = ? WHERE seq = ?'),
      setSession: this.db.prepare('INSERT OR REPLACE INTO session_states (entity, session_id, state) VALUES (?, ?, ?)'),
      deleteSession: this.db.prepare('DELETE FROM session_states WHERE entity = ? AND session_id = ?'),
      setMaxSeq: this.db.prepare("INSERT INTO meta (key, value) VALUES ('max_seq', ?) ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)"),
    };
    this.applyTx = this.db.transaction((ops: Op[], locs: Map<Op, { seg: number; off: number }>) => {
      let maxSeq = 0;
      for (let i = 0; i < ops.length; i++) {
        const op = ops[i]!;
        if (op.kind === 'delete') {
          // A run of deletes (completions) goes out DELETE_CHUNK at a time.
          let j = i;
          while (j + 1 < ops.length && j + 1 - i < DELETE_CHUNK && ops[j + 1]!.kind === 'delete') j++;
          const seqs = ops.slice(i, j + 1).map((o) => (o as { seq: number }).seq);
          if (seqs.length === DELETE_CHUNK) this.stmts.deleteMany.run(...seqs);
          else for (const seq of seqs) this.stmts.delete.run(seq);
          i = j;
          continue;
        }
        if (op.kind === 'insert') {
          const m = op.m;
          const loc = locs.get(op);
          maxSeq = Math.max(maxSeq, m.seq);
          this.stmts.insert.run(m.seq, m.entity, m.messageId, m.sessionId, m.enqueuedAt, m.visibleAt, m.expiresAt,
            m.state, m.deliveryCount, m.deadLetterSource, m.ttlMs, m.priority,
            m.durable === null ? null : m.durable ? 1 : 0, m.annotations.length ? m.annotations : null, m.annCount,
            op.payload.length, loc ? null : op.payload, loc?.seg ?? null, loc?.off ?? null);
        } else if (op.kind === 'update') {
          this.runUpdate(op.seq, op.u);
          if (op.u.payload) {
            const loc = locs.get(op);
            this.stmts.setBody.run(loc ? null : op.u.payload, loc?.seg ?? null, loc?.off ?? null, op.u.payload.length, op.seq);
          }
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
    const keys = (Object.keys(u) as Array<keyof MessageUpdate>).filter((k) => k !== 'payload' && u[k] !== undefined).sort() as Array<keyof typeof COLUMNS>;
    if (keys.length === 0) return;
    const sig = keys.join(',');
    let stmt = this.updateStmts.get(sig);
    if (!stmt) {
      stmt = this.db.prepare(`UPDATE messages SET ${keys.map((k) => `${COLUMNS[k]} = ?`).join(', ')} WHERE seq = ?`);
      this.updateStmts.set(sig, stmt);
    }
    stmt.run(...keys.map((k) => u[k] ?? null), seq);
  }

  load(): LoadedState {
    const rows = this.db
      .prepare(`SELECT seq, entity, message_id, session_id, enqueued_at, visible_at, expires_at, state,
        delivery_count, dl_source, ttl, priority, durable, ann, ann_count, size, seg FROM messages ORDER BY seq`)
      .all() as MessageRow[];
    const liveCounts = new Map<number, number>();
    const messages = rows.map((r): StoredMessage => {
      if (r.seg !== null) {
        this.segOf.set(r.seq, r.seg);
        liveCounts.set(r.seg, (liveCounts.get(r.seg) ?? 0) + 1);
      }
      return {
        seq: r.seq, entity: r.entity, messageId: r.message_id, sessionId: r.session_id, enqueuedAt: r.enqueued_at,
        visibleAt: r.visible_at, expiresAt: r.expires_at, state: r.state, deliveryCount: r.delivery_count,
        deadLetterSource: r.dl_source, ttlMs: r.ttl, priority: r.priority, durable: r.durable === null ? null : r.durable === 1,
        annotations: r.ann ?? Buffer.alloc(0), annCount: r.ann_count, size: r.size,
      };
    });
    this.log = new SegmentLog(join(this.dir, 'segments'), liveCounts);
    const sessionStates = (this.db.prepare('SELECT entity, session_id, state FROM session_states').all() as Array<{ entity: string; session_id: string; state: Buffer }>)
      .map((r) => ({ entity: r.entity, sessionId: r.session_id, state: r.state }));
    const meta = this.db.prepare("SELECT value FROM meta WHERE key = 'max_seq'").pluck().get() as number | undefined;
    const maxSeq = Math.max(meta ?? 0, messages.length ? messages[messages.length - 1]!.seq : 0);
    return { messages, sessionStates, maxSeq };
  }

  readPayload(seq: number): Buffer | undefined {
    const pending = this.pendingPayloads.get(seq);
    if (pending) return pending;
    const row = this.stmts.body.get(seq) as { payload: Buffer | null; seg: number | null; off: number | null; size: number } | undefined;
    if (!row) return undefined;
    if (row.payload) return row.payload;
    return this.log.read(row.seg!, row.off!, row.size);
  }

  protected apply(ops: Op[]): void {
    if (!this.log) this.load();
    // Large bodies first, in one write, so the rows committed below never point at missing bytes.
    const large: Array<{ op: Op; body: Buffer }> = [];
    for (const op of ops) {
      const body = op.kind === 'insert' ? op.payload : op.kind === 'update' ? op.u.payload : undefined;
      if (body && body.length >= LOG_THRESHOLD) large.push({ op, body });
    }
    const locs = new Map<Op, { seg: number; off: number }>();
    if (large.length > 0) {
      const placed = this.log.append(large.map((l) => l.body));
      large.forEach((l, i) => locs.set(l.op, placed[i]!));
    }
    this.applyTx(ops, locs);
    // References dropped by this commit: segments may now be deleted.
    for (const op of ops) {
      const seq = op.kind === 'insert' || op.kind === 'session' ? undefined : op.seq;
      if (op.kind === 'insert') {
        const loc = locs.get(op);
        if (loc) this.segOf.set(op.m.seq, loc.seg);
      } else if (seq !== undefined && (op.kind === 'delete' || (op.kind === 'update' && op.u.payload))) {
        const old = this.segOf.get(seq);
        const loc = locs.get(op);
        if (loc) this.segOf.set(seq, loc.seg);
        else this.segOf.delete(seq);
        if (old !== undefined) this.log.unref(old);
      }
    }
  }

  protected closeStore(): void {
    this.log?.close();
    this.db.close();
  }
}

/** `dataDir` undefined or ':memory:' -> MemoryStore (no persistence); else SQLite in that directory. */
export function openStore(dataDir: string | undefined): MessageStore {
  if (dataDir === undefined || dataDir === ':memory:') return new MemoryStore();
  return new SqliteStore(dataDir);
}
