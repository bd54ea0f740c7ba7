/**
 * The Service Bus message that announces one sealed batch (docs/wire-format.md, "The Service
 * Bus envelope"): a small JSON body, versioned, with the sealed batch inline (base64) or in
 * blob container `staging`. Also the names derived from a batch: the session id of a disk
 * and the staging blob name.
 */
import { z } from 'zod';
import { ID_PATTERN } from './ids';
import { MAX_CAPTURED_AT, MIN_SEALED_BYTES, PREFIX_BYTES, MAX_PAYLOAD_BYTES, TAG_BYTES } from './wire-format';
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

export type BatchEnvelope = z.infer<typeof batchEnvelopeSchema>;
export type StagedPayloadRef = Extract<BatchEnvelope['payload'], { blob: unknown }>['blob'];

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
 * Parses a message body (JSON text, a Buffer of it, or an already parsed object) into an
 * envelope; raises WireFormatError `BAD_ENVELOPE` naming the first offending JSON path.
 */
export function parseEnvelope(body: unknown): BatchEnvelope {
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
