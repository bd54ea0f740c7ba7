/**
 * How a replicated disk is laid out in block blobs (pure arithmetic and hashing).
 *
 * - A disk is cut into **extents** of 4 MiB (EXTENT_BYTES); the last one may be shorter
 *   (disk sizes are multiples of 512, not of 4 MiB). Extent i covers bytes
 *   [i x 4 MiB, min((i+1) x 4 MiB, diskSize)).
 * - Each extent is exactly one block of a block blob. Consecutive extents are grouped into
 *   **segments** of EXTENTS_PER_SEGMENT = 256 extents (1 GiB); segment s is its own block blob
 *   `<vmId>/<diskId>/seg-<s, 6 digits>`. A block's position in its segment's block list is
 *   `extentIndex mod 256`. A 32 TiB disk has 8,388,608 extents in 32,768 segments.
 *
 *   Why 256 and not Azure's limit of 50,000 committed blocks per blob: Put Block List must
 *   name every block of the blob, so its cost grows with the blob. Measured on Azurite here:
 *   committing a 50,000-entry list takes ~0.8 s and reading it back ~2 s (about 1.6 MB of XML),
 *   against 25 ms and 53 ms for 256 entries. With 1 GiB segments the cost of applying a batch
 *   depends only on the extents it touches, never on the size of the disk.
 * - **Block ids are content addresses**: base64 of the first 32 hex digits of the SHA-256 of
 *   the block's bytes (44 characters, one length for every id as Azure requires). Hence:
 *   staging an extent again after a crash stages the same id with the same bytes; an extent
 *   whose new content equals its committed content needs no upload at all; every all-zero
 *   extent of a length is one shared block (zeroBlockId); and a segment's block list *is* a
 *   hash manifest of the disk at 4 MiB granularity, readable without downloading the disk.
 * - `planExtentWrites` groups a batch's records by extent; `composeExtent` builds an extent's
 *   new content (reading the old one only when the batch covers it partly).
 */
import { createHash } from 'node:crypto';
import { DomainError } from './domain-error';
import { MAX_DISK_SIZE_BYTES, SECTOR_SIZE } from './ids';
import type { BatchRecord } from './wire-format';

export const EXTENT_BYTES = 4 * 1024 * 1024;
/** Azure: "The committed block count cannot exceed the maximum limit of 50,000 blocks." */
export const MAX_COMMITTED_BLOCKS = 50_000;
/** Extents (blocks) per segment blob; far below MAX_COMMITTED_BLOCKS on purpose (see above). */
export const EXTENTS_PER_SEGMENT = 256;
export const SEGMENT_BYTES = EXTENTS_PER_SEGMENT * EXTENT_BYTES;
export const BLOCK_ID_LENGTH = 44;

function checkSafeInt(field: string, value: number, min: number, max: number): number {
  if (!Number.isSafeInteger(value)) throw new DomainError('INVALID_ARGUMENT', field, `${field} ${String(value)} is not a safe integer.`);
  if (value < min || value > max) throw new DomainError('OUT_OF_RANGE', field, `${field} ${value} is outside ${min}..${max}.`);
  return value;
}

function checkDiskSize(diskSizeBytes: number): number {
  checkSafeInt('diskSizeBytes', diskSizeBytes, SECTOR_SIZE, MAX_DISK_SIZE_BYTES);
  if (diskSizeBytes % SECTOR_SIZE !== 0) throw new DomainError('INVALID_ARGUMENT', 'diskSizeBytes', `diskSizeBytes ${diskSizeBytes} is not a multiple of 512.`);
  return diskSizeBytes;
}

export function extentCount(diskSizeBytes: number): number {
  return Math.ceil(checkDiskSize(diskSizeBytes) / EXTENT_BYTES);
}

export function segmentCount(diskSizeBytes: number): number {
  return Math.ceil(extentCount(diskSizeBytes) / EXTENTS_PER_SEGMENT);
}

/** Byte range of extent `index`: the last extent of a disk may be shorter than 4 MiB. */
export function extentRange(index: number, diskSizeBytes: number): { offset: number; length: number } {
  checkSafeInt('extentIndex', index, 0, extentCount(diskSizeBytes) - 1);
  const offset = index * EXTENT_BYTES;
  return { offset, length: Math.min(EXTENT_BYTES, diskSizeBytes - offset) };
}

/** The segment (block blob) holding extent `index`, and the block's position in it. */
export function segmentOfExtent(index: number): { segment: number; blockIndex: number } {
  checkSafeInt('extentIndex', index, 0, Number.MAX_SAFE_INTEGER);
  return { segment: Math.floor(index / EXTENTS_PER_SEGMENT), blockIndex: index % EXTENTS_PER_SEGMENT };
}

