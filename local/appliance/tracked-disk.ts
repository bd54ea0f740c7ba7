/**
 * Write interception where writes pass through Ferry, as the mobility service's filter driver
 * does: `TrackedDisk.write(offset, data)` writes the image and records the dirty range, so the
 * agent sends exactly the written sectors without rescanning the disk.
 *
 * The change journal of a disk is a directory `<stateDir>/tracked/<key>/` (key: a hash of the
 * disk's real path) of append-only segment files of 16-byte records (u64 offset, u64 length,
 * little-endian, sector-aligned). Each writer appends to its own `<time>-<pid>-<rand>.active`
 * segment and renames it to `.done` when it closes or rotates (every 4 MiB of journal).
 *
 * Every write is journaled twice: once before the data is written (so a crash cannot lose
 * the range) and once after (so an agent that read the first record and then the old data
 * sees the range again on its next pass). The agent reads records, then the data: whatever
 * interleaving, the newest data of every range is read after its last record.
 */
import { randomBytes, createHash } from 'node:crypto';
import { closeSync, existsSync, fstatSync, mkdirSync, openSync, readSync, readdirSync, realpathSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { ApplianceError } from './errors';
import { diskSizeOf } from './disk-io';

export const SECTOR = 512;
const RECORD_BYTES = 16;
const ROTATE_BYTES = 4 * 1024 * 1024;

export function journalDir(stateDir: string, diskPath: string): string {
  let real = diskPath;
  try {
    real = realpathSync(diskPath);
  } catch {
    // a missing disk is reported by whoever opens it
  }
  return join(stateDir, 'tracked', createHash('sha256').update(real).digest('hex').slice(0, 16));
}

export class TrackedDisk {
  private journalFd = -1;
  private journalFile = '';
  private journalBytes = 0;
  private readonly record = Buffer.alloc(2 * RECORD_BYTES);

  private constructor(
    readonly path: string,
    readonly sizeBytes: number,
    private readonly fd: number,
    private readonly dir: string,
  ) {}

  static open(path: string, stateDir: string): TrackedDisk {
    if (!existsSync(path)) throw new ApplianceError('DISK_NOT_FOUND', `Disk ${path} does not exist.`);
    const fd = openSync(path, 'r+');
    const dir = journalDir(stateDir, path);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const disk = new TrackedDisk(path, diskSizeOf(path, fd), fd, dir);
    disk.rotate();
    return disk;
  }

  private rotate(): void {
    if (this.journalFd >= 0) {
      closeSync(this.journalFd);
      renameSync(this.journalFile, this.journalFile.replace(/\.active$/, '.done'));
    }
    const name = `${Date.now().toString().padStart(14, '0')}-${process.pid}-${randomBytes(4).toString('hex')}.active`;
    this.journalFile = join(this.dir, name);
    this.journalFd = openSync(this.journalFile, 'a', 0o600);
    this.journalBytes = 0;
  }

  private journal(offset: number, length: number): void {
    this.record.writeBigUInt64LE(BigInt(offset), 0);
    this.record.writeBigUInt64LE(BigInt(length), 8);
    writeSync(this.journalFd, this.record, 0, RECORD_BYTES);
    this.journalBytes += RECORD_BYTES;
  }

  /** Writes `data` at `offset`; the dirty range is widened to whole sectors. */
  write(offset: number, data: Uint8Array): void {
    if (offset < 0 || offset + data.length > this.sizeBytes) {
      throw new ApplianceError('BAD_ARGUMENT', `A write of ${data.length} bytes at ${offset} does not fit in ${this.path} (${this.sizeBytes} bytes).`);
    }
    const start = Math.floor(offset / SECTOR) * SECTOR;
    const end = Math.ceil((offset + data.length) / SECTOR) * SECTOR;
    this.journal(start, end - start);
    let pos = 0;
    while (pos < data.length) pos += writeSync(this.fd, data, pos, data.length - pos, offset + pos);
    this.journal(start, end - start);
    if (this.journalBytes >= ROTATE_BYTES) this.rotate();
  }

  close(): void {
    if (this.journalFd >= 0) {
      closeSync(this.journalFd);
      renameSync(this.journalFile, this.journalFile.replace(/\.active$/, '.done'));
      this.journalFd = -1;
    }
    closeSync(this.fd);
  }
}

export interface DirtyRange {
  offset: number;
  length: number;
}

export interface JournalRead {
  ranges: DirtyRange[];
  /** Segment name -> bytes consumed after this read; commit it once the ranges are handed over. */
  positions: Record<string, number>;
  /** `.done` segments read to their end: delete them once the positions are committed. */
  finished: string[];
}

/**
 * Reads the records appended since `positions`, merged into sorted, non-overlapping ranges.
 */
export function readJournal(dir: string, positions: Record<string, number>): JournalRead {
  const out: JournalRead = { ranges: [], positions: {}, finished: [] };
  if (!existsSync(dir)) return out;
  const raw: DirtyRange[] = [];
  for (const name of readdirSync(dir).sort()) {
    if (!name.endsWith('.active') && !name.endsWith('.done')) continue;
    const base = name.replace(/\.(active|done)$/, '');
    const file = join(dir, name);
    let fd: number;
    try {
      fd = openSync(file, 'r');
    } catch {
      continue; // renamed from .active to .done between listing and opening: seen next time
    }
    try {
      const size = fstatSync(fd).size;
      const from = positions[base] ?? 0;
      const to = from + Math.floor((size - from) / RECORD_BYTES) * RECORD_BYTES;
      if (to > from) {
        const buf = Buffer.alloc(to - from);
        readSync(fd, buf, 0, buf.length, from);
        for (let p = 0; p < buf.length; p += RECORD_BYTES) {
          raw.push({ offset: Number(buf.readBigUInt64LE(p)), length: Number(buf.readBigUInt64LE(p + 8)) });
        }
      }
      out.positions[base] = to;
      if (name.endsWith('.done') && to === size) out.finished.push(name);
    } finally {
      closeSync(fd);
    }
  }
  out.ranges = mergeRanges(raw);
  return out;
}

/** Sorts and merges overlapping or adjacent ranges. */
export function mergeRanges(ranges: DirtyRange[]): DirtyRange[] {
  const sorted = [...ranges].sort((a, b) => a.offset - b.offset);
  const out: DirtyRange[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.offset <= last.offset + last.length) {
      last.length = Math.max(last.length, r.offset + r.length - last.offset);
    } else {
      out.push({ ...r });
    }
  }
  return out;
}

/** Deletes finished segments and drops positions of segments that no longer exist. */
export function commitJournal(dir: string, read: JournalRead): Record<string, number> {
  const positions = { ...read.positions };
  for (const name of read.finished) {
    rmSync(join(dir, name), { force: true });
    delete positions[name.replace(/\.done$/, '')];
  }
  return positions;
}

export function hasJournal(dir: string): boolean {
  return existsSync(dir) && statSync(dir).isDirectory();
}
