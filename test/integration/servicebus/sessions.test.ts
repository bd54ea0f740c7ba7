/**
 * Conformance: session queues through the real SDK (rules, accept/acceptNext, exclusivity,
 * ordering under competing receivers, session lock expiry and renewal, session state).
 */
import { ServiceBusClient, type ServiceBusSessionReceiver } from '@azure/service-bus';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configOf, startHarness, STORES, uniqueName, waitFor, type Harness } from './helpers';

const q = {
  rules: uniqueName('s-rules'),
  plain: uniqueName('plain'),
  accept: uniqueName('s-accept'),
  next: uniqueName('s-next'),
  order: uniqueName('s-order'),
  expiry: uniqueName('s-expiry'),
  state: uniqueName('s-state'),
  release: uniqueName('s-release'),
  drain: uniqueName('s-drain'),
};

describe.each(STORES)('with the %s store', (store) => {
  let h: Harness;

  beforeAll(async () => {
    const session = { RequiresSession: true, LockDuration: 'PT10S' };
    h = await startHarness(configOf([
      { Name: q.rules, Properties: session },
      { Name: q.plain },
      { Name: q.accept, Properties: session },
      { Name: q.next, Properties: session },
      { Name: q.order, Properties: session },
      { Name: q.expiry, Properties: { RequiresSession: true, LockDuration: 'PT2S' } },
      { Name: q.state, Properties: session },
      { Name: q.release, Properties: session },
      { Name: q.drain, Properties: session },
    ]), { store });
  });

  afterAll(async () => {
    await h?.stop();
  });

  const codeOf = (e: unknown): string | undefined => (e as { code?: string }).code;

  describe('session rules', () => {
    it('refuses a message without a session id on a session queue', async () => {
      const sender = h.client.createSender(q.rules);
      const err = await sender.sendMessages({ body: 'no session' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(Error);
      expect(String((err as Error).message)).toMatch(/SessionId was not set/);
      await sender.sendMessages({ body: 'ok', sessionId: 's1' });
      await sender.close();
    });

    it('refuses a plain receiver on a session queue', async () => {
      const receiver = h.client.createReceiver(q.rules);
      const err = await receiver.receiveMessages(1, { maxWaitTimeInMs: 500 }).catch((e: unknown) => e);
      expect(String((err as Error).message)).toMatch(/requires sessions/);
      await receiver.close();
    });

    it('refuses a session receiver on a queue without sessions', async () => {
      const err = await h.client.acceptSession(q.plain, 'x').catch((e: unknown) => e);
      // The SDK may report the refusal itself (attach reply without the session) before it reads
      // the broker's detach error: either way the receiver is refused.
      expect(String((err as Error).message)).toMatch(/does not require sessions|Failed to create a receiver for the requested session/);
    });
  });

  describe('accepting sessions', () => {
    it('acceptSession binds the named session and delivers only its messages, in order', async () => {
      const sender = h.client.createSender(q.accept);
      await sender.sendMessages([
        { body: 'a1', sessionId: 'A' }, { body: 'b1', sessionId: 'B' }, { body: 'a2', sessionId: 'A' }, { body: 'a3', sessionId: 'A' },
      ]);
      const a = await h.client.acceptSession(q.accept, 'A');
      expect(a.sessionId).toBe('A');
      expect(a.sessionLockedUntilUtc!.getTime()).toBeGreaterThan(Date.now());
      const got = await a.receiveMessages(3, { maxWaitTimeInMs: 2000 });
      expect(got.map((m) => m.body)).toEqual(['a1', 'a2', 'a3']);
      expect(got.every((m) => m.sessionId === 'A')).toBe(true);
      for (const m of got) await a.completeMessage(m);
      // One receiver per session.
      const b = await h.client.acceptSession(q.accept, 'B');
      const err = await h.client.acceptSession(q.accept, 'B').catch((e: unknown) => e);
      expect(codeOf(err)).toBe('SessionCannotBeLocked');
      const [b1] = await b.receiveMessages(1, { maxWaitTimeInMs: 2000 });
      expect(b1!.body).toBe('b1');
      await b.completeMessage(b1!);
      await a.close();
      await b.close();
      await sender.close();
    });

    it('acceptNextSession waits for a session with messages, and times out when none comes', async () => {
      const pending = h.client.acceptNextSession(q.next, { maxAutoLockRenewalDurationInMs: 0 });
      await new Promise((r) => setTimeout(r, 200));
      const sender = h.client.createSender(q.next);
      await sender.sendMessages({ body: 'late', sessionId: 'N1' });
      const r = await pending;
      expect(r.sessionId).toBe('N1');
      const [m] = await r.receiveMessages(1, { maxWaitTimeInMs: 2000 });
      expect(m!.body).toBe('late');
      await r.completeMessage(m!);
      await r.close();

      const short = new ServiceBusClient(h.emulator.connectionString, { retryOptions: { maxRetries: 0, timeoutInMs: 1000 } });
      const start = Date.now();
      const err = await short.acceptNextSession(q.next).catch((e: unknown) => e);
      expect(Date.now() - start).toBeLessThan(5000);
      expect(codeOf(err)).toBe('ServiceTimeout');
      await short.close();
      await sender.close();
    });

    it('keeps each session in order under competing session receivers', async () => {
      const sender = h.client.createSender(q.order);
      const sessions = ['s0', 's1', 's2', 's3'];
      const perSession = 15;
      const msgs = [];
      for (let i = 0; i < perSession; i++) for (const s of sessions) msgs.push({ body: i, sessionId: s });
      await sender.sendMessages(msgs);
      const seen = new Map<string, number[]>();
      const clients = [0, 1].map(() => new ServiceBusClient(h.emulator.connectionString));
      const work = clients.map(async (c) => {
        for (;;) {
          let r: ServiceBusSessionReceiver;
          try {
            r = await c.acceptNextSession(q.order, { maxAutoLockRenewalDurationInMs: 0 });
          } catch {
            return;
          }
          for (;;) {
            const got = await r.receiveMessages(4, { maxWaitTimeInMs: 300 });
            if (got.length === 0) break;
            for (const m of got) {
              const list = seen.get(r.sessionId) ?? [];
              list.push(m.body as number);
              seen.set(r.sessionId, list);
              await r.completeMessage(m);
            }
          }
          await r.close();
          if ([...seen.values()].reduce((n, l) => n + l.length, 0) >= msgs.length) return;
        }
      });
      await Promise.race([
        Promise.all(work),
        waitFor(() => [...seen.values()].reduce((n, l) => n + l.length, 0) >= msgs.length, 20_000, 'all session messages'),
      ]);
      for (const s of sessions) expect(seen.get(s)).toEqual(Array.from({ length: perSession }, (_, i) => i));
      for (const c of clients) await c.close();
      await sender.close();
    });
  });

  describe('session locks and state', () => {
    it('frees a session whose lock expired; renewSessionLock keeps it', async () => {
      const sender = h.client.createSender(q.expiry);
      await sender.sendMessages([{ body: 'e1', sessionId: 'E' }, { body: 'r1', sessionId: 'R' }]);
      const e = await h.client.acceptSession(q.expiry, 'E', { maxAutoLockRenewalDurationInMs: 0 });
      const [m] = await e.receiveMessages(1, { maxWaitTimeInMs: 2000 });
      expect(m!.deliveryCount).toBe(0);
      // Nobody renews: after LockDuration (2 s) another receiver can take the session.
      const other = await waitFor(() => h.client.acceptSession(q.expiry, 'E', { maxAutoLockRenewalDurationInMs: 0 }), 8000, 'session E to free up');
      const [again] = await other.receiveMessages(1, { maxWaitTimeInMs: 2000 });
      expect(again!.body).toBe('e1');
      expect(again!.deliveryCount).toBe(1);
      await other.completeMessage(again!);
      const lost = await e.completeMessage(m!).catch((err: unknown) => err);
      expect(codeOf(lost)).toMatch(/SessionLockLost|MessageLockLost/);
      await other.close();
      await e.close().catch(() => undefined);

      const r = await h.client.acceptSession(q.expiry, 'R', { maxAutoLockRenewalDurationInMs: 0 });
      const start = Date.now();
      while (Date.now() - start < 3000) {
        await r.renewSessionLock();
        expect(r.sessionLockedUntilUtc!.getTime()).toBeGreaterThan(Date.now() + 1000);
        await new Promise((res) => setTimeout(res, 600));
      }
      const taken = await h.client.acceptSession(q.expiry, 'R').catch((err: unknown) => err);
      expect(codeOf(taken)).toBe('SessionCannotBeLocked');
      const [r1] = await r.receiveMessages(1, { maxWaitTimeInMs: 2000 });
      await r.completeMessage(r1!);
      await r.close();
      await sender.close();
    });

    it('gets and sets session state', async () => {
      const r = await h.client.acceptSession(q.state, 'S');
      expect(await r.getSessionState()).toBeNull();
      await r.setSessionState({ step: 3 });
      expect(await r.getSessionState()).toEqual({ step: 3 });
      await r.close();
      const again = await h.client.acceptSession(q.state, 'S');
      expect(await again.getSessionState()).toEqual({ step: 3 });
      await again.setSessionState(null);
      expect(await again.getSessionState()).toBeNull();
      await again.close();
    });

    it('releases the session and redelivers its locked messages when the receiver closes', async () => {
      const sender = h.client.createSender(q.release);
      await sender.sendMessages([{ body: 1, sessionId: 'X' }, { body: 2, sessionId: 'X' }]);
      const r = await h.client.acceptSession(q.release, 'X');
      const got = await r.receiveMessages(2, { maxWaitTimeInMs: 2000 });
      expect(got.map((m) => m.body)).toEqual([1, 2]);
      await r.close();
      const r2 = await h.client.acceptNextSession(q.release);
      expect(r2.sessionId).toBe('X');
      const again = await r2.receiveMessages(2, { maxWaitTimeInMs: 2000 });
      expect(again.map((m) => m.body)).toEqual([1, 2]);
      expect(again.map((m) => m.deliveryCount)).toEqual([1, 1]);
      for (const m of again) await r2.completeMessage(m);
      await r2.close();
      await sender.close();
    });
      it('answers a drain that arrives after its credit went to deliveries, so the session link survives', async () => {
      // receiveMessages(n, 1 ms) with n messages waiting: the SDK's timer ends the receive while
      // the n deliveries are on the wire, so its drain finds no credit left. Unanswered, the SDK
      // waits out its 200 ms drain timeout and closes the link, which loses the session.
      const sender = h.client.createSender(q.drain);
      const r = await h.client.acceptSession(q.drain, 'D');
      const n = 8;
      const got: number[] = [];
      const slowest: number[] = [];
      for (let round = 0; round < 5; round++) {
        await sender.sendMessages(Array.from({ length: n }, (_, i) => ({ body: round * n + i, sessionId: 'D' })));
        await waitFor(async () => (await r.peekMessages(n)).length === n, 5000, 'the round on the queue');
        let inRound = 0;
        let worst = 0;
        const deadline = Date.now() + 5000;
        while (inRound < n && Date.now() < deadline) {
          const t = Date.now();
          const batch = await r.receiveMessages(n - inRound, { maxWaitTimeInMs: 1 });
          worst = Math.max(worst, Date.now() - t);
          for (const m of batch) {
            await r.completeMessage(m);
            got.push(m.body as number);
          }
          inRound += batch.length;
        }
        slowest.push(worst);
      }
      expect(got).toEqual(Array.from({ length: 5 * n }, (_, i) => i));
      expect(r.isClosed).toBe(false);
      // every receive ended on the broker's answer, none on the SDK's drain timeout
      expect(Math.max(...slowest)).toBeLessThan(190);
      await r.close();
      await sender.close();
    });
  });
});
