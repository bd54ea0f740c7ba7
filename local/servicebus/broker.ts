/**
 * The AMQP side of the emulator: a rhea container in server mode that speaks the subset of the
 * Service Bus protocol the @azure/service-bus SDK uses (shared/notes/servicebus-amqp.md):
 * CBS put-token (`$cbs`), entity send and receive links, session receivers, settlement over the
 * link, and the `<entity>/$management` request/response node.
 *
 * Flow control: a sender link gets credit in a small window, topped up only after the store has
 * committed what it sent and only while the entity is under its MaxSizeInMegabytes. A full queue
 * therefore makes senders wait for credit (their sends time out after the SDK's retry policy)
 * instead of being refused with quota-exceeded as real Service Bus does; memory stays bounded by
 * the windows.
 */
import { hostname, networkInterfaces } from 'node:os';
import type { AddressInfo, Server } from 'node:net';
import type * as rhea from 'rhea';
import { rhea as amqp } from './rhea';
import type { Logger } from 'pino';
import type { NamespaceConfig } from './config';
import {
  BATCH_FORMAT, decodeBatchEnvelope, longToNumber, parseMessage, toDotNetGuidBytes, toDotNetTicks,
  uuidToBytes, type ParsedMessage,
} from './encoding';
import { BrokerError, errorCondition, isBrokerError } from './errors';
import { handleManagementRequest } from './management';
import { RAW_FORMAT, answerEveryDrain, completeDrain, dropLateFrames, credit, holdAttach, outcomes, receiveRaw, sendParts, senderCredit, tuneOutput, type RawDelivery } from './amqp';
import { Entity, PayloadCache, Timers, type Consumer, type Core, type Disposition, type Msg, type SettleOptions } from './queue';
import { audienceCovers, audienceParts, verifySasToken, type SharedAccessKey } from './sas';
import type { MessageStore } from './store';

/** Link credit granted to a sender link: bounds the bytes in flight per link. */
const SENDER_CREDIT_WINDOW = 100;
const DEFAULT_ACCEPT_SESSION_TIMEOUT_MS = 60_000;
const SESSION_FILTER = 'com.microsoft:session-filter';

export interface BrokerOptions {
  config: NamespaceConfig;
  store: MessageStore;
  logger: Logger;
  keys: SharedAccessKey[];
  /** Bytes of message bodies kept in memory (the store has them all). Default 64 MiB. */
  cacheBytes?: number;
}

interface Topic {
  name: string;
  maxMessageSizeBytes: number;
  subscriptions: Entity[];
}

interface ConnState {
  /** Audience path (lower case) -> token expiry (ms). */
  tokens: Map<string, number>;
  /** Reply links by link name and by target address. */
  replyLinks: Map<string, rhea.Sender>;
  consumers: Set<LinkConsumer>;
  incoming: Set<rhea.Receiver>;
}

type IncomingRole =
  | { kind: 'cbs' }
  | { kind: 'management'; entity: Entity }
  | { kind: 'send'; targets: Entity[]; maxBytes: number; requiresSession: boolean; spaceFn: () => void };

/** A broker sender link attached to an entity (the SDK's receiver). */
class LinkConsumer implements Consumer {
  readonly receiveAndDelete: boolean;
  session?: Consumer['session'];
  closed = false;

  constructor(readonly link: rhea.Sender, readonly entity: Entity) {
    this.receiveAndDelete = link.snd_settle_mode === 1;
  }

  credit(): number {
    if (this.closed || !this.link.is_open()) return 0;
    return senderCredit(this.link);
  }

  deliver(prefix: Buffer, payload: Buffer, lockToken: string | undefined, msg: Msg): void {
    const tag = lockToken ? toDotNetGuidBytes(uuidToBytes(lockToken)) : Buffer.from(`${msg.seq}`);
    const d = sendParts(this.link, prefix, payload, tag);
    if (lockToken) d.sbLockToken = lockToken;
  }

