import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { ServiceBusClient, type ServiceBusMessage } from '@azure/service-bus';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../../local/log';
import { startServiceBusEmulator, type ServiceBusEmulator } from '../../../local/servicebus';
import { fixtureState, type FixtureEvent } from '../../fixtures/host-app/lib/events';
import { waitFor } from '../../support/wait';
import { startTestHost, type TestHost } from './helpers';

const suffix = randomBytes(3).toString('hex');
const Q = {
  single: `host-single-${suffix}`,
  fail: `host-fail-${suffix}`,
  session: `host-session-${suffix}`,
  many: `host-many-${suffix}`,
  binary: `host-binary-${suffix}`,
  topic: `host-topic-${suffix}`,
};
const props = (requiresSession = false) => ({
  RequiresSession: requiresSession,
  LockDuration: 'PT5S',
  MaxDeliveryCount: 3,
  DefaultMessageTimeToLive: 'PT1H',
  DeadLetteringOnMessageExpiration: true,
});

let emulator: ServiceBusEmulator;
let client: ServiceBusClient;
let t: TestHost;
let dataDir: string;

function events(fn: string): FixtureEvent[] {
  return fixtureState().events.filter((e) => e.fn === fn);
}

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'ferry-host-sb-'));
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
              { Name: Q.single, Properties: props() },
              { Name: Q.fail, Properties: props() },
              { Name: Q.session, Properties: props(true) },
              { Name: Q.many, Properties: props() },
              { Name: Q.binary, Properties: props() },
            ],
            Topics: [{ Name: Q.topic, Properties: {}, Subscriptions: [{ Name: 'host-sub', Properties: { LockDuration: 'PT5S', MaxDeliveryCount: 3 } }] }],
          },
        ],
      },
    },
  });
  client = new ServiceBusClient(emulator.connectionString);
  t = await startTestHost({
    mainFiles: 'servicebus/*.js',
    settings: {
      ServiceBusConnection: emulator.connectionString,
      SB_SINGLE_QUEUE: Q.single,
      SB_FAIL_QUEUE: Q.fail,
      SB_SESSION_QUEUE: Q.session,
      SB_MANY_QUEUE: Q.many,
      SB_BINARY_QUEUE: Q.binary,
      SB_TOPIC: Q.topic,
    },
  });
});

