/**
 * The one error of the wire format (docs/wire-format.md, "Errors"). The decoder raises
 * nothing else on any input; the encoder raises it for input that breaks the same rules.
 * Every code is permanent: the same bytes give the same answer on redelivery.
 */

/**
 * - `TRUNCATED`: the input or the record stream ends before a field it must contain.
 * - `TRAILING_DATA`: bytes follow the end of the batch or of the last record.
 * - `BAD_MAGIC`: the first 4 bytes are not `FRYB`.
 * - `UNSUPPORTED_VERSION`: a format version this code does not know.
 * - `BAD_FIELD`: a field violates its rule; `field` names it.
 * - `SIZE_LIMIT`: a size exceeds its limit (64 MiB record stream, 131072 records...).
 * - `UNEXPECTED_BATCH`: the batch is for another VM, disk, epoch, sequence or disk size than expected.
 * - `UNKNOWN_KEY`: no data key for (vmId, keyId).
 * - `BAD_KEY`: the key lookup failed or returned a key that is not 32 bytes.
 * - `AUTH_FAILED`: AES-GCM authentication failed (wrong key or altered bytes).
 * - `DECOMPRESS_FAILED`: the codec rejected the stream or produced another length.
 * - `DIGEST_MISMATCH`: a SHA-256 (record stream, staged blob) does not match.
 * - `UNALIGNED`: an offset or length is not a multiple of 512.
 * - `RECORD_OUT_OF_BOUNDS`: a record ends beyond the disk.
 * - `OVERLAP`: records are unsorted or overlap.
 * - `BAD_ENVELOPE`: a Service Bus message body is not a valid envelope.
 */
export type WireFormatErrorCode =
  | 'TRUNCATED'
  | 'TRAILING_DATA'
  | 'BAD_MAGIC'
  | 'UNSUPPORTED_VERSION'
  | 'BAD_FIELD'
  | 'SIZE_LIMIT'
  | 'UNEXPECTED_BATCH'
  | 'UNKNOWN_KEY'
  | 'BAD_KEY'
  | 'AUTH_FAILED'
  | 'DECOMPRESS_FAILED'
  | 'DIGEST_MISMATCH'
  | 'UNALIGNED'
  | 'RECORD_OUT_OF_BOUNDS'
  | 'OVERLAP'
  | 'BAD_ENVELOPE';

export class WireFormatError extends Error {
  override readonly name = 'WireFormatError';
  readonly code: WireFormatErrorCode;
  /** The offending field: `sequence`, `records[3].offset`, `payload.blob.sha256`... */
  readonly field: string;
  /** All wire-format errors are permanent; the property is here for ports that ask. */
  readonly permanent = true;

  constructor(code: WireFormatErrorCode, field: string, message: string, options: { cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.field = field;
  }
}

/** Type guard on `name`, not `instanceof`, so it survives duplicated module copies. */
export function isWireFormatError(err: unknown): err is WireFormatError {
  return typeof err === 'object' && err !== null && (err as { name?: unknown }).name === 'WireFormatError';
}
