/**
 * Tools for hostile-input tests of the wire format and the apply path: the sealed-batch header
 * fields by offset (docs/wire-format.md, "Sealed batch layout"), byte mutations as fast-check
 * arbitraries, a sealer that authenticates whatever header and record stream it is given (so
 * the checks after authentication can be reached), and an assertion that a call fails with a
 * WireFormatError and nothing else.
 */
import { createCipheriv, createHash } from 'node:crypto';
import fc from 'fast-check';
import { compress } from '../../shared/codec/compression';
import { PREFIX_BYTES, type CodecName } from '../../shared/domain/wire-format';
import { isWireFormatError, type WireFormatError } from '../../shared/domain/wire-format-error';

export interface HeaderField {
  name: string;
  offset: number;
  size: number;
  /** Error fields a corrupt value of this field may be reported under (cross-field rules). */
  reportedAs: readonly string[];
}

/** Every field of the 208-byte prefix, with the fields the decoder may blame for it. */
export const HEADER_FIELDS: readonly HeaderField[] = [
  { name: 'magic', offset: 0, size: 4, reportedAs: ['magic'] },
  { name: 'formatVersion', offset: 4, size: 1, reportedAs: ['formatVersion'] },
  { name: 'codec', offset: 5, size: 1, reportedAs: ['codec', 'payloadBytes'] },
  { name: 'consistency', offset: 6, size: 1, reportedAs: ['consistency', 'tagId'] },
  { name: 'flags', offset: 7, size: 1, reportedAs: ['flags', 'initialCoveredBytes'] },
  { name: 'keyId', offset: 8, size: 4, reportedAs: ['keyId'] },
  { name: 'epoch', offset: 12, size: 4, reportedAs: ['epoch'] },
  { name: 'sequence', offset: 16, size: 8, reportedAs: ['sequence'] },
  { name: 'capturedAt', offset: 24, size: 8, reportedAs: ['capturedAt'] },
  { name: 'diskSizeBytes', offset: 32, size: 8, reportedAs: ['diskSizeBytes', 'initialCoveredBytes'] },
  { name: 'initialCoveredBytes', offset: 40, size: 8, reportedAs: ['initialCoveredBytes'] },
  { name: 'tagId', offset: 48, size: 8, reportedAs: ['tagId'] },
  { name: 'recordCount', offset: 56, size: 4, reportedAs: ['recordCount'] },
  { name: 'recordStreamBytes', offset: 60, size: 4, reportedAs: ['recordStreamBytes', 'recordCount', 'payloadBytes'] },
  // a changed payload length moves the end of the batch: too short or too long for the input
  { name: 'payloadBytes', offset: 64, size: 4, reportedAs: ['payloadBytes', 'ciphertext', 'bytes'] },
  { name: 'vmIdLength', offset: 68, size: 1, reportedAs: ['vmIdLength', 'vmId'] },
  { name: 'vmId', offset: 69, size: 63, reportedAs: ['vmId'] },
  { name: 'diskIdLength', offset: 132, size: 1, reportedAs: ['diskIdLength', 'diskId'] },
  { name: 'diskId', offset: 133, size: 63, reportedAs: ['diskId'] },
  { name: 'nonce', offset: 196, size: 12, reportedAs: [] },
];

/** Calls `fn`, which must throw a WireFormatError; returns it. Any other outcome fails with a description. */
export function wireFormatErrorOf(fn: () => unknown): WireFormatError {
  let result: unknown;
  try {
    result = fn();
  } catch (err) {
    if (isWireFormatError(err)) return err;
    throw new Error(`expected a WireFormatError, got ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`, { cause: err });
  }
  throw new Error(`expected a WireFormatError, but the call returned ${typeof result}`);
}

/** Deterministic bytes (an LCG): nonces and data that repeat from run to run. */
export function seededBytes(seed: number): (size: number) => Buffer {
  let n = seed >>> 0;
  return (size) => {
    const out = Buffer.alloc(size);
    for (let i = 0; i < size; i++) {
      n = (Math.imul(n, 1103515245) + 12345) >>> 0;
      out[i] = n >>> 24;
    }
    return out;
  };
}

/** One edit of a byte string. Positions are taken modulo the length at the time of the edit. */
export type Mutation =
  | { op: 'xor'; at: number; mask: number }
  | { op: 'set'; at: number; value: number }
  | { op: 'insert'; at: number; bytes: Uint8Array }
  | { op: 'delete'; at: number; count: number }
  | { op: 'truncate'; at: number }
  | { op: 'append'; bytes: Uint8Array }
  | { op: 'duplicate'; at: number; count: number }
  | { op: 'swap'; at: number; other: number; count: number };

