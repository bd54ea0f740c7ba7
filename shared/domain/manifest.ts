/**
 * Hash manifests of disks at extent granularity (4 MiB, shared/domain/extents.ts), and their
 * comparison. Pure: the cloud builds a replica's manifest from its committed block ids
 * (`hashOfBlockId`), the appliance builds the source's by hashing what it reads
 * (`extentHash`), and `diffManifests` says which extents differ (docs/resync.md).
 *
 * Terminology:
 * - **Extent hash**: the first 32 hex digits (128 bits) of the SHA-256 of the extent's bytes,
 *   lowercase; algorithm name `sha256-128`. The last extent of a disk may be shorter than
 *   4 MiB and is hashed as it is (no padding). An extent never written is zeros and has the
 *   hash of zeros of its length.
 * - A block id (contentBlockId) is the base64 of exactly those 32 ASCII hex digits, so the
 *   hash is recovered from the id without reading any disk bytes.
 */
import { createHash } from 'node:crypto';
import { DomainError } from './domain-error';
import { EXTENT_BYTES, extentCount, extentRange, zeroBlockId } from './extents';

export const HASH_ALGORITHM = 'sha256-128';
/** Largest page of GET .../hashes: 65,536 extents = 256 GiB of disk, about 3 MB of JSON. */
export const MAX_HASHES_PER_PAGE = 65_536;

const HEX32 = /^[0-9a-f]{32}$/;

export interface ExtentHash {
  index: number;
  /** 32 lowercase hex digits. */
  hash: string;
}

/** Extent hash of `content`: the first 32 hex digits of its SHA-256. */
export function extentHash(content: Uint8Array): string {
  return createHash('sha256').update(content).digest('hex').slice(0, 32);
}

/** The extent hash a content block id stands for. Throws for an id that is not one. */
export function hashOfBlockId(blockId: string): string {
  const hex = Buffer.from(blockId, 'base64').toString('ascii');
  if (!HEX32.test(hex)) throw new DomainError('INVALID_ARGUMENT', 'blockId', `Block id '${blockId}' is not a Ferry content block id (base64 of 32 hex digits).`);
  return hex;
}

/** Hash of an all-zero extent of `lengthBytes` (cached per length, via zeroBlockId). */
export function zeroExtentHash(lengthBytes: number): string {
  return hashOfBlockId(zeroBlockId(lengthBytes));
}

/** Hashes of every extent of an in-memory disk image (tests, small disks). */
export function manifestOf(image: Uint8Array): ExtentHash[] {
  return Array.from({ length: extentCount(image.length) }, (_, index) => {
    const { offset, length } = extentRange(index, image.length);
    return { index, hash: extentHash(image.subarray(offset, offset + length)) };
  });
}

/** A run of extents [start, end) (end exclusive). */
export interface ExtentRun {
  start: number;
  end: number;
}

/**
 * The extents whose hashes differ between `source` and `replica`, as maximal runs in index
 * order. Both sides must list their extents in strictly increasing index order (as
 * GET .../hashes and `manifestOf` do); they are walked together once, so either may be a
 * generator over millions of extents. An index present on one side only counts as different
 * (compare like windows: the same `from`/`count` on both sides). Hashes compare
 * case-insensitively.
 */
export function diffManifests(source: Iterable<ExtentHash>, replica: Iterable<ExtentHash>): ExtentRun[] {
  const runs: ExtentRun[] = [];
  const mark = (index: number) => {
    const last = runs[runs.length - 1];
    if (last && last.end === index) last.end = index + 1;
    else runs.push({ start: index, end: index + 1 });
  };
  const a = ordered(source, 'source')[Symbol.iterator]();
  const b = ordered(replica, 'replica')[Symbol.iterator]();
  let x = a.next();
  let y = b.next();
  while (!x.done || !y.done) {
    if (y.done || (!x.done && x.value.index < y.value.index)) {
      mark((x.value as ExtentHash).index);
      x = a.next();
    } else if (x.done || y.value.index < x.value.index) {
      mark(y.value.index);
      y = b.next();
    } else {
      if (x.value.hash.toLowerCase() !== y.value.hash.toLowerCase()) mark(x.value.index);
      x = a.next();
      y = b.next();
    }
  }
  return runs;
}

function* ordered(items: Iterable<ExtentHash>, side: string): Generator<ExtentHash> {
  let previous = -1;
  for (const item of items) {
    if (!Number.isSafeInteger(item.index) || item.index <= previous) {
      throw new DomainError('INVALID_ARGUMENT', side, `The ${side} manifest must list extents in strictly increasing index order; ${item.index} follows ${previous}.`);
    }
    previous = item.index;
    yield item;
  }
}

/** Byte ranges of a disk covered by extent runs (the last extent may be short). */
export function runsToByteRanges(runs: readonly ExtentRun[], diskSizeBytes: number): { offset: number; length: number }[] {
  return runs.map((r) => {
    const offset = r.start * EXTENT_BYTES;
    return { offset, length: Math.min(r.end * EXTENT_BYTES, diskSizeBytes) - offset };
  });
}
