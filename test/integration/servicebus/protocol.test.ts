/**
 * Conformance below the SDK: AMQP frames the SDK's rhea sends in races, sent on purpose with a
 * raw rhea connection.
 */
import { once } from 'node:events';
import * as rhea from 'rhea';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configOf, startHarness, uniqueName, type Harness } from './helpers';

// rhea's frame constructors (not in its typings)
// eslint-disable-next-line @typescript-eslint/no-require-imports
const frames = require('rhea/lib/frames.js') as { detach(fields: { handle: number; closed: boolean }): unknown };

describe('AMQP frames in races', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness(configOf([{ Name: uniqueName('proto') }]), { store: 'memory' });
  });
  afterAll(async () => {
    await h?.stop();
  });

  it('drops a detach that arrives after its session ended, and keeps the connection', async () => {
    // When acceptNextSession times out on both sides at once, the client ends its session while
    // the broker refuses the held attach; rhea then answers the refusal with a detach after its
    // own end. The connection carries other sessions (with their locks): it must survive.
    const container = rhea.create_container({ id: 'stray-frames' });
    const conn = container.connect({ host: h.emulator.host, port: h.emulator.port, reconnect: false });
    let lost = false;
    conn.on('disconnected', () => (lost = true));
    conn.on('connection_error', () => (lost = true));
    await once(conn, 'connection_open');
    const first = conn.create_session();
    first.begin();
    await once(first, 'session_open');
    const channel = (first as unknown as { local: { channel: number } }).local.channel;
    first.close();
    await once(first, 'session_close');
    (conn as unknown as { _write_frame(channel: number, frame: unknown): void })._write_frame(channel, frames.detach({ handle: 0, closed: true }));
    // frames are handled in order: a session begun after the stray detach opens only if the
    // broker kept the connection
    const second = conn.create_session();
    second.begin();
    const opened = await Promise.race([
      once(second, 'session_open').then(() => true),
      once(conn, 'disconnected').then(() => false),
    ]);
    expect(opened).toBe(true);
    expect(lost).toBe(false);
    expect(conn.is_open()).toBe(true);
    conn.close();
    await once(conn, 'connection_close');
  });
  it('still fails the connection for a frame on a channel it never had, so a confused client starts clean', async () => {
    // e.g. a client that reconnected to a restarted broker and still talks about its old
    // sessions: ignoring that would leave it waiting forever for replies
    const container = rhea.create_container({ id: 'unknown-channel' });
    const conn = container.connect({ host: h.emulator.host, port: h.emulator.port, reconnect: false });
    await once(conn, 'connection_open');
    const closed = new Promise<void>((resolve) => {
      conn.on('disconnected', () => resolve());
      conn.on('connection_close', () => resolve());
      conn.on('connection_error', () => resolve());
    });
    (conn as unknown as { _write_frame(channel: number, frame: unknown): void })._write_frame(7, frames.detach({ handle: 0, closed: true }));
    await closed;
    expect(conn.is_open()).toBe(false);
  });
});
