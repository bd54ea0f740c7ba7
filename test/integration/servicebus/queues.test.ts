/**
 * Conformance: queues through the real @azure/service-bus SDK (send, receive, settle, peek,
 * locks, dead-lettering, deferral, scheduling, TTL, limits, auth).
 */
import { ServiceBusClient, isServiceBusError, type ServiceBusReceivedMessage } from '@azure/service-bus';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configOf, startHarness, STORES, uniqueName, waitFor, type Harness } from './helpers';

const q = {
  basic: uniqueName('basic'),
  batch: uniqueName('batch'),
  rad: uniqueName('rad'),
  settle: uniqueName('settle'),
  dlq: uniqueName('dlq'),
  defer: uniqueName('defer'),
  peek: uniqueName('peek'),
  lock: uniqueName('lock'),
  maxdc: uniqueName('maxdc'),
  ttlDl: uniqueName('ttl-dl'),
  ttlDrop: uniqueName('ttl-drop'),
  sched: uniqueName('sched'),
  small: uniqueName('small'),
  sub: uniqueName('subscribe'),
  compete: uniqueName('compete'),
  mgmt: uniqueName('mgmt'),
  drain: uniqueName('drain'),
  large: uniqueName('large'),
};

describe.each(STORES)('with the %s store', (store) => {
  let h: Harness;

  beforeAll(async () => {
    h = await startHarness(configOf([
      { Name: q.basic },
      { Name: q.batch },
      { Name: q.rad },
      { Name: q.settle, Properties: { LockDuration: 'PT30S' } },
      { Name: q.dlq },
      { Name: q.defer },
      { Name: q.peek },
      { Name: q.lock, Properties: { LockDuration: 'PT2S', MaxDeliveryCount: 10 } },
      { Name: q.maxdc, Properties: { LockDuration: 'PT5S', MaxDeliveryCount: 3 } },
      { Name: q.ttlDl, Properties: { DefaultMessageTimeToLive: 'PT1S', DeadLetteringOnMessageExpiration: true } },
      { Name: q.ttlDrop, Properties: { DeadLetteringOnMessageExpiration: false } },
      { Name: q.sched },
      { Name: q.small, Properties: { MaxMessageSizeInKilobytes: 16 } },
      { Name: q.sub },
      { Name: q.compete },
      { Name: q.mgmt },
      { Name: q.drain },
      { Name: q.large },
    ]), { store });
  });

  afterAll(async () => {
    await h?.stop();
  });

  async function receiveAll(receiver: ReturnType<ServiceBusClient['createReceiver']>, n: number, timeoutMs = 5000): Promise<ServiceBusReceivedMessage[]> {
    const out: ServiceBusReceivedMessage[] = [];
    const deadline = Date.now() + timeoutMs;
    while (out.length < n && Date.now() < deadline) {
      out.push(...(await receiver.receiveMessages(n - out.length, { maxWaitTimeInMs: 500 })));
    }
    return out;
  }

  describe('sending', () => {
    it('delivers a single message with its body, properties and broker annotations', async () => {
      const sender = h.client.createSender(q.basic);
      await sender.sendMessages({ body: { hello: 'world' }, messageId: 'm-1', subject: 'greeting', contentType: 'application/json', applicationProperties: { n: 7, s: 'x' }, correlationId: 'c-1' });
      const receiver = h.client.createReceiver(q.basic);
      const [m] = await receiveAll(receiver, 1);
      expect(m).toBeDefined();
      expect(m!.body).toEqual({ hello: 'world' });
      expect(m!.messageId).toBe('m-1');
      expect(m!.subject).toBe('greeting');
      expect(m!.correlationId).toBe('c-1');
      expect(m!.applicationProperties).toEqual({ n: 7, s: 'x' });
      expect(m!.deliveryCount).toBe(0);
      expect(m!.sequenceNumber!.toNumber()).toBeGreaterThan(0);
      expect(m!.enqueuedTimeUtc!.getTime()).toBeGreaterThan(Date.now() - 60_000);
      expect(m!.lockedUntilUtc!.getTime()).toBeGreaterThan(Date.now());
      expect(m!.lockToken).toMatch(/^[0-9a-f-]{36}$/);
      await receiver.completeMessage(m!);
      expect(await receiver.peekMessages(10)).toEqual([]);
      await receiver.close();
      await sender.close();
    });

    it('accepts batches (createMessageBatch and sendMessages(array)) and assigns missing message ids', async () => {
      const sender = h.client.createSender(q.batch);
      const batch = await sender.createMessageBatch();
      expect(batch.maxSizeInBytes).toBe(256 * 1024);
      for (let i = 0; i < 20; i++) expect(batch.tryAddMessage({ body: `b${i}` })).toBe(true);
      await sender.sendMessages(batch);
      await sender.sendMessages([{ body: 'a0' }, { body: 'a1' }]);
      const receiver = h.client.createReceiver(q.batch, { receiveMode: 'receiveAndDelete' });
      const got = await receiveAll(receiver, 22);
      expect(got.map((m) => m.body)).toEqual([...Array.from({ length: 20 }, (_, i) => `b${i}`), 'a0', 'a1']);
      const seqs = got.map((m) => m.sequenceNumber!.toNumber());
      expect([...seqs].sort((a, b) => a - b)).toEqual(seqs);
      for (const m of got) expect(m.messageId).toBeTruthy();
      await receiver.close();
      await sender.close();
    });

    it('delivers large bodies intact, on the link and through $management', async () => {
      const sender = h.client.createSender(q.large);
      const bodies = [150 * 1024, 200 * 1024, 250 * 1024].map((n, i) => Buffer.alloc(n, i + 1).fill(0xee, n - 10));
      for (const body of bodies) await sender.sendMessages({ body });
      const receiver = h.client.createReceiver(q.large);
      const first = (await receiver.peekMessages(1))[0]!;
      const peeked = await receiver.peekMessages(3, { fromSequenceNumber: first.sequenceNumber! });
      expect(peeked.map((m) => Buffer.compare(m.body as Buffer, bodies[peeked.indexOf(m)]!))).toEqual([0, 0, 0]);
      const got = await receiveAll(receiver, 3);
      expect(got.map((m, i) => Buffer.compare(m.body as Buffer, bodies[i]!))).toEqual([0, 0, 0]);
      for (const m of got) await receiver.completeMessage(m);
      await receiver.close();
      await sender.close();
    });

    it('refuses a message over the entity size limit with MessageSizeExceeded', async () => {
      const sender = h.client.createSender(q.small);
      const batch = await sender.createMessageBatch();
      expect(batch.maxSizeInBytes).toBe(16 * 1024);
      expect(batch.tryAddMessage({ body: Buffer.alloc(20 * 1024) })).toBe(false);
      const err = await sender.sendMessages({ body: Buffer.alloc(20 * 1024) }).catch((e: unknown) => e);
      expect(isServiceBusError(err)).toBe(true);
      expect((err as { code: string }).code).toBe('MessageSizeExceeded');
      await sender.sendMessages({ body: Buffer.alloc(8 * 1024) });
      const receiver = h.client.createReceiver(q.small, { receiveMode: 'receiveAndDelete' });
      expect((await receiveAll(receiver, 1)).length).toBe(1);
      await receiver.close();
      await sender.close();
    });

    it('refuses an unknown entity with MessagingEntityNotFound', async () => {
      const sender = h.client.createSender(uniqueName('nope'));
      const err = await sender.sendMessages({ body: 'x' }).catch((e: unknown) => e);
      expect((err as { code: string }).code).toBe('MessagingEntityNotFound');
      const receiver = h.client.createReceiver(uniqueName('nope'));
      const err2 = await receiver.receiveMessages(1, { maxWaitTimeInMs: 500 }).catch((e: unknown) => e);
      expect((err2 as { code: string }).code).toBe('MessagingEntityNotFound');
      await sender.close();
      await receiver.close();
    });

    it('refuses a client with the wrong key (UnauthorizedAccess)', async () => {
      const bad = new ServiceBusClient(h.emulator.connectionString.replace('SAS_KEY_VALUE', 'WRONG_KEY'), { retryOptions: { maxRetries: 0, timeoutInMs: 5000 } });
      const err = await bad.createSender(q.basic).sendMessages({ body: 'x' }).catch((e: unknown) => e);
      expect((err as { code: string }).code).toBe('UnauthorizedAccess');
      const badName = new ServiceBusClient(h.emulator.connectionString.replace('RootManageSharedAccessKey', 'OtherKey'), { retryOptions: { maxRetries: 0, timeoutInMs: 5000 } });
      const err2 = await badName.createSender(q.basic).sendMessages({ body: 'x' }).catch((e: unknown) => e);
      expect((err2 as { code: string }).code).toBe('UnauthorizedAccess');
      await bad.close();
      await badName.close();
    });
  });

  describe('receiving and settling', () => {
    it('receiveAndDelete removes messages as they are delivered', async () => {
      const sender = h.client.createSender(q.rad);
      await sender.sendMessages([{ body: 1 }, { body: 2 }, { body: 3 }]);
      const receiver = h.client.createReceiver(q.rad, { receiveMode: 'receiveAndDelete' });
      expect((await receiveAll(receiver, 3)).map((m) => m.body)).toEqual([1, 2, 3]);
      expect(await receiver.peekMessages(10)).toEqual([]);
      await receiver.close();
      await sender.close();
    });

    it('abandon redelivers with a higher delivery count and the modified properties', async () => {
      const sender = h.client.createSender(q.settle);
      await sender.sendMessages({ body: 'again', applicationProperties: { keep: 'yes' } });
      const receiver = h.client.createReceiver(q.settle);
      const [first] = await receiveAll(receiver, 1);
      await receiver.abandonMessage(first!, { attempt: 1 });
      const [second] = await receiveAll(receiver, 1);
      expect(second!.body).toBe('again');
      expect(second!.deliveryCount).toBe(1);
      expect(second!.applicationProperties).toEqual({ keep: 'yes', attempt: 1 });
      expect(second!.sequenceNumber!.toNumber()).toBe(first!.sequenceNumber!.toNumber());
      await receiver.completeMessage(second!);
      await expect(receiver.completeMessage(second!)).rejects.toThrow();
      await receiver.close();
      await sender.close();
    });

    it('dead-letters with reason, description and properties; the dead-letter queue is receivable and peekable', async () => {
      const sender = h.client.createSender(q.dlq);
      await sender.sendMessages({ body: 'poison', messageId: 'p-1' });
      const receiver = h.client.createReceiver(q.dlq);
      const [m] = await receiveAll(receiver, 1);
      await receiver.deadLetterMessage(m!, { deadLetterReason: 'BadInput', deadLetterErrorDescription: 'field x missing', extra: 'e' });
      expect(await receiver.peekMessages(5)).toEqual([]);
      const dlq = h.client.createReceiver(q.dlq, { subQueueType: 'deadLetter' });
      const [peeked] = await dlq.peekMessages(5);
      expect(peeked!.messageId).toBe('p-1');
      expect(peeked!.deadLetterReason).toBe('BadInput');
      const [d] = await receiveAll(dlq, 1);
      expect(d!.body).toBe('poison');
      expect(d!.deadLetterReason).toBe('BadInput');
      expect(d!.deadLetterErrorDescription).toBe('field x missing');
      expect(d!.applicationProperties?.extra).toBe('e');
      await dlq.completeMessage(d!);
      expect(await dlq.peekMessages(5)).toEqual([]);
      await dlq.close();
      await receiver.close();
      await sender.close();
    });

    it('defers a message and receives it by sequence number, then settles it through $management', async () => {
      const sender = h.client.createSender(q.defer);
      await sender.sendMessages([{ body: 'later' }, { body: 'now' }]);
      const receiver = h.client.createReceiver(q.defer);
      const [a] = await receiveAll(receiver, 1);
      expect(a!.body).toBe('later');
      const seq = a!.sequenceNumber!;
      await receiver.deferMessage(a!);
      const [b] = await receiveAll(receiver, 1);
      expect(b!.body).toBe('now');
      await receiver.completeMessage(b!);
      const [peeked] = await receiver.peekMessages(1, { fromSequenceNumber: seq });
      expect(peeked!.state).toBe('deferred');
      const [d] = await receiver.receiveDeferredMessages(seq);
      expect(d!.body).toBe('later');
      expect(d!.state).toBe('deferred');
      await receiver.completeMessage(d!);
      expect(await receiver.receiveDeferredMessages(seq).catch((e: unknown) => (e as { code: string }).code)).toBe('MessageNotFound');
      expect(await receiver.peekMessages(5)).toEqual([]);
      await receiver.close();
      await sender.close();
    });

    it('settles through $management once the receiving link is closed', async () => {
      const sender = h.client.createSender(q.mgmt);
      await sender.sendMessages({ body: 'm' });
      const receiver = h.client.createReceiver(q.mgmt);
      const [m] = await receiveAll(receiver, 1);
      await receiver.close();
      const other = h.client.createReceiver(q.mgmt);
      await other.completeMessage(m!);
      expect(await other.peekMessages(5)).toEqual([]);
      await other.close();
      await sender.close();
    });

    it('peeks from a sequence number without locking, and returns nothing when empty', async () => {
      const receiver = h.client.createReceiver(q.peek);
      expect(await receiver.peekMessages(5)).toEqual([]);
      const sender = h.client.createSender(q.peek);
      await sender.sendMessages([1, 2, 3, 4].map((n) => ({ body: n })));
      // The SDK keeps one peek cursor per entity and client: pass fromSequenceNumber to start over.
      const first = (await receiver.peekMessages(1))[0]!;
      const all = await receiver.peekMessages(10, { fromSequenceNumber: first.sequenceNumber! });
      expect(all.map((m) => m.body)).toEqual([1, 2, 3, 4]);
      const fromThird = await receiver.peekMessages(10, { fromSequenceNumber: all[2]!.sequenceNumber! });
      expect(fromThird.map((m) => m.body)).toEqual([3, 4]);
      const [locked] = await receiveAll(receiver, 1);
      expect(locked!.body).toBe(1);
      const again = await receiver.peekMessages(10, { fromSequenceNumber: first.sequenceNumber! });
      expect(again.map((m) => m.body)).toEqual([1, 2, 3, 4]);
      await receiver.close();
      await sender.close();
    });

    it('answers the drain that ends receiveMessages(), so the SDK keeps its link', async () => {
      // Unanswered, the SDK waits 200 ms more, then closes the link and falls back to $management.
      const receiver = h.client.createReceiver(q.drain);
      const times: number[] = [];
      for (let i = 0; i < 3; i++) {
        const t = Date.now();
        expect(await receiver.receiveMessages(5, { maxWaitTimeInMs: 300 })).toEqual([]);
        times.push(Date.now() - t);
      }
      expect(Math.min(...times)).toBeLessThan(480);
      await receiver.close();
    });

    it('subscribe() receives and completes a stream of messages', async () => {
      const sender = h.client.createSender(q.sub);
      const n = 200;
      const batch = await sender.createMessageBatch();
      for (let i = 0; i < n; i++) batch.tryAddMessage({ body: i });
      await sender.sendMessages(batch);
      const receiver = h.client.createReceiver(q.sub);
      const seen: number[] = [];
      const sub = receiver.subscribe({
        processMessage: async (m) => { seen.push(m.body as number); },
        processError: async () => undefined,
      }, { maxConcurrentCalls: 10 });
      await waitFor(() => seen.length === n, 10_000, 'all messages');
      await sub.close();
      expect([...seen].sort((a, b) => a - b)).toEqual(Array.from({ length: n }, (_, i) => i));
      await waitFor(async () => (await receiver.peekMessages(1)).length === 0, 5000, 'completions');
      await receiver.close();
      await sender.close();
    });

    it('spreads messages over competing consumers on separate connections, each delivered once', async () => {
      const sender = h.client.createSender(q.compete);
      const n = 60;
      await sender.sendMessages(Array.from({ length: n }, (_, i) => ({ body: i })));
      const clients = [0, 1, 2].map(() => new ServiceBusClient(h.emulator.connectionString));
      const seen = new Map<number, number>();
      const perClient = [0, 0, 0];
      const subs = clients.map((c, idx) => {
        const r = c.createReceiver(q.compete);
        return r.subscribe({
          processMessage: async (m) => {
            seen.set(m.body as number, (seen.get(m.body as number) ?? 0) + 1);
            perClient[idx]!++;
            await new Promise((res) => setTimeout(res, 5));
          },
          processError: async () => undefined,
        }, { maxConcurrentCalls: 2 });
      });
      await waitFor(() => seen.size === n, 15_000, 'all messages');
      for (const s of subs) await s.close();
      for (const c of clients) await c.close();
      expect([...seen.values()].every((v) => v === 1)).toBe(true);
      expect(perClient.filter((x) => x > 0).length).toBeGreaterThan(1);
    });
  });

  describe('locks', () => {
    it('redelivers a message whose lock expired, with a higher delivery count; settling it fails with MessageLockLost', async () => {
      const sender = h.client.createSender(q.lock);
      await sender.sendMessages({ body: 'slow' });
      const receiver = h.client.createReceiver(q.lock, { maxAutoLockRenewalDurationInMs: 0 });
      const [m] = await receiveAll(receiver, 1);
      expect(m!.deliveryCount).toBe(0);
      const [again] = await receiveAll(receiver, 1, 8000);
      expect(again!.body).toBe('slow');
      expect(again!.deliveryCount).toBe(1);
      const err = await receiver.completeMessage(m!).catch((e: unknown) => e);
      expect((err as { code: string }).code).toBe('MessageLockLost');
      await receiver.completeMessage(again!);
      await receiver.close();
      await sender.close();
    });

    it('renewMessageLock extends the lock past the lock duration', async () => {
      const sender = h.client.createSender(q.lock);
      await sender.sendMessages({ body: 'renewed' });
      const receiver = h.client.createReceiver(q.lock, { maxAutoLockRenewalDurationInMs: 0 });
      const [m] = await receiveAll(receiver, 1);
      const start = Date.now();
      while (Date.now() - start < 3000) {
        const until = await receiver.renewMessageLock(m!);
        expect(until.getTime()).toBeGreaterThan(Date.now() + 1000);
        await new Promise((r) => setTimeout(r, 700));
      }
      await receiver.completeMessage(m!);
      expect(await receiver.peekMessages(5)).toEqual([]);
      await receiver.close();
      await sender.close();
    });

    it('moves a message to the dead-letter queue after MaxDeliveryCount deliveries', async () => {
      const sender = h.client.createSender(q.maxdc);
      await sender.sendMessages({ body: 'unlucky' });
      const receiver = h.client.createReceiver(q.maxdc);
      for (let i = 0; i < 3; i++) {
        const [m] = await receiveAll(receiver, 1);
        expect(m!.deliveryCount).toBe(i);
        await receiver.abandonMessage(m!);
      }
      expect(await receiver.receiveMessages(1, { maxWaitTimeInMs: 300 })).toEqual([]);
      const dlq = h.client.createReceiver(q.maxdc, { subQueueType: 'deadLetter', receiveMode: 'receiveAndDelete' });
      const [d] = await receiveAll(dlq, 1);
      expect(d!.body).toBe('unlucky');
      expect(d!.deadLetterReason).toBe('MaxDeliveryCountExceeded');
      expect(d!.deliveryCount).toBe(3);
      await dlq.close();
      await receiver.close();
      await sender.close();
    });
  });

  describe('time', () => {
    it('dead-letters expired messages with TTLExpiredException when configured', async () => {
      const sender = h.client.createSender(q.ttlDl);
      await sender.sendMessages({ body: 'stale' });
      const dlq = h.client.createReceiver(q.ttlDl, { subQueueType: 'deadLetter' });
      const d = await waitFor(async () => (await dlq.peekMessages(1))[0], 5000, 'expiry');
      expect(d.body).toBe('stale');
      expect(d.deadLetterReason).toBe('TTLExpiredException');
      expect(await h.client.createReceiver(q.ttlDl).peekMessages(1)).toEqual([]);
      await dlq.close();
      await sender.close();
    });

    it('drops expired messages when dead-lettering on expiration is off (message TTL)', async () => {
      const sender = h.client.createSender(q.ttlDrop);
      await sender.sendMessages([{ body: 'short', timeToLive: 500 }, { body: 'long' }]);
      const receiver = h.client.createReceiver(q.ttlDrop);
      const from = (await receiver.peekMessages(1))[0]!.sequenceNumber!;
      await waitFor(async () => (await receiver.peekMessages(5, { fromSequenceNumber: from })).length === 1, 5000, 'expiry');
      const [m] = await receiveAll(receiver, 1);
      expect(m!.body).toBe('long');
      await receiver.completeMessage(m!);
      expect(await h.client.createReceiver(q.ttlDrop, { subQueueType: 'deadLetter' }).peekMessages(5)).toEqual([]);
      await receiver.close();
      await sender.close();
    });

    it('holds scheduled messages until their time, and cancels scheduled messages', async () => {
      const sender = h.client.createSender(q.sched);
      const at = new Date(Date.now() + 1500);
      const [keep, cancel] = await sender.scheduleMessages([{ body: 'scheduled' }, { body: 'cancelled' }], at);
      await sender.sendMessages({ body: 'via-property', scheduledEnqueueTimeUtc: new Date(Date.now() + 1000) });
      await sender.cancelScheduledMessages(cancel!);
      const receiver = h.client.createReceiver(q.sched, { receiveMode: 'receiveAndDelete' });
      const peeked = await receiver.peekMessages(5);
      expect(peeked.map((m) => m.state)).toEqual(['scheduled', 'scheduled']);
      expect(peeked[0]!.sequenceNumber!.toNumber()).toBe(keep!.toNumber());
      expect(await receiver.receiveMessages(1, { maxWaitTimeInMs: 300 })).toEqual([]);
      const got = await receiveAll(receiver, 2, 6000);
      expect(got.map((m) => m.body).sort()).toEqual(['scheduled', 'via-property']);
      expect(Date.now()).toBeGreaterThanOrEqual(at.getTime());
      await receiver.close();
      await sender.close();
    });
  });
});
