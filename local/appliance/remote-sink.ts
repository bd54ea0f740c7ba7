/**
 * The agent's side of the split roles: a BatchSink that talks to a process server over HTTPS.
 * The server's certificate is pinned: the first contact records it in
 * `<stateDir>/<vmId>/process-server.pem` (or `--fingerprint` must match it), and every later
 * connection trusts exactly that certificate, so a different server is refused before any
 * data is sent. While the process server is unreachable, submissions are retried (the agent
 * pauses; nothing is dropped).
 */
import { X509Certificate } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { request, type RequestOptions } from 'node:https';
import type { TLSSocket } from 'node:tls';
import { join } from 'node:path';
import type { PlainBatch } from './batching';
import { ApplianceError, errorMessage } from './errors';
import { writeFileAtomic } from './files';
import type { OutboxStats } from './outbox';
import type { BatchSink } from './sink';
import { loadVmState, vmDir } from './state';

function normalizeFp(fp: string): string {
  return fp.replace(/[^0-9a-f]/gi, '').toUpperCase();
}

/** Fetches the server's certificate without trusting it (first contact only). */
function peerCertificate(url: URL): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ host: url.hostname, port: url.port || 443, path: '/v1/health', method: 'GET', rejectUnauthorized: false }, (res) => {
      const raw = (res.socket as TLSSocket).getPeerCertificate(false).raw;
      res.resume();
      resolve(new X509Certificate(raw).toString());
    });
    req.on('error', (err) => reject(new ApplianceError('UNREACHABLE', `The process server at ${url.origin} is not reachable (${err.message}); start it with \`ferry process-server\`.`, { cause: err })));
    req.end();
  });
}

export class RemoteSink implements BatchSink {
  private readonly url: URL;
  private readonly token: string;
  private ca: string | undefined;

  constructor(processServerUrl: string, private readonly stateDir: string, private readonly vmId: string, private readonly options: { fingerprint?: string; retryForMs?: number } = {}) {
    this.url = new URL(processServerUrl);
    if (this.url.protocol !== 'https:') throw new ApplianceError('BAD_ARGUMENT', `--process-server must be an https:// URL; got ${processServerUrl}.`);
    this.token = loadVmState(stateDir, vmId).agentToken;
  }

  private pinFile(): string {
    return join(vmDir(this.stateDir, this.vmId), 'process-server.pem');
  }

  /** The pinned certificate: from the state dir, or recorded at first contact. */
  async pin(): Promise<string> {
    if (this.ca) return this.ca;
    let pem: string;
    if (existsSync(this.pinFile())) {
      pem = readFileSync(this.pinFile(), 'utf8');
    } else {
      pem = await peerCertificate(this.url);
      writeFileAtomic(this.pinFile(), pem, 0o600);
    }
    const fp = new X509Certificate(pem).fingerprint256;
    if (this.options.fingerprint && normalizeFp(this.options.fingerprint) !== normalizeFp(fp)) {
      throw new ApplianceError('CERTIFICATE_MISMATCH', `The process server's certificate has fingerprint ${fp}, not the ${this.options.fingerprint} given with --fingerprint.`);
    }
    this.ca = pem;
    return pem;
  }

  private async call<T>(method: string, path: string, body?: Buffer): Promise<T> {
    const ca = await this.pin();
    const opts: RequestOptions = {
      host: this.url.hostname,
      port: this.url.port || 443,
      path,
      method,
      ca,
      // the pinned certificate is the only trust anchor; its name need not match the host
      checkServerIdentity: () => undefined,
      headers: { authorization: `Bearer ${this.token}`, ...(body ? { 'content-type': 'application/octet-stream', 'content-length': body.length } : {}) },
    };
    return new Promise<T>((resolve, reject) => {
      const req = request(opts, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: { code?: string; message?: string } = {};
          try {
            parsed = text ? JSON.parse(text) : {};
          } catch {
            // reported below
          }
          if (res.statusCode === 200) return resolve(parsed as T);
          const code = res.statusCode === 401 ? 'UNAUTHORIZED' : res.statusCode === 404 && parsed.code === 'NOT_ENABLED' ? 'NOT_ENABLED' : 'API_ERROR';
          reject(new ApplianceError(code, `Process server ${this.url.origin}: ${res.statusCode} ${parsed.message ?? text}`));
        });
      });
      req.on('error', (err) => {
        const mismatch = /certificate|self.signed|SSL|TLS/i.test(err.message);
        reject(
          mismatch
            ? new ApplianceError('CERTIFICATE_MISMATCH', `The process server at ${this.url.origin} did not present the pinned certificate (${err.message}); if it was replaced on purpose, delete ${this.pinFile()}.`, { cause: err })
            : new ApplianceError('UNREACHABLE', `The process server at ${this.url.origin} is not reachable (${err.message}); start it with \`ferry process-server\`.`, { cause: err }),
        );
      });
      req.end(body);
    });
  }

  /** Retries transport failures (the process server restarting) for a while; others fail at once. */
  private async retrying<T>(fn: () => Promise<T>): Promise<T> {
    const deadline = Date.now() + (this.options.retryForMs ?? 10 * 60_000);
    let delay = 200;
    for (;;) {
      try {
        return await fn();
      } catch (err) {
        const transient = err instanceof ApplianceError && err.code === 'UNREACHABLE';
        if (!transient || Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(5000, delay * 2);
      }
    }
  }

  async nextSequence(vmId: string, diskId: string, epoch: number): Promise<number> {
    const r = await this.retrying(() => this.call<{ next: number }>('GET', `/v1/vms/${vmId}/disks/${diskId}/next-sequence?epoch=${epoch}`));
    return r.next;
  }

  async submit(plain: PlainBatch, release: () => void): Promise<void> {
    const head = Buffer.from(JSON.stringify({ meta: plain.meta, records: plain.records }));
    const body = Buffer.allocUnsafe(4 + head.length + plain.data.length);
    body.writeUInt32LE(head.length, 0);
    head.copy(body, 4);
    plain.data.copy(body, 4 + head.length);
    release();
    await this.retrying(() => this.call('POST', `/v1/vms/${plain.meta.vmId}/batches`, body));
  }

  async sync(vmId: string): Promise<void> {
    await this.retrying(() => this.call('POST', `/v1/vms/${vmId}/sync`));
  }

  async stats(vmId: string): Promise<OutboxStats> {
    return this.retrying(() => this.call<OutboxStats>('GET', `/v1/vms/${vmId}/stats`));
  }
}

export { errorMessage };
