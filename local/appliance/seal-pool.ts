/**
 * A pool of seal worker threads, one per core by default (more workers than cores hurts,
 * shared/notes/performance-facts.md). Requests are queued and handed to the first idle worker.
 * With `workers: 0` sealing runs on the calling thread (tests, tiny machines).
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { cpus } from 'node:os';
import { join, resolve } from 'node:path';
import { Worker } from 'node:worker_threads';
import { sealBatch } from '../../shared/codec/batch';
import { outgoingMessage, type OutgoingMessage } from './messages';
import { toRecords, type PlainBatch } from './batching';
import type { SealRequest, SealResponse } from './seal-worker';

/** The compiled worker: beside this file when running from dist/, else under dist/ (vitest runs the .ts sources). */
function workerPath(): string {
  const here = join(__dirname, 'seal-worker.js');
  if (existsSync(here)) return here;
  return resolve(__dirname, '../../dist/local/appliance/seal-worker.js');
}

interface Job {
  req: Omit<SealRequest, 'id'>;
  resolve: (out: Sealed) => void;
  reject: (err: Error) => void;
}

export interface Sealed {
  sealed: Buffer;
  message: OutgoingMessage;
}

export class SealPool {
  private readonly idle: Worker[] = [];
  private readonly all: Worker[] = [];
  private readonly queue: Job[] = [];
  private readonly running = new Map<number, Job>();
  private readonly busy = new Map<Worker, number>();
  private nextId = 1;

  constructor(readonly workers = cpus().length) {
    for (let i = 0; i < workers; i++) {
      const w = new Worker(workerPath());
      w.on('message', (res: SealResponse) => this.done(w, res));
      w.on('error', (err) => {
        const id = this.busy.get(w);
        const job = id !== undefined ? this.running.get(id) : undefined;
        if (job && id !== undefined) {
          this.running.delete(id);
          job.reject(err);
        }
      });
      this.all.push(w);
      this.idle.push(w);
    }
  }

  /** `maxMessageBytes`: the batch queue's maximum message size if known (binary messages, see messages.ts). */
  seal(plain: PlainBatch, key: Uint8Array, keyId: number, maxMessageBytes?: number): Promise<Sealed> {
    if (this.workers === 0) {
      try {
        const sealed = sealBatch({ ...plain.meta, records: toRecords(plain) }, key, keyId, randomBytes);
        return Promise.resolve({ sealed, message: outgoingMessage(sealed, maxMessageBytes) });
      } catch (err) {
        return Promise.reject(err as Error);
      }
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ req: { meta: plain.meta, records: plain.records, data: plain.data, key, keyId, ...(maxMessageBytes !== undefined ? { maxMessageBytes } : {}) }, resolve, reject });
      this.pump();
    });
  }

  private pump(): void {
    while (this.idle.length > 0 && this.queue.length > 0) {
      const w = this.idle.pop()!;
      const job = this.queue.shift()!;
      const id = this.nextId++;
      this.running.set(id, job);
      this.busy.set(w, id);
      w.postMessage({ id, ...job.req } satisfies SealRequest);
    }
  }

  private done(w: Worker, res: SealResponse): void {
    const job = this.running.get(res.id);
    this.running.delete(res.id);
    this.busy.delete(w);
    this.idle.push(w);
    if (job) {
      if ('sealed' in res) job.resolve({ sealed: Buffer.from(res.sealed.buffer, res.sealed.byteOffset, res.sealed.byteLength), message: res.message });
      else job.reject(Object.assign(new Error(res.error.message), { name: res.error.name, code: res.error.code }));
    }
    this.pump();
  }

  async close(): Promise<void> {
    await Promise.all(this.all.map((w) => w.terminate()));
  }
}
