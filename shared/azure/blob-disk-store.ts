/**
 * DiskStore over Azure block blobs (layout and block ids: shared/domain/extents.ts).
 *
 * Blocks are content-addressed: a block's id is derived from the SHA-256 of its bytes. So
 * - staging the same extent twice (a redelivered batch, a retry after a crash) stages the same
 *   id with the same bytes, and an extent whose new content equals its committed content is not
 *   uploaded at all: re-applying a batch is a no-op in storage, not just in effect;
 * - every all-zero extent of a segment refers to one staged zero block, so a new segment is
 *   "committed as all zeros at once by referencing one staged zero block many times";
 * - a stale uncommitted block left by a crashed attempt can never be mistaken for other bytes.
 * Each segment commit is guarded by the ETag read with its block list (or If-None-Match * for a
 * new segment), so two writers racing on one disk cannot silently lose a write: the loser gets
 * 412 and a retryable CONCURRENT_WRITE.
 *
 * Segments come into existence when first written; a missing segment reads as zeros. A 32 TiB
 * disk therefore costs nothing until data arrives, and creating a disk writes one small
 * manifest blob.
 */
import { createHash, type Hash } from 'node:crypto';
import type { BlockBlobClient, ContainerClient } from '@azure/storage-blob';
import { isDomainError } from '../domain/domain-error';
import {
  captureMarkerName,
  comparePositions,
  decodeLogEntryIndex,
  encodeLogEntry,
  isCaptureMarkerName,
  isSparse,
  logEntryName,
  logEntryPosition,
  logEntrySegment,
  logDataRange,
  logEntryTableBytes,
  logPrefix,
  logWritesInRange,
  overlay,
  type CaptureMarker,
  type LogEntryIndex,
  type LogPosition,
} from '../domain/disk-log';
import {
  EXTENT_BYTES,
  EXTENTS_PER_SEGMENT,
  SEGMENT_BYTES,
  composeExtent,
  contentBlockId,
  diskBlobPrefix,
  mergeExtentWrites,
  planExtentWrites,
  segmentBlobName,
  segmentInfo,
  zeroBlockId,
  type ExtentWrite,
} from '../domain/extents';
import type { BatchRecord } from '../domain/wire-format';
import { DiskStoreError, type ApplyOptions, type ApplyStats, type CompactOptions, type CompactStats, type DiskLogState, type DiskRef, type DiskStore } from '../ports/disk-store';
import { faultPoint } from '../faults';
import { statusOf, runLimited, runLimitedMap } from './rest';

const LAYOUT_VERSION = 1;
/** Parallel block uploads within one apply. */
const STAGE_CONCURRENCY = 4;
/** A compaction pass folds at most about this many bytes of log per segment (bounds one run; memory is bounded by COMPACT_WINDOW_BYTES). */
export const COMPACT_PASS_BYTES = 4 * 1024 * 1024 * 1024;
/**
 * A compaction window holds about this much log data (plus the few extents being staged): the
 * memory a compaction needs, whatever the size of the log it folds.
 */
const COMPACT_WINDOW_BYTES = 128 * 1024 * 1024;
/** Parallel ranged reads of log entries. */
const READ_CONCURRENCY = 8;
/**
 * Parallel extent rewrites of a background compaction: fewer than an apply's, so that the applies
 * beside it (which the RPO waits for) keep most of the storage account's throughput.
 */
const COMPACT_CONCURRENCY = 2;
/** A compaction reads the current content of up to this many neighbouring extents with one GET (stageWrites). */
const COMPACT_RUN_EXTENTS = 4;
/** The first read of an entry: its header and, usually, its whole piece table. */
const INDEX_READ_BYTES = 256 * 1024;
/** The background compaction lock's lease, renewed every third of it. */
const COMPACT_LEASE_SECONDS = 30;
/** Reads retry when a compaction folded the log entries they were overlaying meanwhile. */
const READ_ATTEMPTS = 8;

/** One entry of a disk's delta log (docs/disk-log.md). */
export interface LogEntryInfo {
  name: string;
  segment: number;
  etag: string;
  size: number;
}

/** A segment being written: its block ids as committed, then as staged so far. */
interface OpenSegment {
  blob: BlockBlobClient;
  what: string;
  lengths: number[];
  ids: string[];
  etag: string | undefined;
  staged: Set<string>;
  uploaded: number;
}

/** A log entry index with the running hash of the bytes read so far (windowed reads). */
interface IndexedEntry {
  entry: LogEntryInfo;
  index: LogEntryIndex;
  hash: Hash;
  hashedTo: number;
  /** The whole entry, when the first read already covered it and the reader keeps it (no second read). */
  whole?: Buffer;
}

