/**
 * Sealing and opening batches: the record stream, compressed, with its SHA-256, encrypted
 * with AES-256-GCM under the VM's data key, the 208-byte prefix as additional authenticated
 * data (docs/wire-format.md). The appliance calls sealBatch; the apply function calls
 * peekBatchHeader (to pick the key), then openBatch.
 */
import { createCipheriv, createDecipheriv, createHash } from 'node:crypto';
import {
  checkBatch,
  checkExpectation,
  CODEC_IDS,
  decodeRecordStream,
  DIGEST_BYTES,
  encodePrefix,
  encodeRecordStream,
  KEY_BYTES,
  MAX_PAYLOAD_BYTES,
  NONCE_BYTES,
  NONCE_OFFSET,
  peekBatchHeader,
  PREFIX_BYTES,
  TAG_BYTES,
  type Batch,
  type BatchExpectation,
  type CodecName,
  type DecodedBatch,
} from '../domain/wire-format';
import { WireFormatError } from '../domain/wire-format-error';
import { compress, decompress, defaultCodec } from './compression';

/** Returns `size` random bytes; `crypto.randomBytes` in production, seeded in tests. */
export type RandomBytes = (size: number) => Uint8Array;

/** Finds the data key a VM's batch names; `undefined` when there is none. */
export type KeyLookup = (vmId: string, keyId: number) => Uint8Array | undefined;

export interface SealOptions {
  /** Default: zstd when zstd-napi loaded, else brotli. */
  codec?: CodecName;
}

/**
 * Reused buffers. Everything in them is consumed before the call returns (sealBatch and
 * openBatch are synchronous), so one buffer serves every call: a fresh 4 MiB buffer per batch
 * costs page faults and GC (shared/notes/performance-facts.md). They keep the size of the
 * largest batch seen, at most 65 MiB each.
 */
const scratchBuffers = { stream: Buffer.alloc(0), plain: Buffer.alloc(0) };
function scratch(which: keyof typeof scratchBuffers, size: number): Buffer {
  const have = scratchBuffers[which];
  if (have.length >= size) return have;
  const grown = Buffer.allocUnsafe(Math.max(size, Math.min(2 * have.length, MAX_PAYLOAD_BYTES)));
  scratchBuffers[which] = grown;
  return grown;
}

/**
 * node:crypto has no "update into" API; feeding 256 KiB at a time keeps each output buffer
 * small enough for the allocator to recycle, then copies it into `out` (about 1.5x faster
 * than one 4 MiB update, measured here).
 */
const CHUNK_BYTES = 256 * 1024;
function cipherInto(cipher: { update(data: Uint8Array): Buffer }, src: Buffer, out: Buffer, at: number): number {
  let pos = at;
  for (let i = 0; i < src.length; i += CHUNK_BYTES) {
    pos += cipher.update(src.subarray(i, Math.min(src.length, i + CHUNK_BYTES))).copy(out, pos);
  }
  return pos;
}

function checkKey(key: unknown, vmId: string, keyId: number): Uint8Array {
  if (!(key instanceof Uint8Array) || key.length !== KEY_BYTES) {
    const got = key instanceof Uint8Array ? `${key.length} bytes` : typeof key;
    throw new WireFormatError('BAD_KEY', 'key', `The data key for VM '${vmId}' key ${keyId} must be 32 bytes; got ${got}.`);
  }
  return key;
}

