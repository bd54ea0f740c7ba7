/**
 * The Service Bus message that announces one sealed batch (docs/wire-format.md, "The Service
 * Bus envelope"): a small JSON body, versioned, with the sealed batch inline (base64) or in
 * blob container `staging`. Also the names derived from a batch: the session id of a disk
 * and the staging blob name.
 */
import { z } from 'zod';
import { ID_PATTERN } from './ids';
import { MAX_CAPTURED_AT, MIN_SEALED_BYTES, PREFIX_BYTES, MAX_PAYLOAD_BYTES, TAG_BYTES, peekBatchHeader } from './wire-format';
import { WireFormatError } from './wire-format-error';

export const ENVELOPE_VERSION = 1;
export const STAGING_CONTAINER = 'staging';
/**
 * Sealed batches up to 96 KiB travel inline: 128 KiB of base64 plus ~300 bytes of JSON keeps
 * the message well under Service Bus Standard's 256 KB, AMQP overhead included.
 */
export const INLINE_MAX_SEALED_BYTES = 96 * 1024;
const INLINE_MAX_BASE64 = Math.ceil(INLINE_MAX_SEALED_BYTES / 3) * 4;
export const MAX_SEALED_BYTES = PREFIX_BYTES + MAX_PAYLOAD_BYTES + TAG_BYTES;
/** Service Bus's limit on session and message ids. */
export const SERVICE_BUS_ID_MAX = 128;

const id = z.string().regex(ID_PATTERN);
const positiveU32 = z.number().int().min(1).max(0xffff_ffff);

const stagingNamePattern = /^([a-z0-9][a-z0-9-]{0,62})\/([a-z0-9][a-z0-9-]{0,62})\/(\d{10})-(\d{20})-([0-9a-f]{24})$/;

export const batchEnvelopeSchema = z
  .strictObject({
    v: z.literal(ENVELOPE_VERSION),
    vmId: id,
    diskId: id,
    epoch: positiveU32,
    seq: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
    keyId: positiveU32,
    capturedAt: z.number().int().min(1).max(MAX_CAPTURED_AT),
    payload: z.union([
      z.strictObject({ inline: z.base64().max(INLINE_MAX_BASE64) }),
      z.strictObject({
        blob: z.strictObject({
          container: z.literal(STAGING_CONTAINER),
          name: z.string().regex(stagingNamePattern),
          sizeBytes: z.number().int().min(MIN_SEALED_BYTES).max(MAX_SEALED_BYTES),
          sha256: z.string().regex(/^[0-9a-f]{64}$/),
        }),
      }),
    ]),
  })
  .superRefine((env, ctx) => {
    if (!('blob' in env.payload)) return;
    const m = stagingNamePattern.exec(env.payload.blob.name);
    if (m === null) return;
    const [, vmId, diskId, epoch, seq] = m;
    if (vmId !== env.vmId || diskId !== env.diskId || Number(epoch) !== env.epoch || Number(seq) !== env.seq) {
      ctx.addIssue({
        code: 'custom',
        path: ['payload', 'blob', 'name'],
        message: `must start with ${env.vmId}/${env.diskId}/${String(env.epoch).padStart(10, '0')}-${String(env.seq).padStart(20, '0')}-`,
      });
    }
  });

/** The JSON envelope: the sealed batch inline (base64) or named in blob container `staging`. */
export type JsonBatchEnvelope = z.infer<typeof batchEnvelopeSchema>;
/**
 * A binary batch message: the body is the sealed batch itself (an AMQP value section holding
 * binary), and the envelope's fields are read from its header. Used when the sealed batch fits
 * the queue's maximum message size (docs/wire-format.md, "Binary batch messages").
 */
export type BinaryBatchEnvelope = Omit<JsonBatchEnvelope, 'payload'> & { payload: { sealed: Buffer } };
export type BatchEnvelope = JsonBatchEnvelope | BinaryBatchEnvelope;
export type StagedPayloadRef = Extract<JsonBatchEnvelope['payload'], { blob: unknown }>['blob'];

/** Content type of a binary batch message (its body is a sealed batch, not JSON). */
export const BATCH_CONTENT_TYPE = 'application/vnd.ferry.batch';
/**
 * Room left beside a binary batch in a message of the queue's maximum size: the AMQP header,
 * properties (message id, session id, content type) and the annotations the broker adds.
 */
export const BINARY_MESSAGE_OVERHEAD_BYTES = 4096;
const MAGIC = Buffer.from('FRYB', 'ascii');

