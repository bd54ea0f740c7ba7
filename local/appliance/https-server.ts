/**
 * `ferry process-server`: the ProcessServer behind HTTPS (default port 9443). The certificate
 * is self-signed, generated on first run into `<stateDir>/process-server/` and pinned by agents
 * (they trust exactly this certificate). Each request names a VM and carries that VM's agent
 * token (issued at `ferry enable`), compared in constant time.
 *
 * Routes (JSON unless noted; errors `{code, message}`):
 *   GET  /v1/health                                      {status:"ok"}, no token
 *   GET  /v1/vms/{vm}/disks/{disk}/next-sequence?epoch=N {next}
 *   POST /v1/vms/{vm}/batches                            body: u32 LE n, n bytes of JSON
 *        {meta, records}, then the data of the data records; 200 once durably spooled
 *   POST /v1/vms/{vm}/sync                               fsyncs the VM's spool
 *   GET  /v1/vms/{vm}/stats                              the VM's outbox figures
 *
 * An agent names its run (`x-ferry-agent-run`, random per start or return to its checkpoint)
 * on every request: its next-sequence makes the disk that run's and drops batches an earlier
 * run left beyond a gap; uploads of an earlier run are then refused with 409 STALE_RUN.
 *
 * Every answer carries `x-ferry-instance`, random per start of the process server. Batches it
 * accepted but had not yet made durable (`sync`) die with it, and its outbox re-sends sequences
 * that may have left as empty markers (outbox.ts), so an agent that sees the instance change
 * must go back to its last checkpoint and ask for its next sequences again (remote-sink.ts).
 */
import { createHash, randomBytes, timingSafeEqual, X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import { isValidId } from '../../shared/domain/ids';
import { MAX_RECORDS } from '../../shared/domain/wire-format';
import { z } from 'zod';
import type { Logger } from '../log';
import { BATCH_DATA_BYTES, dataBytesOf, type BatchMeta, type RecordDesc } from './batching';
import { errorMessage, isApplianceError } from './errors';
import { writeFileAtomic } from './files';
import type { ProcessServer } from './process-server';

export const DEFAULT_PROCESS_SERVER_PORT = 9443;
/** The response header naming this run of the process server (see the top of this file). */
export const INSTANCE_HEADER = 'x-ferry-instance';
/** The request header naming the agent's run (process-server.ts, nextSequence). */
export const RUN_HEADER = 'x-ferry-agent-run';

function runOf(req: IncomingMessage): string | undefined {
  const run = req.headers[RUN_HEADER];
  if (run === undefined) return undefined;
  if (typeof run !== 'string' || !/^[0-9a-f]{8,64}$/.test(run)) throw new HttpError(400, 'BAD_ARGUMENT', `The ${RUN_HEADER} header must be 8 to 64 hex digits.`);
  return run;
}

export interface Certificate {
  key: string;
  cert: string;
  /** SHA-256 of the DER certificate, colon-separated hex (as openssl and Node print it). */
  fingerprint256: string;
}

/** The process server's certificate: loaded, or generated once (mode 0600). */
export async function loadOrCreateCertificate(dir: string): Promise<Certificate> {
  const keyFile = join(dir, 'key.pem');
  const certFile = join(dir, 'cert.pem');
  if (!existsSync(keyFile) || !existsSync(certFile)) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const { generate } = await import('selfsigned');
    const notAfter = new Date(Date.now() + 10 * 365 * 24 * 3600 * 1000);
    const pems = await generate([{ name: 'commonName', value: 'ferry-process-server' }], {
      keySize: 2048,
      algorithm: 'sha256',
      notAfterDate: notAfter,
      extensions: [{ name: 'subjectAltName', altNames: [{ type: 2, value: 'localhost' }, { type: 7, ip: '127.0.0.1' }] }],
    } as never);
    writeFileAtomic(keyFile, pems.private, 0o600);
    writeFileAtomic(certFile, pems.cert, 0o600);
  }
  const cert = readFileSync(certFile, 'utf8');
  return { key: readFileSync(keyFile, 'utf8'), cert, fingerprint256: new X509Certificate(cert).fingerprint256 };
}

class HttpError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/**
 * The largest batch upload: the u32 head length, a head of at most MAX_BATCH_HEAD_BYTES (the
 * record descriptors), and at most BATCH_DATA_BYTES of data, which is what an agent sends.
 * Anything larger is refused before it is buffered.
 */
export const MAX_BATCH_HEAD_BYTES = 8 * 1024 * 1024;
export const MAX_BATCH_BODY_BYTES = 4 + MAX_BATCH_HEAD_BYTES + BATCH_DATA_BYTES;

