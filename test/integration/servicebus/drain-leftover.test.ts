/**
 * After a session receive that got fewer messages than it asked for, the SDK drains the link's
 * leftover credit. Messages sent afterwards must wait for the next receive, in order: delivered
 * to the idle link they would be lost until their lock expires, and the next receive would see
 * later messages first (a sequence gap for Ferry's apply).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configOf, startHarness, uniqueName, type Harness } from './helpers';

describe('leftover credit after a short session receive', () => {
  const queue = uniqueName('drain');
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness(configOf([{ Name: queue, Properties: { RequiresSession: true } }]), { store: 'memory' });
  });
  afterAll(async () => {
    await h?.stop();
  });

  it('messages sent after the receive ended go to the next receive, in order', async () => {
    const sender = h.client.createSender(queue);
    const first = Array.from({ length: 30 }, (_, i) => ({ body: `a${i}`, sessionId: 's1' }));
    for (const m of first) await sender.sendMessages(m);
    const receiver = await h.client.acceptSession(queue, 's1');
    const got = await receiver.receiveMessages(64, { maxWaitTimeInMs: 2000 });
    expect(got.map((m) => m.body)).toEqual(first.map((m) => m.body));
    for (const m of got) await receiver.completeMessage(m);
    // the receive is over (its leftover credit drained); more messages arrive meanwhile
    for (let i = 0; i < 15; i++) await sender.sendMessages({ body: `b${i}`, sessionId: 's1' });
    await new Promise((r) => setTimeout(r, 500));
    await sender.sendMessages({ body: 'c', sessionId: 's1' });
    const next = await receiver.receiveMessages(64, { maxWaitTimeInMs: 2000 });
    expect(next.map((m) => m.body)).toEqual([...Array.from({ length: 15 }, (_, i) => `b${i}`), 'c']);
    await receiver.close();
    await sender.close();
  }, 30_000);
});
