/**
 * A message entity (a queue, a topic subscription, or the dead-letter sub-queue of either):
 * the messages it holds and their states, locks, sessions, delivery counts and timers.
 *
 * Semantics follow Service Bus (https://learn.microsoft.com/azure/service-bus-messaging/
 * message-transfers-locks-settlement, .../message-sessions, .../service-bus-dead-letter-queues):
 * - peek-lock: a delivered message is locked for LockDuration; complete removes it; abandon,
 *   lock expiry or the loss of its session make it available again; after MaxDeliveryCount
 *   deliveries it moves to the dead-letter sub-queue with reason `MaxDeliveryCountExceeded`.
 * - sessions: messages with the same session id (AMQP group_id) are delivered in order to the one
 *   receiver holding the session's lock; the messages' locks are the session's lock.
 * - TTL: min(message TTL, entity DefaultMessageTimeToLive) after the enqueue time; expired
 *   messages are dead-lettered (`TTLExpiredException`) when DeadLetteringOnMessageExpiration is
 *   on, else dropped. Messages in a dead-letter queue never expire.
 *
 * Locks live in memory only; the delivery count is persisted when a delivery ends without a
 * completion (abandon, lock expiry, session release), which is when it can matter later.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { EntitySettings } from './config';
import { encodeMessage, encodePrefix, mergeApplicationProperties, type ParsedMessage, type StoredParts, type DeliveryInfo } from './encoding';
import { BrokerError } from './errors';
import type { MessageStore, StoredMessage } from './store';

export const DEAD_LETTER_SUFFIX = '/$DeadLetterQueue';
/** Service Bus truncates dead-letter reasons and descriptions to 4096 characters. */
const MAX_DEAD_LETTER_TEXT = 4096;

/** A receiving link as the entity sees it. */
export interface Consumer {
  readonly receiveAndDelete: boolean;
  /** How many more messages the link can take now. */
  credit(): number;
  /** Sends one message: `prefix` (header, annotations) followed by `payload` (the stored body). */
  deliver(prefix: Buffer, payload: Buffer, lockToken: string | undefined, msg: Msg): void;
  /** Called after every dispatch pass: nothing more is available for this consumer now. */
  idle(): void;
  /** The session lock expired: the link must be closed. */
  sessionLost(error: BrokerError): void;
  session?: SessionEntry;
}

/** A message in an entity: its stored metadata plus its in-memory state (lock, timers, cache). */
export class Msg implements StoredMessage {
  seq: number;
  entity: string;
  messageId: string;
  sessionId: string | null;
  enqueuedAt: number;
  visibleAt: number;
  expiresAt: number | null;
  state: number;
  deliveryCount: number;
  deadLetterSource: string | null;
  ttlMs: number | null;
  priority: number | null;
  durable: boolean | null;
  annotations: Buffer;
  annCount: number;
  size: number;
  /** Cached body; undefined when only the store has it. */
  payload?: Buffer;
  lockToken?: string;
  lockedUntil = 0;
  owner?: Consumer;
  lockTimer?: TimerHandle;
  ttlTimer?: TimerHandle;
  scheduleTimer?: TimerHandle;
  /** Whether a (possibly stale) entry for this message sits in an availability heap. */
  inHeap = false;

  constructor(m: StoredMessage) {
    this.seq = m.seq;
    this.entity = m.entity;
    this.messageId = m.messageId;
    this.sessionId = m.sessionId;
    this.enqueuedAt = m.enqueuedAt;
    this.visibleAt = m.visibleAt;
    this.expiresAt = m.expiresAt;
    this.state = m.state;
    this.deliveryCount = m.deliveryCount;
    this.deadLetterSource = m.deadLetterSource;
    this.ttlMs = m.ttlMs;
    this.priority = m.priority;
    this.durable = m.durable;
    this.annotations = m.annotations;
    this.annCount = m.annCount;
    this.size = m.size;
  }
}