  idle(): void {
    completeDrain(this.link);
  }

  sessionLost(error: BrokerError): void {
    if (this.closed) return;
    this.closed = true;
    this.entity.removeConsumer(this);
    this.link.close(error.toAmqp());
  }
}

export class Broker {
  private readonly container: rhea.Container;
  private readonly entities = new Map<string, Entity>();
  private readonly topics = new Map<string, Topic>();
  private readonly core: Core;
  private readonly conns = new WeakMap<rhea.Connection, ConnState>();
  private readonly roles = new WeakMap<rhea.Receiver, IncomingRole>();
  private readonly consumersByLink = new WeakMap<rhea.Sender, LinkConsumer>();
  private readonly openConnections = new Set<rhea.Connection>();
  private server?: Server;
  private seq = 0;
  host = '127.0.0.1';
  port = 0;
  /** Host names a token audience may carry (isOwnHost), computed once. */
  private ownHosts: Set<string> | undefined;

  constructor(private readonly options: BrokerOptions) {
    const log = options.logger;
    this.core = {
      store: options.store,
      timers: new Timers(),
      cache: new PayloadCache(options.cacheBytes ?? 64 * 1024 * 1024),
      log,
      nextSeq: () => ++this.seq,
    };
    for (const q of options.config.queues) this.addEntity(new Entity(q.name, q, this.core));
    for (const t of options.config.topics) {
      const subs = t.subscriptions.map((s) => new Entity(s.name, s, this.core));
      subs.forEach((s) => this.addEntity(s));
      this.topics.set(t.name.toLowerCase(), { name: t.name, maxMessageSizeBytes: t.maxMessageSizeBytes, subscriptions: subs });
    }
    this.restore();
    this.container = amqp.create_container({
      id: 'ferry-servicebus-emulator',
      // Abandon and defer arrive as `modified`; rhea would otherwise report them as `released`.
      treat_modified_as_released: false,
      autoaccept: false,
      credit_window: 0,
      // Small frames (dispositions, flows) must not wait for Nagle + delayed ACK (~40 ms each).
      tcp_no_delay: true,
    } as rhea.ContainerOptions);
    this.wire();
  }

  get queueCount(): number {
    return this.options.config.queues.length;
  }

  private addEntity(e: Entity): void {
    this.entities.set(e.key, e);
    if (e.deadLetterQueue) this.entities.set(e.deadLetterQueue.key, e.deadLetterQueue);
  }

  private restore(): void {
    const loaded = this.options.store.load();
    this.seq = loaded.maxSeq;
    const now = Date.now();
    let orphans = 0;
    for (const m of loaded.messages) {
      const e = this.entities.get(m.entity);
      if (e) e.restore(m, now);
      else orphans++;
    }
    for (const s of loaded.sessionStates) this.entities.get(s.entity)?.restoreSessionState(s.sessionId, s.state);
    if (loaded.messages.length > 0) this.options.logger.info({ messages: loaded.messages.length }, 'restored messages from the store');
    if (orphans > 0) this.options.logger.warn({ messages: orphans }, 'stored messages belong to entities no longer configured; they are kept but not served');
  }

  listen(port: number, host: string): Promise<void> {
    this.host = host;
    return new Promise((resolve, reject) => {
      const server = this.container.listen({ port, host }) as unknown as Server;
      this.server = server;
      server.once('error', reject);
      server.once('listening', () => {
        server.off('error', reject);
        this.port = (server.address() as AddressInfo).port;
        resolve();
      });
    });
  }

  /** Stops listening, closes every client connection, then commits and closes the store. */
  async close(): Promise<void> {
    const server = this.server;
    // server.close() only calls back once every connection has ended: end them first.
    const closed = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
    for (const c of this.openConnections) {
      try { c.close({ condition: 'amqp:connection:forced', description: 'The Service Bus emulator is shutting down.' }); } catch { /* already gone */ }
    }
    // Give rhea a turn to write the close frames, then drop the sockets.
    await new Promise((r) => setTimeout(r, 20));
    for (const c of this.openConnections) {
      const socket = (c as unknown as { socket?: { destroy(): void } }).socket;
      socket?.destroy();
    }
    this.openConnections.clear();
    await closed;
    for (const e of this.entities.values()) e.close();
    this.core.timers.close();
    this.options.store.close();
  }

