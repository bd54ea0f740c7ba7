import { createCipheriv, createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { openBatch, sealBatch, type KeyLookup, type RandomBytes } from '../../../shared/codec/batch';
import { compress } from '../../../shared/codec/compression';
import {
  encodePrefix,
  MAX_RECORD_STREAM_BYTES,
  NONCE_BYTES,
  peekBatchHeader,
  PREFIX_BYTES,
  RECORD_HEADER_BYTES,
  type Batch,
  type BatchRecord,
  type CodecName,
} from '../../../shared/domain/wire-format';
import { isWireFormatError, type WireFormatErrorCode } from '../../../shared/domain/wire-format-error';


const KEY = Buffer.alloc(32, 0x11);
const OTHER_KEY = Buffer.alloc(32, 0x22);
const keys: KeyLookup = (vmId, keyId) => (keyId === 1 ? KEY : undefined);

/** Deterministic "random" bytes: a counter-based nonce source for repeatable tests. */
function seededRandom(seed: number): RandomBytes {
  let n = seed;
  return (size) => {
    const out = Buffer.alloc(size);
    for (let i = 0; i < size; i++) {
      n = (Math.imul(n, 1103515245) + 12345) >>> 0;
      out[i] = n >>> 24;
    }
    return out;
  };
}

/** Seeded sector data: zeros, compressible text or pseudo-random bytes. */
function sectorData(sectors: number, mode: number, seed: number): Buffer {
  const buf = Buffer.alloc(sectors * 512);
  if (mode === 1) buf.write('the quick brown fox jumps over the lazy dog '.repeat(Math.ceil(buf.length / 44)).slice(0, buf.length));
  if (mode === 2) seededRandom(seed)(buf.length).forEach((v, i) => (buf[i] = v));
  return buf;
}

function expectWireError(fn: () => unknown, code?: WireFormatErrorCode, field?: string): void {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  if (thrown === undefined) throw new Error(`expected WireFormatError ${code ?? ''} but the call succeeded`);
  if (!isWireFormatError(thrown)) throw new Error(`expected WireFormatError, got ${String(thrown)}`, { cause: thrown });
  if (code !== undefined) expect(thrown.code).toBe(code);
  if (field !== undefined) expect(thrown.field).toBe(field);
}

const idArb = fc.stringMatching(/^[a-z0-9][a-z0-9-]{0,62}$/);
const codecArb = fc.constantFrom<CodecName>('none', 'zstd', 'brotli');

/** Sorted, non-overlapping records, then a disk size that holds them. */
const batchArb: fc.Arbitrary<Batch> = fc
  .record({
    vmId: idArb,
    diskId: idArb,
    epoch: fc.integer({ min: 1, max: 0xffff_ffff }),
    sequence: fc.oneof(fc.integer({ min: 1, max: 1000 }), fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER })),
    capturedAt: fc.integer({ min: 1, max: 8.64e15 }),
    shape: fc.array(
      fc.record({
        gap: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 1 << 20 })),
        sectors: fc.integer({ min: 1, max: 8 }),
        zeroSectors: fc.integer({ min: 1, max: 1 << 24 }),
        kind: fc.constantFrom('data', 'zero'),
        mode: fc.integer({ min: 0, max: 2 }),
        seed: fc.integer(),
      }),
      { maxLength: 6 },
    ),
    slackSectors: fc.integer({ min: 0, max: 1 << 20 }),
    complete: fc.boolean(),
    coveredFraction: fc.double({ min: 0, max: 1, noNaN: true }),
    consistency: fc.option(
      fc.record({ kind: fc.constantFrom('crash-consistent' as const, 'app-consistent' as const), tagId: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }) }),
      { nil: undefined },
    ),
  })
  .map((g) => {
    const records: BatchRecord[] = [];
    let pos = 0;
    for (const s of g.shape) {
      const offset = pos + s.gap * 512;
      if (s.kind === 'data') {
        const data = sectorData(s.sectors, s.mode, s.seed);
        records.push({ kind: 'data', offset, data });
        pos = offset + data.length;
      } else {
        records.push({ kind: 'zero', offset, length: s.zeroSectors * 512 });
        pos = offset + s.zeroSectors * 512;
      }
    }
    const diskSizeBytes = Math.max(512, pos + g.slackSectors * 512);
    const covered = g.complete ? diskSizeBytes : Math.floor((diskSizeBytes / 512) * g.coveredFraction) * 512;
    const batch: Batch = {
      vmId: g.vmId,
      diskId: g.diskId,
      epoch: g.epoch,
      sequence: g.sequence,
      capturedAt: g.capturedAt,
      diskSizeBytes,
      initialReplicationComplete: g.complete,
      initialCoveredBytes: covered,
      records,
    };
    if (g.consistency) batch.consistency = g.consistency;
    return batch;
  });

