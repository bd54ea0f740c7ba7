/**
 * The delta log of a replicated disk (design: docs/disk-log.md).
 *
 * Small scattered writes (random 4 KiB churn) would cost a 4 MiB extent rewrite each if applied
 * to the extents directly. Instead an apply whose writes are sparse appends them to the disk's
 * log: one block blob per segment and applied group, holding only the written pieces. The
 * disk's content is then its extents overlaid with its log entries in order; compaction later
 * folds a prefix of the log into the extents (each extent read and rewritten once for many
 * writes) and deletes that prefix.
 *
 * Entry format (all integers little-endian):
 *   "FLOG" | u8 version 1 | u8 reserved 0 | u16 reserved 0 | u32 pieceCount
 *   pieceCount x { u32 extentIndex | u32 start | u32 length | u8 flags (1 = data, 0 = zeros) }
 *   data of every data piece, in piece order
 *   32-byte SHA-256 of everything before it
 * Pieces are the merged extent writes of one segment (shared/domain/extents.ts), in extent
 * order; within an extent, later pieces win.
 */
import { createHash } from 'node:crypto';
import { DomainError } from './domain-error';
import { extentRange, mergeExtentWrites, segmentOfExtent, type ExtentPiece, type ExtentWrite } from './extents';

const MAGIC = Buffer.from('FLOG', 'ascii');
const VERSION = 1;
const HEADER_BYTES = 12;
const PIECE_BYTES = 13;
const HASH_BYTES = 32;

/** Where in a disk's history a log entry belongs: the last batch of the group that wrote it. */
export interface LogPosition {
  epoch: number;
  sequence: number;
}

/** Name of a log entry blob, under the disk's prefix; sorts in apply order. */
export function logEntryName(prefix: string, segment: number, position: LogPosition): string {
  return `${logSegmentPrefix(prefix, segment)}${String(position.epoch).padStart(10, '0')}-${String(position.sequence).padStart(16, '0')}`;
}

export function logPrefix(diskPrefix: string): string {
  return `${diskPrefix}log/`;
}

export function logSegmentPrefix(diskPrefix: string, segment: number): string {
  return `${logPrefix(diskPrefix)}${String(segment).padStart(6, '0')}/`;
}

/** The segment a log entry blob belongs to, from its name; undefined for a foreign name. */
export function logEntrySegment(diskPrefix: string, name: string): number | undefined {
  const rest = name.slice(logPrefix(diskPrefix).length);
  const m = /^(\d{6})\/\d{10}-\d{16}$/.exec(rest);
  return m ? Number(m[1]) : undefined;
}

/** Serializes extent writes (of one segment) as a log entry. */
export function encodeLogEntry(writes: readonly ExtentWrite[]): Buffer {
  let pieces = 0;
  let dataBytes = 0;
  for (const w of writes) {
    pieces += w.pieces.length;
    for (const p of w.pieces) if (p.data) dataBytes += p.length;
  }
  const out = Buffer.allocUnsafe(HEADER_BYTES + pieces * PIECE_BYTES + dataBytes + HASH_BYTES);
  MAGIC.copy(out, 0);
  out.writeUInt8(VERSION, 4);
  out.writeUInt8(0, 5);
  out.writeUInt16LE(0, 6);
  out.writeUInt32LE(pieces, 8);
  let table = HEADER_BYTES;
  let data = HEADER_BYTES + pieces * PIECE_BYTES;
  for (const w of writes) {
    for (const p of w.pieces) {
      out.writeUInt32LE(w.extentIndex, table);
      out.writeUInt32LE(p.start, table + 4);
      out.writeUInt32LE(p.length, table + 8);
      out.writeUInt8(p.data ? 1 : 0, table + 12);
      table += PIECE_BYTES;
      if (p.data) {
        out.set(p.data, data);
        data += p.length;
      }
    }
  }
  createHash('sha256').update(out.subarray(0, data)).digest().copy(out, data);
  return out;
}

function corrupt(message: string): DomainError {
  return new DomainError('INVALID_ARGUMENT', 'logEntry', `Log entry is damaged: ${message}`);
}

/**
 * Parses a log entry of a disk of `diskSizeBytes` back into extent writes (pieces are views of
 * `entry`). Throws a DomainError on any damage (bad magic, hash, bounds).
 */
