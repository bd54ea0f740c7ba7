/**
 * Service Bus queue (and topic subscription) triggers, with the real @azure/service-bus client,
 * behaving as the Functions Service Bus extension does:
 *
 * - peekLock; the client renews locks for up to `maxAutoLockRenewalDuration`.
 * - Success with `autoCompleteMessages` (host.json, or the trigger's own option): complete.
 *   A failed invocation: abandon (every message of the batch with cardinality many), so the
 *   broker redelivers at once and dead-letters after the queue's MaxDeliveryCount. With
 *   autoComplete off the host settles nothing (the locks expire) unless the function settles
 *   itself through an SDK-type binding.
 * - Without sessions, cardinality one: up to `maxConcurrentCalls` invocations at a time.
 *   Cardinality many: one batch of up to `maxMessageBatchSize` at a time.
 * - Sessions: up to `maxConcurrentSessions` sessions at a time, each accepted with
 *   acceptNextSession in a loop; a session's messages are processed strictly one after another
 *   (one at a time, or batch after batch), and the session is released after
 *   `sessionIdleTimeout` without messages.
 *
 * - SDK-type bindings (`sdkBinding: true`): the function gets model binding data and settles
 *   through the settlement service (settlement.ts); see `processSdk`.
 *
 * Not mirrored: `prefetchCount` (the JS client has no prefetch).
 */
import { setMaxListeners } from 'node:events';
import {
  isServiceBusError,
  ServiceBusClient,
  type ServiceBusReceivedMessage,
  type ServiceBusReceiver,
  type ServiceBusSessionReceiver,
} from '@azure/service-bus';
import '../../../shared/azure/amqp-fixes';
import type { Logger } from 'pino';
import type { RegisteredFunction } from '../core-api';
import { HostError } from '../errors';
import { resolveAppSettingRefs, type ServiceBusSettings } from '../host-json';
import type { Invoker } from '../invoker';
import { batchTriggerMetadata, messagesToTypedData, messageToTypedData, singleTriggerMetadata } from './convert';
import { sdkTypedData } from './sdk-binding';
import type { InFlightMessage, SettlementServer } from './settlement';

const RECEIVE_WAIT_MS = 60_000;

/** A receive loop, and whether it sits in acceptNextSession (which cannot be interrupted). */
interface Loop {
  accepting: boolean;
  done: Promise<void>;
}
const RETRY_DELAY_MS = 1_000;

export class ServiceBusListener {
  readonly entityPath: string;
  private readonly queueName: string | undefined;
  private readonly topicName: string | undefined;
  private readonly subscriptionName: string | undefined;
  private readonly connectionString: string;
  private readonly sessions: boolean;
  private readonly many: boolean;
  private readonly binary: boolean;
  private readonly autoComplete: boolean;
  /** `sdkBinding: true`: the function gets messages and settlement actions (see sdk-binding.ts, settlement.ts). */
  private readonly sdk: boolean;
  private readonly log: Logger;
  private client: ServiceBusClient | undefined;
  /** One signal shared by every receive loop (up to maxConcurrentSessions of them): no listener cap. */
  private readonly abort = unboundedAbortController();
  private readonly receivers = new Set<ServiceBusReceiver | ServiceBusSessionReceiver>();
  private subscription: { close(): Promise<void> } | undefined;
  private readonly loops: Loop[] = [];

