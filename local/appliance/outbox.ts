/**
 * The process server's durable outbox (the offline cache) for one VM: every sealed batch is
 * written to `<cacheDir>/<vmId>/<diskId>/<epoch, 10 digits>-<sequence, 20 digits>.fryb` before
 * it counts as accepted, and deleted once its Service Bus message is sent. The uploader drains
 * it per disk strictly in sequence order, uploading staged payloads in parallel (`--threads`)
 * but sending each disk's messages one after the other, so one disk's session sees 1, 2, 3...
 *
 * When Service Bus or Storage is unreachable, sends are retried with backoff and batches pile
 * up here; `waitForRoom` makes producers pause (never drop) once `maxBytes` is reached. A
 * restart loads the files and resumes. `sent.json` keeps the newest sent sequence per disk, so
 * `acceptedThrough` (what the agent continues from) survives the files' deletion.
 *
 * Spool files are written without a per-file fsync; `sync()` flushes them and is called by
 * the agent before it saves its own checkpoint, which is what must never get ahead of them.
 */
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { envelopeFor, type OutgoingBatch } from '../../shared/codec/envelope';
import type { Logger } from '../log';
import { errorMessage } from './errors';
import { writeFileAtomic } from './files';
import type { TokenBucket } from './token-bucket';

/** Where sealed batches go: Storage for staged payloads, Service Bus for the messages. */
export interface CloudTransport {
  stage(container: string, name: string, body: Buffer): Promise<void>;
  send(message: { body: unknown; contentType: string; sessionId: string; messageId: string }): Promise<void>;
  /** Called after a failure so the next attempt starts from a fresh connection. */
  reset?(): Promise<void>;
  close(): Promise<void>;
}

interface Entry {
  diskId: string;
  epoch: number;
  seq: number;
  file: string;
  size: number;
  /** The sealed bytes while within the memory budget, else read back from the file. */
  sealed: Buffer | null;
  /** Resolves with the message to send once the payload (if staged) is uploaded. */
  staged?: Promise<Omit<OutgoingBatch, 'staged'> | undefined>;
}

interface DiskQueue {
  epoch: number;
  lastSent: number;
  entries: Map<number, Entry>;
  running: boolean;
}

export interface OutboxStats {
  sentBatches: number;
  sentBytes: number;
  spooledBytes: number;
  pendingBatches: number;
  retries: number;
  offline: boolean;
}

export interface OutboxOptions {
  threads: number;
  maxBytes: number;
  memoryBudgetBytes?: number;
  bucket?: TokenBucket;
  log?: Logger;
}

const name = (epoch: number, seq: number) => `${String(epoch).padStart(10, '0')}-${String(seq).padStart(20, '0')}.fryb`;
const FILE_RE = /^(\d{10})-(\d{20})\.fryb$/;

export class Outbox {
  private readonly disks = new Map<string, DiskQueue>();
  private bytes = 0;
  private memBytes = 0;
  private unsynced: string[] = [];
  private stageSlots: number;
  private readonly stageWaiters: (() => void)[] = [];
  private readonly roomWaiters: (() => void)[] = [];
  private readonly idleWaiters: (() => void)[] = [];
  private closed = false;
  private readonly failing = new Set<string>();
  readonly stats: OutboxStats = { sentBatches: 0, sentBytes: 0, spooledBytes: 0, pendingBatches: 0, retries: 0, offline: false };

  constructor(readonly dir: string, private readonly transport: CloudTransport, private readonly options: OutboxOptions) {
    this.stageSlots = options.threads;
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.load();
  }

  private sentFile(): string {
    return join(this.dir, 'sent.json');
  }

