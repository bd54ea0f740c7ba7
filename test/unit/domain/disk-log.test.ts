import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { decodeLogEntry, decodeLogEntryIndex, encodeLogEntry, isSparse, logDataRange, logEntryName, logEntrySegment, logEntryTableBytes, logWritesInRange, overlay } from '../../../shared/domain/disk-log';
import { isDomainError } from '../../../shared/domain/domain-error';
import { EXTENT_BYTES, composeExtent, mergeExtentWrites, planExtentWrites } from '../../../shared/domain/extents';
import type { BatchRecord } from '../../../shared/domain/wire-format';
import { applyToModel, randomRecords, rng } from '../../support/batches';

const MiB = 1024 * 1024;

describe('disk log entries', () => {
  it('round-trip: overlaying a decoded entry equals applying the batches in order', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 1_000_000 }), fc.integer({ min: 1, max: 4 }), (seed, batches) => {
        const size = 5 * MiB + 1024; // two extents, the last one short
        const next = rng(seed);
        const lists: BatchRecord[][] = Array.from({ length: batches }, () => randomRecords(next, size, 1 + Math.floor(next() * 8), 64 * 1024));
        const model = Buffer.from(Buffer.alloc(size, 7));
        const base = Buffer.from(model);
        for (const l of lists) applyToModel(model, l);
        const writes = mergeExtentWrites(lists.map((l) => planExtentWrites(l, size)));
        const decoded = decodeLogEntry(encodeLogEntry(writes), size);
        overlay(base, 0, decoded);
        expect(base.equals(model)).toBe(true);
        // and composing extents from the decoded writes gives the same bytes
        for (const w of decoded) {
          const extent = composeExtent(w, Buffer.alloc(w.extentLength, 7));
          expect(extent.equals(model.subarray(w.extentOffset, w.extentOffset + w.extentLength))).toBe(true);
        }
      }),
      { numRuns: 60 },
    );
  });

  it('read by windows (the index, then the data range of each window in order): the same writes as decoding it whole, and the ranges hash to the stored hash', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 1_000_000 }), fc.integer({ min: 1, max: 4 }), fc.array(fc.integer({ min: 1, max: 3 }), { minLength: 1, maxLength: 6 }), (seed, batches, cuts) => {
        const size = 13 * MiB + 1024; // four extents, the last one short
        const next = rng(seed);
        const lists: BatchRecord[][] = Array.from({ length: batches }, () => randomRecords(next, size, 1 + Math.floor(next() * 12), 256 * 1024));
        const entry = encodeLogEntry(mergeExtentWrites(lists.map((l) => planExtentWrites(l, size))));
        const tableEnd = logEntryTableBytes(entry.subarray(0, 12), entry.length);
        const index = decodeLogEntryIndex(entry.subarray(0, tableEnd), entry.length, size);
        const hash = createHash('sha256').update(entry.subarray(0, tableEnd));
        let hashedTo = tableEnd;
        const base = Buffer.alloc(size, 7);
        const whole = Buffer.alloc(size, 7);
        overlay(whole, 0, decodeLogEntry(entry, size));
        // windows of 1-3 extents
        for (let first = 0, c = 0; first < 4; first += cuts[c++ % cuts.length] as number) {
          const end = Math.min(4, first + (cuts[c % cuts.length] as number));
          const range = logDataRange(index, first, end);
          const data = range ? Buffer.from(entry.subarray(range.from, range.to)) : Buffer.alloc(0);
          if (range) {
            expect(range.from).toBe(hashedTo);
            hash.update(data);
            hashedTo = range.to;
          }
          overlay(base, 0, logWritesInRange(index, first, end, data, range?.from ?? 0, size));
        }
        expect(hashedTo).toBe(index.dataEnd);
        expect(hash.digest().equals(entry.subarray(index.dataEnd))).toBe(true);
        expect(base.equals(whole)).toBe(true);
      }),
      { numRuns: 60 },
    );
  });

  it('the index refuses damaged headers and tables', () => {
    const size = 8 * MiB;
    const entry = encodeLogEntry(planExtentWrites([{ kind: 'data', offset: 4096, data: Buffer.alloc(600, 3) }, { kind: 'zero', offset: 5 * MiB, length: 512 }], size));
    const tableEnd = logEntryTableBytes(entry.subarray(0, 12), entry.length);
    expect(() => logEntryTableBytes(Buffer.from('XLOG0000000000'), entry.length)).toThrow(/damaged/);
    expect(() => decodeLogEntryIndex(entry.subarray(0, tableEnd - 1), entry.length, size)).toThrow(/damaged/);
    expect(() => decodeLogEntryIndex(entry.subarray(0, tableEnd), entry.length + 1, size)).toThrow(/damaged/); // data does not add up
    const bad = Buffer.from(entry);
    bad.writeUInt32LE(99, 12); // first piece in an extent past the disk
    expect(() => decodeLogEntryIndex(bad.subarray(0, tableEnd), entry.length, size)).toThrow();
    const huge = Buffer.from(entry);
    huge.writeUInt32LE(0xffffff, 8); // more pieces than fit
    expect(() => logEntryTableBytes(huge, entry.length)).toThrow(/damaged/);
  });

  it('overlays onto any window of the disk', () => {
    const size = 8 * MiB;
    const records: BatchRecord[] = [
      { kind: 'data', offset: EXTENT_BYTES - 512, data: Buffer.alloc(1024, 1) },
      { kind: 'zero', offset: 6 * MiB, length: 4096 },
    ];
    const model = Buffer.alloc(size, 9);
    applyToModel(model, records);
    const writes = decodeLogEntry(encodeLogEntry(planExtentWrites(records, size)), size);
    for (const [offset, length] of [[0, size], [EXTENT_BYTES - 100, 200], [6 * MiB + 100, 10], [1000, 10]] as const) {
      const out = Buffer.alloc(length, 9);
      overlay(out, offset, writes);
      expect(out.equals(model.subarray(offset, offset + length))).toBe(true);
    }
  });

  it('refuses every truncation and every single-byte change with a DomainError', () => {
    const size = 8 * MiB;
    const entry = encodeLogEntry(planExtentWrites([{ kind: 'data', offset: 4096, data: Buffer.alloc(600, 3) }, { kind: 'zero', offset: 5 * MiB, length: 512 }], size));
    for (let cut = 0; cut < entry.length; cut++) {
      expect(() => decodeLogEntry(entry.subarray(0, cut), size)).toThrow(/damaged/);
    }
    for (let i = 0; i < entry.length; i++) {
      const bad = Buffer.from(entry);
      bad[i] = (bad[i] as number) ^ 0x41;
      try {
        decodeLogEntry(bad, size);
        throw new Error(`byte ${i} changed and the entry still decoded`);
      } catch (err) {
        expect(isDomainError(err)).toBe(true);
      }
    }
  });

  it('names entries so that they sort in apply order, and parses the segment back', () => {
    const names = [
      logEntryName('vm/d/', 3, { epoch: 2, sequence: 1 }),
      logEntryName('vm/d/', 3, { epoch: 1, sequence: 99 }),
      logEntryName('vm/d/', 3, { epoch: 1, sequence: 100 }),
    ];
    expect([...names].sort()).toEqual([names[1], names[2], names[0]]);
    expect(logEntrySegment('vm/d/', names[0] as string)).toBe(3);
    expect(logEntrySegment('vm/d/', 'vm/d/log/000003/junk')).toBeUndefined();
  });

  it('calls scattered small writes sparse and whole extents not', () => {
    const size = 64 * MiB;
    const scattered: BatchRecord[] = Array.from({ length: 16 }, (_, i) => ({ kind: 'data', offset: i * EXTENT_BYTES + 8192, data: Buffer.alloc(4096, 1) }));
    expect(isSparse(planExtentWrites(scattered, size))).toBe(true);
    expect(isSparse(planExtentWrites([{ kind: 'data', offset: 0, data: Buffer.alloc(8 * MiB, 1) }], size))).toBe(false);
    // a half-written extent: rewriting it costs 2x what is written, not sparse
    expect(isSparse(planExtentWrites([{ kind: 'data', offset: 0, data: Buffer.alloc(2 * MiB, 1) }], size))).toBe(false);
  });
});
