/**
 * Memory stays bounded: bodies live in the store, not in the emulator's heap. 200 MB of
 * messages go into a queue nobody reads, through an emulator process with an 8 MB body cache;
 * its peak resident memory must stay far below what keeping the bodies would need.
 */
import { ServiceBusClient } from '@azure/service-bus';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { configOf, emulatorMainJs, ensureBuilt } from './helpers';

const mainJs = emulatorMainJs;
const dir = mkdtempSync(join(tmpdir(), 'ferry-sb-mem-'));

afterAll(() => rmSync(dir, { recursive: true, force: true }));


function peakRssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)![1]) / 1024;
}

it('keeps the emulator\'s memory bounded while 200 MB of messages pile up', async () => {
  ensureBuilt();
  writeFileSync(join(dir, 'Config.json'), JSON.stringify(configOf([{ Name: 'backlog' }])));
  const child = spawn(process.execPath, [mainJs], {
    env: { ...process.env, FERRY_SERVICEBUS_PORT: '0', FERRY_SERVICEBUS_CONFIG: join(dir, 'Config.json'), FERRY_SERVICEBUS_DATA: join(dir, 'data'), FERRY_SERVICEBUS_CACHE_MB: '8' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const port = await new Promise<number>((res, rej) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on 127\.0\.0\.1:(\d+)/.exec(out);
      if (m) res(Number(m[1]));
    });
    child.once('exit', (code) => rej(new Error(`exited ${code}: ${out}`)));
  });
  const client = new ServiceBusClient(`Endpoint=sb://127.0.0.1:${port};SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;`);
  try {
    const baseline = peakRssMb(child.pid!);
    const sender = client.createSender('backlog');
    const body = Buffer.alloc(200 * 1024, 5);
    let next = 0;
    await Promise.all(Array.from({ length: 8 }, async () => {
      while (next < 1000) {
        next++;
        await sender.sendMessages({ body });
      }
    }));
    const peak = peakRssMb(child.pid!);
    expect(peak - baseline).toBeLessThan(120);
    const [last] = await client.createReceiver('backlog').peekMessages(1, { fromSequenceNumber: (await client.createReceiver('backlog').peekMessages(1))[0]!.sequenceNumber!.add(999) });
    expect(last).toBeDefined();
  } finally {
    await client.close();
    child.kill('SIGTERM');
  }
}, 120_000);