function sample(seed = 1, codec: CodecName = 'zstd'): { batch: Batch; sealed: Buffer } {
  const batch: Batch = {
    vmId: 'web-01',
    diskId: 'disk0',
    epoch: 2,
    sequence: 42,
    capturedAt: 1_764_147_600_000,
    diskSizeBytes: 64 * 1024 * 1024,
    initialReplicationComplete: true,
    consistency: { kind: 'crash-consistent', tagId: 7 },
    records: [
      { kind: 'data', offset: 0, data: sectorData(2, 1, seed) },
      { kind: 'zero', offset: 4096, length: 1 << 20 },
      { kind: 'data', offset: (1 << 20) + 4096, data: sectorData(1, 2, seed) },
    ],
  };
  return { batch, sealed: sealBatch(batch, KEY, 1, seededRandom(seed), { codec }) };
}

describe('sealBatch / openBatch round trip', () => {
  it('returns every field and record of arbitrary valid batches, with every codec', () => {
    fc.assert(
      fc.property(batchArb, codecArb, fc.integer(), (batch, codec, seed) => {
        const sealed = sealBatch(batch, KEY, 1, seededRandom(seed), { codec });
        const opened = openBatch(sealed, keys, { vmId: batch.vmId, diskId: batch.diskId, epoch: batch.epoch, sequence: batch.sequence });
        const h = opened.header;
        expect(h).toMatchObject({
          formatVersion: 1,
          codec,
          vmId: batch.vmId,
          diskId: batch.diskId,
          epoch: batch.epoch,
          sequence: batch.sequence,
          capturedAt: batch.capturedAt,
          diskSizeBytes: batch.diskSizeBytes,
          initialReplicationComplete: batch.initialReplicationComplete,
          initialCoveredBytes: batch.initialCoveredBytes,
          consistency: batch.consistency,
          keyId: 1,
          recordCount: batch.records.length,
          sealedBytes: sealed.length,
        });
        expect(h.nonce).toEqual(seededRandom(seed)(NONCE_BYTES));
        expect(opened.records).toHaveLength(batch.records.length);
        opened.records.forEach((r, i) => {
          const want = batch.records[i]!;
          expect(r.kind).toBe(want.kind);
          expect(r.offset).toBe(want.offset);
          if (r.kind === 'data' && want.kind === 'data') expect(Buffer.compare(r.data, want.data)).toBe(0);
          if (r.kind === 'zero' && want.kind === 'zero') expect(r.length).toBe(want.length);
        });
        expect(peekBatchHeader(sealed)).toEqual(h);
      }),
      { numRuns: 2000 },
    );
  });

  it('seals an empty marker batch (tag only) with each codec', () => {
    for (const codec of ['none', 'zstd', 'brotli'] as const) {
      const batch: Batch = { vmId: 'v', diskId: 'd', epoch: 1, sequence: 9, capturedAt: 5, diskSizeBytes: 512, records: [], consistency: { kind: 'app-consistent', tagId: 3 } };
      const opened = openBatch(sealBatch(batch, KEY, 1, seededRandom(1), { codec }), keys);
      expect(opened.records).toEqual([]);
      expect(opened.header.consistency).toEqual({ kind: 'app-consistent', tagId: 3 });
      expect(opened.header.initialReplicationComplete).toBe(false);
      expect(opened.header.initialCoveredBytes).toBe(0);
    }
  });

  it('defaults initialCoveredBytes to the disk size when the initial copy is complete', () => {
    const opened = openBatch(sealBatch({ vmId: 'v', diskId: 'd', epoch: 1, sequence: 1, capturedAt: 5, diskSizeBytes: 4096, initialReplicationComplete: true, records: [] }, KEY, 1, seededRandom(1)), keys);
    expect(opened.header.initialCoveredBytes).toBe(4096);
  });

  it('uses a fresh nonce per seal, so sealing the same batch twice gives different bytes', () => {
    const { batch } = sample();
    const rng = seededRandom(3);
    expect(sealBatch(batch, KEY, 1, rng).equals(sealBatch(batch, KEY, 1, rng))).toBe(false);
  });

  it('round-trips a 4 MiB data record of random bytes and one near the 64 MiB stream limit', () => {
    const data = sectorData(8192, 2, 5);
    const batch: Batch = { vmId: 'v', diskId: 'd', epoch: 1, sequence: 1, capturedAt: 1, diskSizeBytes: 1 << 30, records: [{ kind: 'data', offset: 1 << 22, data }] };
    const opened = openBatch(sealBatch(batch, KEY, 1, seededRandom(1)), keys);
    const first = opened.records[0];
    expect(first?.kind === 'data' && Buffer.compare(first.data, data)).toBe(0);
    const big = Buffer.alloc(MAX_RECORD_STREAM_BYTES - 512);
    const bigBatch: Batch = { ...batch, records: [{ kind: 'data', offset: 0, data: big }] };
    expect(openBatch(sealBatch(bigBatch, KEY, 1, seededRandom(1)), keys).header.recordStreamBytes).toBe(MAX_RECORD_STREAM_BYTES - 512 + RECORD_HEADER_BYTES);
    expectWireError(() => sealBatch({ ...batch, records: [{ kind: 'data', offset: 0, data: Buffer.alloc(MAX_RECORD_STREAM_BYTES) }] }, KEY, 1, seededRandom(1)), 'SIZE_LIMIT', 'recordStreamBytes');
  });
});