class Heap<T> {
  private items: T[] = [];
  constructor(private readonly less: (a: T, b: T) => boolean) {}
  get size(): number { return this.items.length; }
  push(x: T): void {
    const a = this.items;
    a.push(x);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(a[i]!, a[p]!)) break;
      [a[i], a[p]] = [a[p]!, a[i]!];
      i = p;
    }
  }
  peek(): T | undefined { return this.items[0]; }
  pop(): T | undefined {
    const a = this.items;
    const top = a[0];
    const last = a.pop();
    if (a.length > 0 && last !== undefined) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && this.less(a[l]!, a[m]!)) m = l;
        if (r < a.length && this.less(a[r]!, a[m]!)) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m]!, a[i]!];
        i = m;
      }
    }
    return top;
  }
}

export interface TimerHandle { at: number; fn: () => void; index: number }

/**
 * Many deadlines on one setTimeout: locks, TTLs, scheduled messages. An indexed heap, so that
 * a cancelled deadline leaves at once (a lock per delivery, a TTL of days per message: lazily
 * dropped entries would pile up under sustained traffic).
 */
export class Timers {
  private readonly heap: TimerHandle[] = [];
  private timer?: NodeJS.Timeout;
  private armedAt = Infinity;
  private closed = false;

  get size(): number { return this.heap.length; }

  schedule(at: number, fn: () => void): TimerHandle {
    const h = { at, fn, index: this.heap.length };
    this.heap.push(h);
    this.up(h.index);
    if (at < this.armedAt) this.arm();
    return h;
  }

  cancel(h: TimerHandle | undefined): void {
    if (!h || h.index < 0) return;
    const i = h.index;
    const last = this.heap.pop()!;
    h.index = -1;
    if (last !== h) {
      this.heap[i] = last;
      last.index = i;
      this.down(i);
      this.up(i);
    }
  }

  private less(i: number, j: number): boolean { return this.heap[i]!.at < this.heap[j]!.at; }
  private swap(i: number, j: number): void {
    const a = this.heap[i]!;
    const b = this.heap[j]!;
    this.heap[i] = b; b.index = i;
    this.heap[j] = a; a.index = j;
  }
  private up(i: number): void {
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(i, p)) break;
      this.swap(i, p);
      i = p;
    }
  }
  private down(i: number): void {
    const n = this.heap.length;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < n && this.less(l, m)) m = l;
      if (r < n && this.less(r, m)) m = r;
      if (m === i) return;
      this.swap(i, m);
      i = m;
    }
  }

  private arm(): void {
    if (this.closed) return;
    if (this.timer) clearTimeout(this.timer);
    const next = this.heap[0];
    if (!next) { this.armedAt = Infinity; this.timer = undefined; return; }
    this.armedAt = next.at;
    this.timer = setTimeout(() => this.fire(), Math.max(0, Math.min(next.at - Date.now(), 2 ** 31 - 1)));
    this.timer.unref();
  }

  private fire(): void {
    this.timer = undefined;
    this.armedAt = Infinity;
    const now = Date.now();
    for (let h = this.heap[0]; h && h.at <= now; h = this.heap[0]) {
      this.cancel(h);
      h.fn();
    }
    this.arm();
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
  }
}

/** Bounded cache of message bodies: oldest first out. */
export class PayloadCache {
  private readonly entries = new Set<Msg>();
  private bytes = 0;
  constructor(private readonly maxBytes: number) {}
  add(m: Msg, payload: Buffer): void {
    if (m.payload) this.remove(m);
    m.payload = payload;
    this.entries.add(m);
    this.bytes += payload.length;
    while (this.bytes > this.maxBytes) {
      const oldest = this.entries.values().next().value as Msg | undefined;
      if (!oldest) break;
      this.remove(oldest);
    }
  }
  remove(m: Msg): void {
    if (m.payload && this.entries.delete(m)) this.bytes -= m.payload.length;
    m.payload = undefined;
  }
}

/** What all entities of a namespace share. */
export interface Core {
  store: MessageStore;
  timers: Timers;
  cache: PayloadCache;
  log: Logger;
  nextSeq(): number;
}

