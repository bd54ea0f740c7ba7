import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FUNCTION_KEY, getJson, startTestHost, type TestHost } from './helpers';

let t: TestHost;

beforeAll(async () => {
  t = await startTestHost({ mainFiles: 'stream/*.js', maxRequestBodyBytes: 8 * 1024 * 1024 });
});

afterAll(async () => {
  await t?.host.stop({ graceMs: 2000 });
});

describe('HTTP streaming (app.setup({ enableHttpStream: true }))', () => {
  it('streams a request body to the handler and the response back', async () => {
    const bytes = randomBytes(3 * 1024 * 1024);
    const res = await fetch(`${t.api}/stream/echo/t1`, { method: 'POST', headers: { 'x-functions-key': FUNCTION_KEY }, body: bytes });
    expect(res.status).toBe(200);
    expect(res.headers.get('x-tag')).toBe('t1');
    expect(res.headers.has('x-ms-invocation-id')).toBe(false);
    expect(Buffer.from(await res.arrayBuffer()).equals(bytes)).toBe(true);
  });

  it('gives the handler the public URL and query', async () => {
    const body = Buffer.from('hello');
    const r = await getJson(`${t.api}/stream/hash?q=1`, { method: 'POST', body });
    expect(r.body).toEqual({ bytes: 5, sha256: createHash('sha256').update(body).digest('hex'), url: `${t.api}/stream/hash?q=1`, query: '1' });
  });

  it('still enforces keys and the body limit', async () => {
    expect((await fetch(`${t.api}/stream/echo/t2`, { method: 'POST', body: 'x' })).status).toBe(401);
    const big = await getJson(`${t.api}/stream/hash`, { method: 'POST', body: Buffer.alloc(8 * 1024 * 1024 + 1) });
    expect(big.status).toBe(413);
  });

  it('answers 500 when the handler throws', async () => {
    const r = await getJson(`${t.api}/stream/fails`);
    expect(r.status).toBe(500);
    expect(r.body.code).toBe('InternalServerError');
  });
});