  // ---- wiring ----

  private state(conn: rhea.Connection): ConnState {
    let s = this.conns.get(conn);
    if (!s) {
      s = { tokens: new Map(), replyLinks: new Map(), consumers: new Set(), incoming: new Set() };
      this.conns.set(conn, s);
    }
    return s;
  }

  private wire(): void {
    const c = this.container;
    c.on('connection_open', (ctx: rhea.EventContext) => {
      this.openConnections.add(ctx.connection);
      this.state(ctx.connection);
      tuneOutput(ctx.connection);
      dropLateFrames(ctx.connection, (frame, channel) => this.options.logger.debug({ frame, channel }, 'AMQP frame for a session already ended; dropped'));
    });
    const dropConnection = (ctx: rhea.EventContext): void => {
      this.openConnections.delete(ctx.connection);
      const s = this.conns.get(ctx.connection);
      if (!s) return;
      for (const consumer of s.consumers) this.dropConsumer(consumer);
      for (const r of s.incoming) this.dropIncoming(r);
      s.consumers.clear();
      s.incoming.clear();
    };
    c.on('connection_close', dropConnection);
    c.on('disconnected', dropConnection);
    c.on('connection_error', () => undefined);
    c.on('error', (err: unknown) => this.options.logger.debug({ err }, 'AMQP link error'));

    // Every transfer undecoded: the broker stores the bytes as sent.
    c.on('session_open', (ctx: rhea.EventContext) => receiveRaw(ctx.session!));

    c.on('sender_open', (ctx: rhea.EventContext) => this.onSenderOpen(ctx.sender!));
    c.on('receiver_open', (ctx: rhea.EventContext) => this.onReceiverOpen(ctx.receiver!));
    c.on('sender_close', (ctx: rhea.EventContext) => {
      const consumer = this.consumersByLink.get(ctx.sender!);
      if (consumer) this.dropConsumer(consumer);
      const s = this.conns.get(ctx.connection);
      if (s) for (const [k, v] of s.replyLinks) if (v === ctx.sender) s.replyLinks.delete(k);
    });
    c.on('receiver_close', (ctx: rhea.EventContext) => this.dropIncoming(ctx.receiver!));

    c.on('message', (ctx: rhea.EventContext) => {
      const receiver = ctx.receiver!;
      const role = this.roles.get(receiver);
      const delivery = ctx.delivery as RawDelivery;
      const raw = ctx.message as unknown as Buffer;
      const format = (ctx as unknown as { format?: number }).format ?? 0;
      if (!role) {
        // A transfer on a link the broker refused or already dropped: settle it, never hold it.
        delivery.update(true, outcomes.rejected({ error: { condition: 'amqp:not-allowed', description: 'The link is not attached to an entity.' } }).described());
        return;
      }
      try {
        if (role.kind === 'send') this.onSend(receiver, role, delivery, raw, format === RAW_FORMAT ? 0 : format);
        else if (role.kind === 'cbs') this.onCbs(ctx.connection, outcomes.decode(raw));
        else this.onManagement(ctx.connection, role.entity, outcomes.decode(raw));
      } catch (err) {
        this.options.logger.warn({ err }, 'failed to handle a transfer');
        delivery.update(true, outcomes.rejected({ error: errorCondition(err) }).described());
      }
      if (role.kind !== 'send') {
        delivery.update(true, outcomes.accepted().described());
        receiver.add_credit(1);
      }
    });

    for (const outcome of ['accepted', 'released', 'rejected', 'modified'] as const) {
      c.on(outcome, (ctx: rhea.EventContext) => this.onSettlement(ctx.sender!, ctx.delivery as RawDelivery, outcome));
    }
    c.on('sendable', (ctx: rhea.EventContext) => this.consumersByLink.get(ctx.sender!)?.entity.scheduleDispatch());
    c.on('sender_flow', (ctx: rhea.EventContext) => this.consumersByLink.get(ctx.sender!)?.entity.scheduleDispatch());
  }