export function decodeLogEntry(entry: Buffer, diskSizeBytes: number): ExtentWrite[] {
  logEntryTableBytes(entry, entry.length); // length, magic and version, before the hash
  const body = entry.subarray(0, entry.length - HASH_BYTES);
  if (!createHash('sha256').update(body).digest().equals(entry.subarray(entry.length - HASH_BYTES))) throw corrupt('the hash does not match.');
  const index = decodeLogEntryIndex(entry, entry.length, diskSizeBytes);
  return logWritesInRange(index, 0, Number.MAX_SAFE_INTEGER, entry, 0, diskSizeBytes);
}

/** One piece of an entry's table, with where its data lies in the entry. */
export interface LogIndexPiece {
  extentIndex: number;
  start: number;
  length: number;
  /** Offset of the piece's data in the entry; undefined for a zero piece. */
  dataOffset?: number;
}

/** An entry's piece table, read without its data (windowed compaction reads the data by ranges). */
export interface LogEntryIndex {
  /** Header and table: the bytes before the first data byte. */
  tableEnd: number;
  /** Where the data ends and the 32-byte hash begins. */
  dataEnd: number;
  pieces: LogIndexPiece[];
}

/** How many leading bytes of an entry hold its header and piece table, from its first 12 bytes. */
export function logEntryTableBytes(head: Buffer, entryBytes: number): number {
  if (head.length < HEADER_BYTES || entryBytes < HEADER_BYTES + HASH_BYTES) throw corrupt(`${entryBytes} bytes is shorter than a header.`);
  if (!head.subarray(0, 4).equals(MAGIC) || head.readUInt8(4) !== VERSION) throw corrupt('bad magic or version.');
  const tableEnd = HEADER_BYTES + head.readUInt32LE(8) * PIECE_BYTES;
  if (tableEnd + HASH_BYTES > entryBytes) throw corrupt(`${head.readUInt32LE(8)} pieces do not fit.`);
  return tableEnd;
}

/**
 * Parses an entry's header and piece table (`head` holds at least its first logEntryTableBytes
 * bytes) with the same checks as decodeLogEntry except the hash, which needs every byte: a
 * reader of ranges feeds them to a hash in order and compares it with the last 32 bytes.
 */
export function decodeLogEntryIndex(head: Buffer, entryBytes: number, diskSizeBytes: number): LogEntryIndex {
  const tableEnd = logEntryTableBytes(head, entryBytes);
  if (head.length < tableEnd) throw corrupt(`the table needs ${tableEnd} bytes; ${head.length} given.`);
  const count = head.readUInt32LE(8);
  const dataEnd = entryBytes - HASH_BYTES;
  const pieces: LogIndexPiece[] = [];
  let data = tableEnd;
  let lastExtent = -1;
  for (let i = 0; i < count; i++) {
    const at = HEADER_BYTES + i * PIECE_BYTES;
    const extentIndex = head.readUInt32LE(at);
    const start = head.readUInt32LE(at + 4);
    const length = head.readUInt32LE(at + 8);
    const hasData = head.readUInt8(at + 12) === 1;
    if (extentIndex < lastExtent) throw corrupt(`piece ${i} goes back to extent ${extentIndex}.`);
    lastExtent = extentIndex;
    const range = extentRange(extentIndex, diskSizeBytes);
    if (length === 0 || start + length > range.length) throw corrupt(`piece ${i} [${start}, +${length}) is outside extent ${extentIndex}.`);
    const piece: LogIndexPiece = { extentIndex, start, length };
    if (hasData) {
      if (data + length > dataEnd) throw corrupt(`piece ${i}'s data runs past the end.`);
      piece.dataOffset = data;
      data += length;
    }
    pieces.push(piece);
  }
  if (data !== dataEnd) throw corrupt(`${dataEnd - data} bytes follow the last piece.`);
  return { tableEnd, dataEnd, pieces };
}

/**
 * Extent writes of the pieces of `index` whose extents lie in [firstExtent, endExtent), whose
 * data is in `bytes`, which holds the entry's bytes from `bytesOffset` (at least their range).
 */