export const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  { arbitrary: fc.record({ op: fc.constant('xor' as const), at: fc.nat(), mask: fc.integer({ min: 1, max: 255 }) }), weight: 4 },
  { arbitrary: fc.record({ op: fc.constant('set' as const), at: fc.nat(), value: fc.constantFrom(0, 1, 0x7f, 0x80, 0xff) }), weight: 2 },
  { arbitrary: fc.record({ op: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('delete' as const), at: fc.nat(), count: fc.integer({ min: 1, max: 64 }) }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('truncate' as const), at: fc.nat() }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('append' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 32 }) }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('duplicate' as const), at: fc.nat(), count: fc.integer({ min: 1, max: 64 }) }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('swap' as const), at: fc.nat(), other: fc.nat(), count: fc.integer({ min: 1, max: 32 }) }), weight: 1 },
);

export function mutate(input: Uint8Array, mutations: readonly Mutation[]): Buffer {
  let b = Buffer.from(input);
  for (const m of mutations) {
    const at = b.length === 0 ? 0 : ('at' in m ? m.at : 0) % b.length;
    switch (m.op) {
      case 'xor':
        if (b.length > 0) b[at] = b[at]! ^ m.mask;
        break;
      case 'set':
        if (b.length > 0) b[at] = m.value;
        break;
      case 'insert':
        b = Buffer.concat([b.subarray(0, at), m.bytes, b.subarray(at)]);
        break;
      case 'delete':
        b = Buffer.concat([b.subarray(0, at), b.subarray(at + m.count)]);
        break;
      case 'truncate':
        b = b.subarray(0, at);
        break;
      case 'append':
        b = Buffer.concat([b, m.bytes]);
        break;
      case 'duplicate':
        b = Buffer.concat([b.subarray(0, at + m.count), b.subarray(at)]);
        break;
      case 'swap': {
        const other = b.length === 0 ? 0 : m.other % b.length;
        const n = Math.min(m.count, b.length - at, b.length - other);
        const x = Buffer.from(b.subarray(at, at + n));
        b.copy(b, at, other, other + n);
        x.copy(b, other);
        break;
      }
    }
  }
  return b;
}

/** Values that sit on the rules' edges, for one field of `size` bytes (little-endian). */
export function fieldValueArb(size: number): fc.Arbitrary<Buffer> {
  const int = (v: bigint): Buffer => {
    const out = Buffer.alloc(size);
    for (let i = 0; i < size && i < 8; i++) out[i] = Number((v >> BigInt(8 * i)) & 0xffn);
    return out;
  };
  const edges = [0n, 1n, 2n, 3n, 511n, 512n, 513n, 1024n, 0x7fn, 0x80n, 0xffn, 0xffffn, 0xffff_ffffn, 131_072n, 131_073n, 64n * 1024n * 1024n + 1n, (1n << 53n) - 1n, 1n << 53n, (1n << 64n) - 1n];
  return fc.oneof(
    fc.constantFrom(...edges).map(int),
    fc.bigInt({ min: 0n, max: size >= 8 ? (1n << 64n) - 1n : (1n << BigInt(8 * size)) - 1n }).map(int),
    fc.uint8Array({ minLength: size, maxLength: size }).map((a) => Buffer.from(a)),
  );
}

/**
 * Authenticates any prefix and record stream with `key`: the prefix's own fields are not
 * checked here, so the decoder's checks after authentication (decompression, digest, records)
 * can be reached with content no correct encoder produces. `prefix` is patched with the
 * payload length unless `keepPayloadBytes`.
 */
export function sealAny(
  prefix: Buffer,
  stream: Buffer,
  key: Uint8Array,
  options: { codec?: CodecName; digest?: Buffer; compressed?: Buffer; keepPayloadBytes?: boolean } = {},
): Buffer {
  const codec = options.codec ?? 'none';
  const compressed = options.compressed ?? Buffer.from(compress(codec, stream));
  const digest = options.digest ?? createHash('sha256').update(stream).digest();
  const p = Buffer.from(prefix.subarray(0, PREFIX_BYTES));
  p[5] = codec === 'none' ? 0 : codec === 'zstd' ? 1 : 2;
  p.writeUInt32LE(stream.length, 60);
  if (!options.keepPayloadBytes) p.writeUInt32LE(32 + compressed.length, 64);
  const cipher = createCipheriv('aes-256-gcm', key, p.subarray(196, 208), { authTagLength: 16 });
  cipher.setAAD(p);
  const ct = Buffer.concat([cipher.update(digest), cipher.update(compressed), cipher.final()]);
  return Buffer.concat([p, ct, cipher.getAuthTag()]);
}

/** One record as the record stream lays it out (type 1 data, 2 zero). */
export function rawRecord(type: number, offset: bigint | number, length: bigint | number, data?: Uint8Array): Buffer {
  const h = Buffer.alloc(24);
  h.writeUInt8(type, 0);
  h.writeBigUInt64LE(BigInt(offset), 8);
  h.writeBigUInt64LE(BigInt(length), 16);
  return data ? Buffer.concat([h, data]) : h;
}