  private load(): void {
    const sent: Record<string, { epoch: number; seq: number }> = existsSync(this.sentFile()) ? JSON.parse(readFileSync(this.sentFile(), 'utf8')) : {};
    for (const [diskId, s] of Object.entries(sent)) this.disks.set(diskId, { epoch: s.epoch, lastSent: s.seq, entries: new Map(), running: false });
    for (const diskId of readdirSync(this.dir)) {
      const ddir = join(this.dir, diskId);
      if (!statSync(ddir).isDirectory()) continue;
      for (const f of readdirSync(ddir).sort()) {
        const m = FILE_RE.exec(f);
        if (!m) {
          rmSync(join(ddir, f), { force: true }); // an unfinished temp file
          continue;
        }
        const epoch = Number(m[1]);
        const seq = Number(m[2]);
        const q = this.queue(diskId, epoch);
        if (epoch < q.epoch || seq <= q.lastSent) {
          rmSync(join(ddir, f), { force: true }); // sent before the crash
          continue;
        }
        const file = join(ddir, f);
        const size = statSync(file).size;
        q.entries.set(seq, { diskId, epoch, seq, file, size, sealed: null });
        this.bytes += size;
        this.stats.pendingBatches++;
      }
    }
    this.stats.spooledBytes = this.bytes;
    for (const diskId of this.disks.keys()) this.kick(diskId);
  }

  private queue(diskId: string, epoch: number): DiskQueue {
    let q = this.disks.get(diskId);
    if (!q) {
      q = { epoch, lastSent: 0, entries: new Map(), running: false };
      this.disks.set(diskId, q);
    }
    if (epoch > q.epoch) {
      // a new epoch (resync) starts over at sequence 1; batches of the old one are stale
      for (const e of q.entries.values()) this.drop(e);
      q.entries.clear();
      q.epoch = epoch;
      q.lastSent = 0;
    }
    return q;
  }

  /** The newest sequence of `diskId` in `epoch` that is accepted with no gap before it. */
  acceptedThrough(diskId: string, epoch: number): number {
    const q = this.disks.get(diskId);
    if (!q || q.epoch !== epoch) return q && q.epoch > epoch ? Number.MAX_SAFE_INTEGER : 0;
    let n = q.lastSent;
    while (q.entries.has(n + 1)) n++;
    return n;
  }

  get spooledBytes(): number {
    return this.bytes;
  }

  /** Resolves when the spool is below its bound (the agent pauses here rather than drop). */
  async waitForRoom(): Promise<void> {
    while (this.bytes >= this.options.maxBytes && !this.closed) await new Promise<void>((r) => this.roomWaiters.push(r));
  }

  /** Durably spools one sealed batch (replacing an unsent one of the same sequence) and queues it. */
  put(diskId: string, epoch: number, seq: number, sealed: Buffer): void {
    const q = this.queue(diskId, epoch);
    if (epoch < q.epoch || seq <= q.lastSent) return; // already sent: a replay after a restart
    const ddir = join(this.dir, diskId);
    mkdirSync(ddir, { recursive: true, mode: 0o700 });
    const file = join(ddir, name(epoch, seq));
    const tmp = `${file}.tmp`;
    writeFileSync(tmp, sealed, { mode: 0o600 });
    renameSync(tmp, file);
    this.unsynced.push(file);
    const old = q.entries.get(seq);
    if (old) this.drop(old);
    const keep = this.memBytes + sealed.length <= (this.options.memoryBudgetBytes ?? 256 * 1024 * 1024);
    const entry: Entry = { diskId, epoch, seq, file, size: sealed.length, sealed: keep ? sealed : null };
    if (keep) this.memBytes += sealed.length;
    q.entries.set(seq, entry);
    this.bytes += sealed.length;
    this.stats.pendingBatches++;
    this.stats.spooledBytes = this.bytes;
    this.kick(diskId);
  }

