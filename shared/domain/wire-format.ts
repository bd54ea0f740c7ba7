/**
 * The sealed-batch wire format, version 1: byte layouts, limits and every check, as pure
 * functions over buffers. docs/wire-format.md is the specification; section names below
 * refer to it. Compression and encryption live in shared/codec/batch.ts, which composes
 * these pieces; nothing here does I/O, reads the clock or draws random numbers.
 */
import { ID_MAX_LENGTH, ID_PATTERN, MAX_DISK_SIZE_BYTES, SECTOR_SIZE } from './ids';
import { WireFormatError } from './wire-format-error';

// ---- constants (see "Sealed batch layout") -----------------------------------------------

export const MAGIC = Buffer.from('FRYB', 'ascii');
export const FORMAT_VERSION = 1;
/** Bytes before the ciphertext: header fields, id slots and nonce. All of it is GCM AAD. */
export const PREFIX_BYTES = 208;
export const NONCE_OFFSET = 196;
export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;
export const DIGEST_BYTES = 32;
export const KEY_BYTES = 32;
export const RECORD_HEADER_BYTES = 24;
/** The smallest possible sealed batch: prefix, digest, empty compressed stream, tag. */
export const MIN_SEALED_BYTES = PREFIX_BYTES + DIGEST_BYTES + TAG_BYTES;

export const MAX_RECORD_STREAM_BYTES = 64 * 1024 * 1024;
/** Digest + compressed stream; zstd and brotli expand incompressible input by far less. */
export const MAX_PAYLOAD_BYTES = MAX_RECORD_STREAM_BYTES + 1024 * 1024;
export const MAX_RECORDS = 131_072;
/** Date's own range: 8.64e15 ms after the epoch. */
export const MAX_CAPTURED_AT = 8.64e15;
const MAX_U32 = 0xffff_ffff;

const OFF = {
  magic: 0,
  formatVersion: 4,
  codec: 5,
  consistency: 6,
  flags: 7,
  keyId: 8,
  epoch: 12,
  sequence: 16,
  capturedAt: 24,
  diskSizeBytes: 32,
  initialCoveredBytes: 40,
  tagId: 48,
  recordCount: 56,
  recordStreamBytes: 60,
  payloadBytes: 64,
  vmIdLength: 68,
  vmId: 69,
  diskIdLength: 132,
  diskId: 133,
  nonce: NONCE_OFFSET,
} as const;

const FLAG_INITIAL_REPLICATION_COMPLETE = 0x01;
const KNOWN_FLAGS = FLAG_INITIAL_REPLICATION_COMPLETE;

export type CodecName = 'none' | 'zstd' | 'brotli';
export const CODEC_IDS: Readonly<Record<CodecName, number>> = { none: 0, zstd: 1, brotli: 2 };
const CODEC_NAMES: readonly CodecName[] = ['none', 'zstd', 'brotli'];

export type ConsistencyKind = 'crash-consistent' | 'app-consistent';
const CONSISTENCY_IDS: Readonly<Record<ConsistencyKind, number>> = { 'crash-consistent': 1, 'app-consistent': 2 };

// ---- types -------------------------------------------------------------------------------

export interface DataRecord {
  kind: 'data';
  /** Bytes from the start of the disk; multiple of 512. */
  offset: number;
  /** The bytes to write; length a non-zero multiple of 512. */
  data: Uint8Array;
}

export interface ZeroRecord {
  kind: 'zero';
  offset: number;
  /** Bytes that read as zero; a non-zero multiple of 512. */
  length: number;
}

export type BatchRecord = DataRecord | ZeroRecord;

export interface ConsistencyTag {
  kind: ConsistencyKind;
  /** Shared by all disks of the VM for one point in time; 1..2^53-1. */
  tagId: number;
}

/** What the appliance seals (docs/wire-format.md, "Semantics"). */
export interface Batch {
  vmId: string;
  diskId: string;
  /** 1 on enable, +1 per resync. */
  epoch: number;
  /** 1, 2, 3... within the epoch. */
  sequence: number;
  /** ms since the Unix epoch when the data was read. */
  capturedAt: number;
  diskSizeBytes: number;
  /** Default false. */
  initialReplicationComplete?: boolean;
  /** High-water mark of the initial copy; default: the disk size when complete, else 0. */
  initialCoveredBytes?: number;
  consistency?: ConsistencyTag;
  /** Sorted by offset, non-overlapping, inside the disk. */
  records: BatchRecord[];
}