  private dropConsumer(consumer: LinkConsumer): void {
    if (consumer.closed) return;
    consumer.closed = true;
    consumer.entity.removeConsumer(consumer);
    this.conns.get(consumer.link.connection)?.consumers.delete(consumer);
  }

  private dropIncoming(r: rhea.Receiver): void {
    const role = this.roles.get(r);
    if (role?.kind === 'send') for (const t of role.targets) t.offSpace(role.spaceFn);
    this.roles.delete(r);
    this.conns.get(r.connection)?.incoming.delete(r);
  }

  /** Refuses a link attach: attach reply without terminus, then detach with the error. */
  private refuse(link: rhea.Sender | rhea.Receiver, err: BrokerError): void {
    this.options.logger.debug({ link: link.name, condition: err.condition }, err.message);
    link.close(err.toAmqp());
  }

  private entityFor(address: string): Entity | undefined {
    return this.entities.get(address.replace(/^\/+/, '').toLowerCase());
  }

  private authorize(conn: rhea.Connection, path: string): void {
    const s = this.state(conn);
    const now = Date.now();
    for (const [aud, exp] of s.tokens) if (exp > now && audienceCovers(aud, path)) return;
    throw BrokerError.unauthorized(`No valid token for '${path}': send a CBS put-token with a SAS token for it first.`);
  }

