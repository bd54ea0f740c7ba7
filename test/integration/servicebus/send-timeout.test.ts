/**
 * A send whose connection drops before the broker settles it must fail, not hang.
 *
 * rhea-promise 3.0.3's AwaitableSender builds its timeout error from `this.address`, which is
 * the link's remote source: rhea clears it when the connection drops, so the getter throws
 * inside the timer, the send's promise never settles and the SDK's `sendMessages` hangs for
 * ever (amqp/rhea-promise#109, fixed upstream by #119 but not released). In Ferry that held an
 * appliance's outbox (one disk's later batches never sent) and an apply invocation (a
 * compaction request never sent, so the disk's session never moved again) after the cloud came
 * back. shared/azure/amqp-fixes.ts mends the getter. This drives the real SDK through a proxy
 * that swallows a transfer and then drops the connection; the rhea link's remote state is then
 * reset by hand, as rhea does when the connection is opened again (which in the field happens
 * when another send or receive on the client reconnects first).
 */
import { ServiceBusClient } from '@azure/service-bus';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import '../../../shared/azure/amqp-fixes';
import { configOf, startHarness, uniqueName, type Harness } from './helpers';

/** A TCP proxy to the emulator that can swallow what clients send, and drop every connection. */
class CuttableProxy {
  readonly server: Server;
  swallow = false;
  private readonly sockets = new Set<Socket>();
  constructor(target: { host: string; port: number }) {
    this.server = createServer((client) => {
      const upstream = connect(target.port, target.host);
      this.sockets.add(client).add(upstream);
      client.on('data', (d) => {
        if (!this.swallow) upstream.write(d);
      });
      upstream.on('data', (d) => client.write(d));
      const end = (): void => {
        client.destroy();
        upstream.destroy();
      };
      client.on('error', end).on('close', end);
      upstream.on('error', end).on('close', end);
    });
  }
  listen(): Promise<number> {
    return new Promise((resolve) => this.server.listen(0, '127.0.0.1', () => resolve((this.server.address() as { port: number }).port)));
  }
  dropAll(): void {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }
  close(): Promise<void> {
    this.dropAll();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** The rhea link under the SDK's sender (internals: ServiceBusSenderImpl -> MessageSender -> AwaitableSender -> rhea link). */
function rheaLinkOf(sender: unknown): { _reconnect(): void } {
  const link = (sender as { _sender?: { link?: { _link?: { _reconnect(): void } } } })._sender?.link?._link;
  if (!link) throw new Error('the SDK sender has no open rhea link: its internals changed; update rheaLinkOf');
  return link;
}

describe('a send cut off before its settlement', () => {
  const queue = uniqueName('cut');
  let h: Harness;
  let proxy: CuttableProxy;
  let client: ServiceBusClient;
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown): void => void uncaught.push(err);
  beforeAll(async () => {
    h = await startHarness(configOf([{ Name: queue }]), { store: 'memory' });
    proxy = new CuttableProxy({ host: h.emulator.host, port: h.emulator.port });
    const port = await proxy.listen();
    const connection = h.emulator.connectionString.replace(/Endpoint=sb:\/\/[^;/]+/, `Endpoint=sb://127.0.0.1:${port}`);
    expect(connection).toContain(`:${port}`);
    client = new ServiceBusClient(connection, { retryOptions: { maxRetries: 0, timeoutInMs: 1_500 } });
    process.prependListener('uncaughtException', onUncaught);
  });
  afterAll(async () => {
    process.off('uncaughtException', onUncaught);
    await client?.close().catch(() => undefined);
    await proxy?.close();
    await h?.stop();
  });

  it('rejects within its timeout instead of hanging, and throws nothing from a timer', async () => {
    const sender = client.createSender(queue);
    await sender.sendMessages({ body: 'first: opens the link' });
    proxy.swallow = true;
    const started = Date.now();
    const sent = sender.sendMessages({ body: 'second: never settled' }).then(
      () => 'sent' as const,
      (err: unknown) => err,
    );
    // the transfer is out (and swallowed); then the connection drops and rhea resets the link's
    // remote state, as its connection does when it connects again (Connection._reset_remote_state)
    await new Promise((r) => setTimeout(r, 300));
    proxy.dropAll();
    rheaLinkOf(sender)._reconnect();
    const deadline = new Promise((r) => setTimeout(r, 15_000, 'still pending after 15 s' as const));
    const outcome = await Promise.race([sent, deadline]);
    expect(outcome).not.toBe('still pending after 15 s');
    expect(outcome).not.toBe('sent');
    // the SDK's own timeout error, which its retries and Ferry's callers handle
    expect(String(outcome)).toMatch(/not able to send the message .* due to operation timeout/);
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(uncaught.map(String)).toEqual([]);
    await sender.close().catch(() => undefined);
  }, 30_000);
});
