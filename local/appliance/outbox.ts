/**
 * The process server's outbox (the offline cache) for one VM. Each disk's batches are sent
 * strictly in sequence order (staged payloads upload in parallel, `--threads`, but messages
 * leave one after the other), so one disk's session sees 1, 2, 3...
 *
 * Memory first: a sealed batch stays in memory, and goes to
 * `<cacheDir>/<vmId>/<diskId>/<epoch, 10 digits>-<sequence, 20 digits>.fryb` when Service Bus
 * or Storage is unreachable and the memory budget is exceeded, and at every `sync()` (the
 * agent's checkpoint). While the cloud is reachable but slower than the agent, the agent waits
 * at the memory budget instead (`waitForRoom`) of spilling: writing a batch to disk, reading it
 * back and deleting it costs about as much CPU as sending it (measured: a 1 GiB initial copy
 * spent ~4 s of the appliance's CPU on cache files), for no gain while the cloud takes them.
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
 *
 * A full cache disk (ENOSPC, EDQUOT) pauses the agent the same way: a batch that cannot be
 * written stays in memory (nothing is dropped), `waitForRoom` holds producers back and `sync()`
 * (the agent's checkpoint) waits until every batch it covers is written or sent. The pause and
 * the resume are logged once each. Draining never depends on free space: a send needs no new
 * write except the reservation, and for that (and `sent.json`) the outbox keeps a small ballast
 * file it gives up when the disk is full; `sent.json` is only an optimisation (a stale one
 * means duplicate markers after a crash) and a failed save of it is skipped.
 */
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, rmSync, statSync, statfsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fitsBinaryMessage } from '../../shared/codec/envelope';
import { BATCH_CONTENT_TYPE, STAGING_CONTAINER } from '../../shared/domain/envelope';
import { outgoingMessage, type OutgoingMessage } from './messages';
import type { Logger } from '../log';
import { errorMessage } from './errors';
import type { Throttle } from './token-bucket';

/** Where sealed batches go: Storage for staged payloads, Service Bus for the messages. */
export interface CloudTransport {
  stage(container: string, name: string, body: Buffer): Promise<void>;
  /** `body`: a JSON envelope, or (content type BATCH_CONTENT_TYPE) the sealed batch, sent as an AMQP value section. */
  send(message: { body: unknown; contentType: string; sessionId: string; messageId: string }): Promise<void>;
  /** The batch queue's maximum message size (absent: binary batch messages are not used). */
  maxMessageBytes?(): Promise<number>;
  /** Called after a failure so the next attempt starts from a fresh connection. */
  reset?(): Promise<void>;
  close(): Promise<void>;
}

export type { OutgoingMessage } from './messages';

interface Entry {
  diskId: string;
  epoch: number;
  seq: number;
  /** Set once the batch is on disk. */
  file: string | null;
  /** The file is fsynced. */
  durable?: boolean;
  /** Sent (or dropped as stale): nothing more to write. */
  gone?: boolean;
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
  /**
   * Every file the outbox writes goes through this (temp file, optional fsync, rename); tests
   * inject one that fails with ENOSPC. Default: the real file system.
   */
  writeFile?: (file: string, data: Uint8Array | string, fsync: boolean) => void;
}

/** ENOSPC or EDQUOT: the cache's file system (or the user's quota) is full. */
export function isNoSpace(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}

/** Writes `data` to `file` through a temp file (removed if the write fails) and a rename. */
export function writeFileReplacing(file: string, data: Uint8Array | string, fsync: boolean): void {
  const tmp = `${file}.tmp`;
  try {
    writeFileSync(tmp, data, { mode: 0o600 });
    if (fsync) fsyncFile(tmp);
    renameSync(tmp, file);
  } catch (err) {
    rmSync(tmp, { force: true });
    const e = err as NodeJS.ErrnoException;
    if (e && typeof e === 'object' && e.path === undefined) e.path = tmp; // a failed write names no file
    throw err;
  }
}

