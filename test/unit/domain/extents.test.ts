import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isDomainError } from '../../../shared/domain/domain-error';
import {
  BLOCK_ID_LENGTH,
  composeExtent,
  contentBlockId,
  EXTENT_BYTES,
  EXTENTS_PER_SEGMENT,
  extentCount,
  extentRange,
  extentsForRange,
  mergeExtentWrites,
  planExtentWrites,
  SEGMENT_BYTES,
  segmentBlobName,
  segmentCount,
  segmentInfo,
  segmentOfExtent,
  zeroBlockId,
} from '../../../shared/domain/extents';
import { MAX_DISK_SIZE_BYTES } from '../../../shared/domain/ids';
import type { BatchRecord } from '../../../shared/domain/wire-format';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

function domainCode(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (isDomainError(err)) return `${err.code} ${err.field}`;
    throw err;
  }
  return 'no error';
}

describe('extent and segment counts', () => {
  it('counts 4 MiB extents, the last one partial', () => {
    expect(extentCount(512)).toBe(1);
    expect(extentCount(4 * MiB)).toBe(1);
    expect(extentCount(4 * MiB + 512)).toBe(2);
    expect(extentRange(1, 4 * MiB + 512)).toEqual({ offset: 4 * MiB, length: 512 });
    expect(extentRange(0, 10 * 512)).toEqual({ offset: 0, length: 5120 });
  });

  it('splits a 32 TiB disk into 32,768 segments of 256 blocks (1 GiB)', () => {
    expect(extentCount(MAX_DISK_SIZE_BYTES)).toBe(8_388_608);
    expect(segmentCount(MAX_DISK_SIZE_BYTES)).toBe(32_768);
    const last = segmentInfo(32_767, MAX_DISK_SIZE_BYTES);
    expect(last).toEqual({ segment: 32_767, firstExtent: 8_388_352, extentCount: 256, offset: 32_767 * GiB, length: GiB });
    expect(segmentInfo(0, MAX_DISK_SIZE_BYTES).extentCount).toBe(EXTENTS_PER_SEGMENT);
    const odd = 3 * GiB + 4 * MiB + 512;
    expect(segmentInfo(3, odd)).toEqual({ segment: 3, firstExtent: 768, extentCount: 2, offset: 3 * GiB, length: 4 * MiB + 512 });
  });

  it('keeps every segment of any disk within the committed-block limit and covers the disk', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: MAX_DISK_SIZE_BYTES / 512 }), (sectors) => {
        const size = sectors * 512;
        const n = segmentCount(size);
        // all segments but the last are full; the last holds the rest
        const first = segmentInfo(0, size);
        const last = segmentInfo(n - 1, size);
        if (n > 1) expect(first).toMatchObject({ offset: 0, length: SEGMENT_BYTES, extentCount: EXTENTS_PER_SEGMENT });
        expect(last.extentCount).toBeGreaterThan(0);
        expect(last.extentCount).toBeLessThanOrEqual(EXTENTS_PER_SEGMENT);
        expect(EXTENTS_PER_SEGMENT).toBeLessThanOrEqual(50_000);
        expect(last.offset).toBe((n - 1) * SEGMENT_BYTES);
        expect(last.offset + last.length).toBe(size);
        expect(last.firstExtent + last.extentCount).toBe(extentCount(size));
      }),
      { numRuns: 1000 },
    );
  });

  it('places extent 256 first in segment 1', () => {
    expect(segmentOfExtent(255)).toEqual({ segment: 0, blockIndex: 255 });
    expect(segmentOfExtent(256)).toEqual({ segment: 1, blockIndex: 0 });
    expect(segmentBlobName('vm1', 'disk0', 12)).toBe('vm1/disk0/seg-000012');
  });

  it('refuses sizes and indexes outside the disk', () => {
    expect(domainCode(() => extentCount(1000))).toBe('INVALID_ARGUMENT diskSizeBytes');
    expect(domainCode(() => extentCount(MAX_DISK_SIZE_BYTES + 512))).toBe('OUT_OF_RANGE diskSizeBytes');
    expect(domainCode(() => extentRange(2, 8 * MiB))).toBe('OUT_OF_RANGE extentIndex');
    expect(domainCode(() => segmentInfo(1, 8 * MiB))).toBe('OUT_OF_RANGE segment');
    expect(domainCode(() => extentsForRange(0, 8 * MiB + 512, 8 * MiB))).toBe('OUT_OF_RANGE length');
    expect(domainCode(() => extentsForRange(1.5, 512, 8 * MiB))).toBe('INVALID_ARGUMENT offset');
  });
});

