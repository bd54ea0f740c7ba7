/**
 * The mobility agent: reads a VM's disks (read-only) and hands batches of changes to a sink.
 *
 * One pass per disk, all disks in parallel:
 * 1. the change journal (TrackedDisk writes) since the last checkpoint: exactly the written
 *    sectors are sent, no rescan;
 * 2. the initial copy from where it stopped (resumable), or, when asked, a rescan of the whole
 *    disk: 4 MiB extents read through a small fixed pool of reused buffers, all-zero extents
 *    and blocks become zero records, and only 64 KiB blocks whose fingerprint differs from the
 *    persistent map are sent;
 * 3. a last batch carrying the pass's consistency tag (the same tagId on every disk), empty if
 *    the disk had nothing else to send.
 * A checkpoint (fingerprints, initial progress, journal positions) is saved only after every
 * batch it covers is durably accepted by the sink, so a crash re-sends at worst a little, and
 * never loses a change.
 */
import { read } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { ConsistencyKind } from '../../shared/domain/wire-format';
import { BATCH_DATA_BYTES, BatchBuilder, BufferPool, type PlainBatch } from './batching';
import { openSourceDisk, readFully, type SourceDisk } from './disk-io';
import { ApplianceError } from './errors';
import { closeSync } from 'node:fs';
import { FingerprintMap, FP_BLOCK_BYTES, fingerprint, UNKNOWN_FP, zeroFingerprint } from './fingerprints';
import { extentHash } from '../../shared/domain/manifest';
import type { BatchSink } from './sink';
import { loadVmState, saveVmState, vmDir, type DiskState, type VmState } from './state';
import { commitJournal, journalDir, readJournal, type DirtyRange } from './tracked-disk';

const readAsync = promisify(read);
export const EXTENT_BYTES = 4 * 1024 * 1024;
const ZERO_EXTENT = Buffer.alloc(EXTENT_BYTES);
const CHECKPOINT_MS = 5000;

export interface DiskPassStats {
  diskId: string;
  batches: number;
  firstSequence: number;
  lastSequence: number;
  dataBytes: number;
  zeroBytes: number;
  records: number;
  scannedBytes: number;
  dirtyBytes: number;
  initialComplete: boolean;
}

export interface PassResult {
  tagId?: number;
  disks: DiskPassStats[];
}

export interface ProgressEvent {
  diskId: string;
  phase: 'initial' | 'rescan' | 'delta';
  doneBytes: number;
  totalBytes: number;
  sentBytes: number;
}

export interface PassOptions {
  /** Rescan the whole disk against the fingerprints (always done for the first pass of a run). */
  rescan?: boolean;
  /** Tag the pass: its last batch on every disk carries one new tagId. */
  tag?: ConsistencyKind;
  /** Send an empty batch on a disk that had nothing to send (keeps an idle disk's RPO fresh). */
  marker?: boolean;
}

export interface AgentOptions {
  onProgress?: (e: ProgressEvent) => void;
  /** Buffers of the batch pool (8 MiB each); default 6. */
  batchBuffers?: number;
  /** How often a long pass saves its progress; default 5 s. */
  checkpointMs?: number;
}

interface DiskRun {
  d: DiskState;
  src: SourceDisk;
  fp: FingerprintMap;
  fpFile: string;
  nextSeq: number;
  readPool: BufferPool;
}

function alignDown(n: number, a: number): number {
  return Math.floor(n / a) * a;
}

export class MobilityAgent {
  readonly state: VmState;
  private readonly runs: DiskRun[] = [];
  private readonly batchPool: BufferPool;
  private started = false;

  constructor(readonly stateDir: string, readonly vmId: string, private readonly sink: BatchSink, private readonly options: AgentOptions = {}) {
    this.state = loadVmState(stateDir, vmId);
    this.batchPool = new BufferPool(options.batchBuffers ?? 6, BATCH_DATA_BYTES);
    for (const d of this.state.disks) {
      const src = openSourceDisk(d.path);
      if (src.sizeBytes !== d.sizeBytes) {
        closeSync(src.fd);
        throw new ApplianceError('BAD_STATE', `Disk ${d.path} is now ${src.sizeBytes} bytes but was ${d.sizeBytes} at enable; resizing a replicated disk needs a resync (disable and enable again).`);
      }
      const fpFile = join(vmDir(stateDir, vmId), `${d.diskId}.fp`);
      this.runs.push({ d, src, fp: FingerprintMap.load(fpFile, d.sizeBytes), fpFile, nextSeq: 0, readPool: new BufferPool(2, EXTENT_BYTES) });
    }
  }

  close(): void {
    for (const r of this.runs) closeSync(r.src.fd);
  }