export class SessionEntry {
  readonly heap = new Heap<Msg>((a, b) => a.seq < b.seq);
  owner?: Consumer;
  lockedUntil = 0;
  lockTimer?: TimerHandle;
  state?: Buffer;
  /** Messages of this session in the entity, whatever their state. */
  count = 0;
  readonly locked = new Set<Msg>();
  constructor(readonly id: string) {}
}

interface SessionWaiter {
  consumer: Consumer;
  resolve: (s: SessionEntry) => void;
  reject: (e: BrokerError) => void;
  timer: NodeJS.Timeout;
}

export interface SettleOptions {
  propertiesToModify?: Record<string, unknown>;
  deadLetterReason?: string;
  deadLetterDescription?: string;
}

export type Disposition = 'complete' | 'abandon' | 'defer' | 'deadletter';

export class Entity {
  /** Lower-cased path: the key in the store and in lookups. */
  readonly key: string;
  readonly messages = new Map<number, Msg>();
  readonly sessions = new Map<string, SessionEntry>();
  readonly consumers = new Set<Consumer>();
  private readonly locks = new Map<string, Msg>();
  private readonly available = new Heap<Msg>((a, b) => a.seq < b.seq);
  private waiters: SessionWaiter[] = [];
  /** Whether `messages` iterates in sequence order (false after an out-of-order insert). */
  private ordered = true;
  private lastSeq = 0;
  private dispatchQueued = false;
  /** Payload bytes held by this entity and its dead-letter queue (the quota counts both). */
  private bytesHeld = 0;
  private readonly spaceListeners = new Set<() => void>();
  deadLetterQueue?: Entity;

  constructor(
    readonly path: string,
    readonly settings: EntitySettings,
    private readonly core: Core,
    readonly parent?: Entity,
  ) {
    this.key = path.toLowerCase();
    if (!parent) {
      this.deadLetterQueue = new Entity(path + DEAD_LETTER_SUFFIX,
        { ...settings, requiresSession: false, defaultTtlMs: Infinity }, core, this);
    }
  }

  get isDeadLetterQueue(): boolean { return this.parent !== undefined; }
  get requiresSession(): boolean { return this.settings.requiresSession; }
  get messageCount(): number { return this.messages.size; }

  private quotaOwner(): Entity { return this.parent ?? this; }
  get sizeBytes(): number { return this.quotaOwner().bytesHeld; }
  /** Over MaxSizeInMegabytes: senders get no more link credit until consumers catch up. */
  isFull(): boolean { return this.sizeBytes >= this.settings.maxSizeBytes; }
  onSpace(fn: () => void): void { this.quotaOwner().spaceListeners.add(fn); }
  offSpace(fn: () => void): void { this.quotaOwner().spaceListeners.delete(fn); }

  private account(delta: number): void {
    const owner = this.quotaOwner();
    const wasFull = owner.bytesHeld >= owner.settings.maxSizeBytes;
    owner.bytesHeld += delta;
    if (wasFull && owner.bytesHeld < owner.settings.maxSizeBytes) {
      for (const fn of [...owner.spaceListeners]) fn();
    }
  }

  // ---- adding messages ----

  /**
   * Stores a new message. It becomes visible once the store has committed it; `afterCommit`
   * callbacks registered after this call run after that.
   */
  enqueue(p: ParsedMessage, now: number, overrides: { scheduledAt?: number } = {}): Msg {
    const seq = this.core.nextSeq();
    const scheduledAt = overrides.scheduledAt ?? p.scheduledAt;
    const visibleAt = scheduledAt !== undefined && scheduledAt > now ? scheduledAt : now;
    const ttl = Math.min(p.ttlMs ?? Infinity, this.settings.defaultTtlMs);
    const m = new Msg({
      seq, entity: this.key, messageId: p.messageId, sessionId: p.sessionId,
      enqueuedAt: visibleAt, visibleAt, expiresAt: Number.isFinite(ttl) ? visibleAt + ttl : null,
      state: visibleAt > now ? 2 : 0, deliveryCount: 0, deadLetterSource: null,
      ttlMs: p.ttlMs ?? null, priority: p.priority ?? null, durable: p.durable ?? null,
      annotations: p.annotations, annCount: p.annCount, size: p.payload.length,
    });
    this.core.store.insert(m, p.payload);
    this.core.cache.add(m, p.payload);
    this.add(m);
    this.core.store.afterCommit(() => { if (this.messages.get(m.seq) === m) this.activate(m, Date.now()); });
    return m;
  }

