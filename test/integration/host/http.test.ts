import { createHash, randomBytes } from 'node:crypto';
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtureState } from '../../fixtures/host-app/lib/events';
import { waitFor } from '../../support/wait';
import { ADMIN_KEY, FUNCTION_KEY, getJson, startTestHost, type TestHost } from './helpers';

let t: TestHost;

beforeAll(async () => {
  t = await startTestHost({ maxRequestBodyBytes: 1024 * 1024 });
});

afterAll(async () => {
  await t?.host.stop({ graceMs: 2000 });
});

describe('loading', () => {
  it('registers every function of the package.json main glob, with its trigger', () => {
    const byName = Object.fromEntries(t.host.functions.map((f) => [f.name, f]));
    expect(byName.itemById).toMatchObject({ trigger: 'httpTrigger', methods: ['GET'], route: '/api/items/{id:int}', authLevel: 'anonymous' });
    expect(byName.defaultRoute).toMatchObject({ route: '/api/defaultRoute', methods: ['GET', 'POST'] });
    expect(byName.hooked?.trigger).toBe('httpTrigger');
  });
});

describe('routing', () => {
  it('passes int-constrained route parameters as strings', async () => {
    const r = await getJson(`${t.api}/items/42?x=1&x=2&empty=`);
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ fn: 'itemById', params: { id: '42' }, query: { x: '1,2' } });
    expect(r.body.query).not.toHaveProperty('empty');
  });

  it('routes by constraint: alpha goes elsewhere, literal beats parameters', async () => {
    expect((await getJson(`${t.api}/items/abc`)).body.fn).toBe('itemByName');
    expect((await getJson(`${t.api}/items/latest`)).body.fn).toBe('itemsLatest');
  });

  it('answers 404 with a JSON error when no constraint accepts the value', async () => {
    const r = await getJson(`${t.api}/items/12ab`);
    expect(r.status).toBe(404);
    expect(r.body).toEqual({ code: 'NotFound', message: 'No function serves GET /api/items/12ab. Check the route and the /api prefix.' });
  });

  it('matches an optional parameter present or absent', async () => {
    expect((await getJson(`${t.api}/opt/7`)).body.params).toEqual({ id: '7' });
    const absent = await getJson(`${t.api}/opt`);
    expect(absent.status).toBe(200);
    expect(absent.body.params).toEqual({});
  });

  it('gives a catch-all parameter the rest of the path, decoded', async () => {
    const r = await getJson(`${t.api}/files/a/b%20c/d.txt`);
    expect(r.body).toMatchObject({ fn: 'catchAll', params: { path: 'a/b c/d.txt' } });
  });

  it('splits complex segments', async () => {
    expect((await getJson(`${t.api}/docs/report.final.pdf`)).body.params).toEqual({ name: 'report.final', ext: 'pdf' });
  });

  it('uses the function name as the default route, case-insensitively', async () => {
    expect((await getJson(`${t.api}/defaultroute`)).body.fn).toBe('defaultRoute');
    expect((await getJson(`${t.api}/DefaultRoute`, { method: 'POST' })).status).toBe(200);
  });

  it('answers 405 with Allow for a known route and a wrong method', async () => {
    const r = await getJson(`${t.api}/multi/1`, { method: 'GET' });
    expect(r.status).toBe(405);
    expect(r.headers.get('allow')).toBe('PUT, DELETE');
    expect(r.body.code).toBe('MethodNotAllowed');
    expect((await getJson(`${t.api}/multi/1`, { method: 'DELETE' })).body.fn).toBe('multiMethod');
  });

  it('answers 404 outside the route prefix', async () => {
    const r = await getJson(`${t.host.url}/items/42`);
    expect(r.status).toBe(404);
    expect(r.body.code).toBe('NotFound');
  });
});