/** Everything in the 208-byte prefix, decoded and checked. */
export interface BatchHeader {
  formatVersion: 1;
  codec: CodecName;
  consistency: ConsistencyTag | undefined;
  initialReplicationComplete: boolean;
  keyId: number;
  epoch: number;
  sequence: number;
  capturedAt: number;
  diskSizeBytes: number;
  initialCoveredBytes: number;
  recordCount: number;
  recordStreamBytes: number;
  payloadBytes: number;
  vmId: string;
  diskId: string;
  nonce: Buffer;
  /** Total length of the sealed batch: prefix + payload + tag. */
  sealedBytes: number;
}

export interface DecodedBatch {
  header: BatchHeader;
  /** Data records' `data` are views into one decompressed buffer. */
  records: BatchRecord[];
}

export function recordLength(record: BatchRecord): number {
  return record.kind === 'data' ? record.data.length : record.length;
}

// ---- shared field checks -----------------------------------------------------------------

function bad(field: string, message: string): WireFormatError {
  return new WireFormatError('BAD_FIELD', field, message);
}

function checkInt(field: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    throw bad(field, `${field} is ${String(value)}; it must be an integer from ${min} to ${max}.`);
  }
  return value;
}

function checkId(field: string, value: unknown): string {
  if (typeof value !== 'string' || !ID_PATTERN.test(value)) {
    throw bad(field, `${field} ${JSON.stringify(value)} does not match ${ID_PATTERN.source}.`);
  }
  return value;
}

function checkDiskSize(value: unknown): number {
  const n = checkInt('diskSizeBytes', value, SECTOR_SIZE, MAX_DISK_SIZE_BYTES);
  if (n % SECTOR_SIZE !== 0) throw bad('diskSizeBytes', `diskSizeBytes ${n} is not a multiple of 512.`);
  return n;
}

function checkCovered(value: unknown, diskSizeBytes: number, complete: boolean): number {
  const n = checkInt('initialCoveredBytes', value, 0, diskSizeBytes);
  if (n % SECTOR_SIZE !== 0) throw bad('initialCoveredBytes', `initialCoveredBytes ${n} is not a multiple of 512.`);
  if (complete && n !== diskSizeBytes) {
    throw bad(
      'initialCoveredBytes',
      `initialCoveredBytes is ${n} but initialReplicationComplete is set; it must equal diskSizeBytes ${diskSizeBytes}.`,
    );
  }
  return n;
}

function checkLimit(field: string, value: number, max: number): number {
  if (value > max) throw new WireFormatError('SIZE_LIMIT', field, `${field} ${value} exceeds the limit of ${max}.`);
  return value;
}

// ---- the prefix --------------------------------------------------------------------------

export interface PrefixFields {
  codec: CodecName;
  keyId: number;
  nonce: Uint8Array;
  recordCount: number;
  recordStreamBytes: number;
  payloadBytes: number;
}

/** A batch's header fields, checked and with defaults applied. */
export interface CheckedBatchFields {
  vmId: string;
  diskId: string;
  epoch: number;
  sequence: number;
  capturedAt: number;
  diskSizeBytes: number;
  initialReplicationComplete: boolean;
  initialCoveredBytes: number;
  consistencyId: number;
  tagId: number;
}

/** Checks the header fields of a batch the encoder was given, by the decoder's rules. */
export function checkBatch(batch: Batch): CheckedBatchFields {
  if (typeof batch !== 'object' || batch === null) throw bad('batch', 'The batch must be an object.');
  const vmId = checkId('vmId', batch.vmId);
  const diskId = checkId('diskId', batch.diskId);
  const epoch = checkInt('epoch', batch.epoch, 1, MAX_U32);
  const sequence = checkInt('sequence', batch.sequence, 1, Number.MAX_SAFE_INTEGER);
  const capturedAt = checkInt('capturedAt', batch.capturedAt, 1, MAX_CAPTURED_AT);
  const diskSizeBytes = checkDiskSize(batch.diskSizeBytes);
  const complete = batch.initialReplicationComplete ?? false;
  if (typeof complete !== 'boolean') throw bad('initialReplicationComplete', 'initialReplicationComplete must be a boolean.');
  const covered = checkCovered(batch.initialCoveredBytes ?? (complete ? diskSizeBytes : 0), diskSizeBytes, complete);
  let consistencyId = 0;
  let tagId = 0;
  if (batch.consistency !== undefined) {
    const kind = batch.consistency?.kind;
    if (!Object.prototype.hasOwnProperty.call(CONSISTENCY_IDS, kind)) {
      throw bad('consistency', `consistency kind ${JSON.stringify(kind)} is not crash-consistent or app-consistent.`);
    }
    consistencyId = CONSISTENCY_IDS[kind];
    tagId = checkInt('tagId', batch.consistency.tagId, 1, Number.MAX_SAFE_INTEGER);
  }
  return {
    vmId,
    diskId,
    epoch,
    sequence,
    capturedAt,
    diskSizeBytes,
    initialReplicationComplete: complete,
    initialCoveredBytes: covered,
    consistencyId,
    tagId,
  };
}