describe('openBatch on damaged input', () => {
  it('rejects every single-byte change of a sealed batch with a WireFormatError (every value in the prefix)', () => {
    const { sealed } = sample(1, 'zstd');
    const everyValue = Array.from({ length: 255 }, (_, i) => i + 1);
    for (let i = 0; i < sealed.length; i++) {
      // Past the prefix every change is a GCM failure; a few values per byte show it.
      for (const delta of i < PREFIX_BYTES ? everyValue : [0x01, 0x10, 0x80, 0xff]) {
        const bad = Buffer.from(sealed);
        bad[i] = bad[i]! ^ delta;
        expectWireError(() => openBatch(bad, keys));
      }
    }
  });

  it('rejects single-byte changes at every offset with codecs none and brotli', () => {
    for (const codec of ['none', 'brotli'] as const) {
      const { sealed } = sample(1, codec);
      for (let i = 0; i < sealed.length; i++) {
        for (const delta of [0x01, 0x80, 0xff]) {
          const bad = Buffer.from(sealed);
          bad[i] = bad[i]! ^ delta;
          expectWireError(() => openBatch(bad, keys));
        }
      }
    }
  });

  it('rejects arbitrary single-byte corruptions of arbitrary batches', () => {
    fc.assert(
      fc.property(batchArb, codecArb, fc.nat(), fc.integer({ min: 1, max: 255 }), (batch, codec, at, delta) => {
        const sealed = sealBatch(batch, KEY, 1, seededRandom(at), { codec });
        const bad = Buffer.from(sealed);
        const i = at % bad.length;
        bad[i] = bad[i]! ^ delta;
        expectWireError(() => openBatch(bad, keys));
      }),
      { numRuns: 2000 },
    );
  });

  it('rejects every truncation of a sealed batch as TRUNCATED', () => {
    const { sealed } = sample();
    for (let len = 0; len < sealed.length; len++) {
      expectWireError(() => openBatch(sealed.subarray(0, len), keys), 'TRUNCATED');
      expectWireError(() => peekBatchHeader(sealed.subarray(0, len)), 'TRUNCATED');
    }
  });

  it('reads a plain Uint8Array as well as a Buffer', () => {
    const { sealed } = sample();
    const copy = new Uint8Array(sealed.length + 8).subarray(8);
    copy.set(sealed);
    expect(openBatch(copy, keys).header.sequence).toBe(42);
  });

  it('rejects input that is not bytes', () => {
    expectWireError(() => openBatch('FRYB' as unknown as Uint8Array, keys), 'BAD_FIELD', 'bytes');
  });

  it('rejects trailing bytes as TRAILING_DATA', () => {
    const { sealed } = sample();
    expectWireError(() => openBatch(Buffer.concat([sealed, Buffer.from([0])]), keys), 'TRAILING_DATA', 'bytes');
  });

  it('rejects random bytes, with or without a valid magic and version', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), fc.boolean(), (bytes, withMagic) => {
        const input = withMagic ? Buffer.concat([Buffer.from('FRYB\x01'), bytes]) : Buffer.from(bytes);
        expectWireError(() => openBatch(input, keys));
      }),
      { numRuns: 5000 },
    );
  });

  it('rejects a valid header followed by random ciphertext as AUTH_FAILED', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 32 + 16, maxLength: 400 }), (tail) => {
        const prefix = encodePrefix(
          { vmId: 'v', diskId: 'd', epoch: 1, sequence: 1, capturedAt: 1, diskSizeBytes: 512, records: [] },
          { codec: 'zstd', keyId: 1, nonce: Buffer.alloc(12), recordCount: 0, recordStreamBytes: 0, payloadBytes: tail.length - 16 },
        );
        expectWireError(() => openBatch(Buffer.concat([prefix, tail]), keys), 'AUTH_FAILED', 'ciphertext');
      }),
      { numRuns: 1000 },
    );
  });

  it('names the header field that is wrong', () => {
    const { sealed } = sample();
    const cases: Array<[number, number, WireFormatErrorCode, string]> = [
      [0, 0x00, 'BAD_MAGIC', 'magic'],
      [4, 0x02, 'UNSUPPORTED_VERSION', 'formatVersion'],
      [5, 0x07, 'BAD_FIELD', 'codec'],
      [6, 0x03, 'BAD_FIELD', 'consistency'],
      [7, 0x02, 'BAD_FIELD', 'flags'],
      [8, 0x00, 'BAD_FIELD', 'keyId'],
      [12, 0x00, 'BAD_FIELD', 'epoch'],
      [23, 0x80, 'BAD_FIELD', 'sequence'],
      [63, 0x10, 'SIZE_LIMIT', 'recordStreamBytes'],
      [68, 0x00, 'BAD_FIELD', 'vmIdLength'],
      [69, 0x41, 'BAD_FIELD', 'vmId'],
      [75, 0x61, 'BAD_FIELD', 'vmId'],
      [133, 0x2d, 'BAD_FIELD', 'diskId'],
    ];
    for (const [offset, value, code, field] of cases) {
      const bad = Buffer.from(sealed);
      bad[offset] = value;
      expectWireError(() => peekBatchHeader(bad), code, field);
    }
  });
});

