import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { EXTENT_BYTES, contentBlockId, zeroBlockId } from '../../../shared/domain/extents';
import { diffManifests, extentHash, hashOfBlockId, manifestOf, runsToByteRanges, zeroExtentHash, type ExtentHash } from '../../../shared/domain/manifest';

const h = (n: number): string => n.toString(16).padStart(32, '0');
const m = (...pairs: [number, number][]): ExtentHash[] => pairs.map(([index, v]) => ({ index, hash: h(v) }));

describe('extent hashes', () => {
  it('is the first 32 hex digits of the SHA-256, and what a content block id encodes', () => {
    const data = Buffer.from('ferry');
    expect(extentHash(data)).toBe(createHash('sha256').update(data).digest('hex').slice(0, 32));
    expect(hashOfBlockId(contentBlockId(data))).toBe(extentHash(data));
  });

  it('gives the hash of zeros of each length for zero extents', () => {
    expect(zeroExtentHash(EXTENT_BYTES)).toBe(extentHash(Buffer.alloc(EXTENT_BYTES)));
    expect(zeroExtentHash(1024)).toBe(extentHash(Buffer.alloc(1024)));
    expect(hashOfBlockId(zeroBlockId(512))).toBe(extentHash(Buffer.alloc(512)));
  });

  it('refuses a block id that is not base64 of 32 hex digits', () => {
    expect(() => hashOfBlockId(Buffer.from('not-a-hash').toString('base64'))).toThrow(/not a Ferry content block id/);
  });

  it('hashes an image per 4 MiB extent, the last one short', () => {
    const image = Buffer.alloc(EXTENT_BYTES + 1024, 7);
    const hashes = manifestOf(image);
    expect(hashes.map((x) => x.index)).toEqual([0, 1]);
    expect(hashes[1]!.hash).toBe(extentHash(Buffer.alloc(1024, 7)));
  });
});

describe('diffManifests', () => {
  it('finds nothing when the manifests are equal', () => {
    expect(diffManifests(m([0, 1], [1, 2]), m([0, 1], [1, 2]))).toEqual([]);
  });

  it('merges adjacent differing extents into runs', () => {
    const source = m([0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [5, 6]);
    const replica = m([0, 1], [1, 9], [2, 9], [3, 4], [4, 5], [5, 9]);
    expect(diffManifests(source, replica)).toEqual([
      { start: 1, end: 3 },
      { start: 5, end: 6 },
    ]);
  });

  it('counts an extent present on one side only as different', () => {
    expect(diffManifests(m([0, 1], [1, 2], [2, 3]), m([0, 1], [2, 3], [3, 4]))).toEqual([
      { start: 1, end: 2 },
      { start: 3, end: 4 },
    ]);
  });

  it('compares hashes case-insensitively', () => {
    expect(diffManifests([{ index: 0, hash: 'ABCDEF'.padEnd(32, '0') }], [{ index: 0, hash: 'abcdef'.padEnd(32, '0') }])).toEqual([]);
  });

  it('walks generators once, in order, without materialising them', () => {
    function* gen(n: number, changed: Set<number>): Generator<ExtentHash> {
      for (let i = 0; i < n; i++) yield { index: i, hash: h(changed.has(i) ? i + 1 : i) };
    }
    expect(diffManifests(gen(200_000, new Set()), gen(200_000, new Set([5, 6, 199_999])))).toEqual([
      { start: 5, end: 7 },
      { start: 199_999, end: 200_000 },
    ]);
  });

  it('refuses a manifest out of order', () => {
    expect(() => diffManifests(m([1, 1], [0, 1]), m([0, 1], [1, 1]))).toThrow('The source manifest must list extents in strictly increasing index order; 0 follows 1.');
  });

  it('turns runs into byte ranges, the last extent short', () => {
    const size = 2 * EXTENT_BYTES + 512;
    expect(runsToByteRanges([{ start: 0, end: 1 }, { start: 2, end: 3 }], size)).toEqual([
      { offset: 0, length: EXTENT_BYTES },
      { offset: 2 * EXTENT_BYTES, length: 512 },
    ]);
  });
});