  /** Restores a message loaded from the store at startup. */
  restore(s: StoredMessage, now: number): void {
    const m = new Msg(s);
    if (m.state === 2 && m.visibleAt <= now) m.state = 0;
    this.add(m);
    this.activate(m, now);
  }

  private add(m: Msg): void {
    if (m.seq < this.lastSeq) this.ordered = false;
    this.lastSeq = Math.max(this.lastSeq, m.seq);
    this.messages.set(m.seq, m);
    this.account(m.size);
    if (m.sessionId !== null && this.requiresSession) this.session(m.sessionId).count++;
  }

  private remove(m: Msg): void {
    if (this.messages.get(m.seq) !== m) return;
    this.messages.delete(m.seq);
    this.account(-m.size);
    m.inHeap = false;
    this.core.timers.cancel(m.ttlTimer);
    this.core.timers.cancel(m.lockTimer);
    this.core.timers.cancel(m.scheduleTimer);
    if (m.lockToken) this.locks.delete(m.lockToken);
    this.core.cache.remove(m);
    if (m.sessionId !== null && this.requiresSession) {
      const s = this.sessions.get(m.sessionId);
      if (s) {
        s.count--;
        s.locked.delete(m);
        this.maybeForgetSession(s);
      }
    }
  }

  /** Makes a committed message available, or arms its schedule/expiry timers. */
  private activate(m: Msg, now: number): void {
    if (m.expiresAt !== null && !this.isDeadLetterQueue) {
      this.core.timers.cancel(m.ttlTimer);
      m.ttlTimer = this.core.timers.schedule(m.expiresAt, () => this.expireIfDue(m));
    }
    if (m.state === 2) {
      m.scheduleTimer = this.core.timers.schedule(m.visibleAt, () => {
        if (this.messages.get(m.seq) === m && m.state === 2) {
          m.state = 0;
          this.makeAvailable(m);
        }
      });
      return;
    }
    if (m.state === 0) {
      if (m.expiresAt !== null && m.expiresAt <= now && !this.isDeadLetterQueue) this.expire(m);
      else this.makeAvailable(m);
    }
  }

  private makeAvailable(m: Msg): void {
    if (m.inHeap) return;
    m.inHeap = true;
    if (m.sessionId !== null && this.requiresSession) {
      const s = this.session(m.sessionId);
      s.heap.push(m);
      if (!s.owner) this.serveWaiters();
    } else {
      this.available.push(m);
    }
    this.scheduleDispatch();
  }

  // ---- delivering ----

  addConsumer(c: Consumer): void {
    this.consumers.add(c);
    this.scheduleDispatch();
  }

  /** The consumer's link closed: a session it held is released, its messages redelivered. */
  removeConsumer(c: Consumer): void {
    this.consumers.delete(c);
    this.waiters = this.waiters.filter((w) => {
      if (w.consumer !== c) return true;
      clearTimeout(w.timer);
      return false;
    });
    if (c.session && c.session.owner === c) this.releaseSession(c.session);
  }

  scheduleDispatch(): void {
    if (this.dispatchQueued) return;
    this.dispatchQueued = true;
    queueMicrotask(() => {
      this.dispatchQueued = false;
      this.dispatch();
    });
  }