describe('openBatch with the wrong key or expectations', () => {
  const { batch, sealed } = sample();

  it('fails authentication with another key', () => {
    expectWireError(() => openBatch(sealed, () => OTHER_KEY), 'AUTH_FAILED', 'ciphertext');
  });

  it('fails with UNKNOWN_KEY when the lookup has no key', () => {
    expectWireError(() => openBatch(sealed, () => undefined), 'UNKNOWN_KEY', 'keyId');
  });

  it('fails with BAD_KEY when the lookup throws or returns a short key', () => {
    expectWireError(() => openBatch(sealed, () => { throw new Error('vault down'); }), 'BAD_KEY', 'keyId');
    expectWireError(() => openBatch(sealed, () => Buffer.alloc(16)), 'BAD_KEY', 'key');
  });

  it('fails with UNEXPECTED_BATCH naming the field for another VM, disk, epoch, sequence or disk size', () => {
    expectWireError(() => openBatch(sealed, keys, { vmId: 'other' }), 'UNEXPECTED_BATCH', 'vmId');
    expectWireError(() => openBatch(sealed, keys, { diskId: 'disk1' }), 'UNEXPECTED_BATCH', 'diskId');
    expectWireError(() => openBatch(sealed, keys, { epoch: 1 }), 'UNEXPECTED_BATCH', 'epoch');
    expectWireError(() => openBatch(sealed, keys, { sequence: batch.sequence + 1 }), 'UNEXPECTED_BATCH', 'sequence');
    expectWireError(() => openBatch(sealed, keys, { diskSizeBytes: batch.diskSizeBytes - 512 }), 'UNEXPECTED_BATCH', 'diskSizeBytes');
  });

  it('fails authentication when the header is rewritten to move the batch to another disk, VM or position', () => {
    const moved = Buffer.from(sealed);
    moved.write('disk1', 133, 'ascii');
    expectWireError(() => openBatch(moved, keys), 'AUTH_FAILED');
    const renumbered = Buffer.from(sealed);
    renumbered.writeBigUInt64LE(43n, 16);
    expectWireError(() => openBatch(renumbered, keys), 'AUTH_FAILED');
    const otherVm = Buffer.from(sealed);
    otherVm.write('web-02', 69, 'ascii');
    expectWireError(() => openBatch(otherVm, keys), 'AUTH_FAILED');
  });
});