export interface SegmentInfo {
  segment: number;
  firstExtent: number;
  /** Blocks in this segment's blob: at most 50,000. */
  extentCount: number;
  /** Bytes of the disk this segment holds. */
  offset: number;
  length: number;
}

/** Extents and bytes of segment `segment` of a disk. */
export function segmentInfo(segment: number, diskSizeBytes: number): SegmentInfo {
  const extents = extentCount(diskSizeBytes);
  checkSafeInt('segment', segment, 0, segmentCount(diskSizeBytes) - 1);
  const firstExtent = segment * EXTENTS_PER_SEGMENT;
  const count = Math.min(EXTENTS_PER_SEGMENT, extents - firstExtent);
  const offset = firstExtent * EXTENT_BYTES;
  return { segment, firstExtent, extentCount: count, offset, length: Math.min(SEGMENT_BYTES, diskSizeBytes - offset) };
}

/** The part of one extent that a byte range touches. */
export interface ExtentSlice {
  extentIndex: number;
  segment: number;
  /** Position of the extent's block in its segment's block list. */
  blockIndex: number;
  /** Byte range of the whole extent on the disk. */
  extentOffset: number;
  extentLength: number;
  /** Where the range starts inside the extent, and how many of its bytes it covers. */
  start: number;
  length: number;
  /** The range covers the whole extent: no read-modify-write needed. */
  full: boolean;
}

/** Splits the byte range [offset, offset + length) of a disk into extent slices, in order. */
export function extentsForRange(offset: number, length: number, diskSizeBytes: number): ExtentSlice[] {
  checkDiskSize(diskSizeBytes);
  checkSafeInt('offset', offset, 0, diskSizeBytes);
  checkSafeInt('length', length, 0, diskSizeBytes - offset);
  const slices: ExtentSlice[] = [];
  let pos = offset;
  const end = offset + length;
  while (pos < end) {
    const extentIndex = Math.floor(pos / EXTENT_BYTES);
    const extentOffset = extentIndex * EXTENT_BYTES;
    const extentLength = Math.min(EXTENT_BYTES, diskSizeBytes - extentOffset);
    const start = pos - extentOffset;
    const sliceLength = Math.min(extentLength - start, end - pos);
    slices.push({
      extentIndex,
      segment: Math.floor(extentIndex / EXTENTS_PER_SEGMENT),
      blockIndex: extentIndex % EXTENTS_PER_SEGMENT,
      extentOffset,
      extentLength,
      start,
      length: sliceLength,
      full: start === 0 && sliceLength === extentLength,
    });
    pos += sliceLength;
  }
  return slices;
}

/** Block id of a block holding `content`: base64 of 32 hex digits of its SHA-256. */
export function contentBlockId(content: Uint8Array): string {
  const hex = createHash('sha256').update(content).digest('hex').slice(0, 32);
  return Buffer.from(hex, 'ascii').toString('base64');
}

const zeroIds = new Map<number, string>();

/** Id of an all-zero block of `lengthBytes` (a multiple of 512, at most 4 MiB): contentBlockId of zeros. */
export function zeroBlockId(lengthBytes: number): string {
  checkSafeInt('lengthBytes', lengthBytes, SECTOR_SIZE, EXTENT_BYTES);
  if (lengthBytes % SECTOR_SIZE !== 0) throw new DomainError('INVALID_ARGUMENT', 'lengthBytes', `lengthBytes ${lengthBytes} is not a multiple of 512.`);
  let id = zeroIds.get(lengthBytes);
  if (id === undefined) {
    id = contentBlockId(Buffer.alloc(lengthBytes));
    zeroIds.set(lengthBytes, id);
  }
  return id;
}

/** Name of the block blob holding segment `segment` of a disk. */
export function segmentBlobName(vmId: string, diskId: string, segment: number): string {
  return `${vmId}/${diskId}/seg-${String(segment).padStart(6, '0')}`;
}

/** Prefix of every blob of a disk. */
export function diskBlobPrefix(vmId: string, diskId: string): string {
  return `${vmId}/${diskId}/`;
}

/** Part of one extent written by a batch: bytes, or zeros when `data` is absent. */
export interface ExtentPiece {
  /** Offset inside the extent. */
  start: number;
  length: number;
  data?: Uint8Array;
}