  /** Hands available messages to consumers with credit, round-robin. */
  dispatch(): void {
    const now = Date.now();
    if (this.requiresSession) {
      for (const c of this.consumers) {
        const s = c.session;
        if (!s || s.owner !== c) continue;
        while (c.credit() > 0) {
          const m = this.popFrom(s.heap, now);
          if (!m) break;
          this.deliver(c, m, now);
        }
      }
    } else {
      let progress = true;
      while (progress) {
        progress = false;
        for (const c of this.consumers) {
          if (c.credit() <= 0) continue;
          const m = this.popFrom(this.available, now);
          if (!m) break;
          this.deliver(c, m, now);
          progress = true;
        }
      }
    }
    // Nothing more for any consumer now: a drain it asked for is answered, whether credit is
    // left to give up or its deliveries used it all (completeDrain).
    for (const c of this.consumers) c.idle();
  }

  private popFrom(heap: Heap<Msg>, now: number): Msg | undefined {
    for (let m = heap.pop(); m; m = heap.pop()) {
      if (!m.inHeap || this.messages.get(m.seq) !== m || m.state !== 0 || m.lockToken) continue;
      m.inHeap = false;
      if (m.expiresAt !== null && m.expiresAt <= now && !this.isDeadLetterQueue) {
        this.expire(m);
        continue;
      }
      return m;
    }
    return undefined;
  }

  payloadOf(m: Msg): Buffer {
    if (m.payload) return m.payload;
    const p = this.core.store.readPayload(m.seq);
    if (!p) throw new Error(`message ${m.seq} has no stored body`);
    return p;
  }

  private parts(m: Msg, lockedUntil?: number): [StoredParts, DeliveryInfo] {
    return [
      { annotations: m.annotations, annCount: m.annCount, payload: this.payloadOf(m), ttlMs: m.ttlMs, priority: m.priority, durable: m.durable },
      { sequenceNumber: m.seq, enqueuedAt: m.enqueuedAt, lockedUntil, state: m.state, deadLetterSource: m.deadLetterSource, deliveryCount: m.deliveryCount },
    ];
  }

  /** The message as one buffer (for `$management` replies). */
  encode(m: Msg, lockedUntil?: number): Buffer {
    return encodeMessage(...this.parts(m, lockedUntil));
  }

  private deliver(c: Consumer, m: Msg, now: number): void {
    if (c.receiveAndDelete) {
      const [parts, info] = this.parts(m);
      this.remove(m);
      this.core.store.delete(m.seq);
      c.deliver(encodePrefix(parts, info), parts.payload, undefined, m);
      return;
    }
    const token = this.lock(m, now, c);
    const [parts, info] = this.parts(m, m.lockedUntil);
    m.deliveryCount++;
    c.deliver(encodePrefix(parts, info), parts.payload, token, m);
  }

  private lock(m: Msg, now: number, owner?: Consumer): string {
    const token = randomUUID();
    m.lockToken = token;
    m.owner = owner;
    this.locks.set(token, m);
    const s = m.sessionId !== null && this.requiresSession ? this.sessions.get(m.sessionId) : undefined;
    if (s && s.owner && s.owner === owner) {
      // A session's messages are locked by the session lock (renewSessionLock), not one by one.
      m.lockedUntil = s.lockedUntil;
      s.locked.add(m);
    } else {
      m.lockedUntil = now + this.settings.lockDurationMs;
      this.armLockTimer(m);
    }
    return token;
  }

  private armLockTimer(m: Msg): void {
    this.core.timers.cancel(m.lockTimer);
    const token = m.lockToken;
    m.lockTimer = this.core.timers.schedule(m.lockedUntil, () => {
      if (m.lockToken === token && this.messages.get(m.seq) === m) {
        this.core.log.debug({ entity: this.path, seq: m.seq }, 'message lock expired');
        this.unlock(m);
        this.release(m);
      }
    });
  }

  private unlock(m: Msg): void {
    if (m.lockToken) this.locks.delete(m.lockToken);
    this.core.timers.cancel(m.lockTimer);
    m.lockTimer = undefined;
    m.lockToken = undefined;
    m.owner = undefined;
    m.lockedUntil = 0;
    if (m.sessionId !== null && this.requiresSession) this.sessions.get(m.sessionId)?.locked.delete(m);
  }