export function logWritesInRange(index: LogEntryIndex, firstExtent: number, endExtent: number, bytes: Buffer, bytesOffset: number, diskSizeBytes: number): ExtentWrite[] {
  const writes: ExtentWrite[] = [];
  let current: ExtentWrite | undefined;
  for (const p of index.pieces) {
    if (p.extentIndex < firstExtent) continue;
    if (p.extentIndex >= endExtent) break;
    if (current?.extentIndex !== p.extentIndex) {
      const range = extentRange(p.extentIndex, diskSizeBytes);
      const { segment, blockIndex } = segmentOfExtent(p.extentIndex);
      current = { extentIndex: p.extentIndex, segment, blockIndex, extentOffset: range.offset, extentLength: range.length, pieces: [], full: false, allZero: false };
      writes.push(current);
    }
    const piece: ExtentPiece = { start: p.start, length: p.length };
    if (p.dataOffset !== undefined) piece.data = bytes.subarray(p.dataOffset - bytesOffset, p.dataOffset - bytesOffset + p.length);
    current.pieces.push(piece);
  }
  return mergeExtentWrites([writes]);
}

/** The entry's data byte range [from, to) holding the pieces of extents [firstExtent, endExtent). */
export function logDataRange(index: LogEntryIndex, firstExtent: number, endExtent: number): { from: number; to: number } | undefined {
  let from: number | undefined;
  let to = 0;
  for (const p of index.pieces) {
    if (p.extentIndex < firstExtent || p.dataOffset === undefined) continue;
    if (p.extentIndex >= endExtent) break;
    from ??= p.dataOffset;
    to = p.dataOffset + p.length;
  }
  return from === undefined ? undefined : { from, to };
}

/**
 * Whether writes are sparse enough to go to the log: rewriting their extents would upload more
 * than `factor` times the bytes they write. Full extents (initial replication) never are.
 */
export function isSparse(writes: readonly ExtentWrite[], factor = 8): boolean {
  let rewrite = 0;
  let written = 0;
  for (const w of writes) {
    if (!w.full) rewrite += w.extentLength;
    for (const p of w.pieces) written += p.length;
  }
  return rewrite > factor * written;
}

/** Overlays extent writes onto `out`, which holds the disk bytes [offset, offset + out.length). */
export function overlay(out: Buffer, offset: number, writes: readonly ExtentWrite[]): void {
  const end = offset + out.length;
  for (const w of writes) {
    if (w.extentOffset >= end || w.extentOffset + w.extentLength <= offset) continue;
    for (const p of w.pieces) {
      const from = Math.max(w.extentOffset + p.start, offset);
      const to = Math.min(w.extentOffset + p.start + p.length, end);
      if (from >= to) continue;
      if (p.data) out.set(p.data.subarray(from - (w.extentOffset + p.start), to - (w.extentOffset + p.start)), from - offset);
      else out.fill(0, from - offset, to - offset);
    }
  }
}

/** Orders log positions: negative when a is earlier. */
export function comparePositions(a: LogPosition, b: LogPosition): number {
  return a.epoch !== b.epoch ? a.epoch - b.epoch : a.sequence - b.sequence;
}

/** The position an entry name carries (see logEntryName). */
export function logEntryPosition(name: string): LogPosition | undefined {
  const m = /(\d{10})-(\d{16})$/.exec(name);
  return m ? { epoch: Number(m[1]), sequence: Number(m[2]) } : undefined;
}

/**
 * A recovery-point capture waiting for compaction (docs/disk-log.md, "Recovery points"): the
 * tagged batch at `position` was applied while the log was large, so instead of folding it all
 * inline, the apply leaves this marker; while one exists every write of the disk goes to the
 * log, and the compactor folds exactly the entries up to `position`, captures, and removes it.
 */
export interface CaptureMarker {
  position: LogPosition;
  tagId: number;
  kind: 'crash-consistent' | 'app-consistent';
  capturedAt: number;
  initialReplicationComplete: boolean;
}

export function captureMarkerName(diskPrefix: string, position: LogPosition): string {
  return `${logPrefix(diskPrefix)}capture/${String(position.epoch).padStart(10, '0')}-${String(position.sequence).padStart(16, '0')}`;
}

export function isCaptureMarkerName(diskPrefix: string, name: string): boolean {
  return /^capture\/\d{10}-\d{16}$/.test(name.slice(logPrefix(diskPrefix).length));
}