afterAll(async () => {
  await t?.host.stop({ graceMs: 5000 });
  await client?.close();
  await emulator?.close();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

async function send(queue: string, messages: ServiceBusMessage | ServiceBusMessage[]): Promise<void> {
  const sender = client.createSender(queue);
  try {
    await sender.sendMessages(messages);
  } finally {
    await sender.close();
  }
}

async function queueIsEmpty(queue: string): Promise<boolean> {
  const receiver = client.createReceiver(queue, { receiveMode: 'peekLock' });
  try {
    return (await receiver.peekMessages(10)).length === 0;
  } finally {
    await receiver.close();
  }
}

describe('Service Bus queue trigger', () => {
  it('lists the Service Bus functions with their queues', () => {
    expect(t.host.functions).toEqual(expect.arrayContaining([{ name: 'sbSingle', trigger: 'serviceBusTrigger', entityPath: Q.single }]));
  });

  it('passes a JSON body as an object with the trigger metadata, and completes the message', async () => {
    const id = `m-${randomBytes(4).toString('hex')}`;
    await send(Q.single, {
      body: { hello: 'world', n: 1 },
      messageId: id,
      contentType: 'application/json',
      correlationId: 'corr-1',
      subject: 'greeting',
      applicationProperties: { tenant: 'a', count: 2 },
    });
    const ev = await waitFor(() => events('sbSingle').find((e) => (e.meta as { messageId?: string })?.messageId === id), 'the invocation');
    expect(ev.message).toEqual({ hello: 'world', n: 1 });
    const meta = ev.meta as Record<string, unknown>;
    expect(meta).toMatchObject({
      messageId: id,
      deliveryCount: 1,
      contentType: 'application/json',
      correlationId: 'corr-1',
      subject: 'greeting',
      label: 'greeting',
      applicationProperties: { tenant: 'a', count: 2 },
      userProperties: { tenant: 'a', count: 2 },
    });
    expect(typeof meta.sequenceNumber).toBe('number');
    expect(meta.lockToken).toMatch(/^[0-9a-f-]{36}$/);
    expect(meta.enqueuedTimeUtc).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?$/);
    expect(meta.expiresAtUtc).toMatch(/^\d{4}-\d\d-\d\dT/);
    expect(meta.enqueuedTime).toMatch(/\+00:00$/);
    await waitFor(() => queueIsEmpty(Q.single), 'the message to be completed');
    await waitFor(() => t.log.lines.some((l) => String(l.msg).startsWith(`Executed 'Functions.sbSingle' (Succeeded`)), 'the Executed line');
  });

  it('passes a text body as a string', async () => {
    const id = `t-${randomBytes(4).toString('hex')}`;
    await send(Q.single, { body: 'plain text', messageId: id });
    const ev = await waitFor(() => events('sbSingle').find((e) => (e.meta as { messageId?: string })?.messageId === id), 'the invocation');
    expect(ev.message).toBe('plain text');
  });

  it('abandons a failed message, which is redelivered and dead-lettered after MaxDeliveryCount', async () => {
    const id = `f-${randomBytes(4).toString('hex')}`;
    await send(Q.fail, { body: { doomed: true }, messageId: id });
    const runs = await waitFor(() => {
      const r = events('sbAlwaysFails').filter((e) => e.messageId === id);
      return r.length >= 3 && r;
    }, 'three deliveries', { timeoutMs: 30_000 });
    expect(runs.map((e) => e.deliveryCount)).toEqual([1, 2, 3]);
    const dlq = client.createReceiver(Q.fail, { subQueueType: 'deadLetter' });
    try {
      const [dead] = await waitFor(async () => {
        const got = await dlq.receiveMessages(1, { maxWaitTimeInMs: 1000 });
        return got.length > 0 && got;
      }, 'the dead-lettered message', { timeoutMs: 30_000 });
      expect(dead?.messageId).toBe(id);
      expect(dead?.deadLetterReason).toBe('MaxDeliveryCountExceeded');
      await dlq.completeMessage(dead!);
    } finally {
      await dlq.close();
    }
    expect(events('sbAlwaysFails').filter((e) => e.messageId === id)).toHaveLength(3);
  });

  it('passes bytes as a Buffer with dataType binary', async () => {
    await send(Q.binary, { body: Buffer.from([0, 1, 2, 255]) });
    const ev = await waitFor(() => events('sbBinary')[0], 'the binary invocation');
    expect(ev).toMatchObject({ isBuffer: true, hex: '000102ff' });
  });
});

describe('Service Bus topic subscription trigger', () => {
  it('receives from the subscription', async () => {
    const id = `tp-${randomBytes(4).toString('hex')}`;
    await send(Q.topic, { body: { via: 'topic' }, messageId: id });
    const ev = await waitFor(() => events('sbTopic').find((e) => e.messageId === id), 'the topic invocation');
    expect(ev.message).toEqual({ via: 'topic' });
    expect(t.host.functions).toEqual(expect.arrayContaining([{ name: 'sbTopic', trigger: 'serviceBusTrigger', entityPath: `${Q.topic}/Subscriptions/host-sub` }]));
  });
});

describe('Service Bus cardinality many', () => {
  it('passes a batch as an array with the Array metadata', async () => {
    const ids = [0, 1, 2, 3, 4].map((i) => `b${i}-${randomBytes(3).toString('hex')}`);
    await send(Q.many, ids.map((id, i) => ({ body: { i }, messageId: id, applicationProperties: { i } })));
    const seen = await waitFor(() => {
      const got = events('sbMany').filter((e) => (e.meta as { messageIdArray?: string[] }).messageIdArray?.some((m) => ids.includes(m)));
      const n = got.reduce((sum, e) => sum + (e.messages as unknown[]).length, 0);
      return n >= 5 && got;
    }, 'all five messages');
    for (const ev of seen) {
      const messages = ev.messages as { i: number }[];
      const meta = ev.meta as Record<string, unknown[]>;
      expect(meta.messageIdArray).toEqual(messages.map((m) => ids[m.i]));
      expect(meta.deliveryCountArray).toEqual(messages.map(() => 1));
      expect(meta.sequenceNumberArray).toHaveLength(messages.length);
      expect(meta.applicationPropertiesArray).toEqual(messages.map((m) => ({ i: m.i })));
      expect(meta.enqueuedTimeUtcArray).toHaveLength(messages.length);
    }
    expect(seen.flatMap((e) => (e.messages as { i: number }[]).map((m) => m.i)).sort()).toEqual([0, 1, 2, 3, 4]);
    await waitFor(() => queueIsEmpty(Q.many), 'the batch to be completed');
  });

  it('abandons the whole batch when the function throws', async () => {
    const id = `bf-${randomBytes(3).toString('hex')}`;
    await send(Q.many, [{ body: { fail: true }, messageId: id }]);
    const runs = await waitFor(() => {
      const r = events('sbMany').filter((e) => (e.meta as { messageIdArray?: string[] }).messageIdArray?.includes(id));
      return r.length >= 2 && r;
    }, 'a redelivery of the failed batch', { timeoutMs: 30_000 });
    expect((runs[1]?.meta as { deliveryCountArray: number[] }).deliveryCountArray).toEqual([2]);
  });
});

describe('Service Bus sessions', () => {
  it('processes each session strictly in order, several sessions in parallel', async () => {
    const sessions = ['s-a', 's-b', 's-c'].map((s) => `${s}-${randomBytes(2).toString('hex')}`);
    const perSession = 4;
    for (const sessionId of sessions) {
      await send(Q.session, Array.from({ length: perSession }, (_, seq) => ({ body: { seq, delayMs: 150 }, sessionId })));
    }
    const done = await waitFor(() => {
      const ends = events('sbSession').filter((e) => e.phase === 'end' && sessions.includes(e.sessionId as string));
      return ends.length >= sessions.length * perSession && ends;
    }, 'every session message', { timeoutMs: 30_000 });
    expect(done).toHaveLength(sessions.length * perSession);

    const all = events('sbSession').filter((e) => sessions.includes(e.sessionId as string));
    for (const sessionId of sessions) {
      const mine = all.filter((e) => e.sessionId === sessionId).map((e) => `${e.phase}${e.seq}`);
      // start0 end0 start1 end1 ...: in order, never two at once within a session.
      expect(mine).toEqual(Array.from({ length: perSession }, (_, i) => [`start${i}`, `end${i}`]).flat());
    }
    // Some session started before another had finished: they ran in parallel.
    const spans = sessions.map((s) => {
      const mine = all.filter((e) => e.sessionId === s);
      return { from: Math.min(...mine.map((e) => e.at)), to: Math.max(...mine.map((e) => e.at)) };
    });
    const overlapping = spans.some((a, i) => spans.some((b, j) => i !== j && a.from < b.to && b.from < a.to));
    expect(overlapping).toBe(true);
    await waitFor(() => queueIsEmpty(Q.session), 'the session messages to be completed');
  });
});

describe('Service Bus graceful stop', () => {
  // Last in this file: it stops the shared host.
  it('lets a message in flight finish and completes it before stopping', async () => {
    const sessionId = `stop-${randomBytes(2).toString('hex')}`;
    await send(Q.session, { body: { seq: 0, delayMs: 1500 }, sessionId });
    await waitFor(() => events('sbSession').some((e) => e.sessionId === sessionId && e.phase === 'start'), 'the invocation to start');
    await t.host.stop({ graceMs: 10_000 });
    expect(events('sbSession').some((e) => e.sessionId === sessionId && e.phase === 'end')).toBe(true);
    expect(await queueIsEmpty(Q.session)).toBe(true);
  });

  it('stops promptly while its session receivers wait for a session', async () => {
    const idle = await startTestHost({
      mainFiles: 'servicebus/*.js',
      settings: {
        ServiceBusConnection: emulator.connectionString,
        SB_SINGLE_QUEUE: Q.single,
        SB_FAIL_QUEUE: Q.fail,
        SB_SESSION_QUEUE: Q.session,
        SB_MANY_QUEUE: Q.many,
        SB_BINARY_QUEUE: Q.binary,
        SB_TOPIC: Q.topic,
      },
    });
    // acceptNextSession is pending from the start (no session has messages).
    const started = Date.now();
    await idle.host.stop({ graceMs: 10_000 });
    expect(Date.now() - started).toBeLessThan(5_000);
  });
});