  /** A delivery ended without completion: back to available, or to the dead-letter queue. */
  private release(m: Msg): void {
    if (!this.isDeadLetterQueue && m.deliveryCount >= this.settings.maxDeliveryCount) {
      this.deadLetter(m, {
        deadLetterReason: 'MaxDeliveryCountExceeded',
        deadLetterDescription: `Message could not be consumed after ${this.settings.maxDeliveryCount} delivery attempts.`,
      });
      return;
    }
    this.core.store.update(m.seq, { deliveryCount: m.deliveryCount });
    if (m.state !== 0) return;
    if (m.expiresAt !== null && m.expiresAt <= Date.now() && !this.isDeadLetterQueue) this.expire(m);
    else this.makeAvailable(m);
  }

  // ---- settling ----

  /** The locked message for a lock token, or a lock-lost error. */
  lockedMessage(lockToken: string, now = Date.now()): Msg {
    const m = this.locks.get(lockToken.toLowerCase());
    if (!m || m.lockedUntil < now) {
      if (m && m.sessionId !== null && this.requiresSession && m.owner) throw BrokerError.sessionLockLost(m.sessionId);
      throw BrokerError.lockLost();
    }
    return m;
  }

  /** Applies a settlement. The caller answers once the store has committed it. */
  settle(lockToken: string, disposition: Disposition, options: SettleOptions = {}): void {
    const m = this.lockedMessage(lockToken);
    this.unlock(m);
    switch (disposition) {
      case 'complete':
        this.remove(m);
        this.core.store.delete(m.seq);
        break;
      case 'abandon':
        this.modifyProperties(m, options.propertiesToModify);
        this.release(m);
        break;
      case 'defer':
        this.modifyProperties(m, options.propertiesToModify);
        m.state = 1;
        this.core.store.update(m.seq, { state: 1, deliveryCount: m.deliveryCount });
        break;
      case 'deadletter':
        this.deadLetter(m, options);
        break;
    }
  }

  private modifyProperties(m: Msg, props: Record<string, unknown> | undefined): void {
    if (!props || Object.keys(props).length === 0) return;
    const payload = mergeApplicationProperties(this.payloadOf(m), props);
    this.account(payload.length - m.size);
    m.size = payload.length;
    this.core.cache.add(m, payload);
    this.core.store.update(m.seq, { payload });
  }

  /** Moves a message to the dead-letter sub-queue, keeping its sequence number. */
  private deadLetter(m: Msg, options: SettleOptions): void {
    const dlq = this.deadLetterQueue;
    if (!dlq) {
      // Already in a dead-letter queue: Service Bus leaves it there.
      this.modifyProperties(m, options.propertiesToModify);
      this.release(m);
      return;
    }
    const props: Record<string, unknown> = { ...options.propertiesToModify };
    if (options.deadLetterReason !== undefined) props.DeadLetterReason = String(options.deadLetterReason).slice(0, MAX_DEAD_LETTER_TEXT);
    if (options.deadLetterDescription !== undefined) props.DeadLetterErrorDescription = String(options.deadLetterDescription).slice(0, MAX_DEAD_LETTER_TEXT);
    const payload = mergeApplicationProperties(this.payloadOf(m), props);
    this.remove(m);
    const moved = new Msg({ ...m, entity: dlq.key, state: 0, expiresAt: null, size: payload.length });
    dlq.add(moved);
    this.core.cache.add(moved, payload);
    this.core.store.update(m.seq, { entity: dlq.key, state: 0, expiresAt: null, deliveryCount: m.deliveryCount, payload });
    this.core.store.afterCommit(() => { if (dlq.messages.get(moved.seq) === moved) dlq.makeAvailable(moved); });
  }

  private expireIfDue(m: Msg): void {
    if (this.messages.get(m.seq) !== m || m.lockToken || m.expiresAt === null) return;
    if (m.expiresAt <= Date.now()) this.expire(m);
  }