/**
 * Checks a batch's header fields as the encoder sees them and writes the 208-byte prefix.
 * Raises the same codes as the decoder for the same rule.
 */
export function encodePrefix(batch: Batch, fields: PrefixFields): Buffer {
  const f = checkBatch(batch);
  if (!Object.prototype.hasOwnProperty.call(CODEC_IDS, fields.codec)) {
    throw bad('codec', `codec ${JSON.stringify(fields.codec)} is not one of ${CODEC_NAMES.join(', ')}.`);
  }
  const codecId = CODEC_IDS[fields.codec];
  const keyId = checkInt('keyId', fields.keyId, 1, MAX_U32);
  const recordCount = checkLimit('recordCount', checkInt('recordCount', fields.recordCount, 0, MAX_U32), MAX_RECORDS);
  const streamBytes = checkLimit(
    'recordStreamBytes',
    checkInt('recordStreamBytes', fields.recordStreamBytes, 0, MAX_U32),
    MAX_RECORD_STREAM_BYTES,
  );
  const payloadBytes = checkLimit(
    'payloadBytes',
    checkInt('payloadBytes', fields.payloadBytes, DIGEST_BYTES, MAX_U32),
    MAX_PAYLOAD_BYTES,
  );
  if (!(fields.nonce instanceof Uint8Array) || fields.nonce.length !== NONCE_BYTES) {
    throw bad('nonce', `The nonce must be 12 bytes; the random source returned ${String(fields.nonce?.length)}.`);
  }

  const p = Buffer.alloc(PREFIX_BYTES);
  MAGIC.copy(p, OFF.magic);
  p.writeUInt8(FORMAT_VERSION, OFF.formatVersion);
  p.writeUInt8(codecId, OFF.codec);
  p.writeUInt8(f.consistencyId, OFF.consistency);
  p.writeUInt8(f.initialReplicationComplete ? FLAG_INITIAL_REPLICATION_COMPLETE : 0, OFF.flags);
  p.writeUInt32LE(keyId, OFF.keyId);
  p.writeUInt32LE(f.epoch, OFF.epoch);
  p.writeBigUInt64LE(BigInt(f.sequence), OFF.sequence);
  p.writeBigUInt64LE(BigInt(f.capturedAt), OFF.capturedAt);
  p.writeBigUInt64LE(BigInt(f.diskSizeBytes), OFF.diskSizeBytes);
  p.writeBigUInt64LE(BigInt(f.initialCoveredBytes), OFF.initialCoveredBytes);
  p.writeBigUInt64LE(BigInt(f.tagId), OFF.tagId);
  p.writeUInt32LE(recordCount, OFF.recordCount);
  p.writeUInt32LE(streamBytes, OFF.recordStreamBytes);
  p.writeUInt32LE(payloadBytes, OFF.payloadBytes);
  p.writeUInt8(f.vmId.length, OFF.vmIdLength);
  p.write(f.vmId, OFF.vmId, 'ascii');
  p.writeUInt8(f.diskId.length, OFF.diskIdLength);
  p.write(f.diskId, OFF.diskId, 'ascii');
  Buffer.from(fields.nonce.buffer, fields.nonce.byteOffset, fields.nonce.byteLength).copy(p, OFF.nonce);
  return p;
}

function readU64(bytes: Buffer, offset: number, field: string): number {
  const v = bytes.readBigUInt64LE(offset);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw bad(field, `${field} ${v} exceeds 2^53-1, the largest value format version 1 accepts.`);
  }
  return Number(v);
}