/**
 * Seals bytes the encoder would refuse, so the decoder's checks after authentication (steps
 * 7-9 of docs/wire-format.md) can be reached: they guard against encoder and codec bugs.
 */
function sealRaw(opts: { stream: Buffer; recordCount: number; codec?: CodecName; digest?: Buffer; compressed?: Buffer; diskSizeBytes?: number }): Buffer {
  const codec = opts.codec ?? 'none';
  const compressed = opts.compressed ?? Buffer.from(compress(codec, opts.stream));
  const digest = opts.digest ?? createHash('sha256').update(opts.stream).digest();
  const nonce = Buffer.alloc(12, 9);
  const prefix = encodePrefix(
    { vmId: 'v', diskId: 'd', epoch: 1, sequence: 1, capturedAt: 1, diskSizeBytes: opts.diskSizeBytes ?? 1 << 20, records: [] },
    { codec, keyId: 1, nonce, recordCount: opts.recordCount, recordStreamBytes: opts.stream.length, payloadBytes: 32 + compressed.length },
  );
  const cipher = createCipheriv('aes-256-gcm', KEY, nonce);
  cipher.setAAD(prefix);
  const ct = Buffer.concat([cipher.update(digest), cipher.update(compressed), cipher.final()]);
  return Buffer.concat([prefix, ct, cipher.getAuthTag()]);
}

function rec(type: number, offset: number, length: number, data?: Buffer): Buffer {
  const h = Buffer.alloc(24);
  h.writeUInt8(type, 0);
  h.writeBigUInt64LE(BigInt(offset), 8);
  h.writeBigUInt64LE(BigInt(length), 16);
  return data ? Buffer.concat([h, data]) : h;
}

