/**
 * Building batches from changed ranges: records are coalesced (adjacent data, adjacent zeros),
 * data is copied into one buffer per batch taken from a small fixed pool, and a batch is closed
 * when its data would pass BATCH_DATA_BYTES. Pure apart from the buffer it fills.
 */
import { MAX_RECORDS, type Batch, type BatchRecord } from '../../shared/domain/wire-format';

export const BATCH_DATA_BYTES = 16 * 1024 * 1024;

export interface RecordDesc {
  kind: 'data' | 'zero';
  offset: number;
  length: number;
}

export type BatchMeta = Omit<Batch, 'records'>;

/**
 * A batch before sealing: record descriptors plus the data of the data records, back to
 * back in record order. This is what crosses to a seal worker or to a process server.
 */
export interface PlainBatch {
  meta: BatchMeta;
  records: RecordDesc[];
  data: Buffer;
}

/** The wire-format records of a plain batch (data records are views into `data`). */
export function toRecords(plain: Pick<PlainBatch, 'records' | 'data'>): BatchRecord[] {
  let pos = 0;
  return plain.records.map((r) => {
    if (r.kind === 'zero') return { kind: 'zero', offset: r.offset, length: r.length };
    const data = plain.data.subarray(pos, pos + r.length);
    pos += r.length;
    return { kind: 'data', offset: r.offset, data };
  });
}

export function dataBytesOf(records: readonly RecordDesc[]): number {
  let n = 0;
  for (const r of records) if (r.kind === 'data') n += r.length;
  return n;
}

/** Accumulates records into one batch; the caller closes it when `wouldOverflow`. */
export class BatchBuilder {
  records: RecordDesc[] = [];
  dataBytes = 0;
  zeroBytes = 0;
  /** When the first byte of this batch was read (the batch's capture time). */
  firstReadAt = 0;

  constructor(public buffer: Buffer) {}

  get empty(): boolean {
    return this.records.length === 0;
  }

  wouldOverflow(dataLength: number): boolean {
    return this.records.length >= MAX_RECORDS - 2 || this.dataBytes + dataLength > Math.min(this.buffer.length, BATCH_DATA_BYTES);
  }

  private noteRead(readAt: number): void {
    if (this.firstReadAt === 0 || readAt < this.firstReadAt) this.firstReadAt = readAt;
  }

  addData(offset: number, src: Uint8Array, readAt: number): void {
    this.noteRead(readAt);
    src.length > 0 && this.buffer.set(src, this.dataBytes);
    this.dataBytes += src.length;
    const last = this.records[this.records.length - 1];
    if (last && last.kind === 'data' && last.offset + last.length === offset) last.length += src.length;
    else this.records.push({ kind: 'data', offset, length: src.length });
  }

  addZero(offset: number, length: number, readAt: number): void {
    this.noteRead(readAt);
    this.zeroBytes += length;
    const last = this.records[this.records.length - 1];
    if (last && last.kind === 'zero' && last.offset + last.length === offset) last.length += length;
    else this.records.push({ kind: 'zero', offset, length });
  }

  /** Takes the records and data; the builder is empty afterwards and needs a new buffer. */
  take(): { records: RecordDesc[]; data: Buffer; firstReadAt: number } {
    const out = { records: this.records, data: this.buffer.subarray(0, this.dataBytes), firstReadAt: this.firstReadAt };
    this.records = [];
    this.dataBytes = 0;
    this.zeroBytes = 0;
    this.firstReadAt = 0;
    return out;
  }
}

/** A small fixed pool of equal buffers (SharedArrayBuffer-backed, so workers read them in place). */
export class BufferPool {
  private readonly free: Buffer[] = [];
  private readonly waiters: ((b: Buffer) => void)[] = [];

  constructor(count: number, readonly size: number) {
    for (let i = 0; i < count; i++) this.free.push(Buffer.from(new SharedArrayBuffer(size)));
  }

  acquire(): Promise<Buffer> {
    const b = this.free.pop();
    if (b) return Promise.resolve(b);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  release(b: Buffer): void {
    const whole = Buffer.from(b.buffer, 0, this.size);
    const w = this.waiters.shift();
    if (w) w(whole);
    else this.free.push(whole);
  }
}