function readId(bytes: Buffer, lengthOffset: number, slotOffset: number, field: string): string {
  const len = bytes.readUInt8(lengthOffset);
  if (len < 1 || len > ID_MAX_LENGTH) throw bad(`${field}Length`, `${field}Length is ${len}; it must be 1 to 63.`);
  for (let i = slotOffset + len; i < slotOffset + ID_MAX_LENGTH; i++) {
    if (bytes[i] !== 0) throw bad(field, `${field} slot has non-zero padding after its ${len} bytes.`);
  }
  const slot = bytes.subarray(slotOffset, slotOffset + len);
  // latin1 maps every byte to one char, so a non-ASCII byte fails the pattern below.
  return checkId(field, slot.toString('latin1'));
}

/**
 * The VM id a batch's header names, read from its slot without checking anything else (for
 * the health record of a batch whose header does not parse); undefined if it is not a valid id.
 */
export function claimedVmId(bytes: Uint8Array): string | undefined {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = b.length > OFF.vmIdLength ? (b[OFF.vmIdLength] as number) : 0;
  if (n < 1 || n > ID_MAX_LENGTH || b.length < OFF.vmId + n) return undefined;
  const id = b.toString('latin1', OFF.vmId, OFF.vmId + n);
  return ID_PATTERN.test(id) ? id : undefined;
}

/**
 * Parses and checks the prefix of a sealed batch and its total length, without a key
 * (docs/wire-format.md, "What the decoder checks", steps 1-3). The result is not yet
 * authenticated: use it to choose the key, never to act on the data.
 */
export function peekBatchHeader(bytes: Uint8Array): BatchHeader {
  if (!(bytes instanceof Uint8Array)) throw new WireFormatError('BAD_FIELD', 'bytes', 'A sealed batch must be a Buffer or Uint8Array.');
  const b = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (b.length < 4) throw truncated('magic', b.length, 4);
  if (!b.subarray(0, 4).equals(MAGIC)) {
    throw new WireFormatError('BAD_MAGIC', 'magic', `The input does not start with "FRYB" (0x${b.subarray(0, 4).toString('hex')}); it is not a Ferry batch.`);
  }
  if (b.length < 5) throw truncated('formatVersion', b.length, 5);
  const version = b.readUInt8(OFF.formatVersion);
  if (version !== FORMAT_VERSION) {
    throw new WireFormatError(
      'UNSUPPORTED_VERSION',
      'formatVersion',
      `Batch format version ${version} is not supported; this code reads version ${FORMAT_VERSION}. Upgrade the functions, or the appliance must not send it.`,
    );
  }
  if (b.length < PREFIX_BYTES) throw truncated('header', b.length, PREFIX_BYTES);

  const codecId = b.readUInt8(OFF.codec);
  const codec = CODEC_NAMES[codecId];
  if (codec === undefined) throw bad('codec', `codec ${codecId} is unknown; known: 0 none, 1 zstd, 2 brotli.`);
  const consistencyId = b.readUInt8(OFF.consistency);
  if (consistencyId > 2) throw bad('consistency', `consistency ${consistencyId} is unknown; known: 0 none, 1 crash, 2 app.`);
  const flags = b.readUInt8(OFF.flags);
  if ((flags & ~KNOWN_FLAGS) !== 0) throw bad('flags', `flags 0x${flags.toString(16)} has reserved bits set.`);
  const complete = (flags & FLAG_INITIAL_REPLICATION_COMPLETE) !== 0;
  const keyId = checkInt('keyId', b.readUInt32LE(OFF.keyId), 1, MAX_U32);
  const epoch = checkInt('epoch', b.readUInt32LE(OFF.epoch), 1, MAX_U32);
  const sequence = checkInt('sequence', readU64(b, OFF.sequence, 'sequence'), 1, Number.MAX_SAFE_INTEGER);
  const capturedAt = checkInt('capturedAt', readU64(b, OFF.capturedAt, 'capturedAt'), 1, MAX_CAPTURED_AT);
  const diskSizeBytes = checkDiskSize(readU64(b, OFF.diskSizeBytes, 'diskSizeBytes'));
  const initialCoveredBytes = checkCovered(readU64(b, OFF.initialCoveredBytes, 'initialCoveredBytes'), diskSizeBytes, complete);
  const tagId = readU64(b, OFF.tagId, 'tagId');
  let consistency: ConsistencyTag | undefined;
  if (consistencyId === 0) {
    if (tagId !== 0) throw bad('tagId', `tagId is ${tagId} but the batch has no consistency tag; it must be 0.`);
  } else {
    checkInt('tagId', tagId, 1, Number.MAX_SAFE_INTEGER);
    consistency = { kind: consistencyId === 1 ? 'crash-consistent' : 'app-consistent', tagId };
  }
  const recordCount = checkLimit('recordCount', b.readUInt32LE(OFF.recordCount), MAX_RECORDS);
  const recordStreamBytes = checkLimit('recordStreamBytes', b.readUInt32LE(OFF.recordStreamBytes), MAX_RECORD_STREAM_BYTES);
  if (recordCount * RECORD_HEADER_BYTES > recordStreamBytes) {
    throw bad('recordCount', `recordCount ${recordCount} cannot fit in a record stream of ${recordStreamBytes} bytes.`);
  }
  const payloadBytes = checkLimit('payloadBytes', b.readUInt32LE(OFF.payloadBytes), MAX_PAYLOAD_BYTES);
  if (payloadBytes < DIGEST_BYTES) throw bad('payloadBytes', `payloadBytes ${payloadBytes} is below the 32 bytes of the digest.`);
  if (codec === 'none' && payloadBytes !== DIGEST_BYTES + recordStreamBytes) {
    throw bad('payloadBytes', `payloadBytes ${payloadBytes} must be 32 + recordStreamBytes (${recordStreamBytes}) with codec none.`);
  }
  const vmId = readId(b, OFF.vmIdLength, OFF.vmId, 'vmId');
  const diskId = readId(b, OFF.diskIdLength, OFF.diskId, 'diskId');

  const sealedBytes = PREFIX_BYTES + payloadBytes + TAG_BYTES;
  if (b.length < sealedBytes) throw truncated('ciphertext', b.length, sealedBytes);
  if (b.length > sealedBytes) {
    throw new WireFormatError('TRAILING_DATA', 'bytes', `${b.length - sealedBytes} bytes follow the end of the batch (${sealedBytes} bytes).`);
  }
  return {
    formatVersion: FORMAT_VERSION,
    codec,
    consistency,
    initialReplicationComplete: complete,
    keyId,
    epoch,
    sequence,
    capturedAt,
    diskSizeBytes,
    initialCoveredBytes,
    recordCount,
    recordStreamBytes,
    payloadBytes,
    vmId,
    diskId,
    nonce: Buffer.from(b.subarray(OFF.nonce, OFF.nonce + NONCE_BYTES)),
    sealedBytes,
  };
}