describe('openBatch checks after authentication', () => {
  it('accepts a hand-built stream (the helper is sound)', () => {
    const opened = openBatch(sealRaw({ stream: rec(2, 512, 1024), recordCount: 1 }), keys);
    expect(opened.records).toEqual([{ kind: 'zero', offset: 512, length: 1024 }]);
  });

  it('DIGEST_MISMATCH when the sealed digest does not match the decompressed stream', () => {
    expectWireError(() => openBatch(sealRaw({ stream: rec(2, 0, 512), recordCount: 1, digest: Buffer.alloc(32) }), keys), 'DIGEST_MISMATCH', 'digest');
  });

  it('DECOMPRESS_FAILED for a corrupt zstd or brotli stream, or one of another length', () => {
    const stream = rec(2, 0, 512);
    expectWireError(() => openBatch(sealRaw({ stream, recordCount: 1, codec: 'zstd', compressed: Buffer.from('not zstd') }), keys), 'DECOMPRESS_FAILED');
    expectWireError(() => openBatch(sealRaw({ stream, recordCount: 1, codec: 'brotli', compressed: Buffer.from([0xff, 0xff, 0xff]) }), keys), 'DECOMPRESS_FAILED');
    const longer = Buffer.from(compress('zstd', Buffer.concat([stream, stream])));
    expectWireError(() => openBatch(sealRaw({ stream, recordCount: 1, codec: 'zstd', compressed: longer }), keys), 'DECOMPRESS_FAILED');
    const shorter = Buffer.from(compress('brotli', stream.subarray(0, 10)));
    expectWireError(() => openBatch(sealRaw({ stream, recordCount: 1, codec: 'brotli', compressed: shorter }), keys), 'DECOMPRESS_FAILED');
  });

  it('bounds a zstd bomb by the declared size', () => {
    const bomb = Buffer.from(compress('zstd', Buffer.alloc(32 << 20)));
    expect(bomb.length).toBeLessThan(4096);
    expectWireError(() => openBatch(sealRaw({ stream: rec(2, 0, 512), recordCount: 1, codec: 'zstd', compressed: bomb }), keys), 'DECOMPRESS_FAILED');
  });

  const streamCases: Array<[string, Buffer, number, WireFormatErrorCode, string]> = [
    ['unknown record type', rec(3, 0, 512), 1, 'BAD_FIELD', 'records[0].type'],
    ['non-zero reserved bytes', (() => { const r = rec(2, 0, 512); r[3] = 1; return r; })(), 1, 'BAD_FIELD', 'records[0].reserved'],
    ['unaligned offset', rec(2, 100, 512), 1, 'UNALIGNED', 'records[0].offset'],
    ['unaligned length', rec(2, 0, 500), 1, 'UNALIGNED', 'records[0].length'],
    ['empty record', rec(2, 0, 0), 1, 'BAD_FIELD', 'records[0].length'],
    ['record past the disk', rec(2, (1 << 20) - 512, 1024), 1, 'RECORD_OUT_OF_BOUNDS', 'records[0]'],
    ['huge offset', rec(2, Number.MAX_SAFE_INTEGER - 511, 512), 1, 'RECORD_OUT_OF_BOUNDS', 'records[0]'],
    ['overlap', Buffer.concat([rec(2, 0, 1024), rec(2, 512, 512)]), 2, 'OVERLAP', 'records[1].offset'],
    ['unsorted', Buffer.concat([rec(2, 4096, 512), rec(2, 0, 512)]), 2, 'OVERLAP', 'records[1].offset'],
    ['data cut short', Buffer.concat([rec(1, 0, 1024, Buffer.alloc(600))]), 1, 'TRUNCATED', 'records[0].data'],
    ['header cut short', Buffer.concat([rec(1, 0, 512, Buffer.alloc(512)), Buffer.alloc(10)]), 2, 'TRUNCATED', 'records[1]'],
    ['trailing bytes', Buffer.concat([rec(2, 0, 512), Buffer.alloc(30)]), 1, 'TRAILING_DATA', 'records'],
  ];
  for (const [name, stream, count, code, field] of streamCases) {
    it(`${code} for ${name}`, () => {
      expectWireError(() => openBatch(sealRaw({ stream, recordCount: count }), keys), code, field);
    });
  }

  it('u64 values above 2^53-1 in a record are BAD_FIELD', () => {
    const r = rec(2, 0, 512);
    r.writeBigUInt64LE(1n << 60n, 8);
    expectWireError(() => openBatch(sealRaw({ stream: r, recordCount: 1 }), keys), 'BAD_FIELD', 'records[0].offset');
  });
});