/** Space the outbox keeps in reserve for its small state files when the disk fills up. */
const BALLAST_BYTES = 32 * 1024;
const MB = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MB`;

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
  /** Why producers are held back: the disk refused a write, or `maxBytes` was reached. */
  private noSpace: string | null = null;
  private overBound = false;
  private pausedAt = 0;
  /** `sync()` calls waiting for space or for their batches to be sent. */
  private blockedSyncs = 0;
  private readonly spaceWaiters: (() => void)[] = [];
  /** The batch queue's maximum message size: learned at the first send (see maxMessageBytes). */
  private maxMessage: Promise<number | undefined> | undefined;
  private learnedMaxMessage: number | undefined;
  readonly stats: OutboxStats = { sentBatches: 0, sentBytes: 0, spooledBytes: 0, pendingBatches: 0, retries: 0, offline: false };

  constructor(readonly dir: string, private readonly transport: CloudTransport, private readonly options: OutboxOptions) {
    this.stageSlots = options.threads;
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.load();
    this.makeBallast();
  }

  private get ballastFile(): string {
    return join(this.dir, 'ballast');
  }

  private writeFile(file: string, data: Uint8Array | string, fsync: boolean): void {
    (this.options.writeFile ?? writeFileReplacing)(file, data, fsync);
  }

  /**
   * (Re)creates the ballast; false if the disk has no room for it (still full). It is made only
   * when twice its size fits, so that giving it up and taking it back cannot alternate at every
   * reservation while the disk stays nearly full.
   */
  private makeBallast(): boolean {
    if (existsSync(this.ballastFile)) return true;
    const probe = join(this.dir, 'ballast-probe');
    try {
      this.writeFile(probe, Buffer.alloc(2 * BALLAST_BYTES, 0xba), false);
      rmSync(probe, { force: true });
      this.writeFile(this.ballastFile, Buffer.alloc(BALLAST_BYTES, 0xba), false);
      return true;
    } catch (err) {
      if (!isNoSpace(err)) throw err;
      return false;
    }
  }

  /**
   * Writes one of the small state files; on a full disk gives up the ballast and tries once
   * more. Throws ENOSPC only if even that did not make room.
   */
  private writeStateFile(file: string, data: string, fsync: boolean): void {
    try {
      this.writeFile(file, data, fsync);
    } catch (err) {
      if (!isNoSpace(err) || !existsSync(this.ballastFile)) throw err;
      this.noteNoSpace(err); // the disk is full: producers pause until the ballast fits again
      rmSync(this.ballastFile, { force: true });
      this.writeFile(file, data, fsync);
    }
  }

  /** Whether producers are held back (a full disk or the `--cache-max-gb` bound). */
  get paused(): boolean {
    return this.noSpace !== null || this.overBound;
  }

  private fsUsage(): string {
    try {
      const s = statfsSync(this.dir);
      const total = s.blocks * s.bsize;
      return `its file system has ${MB(s.bavail * s.bsize)} free of ${MB(total)}`;
    } catch {
      return 'its file system could not be measured';
    }
  }

  private setPaused(update: () => void): void {
    const was = this.paused;
    update();
    if (!was && this.paused) {
      this.pausedAt = Date.now();
      const waiting = `${this.stats.pendingBatches} batch(es) (${MB(this.bytes)}) waiting to be sent`;
      if (this.noSpace !== null) {
        this.options.log?.warn(
          { cache: this.dir, err: this.noSpace, pendingBatches: this.stats.pendingBatches, pendingBytes: this.bytes },
          `cache ${this.dir} full (${this.noSpace}): ${this.fsUsage()}; ${waiting}. The agent pauses: no new batches until sends free space; nothing is dropped. Free space on that file system or give --cache-dir a larger one.`,
        );
      } else {
        this.options.log?.warn(
          { cache: this.dir, pendingBatches: this.stats.pendingBatches, pendingBytes: this.bytes, maxBytes: this.options.maxBytes },
          `cache ${this.dir} full: it holds ${MB(this.bytes)}, its bound (--cache-max-gb) is ${MB(this.options.maxBytes)}; ${waiting}. The agent pauses: no new batches until sends bring it under ${MB(this.resumeBytes)}; nothing is dropped. Raise --cache-max-gb if the cloud is often unreachable this long.`,
        );
      }
    } else if (was && !this.paused) {
      this.options.log?.info({ cache: this.dir, pausedMs: Date.now() - this.pausedAt, pendingBytes: this.bytes }, `cache ${this.dir} has room again after ${((Date.now() - this.pausedAt) / 1000).toFixed(1)} s; the agent resumes`);
      for (const w of this.roomWaiters.splice(0)) w();
    }
  }

  /** Below this, a cache paused at its bound lets producers go on (no pause/resume per batch). */
  private get resumeBytes(): number {
    return Math.floor(this.options.maxBytes * 0.75);
  }

  private noteNoSpace(err: unknown): void {
    const e = err as NodeJS.ErrnoException;
    this.setPaused(() => (this.noSpace = `${e.code ?? 'ENOSPC'} writing ${e.path ?? 'a file'}`));
  }

  /** Resolves at the next send (which may free space) or after `ms`. */
  private spaceEvent(ms = 1000): Promise<void> {
    return new Promise<void>((r) => {
      const t = setTimeout(r, ms);
      this.spaceWaiters.push(() => {
        clearTimeout(t);
        r();
      });
    });
  }

  /**
   * After a send, and every second while producers wait: a full disk has room again once the
   * ballast fits and the batches over the memory budget are written.
   */
  private checkRoom(): void {
    if (this.noSpace !== null && this.blockedSyncs === 0 && !this.closed) {
      if (this.makeBallast() && (this.memBytes <= this.memoryBudget || this.spill(false))) this.setPaused(() => (this.noSpace = null));
    }
    if (this.overBound && this.bytes <= this.resumeBytes) this.setPaused(() => (this.overBound = false));
    // (waking waiters that must wait on would have them wake each other forever)
    if (!this.paused && !this.memoryFull) for (const w of this.roomWaiters.splice(0)) w();
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

  /**
   * Drops the batches of `diskId` queued beyond a gap (`acceptedThrough` + 2 and later): left by
   * an agent run that died with earlier uploads unfinished, they can never be sent in order, and
   * the new run re-reads their changes from its checkpoint under the sequences from
   * `acceptedThrough` + 1. Kept, they would be taken for replays of the new run's batches of the
   * same numbers, whose content would then be lost. Returns how many were dropped.
   */
  dropBeyondGap(diskId: string, epoch: number): number {
    const q = this.disks.get(diskId);
    if (!q || q.epoch !== epoch) return 0;
    const through = this.acceptedThrough(diskId, epoch);
    let n = 0;
    for (const [seq, e] of q.entries) {
      if (seq <= through) continue;
      q.entries.delete(seq);
      this.drop(e);
      n++;
    }
    return n;
  }

  get spooledBytes(): number {
    return this.bytes;
  }

  /** The cloud is reachable but the batches in memory fill the budget: producers wait for sends. */
  private get memoryFull(): boolean {
    return !this.stats.offline && this.memBytes >= this.memoryBudget;
  }

  /**
   * Resolves when the cache is below its bound (the agent pauses here rather than drop), and,
   * while the cloud is reachable, when the batches in memory are within the memory budget.
   */
  async waitForRoom(): Promise<void> {
    for (;;) {
      if (this.closed) return;
      if (!this.overBound && this.bytes >= this.options.maxBytes) this.setPaused(() => (this.overBound = true));
      if (!this.paused && !this.memoryFull) return;
      await new Promise<void>((r) => {
        const t = setTimeout(() => {
          const i = this.roomWaiters.indexOf(r);
          if (i >= 0) this.roomWaiters.splice(i, 1);
          r();
        }, 1000);
        this.roomWaiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
      this.checkRoom(); // space freed outside the outbox is noticed here
    }
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
    this.spillIfOffline();
    this.kick(diskId);
  }

  /** While the cloud is away, what exceeds the memory budget goes to disk (online, producers wait instead). */
  private spillIfOffline(): void {
    if (this.stats.offline && this.memBytes > this.memoryBudget && this.noSpace === null) this.spill(false);
  }

  private writeEntry(e: Entry, fsync: boolean): void {
    if (e.gone) return;
    if (e.file) {
      if (fsync && !e.durable) {
        fsyncFile(e.file);
        e.durable = true;
      }
      return;
    }
    if (!e.sealed) return;
    const ddir = join(this.dir, e.diskId);
    mkdirSync(ddir, { recursive: true, mode: 0o700 });
    const file = join(ddir, name(e.epoch, e.seq));
    this.writeFile(file, e.sealed, fsync);
    e.file = file;
    e.durable = fsync;
  }

  /**
   * Moves the newest in-memory batches to disk until memory is within budget. On a full disk
   * the rest stay in memory, producers pause, and it returns false.
   */
  private spill(fsync: boolean): boolean {
    const inMemory = [...this.disks.values()].flatMap((q) => [...q.entries.values()]).filter((e) => e.sealed && !e.file);
    inMemory.sort((a, b) => b.seq - a.seq); // the last to be sent go to disk first
    for (const e of inMemory) {
      if (this.memBytes <= this.memoryBudget) break;
      try {
        this.writeEntry(e, fsync);
      } catch (err) {
        if (!isNoSpace(err)) throw err;
        this.noteNoSpace(err);
        return false;
      }
      this.memBytes -= e.size;
      e.sealed = null; // a staging upload in progress holds its own reference
    }
    return true;
  }

  /**
   * Makes every queued batch durable: written and fsynced, or sent (the agent's checkpoint
   * waits for this). On a full disk it waits, the agent with it, until each batch is sent or
   * fits: the pause.
   */
  async sync(): Promise<void> {
    const todo = [...this.disks.values()].flatMap((q) => [...q.entries.values()]).filter((e) => !e.durable);
    let blocked = false;
    try {
      for (;;) {
        let full = false;
        for (const e of todo) {
          try {
            this.writeEntry(e, true);
          } catch (err) {
            if (!isNoSpace(err)) throw err;
            this.noteNoSpace(err);
            full = true;
            break;
          }
        }
        if (!full || this.closed) break;
        if (!blocked) {
          blocked = true;
          this.blockedSyncs++;
        }
        await this.spaceEvent();
      }
    } finally {
      if (blocked) this.blockedSyncs--;
    }
    const lost = todo.filter((e) => !e.gone && !e.durable).length;
    if (lost > 0) throw new Error(`The cache ${this.dir} was closed while full: ${lost} batches are neither sent nor on disk, so this checkpoint cannot be saved.`);
    this.saveSent();
    const dirs = [...this.disks.keys()].map((d) => join(this.dir, d)).filter((d) => existsSync(d));
    for (const d of dirs) fsyncFile(d);
    if (blocked) this.checkRoom();
  }

  private drop(e: Entry): void {
    if (e.file) rmSync(e.file, { force: true });
    this.bytes -= e.size;
    if (e.sealed) this.memBytes -= e.size;
    e.sealed = null;
    e.gone = true;
    this.stats.pendingBatches--;
    this.stats.spooledBytes = this.bytes;
    for (const w of this.spaceWaiters.splice(0)) w();
    this.checkRoom();
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
    let failed = false;
    void this.drain(diskId, q).catch((err: unknown) => {
      // not a full disk (drain survives that): log it and try again shortly rather than crash
      failed = true;
      this.options.log?.error({ cache: this.dir, disk: diskId, err: errorMessage(err) }, `cache ${this.dir}: sending ${diskId} failed; retrying in 5 s`);
      setTimeout(() => this.kick(diskId), 5000).unref();
    }).finally(() => {
      q.running = false;
      if (!failed && q.entries.has(q.lastSent + 1) && !this.closed) this.kick(diskId);
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
          // producers waiting at the memory budget go on; what exceeds it goes to disk
          this.spillIfOffline();
          this.checkRoom();
        }
        await this.transport.reset?.().catch(() => undefined);
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(5000, delay * 2);
      }
    }
  }

  /** The batch queue's maximum message size once learned (seal workers then make binary messages). */
  get knownMaxMessageBytes(): number | undefined {
    return this.learnedMaxMessage;
  }

  /**
   * The batch queue's maximum message size, asked of the transport once (retried like a send
   * while Service Bus is unreachable); undefined if the transport cannot tell.
   */
  private maxMessageBytes(): Promise<number | undefined> {
    const ask = this.transport.maxMessageBytes?.bind(this.transport);
    if (!ask) return Promise.resolve(undefined);
    this.maxMessage ??= (async () => {
      let got: number | undefined;
      const ok = await this.retrying('ask Service Bus for its maximum message size', async () => {
        got = await ask();
      });
      if (!ok) {
        this.maxMessage = undefined; // closed meanwhile: ask again next time
        return undefined;
      }
      this.learnedMaxMessage = got;
      return got;
    })();
    return this.maxMessage;
  }

  private stageEntry(e: Entry): Promise<OutgoingMessage | undefined> {
    return this.slot(async () => {
      const maxMessageBytes = await this.maxMessageBytes();
      const bytes = this.bytesOf(e);
      let message = e.message;
      // made before the queue's limit was known (or for another): made again for this queue
      if (!message || 'binary' in message !== fitsBinaryMessage(bytes.length, maxMessageBytes)) message = outgoingMessage(bytes, maxMessageBytes);
      if ('binary' in message) return message;
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

  /**
   * Raises the durable reservation so that `seq` may be sent. On a full disk (even without the
   * ballast) it waits for space and tries again: never sends beyond a durable reservation.
   */
  private async reserve(q: DiskQueue & { reserved: number }, seq: number): Promise<boolean> {
    if (seq <= q.reserved) return true;
    const before = q.reserved;
    for (;;) {
      if (this.closed) return false;
      q.reserved = seq + RESERVE_AHEAD - 1;
      try {
        this.saveSeq(this.reservedFile, (d) => d.reserved, true);
        return true;
      } catch (err) {
        q.reserved = before;
        if (!isNoSpace(err)) throw err;
        this.noteNoSpace(err);
        await this.spaceEvent();
      }
    }
  }

  private async drain(diskId: string, q: DiskQueue & { reserved: number }): Promise<void> {
    for (;;) {
      const e = q.entries.get(q.lastSent + 1);
      if (!e || this.closed) return;
      e.staged ??= this.stageEntry(e);
      const out = await e.staged;
      if (!out) return;
      if (q.entries.get(e.seq) !== e) continue; // replaced while staging
      if (!(await this.reserve(q, e.seq))) return;
      const ok = await this.retrying(`send ${diskId} ${e.seq}`, async () => {
        if ('binary' in out) {
          await this.options.bucket?.take(e.size);
          await this.transport.send({ body: this.bytesOf(e), contentType: BATCH_CONTENT_TYPE, sessionId: out.sessionId, messageId: out.messageId });
          return;
        }
        if (out.stagedName === undefined) await this.options.bucket?.take(e.size);
        await this.transport.send({ body: out.envelope, contentType: 'application/json', sessionId: out.sessionId, messageId: out.messageId });
      });
      if (!ok || this.closed) return; // closed meanwhile: keep the file, re-send on the next start
      q.entries.delete(e.seq);
      q.lastSent = e.seq;
      this.stats.sentBatches++;
      this.stats.sentBytes += e.size;
      this.drop(e);
      if (++this.sentSinceSave >= 32) this.saveSent();
    }
  }

  /** Saves `sent.json`; skipped on a full disk (a stale one only costs duplicate markers after a crash). */
  private saveSent(): void {
    try {
      this.saveSeq(this.sentFile, (d) => d.lastSent, false);
    } catch (err) {
      if (!isNoSpace(err)) throw err;
    }
  }

  private saveSeq(file: string, pick: (q: DiskQueue & { reserved: number }) => number, fsync: boolean): void {
    const out: SeqFile = {};
    for (const [diskId, q] of this.disks) out[diskId] = { epoch: q.epoch, seq: pick(q) };
    if (file === this.sentFile) this.sentSinceSave = 0;
    this.writeStateFile(file, JSON.stringify(out), fsync);
  }

  /**
   * A clean stop: everything unsent goes to disk, and the reservation falls back to what was
   * sent, so the next start needs no markers. A send still in flight keeps its file (it is
   * re-sent, as a duplicate, on the next start). On a full disk, batches that do not fit are
   * left out (logged): they came after the agent's last checkpoint, so the next run reads them
   * again, under the same sequences; the reservation is then kept as it was.
   */
  close(): void {
    if (!this.closed) {
      this.closed = true;
      let unwritten = 0;
      for (const q of this.disks.values()) {
        for (const e of q.entries.values()) {
          try {
            this.writeEntry(e, true);
          } catch (err) {
            if (!isNoSpace(err)) throw err;
            unwritten++;
          }
        }
      }
      this.saveSent();
      for (const d of [...this.disks.keys()].map((x) => join(this.dir, x)).filter((x) => existsSync(x))) fsyncFile(d);
      if (unwritten > 0) {
        this.options.log?.warn({ cache: this.dir, unwritten }, `cache ${this.dir} full at stop: ${unwritten} unsent batches could not be written; the next run reads them again from the agent's last checkpoint`);
      } else {
        for (const q of this.disks.values()) q.reserved = q.lastSent;
        try {
          this.saveSeq(this.reservedFile, (q) => q.reserved, true);
        } catch (err) {
          if (!isNoSpace(err)) throw err; // the old reservation stands: markers on the next start
        }
      }
    }
    for (const w of [...this.roomWaiters.splice(0), ...this.idleWaiters.splice(0), ...this.stageWaiters.splice(0), ...this.spaceWaiters.splice(0)]) w();
  }
}