function truncated(field: string, have: number, need: number): WireFormatError {
  return new WireFormatError('TRUNCATED', field, `The batch is ${have} bytes; ${field} needs at least ${need}.`);
}

// ---- expectations ------------------------------------------------------------------------

export interface BatchExpectation {
  vmId?: string;
  diskId?: string;
  epoch?: number;
  sequence?: number;
  /** The registered size: a batch may not claim another (its bounds checks rely on it). */
  diskSizeBytes?: number;
}

/** Step 4: the caller knows which batch it is waiting for (from the envelope and its state). */
export function checkExpectation(header: BatchHeader, expect: BatchExpectation): void {
  for (const field of ['vmId', 'diskId', 'epoch', 'sequence', 'diskSizeBytes'] as const) {
    const want = expect[field];
    if (want !== undefined && header[field] !== want) {
      throw new WireFormatError(
        'UNEXPECTED_BATCH',
        field,
        `The batch is for ${field} ${JSON.stringify(header[field])}, but ${JSON.stringify(want)} was expected (VM '${header.vmId}', disk '${header.diskId}', epoch ${header.epoch}, sequence ${header.sequence}).`,
      );
    }
  }
}

// ---- the record stream -------------------------------------------------------------------

function checkRecordRange(i: number, offset: number, length: number, diskSizeBytes: number, prevEnd: number): void {
  if (offset % SECTOR_SIZE !== 0) {
    throw new WireFormatError('UNALIGNED', `records[${i}].offset`, `records[${i}].offset ${offset} is not a multiple of 512.`);
  }
  if (length === 0) throw bad(`records[${i}].length`, `records[${i}].length is 0; a record covers at least one sector.`);
  if (length % SECTOR_SIZE !== 0) {
    throw new WireFormatError('UNALIGNED', `records[${i}].length`, `records[${i}].length ${length} is not a multiple of 512.`);
  }
  if (offset + length > diskSizeBytes) {
    throw new WireFormatError(
      'RECORD_OUT_OF_BOUNDS',
      `records[${i}]`,
      `records[${i}] covers bytes ${offset}..${offset + length} but the disk is ${diskSizeBytes} bytes.`,
    );
  }
  if (offset < prevEnd) {
    throw new WireFormatError(
      'OVERLAP',
      `records[${i}].offset`,
      `records[${i}].offset ${offset} is below the end of the previous record (${prevEnd}); records must be sorted by offset and must not overlap.`,
    );
  }
}