describe('sealBatch refuses what the decoder would refuse', () => {
  const base: Batch = { vmId: 'v', diskId: 'd', epoch: 1, sequence: 1, capturedAt: 1, diskSizeBytes: 1 << 20, records: [] };
  const rng = seededRandom(1);
  const cases: Array<[string, Partial<Batch>, WireFormatErrorCode, string]> = [
    ['a bad vmId', { vmId: 'Web' }, 'BAD_FIELD', 'vmId'],
    ['a long diskId', { diskId: 'd'.repeat(64) }, 'BAD_FIELD', 'diskId'],
    ['sequence 0', { sequence: 0 }, 'BAD_FIELD', 'sequence'],
    ['sequence beyond 2^53', { sequence: 2 ** 53 }, 'BAD_FIELD', 'sequence'],
    ['epoch 0', { epoch: 0 }, 'BAD_FIELD', 'epoch'],
    ['fractional capture time', { capturedAt: 1.5 }, 'BAD_FIELD', 'capturedAt'],
    ['disk size not a multiple of 512', { diskSizeBytes: 1000 }, 'BAD_FIELD', 'diskSizeBytes'],
    ['disk beyond 32 TiB', { diskSizeBytes: 32 * 1024 ** 4 + 512 }, 'BAD_FIELD', 'diskSizeBytes'],
    ['covered beyond the disk', { initialCoveredBytes: 2 << 20 }, 'BAD_FIELD', 'initialCoveredBytes'],
    ['complete but not covered', { initialReplicationComplete: true, initialCoveredBytes: 512 }, 'BAD_FIELD', 'initialCoveredBytes'],
    ['tag id 0', { consistency: { kind: 'crash-consistent', tagId: 0 } }, 'BAD_FIELD', 'tagId'],
    ['unaligned record', { records: [{ kind: 'zero', offset: 1, length: 512 }] }, 'UNALIGNED', 'records[0].offset'],
    ['unaligned data', { records: [{ kind: 'data', offset: 0, data: Buffer.alloc(100) }] }, 'UNALIGNED', 'records[0].length'],
    ['record past the disk', { records: [{ kind: 'zero', offset: 0, length: 2 << 20 }] }, 'RECORD_OUT_OF_BOUNDS', 'records[0]'],
    ['overlapping records', { records: [{ kind: 'zero', offset: 0, length: 1024 }, { kind: 'zero', offset: 512, length: 512 }] }, 'OVERLAP', 'records[1].offset'],
  ];
  for (const [name, change, code, field] of cases) {
    it(`rejects ${name} with ${code} (${field})`, () => {
      expectWireError(() => sealBatch({ ...base, ...change }, KEY, 1, rng), code, field);
    });
  }

  it('rejects a short key, key id 0, a random source that returns the wrong size and an unknown codec', () => {
    expectWireError(() => sealBatch(base, Buffer.alloc(31), 1, rng), 'BAD_KEY', 'key');
    expectWireError(() => sealBatch(base, KEY, 0, rng), 'BAD_FIELD', 'keyId');
    expectWireError(() => sealBatch(base, KEY, 1, () => Buffer.alloc(8)), 'BAD_FIELD', 'nonce');
    expectWireError(() => sealBatch(base, KEY, 1, rng, { codec: 'lz4' as CodecName }), 'BAD_FIELD', 'codec');
  });

  it('writes the documented prefix layout', () => {
    const { sealed } = sample();
    expect(sealed.subarray(0, 4).toString('ascii')).toBe('FRYB');
    expect(sealed[4]).toBe(1);
    expect(sealed[5]).toBe(1); // zstd
    expect(sealed[6]).toBe(1); // crash-consistent
    expect(sealed[7]).toBe(1); // initialReplicationComplete
    expect(sealed.readUInt32LE(8)).toBe(1);
    expect(sealed.readUInt32LE(12)).toBe(2);
    expect(sealed.readBigUInt64LE(16)).toBe(42n);
    expect(sealed.readBigUInt64LE(24)).toBe(1_764_147_600_000n);
    expect(sealed.readBigUInt64LE(32)).toBe(BigInt(64 * 1024 * 1024));
    expect(sealed.readBigUInt64LE(40)).toBe(BigInt(64 * 1024 * 1024));
    expect(sealed.readBigUInt64LE(48)).toBe(7n);
    expect(sealed.readUInt32LE(56)).toBe(3);
    expect(sealed.readUInt32LE(60)).toBe(3 * 24 + 1024 + 512);
    expect(sealed.readUInt8(68)).toBe(6);
    expect(sealed.subarray(69, 75).toString('ascii')).toBe('web-01');
    expect(sealed.readUInt8(132)).toBe(5);
    expect(sealed.subarray(133, 138).toString('ascii')).toBe('disk0');
    expect(sealed.length).toBe(PREFIX_BYTES + sealed.readUInt32LE(64) + 16);
  });
});

describe('the test vector in docs/wire-format.md', () => {
  it('is what sealBatch produces, and it opens', () => {
    const doc = readFileSync(join(__dirname, '../../../docs/wire-format.md'), 'utf8');
    const section = doc.slice(doc.indexOf('## Test vector'));
    const block = section.slice(section.indexOf('```') + 3, section.indexOf('```', section.indexOf('```') + 3));
    const hex = block
      .trim()
      .split('\n')
      .map((l) => l.slice(6).replace(/ /g, ''))
      .join('');
    const expected = Buffer.from(hex, 'hex');
    expect(expected).toHaveLength(280);
    const key = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
    const nonce = Buffer.from(Array.from({ length: 12 }, (_, i) => 0xa0 + i));
    const sealed = sealBatch(
      { vmId: 'vm1', diskId: 'disk0', epoch: 1, sequence: 1, capturedAt: 1764147600000, diskSizeBytes: 1048576, initialCoveredBytes: 4096, consistency: { kind: 'crash-consistent', tagId: 1 }, records: [{ kind: 'zero', offset: 0, length: 4096 }] },
      key,
      1,
      () => nonce,
      { codec: 'none' },
    );
    expect(sealed.toString('hex')).toBe(expected.toString('hex'));
    expect(openBatch(expected, () => key).records).toEqual([{ kind: 'zero', offset: 0, length: 4096 }]);
  });
});
