/**
 * Conformance: topics with subscriptions (fan-out through the `$Default` true filter), and
 * backpressure when a queue reaches MaxSizeInMegabytes.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configOf, startHarness, STORES, uniqueName, waitFor, type Harness } from './helpers';

const topic = uniqueName('events');
const full = uniqueName('full');
describe.each(STORES)('with the %s store', (store) => {
  let h: Harness;

  beforeAll(async () => {
    h = await startHarness(configOf(
      [{ Name: full, Properties: { MaxSizeInMegabytes: 1 } }],
      [{ Name: topic, Properties: {}, Subscriptions: [{ Name: 'audit', Properties: {} }, { Name: 'billing', Properties: { MaxDeliveryCount: 1 } }] }],
    ), { store });
  });

  afterAll(async () => {
    await h?.stop();
  });

  describe('topics', () => {
    it('delivers every message sent to a topic to each subscription', async () => {
      const sender = h.client.createSender(topic);
      await sender.sendMessages([{ body: 'e1' }, { body: 'e2' }]);
      for (const sub of ['audit', 'billing']) {
        const r = h.client.createReceiver(topic, sub);
        const got = await waitFor(async () => {
          const m = await r.peekMessages(10);
          return m.length === 2 ? m : undefined;
        }, 5000, `messages in ${sub}`);
        expect(got.map((m) => m.body)).toEqual(['e1', 'e2']);
        const received = await r.receiveMessages(2, { maxWaitTimeInMs: 2000 });
        for (const m of received) await r.completeMessage(m);
        await r.close();
      }
      await sender.close();
    });

    it('keeps subscriptions independent, each with its own dead-letter queue', async () => {
      const sender = h.client.createSender(topic);
      await sender.sendMessages({ body: 'once' });
      const billing = h.client.createReceiver(topic, 'billing');
      const [m] = await billing.receiveMessages(1, { maxWaitTimeInMs: 2000 });
      await billing.abandonMessage(m!);
      const dlq = h.client.createReceiver(topic, 'billing', { subQueueType: 'deadLetter', receiveMode: 'receiveAndDelete' });
      const [dead] = await dlq.receiveMessages(1, { maxWaitTimeInMs: 2000 });
      expect(dead!.deadLetterReason).toBe('MaxDeliveryCountExceeded');
      const audit = h.client.createReceiver(topic, 'audit', { receiveMode: 'receiveAndDelete' });
      const [a] = await audit.receiveMessages(1, { maxWaitTimeInMs: 2000 });
      expect(a!.body).toBe('once');
      expect(a!.deliveryCount).toBe(0);
      for (const r of [billing, dlq, audit]) await r.close();
      await sender.close();
    });

    it('refuses an unknown subscription', async () => {
      const r = h.client.createReceiver(topic, 'nope');
      const err = await r.receiveMessages(1, { maxWaitTimeInMs: 500 }).catch((e: unknown) => e);
      expect((err as { code: string }).code).toBe('MessagingEntityNotFound');
      await r.close();
    });
  });

  describe('MaxSizeInMegabytes', () => {
    it('makes senders wait while the queue is full, and lets them go on once it drains', async () => {
      const sender = h.client.createSender(full);
      const body = Buffer.alloc(100 * 1024, 1);
      let sent = 0;
      const sending = (async () => {
        for (let i = 0; i < 20; i++) {
          await sender.sendMessages({ body, messageId: `f${i}` });
          sent++;
        }
      })();
      // About 1 MiB (10 messages of 100 KiB) fits; then the emulator stops granting credit.
      await waitFor(() => sent >= 10, 10_000, 'the queue to fill');
      await new Promise((r) => setTimeout(r, 300));
      expect(sent).toBeLessThan(20);
      const receiver = h.client.createReceiver(full, { receiveMode: 'receiveAndDelete' });
      const ids = new Set<string>();
      await waitFor(async () => {
        for (const m of await receiver.receiveMessages(10, { maxWaitTimeInMs: 300 })) ids.add(String(m.messageId));
        return ids.size === 20;
      }, 20_000, 'all 20 messages');
      await sending;
      expect(sent).toBe(20);
      await receiver.close();
      await sender.close();
    });
  });
});