/**
 * Checks the records against the disk and serialises them (docs/wire-format.md, "Record
 * stream"). The encoder's side of step 9. `allocate` lets a caller supply a reused buffer
 * (fresh 4 MiB allocations cost page faults); the result is a view of `size` bytes of it.
 */
export function encodeRecordStream(
  records: readonly BatchRecord[],
  diskSizeBytes: number,
  allocate: (size: number) => Buffer = Buffer.allocUnsafe,
): Buffer {
  if (!Array.isArray(records)) throw bad('records', 'records must be an array.');
  checkLimit('recordCount', records.length, MAX_RECORDS);
  let total = 0;
  let prevEnd = 0;
  records.forEach((r, i) => {
    let length: number;
    if (r?.kind === 'data') {
      if (!(r.data instanceof Uint8Array)) throw bad(`records[${i}].data`, `records[${i}].data must be a Buffer.`);
      length = r.data.length;
    } else if (r?.kind === 'zero') {
      length = checkInt(`records[${i}].length`, r.length, 0, Number.MAX_SAFE_INTEGER);
    } else {
      throw bad(`records[${i}].kind`, `records[${i}].kind must be 'data' or 'zero'.`);
    }
    const offset = checkInt(`records[${i}].offset`, r.offset, 0, Number.MAX_SAFE_INTEGER);
    checkRecordRange(i, offset, length, diskSizeBytes, prevEnd);
    prevEnd = offset + length;
    total += RECORD_HEADER_BYTES + (r.kind === 'data' ? length : 0);
    checkLimit('recordStreamBytes', total, MAX_RECORD_STREAM_BYTES);
  });
  const out = allocate(total).subarray(0, total);
  let pos = 0;
  for (const r of records) {
    const length = recordLength(r);
    out.writeUInt8(r.kind === 'data' ? 1 : 2, pos);
    out.fill(0, pos + 1, pos + 8);
    out.writeBigUInt64LE(BigInt(r.offset), pos + 8);
    out.writeBigUInt64LE(BigInt(length), pos + 16);
    pos += RECORD_HEADER_BYTES;
    if (r.kind === 'data') {
      out.set(r.data, pos);
      pos += length;
    }
  }
  return out;
}

/** Step 9: parses and checks an authenticated, decompressed record stream. */
export function decodeRecordStream(stream: Buffer, header: Pick<BatchHeader, 'recordCount' | 'diskSizeBytes'>): BatchRecord[] {
  const records: BatchRecord[] = [];
  let pos = 0;
  let prevEnd = 0;
  for (let i = 0; i < header.recordCount; i++) {
    if (stream.length - pos < RECORD_HEADER_BYTES) {
      throw new WireFormatError('TRUNCATED', `records[${i}]`, `The record stream ends inside records[${i}]'s header.`);
    }
    const type = stream.readUInt8(pos);
    if (type !== 1 && type !== 2) throw bad(`records[${i}].type`, `records[${i}].type is ${type}; it must be 1 (data) or 2 (zero).`);
    for (let j = pos + 1; j < pos + 8; j++) {
      if (stream[j] !== 0) throw bad(`records[${i}].reserved`, `records[${i}] has non-zero reserved bytes.`);
    }
    const offset = readU64(stream, pos + 8, `records[${i}].offset`);
    const length = readU64(stream, pos + 16, `records[${i}].length`);
    checkRecordRange(i, offset, length, header.diskSizeBytes, prevEnd);
    prevEnd = offset + length;
    pos += RECORD_HEADER_BYTES;
    if (type === 1) {
      if (stream.length - pos < length) {
        throw new WireFormatError('TRUNCATED', `records[${i}].data`, `The record stream ends inside records[${i}]'s ${length} data bytes.`);
      }
      records.push({ kind: 'data', offset, data: stream.subarray(pos, pos + length) });
      pos += length;
    } else {
      records.push({ kind: 'zero', offset, length });
    }
  }
  if (pos !== stream.length) {
    throw new WireFormatError('TRAILING_DATA', 'records', `${stream.length - pos} bytes follow the last of ${header.recordCount} records.`);
  }
  return records;
}