  /**
   * The appliance's side of a checksum resync (docs/resync.md): every disk moves to `epoch`;
   * its source extents are hashed and compared with the replica's (`replicaHashes`); the
   * fingerprints of matching extents are set from the source and those of differing extents
   * cleared, and the disk restarts its initial copy, so the next pass sends exactly the
   * differing blocks in the new epoch (sequences from 1), flagging its last batch complete.
   */
  async resync(epoch: number, replicaHashes: (diskId: string) => Promise<Map<number, string>>): Promise<{ diskId: string; differingExtents: number }[]> {
    const out: { diskId: string; differingExtents: number }[] = [];
    for (const r of this.runs) {
      if (r.d.epoch >= epoch) continue;
      const replica = await replicaHashes(r.d.diskId);
      let differing = 0;
      await this.readExtents(r, 0, r.d.sizeBytes, async (buf, off, len) => {
        const index = off / EXTENT_BYTES;
        const same = replica.get(index) === extentHash(buf.subarray(0, len));
        if (!same) differing++;
        for (let b = off; b < off + len; b += FP_BLOCK_BYTES) {
          const blen = Math.min(FP_BLOCK_BYTES, r.d.sizeBytes - b);
          const block = buf.subarray(b - off, b - off + blen);
          r.fp.set(b / FP_BLOCK_BYTES, !same ? UNKNOWN_FP : block.equals(ZERO_EXTENT.subarray(0, blen)) ? zeroFingerprint(blen) : fingerprint(block));
        }
      });
      r.fp.save(r.fpFile);
      r.d.epoch = epoch;
      r.d.initialComplete = false;
      r.d.initialCoveredBytes = 0;
      saveVmState(this.stateDir, this.state);
      out.push({ diskId: r.d.diskId, differingExtents: differing });
    }
    this.started = false; // sequences restart at 1 in the new epoch: ask the sink again
    return out;
  }

  /** One pass over every disk; resolves when all its batches are durably accepted. */
  async pass(options: PassOptions = {}): Promise<PassResult> {
    const rescan = options.rescan ?? !this.started;
    if (!this.started) {
      for (const r of this.runs) r.nextSeq = await this.sink.nextSequence(this.vmId, r.d.diskId, r.d.epoch);
      this.started = true;
    }
    let tagId: number | undefined;
    if (options.tag) {
      tagId = this.state.nextTagId;
      this.state.nextTagId++;
      saveVmState(this.stateDir, this.state);
    }
    // every disk's pass ends before this one does (one failing must not leave the others
    // running on behind an agent that goes back to its checkpoint)
    const settled = await Promise.allSettled(this.runs.map((r) => this.passDisk(r, rescan, options, tagId)));
    const failed = settled.find((x) => x.status === 'rejected');
    if (failed) throw failed.reason;
    const disks = settled.map((x) => (x as PromiseFulfilledResult<DiskPassStats>).value);
    return { ...(tagId !== undefined ? { tagId } : {}), disks };
  }