  constructor(
    private readonly fn: RegisteredFunction,
    private readonly triggerName: string,
    binding: Record<string, unknown>,
    settings: Record<string, string>,
    private readonly options: ServiceBusSettings,
    private readonly invoker: Invoker,
    logger: Logger,
    /** The settlement service SDK-type bindings settle through (required for them). */
    private readonly settlement?: SettlementServer,
  ) {
    const name = fn.metadata.name;
    const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);
    const entity = (key: string): string | undefined => {
      const v = str(binding[key]);
      return v === undefined ? undefined : resolveAppSettingRefs(v, settings, `Function '${name}' ${key}`);
    };
    this.queueName = entity('queueName');
    this.topicName = entity('topicName');
    this.subscriptionName = entity('subscriptionName');
    if (!this.queueName && !(this.topicName && this.subscriptionName)) {
      throw new HostError('UnsupportedTrigger', `Function '${name}' has a serviceBusTrigger with neither queueName nor topicName + subscriptionName.`);
    }
    this.entityPath = this.queueName ?? `${this.topicName}/Subscriptions/${this.subscriptionName}`;
    const setting = str(binding.connection) ?? 'AzureWebJobsServiceBus';
    const conn = settings[setting] ?? settings[`ConnectionStrings:${setting}`];
    if (!conn) throw HostError.missingSetting(name, setting);
    this.connectionString = conn;
    this.sessions = binding.isSessionsEnabled === true;
    this.many = String(binding.cardinality ?? 'one').toLowerCase() === 'many';
    this.binary = String(binding.dataType ?? '').toLowerCase() === 'binary';
    this.autoComplete = typeof binding.autoCompleteMessages === 'boolean' ? binding.autoCompleteMessages : options.autoCompleteMessages;
    const props = binding.properties as Record<string, unknown> | undefined;
    this.sdk = binding.sdkBinding === true || String(props?.supportsDeferredBinding ?? '').toLowerCase() === 'true';
    if (this.sdk && !settlement) throw new HostError('UnsupportedTrigger', `Function '${name}' uses an SDK-type binding but the host has no settlement service.`);
    this.log = logger.child({ fn: name, entity: this.entityPath });
  }

  async start(): Promise<void> {
    this.client = new ServiceBusClient(this.connectionString);
    if (this.sessions) {
      for (let i = 0; i < this.options.maxConcurrentSessions; i++) {
        const loop: Loop = { accepting: false, done: Promise.resolve() };
        loop.done = this.sessionLoop(loop);
        this.loops.push(loop);
      }
    } else if (this.many) {
      this.loops.push({ accepting: false, done: this.batchLoop(this.createReceiver()) });
    } else {
      const receiver = this.createReceiver();
      this.subscription = receiver.subscribe(
        {
          processMessage: async (m) => {
            await this.invoker.track(this.process([m], receiver));
          },
          processError: async (args) => {
            if (!this.abort.signal.aborted) this.log.warn({ err: args.error, source: args.errorSource }, 'Service Bus receive error; the client retries');
          },
        },
        { autoCompleteMessages: false, maxConcurrentCalls: this.options.maxConcurrentCalls },
      );
    }
    this.log.debug({ sessions: this.sessions, many: this.many }, 'Service Bus listener started');
  }

  /** Stops taking messages; invocations already running go on (the invoker tracks them). */
  async stopReceiving(): Promise<void> {
    this.abort.abort();
    await this.subscription?.close().catch(() => undefined);
  }

  async close(): Promise<void> {
    this.abort.abort();
    await Promise.allSettled([...this.receivers].map((r) => r.close()));
    await this.client?.close().catch(() => undefined);
    // Neither the abort nor the closed connection settles a pending acceptNextSession before
    // its own timeout (a minute); such a loop has nothing left to do, so it is not awaited.
    await Promise.allSettled(this.loops.filter((l) => !l.accepting).map((l) => l.done));
  }

  private receiverOptions(): { receiveMode: 'peekLock'; maxAutoLockRenewalDurationInMs: number; skipParsingBodyAsJson: true } {
    // SDK-type bindings without sessions renew message locks themselves, only while the
    // invocation runs (as the .NET processor does): a message the function leaves unsettled
    // is redelivered when its lock expires. Session locks are renewed by the client.
    const renewal = this.sdk && !this.sessions ? 0 : this.options.maxAutoLockRenewalDurationMs;
    return { receiveMode: 'peekLock', maxAutoLockRenewalDurationInMs: renewal, skipParsingBodyAsJson: true };
  }

  private createReceiver(): ServiceBusReceiver {
    const client = this.client as ServiceBusClient;
    const receiver = this.queueName
      ? client.createReceiver(this.queueName, this.receiverOptions())
      : client.createReceiver(this.topicName as string, this.subscriptionName as string, this.receiverOptions());
    this.receivers.add(receiver);
    return receiver;
  }

  private async batchLoop(receiver: ServiceBusReceiver): Promise<void> {
    const signal = this.abort.signal;
    while (!signal.aborted) {
      try {
        const batch = await receiver.receiveMessages(this.options.maxMessageBatchSize, { maxWaitTimeInMs: RECEIVE_WAIT_MS, abortSignal: signal });
        if (batch.length > 0) await this.invoker.track(this.process(batch, receiver));
      } catch (err) {
        if (signal.aborted) break;
        this.log.warn({ err }, 'Service Bus receive failed; retrying');
        await delay(RETRY_DELAY_MS, signal);
      }
    }
  }

  private async sessionLoop(loop: Loop): Promise<void> {
    const signal = this.abort.signal;
    const client = this.client as ServiceBusClient;
    while (!signal.aborted) {
      let session: ServiceBusSessionReceiver;
      try {
        const opts = { ...this.receiverOptions(), abortSignal: signal };
        loop.accepting = true;
        session = this.queueName
          ? await client.acceptNextSession(this.queueName, opts)
          : await client.acceptNextSession(this.topicName as string, this.subscriptionName as string, opts);
      } catch (err) {
        if (signal.aborted) break;
        // No session became free within the client's timeout: ask again.
        if (isServiceBusError(err) && (err.code === 'ServiceTimeout' || err.code === 'SessionCannotBeLocked')) continue;
        this.log.warn({ err }, 'acceptNextSession failed; retrying');
        await delay(RETRY_DELAY_MS, signal);
        continue;
      } finally {
        loop.accepting = false;
      }
      if (signal.aborted) {
        await session.close().catch(() => undefined);
        break;
      }
      this.receivers.add(session);
      const log = this.log.child({ sessionId: session.sessionId });
      log.debug('Session accepted');
      try {
        while (!signal.aborted) {
          const batch = await session.receiveMessages(this.many ? this.options.maxMessageBatchSize : 1, {
            maxWaitTimeInMs: this.options.sessionIdleTimeoutMs,
            abortSignal: signal,
          });
          if (batch.length === 0) {
            log.debug('Session idle; releasing it');
            break;
          }
          const release = await this.invoker.track(this.process(batch, session));
          if (release) {
            log.debug('Session release requested by the function; releasing it');
            break;
          }
        }
      } catch (err) {
        if (!signal.aborted) log.warn({ err }, 'Session receive failed; releasing the session');
      } finally {
        this.receivers.delete(session);
        await session.close().catch(() => undefined);
      }
    }
  }

  /**
   * Invokes the function with the messages, then settles them as the extension does.
   * Resolves true when the function asked (through the settlement service) to release its session.
   */
  private async process(messages: ServiceBusReceivedMessage[], receiver: ServiceBusReceiver | ServiceBusSessionReceiver): Promise<boolean> {
    if (this.sdk) return this.processSdk(messages, receiver);
    const name = this.fn.metadata.name;
    const first = messages[0] as ServiceBusReceivedMessage;
    const input = this.many
      ? { data: messagesToTypedData(messages, this.binary), meta: batchTriggerMetadata(messages, name) }
      : { data: messageToTypedData(first, this.binary), meta: singleTriggerMetadata(first, name) };
    const outcome = await this.invoker.invoke(
      this.fn,
      { inputData: [{ name: this.triggerName, data: input.data }], triggerMetadata: input.meta },
      this.reason(first),
    );
    if (!this.autoComplete) return false;
    for (const m of messages) {
      try {
        if (outcome.ok) await receiver.completeMessage(m);
        else await receiver.abandonMessage(m);
      } catch (err) {
        this.log.warn({ err, messageId: m.messageId }, `Could not ${outcome.ok ? 'complete' : 'abandon'} a message; it will be redelivered when its lock expires`);
      }
    }
    return false;
  }

  private reason(first: ServiceBusReceivedMessage): string {
    return `New ServiceBus message detected on '${this.entityPath}' (MessageId=${String(first.messageId)}, DeliveryCount=${(first.deliveryCount ?? 0) + 1}${first.sessionId ? `, SessionId=${first.sessionId}` : ''})`;
  }

  /**
   * SDK-type binding: the function gets the messages as model binding data and settles them
   * itself through the settlement service, which knows them (and their session) while the
   * invocation runs. Afterwards, as the Service Bus processor does: a failed invocation
   * abandons what the function left unsettled; a successful one completes it only with
   * autoCompleteMessages, otherwise leaves it locked until the lock expires (then redelivered).
   */
  private async processSdk(messages: ServiceBusReceivedMessage[], receiver: ServiceBusReceiver | ServiceBusSessionReceiver): Promise<boolean> {
    const settlement = this.settlement as SettlementServer;
    const name = this.fn.metadata.name;
    const first = messages[0] as ServiceBusReceivedMessage;
    const entries: InFlightMessage[] = messages.map((message) => ({ message, receiver }));
    const unregister: (() => void)[] = [];
    const session = this.sessions ? { receiver: receiver as ServiceBusSessionReceiver, releaseRequested: false } : undefined;
    const renewal = this.sessions ? undefined : new LockRenewal(entries, this.options.maxAutoLockRenewalDurationMs, this.log);
    let outcome;
    try {
      for (const e of entries) unregister.push(settlement.registerMessage(e));
      if (session) unregister.push(settlement.registerSession((receiver as ServiceBusSessionReceiver).sessionId, session));
      const data = sdkTypedData(messages, this.many);
      const meta = this.many ? batchTriggerMetadata(messages, name) : singleTriggerMetadata(first, name);
      outcome = await this.invoker.invoke(this.fn, { inputData: [{ name: this.triggerName, data }], triggerMetadata: meta }, this.reason(first));
    } finally {
      renewal?.stop();
      // From here on the function's settlement calls fail ("LockToken ... not found"), as in Azure.
      unregister.forEach((u) => u());
    }
    for (const e of entries) {
      if (e.settled) continue;
      const action = !outcome.ok ? 'abandon' : this.autoComplete ? 'complete' : undefined;
      if (!action) continue;
      try {
        if (action === 'abandon') await receiver.abandonMessage(e.message);
        else await receiver.completeMessage(e.message);
      } catch (err) {
        this.log.warn({ err, messageId: e.message.messageId }, `Could not ${action} a message the function left unsettled; it will be redelivered when its lock expires`);
      }
    }
    return session?.releaseRequested ?? false;
  }
}