/** Seals one batch; raises WireFormatError for a batch that breaks the format's rules. */
export function sealBatch(batch: Batch, key: Uint8Array, keyId: number, randomBytes: RandomBytes, options: SealOptions = {}): Buffer {
  const fields = checkBatch(batch);
  checkKey(key, fields.vmId, keyId);
  const codec = options.codec ?? defaultCodec();
  if (!Object.prototype.hasOwnProperty.call(CODEC_IDS, codec)) {
    throw new WireFormatError('BAD_FIELD', 'codec', `codec ${JSON.stringify(codec)} is not one of none, zstd, brotli.`);
  }
  const stream = encodeRecordStream(batch.records, fields.diskSizeBytes, (size) => scratch('stream', size));
  const digest = createHash('sha256').update(stream).digest();
  const compressed = compress(codec, stream);
  const nonce = randomBytes(NONCE_BYTES);
  const prefix = encodePrefix(batch, {
    codec,
    keyId,
    nonce,
    recordCount: batch.records.length,
    recordStreamBytes: stream.length,
    payloadBytes: DIGEST_BYTES + compressed.length,
  });

  const cipher = createCipheriv('aes-256-gcm', key, prefix.subarray(NONCE_OFFSET, NONCE_OFFSET + NONCE_BYTES), { authTagLength: TAG_BYTES });
  cipher.setAAD(prefix);
  const out = Buffer.allocUnsafe(PREFIX_BYTES + DIGEST_BYTES + compressed.length + TAG_BYTES);
  prefix.copy(out, 0);
  let pos = PREFIX_BYTES;
  pos += cipher.update(digest).copy(out, pos);
  pos = cipherInto(cipher, compressed, out, pos);
  pos += cipher.final().copy(out, pos);
  cipher.getAuthTag().copy(out, pos);
  return out;
}

/**
 * Opens a sealed batch: checks the header, the caller's expectations, authenticates and
 * decrypts, decompresses within the declared size, checks the digest and the records
 * (docs/wire-format.md, "What the decoder checks"). Raises only WireFormatError.
 */
export function openBatch(bytes: Uint8Array, keyLookup: KeyLookup, expect: BatchExpectation = {}): DecodedBatch {
  const header = peekBatchHeader(bytes);
  checkExpectation(header, expect);
  const b = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);

  let found: Uint8Array | undefined;
  try {
    found = keyLookup(header.vmId, header.keyId);
  } catch (err) {
    throw new WireFormatError('BAD_KEY', 'keyId', `Looking up key ${header.keyId} of VM '${header.vmId}' failed: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  if (found === undefined) {
    throw new WireFormatError('UNKNOWN_KEY', 'keyId', `No data key ${header.keyId} is known for VM '${header.vmId}'. Was replication re-enabled with a new key?`);
  }
  const key = checkKey(found, header.vmId, header.keyId);

  const ciphertext = b.subarray(PREFIX_BYTES, PREFIX_BYTES + header.payloadBytes);
  const tag = b.subarray(PREFIX_BYTES + header.payloadBytes, header.sealedBytes);
  let plain: Buffer;
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, header.nonce, { authTagLength: TAG_BYTES });
    decipher.setAAD(b.subarray(0, PREFIX_BYTES));
    decipher.setAuthTag(tag);
    // With codec none the plaintext is the record stream the result refers to: it needs a
    // buffer of its own. Otherwise it is decompressed at once and a reused buffer will do.
    plain = (header.codec === 'none' ? Buffer.allocUnsafe(header.payloadBytes) : scratch('plain', header.payloadBytes)).subarray(0, header.payloadBytes);
    cipherInto(decipher, ciphertext, plain, 0);
    decipher.final();
  } catch (err) {
    throw new WireFormatError(
      'AUTH_FAILED',
      'ciphertext',
      `Batch ${header.sequence} of VM '${header.vmId}' disk '${header.diskId}' fails authentication with key ${header.keyId}: the key is wrong or the bytes were altered.`,
      { cause: err },
    );
  }

  const stream = decompress(header.codec, plain.subarray(DIGEST_BYTES), header.recordStreamBytes);
  const digest = createHash('sha256').update(stream).digest();
  if (!digest.equals(plain.subarray(0, DIGEST_BYTES))) {
    throw new WireFormatError('DIGEST_MISMATCH', 'digest', `The SHA-256 of the decompressed record stream of batch ${header.sequence} does not match the sealed digest: a codec fault.`);
  }
  return { header, records: decodeRecordStream(stream, header) };
}