  private async passDisk(r: DiskRun, rescan: boolean, options: PassOptions, tagId: number | undefined): Promise<DiskPassStats> {
    const { d, fp } = r;
    const size = d.sizeBytes;
    const stats: DiskPassStats = { diskId: d.diskId, batches: 0, firstSequence: r.nextSeq, lastSequence: r.nextSeq - 1, dataBytes: 0, zeroBytes: 0, records: 0, scannedBytes: 0, dirtyBytes: 0, initialComplete: d.initialComplete };
    const pending = new Set<Promise<void>>();
    let failure: unknown;
    let builder = new BatchBuilder(await this.batchPool.acquire());
    let completeSent = d.initialComplete;
    let covered = d.initialCoveredBytes;
    let lastCheckpoint = Date.now();
    const jdir = journalDir(this.stateDir, d.path);
    const journal = readJournal(jdir, d.journal);
    const phase: ProgressEvent['phase'] = !d.initialComplete ? 'initial' : rescan ? 'rescan' : 'delta';

    /** Submits the builder's batch, if any; resolves whether it did. */
    const flush = async (final: boolean): Promise<boolean> => {
      const finishing = final && !completeSent && phase === 'initial';
      const wantTag = final && tagId !== undefined;
      if (builder.empty && !finishing && !wantTag && !(final && options.marker && stats.batches === 0)) return false;
      const taken = builder.take();
      const complete = completeSent || finishing;
      const plain: PlainBatch = {
        meta: {
          vmId: this.vmId,
          diskId: d.diskId,
          epoch: d.epoch,
          sequence: r.nextSeq++,
          capturedAt: taken.firstReadAt || Date.now(),
          diskSizeBytes: size,
          initialReplicationComplete: complete,
          initialCoveredBytes: complete ? size : covered,
          ...(wantTag ? { consistency: { kind: options.tag!, tagId: tagId! } } : {}),
        },
        records: taken.records,
        data: taken.data,
      };
      if (finishing) completeSent = true;
      stats.batches++;
      stats.lastSequence = plain.meta.sequence;
      stats.records += plain.records.length;
      const buf = builder.buffer;
      let released = false;
      const release = () => {
        if (!released) {
          released = true;
          this.batchPool.release(buf);
        }
      };
      const p = this.sink.submit(plain, release).then(
        () => {
          release();
          pending.delete(p);
        },
        (err: unknown) => {
          release();
          pending.delete(p);
          failure ??= err;
        },
      );
      pending.add(p);
      if (failure) throw failure;
      if (!final) builder = new BatchBuilder(await this.batchPool.acquire());
      if (!final && Date.now() - lastCheckpoint >= (this.options.checkpointMs ?? CHECKPOINT_MS)) {
        await checkpoint(false);
        lastCheckpoint = Date.now();
      }
      return true;
    };

    const checkpoint = async (end: boolean): Promise<void> => {
      while (pending.size > 0) await Promise.all([...pending]);
      if (failure) throw failure;
      await this.sink.sync(this.vmId);
      fp.save(r.fpFile);
      if (phase === 'initial') d.initialCoveredBytes = covered;
      if (end) {
        if (completeSent) {
          d.initialComplete = true;
          d.initialCoveredBytes = size;
        }
        d.journal = commitJournal(jdir, journal);
      }
      saveVmState(this.stateDir, this.state);
    };

    const progress = (done: number, total: number) => this.options.onProgress?.({ diskId: d.diskId, phase, doneBytes: done, totalBytes: total, sentBytes: stats.dataBytes });

    const addData = async (offset: number, data: Buffer, at: number): Promise<void> => {
      if (builder.wouldOverflow(data.length)) await flush(false);
      builder.addData(offset, data, at);
      stats.dataBytes += data.length;
    };
    const addZero = async (offset: number, length: number, at: number): Promise<void> => {
      if (builder.wouldOverflow(0)) await flush(false);
      builder.addZero(offset, length, at);
      stats.zeroBytes += length;
    };

    // 1. the change journal: exactly the written sectors, in every kind of pass.
    // Outside a rescan the fingerprints of the touched blocks are then refreshed from their whole
    // content. Not in a rescan: the scan below reads every block anyway, and a refresh would make
    // a write that bypassed TrackedDisk in the same 64 KiB block look replicated, so the scan
    // would skip it (seen under load: migrate's final pass lost a plain file write next to
    // pending churn). In a rescan the fingerprint keeps meaning "what the cloud has", and a
    // touched block that differs is sent whole.
    // The journal's sectors are still sent in a rescan: an earlier delta pass may have refreshed
    // a block's fingerprint from content that already held a TrackedDisk write made after that
    // pass read the journal (the write's record is in this pass's journal). The block then
    // matches its fingerprint, and only the journal sends that write (seen in the
    // process-server-kill fault test, whose agent rescans after going back to its checkpoint:
    // one 4 KiB write lost).
    for (const range of journal.ranges) stats.dirtyBytes += range.length;
    await this.sendDirty(r, journal.ranges.map((x) => ({ ...x })), addData, addZero, phase !== 'rescan');

    // 2. the initial copy (resumed) or a rescan; records of a batch must be sorted, so the
    // journal's batch is closed first
    if (phase !== 'delta' && !builder.empty) await flush(false);
    const scanFrom = phase === 'initial' ? alignDown(d.initialCoveredBytes, FP_BLOCK_BYTES) : 0;
    if (phase !== 'delta') {
      const total = size - scanFrom;
      await this.readExtents(r, scanFrom, size, async (buf, off, len, at) => {
        for (let b = off; b < off + len; b += FP_BLOCK_BYTES) {
          const blen = Math.min(FP_BLOCK_BYTES, size - b);
          const block = buf.subarray(b - off, b - off + blen);
          const isZero = block.equals(ZERO_EXTENT.subarray(0, blen));
          const f = isZero ? zeroFingerprint(blen) : fingerprint(block);
          const idx = b / FP_BLOCK_BYTES;
          if (f !== fp.get(idx)) {
            if (phase === 'initial') covered = b;
            if (isZero) await addZero(b, blen, at);
            else await addData(b, block, at);
            fp.set(idx, f);
          }
        }
        stats.scannedBytes += len;
        if (phase === 'initial') covered = off + len;
        progress(off + len - scanFrom, total);
      });
    }

    // 3. the last batch: the tag, the completion flag, or a marker
    // the last batch's buffer is the sink's to release once submitted (a second release would
    // put it in the pool twice, and two builders would then share it); released here only if
    // there was nothing to submit
    if (!(await flush(true))) this.batchPool.release(builder.buffer);
    await checkpoint(true);
    stats.initialComplete = d.initialComplete;
    return stats;
  }

