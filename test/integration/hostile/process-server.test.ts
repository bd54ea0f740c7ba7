/**
 * Hostile agents against a real `ferry process-server` (the CLI, a child process, sending to
 * the test stack): wrong, missing and another VM's tokens; a replayed upload; broken batch
 * bodies; a body beyond the limit (refused without buffering it: the server's RSS is watched);
 * headers or a body that never finish (cut by the server's timeouts).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enable } from '../../../local/appliance/commands';
import { MAX_BATCH_BODY_BYTES } from '../../../local/appliance/https-server';
import { loadVmState } from '../../../local/appliance/state';
import { freePort } from '../../../local/stack/ephemeral';
import { apiClient } from '../../support/api';
import { ROOT, startTestStack, type TestStack } from '../../support/stack';
import { waitFor } from '../../support/wait';

const MiB = 1024 * 1024;
const A = 'ps-vm-a';
const B = 'ps-vm-b';

interface Res {
  status: number;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- bodies are checked field by field
  body: any;
  text: string;
}

/** A batch upload exactly as RemoteSink sends it: u32 LE head length, head JSON, data. */
function batchBody(vmId: string, sequence: number, data: Buffer, meta: Record<string, unknown> = {}, records?: unknown): Buffer {
  const head = Buffer.from(
    JSON.stringify({
      meta: { vmId, diskId: 'disk0', epoch: 1, sequence, capturedAt: Date.now(), diskSizeBytes: MiB, initialReplicationComplete: false, initialCoveredBytes: 0, ...meta },
      records: records ?? [{ kind: 'data', offset: (sequence - 1) * data.length, length: data.length }],
    }),
  );
  const n = Buffer.alloc(4);
  n.writeUInt32LE(head.length, 0);
  return Buffer.concat([n, head, data]);
}

function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]) * 1024;
}

