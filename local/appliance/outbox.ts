/**
 * The process server's outbox (the offline cache) for one VM. Each disk's batches are sent
 * strictly in sequence order (staged payloads upload in parallel, `--threads`, but messages
 * leave one after the other), so one disk's session sees 1, 2, 3...
 *
 * Memory first, disk when needed: a sealed batch stays in memory while within the memory
 * budget and goes to `<cacheDir>/<vmId>/<diskId>/<epoch, 10 digits>-<sequence, 20 digits>.fryb`
 * when the budget is exceeded (Service Bus or Storage unreachable, or slower than the agent)
 * and when `sync()` is called. Writing every batch to disk would halve throughput here (the
 * page cache takes ~265 MB/s on this machine) for no gain while the cloud keeps up.
 *
 * Crash safety rests on two rules:
 * - the agent saves its checkpoint only after `sync()`: every batch it counts as handed over
 *   is then sent or on disk, so a crash never loses a change the checkpoint claims;
 * - before a message is sent, its sequence is covered by a durable reservation
 *   (`reserved.json`, raised 16 at a time). After a crash, sequences up to the reservation
 *   that have no file may or may not have been sent; each is re-sent as an empty marker batch
 *   (`makeMarker`): a duplicate if the original arrived, a harmless filler if not (its changes
 *   are re-read from the checkpoint under new sequences). So a sequence number is never reused
 *   for other content, and the queue never has a gap.
 *
 * When the cloud is unreachable, sends are retried with backoff and batches pile up on disk;
 * `waitForRoom` makes producers pause (never drop) once `maxBytes` is reached.
 */
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { envelopeFor, type OutgoingBatch } from '../../shared/codec/envelope';
import { STAGING_CONTAINER } from '../../shared/domain/envelope';
import type { Logger } from '../log';
import { errorMessage } from './errors';
import { writeFileAtomic } from './files';
import type { Throttle } from './token-bucket';

/** Where sealed batches go: Storage for staged payloads, Service Bus for the messages. */
export interface CloudTransport {
  stage(container: string, name: string, body: Buffer): Promise<void>;
  send(message: { body: unknown; contentType: string; sessionId: string; messageId: string }): Promise<void>;
  /** Called after a failure so the next attempt starts from a fresh connection. */
  reset?(): Promise<void>;
  close(): Promise<void>;
}

/** The message of a sealed batch, made by envelopeFor (in a seal worker when possible). */
export type OutgoingMessage = Omit<OutgoingBatch, 'staged'> & { stagedName?: string };

interface Entry {
  diskId: string;
  epoch: number;
  seq: number;
  /** Set once the batch is on disk. */
  file: string | null;
  size: number;
  /** The sealed bytes while in memory (always until it is on disk). */
  sealed: Buffer | null;
  message?: OutgoingMessage;
  /** Resolves with the message to send once the payload (if staged) is uploaded. */
  staged?: Promise<OutgoingMessage | undefined>;
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
  /** Seals an empty batch for a sequence that may have been sent before a crash. */
  makeMarker?: (diskId: string, epoch: number, seq: number) => Buffer;
  maxBytes: number;
  memoryBudgetBytes?: number;
  bucket?: Throttle;
  log?: Logger;
}

const name = (epoch: number, seq: number) => `${String(epoch).padStart(10, '0')}-${String(seq).padStart(20, '0')}.fryb`;
const FILE_RE = /^(\d{10})-(\d{20})\.fryb$/;
const RESERVE_AHEAD = 16;

type SeqFile = Record<string, { epoch: number; seq: number }>;

function readSeqFile(file: string): SeqFile {
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as SeqFile) : {};
}