  /** fsyncs the spool files written since the last call. */
  sync(): void {
    const files = this.unsynced;
    this.unsynced = [];
    for (const f of files) {
      let fd: number;
      try {
        fd = openSync(f, 'r');
      } catch {
        continue; // already sent and deleted
      }
      try {
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
    }
  }

  private drop(e: Entry): void {
    rmSync(e.file, { force: true });
    this.bytes -= e.size;
    if (e.sealed) this.memBytes -= e.size;
    e.sealed = null;
    this.stats.pendingBatches--;
    this.stats.spooledBytes = this.bytes;
    if (this.bytes < this.options.maxBytes) for (const w of this.roomWaiters.splice(0)) w();
  }

  /** Resolves when nothing is left to send. */
  async idle(): Promise<void> {
    while (this.stats.pendingBatches > 0 && !this.closed) await new Promise<void>((r) => this.idleWaiters.push(r));
  }

  /** The newest sent sequence per disk (for `replicate --once` to wait on). */
  lastSent(diskId: string): number {
    return this.disks.get(diskId)?.lastSent ?? 0;
  }

  private kick(diskId: string): void {
    const q = this.disks.get(diskId);
    if (!q || this.closed) return;
    // start staging uploads ahead of the in-order sends, bounded by --threads
    for (const e of q.entries.values()) if (!e.staged) e.staged = this.stageEntry(e);
    if (q.running) return;
    q.running = true;
    void this.drain(diskId, q).finally(() => {
      q.running = false;
      if (q.entries.has(q.lastSent + 1) && !this.closed) this.kick(diskId);
      if (this.stats.pendingBatches === 0) for (const w of this.idleWaiters.splice(0)) w();
    });
  }

  private bytesOf(e: Entry): Buffer {
    return e.sealed ?? readFileSync(e.file);
  }

  private async slot<T>(fn: () => Promise<T>): Promise<T> {
    while (this.stageSlots === 0) await new Promise<void>((r) => this.stageWaiters.push(r));
    this.stageSlots--;
    try {
      return await fn();
    } finally {
      this.stageSlots++;
      this.stageWaiters.shift()?.();
    }
  }

  /** Retries `fn` with backoff until it succeeds or the outbox closes. */
  private async retrying(what: string, fn: () => Promise<void>): Promise<boolean> {
    const service = what.startsWith('stage') ? 'Storage' : 'Service Bus';
    let delay = 200;
    for (;;) {
      if (this.closed) return false;
      try {
        await fn();
        if (this.failing.delete(service)) {
          this.stats.offline = this.failing.size > 0;
          this.options.log?.info({ cache: this.dir }, `${service} reachable again; draining the cache`);
        }
        return true;
      } catch (err) {
        this.stats.retries++;
        if (!this.failing.has(service)) {
          this.failing.add(service);
          this.stats.offline = true;
          this.options.log?.warn({ what, err: errorMessage(err) }, `${service} unreachable; spooling batches to the cache and retrying`);
        }
        await this.transport.reset?.().catch(() => undefined);
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(5000, delay * 2);
      }
    }
  }

  private stageEntry(e: Entry): Promise<Omit<OutgoingBatch, 'staged'> | undefined> {
    return this.slot(async () => {
      const { staged, ...message } = envelopeFor(this.bytesOf(e));
      if (staged) {
        const ok = await this.retrying(`stage ${staged.name}`, async () => {
          await this.options.bucket?.take(staged.body.length);
          await this.transport.stage(staged.container, staged.name, staged.body);
        });
        if (!ok) return undefined;
      }
      return message;
    });
  }

  private async drain(diskId: string, q: DiskQueue): Promise<void> {
    for (;;) {
      const e = q.entries.get(q.lastSent + 1);
      if (!e || this.closed) return;
      e.staged ??= this.stageEntry(e);
      const out = await e.staged;
      if (!out) return;
      const inline = 'inline' in out.envelope.payload;
      const ok = await this.retrying(`send ${diskId} ${e.seq}`, async () => {
        if (inline) await this.options.bucket?.take(e.size);
        await this.transport.send({ body: out.envelope, contentType: 'application/json', sessionId: out.sessionId, messageId: out.messageId });
      });
      if (!ok) return;
      q.entries.delete(e.seq);
      q.lastSent = e.seq;
      this.stats.sentBatches++;
      this.stats.sentBytes += e.size;
      this.drop(e);
      this.saveSent();
    }
  }

  private saveSent(): void {
    const sent: Record<string, { epoch: number; seq: number }> = {};
    for (const [diskId, q] of this.disks) sent[diskId] = { epoch: q.epoch, seq: q.lastSent };
    writeFileAtomic(this.sentFile(), JSON.stringify(sent), 0o600);
  }

  close(): void {
    this.closed = true;
    for (const w of [...this.roomWaiters.splice(0), ...this.idleWaiters.splice(0), ...this.stageWaiters.splice(0)]) w();
  }
}