const tooLarge = (max: number) => new HttpError(413, 'TOO_LARGE', `The request body exceeds ${max} bytes, the most a batch upload takes; send batches of at most ${BATCH_DATA_BYTES} data bytes.`);

/**
 * The body, at most `max` bytes. Beyond that it is refused without keeping what arrived: the
 * rest is read and discarded (not buffered) until the 413 has gone out and the connection closes.
 */
function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > max) return Promise.reject(tooLarge(max));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let total = 0;
    const onData = (chunk: Buffer): void => {
      total += chunk.length;
      if (total <= max) {
        chunks.push(chunk);
        return;
      }
      chunks.length = 0;
      req.off('data', onData);
      req.resume();
      reject(tooLarge(max));
    };
    req.on('data', onData);
    req.once('end', () => resolve(Buffer.concat(chunks, total)));
    req.once('error', reject);
  });
}

const recordSchema = z.strictObject({
  kind: z.enum(['data', 'zero']),
  offset: z.number().int().nonnegative(),
  length: z.number().int().nonnegative(),
});

/** The head of a batch upload; the wire format checks the meta's fields when sealing. */
const batchHeadSchema = z.strictObject({
  meta: z.looseObject({ vmId: z.string(), diskId: z.string(), epoch: z.number().int().positive(), sequence: z.number().int().positive() }),
  records: z.array(recordSchema).max(MAX_RECORDS),
});

function parseBatchHead(bytes: Buffer, dataBytes: number): { meta: BatchMeta; records: RecordDesc[] } {
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new HttpError(400, 'BAD_BATCH', `The batch head is not JSON (${errorMessage(err)}).`);
  }
  const parsed = batchHeadSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new HttpError(400, 'BAD_BATCH', `The batch head is invalid: ${issue ? `${issue.path.join('.') || '(head)'}: ${issue.message}` : 'unknown'}.`);
  }
  const head = parsed.data as unknown as { meta: BatchMeta; records: RecordDesc[] };
  const described = dataBytesOf(head.records);
  if (described !== dataBytes) throw new HttpError(400, 'BAD_BATCH', `The batch's data records describe ${described} bytes but ${dataBytes} were sent.`);
  return head;
}

export interface ProcessServerTimeouts {
  /** The request line and headers must arrive within this (default 30 s). */
  headersTimeoutMs?: number;
  /** The whole request, body included, must arrive within this (default 5 min). */
  requestTimeoutMs?: number;
}

const digest = (s: string) => createHash('sha256').update(s).digest();

/**
 * Whether a presented agent token equals the expected one, in constant time: both are hashed
 * first, so timingSafeEqual compares equal lengths and the time leaks neither the token nor its
 * length. An empty token never matches.
 */
export function tokenMatches(presented: string, expected: string): boolean {
  if (!presented || !expected) return false;
  return timingSafeEqual(digest(presented), digest(expected));
}

export interface ProcessServerHttpsOptions {
  port?: number;
  host?: string;
  certDir: string;
  log?: Logger;
  timeouts?: ProcessServerTimeouts;
}