/** Whether a message body is a binary batch (a sealed batch, not a JSON envelope). */
export function isBinaryBatchBody(body: unknown): body is Uint8Array {
  return body instanceof Uint8Array && body.length >= 4 && MAGIC.equals(body.subarray(0, 4));
}

function binaryEnvelope(body: Uint8Array): BinaryBatchEnvelope {
  const sealed = Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  if (sealed.length > MAX_SEALED_BYTES) {
    throw new WireFormatError('BAD_ENVELOPE', 'body', `The binary batch message is ${sealed.length} bytes; a sealed batch is at most ${MAX_SEALED_BYTES}.`);
  }
  let h;
  try {
    h = peekBatchHeader(sealed);
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    throw new WireFormatError('BAD_ENVELOPE', `body.${(err as { field?: string }).field ?? 'header'}`, `The binary batch message's header is invalid: ${why}`, { cause: err });
  }
  return { v: ENVELOPE_VERSION, vmId: h.vmId, diskId: h.diskId, epoch: h.epoch, seq: h.sequence, keyId: h.keyId, capturedAt: h.capturedAt, payload: { sealed } };
}

/** Session id of a disk's batches: one session per disk keeps its batches in order. */
export function batchSessionId(vmId: string, diskId: string): string {
  return `${vmId}/${diskId}`;
}

/** `<vmId>/<diskId>/<epoch 10 digits>-<sequence 20 digits>-<nonce 24 hex>`. */
export function stagingBlobName(vmId: string, diskId: string, epoch: number, sequence: number, nonce: Uint8Array): string {
  const hex = Buffer.from(nonce.buffer, nonce.byteOffset, nonce.byteLength).toString('hex');
  return `${vmId}/${diskId}/${String(epoch).padStart(10, '0')}-${String(sequence).padStart(20, '0')}-${hex}`;
}

/**
 * Parses a message body into an envelope: a binary batch (bytes starting with "FRYB": the
 * fields come from the sealed header), or JSON (text, a Buffer of it, or an already parsed
 * object). Raises WireFormatError `BAD_ENVELOPE` naming the first offending JSON path.
 */
export function parseEnvelope(body: unknown): BatchEnvelope {
  if (isBinaryBatchBody(body)) return binaryEnvelope(body);
  let value = body;
  if (typeof body === 'string' || Buffer.isBuffer(body) || body instanceof Uint8Array) {
    const text = typeof body === 'string' ? body : Buffer.from(body).toString('utf8');
    if (text.length > INLINE_MAX_BASE64 + 4096) {
      throw new WireFormatError('BAD_ENVELOPE', 'body', `The message body is ${text.length} characters; an envelope is at most ${INLINE_MAX_BASE64 + 4096}.`);
    }
    try {
      value = JSON.parse(text);
    } catch (err) {
      throw new WireFormatError('BAD_ENVELOPE', 'body', `The message body is not JSON: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
  }
  const result = batchEnvelopeSchema.safeParse(value);
  if (!result.success) {
    let issue = result.error.issues[0];
    const segments = issue === undefined ? [] : issue.path.map(String);
    // The payload is a union: name the fault inside the form the body attempted (the branch that
    // does not find unknown keys, then the one with the fewest issues) rather than "Invalid input".
    const payload = (value as { payload?: unknown } | null)?.payload;
    if (issue?.code === 'invalid_union' && segments.join('.') === 'payload' && typeof payload === 'object' && payload !== null && !('inline' in payload) && !('blob' in payload)) {
      throw new WireFormatError('BAD_ENVELOPE', 'payload', `The message body is not a batch envelope v${ENVELOPE_VERSION}: payload must hold "inline" (the sealed batch in base64) or "blob" (a staging blob reference).`);
    }
    while (issue?.code === 'invalid_union') {
      const foreign = (b: readonly { code: string; path: readonly PropertyKey[] }[]): number => (b.some((i) => i.code === 'unrecognized_keys' && i.path.length === 0) ? 1 : 0);
      const branch = [...issue.errors].sort((a, b) => foreign(a) - foreign(b) || a.length - b.length)[0]?.[0];
      if (branch === undefined) break;
      issue = branch;
      segments.push(...branch.path.map(String));
    }
    // An unknown field is reported at its parent; name the field itself.
    if (issue?.code === 'unrecognized_keys' && issue.keys[0] !== undefined) segments.push(issue.keys[0]);
    const path = segments.length === 0 ? 'body' : segments.join('.');
    throw new WireFormatError('BAD_ENVELOPE', path, `The message body is not a batch envelope v${ENVELOPE_VERSION}: ${path}: ${issue?.message ?? 'invalid'}.`);
  }
  return result.data;
}