function fsyncFile(file: string): void {
  const fd = openSync(file, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

export class Outbox {
  private readonly disks = new Map<string, DiskQueue & { reserved: number }>();
  private bytes = 0;
  private memBytes = 0;
  private stageSlots: number;
  private readonly stageWaiters: (() => void)[] = [];
  private readonly roomWaiters: (() => void)[] = [];
  private readonly idleWaiters: (() => void)[] = [];
  private closed = false;
  private readonly failing = new Set<string>();
  private sentSinceSave = 0;
  readonly stats: OutboxStats = { sentBatches: 0, sentBytes: 0, spooledBytes: 0, pendingBatches: 0, retries: 0, offline: false };

  constructor(readonly dir: string, private readonly transport: CloudTransport, private readonly options: OutboxOptions) {
    this.stageSlots = options.threads;
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.load();
  }

  private get sentFile(): string {
    return join(this.dir, 'sent.json');
  }

  private get reservedFile(): string {
    return join(this.dir, 'reserved.json');
  }

  private get memoryBudget(): number {
    return this.options.memoryBudgetBytes ?? 192 * 1024 * 1024;
  }

  private load(): void {
    const sent = readSeqFile(this.sentFile);
    const reserved = readSeqFile(this.reservedFile);
    for (const [diskId, s] of Object.entries(sent)) this.disks.set(diskId, { epoch: s.epoch, lastSent: s.seq, reserved: s.seq, entries: new Map(), running: false });
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
        const file = join(ddir, f);
        if (epoch < q.epoch || seq <= q.lastSent) {
          rmSync(file, { force: true }); // sent before the crash
          continue;
        }
        const size = statSync(file).size;
        q.entries.set(seq, { diskId, epoch, seq, file, size, sealed: null });
        this.bytes += size;
        this.stats.pendingBatches++;
      }
    }
    // sequences that may have left before a crash and have no file: re-send them as markers
    for (const [diskId, r] of Object.entries(reserved)) {
      const q = this.queue(diskId, r.epoch);
      if (r.epoch !== q.epoch) continue;
      q.reserved = Math.max(q.reserved, r.seq);
      for (let seq = q.lastSent + 1; seq <= r.seq; seq++) {
        if (q.entries.has(seq)) continue;
        if (!this.options.makeMarker) throw new Error(`Outbox ${this.dir}: sequence ${seq} of ${diskId} may have been sent; a marker is needed but no makeMarker was given.`);
        this.put(diskId, r.epoch, seq, this.options.makeMarker(diskId, r.epoch, seq));
      }
    }
    this.stats.spooledBytes = this.bytes;
    for (const diskId of this.disks.keys()) this.kick(diskId);
  }

  private queue(diskId: string, epoch: number): DiskQueue & { reserved: number } {
    let q = this.disks.get(diskId);
    if (!q) {
      q = { epoch, lastSent: 0, reserved: 0, entries: new Map(), running: false };
      this.disks.set(diskId, q);
    }
    if (epoch > q.epoch) {
      // a new epoch (resync) starts over at sequence 1; batches of the old one are stale
      for (const e of q.entries.values()) this.drop(e);
      q.entries.clear();
      q.epoch = epoch;
      q.lastSent = 0;
      q.reserved = 0;
    }
    return q;
  }

  /** The newest sequence of `diskId` in `epoch` that is accepted with no gap before it. */
  acceptedThrough(diskId: string, epoch: number): number {
    const q = this.disks.get(diskId);
    if (!q || q.epoch !== epoch) return q && q.epoch > epoch ? Number.MAX_SAFE_INTEGER : 0;
    let n = Math.max(q.lastSent, 0);
    while (q.entries.has(n + 1)) n++;
    return n;
  }

  get spooledBytes(): number {
    return this.bytes;
  }

  /** Resolves when the cache is below its bound (the agent pauses here rather than drop). */
  async waitForRoom(): Promise<void> {
    while (this.bytes >= this.options.maxBytes && !this.closed) await new Promise<void>((r) => this.roomWaiters.push(r));
  }

  /**
   * Queues one sealed batch. A sequence already queued or sent is a replay (an agent retrying
   * an upload whose answer it lost) and is ignored: the first copy is the one sent, once.
   * Replacing the queued copy instead could race its send (the copy in flight was sent, the
   * replacement forgotten, and the counts went wrong). `message` is its envelope when the
   * caller made it already (a seal worker), else it is made here.
   */
  put(diskId: string, epoch: number, seq: number, sealed: Buffer, message?: OutgoingMessage): void {
    const q = this.queue(diskId, epoch);
    if (epoch < q.epoch || seq <= q.lastSent) return; // already sent: a replay after a restart
    if (q.entries.has(seq)) return; // already queued: a replay
    const entry: Entry = { diskId, epoch, seq, file: null, size: sealed.length, sealed, ...(message ? { message } : {}) };
    this.memBytes += sealed.length;
    q.entries.set(seq, entry);
    this.bytes += sealed.length;
    this.stats.pendingBatches++;
    this.stats.spooledBytes = this.bytes;
    if (this.memBytes > this.memoryBudget) this.spill(false);
    this.kick(diskId);
  }

  private writeEntry(e: Entry, fsync: boolean): void {
    if (e.file || !e.sealed) return;
    const ddir = join(this.dir, e.diskId);
    mkdirSync(ddir, { recursive: true, mode: 0o700 });
    const file = join(ddir, name(e.epoch, e.seq));
    const tmp = `${file}.tmp`;
    writeFileSync(tmp, e.sealed, { mode: 0o600 });
    if (fsync) fsyncFile(tmp);
    renameSync(tmp, file);
    e.file = file;
  }

  /** Moves the newest in-memory batches to disk until memory is within budget (all with `all`). */
  private spill(all: boolean): void {
    const inMemory = [...this.disks.values()].flatMap((q) => [...q.entries.values()]).filter((e) => e.sealed && !e.file);
    inMemory.sort((a, b) => b.seq - a.seq); // the last to be sent go to disk first
    for (const e of inMemory) {
      if (!all && this.memBytes <= this.memoryBudget) break;
      this.writeEntry(e, all);
      this.memBytes -= e.size;
      e.sealed = null; // a staging upload in progress holds its own reference
    }
  }

  /** Makes every queued batch durable: written and fsynced (the agent's checkpoint waits for this). */
  sync(): void {
    for (const q of this.disks.values()) {
      for (const e of q.entries.values()) if (!e.file) this.writeEntry(e, true);
    }
    this.saveSeq(this.sentFile, (q) => q.lastSent, false);
    const dirs = [...this.disks.keys()].map((d) => join(this.dir, d)).filter((d) => existsSync(d));
    for (const d of dirs) fsyncFile(d);
  }

  private drop(e: Entry): void {
    if (e.file) rmSync(e.file, { force: true });
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

  /** The newest sent sequence per disk. */
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
    return e.sealed ?? readFileSync(e.file!);
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

  private stageEntry(e: Entry): Promise<OutgoingMessage | undefined> {
    return this.slot(async () => {
      const bytes = this.bytesOf(e);
      let message = e.message;
      if (!message) {
        const { staged, ...rest } = envelopeFor(bytes);
        message = { ...rest, ...(staged ? { stagedName: staged.name } : {}) };
      }
      const stagedName = message.stagedName;
      if (stagedName !== undefined) {
        const ok = await this.retrying(`stage ${stagedName}`, async () => {
          await this.options.bucket?.take(bytes.length);
          await this.transport.stage(STAGING_CONTAINER, stagedName, bytes);
        });
        if (!ok) return undefined;
      }
      // once staged (or inline), memory holds only the envelope
      if (e.sealed && e.file && stagedName !== undefined) {
        this.memBytes -= e.size;
        e.sealed = null;
      }
      return message;
    });
  }

  /** Raises the durable reservation so that `seq` may be sent. */
  private reserve(q: DiskQueue & { reserved: number }, seq: number): void {
    if (seq <= q.reserved) return;
    q.reserved = seq + RESERVE_AHEAD - 1;
    this.saveSeq(this.reservedFile, (d) => d.reserved, true);
  }

  private async drain(diskId: string, q: DiskQueue & { reserved: number }): Promise<void> {
    for (;;) {
      const e = q.entries.get(q.lastSent + 1);
      if (!e || this.closed) return;
      e.staged ??= this.stageEntry(e);
      const out = await e.staged;
      if (!out) return;
      if (q.entries.get(e.seq) !== e) continue; // replaced while staging
      this.reserve(q, e.seq);
      const ok = await this.retrying(`send ${diskId} ${e.seq}`, async () => {
        if (out.stagedName === undefined) await this.options.bucket?.take(e.size);
        await this.transport.send({ body: out.envelope, contentType: 'application/json', sessionId: out.sessionId, messageId: out.messageId });
      });
      if (!ok || this.closed) return; // closed meanwhile: keep the file, re-send on the next start
      q.entries.delete(e.seq);
      q.lastSent = e.seq;
      this.stats.sentBatches++;
      this.stats.sentBytes += e.size;
      this.drop(e);
      if (++this.sentSinceSave >= 32) this.saveSeq(this.sentFile, (d) => d.lastSent, false);
    }
  }

  private saveSeq(file: string, pick: (q: DiskQueue & { reserved: number }) => number, fsync: boolean): void {
    const out: SeqFile = {};
    for (const [diskId, q] of this.disks) out[diskId] = { epoch: q.epoch, seq: pick(q) };
    if (file === this.sentFile) this.sentSinceSave = 0;
    if (fsync) writeFileAtomic(file, JSON.stringify(out), 0o600);
    else {
      writeFileSync(`${file}.tmp`, JSON.stringify(out), { mode: 0o600 });
      renameSync(`${file}.tmp`, file);
    }
  }

  /**
   * A clean stop: everything unsent goes to disk, and the reservation falls back to what was
   * sent, so the next start needs no markers. A send still in flight keeps its file (it is
   * re-sent, as a duplicate, on the next start).
   */
  close(): void {
    if (!this.closed) {
      this.closed = true;
      this.sync();
      for (const q of this.disks.values()) q.reserved = q.lastSent;
      this.saveSeq(this.reservedFile, (q) => q.reserved, true);
    }
    for (const w of [...this.roomWaiters.splice(0), ...this.idleWaiters.splice(0), ...this.stageWaiters.splice(0)]) w();
  }
}
