import { spawn } from 'node:child_process';
import { request } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, expect, it } from 'vitest';
import { fixtureState } from '../../fixtures/host-app/lib/events';
import { freePort } from '../../support/ports';
import { waitFor } from '../../support/wait';
import { APP_ROOT, ensureBuilt, FUNCTION_KEY, ROOT, startTestHost } from './helpers';

/** GET on a fresh connection (no pooled keep-alive socket): status and body, or the error code. */
function freshGet(url: string): Promise<{ status?: number; body?: string; error?: string }> {
  return new Promise((resolve) => {
    const req = request(url, { agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? err.message }));
    });
    req.on('error', (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? err.message }));
    req.end();
  });
}

function release(key: string): boolean {
  const fn = fixtureState().held.get(key);
  fn?.();
  return fn !== undefined;
}

describe('graceful stop', () => {
  it('stops taking requests, lets the one in flight finish, then runs appTerminate', async () => {
    const { host, api } = await startTestHost();
    const key = `k-${Date.now()}`;
    const inFlight = freshGet(`${api}/hold/${key}`);
    await waitFor(() => fixtureState().held.has(key), 'the held request to reach the function');

    let stopped = false;
    const stopping = host.stop({ graceMs: 20_000 }).then(() => {
      stopped = true;
    });
    // New connections are refused while the old request is still running.
    await waitFor(async () => (await freshGet(`${api}/auth/anonymous`)).error === 'ECONNREFUSED', 'new connections to be refused');
    expect(stopped).toBe(false);

    expect(release(key)).toBe(true);
    const res = await inFlight;
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body ?? '')).toEqual({ released: key });
    await stopping;
    expect(fixtureState().events.filter((e) => e.fn === 'appTerminate').at(-1)?.startedBy).toBe('appStart');
  });

  it('bounds the wait by graceMs', async () => {
    const { host, api } = await startTestHost();
    const key = `slow-${Date.now()}`;
    const inFlight = freshGet(`${api}/hold/${key}`);
    await waitFor(() => fixtureState().held.has(key), 'the held request to reach the function');
    const started = Date.now();
    await host.stop({ graceMs: 300 });
    expect(Date.now() - started).toBeLessThan(5_000);
    expect((await inFlight).error).toBeDefined();
    release(key);
  });
});

describe('start failures', () => {
  it('names a port in use and leaves process.env as it was', async () => {
    const first = await startTestHost();
    try {
      await expect(startTestHost({ port: first.host.port, settings: { FERRY_HOST_TEST_SETTING: 'x' } })).rejects.toThrow(
        `Port ${first.host.port} is in use; stop what listens there or set FERRY_HOST_PORT (port option) to another port.`,
      );
      expect(process.env.FERRY_HOST_TEST_SETTING).toBeUndefined();
    } finally {
      await first.host.stop();
    }
  });

  it('says when the app root is not a function app', async () => {
    await expect(startTestHost({ appRoot: join(APP_ROOT, 'lib') })).rejects.toThrow(`No host.json in the app root ${join(APP_ROOT, 'lib')}; point FERRY_APP_ROOT (or appRoot) at a function app directory.`);
  });

  it('says when package.json main matches no file', async () => {
    await expect(startTestHost({ main: 'dist/nothing-here/*.js' })).rejects.toThrow(/Found zero files matching package.json "main" dist\/nothing-here\/\*\.js under .*; build the app first \(npm run build\)\./);
  });

  it('exports app settings into process.env while running, and removes them at stop', async () => {
    const { host } = await startTestHost({ settings: { FERRY_HOST_TEST_SETTING: 'on' } });
    expect(process.env.FERRY_HOST_TEST_SETTING).toBe('on');
    await host.stop();
    expect(process.env.FERRY_HOST_TEST_SETTING).toBeUndefined();
  });
});

describe('several hosts in one process', () => {
  it('keeps each app to its own registrations when they load at the same time', async () => {
    const [a, b] = await Promise.all([startTestHost({ mainFiles: 'functions/http.js' }), startTestHost({ mainFiles: 'stream/*.js' })]);
    try {
      const namesA = a.host.functions.map((f) => f.name);
      const namesB = b.host.functions.map((f) => f.name);
      expect(namesA).toContain('itemById');
      expect(namesA).not.toContain('streamEcho');
      expect(namesB).toEqual(['streamEcho', 'streamHash', 'streamFails']);
      expect((await freshGet(`${a.api}/items/5`)).status).toBe(200);
      expect((await freshGet(`${b.api}/items/5`)).status).toBe(404);
    } finally {
      await Promise.all([a.host.stop(), b.host.stop()]);
    }
  });

  it('loads the same app twice while the first host is alive', async () => {
    const a = await startTestHost({ mainFiles: 'functions/http.js' });
    const b = await startTestHost({ mainFiles: 'functions/http.js' });
    try {
      expect(b.host.functions.map((f) => f.name)).toEqual(a.host.functions.map((f) => f.name));
      expect((await freshGet(`${b.api}/items/5`)).status).toBe(200);
      expect((await freshGet(`${a.api}/items/5`)).status).toBe(200);
    } finally {
      await Promise.all([a.host.stop(), b.host.stop()]);
    }
  });
});

describe('functionTimeout', () => {
  it('fails an invocation that runs past host.json functionTimeout', async () => {
    const { host, log } = await startTestHost({ appRoot: join(APP_ROOT, 'timeout-app') });
    try {
      const key = `timeout-${Date.now()}`;
      const started = Date.now();
      const r = await freshGet(`${host.url}/hold/${key}`);
      expect(r.status).toBe(500);
      expect(Date.now() - started).toBeGreaterThanOrEqual(900);
      expect(log.text()).toContain("Timeout value of 00:00:01 exceeded by function 'Functions.hold'");
      release(key);
    } finally {
      await host.stop({ graceMs: 1000 });
    }
  });
});

describe('process entry (dist/local/host/main.js)', () => {
  it('logs the ready line and one line per function, serves, and exits 0 on SIGTERM', async () => {
    ensureBuilt();
    const port = await freePort();
    const dataDir = mkdtempSync(join(tmpdir(), 'ferry-host-main-'));
    const child = spawn(process.execPath, [join(ROOT, 'dist/local/host/main.js')], {
      env: { ...process.env, FERRY_APP_ROOT: APP_ROOT, FERRY_HOST_PORT: String(port), FERRY_FUNCTION_KEY: FUNCTION_KEY, FERRY_DATA_DIR: dataDir, FERRY_LOG_FORMAT: 'pretty' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const lines: string[] = [];
    createInterface({ input: child.stdout }).on('line', (l) => lines.push(l));
    createInterface({ input: child.stderr }).on('line', (l) => lines.push(l));
    // 'close', not 'exit': by then every line of output has been read.
    const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
    try {
      await waitFor(() => lines.some((l) => l.includes(`Functions host listening on http://127.0.0.1:${port}/api`)), 'the ready line', { timeoutMs: 30_000 });
      await waitFor(() => lines.some((l) => l.includes(`itemById: httpTrigger [GET] http://127.0.0.1:${port}/api/items/{id:int}`)), 'the line for itemById');
      const r = await freshGet(`http://127.0.0.1:${port}/api/auth/function?code=${FUNCTION_KEY}`);
      expect(r.status).toBe(200);
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(lines.some((l) => l.includes('Functions host stopped'))).toBe(true);
      expect(lines.join('\n')).not.toContain(FUNCTION_KEY);
    } finally {
      child.kill('SIGKILL');
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