describe('extentsForRange', () => {
  it('splits a range that straddles two extents', () => {
    expect(extentsForRange(4 * MiB - 1024, 2048, 1 * GiB)).toEqual([
      { extentIndex: 0, segment: 0, blockIndex: 0, extentOffset: 0, extentLength: 4 * MiB, start: 4 * MiB - 1024, length: 1024, full: false },
      { extentIndex: 1, segment: 0, blockIndex: 1, extentOffset: 4 * MiB, extentLength: 4 * MiB, start: 0, length: 1024, full: false },
    ]);
  });

  it('marks whole extents, including a short last one, as full', () => {
    const size = 8 * MiB + 4096;
    const slices = extentsForRange(0, size, size);
    expect(slices.map((s) => [s.extentIndex, s.length, s.full])).toEqual([
      [0, 4 * MiB, true],
      [1, 4 * MiB, true],
      [2, 4096, true],
    ]);
  });

  it('returns nothing for an empty range', () => {
    expect(extentsForRange(512, 0, 4096)).toEqual([]);
  });

  it('covers any range exactly with contiguous slices inside one extent each', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: (4 * TiB) / 512 }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        fc.integer({ min: 0, max: (64 * MiB) / 512 }),
        (sectors, at, lenSectors) => {
          const size = sectors * 512;
          const offset = Math.floor(at * sectors) * 512;
          const length = Math.min(lenSectors * 512, size - offset);
          const slices = extentsForRange(offset, length, size);
          let pos = offset;
          for (const s of slices) {
            expect(s.extentOffset + s.start).toBe(pos);
            expect(s.start + s.length).toBeLessThanOrEqual(s.extentLength);
            expect(s.length).toBeGreaterThan(0);
            expect(s.extentIndex * EXTENT_BYTES).toBe(s.extentOffset);
            expect(s.segment * EXTENTS_PER_SEGMENT + s.blockIndex).toBe(s.extentIndex);
            expect(s.extentLength).toBe(extentRange(s.extentIndex, size).length);
            pos += s.length;
          }
          expect(pos).toBe(offset + length);
        },
      ),
      { numRuns: 1000 },
    );
  });
});

describe('block ids', () => {
  it('are content addresses: the same bytes give the same id, other bytes another', () => {
    const a = Buffer.alloc(4096, 1);
    expect(contentBlockId(a)).toBe(contentBlockId(Buffer.from(a)));
    expect(contentBlockId(a)).not.toBe(contentBlockId(Buffer.alloc(4096, 2)));
    expect(contentBlockId(a)).not.toBe(contentBlockId(Buffer.alloc(4608, 1)));
  });

  it('have one length, within Azure limits, for any content', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 2048 }), (bytes) => {
        const id = contentBlockId(bytes);
        expect(id).toHaveLength(BLOCK_ID_LENGTH);
        expect(Buffer.from(id, 'base64').length).toBeLessThanOrEqual(64);
      }),
      { numRuns: 500 },
    );
  });

  it('give every all-zero block of a length the id of its zero content', () => {
    expect(zeroBlockId(4 * MiB)).toBe(contentBlockId(Buffer.alloc(4 * MiB)));
    expect(zeroBlockId(512)).toBe(contentBlockId(Buffer.alloc(512)));
    expect(zeroBlockId(512)).not.toBe(zeroBlockId(1024));
  });

  it('refuses zero blocks that are not whole sectors or exceed an extent', () => {
    expect(domainCode(() => zeroBlockId(100 * 512 + 1))).toBe('INVALID_ARGUMENT lengthBytes');
    expect(domainCode(() => zeroBlockId(EXTENT_BYTES + 512))).toBe('OUT_OF_RANGE lengthBytes');
  });
});

