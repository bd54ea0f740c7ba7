/**
 * SDK-type Service Bus bindings (`sdkBinding: true`) through the real SDK and the Service Bus
 * emulator: the function gets { messages, actions } from @azure/functions-extensions-servicebus
 * and settles through the host's settlement gRPC service.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { ServiceBusClient, type ServiceBusMessage, type ServiceBusReceivedMessage } from '@azure/service-bus';
import Long from 'long';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../../local/log';
import { startServiceBusEmulator, type ServiceBusEmulator } from '../../../local/servicebus';
import { fixtureState, type FixtureEvent } from '../../fixtures/host-app/lib/events';
import type { SdkCommand } from '../../fixtures/host-app/sdk/settle';
import { waitFor } from '../../support/wait';
import { startTestHost, type TestHost } from './helpers';

const suffix = randomBytes(3).toString('hex');
const Q = {
  sdk: `host-sdk-${suffix}`,
  session: `host-sdk-session-${suffix}`,
  many: `host-sdk-many-${suffix}`,
};
const LOCK_MS = 3000;
const props = (requiresSession = false) => ({
  RequiresSession: requiresSession,
  LockDuration: `PT${LOCK_MS / 1000}S`,
  MaxDeliveryCount: 3,
  DefaultMessageTimeToLive: 'PT1H',
  DeadLetteringOnMessageExpiration: true,
});

let emulator: ServiceBusEmulator;
let client: ServiceBusClient;
let t: TestHost;
let dataDir: string;

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'ferry-host-sdk-'));
  emulator = await startServiceBusEmulator({
    port: 0,
    dataDir,
    logger: createLogger('servicebus', { level: 'warn' }),
    config: {
      UserConfig: {
        Namespaces: [
          {
            Name: 'sbemulatorns',
            Queues: [
              { Name: Q.sdk, Properties: props() },
              { Name: Q.session, Properties: props(true) },
              { Name: Q.many, Properties: props() },
            ],
          },
        ],
      },
    },
  });
  client = new ServiceBusClient(emulator.connectionString);
  t = await startTestHost({
    mainFiles: 'sdk/*.js',
    settings: { ServiceBusConnection: emulator.connectionString, SB_SDK_QUEUE: Q.sdk, SB_SDK_SESSION_QUEUE: Q.session, SB_SDK_MANY_QUEUE: Q.many },
  });
});

afterAll(async () => {
  await t?.host.stop({ graceMs: 5000 });
  await client?.close();
  await emulator?.close();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

const newId = (): string => `m-${randomBytes(4).toString('hex')}`;

function events(fn: string, messageId?: string, phase = 'end'): FixtureEvent[] {
  return fixtureState().events.filter((e) => e.fn === fn && e.phase === phase && (messageId === undefined || e.messageId === messageId));
}

async function send(queue: string, messages: ServiceBusMessage | ServiceBusMessage[]): Promise<void> {
  const sender = client.createSender(queue);
  try {
    await sender.sendMessages(messages);
  } finally {
    await sender.close();
  }
}

const command = (cmd: SdkCommand, extra: Partial<ServiceBusMessage> = {}): ServiceBusMessage => ({
  body: cmd,
  contentType: 'application/json',
  messageId: newId(),
  ...extra,
});

async function peek(queue: string, subQueueType?: 'deadLetter'): Promise<ServiceBusReceivedMessage[]> {
  const receiver = client.createReceiver(queue, subQueueType ? { subQueueType } : {});
  try {
    return await receiver.peekMessages(100);
  } finally {
    await receiver.close();
  }
}

async function deadLetter(queue: string, messageId: string): Promise<ServiceBusReceivedMessage> {
  return waitFor(async () => (await peek(queue, 'deadLetter')).find((m) => m.messageId === messageId), `${messageId} in the dead-letter queue`);
}

async function gone(queue: string, messageId: string): Promise<boolean> {
  return !(await peek(queue)).some((m) => m.messageId === messageId);
}

describe('SDK-type Service Bus bindings', () => {
  it('lists the functions, which receive the message as the SDK type with its body and properties', async () => {
    expect(t.host.functions).toEqual(expect.arrayContaining([{ name: 'sbSdk', trigger: 'serviceBusTrigger', entityPath: Q.sdk }]));
    const msg = command({ action: 'complete' }, { correlationId: 'corr-1', subject: 'greet', applicationProperties: { tenant: 'a', count: 2, flag: true } });
    await send(Q.sdk, msg);
    const [ev] = await waitFor(() => events('sbSdk', msg.messageId as string).length > 0 && events('sbSdk', msg.messageId as string), 'the invocation');
    expect(ev).toMatchObject({
      body: { action: 'complete' },
      messageId: msg.messageId,
      triggerMessageId: msg.messageId,
      contentType: 'application/json',
      correlationId: 'corr-1',
      subject: 'greet',
      applicationProperties: { tenant: 'a', count: 2, flag: true },
      deliveryCount: 0,
      results: {},
    });
    expect(ev!.lockToken).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(Number(ev!.sequenceNumber)).toBeGreaterThan(0);
    expect(ev!.enqueuedTimeUtc).toEqual(expect.any(String));
    await waitFor(() => gone(Q.sdk, msg.messageId as string), 'the completed message to leave the queue');
  });

  it('dead-letters with exactly the given reason and description (StringValue as { value })', async () => {
    const msg = command({ action: 'deadletterWrapped', reason: 'BadChecksum', description: 'sha256 of extent 3 differs: expected ab12, got cd34' });
    await send(Q.sdk, msg);
    const dl = await deadLetter(Q.sdk, msg.messageId as string);
    expect(dl.deadLetterReason).toBe('BadChecksum');
    expect(dl.deadLetterErrorDescription).toBe('sha256 of extent 3 differs: expected ab12, got cd34');
    expect(events('sbSdk', msg.messageId as string)[0]!.results).toEqual({});
    expect(await gone(Q.sdk, msg.messageId as string)).toBe(true);
  });

  it('dead-letters without a reason, and with properties to modify', async () => {
    const msg = command({ action: 'deadletterPlain', props: { why: 'manual', attempt: 7 } }, { applicationProperties: { keep: 'yes' } });
    await send(Q.sdk, msg);
    const dl = await deadLetter(Q.sdk, msg.messageId as string);
    expect(dl.applicationProperties).toMatchObject({ keep: 'yes', why: 'manual', attempt: 7 });
  });

  it('a reason passed as a plain string fails in the gRPC client, as with this package in Azure; the message stays unsettled', async () => {
    const msg = command({ action: 'deadletter', reason: 'R', description: 'D' });
    await send(Q.sdk, msg);
    const [ev] = await waitFor(() => events('sbSdk', msg.messageId as string).length > 0 && events('sbSdk', msg.messageId as string), 'the invocation');
    expect((ev!.results as { error: { message: string } }).error.message).toMatch(/deadletterReason: object expected/);
    // Not settled and the function returned: the lock expires and the message comes back.
    const again = await waitFor(() => events('sbSdk', msg.messageId as string).length > 1 && events('sbSdk', msg.messageId as string), 'the redelivery', { timeoutMs: 20_000 });
    expect(again[1]!.deliveryCount).toBe(1);
  });

  it('abandon redelivers at once with the delivery count up by one, and applies properties to modify', async () => {
    const msg = command({ action: 'abandon', thenComplete: true, props: { abandonedBy: 'sbSdk' } });
    await send(Q.sdk, msg);
    const evs = await waitFor(() => events('sbSdk', msg.messageId as string).length >= 2 && events('sbSdk', msg.messageId as string), 'the redelivery');
    expect(evs.map((e) => e.deliveryCount)).toEqual([0, 1]);
    expect(evs[1]!.applicationProperties).toMatchObject({ abandonedBy: 'sbSdk' });
    // Abandon hands it back at once: well within the lock duration.
    expect(evs[1]!.at - evs[0]!.at).toBeLessThan(LOCK_MS);
    await waitFor(() => gone(Q.sdk, msg.messageId as string), 'the message to be completed on the second delivery');
  });

  it('a throw without settlement abandons: redelivered, then dead-lettered after MaxDeliveryCount', async () => {
    const msg = command({ action: 'throw' });
    await send(Q.sdk, msg);
    const dl = await deadLetter(Q.sdk, msg.messageId as string);
    expect(dl.deadLetterReason).toBe('MaxDeliveryCountExceeded');
    const starts = events('sbSdk', msg.messageId as string, 'start');
    expect(starts.map((e) => e.deliveryCount)).toEqual([0, 1, 2]);
    // Abandoned right away, not after the lock expired.
    expect(starts[2]!.at - starts[0]!.at).toBeLessThan(2 * LOCK_MS);
    expect(t.log.messages().some((m) => /Executed 'Functions.sbSdk' \(Failed/.test(m))).toBe(true);
  });

  it('returning without settling leaves the message locked until the lock expires (no renewal after the invocation)', async () => {
    const msg = command({ action: 'none', thenComplete: true });
    await send(Q.sdk, msg);
    const evs = await waitFor(() => events('sbSdk', msg.messageId as string).length >= 2 && events('sbSdk', msg.messageId as string), 'the redelivery', { timeoutMs: 20_000 });
    expect(evs.map((e) => e.deliveryCount)).toEqual([0, 1]);
    expect(evs[1]!.at - evs[0]!.at).toBeGreaterThanOrEqual(LOCK_MS - 500);
    await waitFor(() => gone(Q.sdk, msg.messageId as string), 'the message to be completed on the second delivery');
  });

  it('renews the lock of a long invocation, and renewMessageLock works', async () => {
    const msg = command({ action: 'renew', delayMs: LOCK_MS + 1500 });
    await send(Q.sdk, msg);
    const [ev] = await waitFor(() => events('sbSdk', msg.messageId as string).length > 0 && events('sbSdk', msg.messageId as string), 'the invocation', { timeoutMs: 20_000 });
    expect(ev!.results).toEqual({});
    await waitFor(() => gone(Q.sdk, msg.messageId as string), 'the completed message to leave the queue');
    expect(events('sbSdk', msg.messageId as string, 'start')).toHaveLength(1);
  });

  it('settling twice fails with a clear error; settling after the invocation fails with LockToken not found', async () => {
    const twice = command({ action: 'twice' });
    await send(Q.sdk, twice);
    const [ev] = await waitFor(() => events('sbSdk', twice.messageId as string).length > 0 && events('sbSdk', twice.messageId as string), 'the invocation');
    expect((ev!.results as { second: { message: string } }).second.message).toMatch(/already completed/);

    const keep = command({ action: 'keep' });
    await send(Q.sdk, keep);
    await waitFor(() => events('sbSdk', keep.messageId as string).length > 0, 'the invocation');
    const { actions, message } = fixtureState().kept as { actions: { complete(m: unknown): Promise<void> }; message: ServiceBusReceivedMessage };
    const err = await actions.complete(message).then(
      () => undefined,
      (e: { code: number; details: string }) => e,
    );
    expect(err?.code).toBe(9); // FAILED_PRECONDITION
    expect(err?.details).toBe(`LockToken ${message.lockToken} not found.`);
  });

  it('defers a message, which then waits for receiveDeferredMessages', async () => {
    const msg = command({ action: 'defer' });
    await send(Q.sdk, msg);
    const [ev] = await waitFor(() => events('sbSdk', msg.messageId as string).length > 0 && events('sbSdk', msg.messageId as string), 'the invocation');
    expect(ev!.results).toEqual({});
    const receiver = client.createReceiver(Q.sdk);
    try {
      const [deferred] = await receiver.receiveDeferredMessages(Long.fromString(ev!.sequenceNumber as string));
      expect(deferred?.messageId).toBe(msg.messageId);
      await receiver.completeMessage(deferred!);
    } finally {
      await receiver.close();
    }
  });

  it('cardinality many: the function gets an array and settles each message', async () => {
    const msgs = [command({ action: 'complete' }), command({ action: 'deadletterWrapped', reason: 'Nope', description: 'second of the batch' })];
    await send(Q.many, msgs);
    await waitFor(() => events('sbSdkMany', msgs[1]!.messageId as string).length > 0, 'both messages handled');
    expect(fixtureState().events.some((e) => e.fn === 'sbSdkMany' && e.phase === 'batch' && (e.count as number) >= 1)).toBe(true);
    const dl = await deadLetter(Q.many, msgs[1]!.messageId as string);
    expect(dl.deadLetterReason).toBe('Nope');
    await waitFor(() => gone(Q.many, msgs[0]!.messageId as string), 'the completed message to leave the queue');
  });
});

describe('SDK-type bindings with sessions', () => {
  it('keeps each session strictly in order, sessions in parallel, and passes the session id', async () => {
    const sessions = [`s-a-${suffix}`, `s-b-${suffix}`];
    const batch = sessions.flatMap((sessionId) =>
      [1, 2, 3, 4].map((seq) => command({ action: 'complete', seq, delayMs: 150 }, { sessionId, messageId: `${sessionId}-${seq}` })),
    );
    await send(Q.session, batch);
    for (const sessionId of sessions) {
      const done = await waitFor(
        () => {
          const e = fixtureState().events.filter((x) => x.fn === 'sbSdkSession' && x.sessionId === sessionId);
          return e.filter((x) => x.phase === 'end').length >= 4 && e;
        },
        `session ${sessionId} processed`,
      );
      // start 1, end 1, start 2, end 2, ...: never two of a session at once, in order.
      expect(done.map((e) => `${e.phase}:${(e.body as SdkCommand).seq}`)).toEqual(['start:1', 'end:1', 'start:2', 'end:2', 'start:3', 'end:3', 'start:4', 'end:4']);
      expect(done.every((e) => e.sessionId === sessionId)).toBe(true);
    }
    for (const m of batch) await waitFor(() => gone(Q.session, m.messageId as string), `${String(m.messageId)} completed`);
  });

  it('sets and gets the session state', async () => {
    const sessionId = `s-state-${suffix}`;
    const first = command({ action: 'complete', setState: 'checkpoint-1' }, { sessionId });
    await send(Q.session, first);
    const [ev] = await waitFor(() => events('sbSdkSession', first.messageId as string).length > 0 && events('sbSdkSession', first.messageId as string), 'the first invocation');
    expect(ev!.results).toEqual({ state: 'checkpoint-1' });
    // The state lives with the session in the broker: a later message of the session reads it.
    const second = command({ action: 'complete', getState: true }, { sessionId });
    await send(Q.session, second);
    const [ev2] = await waitFor(() => events('sbSdkSession', second.messageId as string).length > 0 && events('sbSdkSession', second.messageId as string), 'the second invocation');
    expect(ev2!.results).toEqual({ state: 'checkpoint-1' });
    // And the broker has it: once the host has released the idle session, read it directly.
    const receiver = await waitFor(() => client.acceptSession(Q.session, sessionId), 'the session to be released by the host');
    try {
      expect(Buffer.from((await receiver.getSessionState()) as Buffer).toString('utf8')).toBe('checkpoint-1');
    } finally {
      await receiver.close();
    }
  });

  it('dead-letters and abandons within a session', async () => {
    const sessionId = `s-dl-${suffix}`;
    const a = command({ action: 'deadletterWrapped', reason: 'SessionReason', description: 'in a session' }, { sessionId });
    const b = command({ action: 'abandon', thenComplete: true }, { sessionId });
    await send(Q.session, [a, b]);
    const dl = await deadLetter(Q.session, a.messageId as string);
    expect(dl.deadLetterReason).toBe('SessionReason');
    expect(dl.deadLetterErrorDescription).toBe('in a session');
    const evs = await waitFor(() => events('sbSdkSession', b.messageId as string).length >= 2 && events('sbSdkSession', b.messageId as string), 'the redelivery in the session');
    expect(evs.map((e) => e.deliveryCount)).toEqual([0, 1]);
  });
});