  /** Reads [from, to) in extents, one read ahead, through the disk's two reused buffers. */
  private async readExtents(r: DiskRun, from: number, to: number, each: (buf: Buffer, off: number, len: number, at: number) => Promise<void>): Promise<void> {
    const readAt = async (off: number) => {
      const buf = await r.readPool.acquire();
      const len = Math.min(EXTENT_BYTES, to - off);
      const at = Date.now();
      let pos = 0;
      while (pos < len) {
        const { bytesRead } = await readAsync(r.src.fd, buf, pos, len - pos, off + pos);
        if (bytesRead === 0) throw new ApplianceError('DISK_UNREADABLE', `Unexpected end of ${r.src.path} at ${off + pos}.`);
        pos += bytesRead;
      }
      return { buf, off, len, at };
    };
    let next = from < to ? readAt(from) : undefined;
    while (next) {
      const cur = await next;
      next = cur.off + cur.len < to ? readAt(cur.off + cur.len) : undefined;
      try {
        await each(cur.buf, cur.off, cur.len, cur.at);
      } finally {
        r.readPool.release(cur.buf);
      }
    }
  }

  /**
   * Sends the journal's ranges as written (sector granularity) and refreshes the fingerprints
   * of the 64 KiB blocks they touch. Runs of touched blocks are read with one synchronous read
   * each (page-cache reads of a few KiB to 4 MiB; random 4 KiB churn touches thousands of
   * blocks per pass, and a thread-pool hop per block would cost more than the read).
   */
  private async sendDirty(
    r: DiskRun,
    ranges: DirtyRange[],
    addData: (o: number, d: Buffer, at: number) => Promise<void>,
    addZero: (o: number, l: number, at: number) => Promise<void>,
    refreshFingerprints: boolean,
  ): Promise<void> {
    if (ranges.length === 0) return;
    const size = r.d.sizeBytes;
    const buf = await r.readPool.acquire();
    try {
      let i = 0;
      while (i < ranges.length) {
        // a run of blocks: from the first range's block to the end of the last range whose
        // block is adjacent, at most one extent
        const from = alignDown(ranges[i]!.offset, FP_BLOCK_BYTES);
        let to = Math.min(size, alignDown(ranges[i]!.offset + ranges[i]!.length + FP_BLOCK_BYTES - 1, FP_BLOCK_BYTES));
        let j = i + 1;
        while (j < ranges.length) {
          const nFrom = alignDown(ranges[j]!.offset, FP_BLOCK_BYTES);
          const nTo = Math.min(size, alignDown(ranges[j]!.offset + ranges[j]!.length + FP_BLOCK_BYTES - 1, FP_BLOCK_BYTES));
          if (nFrom > to || nTo - from > EXTENT_BYTES) break;
          to = Math.max(to, nTo);
          j++;
        }
        if (to - from > EXTENT_BYTES) to = from + EXTENT_BYTES; // one long range: split below
        const at = Date.now();
        readFully(r.src.fd, buf, to - from, from);
        // the dirty pieces, in order
        for (let k = i; k < j; k++) {
          const rg = ranges[k]!;
          const s0 = Math.max(rg.offset, from);
          const e0 = Math.min(rg.offset + rg.length, to, size);
          for (let b = alignDown(s0, FP_BLOCK_BYTES); b < e0; b += FP_BLOCK_BYTES) {
            const ps = Math.max(b, s0);
            const pe = Math.min(b + FP_BLOCK_BYTES, e0);
            const piece = buf.subarray(ps - from, pe - from);
            if (piece.equals(ZERO_EXTENT.subarray(0, piece.length))) await addZero(ps, pe - ps, at);
            else await addData(ps, piece, at);
          }
        }
        for (let b = from; refreshFingerprints && b < to; b += FP_BLOCK_BYTES) {
          // Only the journal's sectors were sent. A block never replicated whole (the initial copy
          // or a resync has not reached it) keeps its unknown fingerprint, so the scan still sends
          // all of it; refreshing it here would make the scan skip the rest of the block.
          if (r.fp.get(b / FP_BLOCK_BYTES) === UNKNOWN_FP) continue;
          const blen = Math.min(FP_BLOCK_BYTES, size - b);
          const block = buf.subarray(b - from, b - from + blen);
          r.fp.set(b / FP_BLOCK_BYTES, block.equals(ZERO_EXTENT.subarray(0, blen)) ? zeroFingerprint(blen) : fingerprint(block));
        }
        if (j === i + 1 && ranges[i]!.offset + ranges[i]!.length > to) {
          // a range longer than an extent: continue it from `to`
          const rest = ranges[i]!.offset + ranges[i]!.length - to;
          ranges[i] = { offset: to, length: rest };
          continue;
        }
        i = j;
      }
    } finally {
      r.readPool.release(buf);
    }
  }
}