  /**
   * Whether a token audience's host names this emulator: its listen address, a loopback name,
   * this machine's name or one of its addresses, or the config's namespace (bare or as
   * `<namespace>.servicebus.windows.net`). Clients reach it by any of these.
   */
  private isOwnHost(host: string): boolean {
    if (this.ownHosts === undefined) {
      const ns = this.options.config.namespace.toLowerCase();
      const addresses = Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((a) => a.address.toLowerCase()));
      this.ownHosts = new Set([this.host.toLowerCase(), 'localhost', '::1', hostname().toLowerCase(), ns, `${ns}.servicebus.windows.net`, ...addresses]);
    }
    return this.ownHosts.has(host) || /^127\.\d+\.\d+\.\d+$/.test(host) || (this.host === '0.0.0.0' && host === '0.0.0.0');
  }

  private qualified(path: string): string {
    return `sb://${this.host}:${this.port}/${path}`;
  }

  // ---- links ----

  private onSenderOpen(sender: rhea.Sender): void {
    const source = sender.source as { address?: string; filter?: Record<string, unknown> } | null;
    const address = source?.address ?? '';
    sender.set_target(sender.target ?? {});
    const conn = this.state(sender.connection);
    if (address === '$cbs' || address.toLowerCase().endsWith('/$management')) {
      sender.set_source({ address });
      conn.replyLinks.set(sender.name, sender);
      const target = (sender.target as { address?: string } | null)?.address;
      if (target) conn.replyLinks.set(target, sender);
      return;
    }
    const entity = this.entityFor(address);
    try {
      if (!entity) throw BrokerError.entityNotFound(this.qualified(address));
      this.authorize(sender.connection, entity.key);
      const wantsSession = !!source?.filter && SESSION_FILTER in source.filter;
      if (entity.requiresSession && !wantsSession) {
        throw BrokerError.notAllowed(`It is not possible for an entity that requires sessions to create a non-sessionful message receiver. Use acceptSession or acceptNextSession on '${entity.path}'.`);
      }
      if (!entity.requiresSession && wantsSession) {
        throw BrokerError.notAllowed(`It is not possible for an entity that does not require sessions to create a sessionful message receiver: '${entity.path}' does not have RequiresSession set.`);
      }
    } catch (err) {
      sender.set_source(null as unknown as rhea.Source);
      this.refuse(sender, err as BrokerError);
      return;
    }
    const l = sender as unknown as { local: { attach: Record<string, unknown> } };
    l.local.attach.snd_settle_mode = sender.snd_settle_mode;
    l.local.attach.rcv_settle_mode = sender.rcv_settle_mode;
    answerEveryDrain(sender);
    const consumer = new LinkConsumer(sender, entity);
    this.consumersByLink.set(sender, consumer);
    conn.consumers.add(consumer);
    if (!entity.requiresSession) {
      sender.set_source({ address });
      entity.addConsumer(consumer);
      return;
    }
    // Session receiver: hold the attach reply until a session is locked (acceptNextSession may wait).
    holdAttach(sender);
    const requested = source?.filter?.[SESSION_FILTER];
    const sessionId = requested === null || requested === undefined ? null : String(requested);
    const props = (sender.properties ?? {}) as Record<string, unknown>;
    const timeout = longToNumber(props['com.microsoft:timeout']) ?? DEFAULT_ACCEPT_SESSION_TIMEOUT_MS;
    entity.acceptSession(consumer, sessionId, timeout).then(
      (session) => {
        if (consumer.closed || !sender.is_remote_open()) {
          entity.releaseSession(session);
          return;
        }
        sender.set_source({ address, filter: { [SESSION_FILTER]: session.id } } as unknown as rhea.Source);
        l.local.attach.properties = { 'com.microsoft:locked-until-utc': amqp.types.wrap_long(toDotNetTicks(session.lockedUntil)) };
        sender.open();
        entity.addConsumer(consumer);
      },
      (err: BrokerError) => {
        this.dropConsumer(consumer);
        if (!sender.is_remote_open()) return;
        sender.set_source(null as unknown as rhea.Source);
        sender.open();
        this.refuse(sender, err);
      },
    );
  }

  private onReceiverOpen(receiver: rhea.Receiver): void {
    const address = (receiver.target as { address?: string } | null)?.address ?? '';
    const conn = this.state(receiver.connection);
    conn.incoming.add(receiver);
    receiver.set_source(receiver.source ?? {});
    if (address === '$cbs') {
      receiver.set_target({ address });
      this.roles.set(receiver, { kind: 'cbs' });
      receiver.add_credit(SENDER_CREDIT_WINDOW);
      return;
    }
    try {
      if (address.toLowerCase().endsWith('/$management')) {
        const entityPath = address.slice(0, -'/$management'.length);
        const entity = this.entityFor(entityPath);
        if (!entity) throw BrokerError.entityNotFound(this.qualified(entityPath));
        this.authorize(receiver.connection, address);
        receiver.set_target({ address });
        this.roles.set(receiver, { kind: 'management', entity });
        receiver.add_credit(SENDER_CREDIT_WINDOW);
        return;
      }
      const key = address.replace(/^\/+/, '').toLowerCase();
      const topic = this.topics.get(key);
      const entity = this.entities.get(key);
      if (!topic && !entity) throw BrokerError.entityNotFound(this.qualified(address));
      if (entity?.isDeadLetterQueue) throw BrokerError.notAllowed(`Cannot send to a dead-letter queue ('${entity.path}').`);
      this.authorize(receiver.connection, key);
      const targets = topic ? topic.subscriptions : [entity!];
      const maxBytes = topic ? topic.maxMessageSizeBytes : entity!.settings.maxMessageSizeBytes;
      const role: IncomingRole = {
        kind: 'send', targets, maxBytes, requiresSession: targets.some((t) => t.requiresSession),
        spaceFn: () => this.grantCredit(receiver, role as Extract<IncomingRole, { kind: 'send' }>),
      };
      this.roles.set(receiver, role);
      for (const t of targets) t.onSpace(role.spaceFn);
      receiver.set_target({ address });
      // createMessageBatch() sizes batches from this.
      (receiver as unknown as { local: { attach: Record<string, unknown> } }).local.attach.max_message_size = maxBytes;
      this.grantCredit(receiver, role);
    } catch (err) {
      receiver.set_target(null as unknown as rhea.TerminusOptions);
      this.refuse(receiver, err as BrokerError);
    }
  }

  /**
   * Tops up a sender link's credit. Near MaxSizeInMegabytes the window shrinks to what still
   * fits (at worst one message over), and a full entity grants none until consumers free space.
   */
  private grantCredit(receiver: rhea.Receiver, role: Extract<IncomingRole, { kind: 'send' }>): void {
    if (!receiver.is_open() && !receiver.is_remote_open()) return;
    let target = SENDER_CREDIT_WINDOW;
    for (const t of role.targets) {
      if (t.isFull()) return;
      const fits = Math.floor((t.settings.maxSizeBytes - t.sizeBytes) / role.maxBytes);
      target = Math.min(target, Math.max(1, fits));
    }
    const current = credit(receiver);
    if (current < (target === SENDER_CREDIT_WINDOW ? target / 2 : target)) receiver.add_credit(target - current);
  }

  // ---- sending ----

  private onSend(receiver: rhea.Receiver, role: Extract<IncomingRole, { kind: 'send' }>, delivery: RawDelivery, raw: Buffer, format: number): void {
    const reject = (err: BrokerError): void => {
      delivery.update(true, outcomes.rejected({ error: err.toAmqp() }).described());
      this.grantCredit(receiver, role);
    };
    if (raw.length > role.maxBytes) return reject(BrokerError.messageTooLarge(raw.length, role.maxBytes));
    let parsed: ParsedMessage[];
    try {
      const bodies = format === BATCH_FORMAT ? decodeBatchEnvelope(raw) : [raw];
      parsed = bodies.map((b) => parseMessage(b));
    } catch (err) {
      return reject(new BrokerError('amqp:decode-error', `The message could not be decoded: ${(err as Error).message}`, 400));
    }
    if (role.requiresSession && parsed.some((p) => p.sessionId === null || p.sessionId === '')) {
      return reject(BrokerError.notAllowed(
        'The SessionId was not set on a message, and it cannot be sent to the entity. Entities that have session support enabled can only receive messages that have the SessionId set to a valid value.'));
    }
    const now = Date.now();
    for (const t of role.targets) for (const p of parsed) t.enqueue(p, now);
    // Acknowledge only once the messages are committed to the store.
    this.options.store.afterCommit(() => {
      delivery.update(true, outcomes.accepted().described());
      this.grantCredit(receiver, role);
    });
  }

  // ---- settlement over the link ----

  private onSettlement(sender: rhea.Sender, delivery: RawDelivery, outcome: 'accepted' | 'released' | 'rejected' | 'modified'): void {
    const consumer = this.consumersByLink.get(sender);
    const token = delivery.sbLockToken;
    if (!consumer || !token) return;
    delivery.sbLockToken = undefined;
    const state = delivery.remote_state as {
      undeliverable_here?: boolean; message_annotations?: Record<string, unknown>;
      error?: { condition?: string; description?: string; info?: Record<string, unknown> };
    } | undefined;
    let disposition: Disposition;
    const options: SettleOptions = {};
    let reply: unknown;
    if (outcome === 'accepted') {
      disposition = 'complete';
      reply = outcomes.accepted().described();
    } else if (outcome === 'modified') {
      disposition = state?.undeliverable_here ? 'defer' : 'abandon';
      options.propertiesToModify = state?.message_annotations;
      reply = outcomes.modified({ undeliverable_here: state?.undeliverable_here ?? false }).described();
    } else if (outcome === 'released') {
      disposition = 'abandon';
      reply = outcomes.released().described();
    } else {
      disposition = 'deadletter';
      const { DeadLetterReason, DeadLetterErrorDescription, ...rest } = state?.error?.info ?? {};
      options.deadLetterReason = DeadLetterReason as string | undefined ?? state?.error?.condition;
      options.deadLetterDescription = DeadLetterErrorDescription as string | undefined ?? state?.error?.description;
      options.propertiesToModify = rest;
      // A real outcome without the dead-letter error: echoing it makes the SDK report a failure.
      reply = outcomes.rejected().described();
    }
    const answer = (value: unknown): void => {
      delivery.update(true, value);
      // In rcv-settle-mode second the peer settles nothing more: mark it so rhea frees the slot.
      delivery.remote_settled = true;
    };
    try {
      consumer.entity.settle(token, disposition, options);
    } catch (err) {
      answer(outcomes.rejected({ error: errorCondition(err) }).described());
      return;
    }
    this.options.store.afterCommit(() => answer(reply));
  }

  // ---- CBS ----

  private onCbs(conn: rhea.Connection, req: rhea.Message): void {
    const props = (req.application_properties ?? {}) as Record<string, unknown>;
    let status = 200;
    let description = 'OK';
    if (props.operation !== 'put-token') {
      status = 400;
      description = `Unsupported CBS operation '${String(props.operation)}'.`;
    } else {
      const check = verifySasToken(String(req.body ?? ''), this.options.keys, Date.now());
      if (!check.ok) {
        status = 401;
        description = check.reason;
      } else {
        // The grant is what the client asks for (`name`), but only where the signed audience
        // covers it: a token signed for one entity, or for another namespace, grants nothing here.
        const signed = audienceParts(check.token.audience);
        const requested = audienceParts(String(props.name ?? check.token.audience));
        if (!this.isOwnHost(signed.host)) {
          status = 401;
          description = `The token is for namespace '${signed.host}', not this one (${this.host}:${this.port}); sign a token for this namespace.`;
        } else if (!audienceCovers(check.token.audience, requested.path)) {
          status = 401;
          description = `The token is scoped to '${signed.path === '' ? '/' : signed.path}' and does not grant '${requested.path}'; sign a token for that entity or for the namespace.`;
        } else {
          this.state(conn).tokens.set(requested.path, check.token.expiry * 1000);
        }
      }
    }
    if (status !== 200) this.options.logger.info({ status }, `CBS put-token refused: ${description}`);
    this.reply(conn, req, { 'status-code': status, 'status-description': description });
  }

  private reply(conn: rhea.Connection, req: rhea.Message, appProps: Record<string, unknown>, body?: unknown): void {
    const replyTo = req.reply_to;
    const link = replyTo ? this.state(conn).replyLinks.get(String(replyTo)) : undefined;
    if (!link || !link.is_open()) {
      this.options.logger.debug({ replyTo }, 'no reply link for a request');
      return;
    }
    const msg: rhea.Message = { correlation_id: req.message_id, application_properties: appProps, body: undefined };
    if (body !== undefined) msg.body = body;
    link.send(msg);
  }

  // ---- $management ----

  private onManagement(conn: rhea.Connection, entity: Entity, req: rhea.Message): void {
    const props = (req.application_properties ?? {}) as Record<string, unknown>;
    const op = String(props.operation ?? '');
    const respond = (statusCode: number, result?: unknown): void =>
      this.reply(conn, req, { statusCode, statusDescription: statusCode === 204 ? 'No Content' : 'OK' }, result);
    try {
      handleManagementRequest(entity, op, (req.body ?? {}) as Record<string, unknown>, respond, (fn) => this.options.store.afterCommit(fn));
    } catch (err) {
      if (!isBrokerError(err)) this.options.logger.warn({ err, op }, 'management operation failed');
      const { condition, description } = errorCondition(err);
      this.reply(conn, req, { statusCode: isBrokerError(err) ? err.statusCode : 500, statusDescription: description, errorCondition: condition });
    }
  }
}
