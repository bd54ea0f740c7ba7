/**
 * The emulator as a process (`node dist/local/servicebus/main.js`): persistence across kill -9,
 * clean shutdown on SIGTERM, and the one-line error for a bad config file.
 * Needs a build (`npm test` runs one first; this file builds if dist is older than the sources).
 */
import { ServiceBusClient } from '@azure/service-bus';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configOf, emulatorMainJs, ensureBuilt, uniqueName, waitFor } from './helpers';

const mainJs = emulatorMainJs;


interface Proc { child: ChildProcess; port: number; output: () => string }

function startProcess(env: Record<string, string>): Promise<Proc> {
  const child = spawn(process.execPath, [mainJs], {
    env: { ...process.env, FERRY_LOG_FORMAT: 'pretty', FERRY_LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr!.on('data', (d: Buffer) => { out += d.toString(); });
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`emulator did not start: ${out}`)), 20_000);
    const onData = (): void => {
      const m = /listening on 127\.0\.0\.1:(\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolvePromise({ child, port: Number(m[1]), output: () => out });
      }
    };
    child.stdout!.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`emulator exited with ${code}: ${out}`));
    });
  });
}

function exited(child: ChildProcess): Promise<number | null> {
  return new Promise((r) => {
    if (child.exitCode !== null || child.signalCode !== null) r(child.exitCode);
    else child.once('exit', (code) => r(code));
  });
}

const connectionString = (port: number): string =>
  `Endpoint=sb://127.0.0.1:${port};SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;`;

let dir: string;
const queue = uniqueName('durable');
const sessions = uniqueName('durable-s');
const queue2 = uniqueName('durable-big');