describe('auth levels', () => {
  it('lets anyone call an anonymous function', async () => {
    expect((await getJson(`${t.api}/auth/anonymous`)).status).toBe(200);
  });

  it('refuses a function-level call without a key, with 401', async () => {
    const r = await getJson(`${t.api}/auth/function`);
    expect(r.status).toBe(401);
    expect(r.body).toEqual({
      code: 'Unauthorized',
      message: 'This function requires a function key: send it in the x-functions-key header or the code query parameter.',
    });
  });

  it('refuses a wrong key', async () => {
    expect((await getJson(`${t.api}/auth/function`, { headers: { 'x-functions-key': FUNCTION_KEY + 'x' } })).status).toBe(401);
    expect((await getJson(`${t.api}/auth/function?code=nope`)).status).toBe(401);
  });

  it('accepts the function key in the x-functions-key header', async () => {
    expect((await getJson(`${t.api}/auth/function`, { headers: { 'x-functions-key': FUNCTION_KEY } })).body).toEqual({ level: 'function' });
  });

  it('accepts the function key in the code query parameter', async () => {
    expect((await getJson(`${t.api}/auth/function?code=${encodeURIComponent(FUNCTION_KEY)}`)).status).toBe(200);
  });

  it('accepts the admin key for function level too', async () => {
    expect((await getJson(`${t.api}/auth/function`, { headers: { 'x-functions-key': ADMIN_KEY } })).status).toBe(200);
  });

  it('accepts only the admin key for admin level', async () => {
    const withFunctionKey = await getJson(`${t.api}/auth/admin`, { headers: { 'x-functions-key': FUNCTION_KEY } });
    expect(withFunctionKey.status).toBe(401);
    expect(withFunctionKey.body.message).toMatch(/admin \(master\) key/);
    expect((await getJson(`${t.api}/auth/admin?code=${ADMIN_KEY}`)).body).toEqual({ level: 'admin' });
  });
});

describe('bodies', () => {
  it('gives the handler a JSON body and returns jsonBody with a status', async () => {
    const r = await getJson(`${t.api}/echo/json`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ a: [1, 2], b: 'é' }) });
    expect(r.status).toBe(201);
    expect(r.headers.get('content-type')).toBe('application/json');
    expect(r.body).toEqual({ received: { a: [1, 2], b: 'é' }, contentType: 'application/json' });
  });

  it('round-trips binary bodies byte for byte', async () => {
    const bytes = randomBytes(256 * 1024);
    bytes[0] = 0xff;
    bytes[1] = 0xfe;
    const res = await fetch(`${t.api}/echo/binary`, { method: 'POST', headers: { 'content-type': 'application/x-custom' }, body: bytes });
    const back = Buffer.from(await res.arrayBuffer());
    expect(res.status).toBe(200);
    expect(res.headers.get('x-sha256')).toBe(createHash('sha256').update(bytes).digest('hex'));
    expect(back.equals(bytes)).toBe(true);
  });

  it('handles text bodies and an empty body', async () => {
    const res = await fetch(`${t.api}/echo/text`, { method: 'POST', body: 'héllo' });
    expect(await res.text()).toBe('got: héllo');
    expect(res.headers.get('content-type')).toBe('text/plain;charset=UTF-8');
    expect(await (await fetch(`${t.api}/echo/text`, { method: 'POST' })).text()).toBe('got: ');
  });

  it('refuses a body over the limit with 413 (declared length)', async () => {
    const r = await getJson(`${t.api}/echo/binary`, { method: 'POST', body: Buffer.alloc(1024 * 1024 + 1) });
    expect(r.status).toBe(413);
    expect(r.body).toEqual({ code: 'PayloadTooLarge', message: 'The request body exceeds the limit of 1048576 bytes; send less (large payloads belong in blob storage).' });
  });

  it('refuses a chunked body that grows over the limit with 413', async () => {
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(`${t.api}/echo/binary`, { method: 'POST', headers: { 'transfer-encoding': 'chunked' } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      const chunk = Buffer.alloc(64 * 1024);
      let sent = 0;
      const pump = (): void => {
        while (sent < 2 * 1024 * 1024) {
          sent += chunk.length;
          if (!req.write(chunk)) return void req.once('drain', pump);
        }
        req.end();
      };
      pump();
    });
    expect(status).toBe(413);
  });

  it('passes request headers, lower-cased', async () => {
    const r = await getJson(`${t.api}/headers`, { headers: { 'X-Custom': 'v1' } });
    expect(r.body).toEqual({ custom: 'v1', multi: null });
  });
});

