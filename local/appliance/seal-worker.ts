/** A seal worker thread: seals plain batches (zstd-1 + AES-256-GCM + SHA-256) off the main thread. */
import { randomBytes } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import { sealBatch } from '../../shared/codec/batch';
import { outgoingMessage, type OutgoingMessage } from './messages';
import { toRecords, type BatchMeta, type RecordDesc } from './batching';

export interface SealRequest {
  id: number;
  meta: BatchMeta;
  records: RecordDesc[];
  data: Uint8Array;
  key: Uint8Array;
  keyId: number;
  /** The batch queue's maximum message size, once the outbox has learned it. */
  maxMessageBytes?: number;
}

export type SealResponse = { id: number; sealed: Uint8Array; message: OutgoingMessage } | { id: number; error: { name: string; code?: string; message: string } };

parentPort?.on('message', (req: SealRequest) => {
  try {
    const data = Buffer.from(req.data.buffer, req.data.byteOffset, req.data.byteLength);
    const sealed = sealBatch({ ...req.meta, records: toRecords({ records: req.records, data }) }, req.key, req.keyId, randomBytes);
    // the envelope (with the SHA-256 of a staged payload) is made here too, off the main thread
    const message: OutgoingMessage = outgoingMessage(sealed, req.maxMessageBytes);
    const own = sealed.byteOffset === 0 && sealed.byteLength === sealed.buffer.byteLength ? sealed : Buffer.from(sealed);
    parentPort!.postMessage({ id: req.id, sealed: own, message } satisfies SealResponse, [own.buffer as ArrayBuffer]);
  } catch (err) {
    const e = err as Error & { code?: string };
    parentPort!.postMessage({ id: req.id, error: { name: e.name, message: e.message, ...(e.code ? { code: e.code } : {}) } } satisfies SealResponse);
  }
});
