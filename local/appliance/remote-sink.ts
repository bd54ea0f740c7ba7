/**
 * The agent's side of the split roles: a BatchSink that talks to a process server over HTTPS.
 * The server's certificate is pinned: the first contact records it in
 * `<stateDir>/<vmId>/process-server.pem` (or `--fingerprint` must match it), and every later
 * connection trusts exactly that certificate, so a different server is refused before any
 * data is sent. While the process server is unreachable, submissions are retried (the agent
 * pauses; nothing is dropped).
 *
 * A restarted process server has lost what it accepted but had not made durable, and re-sends
 * the sequences that may have left as empty markers (outbox.ts); sequences the agent goes on
 * with could then be taken for replays and dropped. Every answer names the server's run
 * (`x-ferry-instance`): once it changes, every call fails with PROCESS_SERVER_RESTARTED, even
 * one that succeeded, until the agent has gone back to its last checkpoint and calls
 * `restart()`; calls begun before that keep failing, so nothing of the abandoned pass gets in.
 */
import { randomBytes, X509Certificate } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { request, type RequestOptions } from 'node:https';
import type { TLSSocket } from 'node:tls';
import { join } from 'node:path';
import type { PlainBatch } from './batching';
import { ApplianceError, errorMessage } from './errors';
import { writeFileAtomic } from './files';
import type { OutboxStats } from './outbox';
import type { BatchSink } from './sink';
import { INSTANCE_HEADER, RUN_HEADER } from './https-server';
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
  /** The process server's run this sink has talked to since it (re)started. */
  private instance: string | undefined;
  /** Set once the instance changed: every call fails until `restart()`. */
  private lost: ApplianceError | undefined;
  private generation = 0;
  /** This run of the agent (new at every `restart()`), named on every request unless observing. */
  private run = randomBytes(8).toString('hex');

  /** `observe`: a look at the process server (tests, tools) that names no agent run, so takes no disk over. */
  constructor(processServerUrl: string, private readonly stateDir: string, private readonly vmId: string, private readonly options: { fingerprint?: string; retryForMs?: number; observe?: boolean } = {}) {
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

  restart(): void {
    this.generation++;
    this.run = randomBytes(8).toString('hex');
    this.instance = undefined;
    this.lost = undefined;
  }

  private restarted(gen: number): ApplianceError | undefined {
    if (gen !== this.generation) return new ApplianceError('PROCESS_SERVER_RESTARTED', `A call to the process server at ${this.url.origin} begun before the agent went back to its checkpoint was abandoned.`);
    return this.lost;
  }

  private async call<T>(method: string, path: string, body: Buffer | undefined, gen: number): Promise<T> {
    const early = this.restarted(gen);
    if (early) throw early;
    const ca = await this.pin();
    const opts: RequestOptions = {
      host: this.url.hostname,
      port: this.url.port || 443,
      path,
      method,
      ca,
      // the pinned certificate is the only trust anchor; its name need not match the host
      checkServerIdentity: () => undefined,
      headers: { authorization: `Bearer ${this.token}`, ...(this.options.observe ? {} : { [RUN_HEADER]: this.run }), ...(body ? { 'content-type': 'application/octet-stream', 'content-length': body.length } : {}) },
    };
    return new Promise<T>((resolve, reject) => {
      const req = request(opts, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const seen = res.headers[INSTANCE_HEADER];
          if (typeof seen === 'string' && gen === this.generation && !this.lost) {
            this.instance ??= seen;
            if (seen !== this.instance) {
              this.lost = new ApplianceError('PROCESS_SERVER_RESTARTED', `The process server at ${this.url.origin} restarted; batches it had accepted since the agent's last checkpoint may be lost, so the agent goes back to that checkpoint.`);
            }
          }
          const late = this.restarted(gen);
          if (late) return reject(late);
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: { code?: string; message?: string } = {};
          try {
            parsed = text ? JSON.parse(text) : {};
          } catch {
            // reported below
          }
          if (res.statusCode === 200) return resolve(parsed as T);
          const code = res.statusCode === 401 ? 'UNAUTHORIZED' : res.statusCode === 404 && parsed.code === 'NOT_ENABLED' ? 'NOT_ENABLED' : res.statusCode === 409 && parsed.code === 'STALE_RUN' ? 'STALE_RUN' : 'API_ERROR';
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
  private async retrying<T>(fn: (gen: number) => Promise<T>): Promise<T> {
    const gen = this.generation;
    const deadline = Date.now() + (this.options.retryForMs ?? 10 * 60_000);
    let delay = 200;
    for (;;) {
      try {
        return await fn(gen);
      } catch (err) {
        const transient = err instanceof ApplianceError && err.code === 'UNREACHABLE';
        if (!transient || Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(5000, delay * 2);
      }
    }
  }

  async nextSequence(vmId: string, diskId: string, epoch: number): Promise<number> {
    const r = await this.retrying((gen) => this.call<{ next: number }>('GET', `/v1/vms/${vmId}/disks/${diskId}/next-sequence?epoch=${epoch}`, undefined, gen));
    return r.next;
  }

  async submit(plain: PlainBatch, release: () => void): Promise<void> {
    const head = Buffer.from(JSON.stringify({ meta: plain.meta, records: plain.records }));
    const body = Buffer.allocUnsafe(4 + head.length + plain.data.length);
    body.writeUInt32LE(head.length, 0);
    head.copy(body, 4);
    plain.data.copy(body, 4 + head.length);
    release();
    await this.retrying((gen) => this.call('POST', `/v1/vms/${plain.meta.vmId}/batches`, body, gen));
  }

  async sync(vmId: string): Promise<void> {
    await this.retrying((gen) => this.call('POST', `/v1/vms/${vmId}/sync`, undefined, gen));
  }

  async stats(vmId: string): Promise<OutboxStats> {
    return this.retrying((gen) => this.call<OutboxStats>('GET', `/v1/vms/${vmId}/stats`, undefined, gen));
  }
}

export { errorMessage };
