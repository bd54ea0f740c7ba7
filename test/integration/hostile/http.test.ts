/**
 * Hostile and broken input against every HTTP route of the real local stack (host, Azurite,
 * emulator): missing, wrong, foreign and revoked keys; malformed JSON; wrong types; unknown
 * fields; hostile ids (path separators, dots, unicode, 10,000 characters, bad escapes); huge
 * bodies; numbers beyond 2^53; negative and unaligned disk sizes; wrong methods.
 *
 * Every answer must be the documented 4xx (docs/errors.md) with a `{code, message}` JSON body
 * whose message names what was wrong, never a 500, and nothing may be stored: the tables, the
 * blob containers and the operations queue are compared before and after each sweep.
 *
 * ROUTES is checked against the routes the running host registered (its start-up log), so a
 * new route without an entry here fails the first test.
 */
import { randomBytes } from 'node:crypto';
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestStack, type TestStack } from '../../support/stack';
import { snapshotStorage } from './support-storage';

type BodyKind = 'none' | 'required' | 'optional';

interface RouteSpec {
  name: string;
  method: string;
  /** The template as registered, below /api. */
  route: string;
  auth: 'anonymous' | 'function';
  body: BodyKind;
  /** A body that passes validation (for the key sweep and the controls). */
  validBody?: unknown;
}

const MiB = 1024 * 1024;
const SEED_VM = 'seed-vm';
const ENABLE_BODY = { disks: [{ diskId: 'disk0', sizeBytes: MiB }] };

const ROUTES: RouteSpec[] = [
  { name: 'health', method: 'GET', route: 'health', auth: 'anonymous', body: 'none' },
  { name: 'enable-replication', method: 'POST', route: 'vms/{vmId}/enable-replication', auth: 'function', body: 'required', validBody: ENABLE_BODY },
  { name: 'list-vms', method: 'GET', route: 'vms', auth: 'function', body: 'none' },
  { name: 'get-vm', method: 'GET', route: 'vms/{vmId}', auth: 'function', body: 'none' },
  { name: 'disable-replication', method: 'POST', route: 'vms/{vmId}/disable-replication', auth: 'function', body: 'optional' },
  { name: 'list-recovery-points', method: 'GET', route: 'vms/{vmId}/recovery-points', auth: 'function', body: 'none' },
  { name: 'test-migrate', method: 'POST', route: 'vms/{vmId}/test-migrate', auth: 'function', body: 'optional' },
  { name: 'test-migrate-cleanup', method: 'POST', route: 'vms/{vmId}/test-migrate-cleanup', auth: 'function', body: 'optional' },
  { name: 'migrate', method: 'POST', route: 'vms/{vmId}/migrate', auth: 'function', body: 'optional' },
  { name: 'get-operation', method: 'GET', route: 'vms/{vmId}/operations/{operationId}', auth: 'function', body: 'none' },
  { name: 'resync', method: 'POST', route: 'vms/{vmId}/resync', auth: 'function', body: 'optional' },
  { name: 'disk-hashes', method: 'GET', route: 'vms/{vmId}/disks/{diskId}/hashes', auth: 'function', body: 'none' },
  { name: 'rotate-key', method: 'POST', route: 'vms/{vmId}/rotate-key', auth: 'function', body: 'optional' },
];

/** Valid values of each route parameter (the seed VM exists; the operation does not). */
const VALID_PARAMS: Record<string, string> = { vmId: SEED_VM, diskId: 'disk0', operationId: 'op-0000000000000000' };