describe('planExtentWrites and composeExtent', () => {
  const SIZE = 3 * EXTENT_BYTES - 4096; // three extents, the last one short

  it('groups records by extent and splits a record that straddles extents', () => {
    const data = Buffer.alloc(2048, 7);
    const plan = planExtentWrites(
      [
        { kind: 'zero', offset: 0, length: 4096 },
        { kind: 'data', offset: EXTENT_BYTES - 1024, data },
      ],
      SIZE,
    );
    expect(plan.map((w) => [w.extentIndex, w.pieces.map((p) => [p.start, p.length, p.data?.length]), w.full])).toEqual([
      [0, [[0, 4096, undefined], [EXTENT_BYTES - 1024, 1024, 1024]], false],
      [1, [[0, 1024, 1024]], false],
    ]);
  });

  it('marks an extent covered by zero records as an all-zero block', () => {
    const plan = planExtentWrites([{ kind: 'zero', offset: 0, length: SIZE }], SIZE);
    expect(plan.map((w) => [w.extentIndex, w.full, w.allZero])).toEqual([
      [0, true, true],
      [1, true, true],
      [2, true, true],
    ]);
    expect(plan[2]!.extentLength).toBe(EXTENT_BYTES - 4096);
  });

  it('needs the previous content for a partial write', () => {
    const [w] = planExtentWrites([{ kind: 'zero', offset: 0, length: 512 }], SIZE);
    expect(domainCode(() => composeExtent(w!))).toBe('INVALID_ARGUMENT previous');
    expect(domainCode(() => composeExtent(w!, Buffer.alloc(10)))).toBe('INVALID_ARGUMENT previous');
    expect(composeExtent(w!, null).equals(Buffer.alloc(EXTENT_BYTES))).toBe(true);
  });

  it('gives the same disk as writing the records directly', () => {
    const disk = Buffer.alloc(SIZE);
    for (let i = 0; i < SIZE; i += 4096) disk[i] = (i / 4096) & 0xff;
    const direct = Buffer.alloc(SIZE);
    const viaPlan = Buffer.alloc(SIZE);
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            at: fc.constantFrom(0, EXTENT_BYTES - 2048, EXTENT_BYTES, 2 * EXTENT_BYTES - 512, 12345 * 512, SIZE - 8192),
            gap: fc.integer({ min: 0, max: 16 }),
            sectors: fc.integer({ min: 1, max: 16 }),
            zero: fc.boolean(),
            fill: fc.integer({ min: 1, max: 255 }),
          }),
          { maxLength: 8 },
        ),
        (shape) => {
          const records: BatchRecord[] = [];
          let end = 0;
          for (const s of [...shape].sort((a, b) => a.at - b.at)) {
            const offset = Math.max(end, s.at) + s.gap * 512;
            const length = Math.min(s.sectors * 512, SIZE - offset);
            if (length <= 0) break;
            records.push(s.zero ? { kind: 'zero', offset, length } : { kind: 'data', offset, data: Buffer.alloc(length, s.fill) });
            end = offset + length;
          }
          disk.copy(direct);
          for (const r of records) {
            if (r.kind === 'zero') direct.fill(0, r.offset, r.offset + r.length);
            else direct.set(r.data, r.offset);
          }
          disk.copy(viaPlan);
          for (const w of planExtentWrites(records, SIZE)) {
            const previous = viaPlan.subarray(w.extentOffset, w.extentOffset + w.extentLength);
            composeExtent(w, w.full ? undefined : previous).copy(viaPlan, w.extentOffset);
          }
          expect(viaPlan.equals(direct)).toBe(true);
        },
      ),
      { numRuns: 80 },
    );
  });

  it('merging consecutive batches gives the same disk as applying them one after another', () => {
    const size = 3 * EXTENT_BYTES + 4096;
    fc.assert(
      fc.property(
        fc.array(
          fc.array(fc.record({ sector: fc.integer({ min: 0, max: size / 512 - 64 }), sectors: fc.integer({ min: 1, max: 64 }), zero: fc.boolean(), fill: fc.integer({ min: 1, max: 255 }) }), { maxLength: 6 }),
          { minLength: 1, maxLength: 5 },
        ),
        fc.boolean(),
        (batches, wholeFirst) => {
          const lists: BatchRecord[][] = batches.map((shape) => {
            const out: BatchRecord[] = [];
            let end = 0;
            for (const r of [...shape].sort((a, b) => a.sector - b.sector)) {
              const offset = Math.max(end, r.sector * 512);
              const length = Math.min(r.sectors * 512, size - offset);
              if (length <= 0) break;
              out.push(r.zero ? { kind: 'zero', offset, length } : { kind: 'data', offset, data: Buffer.alloc(length, r.fill) });
              end = offset + length;
            }
            return out;
          });
          if (wholeFirst) lists.unshift([{ kind: 'data', offset: 0, data: Buffer.alloc(size, 9) }]);
          const initial = Buffer.alloc(size);
          for (let i = 0; i < size; i += 512) initial[i] = (i / 512) & 0xff;
          const sequential = Buffer.from(initial);
          for (const list of lists) for (const r of list) r.kind === 'zero' ? sequential.fill(0, r.offset, r.offset + r.length) : sequential.set(r.data, r.offset);
          const merged = Buffer.from(initial);
          for (const w of mergeExtentWrites(lists.map((l) => planExtentWrites(l, size)))) {
            const prev = w.full ? undefined : merged.subarray(w.extentOffset, w.extentOffset + w.extentLength);
            composeExtent(w, prev).copy(merged, w.extentOffset);
            if (w.allZero) expect(merged.subarray(w.extentOffset, w.extentOffset + w.extentLength).every((b) => b === 0)).toBe(true);
          }
          expect(merged.equals(sequential)).toBe(true);
        },
      ),
      { numRuns: 100 },
    );
  });
});