export async function startHttpsProcessServer(server: ProcessServer, options: ProcessServerHttpsOptions): Promise<{ server: Server; port: number; url: string; certificate: Certificate; close(): Promise<void> }> {
  const certificate = await loadOrCreateCertificate(options.certDir);
  const instance = randomBytes(12).toString('hex');
  const authorize = (req: IncomingMessage, vmId: string) => {
    const header = req.headers.authorization ?? '';
    const token = header.startsWith('Bearer ') ? header.slice(7) : '';
    let expected: string;
    try {
      expected = server.vm(vmId).token;
    } catch (err) {
      throw new HttpError(404, 'NOT_ENABLED', errorMessage(err));
    }
    if (!tokenMatches(token, expected)) {
      // Authenticated as another VM's agent, but not allowed this VM's data: 403, not 401.
      const owner = token ? server.knownVms().find((other) => other !== vmId && tokenMatches(token, server.vm(other).token)) : undefined;
      if (owner) throw new HttpError(403, 'FORBIDDEN', `The agent token presented is VM '${owner}''s; it gives no access to VM '${vmId}'. Run the agent for '${vmId}' with its own state.`);
      throw new HttpError(401, 'UNAUTHORIZED', `The agent token for VM '${vmId}' is missing or wrong; use the state written by \`ferry enable\`.`);
    }
  };
  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    res.setHeader(INSTANCE_HEADER, instance);
    const url = new URL(req.url ?? '/', 'https://x');
    const parts = url.pathname.split('/').filter(Boolean);
    if (req.method === 'GET' && url.pathname === '/v1/health') return send(res, 200, { status: 'ok' });
    if (parts[0] !== 'v1' || parts[1] !== 'vms' || !parts[2]) throw new HttpError(404, 'NOT_FOUND', `No route ${req.method} ${url.pathname}.`);
    const vmId = parts[2];
    if (!isValidId(vmId)) throw new HttpError(400, 'BAD_ARGUMENT', `'${vmId}' is not a valid VM id.`);
    authorize(req, vmId);
    const rest = parts.slice(3).join('/');
    if (req.method === 'POST' && rest === 'batches') {
      const body = await readBody(req, MAX_BATCH_BODY_BYTES);
      if (body.length < 4) throw new HttpError(400, 'BAD_BATCH', 'The batch body is truncated.');
      const n = body.readUInt32LE(0);
      if (n > MAX_BATCH_HEAD_BYTES) throw new HttpError(400, 'BAD_BATCH', `The batch head is ${n} bytes; at most ${MAX_BATCH_HEAD_BYTES}.`);
      if (4 + n > body.length) throw new HttpError(400, 'BAD_BATCH', 'The batch header is truncated.');
      const head = parseBatchHead(body.subarray(4, 4 + n), body.length - 4 - n);
      if (head.meta.vmId !== vmId) throw new HttpError(400, 'BAD_BATCH', `The batch is for VM '${String(head.meta?.vmId)}', not '${vmId}'.`);
      await server.submit({ meta: head.meta, records: head.records, data: body.subarray(4 + n) }, () => undefined, runOf(req));
      return send(res, 200, { accepted: true, sequence: head.meta.sequence });
    }
    if (req.method === 'GET' && parts[3] === 'disks' && parts[4] && parts[5] === 'next-sequence') {
      const epoch = Number(url.searchParams.get('epoch') ?? '1');
      if (!isValidId(parts[4])) throw new HttpError(400, 'BAD_ARGUMENT', `'${parts[4]}' is not a valid disk id.`);
      if (!Number.isSafeInteger(epoch) || epoch < 1) throw new HttpError(400, 'BAD_ARGUMENT', `epoch must be a whole number of at least 1; got '${url.searchParams.get('epoch')}'.`);
      return send(res, 200, { next: await server.nextSequence(vmId, parts[4], epoch, runOf(req)) });
    }
    if (req.method === 'POST' && rest === 'sync') {
      await server.sync(vmId);
      return send(res, 200, { synced: true });
    }
    if (req.method === 'GET' && rest === 'stats') return send(res, 200, await server.stats(vmId));
    throw new HttpError(404, 'NOT_FOUND', `No route ${req.method} ${url.pathname}.`);
  };
  const headersTimeout = options.timeouts?.headersTimeoutMs ?? 30_000;
  const requestTimeout = Math.max(options.timeouts?.requestTimeoutMs ?? 300_000, headersTimeout);
  // A slow or stalled upload is cut (408) once its time is up: Node checks at this interval.
  const https = createServer({ key: certificate.key, cert: certificate.cert, headersTimeout, requestTimeout, connectionsCheckingInterval: Math.min(1_000, headersTimeout) }, (req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (err instanceof HttpError) {
        // a refused body is not read further: the connection closes after the answer
        if (err.status === 413) {
          res.setHeader('connection', 'close');
          req.resume(); // discard the rest; give the client a moment to read the answer, then cut
          res.once('finish', () => setTimeout(() => req.socket.destroy(), 1_000).unref());
        }
        send(res, err.status, { code: err.code, message: err.message });
        return;
      }
      const code = isApplianceError(err) ? err.code : (err as { code?: string }).code ?? 'INTERNAL';
      const status = code === 'NOT_ENABLED' ? 404 : code === 'STALE_RUN' ? 409 : /^[A-Z_]+$/.test(code) && code !== 'INTERNAL' ? 400 : 500;
      options.log?.warn({ err: errorMessage(err), url: req.url }, 'request failed');
      send(res, status, { code, message: errorMessage(err) });
    });
  });
  const port = await new Promise<number>((resolve, reject) => {
    https.once('error', reject);
    https.listen(options.port ?? DEFAULT_PROCESS_SERVER_PORT, options.host ?? '0.0.0.0', () => {
      const addr = https.address();
      resolve(typeof addr === 'object' && addr ? addr.port : 0);
    });
  });
  return {
    server: https,
    port,
    url: `https://127.0.0.1:${port}`,
    certificate,
    close: () => new Promise<void>((r) => https.close(() => r())),
  };
}
