/**
 * `npm start` end to end: the real entry point (dist/local/stack/main.js, what `npm start`
 * runs after its build) on free ports in a temp data dir; health answers, the generated
 * function key is stored 0600 and printed, SIGTERM stops all three children.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tcpReady } from '../../../local/stack/children';
import { storageConnectionString } from '../../../local/stack/stack';
import { freePorts } from '../../support/ports';
import { ROOT } from '../../support/stack';
import { waitFor } from '../../support/wait';

describe('npm start', () => {
  let proc: ChildProcess;
  let output = '';
  let dataDir: string;
  let ports: number[];
  let exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'ferry-npm-start-'));
    ports = await freePorts(5);
    const [blob, queue, table, servicebus, host] = ports as [number, number, number, number, number];
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      FERRY_DATA_DIR: dataDir,
      AzureWebJobsStorage: storageConnectionString({ blob, queue, table }),
      FERRY_SERVICEBUS_PORT: String(servicebus),
      FERRY_HOST_PORT: String(host),
    };
    delete env.FERRY_FUNCTION_KEY;
    delete env.FERRY_MASTER_KEY;
    delete env.ServiceBusConnection;
    proc = spawn(process.execPath, [join(ROOT, 'dist/local/stack/main.js')], { env, cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    proc.stdout?.on('data', (d: Buffer) => (output += d.toString()));
    proc.stderr?.on('data', (d: Buffer) => (output += d.toString()));
    exit = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
    await waitFor(() => output.includes('Ferry local stack is ready') || proc.exitCode !== null, 'the stack to be ready', { timeoutMs: 90_000 });
    expect(proc.exitCode, output).toBeNull();
  });

  afterAll(async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('answers GET /api/health without a key', async () => {
    const res = await fetch(`http://127.0.0.1:${ports[4]}/api/health`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: 'ok' });
  });

  it('generates the function key once into the data dir with mode 0600 and prints it', () => {
    const keyFile = join(dataDir, 'function-key');
    expect(statSync(keyFile).mode & 0o777).toBe(0o600);
    const key = readFileSync(keyFile, 'utf8').trim();
    expect(key.length).toBeGreaterThanOrEqual(32);
    expect(output).toContain(key);
    expect(statSync(join(dataDir, 'master-key')).mode & 0o777).toBe(0o600);
  });

  it('prefixes the logs of all three services', () => {
    for (const name of ['[azurite]', '[servicebus]', '[host]', '[stack]']) expect(output).toContain(name);
  });

  it('stops all three on SIGTERM, leaving nothing listening', async () => {
    proc.kill('SIGTERM');
    const { code } = await exit;
    expect(code).toBe(0);
    for (const port of ports) expect(await tcpReady(port)).toBe(false);
  });
});