/** Everything one batch writes into one extent. */
export interface ExtentWrite {
  extentIndex: number;
  segment: number;
  blockIndex: number;
  extentOffset: number;
  extentLength: number;
  /** Sorted by `start`, non-overlapping (as the batch's records are). */
  pieces: ExtentPiece[];
  /** The pieces cover the whole extent: its previous content is not needed. */
  full: boolean;
  /** Full, and only zero records: the extent becomes the shared zero block (zeroBlockId). */
  allZero: boolean;
}

/**
 * Groups a batch's records (sorted, non-overlapping, inside the disk, as openBatch returns
 * them) by the extents they touch, in extent order. Data pieces are views, not copies.
 */
export function planExtentWrites(records: readonly BatchRecord[], diskSizeBytes: number): ExtentWrite[] {
  const writes: ExtentWrite[] = [];
  let current: (ExtentWrite & { covered: number }) | undefined;
  const flush = () => {
    if (current === undefined) return;
    const { covered, ...write } = current;
    write.full = covered === write.extentLength;
    write.allZero = write.full && write.pieces.every((p) => p.data === undefined);
    writes.push(write);
  };
  for (const r of records) {
    const length = r.kind === 'data' ? r.data.length : r.length;
    let consumed = 0;
    for (const slice of extentsForRange(r.offset, length, diskSizeBytes)) {
      if (current?.extentIndex !== slice.extentIndex) {
        flush();
        const { extentIndex, segment, blockIndex, extentOffset, extentLength } = slice;
        current = { extentIndex, segment, blockIndex, extentOffset, extentLength, pieces: [], full: false, allZero: false, covered: 0 };
      }
      const piece: ExtentPiece = { start: slice.start, length: slice.length };
      if (r.kind === 'data') piece.data = r.data.subarray(consumed, consumed + slice.length);
      current.pieces.push(piece);
      current.covered += slice.length;
      consumed += slice.length;
    }
  }
  flush();
  return writes;
}

/**
 * The content of an extent after a write: `previous` is its current content, or null for an
 * extent never written (it reads as zeros); it may be omitted when the write is full. When one
 * data record fills the extent the result is a view of that record's bytes (do not modify it).
 */
export function composeExtent(write: ExtentWrite, previous?: Uint8Array | null): Buffer {
  const only = write.pieces.length === 1 ? write.pieces[0] : undefined;
  if (only?.data && only.start === 0 && only.length === write.extentLength) {
    // one record fills the extent (the initial copy, whole-extent rewrites): a view, no copy
    return Buffer.from(only.data.buffer, only.data.byteOffset, only.length);
  }
  let out: Buffer;
  if (write.full) {
    out = Buffer.allocUnsafe(write.extentLength);
  } else if (previous === undefined) {
    throw new DomainError('INVALID_ARGUMENT', 'previous', `Extent ${write.extentIndex} is only partly written by this batch; pass its current content (or null if it was never written).`);
  } else if (previous === null) {
    out = Buffer.alloc(write.extentLength);
  } else {
    if (previous.length !== write.extentLength) {
      throw new DomainError('INVALID_ARGUMENT', 'previous', `Extent ${write.extentIndex} is ${write.extentLength} bytes; its previous content has ${previous.length}.`);
    }
    out = Buffer.from(previous);
  }
  for (const p of write.pieces) {
    if (p.data === undefined) out.fill(0, p.start, p.start + p.length);
    else out.set(p.data, p.start);
  }
  return out;
}

/**
 * Merges the extent writes of consecutive batches of one disk (in their order) into one write
 * per extent: its pieces are every batch's pieces in order, so composeExtent lets later bytes
 * win, exactly as applying the batches one after another would. Applying several queued batches
 * this way reads and rewrites each extent once instead of once per batch.
 */
export function mergeExtentWrites(lists: readonly (readonly ExtentWrite[])[]): ExtentWrite[] {
  const byExtent = new Map<number, ExtentWrite>();
  for (const list of lists) {
    for (const w of list) {
      const cur = byExtent.get(w.extentIndex);
      if (cur === undefined) byExtent.set(w.extentIndex, { ...w, pieces: [...w.pieces] });
      else cur.pieces.push(...w.pieces);
    }
  }
  const out = [...byExtent.values()].sort((a, b) => a.extentIndex - b.extentIndex);
  for (const w of out) {
    const spans = w.pieces.map((p) => [p.start, p.start + p.length] as const).sort((a, b) => a[0] - b[0]);
    let covered = 0;
    let end = 0;
    for (const [s, e] of spans) {
      if (e <= end) continue;
      covered += e - Math.max(s, end);
      end = e;
    }
    w.full = covered === w.extentLength;
    w.allZero = w.full && w.pieces.every((p) => p.data === undefined);
  }
  return out;
}
