/**
 * Secrets never leak. A full flow with every component at its most verbose (host and emulator
 * at FERRY_LOG_LEVEL=trace, the CLI at trace, Azurite with its access log and --debug log, an
 * in-process HTTPS process server logging at trace): enable, replicate --once, churn and a
 * second pass, a batch that is dead-lettered, failing HTTP calls (wrong function key, the key
 * in `?code=`, an unreachable API, a wrong agent token), rotate-key, test-migrate, cleanup,
 * migrate. Then every captured line, API response body, error message and dead-letter
 * description is searched for the data keys (raw bytes as hex, base64 and base64url), the
 * master key, the function key, the storage account key and the Service Bus SAS key of the
 * connection strings, and the agent token. Allowed: the data key in the one response that
 * hands it out (rotate-key's, called here directly; enable's is read by the CLI only).
 * Also: key files in the state directory are mode 0600, and the state table holds no raw data
 * key bytes in any entity (only wrapped keys).
 *
 * Azurite (Microsoft's local stand-in for Azure Storage, not Ferry) is searched like the rest,
 * its access log and its --debug log (about 1.4 MB here) included: it logs request URLs and
 * headers, and shared-key requests carry only an HMAC signature, never the account key; Ferry
 * makes no SAS URLs. No exclusion is needed. The logger is also fed secrets on purpose (a
 * canary: connection strings in the message and an error, the token and the function key as
 * fields) to show that they come out masked.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import { TableClient } from '@azure/data-tables';
import { ServiceBusClient } from '@azure/service-bus';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { azureTransport } from '../../../local/appliance/commands';
import { startHttpsProcessServer } from '../../../local/appliance/https-server';
import { ProcessServer } from '../../../local/appliance/process-server';
import { RemoteSink } from '../../../local/appliance/remote-sink';
import { keyFilePath, loadVmState } from '../../../local/appliance/state';
import { createLogger } from '../../../local/log';
import { SupervisedChild } from '../../../local/stack/children';
import { STATE_TABLE } from '../../../shared/azure/table-state-store';
import { unwrapDataKey } from '../../../shared/codec/key-wrap';
import { createBatchSender } from '../../support/batches';
import { ROOT, startTestStack, type TestStack } from '../../support/stack';
import { waitFor } from '../../support/wait';

const exec = promisify(execFile);
const MiB = 1024 * 1024;
const SIZE = 24 * MiB;

/** The forms a secret can take in text: as given, and its bytes as hex, base64 and base64url. */
function forms(name: string, text: string, bytes?: Buffer): { name: string; needle: string }[] {
  const out = [{ name, needle: text }];
  if (bytes) {
    out.push({ name: `${name} (hex)`, needle: bytes.toString('hex') }, { name: `${name} (base64)`, needle: bytes.toString('base64') }, { name: `${name} (base64url)`, needle: bytes.toString('base64url') });
  }
  return out.filter((f, i, all) => f.needle.length >= 8 && all.findIndex((g) => g.needle === f.needle) === i);
}