/**
 * Renews the locks of messages in invocation, as the .NET processor does while the handler
 * runs: halfway through each lock, until settled, stopped, or `maxMs` after the start.
 */
class LockRenewal {
  private readonly timers = new Set<NodeJS.Timeout>();
  private stopped = false;
  private readonly deadline: number;

  constructor(
    entries: InFlightMessage[],
    maxMs: number,
    private readonly log: Logger,
  ) {
    this.deadline = Date.now() + maxMs;
    if (maxMs > 0) for (const e of entries) this.schedule(e);
  }

  private schedule(e: InFlightMessage): void {
    const until = e.message.lockedUntilUtc?.getTime();
    if (until === undefined) return;
    const wait = Math.max(0, (until - Date.now()) / 2);
    if (Date.now() + wait >= this.deadline) return;
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (this.stopped || e.settled) return;
      e.receiver.renewMessageLock(e.message).then(
        () => {
          if (!this.stopped && !e.settled) this.schedule(e);
        },
        (err: unknown) => {
          if (!this.stopped && !e.settled) this.log.warn({ err, messageId: e.message.messageId }, 'Could not renew a message lock; it may be redelivered while the function runs');
        },
      );
    }, wait);
    t.unref();
    this.timers.add(t);
  }

  stop(): void {
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }
}

function delay(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

function unboundedAbortController(): AbortController {
  const c = new AbortController();
  setMaxListeners(0, c.signal);
  return c;
}
