/**
 * HTTP <-> RPC conversions at the host's edge, as the Functions host does them for a worker that
 * announces RawHttpBodyBytes, RpcHttpBodyOnly and IgnoreEmptyValuedRpcHttpHeaders
 * (azure-functions-host `RpcMessageConversionExtensions.ToRpcHttp`): header names lower-cased,
 * empty headers and empty query values left out, repeated values joined with ",", the body as
 * bytes whatever its content type, and the URL rebuilt from scheme, Host, path and query.
 */
import type { IncomingMessage } from 'node:http';
import type { RpcHttpCookie, RpcHttpData, RpcTypedData } from '../core-types';

export function toRpcHttp(req: IncomingMessage, params: Record<string, string>, body: Buffer | undefined): RpcHttpData {
  const host = req.headers.host ?? 'localhost';
  const url = new URL(req.url ?? '/', `http://${host}`);
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(req.headers)) {
    const v = Array.isArray(value) ? value.join(',') : value;
    if (v === undefined || v === '') continue;
    headers[name.toLowerCase()] = v;
  }
  const query: Record<string, string> = {};
  for (const key of new Set(url.searchParams.keys())) {
    const v = url.searchParams.getAll(key).join(',');
    if (v !== '') query[key] = v;
  }
  const http: RpcHttpData = {
    method: req.method ?? 'GET',
    url: `http://${host}${url.pathname}${url.search}`,
    headers,
    query,
    params: { ...params },
  };
  if (body && body.length > 0) http.body = { bytes: body };
  return http;
}

/** The bytes of an RPC value used as an HTTP response body. */
export function bodyBytes(data: RpcTypedData | null | undefined): Buffer {
  if (!data) return Buffer.alloc(0);
  if (data.bytes) return Buffer.from(data.bytes.buffer, data.bytes.byteOffset, data.bytes.byteLength);
  if (data.stream) return Buffer.from(data.stream.buffer, data.stream.byteOffset, data.stream.byteLength);
  if (typeof data.string === 'string') return Buffer.from(data.string, 'utf8');
  if (typeof data.json === 'string') return Buffer.from(data.json, 'utf8');
  if (typeof data.int === 'number') return Buffer.from(String(data.int));
  if (typeof data.double === 'number') return Buffer.from(String(data.double));
  return Buffer.alloc(0);
}

/** `Set-Cookie` value for one RPC cookie (RFC 6265). */
export function serializeCookie(c: RpcHttpCookie): string {
  const parts = [`${c.name ?? ''}=${c.value ?? ''}`];
  if (c.domain?.value) parts.push(`Domain=${c.domain.value}`);
  if (c.path?.value) parts.push(`Path=${c.path.value}`);
  const seconds = c.expires?.value?.seconds;
  if (typeof seconds === 'number') parts.push(`Expires=${new Date(seconds * 1000).toUTCString()}`);
  if (typeof c.maxAge?.value === 'number') parts.push(`Max-Age=${Math.trunc(c.maxAge.value)}`);
  if (c.secure?.value) parts.push('Secure');
  if (c.httpOnly?.value) parts.push('HttpOnly');
  const sameSite = String(c.sameSite ?? '').toLowerCase();
  if (sameSite === 'lax') parts.push('SameSite=Lax');
  else if (sameSite === 'strict') parts.push('SameSite=Strict');
  else if (sameSite === 'explicitnone') parts.push('SameSite=None');
  return parts.join('; ');
}

/** Hop-by-hop headers a handler cannot set on the host's connection. */
export const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'content-length']);