describe('hostile input: process server', () => {
  let stack: TestStack;
  let dir: string;
  let stateDir: string;
  let port: number;
  let child: ChildProcess;
  const output: string[] = [];
  const token = (vm: string) => loadVmState(stateDir, vm).agentToken;

  const call = (method: string, path: string, options: { auth?: string; body?: Buffer; headers?: Record<string, string> } = {}): Promise<Res> =>
    new Promise((resolve, reject) => {
      const req = request(
        {
          host: '127.0.0.1',
          port,
          method,
          path,
          rejectUnauthorized: false,
          headers: { ...(options.auth !== undefined ? { authorization: options.auth } : {}), ...(options.body ? { 'content-length': String(options.body.length) } : {}), ...options.headers },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let body: unknown;
            try {
              body = JSON.parse(text);
            } catch {
              body = undefined;
            }
            resolve({ status: res.statusCode ?? 0, body, text });
          });
        },
      );
      req.on('error', reject);
      req.end(options.body);
    });

  const stats = async (vm: string) => (await call('GET', `/v1/vms/${vm}/stats`, { auth: `Bearer ${token(vm)}` })).body as { sentBatches: number; pendingBatches: number; spooledBytes: number };

  const expectError = (res: Res, status: number, code: string, mention: RegExp) => {
    expect(res.status, res.text).toBe(status);
    expect(Object.keys(res.body ?? {}).sort()).toEqual(['code', 'message']);
    expect(res.body.code).toBe(code);
    expect(res.body.message).toMatch(mention);
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ferry-hostile-ps-'));
    stateDir = join(dir, 'state');
    stack = await startTestStack();
    for (const vm of [A, B]) {
      const image = join(dir, `${vm}.img`);
      writeFileSync(image, Buffer.alloc(MiB));
      await enable({ api: stack.apiUrl, stateDir, functionKey: stack.functionKey, vm, disks: [image] });
    }
    port = await freePort();
    child = spawn(
      process.execPath,
      [join(ROOT, 'dist/local/appliance/cli.js'), 'process-server', '--port', String(port), '--host', '127.0.0.1', '--state-dir', stateDir, '--headers-timeout', '2s', '--request-timeout', '3s'],
      {
        cwd: ROOT,
        env: { ...process.env, AzureWebJobsStorage: stack.storageConnectionString, ServiceBusConnection: stack.serviceBusConnectionString, FERRY_LOG_FORMAT: 'json' },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    for (const s of [child.stdout!, child.stderr!]) s.on('data', (c: Buffer) => output.push(c.toString()));
    await waitFor(async () => (await call('GET', '/v1/health')).status === 200, 'the process server to answer', { timeoutMs: 30_000 });
  });

  afterAll(async () => {
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
    await stack?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('a wrong or missing token is 401, another VM\'s token 403, on every route; nothing is accepted', async () => {
    const routes: [string, string, Buffer?][] = [
      ['GET', `/v1/vms/${A}/disks/disk0/next-sequence?epoch=1`],
      ['POST', `/v1/vms/${A}/batches`, batchBody(A, 1, Buffer.alloc(4096, 1))],
      ['POST', `/v1/vms/${A}/sync`],
      ['GET', `/v1/vms/${A}/stats`],
    ];
    for (const [method, path, body] of routes) {
      const opts = body ? { body } : {};
      expectError(await call(method, path, { ...opts }), 401, 'UNAUTHORIZED', new RegExp(`token for VM '${A}' is missing or wrong`));
      expectError(await call(method, path, { ...opts, auth: 'Bearer not-the-token' }), 401, 'UNAUTHORIZED', /missing or wrong/);
      expectError(await call(method, path, { ...opts, auth: `Basic ${token(A)}` }), 401, 'UNAUTHORIZED', /missing or wrong/);
      expectError(await call(method, path, { ...opts, auth: `Bearer ${token(A)}x` }), 401, 'UNAUTHORIZED', /missing or wrong/);
      expectError(await call(method, path, { ...opts, auth: `Bearer ${token(B)}` }), 403, 'FORBIDDEN', new RegExp(`VM '${B}''s; it gives no access to VM '${A}'`));
    }
    // B's token for a batch that claims to be B's, sent to A's route: still 403
    expectError(await call('POST', `/v1/vms/${A}/batches`, { auth: `Bearer ${token(B)}`, body: batchBody(B, 1, Buffer.alloc(4096, 1)) }), 403, 'FORBIDDEN', /no access/);
    expect(await stats(A)).toMatchObject({ sentBatches: 0, pendingBatches: 0, spooledBytes: 0 });
    expect(output.join('')).not.toContain(token(A));
    expect(output.join('')).not.toContain(token(B));
  });

  it('broken batch bodies and arguments are 400 naming the fault; nothing is accepted', async () => {
    const auth = `Bearer ${token(A)}`;
    const post = (body: Buffer) => call('POST', `/v1/vms/${A}/batches`, { auth, body });
    const headOnly = (text: string) => {
      const n = Buffer.alloc(4);
      n.writeUInt32LE(Buffer.byteLength(text), 0);
      return Buffer.concat([n, Buffer.from(text)]);
    };
    const data = Buffer.alloc(4096, 2);
    expectError(await post(Buffer.from([1, 2])), 400, 'BAD_BATCH', /truncated/);
    expectError(await post(Buffer.from([255, 255, 255, 0, 123])), 400, 'BAD_BATCH', /head is \d+ bytes; at most/);
    expectError(await post(Buffer.from([100, 0, 0, 0, 123])), 400, 'BAD_BATCH', /truncated/);
    expectError(await post(headOnly('{not json')), 400, 'BAD_BATCH', /not JSON/);
    expectError(await post(headOnly('null')), 400, 'BAD_BATCH', /invalid/);
    expectError(await post(headOnly('{"meta":{},"records":"all"}')), 400, 'BAD_BATCH', /meta\.vmId/);
    expectError(await post(batchBody(A, 1, data, { sequence: '1' })), 400, 'BAD_BATCH', /meta\.sequence/);
    expectError(await post(batchBody(A, 1, data, { sequence: 9007199254740993 })), 400, 'BAD_BATCH', /meta\.sequence/);
    expectError(await post(batchBody(A, 1, data, { sequence: -1 })), 400, 'BAD_BATCH', /meta\.sequence/);
    expectError(await post(batchBody(A, 1, data, { epoch: 0 })), 400, 'BAD_BATCH', /meta\.epoch/);
    expectError(await post(batchBody(A, 1, data, {}, [{ kind: 'data', offset: 0, length: 4096, extra: 1 }])), 400, 'BAD_BATCH', /records\.0/);
    expectError(await post(batchBody(A, 1, data, {}, [{ kind: 'data', offset: -4096, length: 4096 }])), 400, 'BAD_BATCH', /records\.0\.offset/);
    expectError(await post(batchBody(A, 1, data, {}, [{ kind: 'data', offset: 0, length: 8192 }])), 400, 'BAD_BATCH', /describe 8192 bytes but 4096 were sent/);
    expectError(await post(batchBody(A, 1, data, { vmId: B })), 400, 'BAD_BATCH', new RegExp(`for VM '${B}', not '${A}'`));
    expectError(await post(batchBody(A, 1, data, { diskId: '../../etc' })), 400, 'BAD_FIELD', /diskId/);
    for (const q of ['epoch=abc', 'epoch=0', 'epoch=1.5', 'epoch=9007199254740993']) {
      expectError(await call('GET', `/v1/vms/${A}/disks/disk0/next-sequence?${q}`, { auth }), 400, 'BAD_ARGUMENT', /epoch must be a whole number/);
    }
    expectError(await call('GET', `/v1/vms/${A}/disks/..%2F..%2Fetc/next-sequence?epoch=1`, { auth }), 400, 'BAD_ARGUMENT', /not a valid disk id/);
    expectError(await call('GET', '/v1/vms/..%2Fetc/stats', { auth }), 400, 'BAD_ARGUMENT', /not a valid VM id/);
    expect(await stats(A)).toMatchObject({ sentBatches: 0, pendingBatches: 0, spooledBytes: 0 });
    expect(output.join('')).not.toMatch(/"code":"INTERNAL"|Unexpected|TypeError/);
  });

  it('a replayed upload (the same request 5 times, 3 at once) is sent and applied once', async () => {
    const auth = `Bearer ${token(A)}`;
    const body = batchBody(A, 1, Buffer.alloc(64 * 1024, 7));
    const first = await Promise.all([1, 2, 3].map(() => call('POST', `/v1/vms/${A}/batches`, { auth, body })));
    const later = [await call('POST', `/v1/vms/${A}/batches`, { auth, body }), await call('POST', `/v1/vms/${A}/batches`, { auth, body })];
    for (const r of [...first, ...later]) expect(r.body, r.text).toEqual({ accepted: true, sequence: 1 });
    // a barrier: sequence 2 is applied after anything of sequence 1 (one session, in order)
    expect((await call('POST', `/v1/vms/${A}/batches`, { auth, body: batchBody(A, 2, Buffer.alloc(64 * 1024, 8)) })).status).toBe(200);
    const api = apiClient(stack);
    await waitFor(async () => (await api('GET', `/vms/${A}`)).body.disks[0].appliedSequence === 2, `VM ${A} to apply sequence 2`, { timeoutMs: 30_000 });
    expect(await stats(A)).toMatchObject({ sentBatches: 2, pendingBatches: 0, spooledBytes: 0 });
    // the host logs each batch it completes as an already-applied duplicate: there is none
    expect(stack.logs.filter((l) => l.includes(`Duplicate ${A}/disk0`))).toEqual([]);
  });

  it('a body beyond the limit is refused with 413: declared at once, streamed without buffering it (bounded RSS)', async () => {
    const auth = `Bearer ${token(A)}`;
    const declared = await call('POST', `/v1/vms/${A}/batches`, { auth, headers: { 'content-length': String(MAX_BATCH_BODY_BYTES + 1) }, body: Buffer.alloc(16) });
    expect(declared.status).toBe(413);
    expect(declared.body).toMatchObject({ code: 'TOO_LARGE', message: expect.stringContaining(`exceeds ${MAX_BATCH_BODY_BYTES} bytes`) });

    // chunked, no length: 4 MiB chunks for up to 160 MiB, as fast as the server takes them
    const base = rssBytes(child.pid!);
    let peak = base;
    const sampler = setInterval(() => (peak = Math.max(peak, rssBytes(child.pid!))), 20);
    const chunk = Buffer.alloc(4 * MiB, 9);
    let sent = 0;
    const res = await new Promise<Res>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, method: 'POST', path: `/v1/vms/${A}/batches`, rejectUnauthorized: false, headers: { authorization: auth, 'transfer-encoding': 'chunked' } }, (r) => {
        const chunks: Buffer[] = [];
        r.on('data', (c: Buffer) => chunks.push(c));
        r.on('end', () => resolve({ status: r.statusCode ?? 0, text: Buffer.concat(chunks).toString(), body: JSON.parse(Buffer.concat(chunks).toString() || 'null') }));
      });
      // The server answers 413 and closes; a client still writing may see the reset before the
      // answer (a race on a loaded machine). Past the limit that is a refusal too, not a hang.
      req.on('error', (err) => (sent > MAX_BATCH_BODY_BYTES ? resolve({ status: -1, text: String(err), body: null }) : reject(err)));
      const pump = () => {
        while (sent < 160 * MiB && !req.destroyed) {
          sent += chunk.length;
          if (!req.write(chunk)) return void req.once('drain', pump);
        }
        if (!req.destroyed) req.end();
      };
      pump();
    });
    clearInterval(sampler);
    expect([413, -1], `answer: ${res.text}`).toContain(res.status);
    if (res.status === 413) expect(res.body.code).toBe('TOO_LARGE');
    expect(sent).toBeLessThan(160 * MiB); // the server stopped reading
    expect(peak - base, `RSS grew from ${base} to ${peak}`).toBeLessThan(MAX_BATCH_BODY_BYTES + 40 * MiB);
    expect((await call('GET', '/v1/health')).status).toBe(200);
    expect(await stats(A)).toMatchObject({ sentBatches: 2, pendingBatches: 0 });
  });

  it('headers that never finish and a body that never finishes are cut by the server (408), and it keeps serving', async () => {
    const stalled = (text: string) =>
      new Promise<{ ms: number; answer: string }>((resolve, reject) => {
        const started = Date.now();
        const socket = connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => socket.write(text));
        let answer = '';
        socket.on('data', (c: Buffer) => (answer += c.toString()));
        socket.on('close', () => resolve({ ms: Date.now() - started, answer }));
        socket.on('error', () => undefined);
        setTimeout(() => {
          socket.destroy();
          reject(new Error(`the server kept a stalled connection open for 15 s (answer so far: ${answer})`));
        }, 15_000).unref();
      });
    const [headers, body] = await Promise.all([
      stalled(`POST /v1/vms/${A}/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token(A)}\r\n`),
      stalled(`POST /v1/vms/${A}/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token(A)}\r\nContent-Length: ${MiB}\r\n\r\n${'x'.repeat(1024)}`),
    ]);
    expect(headers.answer).toMatch(/^HTTP\/1\.1 408/);
    expect(body.answer).toMatch(/^HTTP\/1\.1 408/);
    expect(headers.ms).toBeLessThan(10_000);
    expect(body.ms).toBeLessThan(10_000);
    expect((await call('GET', '/v1/health')).status).toBe(200);
    expect(await stats(A)).toMatchObject({ sentBatches: 2, pendingBatches: 0 });
  });
});