function damagedEntry(disk: DiskRef, entry: LogEntryInfo, reason: string): DiskStoreError {
  return new DiskStoreError('STORAGE_UNAVAILABLE', `Log entry ${entry.name} of ${disk.vmId}/${disk.diskId} is unreadable: ${reason}`, false);
}

function wrap(err: unknown, what: string): DiskStoreError {
  if (err instanceof DiskStoreError) return err;
  const status = statusOf(err);
  if (status === 412 || status === 409) {
    return new DiskStoreError('CONCURRENT_WRITE', `${what}: another writer changed the disk at the same time (HTTP ${status}); retry.`, true, { cause: err });
  }
  const detail = err instanceof Error ? err.message.split('\n')[0] : String(err);
  return new DiskStoreError('STORAGE_UNAVAILABLE', `${what}: storage failed (${status ?? 'no status'}: ${detail}); retry.`, true, { cause: err });
}

export class BlobDiskStore implements DiskStore {
  private readonly windowBytes: number;
  private readonly indexReadBytes: number;

  /** `options` shrink the compaction window and first index read (tests: many windows from a small log). */
  constructor(
    private readonly container: ContainerClient,
    options: { compactWindowBytes?: number; indexReadBytes?: number } = {},
  ) {
    this.windowBytes = options.compactWindowBytes ?? COMPACT_WINDOW_BYTES;
    this.indexReadBytes = Math.max(12, options.indexReadBytes ?? INDEX_READ_BYTES);
  }

  async create(disk: DiskRef, sizeBytes: number): Promise<void> {
    const manifest = this.container.getBlockBlobClient(`${diskBlobPrefix(disk.vmId, disk.diskId)}disk.json`);
    const body = JSON.stringify({ layoutVersion: LAYOUT_VERSION, sizeBytes, extentBytes: EXTENT_BYTES, segmentExtents: EXTENTS_PER_SEGMENT });
    try {
      await this.container.createIfNotExists();
      await manifest.upload(body, Buffer.byteLength(body), {
        conditions: { ifNoneMatch: '*' },
        blobHTTPHeaders: { blobContentType: 'application/json' },
      });
    } catch (err) {
      if (statusOf(err) === 409 || statusOf(err) === 412) return; // already created
      throw wrap(err, `creating disk ${disk.vmId}/${disk.diskId}`);
    }
  }

  apply(disk: DiskRef, sizeBytes: number, records: readonly BatchRecord[], options?: ApplyOptions): Promise<ApplyStats> {
    return this.applyBatches(disk, sizeBytes, [records], options);
  }

  /**
   * Writes the batches segment by segment. A segment's writes go to the delta log when they are
   * sparse (rewriting their extents would upload far more than they write) or when the segment
   * already has log entries (the log must stay the newest layer); otherwise its extents are
   * rewritten in place, as initial replication does.
   */
  async applyBatches(disk: DiskRef, sizeBytes: number, batches: readonly (readonly BatchRecord[])[], options: ApplyOptions = {}): Promise<ApplyStats> {
    const stats: ApplyStats = { extentsWritten: 0, extentsRead: 0, bytesUploaded: 0, bytesDownloaded: 0, segmentsCommitted: 0, logBytes: 0, logPendingBytes: 0 };
    let writes: ExtentWrite[];
    try {
      writes = mergeExtentWrites(batches.map((records) => planExtentWrites(records, sizeBytes)));
    } catch (err) {
      if (isDomainError(err)) throw new DiskStoreError('OUT_OF_BOUNDS', `Records do not fit the ${sizeBytes}-byte disk ${disk.vmId}/${disk.diskId}: ${err.message}`, false);
      throw err;
    }
    const bySegment = new Map<number, ExtentWrite[]>();
    for (const w of writes) {
      const list = bySegment.get(w.segment);
      if (list) list.push(w);
      else bySegment.set(w.segment, [w]);
    }
    const { entries: log, markers } = await this.listLogAll(disk);
    let pending = log.reduce((n, e) => n + e.size, 0);
    for (const [segment, segmentWrites] of bySegment) {
      const segmentLog = log.filter((e) => e.segment === segment);
      // A pending capture needs the extents as of its tag: everything after it goes to the log.
      if (options.position && (segmentLog.length > 0 || markers.length > 0 || isSparse(segmentWrites))) {
        const bytes = await this.appendLog(disk, segment, options.position, segmentWrites);
        stats.logBytes = (stats.logBytes ?? 0) + bytes;
        stats.bytesUploaded += bytes;
        pending += bytes;
        continue;
      }
      if (markers.length > 0) {
        throw new DiskStoreError('CONCURRENT_WRITE', `Writing ${disk.vmId}/${disk.diskId} without a position while a recovery-point capture waits for compaction; retry later.`, true);
      }
      if (segmentLog.length > 0) {
        // No position to order a log entry by: fold the log first, then write the extents.
        const folded = await this.compactSegment(disk, sizeBytes, segment, segmentLog);
        pending -= folded.bytesFolded;
      }
      await this.applySegment(disk, sizeBytes, segment, segmentWrites, stats);
    }
    stats.logPendingBytes = pending;
    return stats;
  }

