/**
 * Building an envelope for a sealed batch and getting the sealed bytes back from one
 * (docs/wire-format.md, "The Service Bus envelope"). No I/O: the caller uploads the staged
 * blob before sending the message, and downloads it before calling `sealedBytesFrom`.
 */
import { createHash } from 'node:crypto';
import {
  batchSessionId,
  BINARY_MESSAGE_OVERHEAD_BYTES,
  ENVELOPE_VERSION,
  INLINE_MAX_SEALED_BYTES,
  STAGING_CONTAINER,
  stagingBlobName,
  type BatchEnvelope,
  type JsonBatchEnvelope,
} from '../domain/envelope';
import { peekBatchHeader } from '../domain/wire-format';
import { WireFormatError } from '../domain/wire-format-error';

export interface OutgoingBatch {
  /** The message body: the JSON envelope, or (binary form) the sealed batch itself. */
  envelope: JsonBatchEnvelope | Buffer;
  sessionId: string;
  messageId: string;
  /** Present when the batch goes through blob storage: upload it before sending. */
  staged?: { container: string; name: string; body: Buffer };
}

export interface EnvelopeOptions {
  /** Default INLINE_MAX_SEALED_BYTES (96 KiB). */
  inlineMaxBytes?: number;
  /**
   * The queue's maximum message size, when known: a sealed batch that fits it (with
   * BINARY_MESSAGE_OVERHEAD_BYTES to spare) is sent as a binary batch message, neither base64
   * nor staged. Absent or 0: JSON forms only.
   */
  maxMessageBytes?: number;
}

/** Whether a sealed batch of `sealedBytes` travels as a binary message on a queue taking `maxMessageBytes`. */
export function fitsBinaryMessage(sealedBytes: number, maxMessageBytes: number | undefined): boolean {
  return maxMessageBytes !== undefined && sealedBytes + BINARY_MESSAGE_OVERHEAD_BYTES <= maxMessageBytes;
}

/** Hex SHA-256 of `<vmId>/<diskId>/<epoch>/<sequence>`: the plain form can exceed 128 chars. */
export function batchMessageId(vmId: string, diskId: string, epoch: number, sequence: number): string {
  return createHash('sha256').update(`${vmId}/${diskId}/${epoch}/${sequence}`).digest('hex');
}

/** Wraps a sealed batch for Service Bus, inline or by reference to a staging blob. */
export function envelopeFor(sealed: Buffer, options: EnvelopeOptions = {}): OutgoingBatch {
  const h = peekBatchHeader(sealed);
  const common = { v: ENVELOPE_VERSION, vmId: h.vmId, diskId: h.diskId, epoch: h.epoch, seq: h.sequence, keyId: h.keyId, capturedAt: h.capturedAt } as const;
  const sessionId = batchSessionId(h.vmId, h.diskId);
  const messageId = batchMessageId(h.vmId, h.diskId, h.epoch, h.sequence);
  if (fitsBinaryMessage(sealed.length, options.maxMessageBytes)) return { envelope: sealed, sessionId, messageId };
  if (sealed.length <= (options.inlineMaxBytes ?? INLINE_MAX_SEALED_BYTES)) {
    return { envelope: { ...common, payload: { inline: sealed.toString('base64') } }, sessionId, messageId };
  }
  const name = stagingBlobName(h.vmId, h.diskId, h.epoch, h.sequence, h.nonce);
  const sha256 = createHash('sha256').update(sealed).digest('hex');
  return {
    envelope: { ...common, payload: { blob: { container: STAGING_CONTAINER, name, sizeBytes: sealed.length, sha256 } } },
    sessionId,
    messageId,
    staged: { container: STAGING_CONTAINER, name, body: sealed },
  };
}

/**
 * The sealed bytes an envelope carries: the inline payload, or the downloaded staging blob
 * checked against the envelope's size and SHA-256.
 */
export function sealedBytesFrom(envelope: BatchEnvelope, stagedBlob?: Buffer): Buffer {
  if ('sealed' in envelope.payload) return envelope.payload.sealed;
  if ('inline' in envelope.payload) return Buffer.from(envelope.payload.inline, 'base64');
  const ref = envelope.payload.blob;
  if (stagedBlob === undefined) {
    throw new WireFormatError('BAD_ENVELOPE', 'payload.blob', `The batch is in blob ${ref.container}/${ref.name}; download it and pass its bytes.`);
  }
  if (stagedBlob.length !== ref.sizeBytes) {
    throw new WireFormatError('BAD_ENVELOPE', 'payload.blob.sizeBytes', `Blob ${ref.container}/${ref.name} is ${stagedBlob.length} bytes; the envelope says ${ref.sizeBytes}.`);
  }
  if (createHash('sha256').update(stagedBlob).digest('hex') !== ref.sha256) {
    throw new WireFormatError('DIGEST_MISMATCH', 'payload.blob.sha256', `Blob ${ref.container}/${ref.name} does not match the envelope's SHA-256: it was overwritten or damaged.`);
  }
  return stagedBlob;
}

/** The expectations to pass to openBatch for the batch an envelope announces. */
export function expectationFrom(envelope: BatchEnvelope): { vmId: string; diskId: string; epoch: number; sequence: number } {
  return { vmId: envelope.vmId, diskId: envelope.diskId, epoch: envelope.epoch, sequence: envelope.seq };
}