/** Hostile ids, as they appear in the URL (already percent-encoded where needed). */
const HOSTILE_IDS: [string, string][] = [
  ['an encoded slash', 'a%2Fb'],
  ['an encoded traversal', '..%2F..%2Fetc'],
  ['an encoded backslash', 'a%5Cb'],
  ['a dot', 'web.01'],
  ['a leading dot', '.hidden'],
  ['unicode', 'v%C3%A9'],
  ['an emoji', '%F0%9F%92%A5'],
  ['a full-width letter', '%EF%BD%81'],
  ['a NUL', 'a%00b'],
  ['a newline', 'a%0Ab'],
  ['a space', 'a%20b'],
  ['upper case', 'Web-01'],
  ['a leading hyphen', '-web'],
  ['64 characters', 'a'.repeat(64)],
  ['10,000 characters', 'a'.repeat(10_000)],
  ['a malformed escape', '%zz'],
  ['a cut UTF-8 sequence', '%C3'],
  ['quotes', "a'%20OR%20'1'%3D'1"],
];

interface Res {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- bodies are checked field by field
  body: any;
}

interface SendOptions {
  key?: string | null;
  headers?: Record<string, string>;
  body?: string | Buffer;
  /** Sent as chunked transfer encoding (no content-length). */
  chunked?: boolean;
}