describe('secrets: none in logs, errors or responses', () => {
  let stack: TestStack;
  let dir: string;
  let stateDir: string;
  let azurite: SupervisedChild | undefined;
  const azuriteLines: string[] = [];
  /** Every captured text, by where it came from. */
  const captured: { source: string; text: string }[] = [];
  /** Responses that hand out a key on purpose (searched for everything but that key). */
  const handouts: { source: string; text: string; key: string }[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ferry-secrets-'));
    stateDir = join(dir, 'state');
    process.env.FERRY_LOG_LEVEL = 'trace'; // the emulator and the host inherit it
    stack = await startTestStack({ settings: { FERRY_LOG_LEVEL: 'trace' } });
    // Azurite as verbose as it gets: no --silent (access log on stdout) and --debug to a file
    const quiet = stack.stack.child('azurite')!;
    await quiet.stop();
    const args = quiet.spec.args.filter((a) => a !== '--silent');
    azurite = new SupervisedChild({ ...quiet.spec, args: [...args, '--debug', join(dir, 'azurite-debug.log')] }, (_n, line) => azuriteLines.push(line), () => undefined);
    await azurite.start();
  }, 180_000);

  afterAll(async () => {
    delete process.env.FERRY_LOG_LEVEL;
    await stack?.stop();
    await azurite?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('a full flow at trace level leaks no key, token or connection-string secret', async () => {
    const env = { ...process.env, FERRY_FUNCTION_KEY: stack.functionKey, AzureWebJobsStorage: stack.storageConnectionString, ServiceBusConnection: stack.serviceBusConnectionString, FERRY_LOG_LEVEL: 'trace' };
    const ferry = async (args: string[], options: { fail?: boolean; env?: NodeJS.ProcessEnv } = {}) => {
      const full = [join(ROOT, 'dist/local/appliance/cli.js'), ...args, '--state-dir', stateDir];
      const r = await exec(process.execPath, full, { env: options.env ?? env, cwd: ROOT, maxBuffer: 64 * MiB }).then(
        (ok) => ({ code: 0, stdout: ok.stdout, stderr: ok.stderr }),
        (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
      );
      captured.push({ source: `ferry ${args[0]} stdout`, text: r.stdout }, { source: `ferry ${args[0]} stderr`, text: r.stderr });
      expect(r.code !== 0, `ferry ${args.join(' ')}: ${r.stderr}`).toBe(!!options.fail);
      return r;
    };
    const api = async (method: string, path: string, body?: unknown, headers: Record<string, string> = { 'x-functions-key': stack.functionKey }) => {
      const res = await fetch(`${stack.apiUrl}${path}`, { method, headers: { ...headers, 'content-type': 'application/json' }, ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}) });
      const text = await res.text();
      return { status: res.status, text, body: text ? (JSON.parse(text) as Record<string, unknown>) : undefined };
    };
    const recorded = async (...args: Parameters<typeof api>) => {
      const r = await api(...args);
      captured.push({ source: `${args[0]} ${args[1]} -> ${r.status}`, text: r.text });
      return r;
    };
    const apiUrl = ['--api', stack.apiUrl];

    const image = join(dir, 'disk0.img');
    const img = randomBytes(SIZE);
    img.fill(0, 8 * MiB);
    writeFileSync(image, img);
    await ferry(['enable', '--vm', 'sec-vm', '--disk', image, ...apiUrl]);
    await ferry(['replicate', '--vm', 'sec-vm', '--once', '--threads', '2', '--json', ...apiUrl]);
    await ferry(['churn', '--disk', image, '--rate', '4MB/s', '--duration', '500ms']);
    await ferry(['replicate', '--vm', 'sec-vm', '--once', '--threads', '2', ...apiUrl]);
    await ferry(['status', '--vm', 'sec-vm', '--json', ...apiUrl]);
    const state = loadVmState(stateDir, 'sec-vm');
    const key1 = Buffer.from(state.dataKey, 'base64');

    // a batch that can never apply: sealed with another key (dead-lettered, disk untouched)
    const applied = (await recorded('GET', '/vms/sec-vm')).body!.disks as { appliedSequence: number }[];
    const sender = createBatchSender(stack.serviceBusConnectionString, stack.storageConnectionString);
    try {
      await sender.send({ vmId: 'sec-vm', diskId: 'disk0', epoch: 1, sequence: applied[0]!.appliedSequence + 1, capturedAt: Date.now(), diskSizeBytes: SIZE, records: [{ kind: 'zero', offset: 0, length: 4096 }] }, randomBytes(32), { keyId: 1 });
    } finally {
      await sender.close();
    }
    await waitFor(async () => ((await recorded('GET', '/vms/sec-vm')).body!.healthReasons as { code: string }[]).some((h) => h.code === 'DEAD_LETTERED'), 'the bad batch to be dead-lettered');
    const sb = new ServiceBusClient(stack.serviceBusConnectionString);
    try {
      const dlq = sb.createReceiver('replication-batches', { subQueueType: 'deadLetter', receiveMode: 'receiveAndDelete' });
      const dead = await waitFor(async () => (await dlq.receiveMessages(10, { maxWaitTimeInMs: 500 }))[0], 'the dead-lettered message');
      captured.push({ source: 'dead-letter reason and description', text: `${dead.deadLetterReason} ${dead.deadLetterErrorDescription}` });
    } finally {
      await sb.close();
    }

    // failing HTTP calls: a wrong function key, the right one in ?code= with a bad body, an unreachable API, bad input
    await ferry(['status', '--vm', 'sec-vm', ...apiUrl], { fail: true, env: { ...env, FERRY_FUNCTION_KEY: 'wrong-key-0123456789' } });
    await ferry(['status', '--api', 'http://127.0.0.1:9'], { fail: true });
    expect((await recorded('POST', `/vms/sec-vm/rotate-key?code=${encodeURIComponent(stack.functionKey)}`, '{"graceSeconds":', {})).status).toBe(400);
    expect((await recorded('POST', '/vms/sec-vm/enable-replication', { disks: [{ diskId: 'disk0', sizeBytes: 1000 }] })).status).toBe(400);
    expect((await recorded('POST', '/vms/sec-vm/enable-replication', { disks: [{ diskId: 'disk0', sizeBytes: SIZE }] })).status).toBe(409);
    expect((await recorded('GET', '/vms/sec-vm', undefined, { 'x-functions-key': `${stack.functionKey}x` })).status).toBe(401);

    // the agent token: an in-process process server logging at trace, a right and a wrong token
    const psLog: string[] = [];
    const stream = new Writable({ write: (chunk: Buffer, _e, cb) => (psLog.push(chunk.toString()), cb()) });
    const server = new ProcessServer({ stateDir, transport: azureTransport({ storageConnection: stack.storageConnectionString, serviceBusConnection: stack.serviceBusConnectionString }), sealWorkers: 0, log: createLogger('process-server', { level: 'trace', stream }) });
    const https = await startHttpsProcessServer(server, { port: 0, host: '127.0.0.1', certDir: join(stateDir, 'process-server'), log: createLogger('process-server', { level: 'trace', stream }) });
    try {
      await new RemoteSink(https.url, stateDir, 'sec-vm', { fingerprint: https.certificate.fingerprint256 }).nextSequence('sec-vm', 'disk0', 1);
      for (const auth of [`Bearer ${state.agentToken.slice(0, -2)}xx`, `Bearer ${state.agentToken}`]) {
        const body = await new Promise<string>((resolve, reject) => {
          const req = request(`${https.url}/v1/vms/sec-vm/no-such-route`, { method: 'GET', headers: { authorization: auth }, ca: https.certificate.cert }, (res) => {
            let text = `${res.statusCode} `;
            res.on('data', (c: Buffer) => (text += c.toString()));
            res.on('end', () => resolve(text));
          });
          req.on('error', reject);
          req.end();
        });
        captured.push({ source: `process server ${auth === `Bearer ${state.agentToken}` ? 'right' : 'wrong'} token`, text: body });
      }
    } finally {
      await https.close();
      await server.close();
    }
    // Ferry's logger itself: secrets handed to it (fields and text) come out masked
    createLogger('canary', { level: 'trace', stream }).trace(
      { connectionString: stack.serviceBusConnectionString, token: state.agentToken, headers: { 'x-functions-key': stack.functionKey }, err: new Error(`cannot connect with ${stack.serviceBusConnectionString}`) },
      `connecting with ${stack.storageConnectionString} and ${stack.serviceBusConnectionString}`,
    );
    expect(psLog.join('')).toContain('[canary] connecting with');
    captured.push({ source: 'process server and canary log (trace)', text: psLog.join('') });

    // rotation: the direct API response hands out key 2 (allowed there only); the CLI's rotation (key 3) prints none
    const rotated = await api('POST', '/vms/sec-vm/rotate-key', { graceSeconds: 3600 });
    expect(rotated.status).toBe(201);
    const key2 = Buffer.from(rotated.body!.dataKey as string, 'base64');
    handouts.push({ source: 'POST rotate-key response', text: rotated.text, key: rotated.body!.dataKey as string });
    await ferry(['rotate-key', '--vm', 'sec-vm', '--json', ...apiUrl]);
    const key3 = Buffer.from(JSON.parse(readFileSync(keyFilePath(stateDir, 'sec-vm'), 'utf8')).dataKey as string, 'base64');
    expect(key3.length).toBe(32);
    await ferry(['replicate', '--vm', 'sec-vm', '--once', ...apiUrl]);

    await ferry(['test-migrate', '--vm', 'sec-vm', '--json', ...apiUrl]);
    await ferry(['test-migrate-cleanup', '--vm', 'sec-vm', ...apiUrl]);
    await ferry(['migrate', '--vm', 'sec-vm', '--json', ...apiUrl]);
    for (const path of ['/vms', '/vms/sec-vm', '/vms/sec-vm/recovery-points']) await recorded('GET', path);

    // the state table: only wrapped keys (no raw data key bytes, in any form, in any entity)
    const table = TableClient.fromConnectionString(stack.storageConnectionString, STATE_TABLE, { allowInsecureConnection: true });
    const master = Buffer.from(stack.masterKey, 'base64');
    let keyRows = 0;
    let entities = 0;
    for await (const e of table.listEntities<Record<string, unknown>>()) {
      entities++;
      if (String(e.rowKey).startsWith('key:')) {
        keyRows++;
        const keyId = Number(String(e.rowKey).slice(4));
        expect(unwrapDataKey(master, e.wrapped as Uint8Array, 'sec-vm', keyId).equals([key1, key2, key3][keyId - 1]!)).toBe(true);
      }
      for (const [name, v] of Object.entries(e)) {
        const bytes = v instanceof Uint8Array ? Buffer.from(v) : Buffer.from(String(v));
        for (const k of [key1, key2, key3]) {
          for (const form of [k, Buffer.from(k.toString('base64')), Buffer.from(k.toString('hex')), Buffer.from(k.toString('base64url'))]) {
            expect(bytes.includes(form), `a raw data key in ${e.partitionKey}/${e.rowKey} ${name}`).toBe(false);
          }
        }
      }
    }
    expect(keyRows).toBe(3);
    expect(entities).toBeGreaterThan(3);

    // the stack's own output, up to its stop
    await stack.stack.stop();
    await azurite!.stop();
    captured.push({ source: 'host and emulator (trace)', text: stack.logs.filter((l) => !l.startsWith('[azurite]')).join('\n') });
    const azuriteText = [azuriteLines.join('\n'), existsSync(join(dir, 'azurite-debug.log')) ? readFileSync(join(dir, 'azurite-debug.log'), 'utf8') : ''].join('\n');
    expect(azuriteText.length).toBeGreaterThan(100_000); // it did log every request
    expect(stack.logs.some((l) => l.startsWith('[host]') && l.includes('DEBUG'))).toBe(true);

    const accountKey = /AccountKey=([^;]+)/.exec(stack.storageConnectionString)?.[1];
    const sasKey = /SharedAccessKey=([^;]+)/.exec(stack.serviceBusConnectionString)?.[1];
    expect(accountKey && sasKey).toBeTruthy();
    const secrets = [
      ...forms('data key 1', key1.toString('base64'), key1),
      ...forms('data key 2', key2.toString('base64'), key2),
      ...forms('data key 3', key3.toString('base64'), key3),
      ...forms('master key', stack.masterKey, Buffer.from(stack.masterKey, 'base64')),
      ...forms('function key', stack.functionKey),
      ...forms('agent token', state.agentToken, Buffer.from(state.agentToken, 'base64url')),
      ...forms('Service Bus SAS key', sasKey!),
      ...forms('storage account key', accountKey!, Buffer.from(accountKey!, 'base64')),
    ];
    const leaks: string[] = [];
    const search = (source: string, text: string, secrets: { name: string; needle: string }[]) => {
      for (const s of secrets) {
        const at = text.indexOf(s.needle);
        if (at >= 0) leaks.push(`${s.name} in ${source}: ...${text.slice(Math.max(0, at - 120), at).replaceAll(s.needle, '<SECRET>')}<SECRET>...`);
      }
    };
    for (const c of captured) search(c.source, c.text, secrets);
    search('Azurite output and debug log', azuriteText, secrets);
    for (const h of handouts) {
      expect(h.text).toContain(h.key);
      search(h.source, h.text.replace(h.key, ''), secrets);
    }
    expect(captured.length).toBeGreaterThan(30);
    expect(leaks).toEqual([]);
  }, 240_000);

  it('key files in the state directory are mode 0600', () => {
    const files = ['state.json', 'key.json'].map((f) => join(stateDir, 'sec-vm', f));
    for (const f of [...files, join(stateDir, 'process-server', 'key.pem')]) expect(statSync(f).mode & 0o777, f).toBe(0o600);
    expect(readdirSync(join(stateDir, 'sec-vm'))).toEqual(expect.arrayContaining(['state.json', 'key.json']));
  });
});
