/**
 * The HTTP front end: route, check the method and the key, read the body (bounded), invoke,
 * write the function's response. Host-made errors are `{"code","message"}` JSON bodies.
 *
 * Keys work as in Azure Functions (https://learn.microsoft.com/azure/azure-functions/function-keys-how-to):
 * `x-functions-key` header or `code` query parameter; `function` level accepts the function
 * key or the admin (master) key, `admin` level only the admin key.
 */
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import { Agent, createServer, request as httpRequest, STATUS_CODES, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { RegisteredFunction } from '../core-api';
import type { RpcHttpData, RpcInvocationResponse } from '../core-types';
import { HostError } from '../errors';
import type { Invoker } from '../invoker';
import { bodyBytes, HOP_BY_HOP, serializeCookie, toRpcHttp } from './convert';
import { comparePrecedence, compileRoute, matchRoute, type CompiledRoute } from './route';

export type AuthLevel = 'anonymous' | 'function' | 'admin';

/** Streaming mode: how long after a successful invocation to wait for a response that never comes. */
const STREAM_RESPONSE_WAIT_MS = 2_000;

export interface HttpFunction {
  fn: RegisteredFunction;
  triggerName: string;
  route: CompiledRoute;
  /** Upper-case; undefined = every method. */
  methods: string[] | undefined;
  authLevel: AuthLevel;
}

export interface HttpFrontEndOptions {
  routePrefix: string;
  /**
   * Set when the app enabled HTTP streaming (`app.setup({ enableHttpStream: true })`): the
   * library's own HTTP proxy, to which requests are forwarded as the Functions host does.
   */
  streamUri?: string;
  functionKey: string;
  adminKey: string;
  maxBodyBytes: number;
  invoker: Invoker;
  logger: Logger;
}

/** Describes an httpTrigger binding as a routable function. */
export function toHttpFunction(fn: RegisteredFunction, triggerName: string, binding: Record<string, unknown>): HttpFunction {
  const name = fn.metadata.name;
  const template = typeof binding.route === 'string' && binding.route.trim() !== '' ? binding.route : name;
  const methods = Array.isArray(binding.methods) && binding.methods.length > 0 ? binding.methods.map((m) => String(m).toUpperCase()) : undefined;
  const level = String(binding.authLevel ?? 'function').toLowerCase();
  if (level !== 'anonymous' && level !== 'function' && level !== 'admin') {
    throw new HostError('InvalidRoute', `Function '${name}' has authLevel "${level}"; use anonymous, function or admin.`);
  }
  return { fn, triggerName, route: compileRoute(name, template), methods, authLevel: level };
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

/** Constant-time string comparison (hashing first makes the lengths equal). */
export function keyMatches(given: string | undefined, expected: string): boolean {
  if (given === undefined || expected === '') return false;
  return timingSafeEqual(digest(given), digest(expected));
}

export class HttpFrontEnd {
  private readonly server: Server;
  private readonly routes: HttpFunction[];
  private readonly proxyAgent = new Agent({ keepAlive: true });
  private stopping = false;

  constructor(
    functions: HttpFunction[],
    private readonly options: HttpFrontEndOptions,
  ) {
    this.routes = [...functions].sort((a, b) => comparePrecedence(a.route, b.route));
    assertNoConflicts(this.routes);
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((err) => {
        options.logger.error({ err }, 'Unhandled error serving an HTTP request');
        if (!res.headersSent) this.sendError(res, new HostError('InternalServerError', 'The host failed to serve the request; the host log has the details.'));
        else res.destroy();
      });
    });
    this.server.keepAliveTimeout = 5_000;
    // Requests Node refuses before any handler runs (headers or URL too long, malformed
    // HTTP, a request that timed out) get the same `{code, message}` body as every other
    // host error instead of Node's bare status line.
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
      if (!socket.writable || err.code === 'ECONNRESET') {
        socket.destroy();
        return;
      }
      const [status, code, message] =
        err.code === 'HPE_HEADER_OVERFLOW'
          ? [431, 'RequestHeaderFieldsTooLarge', 'The request line and headers exceed 16 KiB; shorten the URL (ids are at most 63 characters) or the headers.']
          : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
            ? [408, 'RequestTimeout', 'The request was not received in time; send it again.']
            : [400, 'BadRequest', `The request is not valid HTTP (${err.code ?? 'parse error'}).`];
      const body = JSON.stringify({ code, message });
      socket.end(
        `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
      );
    });
  }

  listen(port: number, host: string): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        resolve((this.server.address() as AddressInfo).port);
      });
    });
  }

  /** Stops accepting connections; requests already being served go on. */
  stopAccepting(): Promise<void> {
    this.stopping = true;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeIdleConnections();
    return closed;
  }

  /** Cuts whatever connections are left (after the grace period). */
  closeAll(): void {
    this.server.closeAllConnections();
    this.proxyAgent.destroy();
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = (req.method ?? 'GET').toUpperCase();
    if (this.stopping) {
      res.setHeader('connection', 'close');
      return this.reject(req, res, HostError.stopping());
    }
    const url = new URL(req.url ?? '/', 'http://localhost');
    const path = url.pathname;
    const rest = this.stripPrefix(path);
    if (rest === undefined) return this.reject(req, res, HostError.notFound(method, path));

    let matched: { f: HttpFunction; params: Record<string, string> } | undefined;
    const allowed = new Set<string>();
    for (const f of this.routes) {
      const params = matchRoute(f.route, rest);
      if (!params) continue;
      if (f.methods && !f.methods.includes(method)) {
        f.methods.forEach((m) => allowed.add(m));
        continue;
      }
      matched = { f, params };
      break;
    }
    if (!matched) {
      if (allowed.size > 0) {
        res.setHeader('allow', [...allowed].join(', '));
        return this.reject(req, res, HostError.methodNotAllowed(method, path, [...allowed]));
      }
      return this.reject(req, res, HostError.notFound(method, path));
    }

    const { f, params } = matched;
    if (f.authLevel !== 'anonymous') {
      const header = req.headers['x-functions-key'];
      const given = (Array.isArray(header) ? header[0] : header) ?? url.searchParams.get('code') ?? undefined;
      const ok = keyMatches(given, this.options.adminKey) || (f.authLevel === 'function' && keyMatches(given, this.options.functionKey));
      if (!ok) return this.reject(req, res, HostError.unauthorized(f.authLevel === 'admin'));
    }

    if (this.options.streamUri) return this.options.invoker.track(this.forwardStream(req, res, f, params, this.options.streamUri));

    const body = await this.readBody(req);
    if (body === 'too-large') {
      res.setHeader('connection', 'close');
      this.sendError(res, HostError.payloadTooLarge(this.options.maxBodyBytes));
      req.resume();
      return;
    }
    if (body === 'aborted') return;

    const http: RpcHttpData = toRpcHttp(req, params, body);
    const triggerMetadata: Record<string, { string?: string; json?: string }> = {
      Query: { json: JSON.stringify(http.query ?? {}) },
      Headers: { json: JSON.stringify(http.headers ?? {}) },
    };
    for (const [k, v] of Object.entries(params)) triggerMetadata[k] = { string: v };
    const traceparent = req.headers.traceparent;
    const outcome = await this.options.invoker.invoke(
      f.fn,
      {
        inputData: [{ name: f.triggerName, data: { http } }],
        triggerMetadata,
        traceParent: typeof traceparent === 'string' ? traceparent : undefined,
      },
      `This function was programmatically called via the host APIs.`,
    );
    if (this.stopping) res.setHeader('connection', 'close');
    if (!outcome.ok) return this.sendError(res, HostError.internal(outcome.invocationId));
    this.sendResponse(req, res, f, outcome.response);
  }

  /**
   * HTTP streaming: the invocation request carries no body; the request itself goes to the
   * library's proxy with `x-ms-invocation-id` (and `x-forwarded-host` / `-proto`, from which
   * the library rebuilds the URL), and the handler's response comes back on that proxy
   * connection, streamed to the client as it arrives.
   */
  private async forwardStream(req: IncomingMessage, res: ServerResponse, f: HttpFunction, params: Record<string, string>, streamUri: string): Promise<void> {
    const limit = this.options.maxBodyBytes;
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > limit) {
      res.setHeader('connection', 'close');
      return this.reject(req, res, HostError.payloadTooLarge(limit));
    }
    const invocationId = randomUUID();
    const http = toRpcHttp(req, params, undefined);
    const triggerMetadata: Record<string, { string?: string; json?: string }> = {
      Query: { json: JSON.stringify(http.query ?? {}) },
      Headers: { json: JSON.stringify(http.headers ?? {}) },
    };
    for (const [k, v] of Object.entries(params)) triggerMetadata[k] = { string: v };

    let answered = false;
    const responded = new Promise<boolean>((resolve) => {
      const target = new URL(req.url ?? '/', streamUri);
      const headers: Record<string, string | string[]> = {};
      for (const [k, v] of Object.entries(req.headers)) if (v !== undefined && !HOP_BY_HOP.has(k) && k !== 'host') headers[k] = v;
      if (req.headers['content-length']) headers['content-length'] = req.headers['content-length'];
      headers['x-ms-invocation-id'] = invocationId;
      headers['x-forwarded-host'] = req.headers.host ?? 'localhost';
      headers['x-forwarded-proto'] = 'http';
      const proxyReq = httpRequest(target, { method: req.method, headers, agent: this.proxyAgent });
      proxyReq.on('response', (pres) => {
        answered = true;
        res.statusCode = pres.statusCode ?? 200;
        for (const [k, v] of Object.entries(pres.headers)) {
          if (v === undefined || HOP_BY_HOP.has(k) || k === 'x-ms-invocation-id') continue;
          res.setHeader(k, v);
        }
        pres.pipe(res);
        pres.once('end', () => resolve(true));
        pres.once('error', () => resolve(true));
      });
      proxyReq.on('error', () => resolve(false));
      res.once('close', () => {
        if (!res.writableFinished) proxyReq.destroy();
        resolve(answered);
      });
      let size = 0;
      req.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > limit) {
          req.unpipe(proxyReq);
          proxyReq.destroy();
          if (!res.headersSent) {
            res.setHeader('connection', 'close');
            this.sendError(res, HostError.payloadTooLarge(limit));
          }
        }
      });
      req.pipe(proxyReq);
    });

    const outcome = await this.options.invoker.invoke(
      f.fn,
      { inputData: [{ name: f.triggerName, data: { http } }], triggerMetadata, invocationId },
      'This function was programmatically called via the host APIs.',
    );
    if (!outcome.ok) {
      if (!res.headersSent) this.sendError(res, HostError.internal(outcome.invocationId));
      else res.destroy();
      return;
    }
    // The library sends the response before the invocation completes; a handler that
    // returned nothing sends none, so give up waiting after a moment and answer 204.
    let timer: NodeJS.Timeout | undefined;
    const got = await Promise.race([responded, new Promise<boolean>((r) => (timer = setTimeout(() => r(false), STREAM_RESPONSE_WAIT_MS)))]);
    clearTimeout(timer);
    if (!got && !res.headersSent) {
      res.statusCode = 204;
      res.end();
    }
  }

  private stripPrefix(path: string): string | undefined {
    const prefix = this.options.routePrefix;
    if (prefix === '') return path;
    const lower = path.toLowerCase();
    const p = `/${prefix.toLowerCase()}`;
    if (lower === p) return '';
    if (lower.startsWith(p + '/')) return path.slice(p.length + 1);
    return undefined;
  }

  /** The whole body, or why not: over the limit, or the client went away. */
  private readBody(req: IncomingMessage): Promise<Buffer | 'too-large' | 'aborted'> {
    const limit = this.options.maxBodyBytes;
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > limit) return Promise.resolve('too-large');
    return new Promise((resolve) => {
      const chunks: Buffer[] = [];
      let size = 0;
      let done = false;
      const finish = (v: Buffer | 'too-large' | 'aborted'): void => {
        if (done) return;
        done = true;
        req.off('data', onData);
        resolve(v);
      };
      const onData = (chunk: Buffer): void => {
        size += chunk.length;
        if (size > limit) {
          chunks.length = 0;
          finish('too-large');
          return;
        }
        chunks.push(chunk);
      };
      req.on('data', onData);
      req.once('end', () => finish(Buffer.concat(chunks, size)));
      req.once('error', () => finish('aborted'));
      req.once('close', () => finish(req.complete ? Buffer.concat(chunks) : 'aborted'));
    });
  }

  private sendResponse(req: IncomingMessage, res: ServerResponse, f: HttpFunction, response: RpcInvocationResponse): void {
    const http = findHttpOutput(f.fn, response);
    if (!http) {
      // No HTTP response from the function: Azure answers 204.
      res.statusCode = 204;
      res.end();
      return;
    }
    const status = Number.parseInt(http.statusCode ?? '200', 10);
    res.statusCode = Number.isFinite(status) && status >= 100 && status <= 999 ? status : 200;
    for (const [k, v] of Object.entries(http.headers ?? {})) {
      if (HOP_BY_HOP.has(k.toLowerCase()) || k.toLowerCase() === 'set-cookie') continue;
      try {
        res.setHeader(k, v);
      } catch (err) {
        this.options.logger.warn({ fn: f.fn.metadata.name, header: k, err }, 'Dropped an invalid response header');
      }
    }
    const cookies = (http.cookies ?? []).map(serializeCookie);
    const rawSetCookie = Object.entries(http.headers ?? {}).find(([k]) => k.toLowerCase() === 'set-cookie')?.[1];
    if (rawSetCookie) cookies.unshift(rawSetCookie);
    if (cookies.length > 0) res.setHeader('set-cookie', cookies);
    const body = bodyBytes(http.body);
    const noBody = req.method === 'HEAD' || res.statusCode === 204 || res.statusCode === 304 || res.statusCode < 200;
    if (!noBody || req.method === 'HEAD') res.setHeader('content-length', body.length);
    res.end(noBody ? undefined : body);
  }

  /** Answers with a host error; the request body (if any) is discarded. */
  private reject(req: IncomingMessage, res: ServerResponse, err: HostError): void {
    req.resume();
    this.sendError(res, err);
  }

  private sendError(res: ServerResponse, err: HostError): void {
    const body = Buffer.from(JSON.stringify({ code: err.code, message: err.message }));
    res.statusCode = err.status;
    res.setHeader('content-type', 'application/json; charset=utf-8');
    res.setHeader('content-length', body.length);
    res.end(body);
  }
}

/** Two functions with the same template and a shared method: Azure refuses that app too. */
function assertNoConflicts(routes: HttpFunction[]): void {
  const seen = new Map<string, HttpFunction[]>();
  for (const f of routes) {
    const key = f.route.template.toLowerCase();
    const same = seen.get(key) ?? [];
    for (const other of same) {
      const shared = !f.methods || !other.methods || f.methods.some((m) => other.methods?.includes(m));
      if (shared) {
        throw new HostError('InvalidRoute', `Functions '${other.fn.metadata.name}' and '${f.fn.metadata.name}' both serve route "${f.route.template}" for the same methods; give one another route or other methods.`);
      }
    }
    seen.set(key, [...same, f]);
  }
}

/** The HTTP output: the `$return` binding or a named http output binding. */
function findHttpOutput(fn: RegisteredFunction, response: RpcInvocationResponse): RpcHttpData | undefined {
  const bindings = fn.metadata.bindings;
  const ret = bindings.$return;
  if (ret && String(ret.type).toLowerCase() === 'http' && response.returnValue?.http) return response.returnValue.http;
  for (const out of response.outputData ?? []) {
    const b = out.name ? bindings[out.name] : undefined;
    if (b && String(b.type).toLowerCase() === 'http' && out.data?.http) return out.data.http;
  }
  return undefined;
}
