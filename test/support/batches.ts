/**
 * A minimal test-side sender of batches: seals with the real codec, wraps in the real
 * envelope, stages large payloads in blob container `staging`, sends on the disk's session.
 */
import { randomBytes } from 'node:crypto';
import { ServiceBusClient, type ServiceBusSender } from '@azure/service-bus';
import { BlobServiceClient } from '@azure/storage-blob';
import { sealBatch } from '../../shared/codec/batch';
import { envelopeFor } from '../../shared/codec/envelope';
import type { Batch, BatchRecord } from '../../shared/domain/wire-format';

export interface BatchSender {
  /** Seals and sends; returns the sealed bytes. */
  send(batch: Batch, key: Buffer, options?: { keyId?: number; tamper?: (sealed: Buffer) => Buffer; inlineMaxBytes?: number }): Promise<Buffer>;
  /** Sends an arbitrary body on a session (for hostile-input tests). */
  sendRaw(body: unknown, sessionId: string): Promise<void>;
  close(): Promise<void>;
}

export function createBatchSender(serviceBusConnection: string, storageConnection: string, queue = 'replication-batches'): BatchSender {
  const client = new ServiceBusClient(serviceBusConnection);
  const sender: ServiceBusSender = client.createSender(queue);
  const staging = BlobServiceClient.fromConnectionString(storageConnection).getContainerClient('staging');
  let ensured: Promise<unknown> | undefined;
  return {
    async send(batch, key, options = {}) {
      let sealed = sealBatch(batch, key, options.keyId ?? 1, randomBytes);
      if (options.tamper) sealed = options.tamper(Buffer.from(sealed));
      const out = envelopeFor(sealed, options.inlineMaxBytes !== undefined ? { inlineMaxBytes: options.inlineMaxBytes } : {});
      if (out.staged) {
        ensured ??= staging.createIfNotExists();
        await ensured;
        await staging.getBlockBlobClient(out.staged.name).uploadData(out.staged.body);
      }
      await sender.sendMessages({ body: out.envelope, contentType: 'application/json', sessionId: out.sessionId, messageId: out.messageId });
      return sealed;
    },
    async sendRaw(body, sessionId) {
      await sender.sendMessages({ body, contentType: 'application/json', sessionId });
    },
    async close() {
      await sender.close();
      await client.close();
    },
  };
}

/** Applies records to an in-memory model of a disk. */
export function applyToModel(model: Buffer, records: readonly BatchRecord[]): void {
  for (const r of records) {
    if (r.kind === 'zero') model.fill(0, r.offset, r.offset + r.length);
    else model.set(r.data, r.offset);
  }
}

/** Deterministic pseudo-random generator (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Random sorted, non-overlapping, sector-aligned records inside [0, size). */
export function randomRecords(next: () => number, size: number, count: number, maxLen: number): BatchRecord[] {
  const sectors = size / 512;
  const picked: BatchRecord[] = [];
  const taken: [number, number][] = [];
  for (let tries = 0; picked.length < count && tries < count * 20; tries++) {
    const start = Math.floor(next() * sectors) * 512;
    const len = Math.min(size - start, (1 + Math.floor(next() * (maxLen / 512))) * 512);
    if (taken.some(([s, e]) => start < e && s < start + len)) continue;
    taken.push([start, start + len]);
    const data = Buffer.alloc(len);
    for (let i = 0; i < len; i += 4) data.writeUInt32LE(Math.floor(next() * 0xffffffff), i);
    picked.push(next() < 0.2 ? { kind: 'zero', offset: start, length: len } : { kind: 'data', offset: start, data });
  }
  return picked.sort((a, b) => a.offset - b.offset);
}