  private async appendLog(disk: DiskRef, segment: number, position: LogPosition, writes: readonly ExtentWrite[]): Promise<number> {
    const name = logEntryName(diskBlobPrefix(disk.vmId, disk.diskId), segment, position);
    const entry = encodeLogEntry(writes);
    try {
      // A redelivered group writes the same name again: its content is that group's, which is
      // what the sequence about to be recorded says (docs/disk-log.md, "Redelivery").
      await this.container.getBlockBlobClient(name).uploadData(entry, { blockSize: 8 * 1024 * 1024, concurrency: STAGE_CONCURRENCY });
    } catch (err) {
      throw wrap(err, `appending to the log of ${disk.vmId}/${disk.diskId} segment ${segment}`);
    }
    faultPoint('disk.log-appended');
    return entry.length;
  }

  /** The disk's log entries, oldest first. */
  async listLog(disk: DiskRef): Promise<LogEntryInfo[]> {
    return (await this.listLogAll(disk)).entries;
  }

  /** Log entries (oldest first) and pending capture markers (earliest first), in one listing. */
  private async listLogAll(disk: DiskRef): Promise<{ entries: LogEntryInfo[]; markers: { name: string; position: LogPosition }[] }> {
    const prefix = diskBlobPrefix(disk.vmId, disk.diskId);
    const entries: LogEntryInfo[] = [];
    const markers: { name: string; position: LogPosition }[] = [];
    try {
      for await (const item of this.container.listBlobsFlat({ prefix: logPrefix(prefix) })) {
        if (isCaptureMarkerName(prefix, item.name)) {
          const position = logEntryPosition(item.name);
          if (position) markers.push({ name: item.name, position });
          continue;
        }
        const segment = logEntrySegment(prefix, item.name);
        if (segment === undefined) continue;
        entries.push({ name: item.name, segment, etag: item.properties.etag ?? '', size: item.properties.contentLength ?? 0 });
      }
    } catch (err) {
      if (statusOf(err) !== 404) throw wrap(err, `listing the log of ${disk.vmId}/${disk.diskId}`);
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    markers.sort((a, b) => comparePositions(a.position, b.position));
    return { entries, markers };
  }

  async logState(disk: DiskRef): Promise<DiskLogState> {
    const { entries, markers } = await this.listLogAll(disk);
    const out: CaptureMarker[] = [];
    for (const m of markers) {
      try {
        out.push(JSON.parse((await this.container.getBlockBlobClient(m.name).downloadToBuffer()).toString('utf8')) as CaptureMarker);
      } catch (err) {
        if (statusOf(err) !== 404) throw wrap(err, `reading capture marker ${m.name}`);
      }
    }
    return { pendingBytes: entries.reduce((n, e) => n + e.size, 0), captures: out };
  }

  async markCapture(disk: DiskRef, marker: CaptureMarker): Promise<void> {
    const body = JSON.stringify(marker);
    try {
      await this.container.getBlockBlobClient(captureMarkerName(diskBlobPrefix(disk.vmId, disk.diskId), marker.position)).upload(body, Buffer.byteLength(body));
    } catch (err) {
      throw wrap(err, `marking a capture of ${disk.vmId}/${disk.diskId}`);
    }
  }

  async clearCapture(disk: DiskRef, position: LogPosition): Promise<void> {
    await this.container.deleteBlob(captureMarkerName(diskBlobPrefix(disk.vmId, disk.diskId), position)).catch((err: unknown) => {
      if (statusOf(err) !== 404) throw wrap(err, `clearing a capture marker of ${disk.vmId}/${disk.diskId}`);
    });
  }

  /**
   * Folds log entries into the extents: per segment, the oldest entries up to about
   * `maxBytes` (all of them with `all`), then deletes them. Concurrent applies only append
   * newer entries; a concurrent compaction of the same segment makes one commit fail its ETag
   * and that pass starts again from a fresh listing.
   */
  async compact(disk: DiskRef, sizeBytes: number, options: CompactOptions = {}): Promise<CompactStats> {
    if (!options.exclusive) return this.compactUnlocked(disk, sizeBytes, options);
    // One background compaction per disk: a blob lease is the lock, held for the whole run and
    // renewed (hosts may be many; a second compaction would redo the same rewrite and lose its
    // ETag race at the end). A held lease means another compactor is at work: nothing to do.
    const lock = this.container.getBlockBlobClient(`${diskBlobPrefix(disk.vmId, disk.diskId)}log-lock`);
    try {
      await lock.upload('', 0, { conditions: { ifNoneMatch: '*' } });
    } catch (err) {
      if (statusOf(err) !== 409 && statusOf(err) !== 412) throw wrap(err, `creating the compaction lock of ${disk.vmId}/${disk.diskId}`);
    }
    const lease = lock.getBlobLeaseClient();
    try {
      await lease.acquireLease(COMPACT_LEASE_SECONDS);
    } catch (err) {
      if (statusOf(err) === 409) return { entriesFolded: 0, bytesFolded: 0, remainingBytes: -1, extentsWritten: 0, segmentsCommitted: 0, skipped: true };
      throw wrap(err, `locking ${disk.vmId}/${disk.diskId} for compaction`);
    }
    const renew = setInterval(() => void lease.renewLease().catch(() => undefined), (COMPACT_LEASE_SECONDS * 1000) / 3);
    try {
      return await this.compactUnlocked(disk, sizeBytes, options);
    } finally {
      clearInterval(renew);
      await lease.releaseLease().catch(() => undefined);
    }
  }

  private async compactUnlocked(disk: DiskRef, sizeBytes: number, options: CompactOptions): Promise<CompactStats> {
    const total: CompactStats = { entriesFolded: 0, bytesFolded: 0, remainingBytes: 0, extentsWritten: 0, segmentsCommitted: 0 };
    const maxBytes = options.maxBytes ?? COMPACT_PASS_BYTES;
    for (let pass = 0; ; pass++) {
      const listed = await this.listLogAll(disk);
      if (pass === 0 && options.minBytes !== undefined && listed.entries.reduce((n, e) => n + e.size, 0) < options.minBytes) {
        total.remainingBytes = listed.entries.reduce((n, e) => n + e.size, 0);
        return total;
      }
      // Never past the earliest pending capture: its extents must be exactly as of its tag.
      const limit = [options.upTo, listed.markers[0]?.position].filter((p): p is LogPosition => p !== undefined).sort(comparePositions)[0];
      const log = limit ? listed.entries.filter((e) => comparePositions(logEntryPosition(e.name) ?? limit, limit) <= 0) : listed.entries;
      const segments = [...new Set(log.map((e) => e.segment))];
      if (segments.length === 0) break;
      for (const segment of segments) {
        const entries: LogEntryInfo[] = [];
        let bytes = 0;
        for (const e of log) {
          if (e.segment !== segment) continue;
          if (entries.length > 0 && bytes + e.size > maxBytes) break;
          entries.push(e);
          bytes += e.size;
        }
        const r = await this.compactSegment(disk, sizeBytes, segment, entries);
        total.entriesFolded += r.entriesFolded;
        total.bytesFolded += r.bytesFolded;
        total.extentsWritten += r.extentsWritten;
        total.segmentsCommitted += r.segmentsCommitted;
      }
      if (!options.all || pass >= 1_000) break;
    }
    total.remainingBytes = (await this.listLog(disk)).reduce((n, e) => n + e.size, 0);
    return total;
  }

  /**
   * Folds `entries` (oldest first, all of one segment) into the segment's extents, window by
   * window, so memory does not grow with the log (docs/disk-log.md, "Compaction"):
   * 1. each entry's header and piece table are read (a ranged read; the data stays in Storage);
   * 2. the extents the entries touch are taken in windows of about COMPACT_WINDOW_BYTES of log
   *    data; for each window every entry's data for those extents (one contiguous range, as
   *    pieces are in extent order) is read, the pieces are laid over the current extents in
   *    entry order, and the new extents are staged (uncommitted);
   * 3. each entry's ranges were fed to a SHA-256 in order: it must equal the entry's stored
   *    hash before anything is committed; then one commit under the segment's ETag, and the
   *    folded entries are deleted.
   * Every read is conditional on the entry's ETag: an entry folded or rewritten meanwhile makes
   * the compaction fail as CONCURRENT_WRITE (retryable), with nothing committed.
   */
  private async compactSegment(disk: DiskRef, sizeBytes: number, segment: number, entries: readonly LogEntryInfo[]): Promise<CompactStats> {
    const stats: ApplyStats = { extentsWritten: 0, extentsRead: 0, bytesUploaded: 0, bytesDownloaded: 0, segmentsCommitted: 0 };
    const indexed = await runLimitedMap(entries, READ_CONCURRENCY, (e) => this.readLogIndex(disk, sizeBytes, e));
    // log data per extent, to size the windows
    const perExtent = new Map<number, number>();
    for (const { index } of indexed) for (const p of index.pieces) perExtent.set(p.extentIndex, (perExtent.get(p.extentIndex) ?? 0) + (p.dataOffset === undefined ? 0 : p.length));
    const extents = [...perExtent.keys()].sort((a, b) => a - b);
    const seg = await this.openSegment(disk, sizeBytes, segment);
    for (let k = 0; k < extents.length; ) {
      const first = extents[k] as number;
      let bytes = 0;
      let end = k;
      while (end < extents.length && (end === k || bytes + (perExtent.get(extents[end] as number) ?? 0) <= this.windowBytes)) bytes += perExtent.get(extents[end++] as number) ?? 0;
      const endExtent = (extents[end - 1] as number) + 1;
      const lists = await runLimitedMap(indexed, READ_CONCURRENCY, async (x) => {
        const range = logDataRange(x.index, first, endExtent);
        const data = range ? await this.entryBytes(disk, x, range.from, range.to) : Buffer.alloc(0);
        if (range) {
          if (range.from !== x.hashedTo) throw new DiskStoreError('STORAGE_UNAVAILABLE', `Compacting ${disk.vmId}/${disk.diskId} segment ${segment}: entry ${x.entry.name} would be hashed out of order (${range.from} after ${x.hashedTo}).`, false);
          x.hash.update(data);
          x.hashedTo = range.to;
        }
        return logWritesInRange(x.index, first, endExtent, data, range?.from ?? 0, sizeBytes);
      });
      await this.stageWrites(seg, mergeExtentWrites(lists), stats, COMPACT_CONCURRENCY, COMPACT_RUN_EXTENTS);
      k = end;
    }
    // every entry's bytes were hashed in order: compare with the stored hash before committing
    await runLimitedMap(indexed, READ_CONCURRENCY, async (x) => {
      if (x.hashedTo !== x.index.dataEnd) throw new DiskStoreError('STORAGE_UNAVAILABLE', `Compacting ${disk.vmId}/${disk.diskId} segment ${segment}: entry ${x.entry.name} was read up to ${x.hashedTo} of ${x.index.dataEnd} bytes.`, false);
      const stored = await this.entryBytes(disk, x, x.index.dataEnd, x.entry.size);
      if (!x.hash.digest().equals(stored)) throw damagedEntry(disk, x.entry, 'Log entry is damaged: the hash does not match.');
    });
    await this.commitSegment(seg, stats);
    faultPoint('disk.log-folded');
    await runLimitedMap(entries, READ_CONCURRENCY, async (e) => {
      await this.container.deleteBlob(e.name, { conditions: { ifMatch: e.etag } }).catch((err: unknown) => {
        const status = statusOf(err);
        // 404: another compaction deleted it; 412: a redelivery rewrote it, so it stays (folding
        // it again later is harmless: entries are absolute writes replayed in order).
        if (status !== 404 && status !== 412) throw wrap(err, `deleting folded log entry ${e.name}`);
      });
    });
    return { entriesFolded: entries.length, bytesFolded: entries.reduce((n, e) => n + e.size, 0), remainingBytes: 0, extentsWritten: stats.extentsWritten, segmentsCommitted: stats.segmentsCommitted };
  }

  /**
   * An entry's header and piece table, read by range (the data is read later, window by window).
   * With `keepWhole`, an entry that the first read covered whole is kept for entryBytes; a
   * compaction does not keep them (its memory must not grow with the number of entries).
   */
  private async readLogIndex(disk: DiskRef, sizeBytes: number, entry: LogEntryInfo, keepWhole = false): Promise<IndexedEntry> {
    const unreadable = (err: unknown) => damagedEntry(disk, entry, err instanceof Error ? err.message : String(err));
    let head = await this.readLogRange(disk, entry, 0, Math.min(entry.size, this.indexReadBytes));
    let tableEnd: number;
    try {
      tableEnd = logEntryTableBytes(head, entry.size);
    } catch (err) {
      throw unreadable(err);
    }
    if (tableEnd > head.length) head = Buffer.concat([head, await this.readLogRange(disk, entry, head.length, tableEnd)]);
    let index: LogEntryIndex;
    try {
      index = decodeLogEntryIndex(head, entry.size, sizeBytes);
    } catch (err) {
      throw unreadable(err);
    }
    const hash = createHash('sha256').update(head.subarray(0, index.tableEnd));
    return { entry, index, hash, hashedTo: index.tableEnd, ...(keepWhole && head.length === entry.size ? { whole: head } : {}) };
  }

  /** Bytes [from, to) of an indexed entry: from its first read if that covered them, else read. */
  private entryBytes(disk: DiskRef, x: IndexedEntry, from: number, to: number): Promise<Buffer> {
    return x.whole ? Promise.resolve(x.whole.subarray(from, to)) : this.readLogRange(disk, x.entry, from, to);
  }

  /**
   * The writes of a log entry that touch the disk bytes [offset, offset + length): its piece
   * table, then only the data range of those extents (a 4 KiB read of a disk with a large log
   * reads a few KiB of each entry, not the whole log). When the range is the entry's whole data
   * the entry's hash is checked as in a full read. Undefined if the entry was folded or
   * rewritten meanwhile.
   */
  private async readLogEntryFor(disk: DiskRef, sizeBytes: number, entry: LogEntryInfo, offset: number, length: number): Promise<ExtentWrite[] | undefined> {
    const firstExtent = Math.floor(offset / EXTENT_BYTES);
    const endExtent = Math.ceil((offset + Math.max(length, 1)) / EXTENT_BYTES);
    try {
      const x = await this.readLogIndex(disk, sizeBytes, entry, true);
      const range = logDataRange(x.index, firstExtent, endExtent);
      if (!range) return logWritesInRange(x.index, firstExtent, endExtent, Buffer.alloc(0), 0, sizeBytes);
      const whole = range.from === x.index.tableEnd && range.to === x.index.dataEnd;
      const bytes = await this.entryBytes(disk, x, range.from, whole ? entry.size : range.to);
      const data = bytes.subarray(0, range.to - range.from);
      if (whole && !x.hash.update(data).digest().equals(bytes.subarray(data.length))) throw damagedEntry(disk, entry, 'Log entry is damaged: the hash does not match.');
      return logWritesInRange(x.index, firstExtent, endExtent, data, range.from, sizeBytes);
    } catch (err) {
      if (err instanceof DiskStoreError && err.code === 'CONCURRENT_WRITE') return undefined;
      throw err;
    }
  }

  /** Bytes [from, to) of a log entry, only if it is still the entry listed (its ETag). */
  private async readLogRange(disk: DiskRef, entry: LogEntryInfo, from: number, to: number): Promise<Buffer> {
    if (to <= from) return Buffer.alloc(0);
    try {
      return await this.container.getBlockBlobClient(entry.name).downloadToBuffer(from, to - from, { conditions: { ifMatch: entry.etag }, concurrency: 1, blockSize: to - from });
    } catch (err) {
      const status = statusOf(err);
      if (status === 404 || status === 412) {
        throw new DiskStoreError('CONCURRENT_WRITE', `Log entry ${entry.name} of ${disk.vmId}/${disk.diskId} (segment ${entry.segment}) was folded or rewritten meanwhile; retry.`, true);
      }
      throw wrap(err, `reading log entry ${entry.name}`);
    }
  }

  /** Extents of segments `segments` that pending log entries write to (for hash manifests). */
  async loggedExtents(disk: DiskRef, sizeBytes: number, segments?: ReadonlySet<number>): Promise<Set<number>> {
    const out = new Set<number>();
    for (const e of await this.listLog(disk)) {
      if (segments && !segments.has(e.segment)) continue;
      try {
        // the piece table is enough to know the extents
        for (const p of (await this.readLogIndex(disk, sizeBytes, e)).index.pieces) out.add(p.extentIndex);
      } catch (err) {
        if (!(err instanceof DiskStoreError && err.code === 'CONCURRENT_WRITE')) throw err; // a folded entry's extents are in the blocks now
      }
    }
    return out;
  }

  private async applySegment(disk: DiskRef, sizeBytes: number, segment: number, writes: ExtentWrite[], stats: ApplyStats): Promise<void> {
    const seg = await this.openSegment(disk, sizeBytes, segment);
    await this.stageWrites(seg, writes, stats);
    await this.commitSegment(seg, stats);
  }

  /** A segment's committed block list (every extent's block id), to stage writes against and commit. */
  private async openSegment(disk: DiskRef, sizeBytes: number, segment: number): Promise<OpenSegment> {
    const blob = this.container.getBlockBlobClient(segmentBlobName(disk.vmId, disk.diskId, segment));
    const what = `applying to ${disk.vmId}/${disk.diskId} segment ${segment}`;
    const info = segmentInfo(segment, sizeBytes);
    const lengths = Array.from({ length: info.extentCount }, (_, i) => Math.min(EXTENT_BYTES, sizeBytes - (info.firstExtent + i) * EXTENT_BYTES));
    try {
      const list = await blob.getBlockList('committed');
      const blocks = list.committedBlocks ?? [];
      if (blocks.length !== lengths.length || blocks.some((b, i) => b.size !== lengths[i])) {
        throw new DiskStoreError('STORAGE_UNAVAILABLE', `${what}: the segment has ${blocks.length} blocks, expected ${lengths.length} extents; it was not written by Ferry's layout ${LAYOUT_VERSION}.`, false);
      }
      return { blob, what, lengths, ids: blocks.map((b) => b.name), etag: list.etag, staged: new Set(), uploaded: 0 };
    } catch (err) {
      if (statusOf(err) !== 404) throw wrap(err, what);
      // a segment never written reads as zeros
      return { blob, what, lengths, ids: lengths.map((len) => zeroBlockId(len)), etag: undefined, staged: new Set(), uploaded: 0 };
    }
  }

  /**
   * Composes and stages the writes' extents (uncommitted until commitSegment), at most
   * `concurrency` at a time: memory holds a few 4 MiB extents, never all the extents a large
   * batch touches.
   *
   * With `runExtents` > 1 (a compaction, whose windows rewrite runs of neighbouring extents),
   * up to that many neighbouring extents that need their current content are read with one
   * ranged GET and staged one after another: fewer, larger reads (each GET has a fixed cost,
   * and Azurite hashes every read of 4 MiB or less twice over).
   */
  private async stageWrites(seg: OpenSegment, writes: readonly ExtentWrite[], stats: ApplyStats, concurrency = STAGE_CONCURRENCY, runExtents = 1): Promise<void> {
    const { blob, ids, staged, what } = seg;
    const runs = extentRuns(writes, runExtents, (w) => needsPrevious(w, ids[w.blockIndex]));
    try {
      await runLimited(runs, concurrency, async (run) => {
        const previous = run.length > 1 ? await this.readRun(blob, run, stats, what) : undefined;
        for (const [i, w] of run.entries()) {
          const currentId = ids[w.blockIndex] ?? zeroBlockId(w.extentLength);
          // a zero extent is named without its bytes, which are made only if the block is staged here
          const content = w.allZero ? undefined : previous ? composeExtent(w, previous[i]) : await this.extentContent(blob, w, currentId, stats, what);
          const id = content ? contentBlockId(content) : zeroBlockId(w.extentLength);
          if (id === currentId) continue; // unchanged: a redelivered batch lands here
          ids[w.blockIndex] = id;
          if (staged.has(id)) continue;
          staged.add(id);
          const body = content ?? Buffer.alloc(w.extentLength);
          await blob.stageBlock(id, body, body.length);
          seg.uploaded += body.length;
        }
      });
    } catch (err) {
      throw wrap(err, what);
    }
  }

  /** The current content of a run of neighbouring extents (extentRuns), with one ranged GET. */
  private async readRun(blob: BlockBlobClient, run: readonly ExtentWrite[], stats: ApplyStats, what: string): Promise<Buffer[]> {
    const first = run[0] as ExtentWrite;
    const last = run[run.length - 1] as ExtentWrite;
    const from = first.blockIndex * EXTENT_BYTES;
    const length = last.blockIndex * EXTENT_BYTES + last.extentLength - from;
    let all: Buffer;
    try {
      all = await blob.downloadToBuffer(from, length, { concurrency: 1, blockSize: length });
    } catch (err) {
      throw wrap(err, what);
    }
    stats.extentsRead += run.length;
    stats.bytesDownloaded += length;
    return run.map((w) => all.subarray(w.blockIndex * EXTENT_BYTES - from, w.blockIndex * EXTENT_BYTES - from + w.extentLength));
  }

  /** Commits the staged block list under the ETag the list was read with (If-None-Match * for a new segment). */
  private async commitSegment(seg: OpenSegment, stats: ApplyStats): Promise<void> {
    const { blob, ids, staged, what, lengths } = seg;
    try {
      if (seg.etag === undefined) {
        // New segment: its untouched extents refer to the zero block(s), which must be staged too.
        for (const [i, len] of lengths.entries()) {
          const zid = zeroBlockId(len);
          if (ids[i] !== zid || staged.has(zid)) continue;
          staged.add(zid);
          await blob.stageBlock(zid, Buffer.alloc(len), len);
          seg.uploaded += len;
        }
      }
    } catch (err) {
      throw wrap(err, what);
    }
    if (staged.size === 0) return;
    stats.extentsWritten += staged.size;
    stats.bytesUploaded += seg.uploaded;
    faultPoint('disk.blocks-staged');
    try {
      await blob.commitBlockList(ids, { conditions: seg.etag === undefined ? { ifNoneMatch: '*' } : { ifMatch: seg.etag } });
    } catch (err) {
      throw wrap(err, what);
    }
    stats.segmentsCommitted++;
    faultPoint('disk.segment-committed');
  }

  /** The extent's new bytes: the write laid over its current content (read only when needed). */
  private async extentContent(blob: BlockBlobClient, w: ExtentWrite, currentId: string, stats: ApplyStats, what: string): Promise<Buffer> {
    if (w.allZero) return Buffer.alloc(w.extentLength);
    if (w.full || currentId === zeroBlockId(w.extentLength)) return composeExtent(w, null);
    let previous: Buffer;
    try {
      previous = await blob.downloadToBuffer(w.blockIndex * EXTENT_BYTES, w.extentLength);
    } catch (err) {
      throw wrap(err, what);
    }
    stats.extentsRead++;
    stats.bytesDownloaded += w.extentLength;
    return composeExtent(w, previous);
  }

  /**
   * Reads the extents, then overlays the pending log entries of the segments read, in order. A
   * compaction may fold entries meanwhile (its extents may then already hold newer writes than
   * an older entry); the listing is checked again afterwards and the read repeated if it changed.
   */
  async read(disk: DiskRef, sizeBytes: number, offset: number, length: number): Promise<Buffer> {
    if (offset < 0 || length < 0 || offset + length > sizeBytes) {
      throw new DiskStoreError('OUT_OF_BOUNDS', `Read of ${length} bytes at ${offset} is outside the ${sizeBytes}-byte disk ${disk.vmId}/${disk.diskId}.`, false);
    }
    const first = Math.floor(offset / SEGMENT_BYTES);
    const last = Math.floor((offset + Math.max(length, 1) - 1) / SEGMENT_BYTES);
    for (let attempt = 0; ; attempt++) {
      const log = (await this.listLog(disk)).filter((e) => e.segment >= first && e.segment <= last);
      const out = await this.readExtents(disk, sizeBytes, offset, length);
      if (log.length === 0) return out;
      let intact = true;
      for (const e of log) {
        const writes = await this.readLogEntryFor(disk, sizeBytes, e, offset, length);
        if (!writes) {
          intact = false;
          break;
        }
        overlay(out, offset, writes);
      }
      if (intact) {
        const now = new Map((await this.listLog(disk)).map((e) => [e.name, e.etag]));
        if (log.every((e) => now.get(e.name) === e.etag)) return out;
      }
      if (attempt + 1 >= READ_ATTEMPTS) {
        throw new DiskStoreError('CONCURRENT_WRITE', `Reading ${disk.vmId}/${disk.diskId}: its log was compacted during ${READ_ATTEMPTS} attempts in a row; retry.`, true);
      }
    }
  }

  private async readExtents(disk: DiskRef, sizeBytes: number, offset: number, length: number): Promise<Buffer> {
    const out = Buffer.alloc(length);
    let pos = offset;
    while (pos < offset + length) {
      const segment = Math.floor(pos / SEGMENT_BYTES);
      const segStart = segment * SEGMENT_BYTES;
      const end = Math.min(offset + length, segStart + SEGMENT_BYTES, sizeBytes);
      const blob = this.container.getBlockBlobClient(segmentBlobName(disk.vmId, disk.diskId, segment));
      try {
        // 16 MiB ranges, 4 at a time: a migration or a verify reads whole disks
        const part = await blob.downloadToBuffer(pos - segStart, end - pos, { blockSize: 16 * 1024 * 1024, concurrency: 4 });
        part.copy(out, pos - offset);
      } catch (err) {
        if (statusOf(err) !== 404) throw wrap(err, `reading ${disk.vmId}/${disk.diskId}`);
        out.fill(0, pos - offset, end - offset); // a segment never written reads as zeros
      }
      pos = end;
    }
    return out;
  }

  async delete(disk: DiskRef): Promise<void> {
    try {
      for await (const item of this.container.listBlobsFlat({ prefix: diskBlobPrefix(disk.vmId, disk.diskId) })) {
        await this.container.deleteBlob(item.name, { deleteSnapshots: 'include' }).catch(async (err: unknown) => {
          if (statusOf(err) === 404) return;
          if (statusOf(err) !== 412) throw err;
          // The compaction lock of a compactor still running: break its lease, then delete.
          await this.container.getBlobClient(item.name).getBlobLeaseClient().breakLease(0);
          await this.container.deleteBlob(item.name);
        });
      }
    } catch (err) {
      if (statusOf(err) === 404) return;
      throw wrap(err, `deleting ${disk.vmId}/${disk.diskId}`);
    }
  }
}

/** Whether staging `w` needs the extent's current bytes (a partial write over a written extent). */
function needsPrevious(w: ExtentWrite, currentId: string | undefined): boolean {
  return !w.allZero && !w.full && (currentId ?? zeroBlockId(w.extentLength)) !== zeroBlockId(w.extentLength);
}

/**
 * The writes in block order, grouped into runs of at most `maxRun` neighbouring extents that all
 * need their current content (read together); every other write is a run of its own.
 */
export function extentRuns(writes: readonly ExtentWrite[], maxRun: number, needs: (w: ExtentWrite) => boolean): ExtentWrite[][] {
  const sorted = [...writes].sort((a, b) => a.blockIndex - b.blockIndex);
  const runs: ExtentWrite[][] = [];
  let run: ExtentWrite[] = [];
  for (const w of sorted) {
    const prev = run[run.length - 1];
    const joins = maxRun > 1 && needs(w) && prev !== undefined && needs(prev) && prev.blockIndex + 1 === w.blockIndex && run.length < maxRun;
    if (!joins && run.length > 0) {
      runs.push(run);
      run = [];
    }
    run.push(w);
  }
  if (run.length > 0) runs.push(run);
  return runs;
}