  private expire(m: Msg): void {
    if (this.messages.get(m.seq) !== m) return;
    m.inHeap = false;
    if (this.settings.deadLetteringOnMessageExpiration) {
      this.deadLetter(m, { deadLetterReason: 'TTLExpiredException', deadLetterDescription: 'The message expired and was dead lettered.' });
    } else {
      this.remove(m);
      this.core.store.delete(m.seq);
    }
  }

  renewLock(lockToken: string): number {
    const m = this.lockedMessage(lockToken);
    const now = Date.now();
    const s = m.sessionId !== null && this.requiresSession ? this.sessions.get(m.sessionId) : undefined;
    if (s && s.locked.has(m)) return s.lockedUntil;
    m.lockedUntil = now + this.settings.lockDurationMs;
    this.armLockTimer(m);
    return m.lockedUntil;
  }

  // ---- management operations ----

  /** Peeks messages from `fromSeq` on, in sequence order, whatever their state. */
  peek(fromSeq: number, count: number, sessionId?: string): Msg[] {
    const out: Msg[] = [];
    const match = (m: Msg): boolean => m.seq >= fromSeq && (sessionId === undefined || m.sessionId === sessionId);
    if (this.ordered) {
      for (const m of this.messages.values()) {
        if (!match(m)) continue;
        out.push(m);
        if (out.length >= count) break;
      }
      return out;
    }
    for (const m of this.messages.values()) if (match(m)) out.push(m);
    return out.sort((a, b) => a.seq - b.seq).slice(0, count);
  }

  /** Locks deferred messages by sequence number (receiveDeferredMessages). */
  receiveDeferred(seqs: number[], receiveAndDelete: boolean, sessionId?: string): Array<{ bytes: Buffer; lockToken?: string }> {
    const now = Date.now();
    const found = seqs.map((seq) => {
      const m = this.messages.get(seq);
      if (!m || m.state !== 1 || (sessionId !== undefined && m.sessionId !== sessionId)) {
        throw BrokerError.messageNotFound(`Failed to retrieve the deferred message with sequence number ${seq}: it does not exist or is not deferred.`);
      }
      if (m.lockToken) throw BrokerError.lockLost();
      return m;
    });
    return found.map((m) => {
      if (receiveAndDelete) {
        const bytes = this.encode(m);
        this.remove(m);
        this.core.store.delete(m.seq);
        return { bytes };
      }
      const lockToken = this.lock(m, now);
      const bytes = this.encode(m, m.lockedUntil);
      m.deliveryCount++;
      return { bytes, lockToken };
    });
  }

  /** Cancels scheduled messages; unknown or already enqueued ones are ignored. */
  cancelScheduled(seqs: number[]): void {
    for (const seq of seqs) {
      const m = this.messages.get(seq);
      if (m && m.state === 2) {
        this.remove(m);
        this.core.store.delete(seq);
      }
    }
  }

  // ---- sessions ----

  private session(id: string): SessionEntry {
    let s = this.sessions.get(id);
    if (!s) {
      s = new SessionEntry(id);
      this.sessions.set(id, s);
    }
    return s;
  }

  private maybeForgetSession(s: SessionEntry): void {
    if (s.count <= 0 && !s.owner && !s.state) this.sessions.delete(s.id);
  }

  restoreSessionState(sessionId: string, state: Buffer): void {
    this.session(sessionId).state = state;
  }

  private hasAvailable(s: SessionEntry, now: number): boolean {
    // popFrom drops stale heap entries and expires what is due; put the head back.
    const m = this.popFrom(s.heap, now);
    if (!m) return false;
    m.inHeap = true;
    s.heap.push(m);
    return true;
  }