describe('hostile input: HTTP API', () => {
  let stack: TestStack;
  let port: number;

  /** One request as written: no URL normalisation, exact headers. */
  const send = (method: string, path: string, options: SendOptions = {}): Promise<Res> =>
    new Promise((resolve, reject) => {
      const key = options.key === undefined ? stack.functionKey : options.key;
      const headers: Record<string, string> = { ...(key !== null ? { 'x-functions-key': key } : {}), ...options.headers };
      if (options.body !== undefined) {
        headers['content-type'] ??= 'application/json';
        if (options.chunked) headers['transfer-encoding'] = 'chunked';
        else headers['content-length'] ??= String(Buffer.byteLength(options.body));
      }
      const req = request({ host: '127.0.0.1', port, method, path: `/api/${path}`, headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let body: unknown;
          try {
            body = text ? JSON.parse(text) : undefined;
          } catch {
            body = undefined;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, body });
        });
      });
      req.on('error', reject);
      req.end(options.body);
    });

  const pathOf = (r: RouteSpec, params: Record<string, string> = {}): string =>
    r.route.replace(/\{(\w+)\}/g, (_, name: string) => params[name] ?? VALID_PARAMS[name] ?? 'missing');

  const paramsOf = (r: RouteSpec): string[] => [...r.route.matchAll(/\{(\w+)\}/g)].map((m) => m[1]!);

  /**
   * Checks one answer; returns a line describing each way it differs (empty when right), so a
   * sweep reports every wrong answer at once.
   */
  const judge = (label: string, res: Res, status: number, code: string, mention?: RegExp | string): string[] => {
    const wrong: string[] = [];
    if (res.status !== status) wrong.push(`${label}: status ${res.status}, expected ${status} (${res.text.slice(0, 200)})`);
    if (!String(res.headers['content-type'] ?? '').startsWith('application/json')) wrong.push(`${label}: content-type ${String(res.headers['content-type'])}`);
    if (!res.body || typeof res.body !== 'object' || Object.keys(res.body).sort().join() !== 'code,message') {
      wrong.push(`${label}: body is not {code, message}: ${res.text.slice(0, 200)}`);
      return wrong;
    }
    if (res.body.code !== code) wrong.push(`${label}: code ${res.body.code}, expected ${code} (${res.body.message})`);
    if (typeof res.body.message !== 'string' || res.body.message.length < 10) wrong.push(`${label}: message too short: ${JSON.stringify(res.body.message)}`);
    else if (mention && !(typeof mention === 'string' ? res.body.message.includes(mention) : mention.test(res.body.message))) {
      wrong.push(`${label}: message does not name ${String(mention)}: ${res.body.message}`);
    }
    if (res.body.message?.includes(stack.functionKey)) wrong.push(`${label}: the message contains the function key`);
    return wrong;
  };

  /** Runs a sweep and asserts that storage did not change and every answer was right. */
  const sweep = async (fn: (failures: string[]) => Promise<void>): Promise<number> => {
    const before = await snapshotStorage(stack);
    const failures: string[] = [];
    await fn(failures);
    expect(failures).toEqual([]);
    expect(await snapshotStorage(stack)).toEqual(before);
    return failures.length;
  };

  beforeAll(async () => {
    stack = await startTestStack();
    port = Number(new URL(stack.apiUrl).port);
    const seeded = await send('POST', `vms/${SEED_VM}/enable-replication`, { body: JSON.stringify(ENABLE_BODY) });
    expect(seeded.status, seeded.text).toBe(201);
  });

  afterAll(async () => {
    await stack?.stop();
  });

  it('the route table matches what the host registered (a new route needs hostile coverage here)', () => {
    const registered = stack.logs
      .map((line) => /\[host\].* (\S+): httpTrigger \[([^\]]+)\] https?:\/\/[^/]+\/api\/(\S+)/.exec(line))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => `${m[1]} ${m[2]} ${m[3]}`)
      .sort();
    expect(registered.length).toBeGreaterThan(0);
    expect(registered).toEqual(ROUTES.map((r) => `${r.name} ${r.method} ${r.route}`).sort());
  });

  it('every keyed route refuses no key, a wrong, a foreign and a mangled key with 401, before reading anything', async () => {
    const key = stack.functionKey;
    const flip = (s: string, i: number) => s.slice(0, i) + (s[i] === 'A' ? 'B' : 'A') + s.slice(i + 1);
    const attempts: [string, SendOptions, string][] = [
      ['no key', { key: null }, ''],
      ['an empty key', { key: '' }, ''],
      ['a wrong key', { key: 'wrong' }, ''],
      // another function app's key: the same form (base64url of 24 random bytes), another value
      ['a foreign key', { key: randomBytes(24).toString('base64url') }, ''],
      ['the key with one character changed', { key: flip(key, key.length - 1) }, ''],
      ['a prefix of the key', { key: key.slice(0, -1) }, ''],
      ['the key with a suffix', { key: `${key}x` }, ''],
      ['the key in upper case', { key: key.toUpperCase() === key ? key.toLowerCase() : key.toUpperCase() }, ''],
      ['the key as a bearer token', { key: null, headers: { authorization: `Bearer ${key}` } }, ''],
      ['the key in another query parameter', { key: null }, `?key=${encodeURIComponent(key)}`],
      ['a wrong key in the code parameter', { key: null }, `?code=${encodeURIComponent(flip(key, 0))}`],
    ];
    await sweep(async (failures) => {
      for (const r of ROUTES.filter((x) => x.auth === 'function')) {
        const params: Record<string, string> = r.name === 'enable-replication' ? { vmId: 'auth-probe' } : {};
        for (const [what, options, query] of attempts) {
          const body = r.validBody !== undefined ? JSON.stringify(r.validBody) : undefined;
          const res = await send(r.method, pathOf(r, params) + query, { ...options, ...(body !== undefined ? { body } : {}) });
          failures.push(...judge(`${r.name} with ${what}`, res, 401, 'Unauthorized', 'x-functions-key'));
        }
      }
    });
    // controls: the same requests with the right key get through (in the header and in `code`)
    expect((await send('GET', 'vms')).status).toBe(200);
    expect((await send('GET', `vms?code=${encodeURIComponent(key)}`, { key: null })).status).toBe(200);
    expect((await send('GET', 'health', { key: null })).status).toBe(200);
  });

  it('hostile ids in every path parameter of every route: 400 INVALID_ID naming the parameter', async () => {
    let requests = 0;
    await sweep(async (failures) => {
      for (const r of ROUTES) {
        const body = r.validBody !== undefined ? JSON.stringify(r.validBody) : undefined;
        for (const param of paramsOf(r)) {
          for (const [what, value] of HOSTILE_IDS) {
            const res = await send(r.method, pathOf(r, { [param]: value }), body !== undefined ? { body } : {});
            requests++;
            failures.push(...judge(`${r.name} with ${param} of ${what}`, res, 400, 'INVALID_ID', param));
          }
        }
      }
    });
    expect(requests).toBe(HOSTILE_IDS.length * ROUTES.reduce((n, r) => n + paramsOf(r).length, 0));
  });

  it('a URL beyond the header limit (20,000-character id): 431 with a {code, message} body', async () => {
    await sweep(async (failures) => {
      const res = await send('GET', `vms/${'a'.repeat(20_000)}`);
      failures.push(...judge('GET a 20,000-character vmId', res, 431, 'RequestHeaderFieldsTooLarge', /URL|headers/));
    });
  });

  it('malformed JSON, wrong top-level types and unknown fields on every route with a body: 400 naming the problem', async () => {
    const malformed = ['{', '{"disks":', '{bad}', "{'disks':[]}", '{"a":1,}', 'NaN', '{"a":1}}', '\u0000'];
    const wrongTypes = ['null', '[]', '"text"', '42', 'true'];
    await sweep(async (failures) => {
      for (const r of ROUTES.filter((x) => x.body !== 'none')) {
        for (const text of malformed) {
          failures.push(...judge(`${r.name} with body ${JSON.stringify(text)}`, await send(r.method, pathOf(r), { body: text }), 400, 'INVALID_JSON', 'not valid JSON'));
        }
        for (const text of wrongTypes) {
          failures.push(...judge(`${r.name} with body ${text}`, await send(r.method, pathOf(r), { body: text }), 400, 'INVALID_REQUEST', r.name === 'disable-replication' ? 'takes no body' : /expected object/));
        }
        const unknown = r.name === 'enable-replication' ? { ...ENABLE_BODY, sneaky: 1 } : { sneaky: 1 };
        failures.push(...judge(`${r.name} with an unknown field`, await send(r.method, pathOf(r), { body: JSON.stringify(unknown) }), 400, 'INVALID_REQUEST', r.name === 'disable-replication' ? 'takes no body' : "'sneaky'"));
        const proto = r.name === 'enable-replication' ? `{"disks":${JSON.stringify(ENABLE_BODY.disks)},"__proto__":{"admin":true}}` : '{"__proto__":{"admin":true}}';
        failures.push(...judge(`${r.name} with __proto__`, await send(r.method, pathOf(r), { body: proto }), 400, 'INVALID_REQUEST', r.name === 'disable-replication' ? 'takes no body' : "'__proto__'"));
      }
      // a required body that is missing
      failures.push(...judge('enable-replication without a body', await send('POST', 'vms/body-probe/enable-replication', { body: '' }), 400, 'INVALID_JSON', 'empty'));
    });
  });

  it('enable-replication: wrong types, hostile disk ids, numbers beyond 2^53, negative and unaligned sizes: 400 naming the field', async () => {
    const size = (raw: string) => `{"disks":[{"diskId":"disk0","sizeBytes":${raw}}]}`;
    const cases: [string, string, string][] = [
      // sizes (raw JSON, so 2^53 + 1 and 1e400 reach the server as written)
      ['sizeBytes 2^53 + 1', size('9007199254740993'), 'disks.0.sizeBytes'],
      ['sizeBytes 2^53', size('9007199254740992'), 'disks.0.sizeBytes'],
      ['sizeBytes 2^64', size('18446744073709551616'), 'disks.0.sizeBytes'],
      ['sizeBytes 1e400', size('1e400'), 'disks.0.sizeBytes'],
      ['sizeBytes -2^53 - 1', size('-9007199254740993'), 'disks.0.sizeBytes'],
      ['sizeBytes -512', size('-512'), 'disks.0.sizeBytes'],
      ['sizeBytes -1', size('-1'), 'disks.0.sizeBytes'],
      ['sizeBytes -0', size('-0'), 'disks.0.sizeBytes'],
      ['sizeBytes 0', size('0'), 'disks.0.sizeBytes'],
      ['sizeBytes 1', size('1'), 'disks.0.sizeBytes'],
      ['sizeBytes 511', size('511'), 'disks.0.sizeBytes'],
      ['sizeBytes 513', size('513'), 'disks.0.sizeBytes'],
      ['sizeBytes 1000', size('1000'), 'multiple of 512'],
      ['sizeBytes 512.5', size('512.5'), 'disks.0.sizeBytes'],
      ['sizeBytes 1e-7', size('1e-7'), 'disks.0.sizeBytes'],
      ['sizeBytes 32 TiB + 512', size(String(32 * 1024 ** 4 + 512)), '32 TiB'],
      ['sizeBytes as a string', size('"1048576"'), 'disks.0.sizeBytes'],
      ['sizeBytes null', size('null'), 'disks.0.sizeBytes'],
      ['sizeBytes true', size('true'), 'disks.0.sizeBytes'],
      ['sizeBytes an array', size('[1048576]'), 'disks.0.sizeBytes'],
      ['sizeBytes an object', size('{"value":1048576}'), 'disks.0.sizeBytes'],
      ['sizeBytes missing', '{"disks":[{"diskId":"disk0"}]}', 'disks.0.sizeBytes'],
      // disk ids in the body
      ...(['../x', 'a/b', 'a\\\\b', 'disk.0', 'v\u00e9', '\u{1F4A5}', 'DISK0', '', ' disk0', 'a'.repeat(10_000)].map(
        (id): [string, string, string] => [`diskId ${JSON.stringify(id).slice(0, 20)}`, `{"disks":[{"diskId":${JSON.stringify(id)},"sizeBytes":1048576}]}`, 'disks.0.diskId'],
      )),
      ['diskId a number', '{"disks":[{"diskId":0,"sizeBytes":1048576}]}', 'disks.0.diskId'],
      ['diskId null', '{"disks":[{"diskId":null,"sizeBytes":1048576}]}', 'disks.0.diskId'],
      // the disks list
      ['disks an object', '{"disks":{"diskId":"disk0","sizeBytes":1048576}}', 'disks'],
      ['disks empty', '{"disks":[]}', 'disks'],
      ['disks missing', '{}', 'disks'],
      ['66 disks', JSON.stringify({ disks: Array.from({ length: 66 }, (_, i) => ({ diskId: `disk${i}`, sizeBytes: MiB })) }), '65 disks'],
      ['duplicate disk ids', '{"disks":[{"diskId":"disk0","sizeBytes":1048576},{"diskId":"disk0","sizeBytes":1048576}]}', 'unique'],
      ['an unknown disk field', '{"disks":[{"diskId":"disk0","sizeBytes":1048576,"path":"/etc/passwd"}]}', "'path'"],
      ['a disk that is an array', '{"disks":[["disk0",1048576]]}', 'disks.0'],
      ['nested 30,000 deep', `{"disks":${'['.repeat(30_000)}${']'.repeat(30_000)}}`, 'disks.0'],
      // the policy
      ['policy a string', `{"disks":[{"diskId":"disk0","sizeBytes":1048576}],"policy":"fast"}`, 'policy'],
      ['policy an unknown field', `{"disks":[{"diskId":"disk0","sizeBytes":1048576}],"policy":{"rpoThresholdSecond":60}}`, "'rpoThresholdSecond'"],
      ['policy rpo 2^53 + 1', `{"disks":[{"diskId":"disk0","sizeBytes":1048576}],"policy":{"rpoThresholdSeconds":9007199254740993}}`, 'policy.rpoThresholdSeconds'],
      ['policy rpo -60', `{"disks":[{"diskId":"disk0","sizeBytes":1048576}],"policy":{"rpoThresholdSeconds":-60}}`, 'policy.rpoThresholdSeconds'],
      ['policy rpo 600.5', `{"disks":[{"diskId":"disk0","sizeBytes":1048576}],"policy":{"rpoThresholdSeconds":600.5}}`, 'policy.rpoThresholdSeconds'],
      ['policy rpo "600"', `{"disks":[{"diskId":"disk0","sizeBytes":1048576}],"policy":{"rpoThresholdSeconds":"600"}}`, 'policy.rpoThresholdSeconds'],
      ['policy retention 1e400', `{"disks":[{"diskId":"disk0","sizeBytes":1048576}],"policy":{"recoveryPointRetentionHours":1e400}}`, 'policy.recoveryPointRetentionHours'],
      ['policy app-consistent -1', `{"disks":[{"diskId":"disk0","sizeBytes":1048576}],"policy":{"appConsistentFrequencyMinutes":-1}}`, 'policy.appConsistentFrequencyMinutes'],
    ];
    await sweep(async (failures) => {
      for (const [what, body, mention] of cases) {
        // a fresh VM id each time: a wrongly accepted body would show as a stored VM
        const res = await send('POST', 'vms/enable-probe/enable-replication', { body });
        failures.push(...judge(`enable-replication with ${what}`, res, 400, 'INVALID_REQUEST', mention));
      }
    });
    expect((await send('GET', 'vms/enable-probe')).body.code).toBe('VM_NOT_FOUND');
  });

  it('operations, key rotation and hashes: hostile recovery point ids, numbers and query parameters: 400 naming them', async () => {
    const rpIds: unknown[] = ['../x', 'rp-0', 'rp--1', 'rp-1.5', 'rp-9007199254740993', 'rp-1e3', 'rp-\uff11', 'RP-1', '', 'x'.repeat(10_000), 5, null, { id: 'rp-1' }, ['rp-1']];
    const queries: [string, string][] = [
      ['from=-1', 'from'],
      ['from=1.5', 'from'],
      ['from=1e3', 'from'],
      ['from=0x10', 'from'],
      ['from=9007199254740993', 'from'],
      ['from=99999999999999999999', 'from'],
      ['from=abc', 'from'],
      ['from=1&from=2', 'from'],
      ['count=0', 'count'],
      ['count=65537', 'count'],
      ['count=9007199254740993', 'count'],
      ['count=-5', 'count'],
      ['recoveryPointId=..%2F..%2Fsnapshots', 'recoveryPointId'],
      ['recoveryPointId=rp-0', 'recoveryPointId'],
      ['recoveryPointId=rp-9007199254740993', 'recoveryPointId'],
      [`recoveryPointId=${'r'.repeat(10_000)}`, 'recoveryPointId'],
      ['sneaky=1', "'sneaky'"],
    ];
    await sweep(async (failures) => {
      for (const route of ['test-migrate', 'migrate']) {
        for (const id of rpIds) {
          const res = await send('POST', `vms/${SEED_VM}/${route}`, { body: JSON.stringify({ recoveryPointId: id }) });
          failures.push(...judge(`${route} with recoveryPointId ${JSON.stringify(id).slice(0, 30)}`, res, 400, 'INVALID_REQUEST', 'recoveryPointId'));
        }
      }
      for (const grace of ['9007199254740993', '-1', '1.5', '"60"', '604801', '1e400', 'null', '[60]']) {
        const res = await send('POST', `vms/${SEED_VM}/rotate-key`, { body: `{"graceSeconds":${grace}}` });
        failures.push(...judge(`rotate-key with graceSeconds ${grace}`, res, 400, 'INVALID_REQUEST', 'graceSeconds'));
      }
      for (const [query, mention] of queries) {
        const res = await send('GET', `vms/${SEED_VM}/disks/disk0/hashes?${query}`);
        failures.push(...judge(`hashes?${query.slice(0, 40)}`, res, 400, 'INVALID_REQUEST', mention));
      }
    });
  });

  it('huge bodies: over the route limit 413 PAYLOAD_TOO_LARGE (declared or chunked); over the host limit 413 before the body is read', async () => {
    const padded = (n: number) => JSON.stringify(ENABLE_BODY) + ' '.repeat(n - JSON.stringify(ENABLE_BODY).length);
    await sweep(async (failures) => {
      for (const r of ROUTES.filter((x) => x.body !== 'none')) {
        const p = pathOf(r, r.name === 'enable-replication' ? { vmId: 'huge-probe' } : {});
        failures.push(...judge(`${r.name} with 64 KiB + 1`, await send(r.method, p, { body: padded(64 * 1024 + 1) }), 413, 'PAYLOAD_TOO_LARGE', '65536 bytes'));
        failures.push(...judge(`${r.name} with 1 MiB chunked`, await send(r.method, p, { body: padded(MiB), chunked: true }), 413, 'PAYLOAD_TOO_LARGE', '65536 bytes'));
        // a declared 100 MiB + 1 with a few bytes sent: the host answers from the header alone
        const declared = await send(r.method, p, { body: '{}', headers: { 'content-length': String(100 * MiB + 1) } });
        failures.push(...judge(`${r.name} declaring 100 MiB + 1`, declared, 413, 'PayloadTooLarge', '104857600'));
      }
      const getWithBody = await send('GET', 'vms', { body: '{}', headers: { 'content-length': String(100 * MiB + 1) } });
      failures.push(...judge('GET vms declaring 100 MiB + 1', getWithBody, 413, 'PayloadTooLarge', '104857600'));
    });
    expect((await send('GET', 'vms/huge-probe')).body.code).toBe('VM_NOT_FOUND');
  });

  it('a wrong method on every route: 405 naming the allowed ones, with Allow', async () => {
    await sweep(async (failures) => {
      for (const r of ROUTES) {
        for (const method of ['PUT', 'DELETE', 'PATCH', r.method === 'GET' ? 'POST' : 'GET']) {
          const res = await send(method, pathOf(r));
          failures.push(...judge(`${method} ${r.name}`, res, 405, 'MethodNotAllowed', r.method));
          if (res.headers.allow !== r.method) failures.push(`${method} ${r.name}: Allow ${String(res.headers.allow)}, expected ${r.method}`);
        }
      }
    });
  });

  it('no sweep made the host fail: no unexpected error in its log', () => {
    expect(stack.logs.filter((l) => /Unexpected error|"INTERNAL"|Unhandled error/.test(l))).toEqual([]);
  });

  it('a revoked key: after the function key is rotated (host restarted with a new one) the old key gets 401 on every route; the master key still works', async () => {
    // The host has no key expiry (nor has Azure Functions: keys are valid until replaced);
    // revocation is replacing the key, which the host reads at start.
    const oldKey = stack.functionKey;
    const newKey = randomBytes(24).toString('base64url');
    const adminKey = randomBytes(24).toString('base64url');
    await stack.stack.restartHost({ FERRY_FUNCTION_KEY: newKey, FERRY_ADMIN_KEY: adminKey });
    await sweep(async (failures) => {
      for (const r of ROUTES.filter((x) => x.auth === 'function')) {
        const body = r.validBody !== undefined ? JSON.stringify(r.validBody) : undefined;
        const params: Record<string, string> = r.name === 'enable-replication' ? { vmId: 'revoked-probe' } : {};
        const res = await send(r.method, pathOf(r, params), { key: oldKey, ...(body !== undefined ? { body } : {}) });
        // judge() also checks that the answer does not contain stack.functionKey, the revoked key
        failures.push(...judge(`${r.name} with the revoked key`, res, 401, 'Unauthorized', 'x-functions-key'));
      }
    });
    expect((await send('GET', `vms/${SEED_VM}`, { key: newKey })).status).toBe(200);
    expect((await send('GET', `vms/${SEED_VM}`, { key: adminKey })).status).toBe(200);
  });
});