describe('responses', () => {
  it('returns the status, headers and text body the handler set', async () => {
    const res = await fetch(`${t.api}/status/418`);
    expect(res.status).toBe(418);
    expect(res.headers.get('x-custom')).toBe('yes');
    expect(await res.text()).toBe('status 418');
  });

  it('returns stream bodies', async () => {
    expect(await (await fetch(`${t.api}/shapes/stream`)).text()).toBe('chunk1-chunk2');
  });

  it('returns ArrayBuffer bodies', async () => {
    const res = await fetch(`${t.api}/shapes/arraybuffer`);
    expect([...new Uint8Array(await res.arrayBuffer())]).toEqual([1, 2, 3, 250]);
  });

  it('sets cookies', async () => {
    const res = await fetch(`${t.api}/shapes/cookies`);
    expect(res.headers.getSetCookie()).toEqual(['a=1; Path=/; HttpOnly', 'b=2; SameSite=Strict']);
  });

  it('answers 204 when the handler returns nothing', async () => {
    expect((await fetch(`${t.api}/shapes/nothing`)).status).toBe(204);
  });
});

describe('failures and logs', () => {
  it('answers 500 with a generic message when the handler throws, and logs the failure', async () => {
    const r = await getJson(`${t.api}/boom`);
    expect(r.status).toBe(500);
    expect(r.body.code).toBe('InternalServerError');
    expect(r.body.message).toMatch(/^The function failed \(invocation [0-9a-f-]{36}\); the host log has the details\.$/);
    expect(JSON.stringify(r.body)).not.toMatch(/kaboom|supersecret|at /);
    const line = await waitFor(() => t.log.lines.find((l) => String(l.msg).startsWith(`Executed 'Functions.boom' (Failed`)), 'the failure log line');
    expect(line.level).toBe(50);
    expect(t.log.text()).not.toContain('supersecretvalue');
  });

  it('logs one Executed line per invocation with id and duration', async () => {
    const r = await getJson(`${t.api}/logs`);
    const id = r.body.invocationId as string;
    const line = await waitFor(() => t.log.lines.find((l) => l.invocationId === id && String(l.msg).startsWith('Executed')), 'the Executed line');
    expect(line.msg).toMatch(new RegExp(`^Executed 'Functions\\.logs' \\(Succeeded, Id=${id}, Duration=\\d+ms\\)$`));
    expect(line.fn).toBe('logs');
  });

  it('routes context.log / warn / error to the host log with the function name', async () => {
    const r = await getJson(`${t.api}/logs`);
    const id = r.body.invocationId as string;
    await waitFor(() => t.log.lines.some((l) => l.invocationId === id && l.msg === 'error from function'), 'the user log lines');
    const mine = t.log.lines.filter((l) => l.invocationId === id && l.fn === 'logs');
    expect(mine.find((l) => l.msg === 'info from function { n: 1 }')?.level).toBe(30);
    expect(mine.find((l) => l.msg === 'warning from function')?.level).toBe(40);
    expect(mine.find((l) => l.msg === 'error from function')?.level).toBe(50);
  });
});

describe('hooks', () => {
  it('ran appStart once at load, with its own hookData', () => {
    const starts = fixtureState().events.filter((e) => e.fn === 'appStart');
    expect(starts.length).toBeGreaterThanOrEqual(1);
    expect(starts.at(-1)?.hookData).toEqual({ startedBy: 'appStart' });
  });

  it('runs preInvocation (which may swap the handler) and postInvocation (which may replace the result)', async () => {
    const before = fixtureState().events.length;
    const r = await getJson(`${t.api}/hooked`);
    expect(r.body).toEqual({ value: 2, replacedBy: 'postInvocation' });
    expect(r.headers.get('x-wrapped-by')).toBe('preInvocation');
    const mine = fixtureState().events.slice(before).filter((e) => e.functionName === 'hooked');
    expect(mine.map((e) => e.fn)).toEqual(['preInvocation', 'postInvocation']);
    expect(mine[1]?.hadPre).toBe(true);
  });

  it('passes log lines through log hooks, which may rewrite them', async () => {
    const r = await getJson(`${t.api}/hooked/logs`);
    const id = r.body.invocationId as string;
    const line = await waitFor(() => t.log.lines.find((l) => l.invocationId === id && l.fn === 'hookedLogs' && !String(l.msg).startsWith('Execut')), 'the user log line');
    expect(line.msg).toBe('[redacted by log hook]');
  });

  it('lets postInvocation clear an error', async () => {
    const r = await getJson(`${t.api}/hooked/fails`);
    expect(r.status).toBe(202);
    expect(r.body).toEqual({ recovered: true });
  });
});