  /**
   * Locks a session for a consumer: a named one (acceptSession), or the next one with
   * available messages (acceptNextSession), waiting up to `timeoutMs` for one to free up.
   */
  acceptSession(c: Consumer, sessionId: string | null, timeoutMs: number): Promise<SessionEntry> {
    const now = Date.now();
    if (sessionId !== null) {
      const s = this.session(sessionId);
      if (s.owner && s.owner !== c && s.lockedUntil >= now) {
        this.maybeForgetSession(s);
        return Promise.reject(BrokerError.sessionCannotBeLocked(sessionId));
      }
      const previous = s.owner;
      if (previous) {
        // Its lock expired (the timer has not fired yet): the old receiver loses the session.
        this.releaseSession(s);
        previous.sessionLost(BrokerError.sessionLockLost(sessionId));
      }
      this.bind(s, c, now);
      return Promise.resolve(s);
    }
    const free = this.findFreeSession(now);
    if (free) {
      this.bind(free, c, now);
      return Promise.resolve(free);
    }
    return new Promise((resolve, reject) => {
      const waiter: SessionWaiter = {
        consumer: c, resolve, reject,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((w) => w !== waiter);
          reject(BrokerError.timeout(`No unlocked session with messages became available in ${timeoutMs} ms.`));
        }, timeoutMs),
      };
      this.waiters.push(waiter);
    });
  }

  private findFreeSession(now: number): SessionEntry | undefined {
    for (const s of this.sessions.values()) {
      if (!s.owner && this.hasAvailable(s, now)) return s;
    }
    return undefined;
  }

  private serveWaiters(): void {
    if (this.waiters.length === 0) return;
    const now = Date.now();
    while (this.waiters.length > 0) {
      const s = this.findFreeSession(now);
      if (!s) return;
      const w = this.waiters.shift()!;
      clearTimeout(w.timer);
      this.bind(s, w.consumer, now);
      w.resolve(s);
    }
  }

  private bind(s: SessionEntry, c: Consumer, now: number): void {
    s.owner = c;
    c.session = s;
    s.lockedUntil = now + this.settings.lockDurationMs;
    this.armSessionTimer(s);
  }

  private armSessionTimer(s: SessionEntry): void {
    this.core.timers.cancel(s.lockTimer);
    const owner = s.owner;
    s.lockTimer = this.core.timers.schedule(s.lockedUntil, () => {
      if (s.owner !== owner || !owner || s.lockedUntil > Date.now()) return;
      this.core.log.debug({ entity: this.path, sessionId: s.id }, 'session lock expired');
      this.releaseSession(s);
      owner.sessionLost(BrokerError.sessionLockLost(s.id));
    });
  }

  /** Ends a consumer's hold on a session: its locked messages become available again. */
  releaseSession(s: SessionEntry): void {
    const owner = s.owner;
    this.core.timers.cancel(s.lockTimer);
    s.owner = undefined;
    s.lockedUntil = 0;
    if (owner && owner.session === s) owner.session = undefined;
    for (const m of [...s.locked]) {
      this.unlock(m);
      this.release(m);
    }
    this.maybeForgetSession(s);
    this.serveWaiters();
  }

  /** The session a `$management` request names, checked to be held by a live receiver. */
  heldSession(sessionId: string): SessionEntry {
    const s = this.sessions.get(sessionId);
    if (!s || !s.owner || s.lockedUntil < Date.now()) throw BrokerError.sessionLockLost(sessionId);
    return s;
  }

  renewSessionLock(sessionId: string): number {
    const s = this.heldSession(sessionId);
    s.lockedUntil = Date.now() + this.settings.lockDurationMs;
    for (const m of s.locked) m.lockedUntil = s.lockedUntil;
    this.armSessionTimer(s);
    return s.lockedUntil;
  }

  getSessionState(sessionId: string): Buffer | undefined {
    return this.sessions.get(sessionId)?.state;
  }

  setSessionState(sessionId: string, state: Buffer | null): void {
    const s = this.session(sessionId);
    s.state = state && state.length > 0 ? Buffer.from(state) : undefined;
    this.core.store.setSessionState(this.key, sessionId, s.state ?? null);
    this.maybeForgetSession(s);
  }

  close(): void {
    for (const w of this.waiters) clearTimeout(w.timer);
    this.waiters = [];
  }
}