beforeAll(() => {
  ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), 'ferry-sb-proc-'));
  writeFileSync(join(dir, 'Config.json'), JSON.stringify(configOf([
    { Name: queue, Properties: { LockDuration: 'PT30S' } },
    { Name: sessions, Properties: { RequiresSession: true } },
    { Name: queue2 },
  ])));
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('the emulator process', () => {
  it('keeps every accepted message and loses every completed one across kill -9', async () => {
    const env = { FERRY_SERVICEBUS_PORT: '0', FERRY_SERVICEBUS_CONFIG: join(dir, 'Config.json'), FERRY_SERVICEBUS_DATA: join(dir, 'data') };
    const first = await startProcess(env);
    expect(first.output()).toMatch(/Service Bus emulator listening on 127\.0\.0\.1:\d+ \(3 queues, data in .*data\)/);
    let client = new ServiceBusClient(connectionString(first.port));
    const sender = client.createSender(queue);
    const n = 60;
    const batch = await sender.createMessageBatch();
    for (let i = 0; i < 40; i++) batch.tryAddMessage({ body: i, messageId: `m${i}` });
    await sender.sendMessages(batch);
    for (let i = 40; i < n; i++) await sender.sendMessages({ body: i, messageId: `m${i}`, applicationProperties: { big: 2 ** 60 } });
    const receiver = client.createReceiver(queue);
    const got: Awaited<ReturnType<typeof receiver.receiveMessages>> = [];
    while (got.length < 30) got.push(...(await receiver.receiveMessages(30 - got.length, { maxWaitTimeInMs: 1000 })));
    const completed = got.slice(0, 20);
    const deadLettered = got.slice(20, 25);
    // got.slice(25): locked, never settled: they must come back after the restart.
    for (const m of completed) await receiver.completeMessage(m);
    for (const m of deadLettered) await receiver.deadLetterMessage(m, { deadLetterReason: 'Test', deadLetterErrorDescription: 'kept' });
    const s = client.createSender(sessions);
    await s.sendMessages({ body: 'in-session', sessionId: 'K' });
    const sr = await client.acceptSession(sessions, 'K');
    await sr.setSessionState('state-before-crash');
    const maxSeq = Math.max(...got.map((m) => m.sequenceNumber!.toNumber()));
    // Large bodies live in the segment log, not in SQLite rows: they must survive too.
    const bigQueue = client.createSender(queue2);
    for (let i = 0; i < 6; i++) await bigQueue.sendMessages({ body: Buffer.alloc(100 * 1024, i), messageId: `big${i}` });
    const bigReceiver = client.createReceiver(queue2);
    const bigGot = await waitFor(async () => {
      const r = await bigReceiver.receiveMessages(2, { maxWaitTimeInMs: 500 });
      return r.length === 2 ? r : undefined;
    }, 5000, 'two large messages');
    for (const m of bigGot) await bigReceiver.completeMessage(m);

    first.child.kill('SIGKILL');
    await exited(first.child);
    await client.close().catch(() => undefined);

    const second = await startProcess(env);
    client = new ServiceBusClient(connectionString(second.port));
    try {
      const r = client.createReceiver(queue, { receiveMode: 'receiveAndDelete' });
      const left: number[] = [];
      for (;;) {
        const batchGot = await r.receiveMessages(50, { maxWaitTimeInMs: 1000 });
        if (batchGot.length === 0) break;
        left.push(...batchGot.map((m) => m.body as number));
        // An int64 above 2^53 reaches the SDK as its 8 big-endian bytes (as from real Service
        // Bus): the AMQP type survived storage.
        for (const m of batchGot) {
          if ((m.body as number) >= 40) expect(Object.values(m.applicationProperties?.big as object)).toEqual([16, 0, 0, 0, 0, 0, 0, 0]);
        }
      }
      const gone = new Set([...completed, ...deadLettered].map((m) => m.body as number));
      expect(left.sort((a, b) => a - b)).toEqual(Array.from({ length: n }, (_, i) => i).filter((i) => !gone.has(i)));
      const dlq = client.createReceiver(queue, { subQueueType: 'deadLetter', receiveMode: 'receiveAndDelete' });
      const dead = await waitFor(async () => {
        const d = await dlq.receiveMessages(10, { maxWaitTimeInMs: 500 });
        return d.length ? d : undefined;
      }, 5000, 'dead letters');
      expect(dead.map((m) => m.body).sort()).toEqual(deadLettered.map((m) => m.body).sort());
      expect(dead.every((m) => m.deadLetterReason === 'Test')).toBe(true);
      const bigLeft = await waitFor(async () => {
        const r = await client.createReceiver(queue2, { receiveMode: 'receiveAndDelete' }).receiveMessages(10, { maxWaitTimeInMs: 1000 });
        return r.length ? r : undefined;
      }, 5000, 'large messages');
      const completedIds = new Set(bigGot.map((m) => m.messageId));
      expect(bigLeft.map((m) => m.messageId).sort()).toEqual(['big0', 'big1', 'big2', 'big3', 'big4', 'big5'].filter((id) => !completedIds.has(id)));
      for (const m of bigLeft) {
        const i = Number(String(m.messageId).slice(3));
        expect(Buffer.compare(m.body as Buffer, Buffer.alloc(100 * 1024, i))).toBe(0);
      }
      const again = await client.acceptSession(sessions, 'K');
      expect(await again.getSessionState()).toBe('state-before-crash');
      const [k] = await again.receiveMessages(1, { maxWaitTimeInMs: 2000 });
      expect(k!.body).toBe('in-session');
      await again.completeMessage(k!);
      await again.close();
      await client.createSender(queue).sendMessages({ body: 'after' });
      const [after] = await r.receiveMessages(1, { maxWaitTimeInMs: 2000 });
      expect(after!.sequenceNumber!.toNumber()).toBeGreaterThan(maxSeq);
    } finally {
      // SIGTERM with a client still connected: the emulator closes the connection and exits 0.
      second.child.kill('SIGTERM');
      expect(await exited(second.child)).toBe(0);
      await client.close().catch(() => undefined);
    }
  });

  it('exits 1 with one line naming the file, the entity and the field for a bad config', async () => {
    const bad = join(dir, 'Bad.json');
    writeFileSync(bad, JSON.stringify(configOf([{ Name: 'fine' }, { Name: 'broken', Properties: { LockDuration: 'one minute' } }])));
    const child = spawn(process.execPath, [mainJs], {
      env: { ...process.env, FERRY_SERVICEBUS_PORT: '0', FERRY_SERVICEBUS_CONFIG: bad, FERRY_SERVICEBUS_DATA: join(dir, 'bad-data') },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let err = '';
    child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
    expect(await exited(child)).toBe(1);
    const lines = err.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(bad);
    expect(lines[0]).toContain("'broken'");
    expect(lines[0]).toContain('Properties.LockDuration');
  });
});
