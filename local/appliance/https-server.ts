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
 */
import { createHash, timingSafeEqual, X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import { isValidId } from '../../shared/domain/ids';
import { MAX_RECORD_STREAM_BYTES } from '../../shared/domain/wire-format';
import type { Logger } from '../log';
import type { BatchMeta, RecordDesc } from './batching';
import { errorMessage, isApplianceError } from './errors';
import { writeFileAtomic } from './files';
import type { ProcessServer } from './process-server';

export const DEFAULT_PROCESS_SERVER_PORT = 9443;

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

async function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of req) {
    total += (chunk as Buffer).length;
    if (total > max) throw new HttpError(413, 'TOO_LARGE', `The request body exceeds ${max} bytes.`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks, total);
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
}

export async function startHttpsProcessServer(server: ProcessServer, options: ProcessServerHttpsOptions): Promise<{ server: Server; port: number; url: string; certificate: Certificate; close(): Promise<void> }> {
  const certificate = await loadOrCreateCertificate(options.certDir);
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
      throw new HttpError(401, 'UNAUTHORIZED', `The agent token for VM '${vmId}' is missing or wrong; use the state written by \`ferry enable\`.`);
    }
  };
  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'https://x');
    const parts = url.pathname.split('/').filter(Boolean);
    if (req.method === 'GET' && url.pathname === '/v1/health') return send(res, 200, { status: 'ok' });
    if (parts[0] !== 'v1' || parts[1] !== 'vms' || !parts[2]) throw new HttpError(404, 'NOT_FOUND', `No route ${req.method} ${url.pathname}.`);
    const vmId = parts[2];
    if (!isValidId(vmId)) throw new HttpError(400, 'BAD_ARGUMENT', `'${vmId}' is not a valid VM id.`);
    authorize(req, vmId);
    const rest = parts.slice(3).join('/');
    if (req.method === 'POST' && rest === 'batches') {
      const body = await readBody(req, MAX_RECORD_STREAM_BYTES + 16 * 1024 * 1024);
      if (body.length < 4) throw new HttpError(400, 'BAD_BATCH', 'The batch body is truncated.');
      const n = body.readUInt32LE(0);
      if (4 + n > body.length) throw new HttpError(400, 'BAD_BATCH', 'The batch header is truncated.');
      const head = JSON.parse(body.subarray(4, 4 + n).toString('utf8')) as { meta: BatchMeta; records: RecordDesc[] };
      if (head.meta?.vmId !== vmId) throw new HttpError(400, 'BAD_BATCH', `The batch is for VM '${String(head.meta?.vmId)}', not '${vmId}'.`);
      await server.submit({ meta: head.meta, records: head.records, data: body.subarray(4 + n) }, () => undefined);
      return send(res, 200, { accepted: true, sequence: head.meta.sequence });
    }
    if (req.method === 'GET' && parts[3] === 'disks' && parts[4] && parts[5] === 'next-sequence') {
      const epoch = Number(url.searchParams.get('epoch') ?? '1');
      return send(res, 200, { next: await server.nextSequence(vmId, parts[4], epoch) });
    }
    if (req.method === 'POST' && rest === 'sync') {
      await server.sync(vmId);
      return send(res, 200, { synced: true });
    }
    if (req.method === 'GET' && rest === 'stats') return send(res, 200, await server.stats(vmId));
    throw new HttpError(404, 'NOT_FOUND', `No route ${req.method} ${url.pathname}.`);
  };
  const https = createServer({ key: certificate.key, cert: certificate.cert }, (req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (err instanceof HttpError) return send(res, err.status, { code: err.code, message: err.message });
      const code = isApplianceError(err) ? err.code : (err as { code?: string }).code ?? 'INTERNAL';
      const status = code === 'NOT_ENABLED' ? 404 : /^[A-Z_]+$/.test(code) && code !== 'INTERNAL' ? 400 : 500;
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
