/**
 * The persistent block fingerprint map of one disk: one 64-bit xxh64 per 64 KiB block of what
 * the cloud has (or what was durably handed over to be sent). A rescan reads the disk and
 * sends only blocks whose fingerprint differs, so a restart, a crash or days offline never
 * cause a full resync.
 *
 * Granularity: 64 KiB. A 1 GiB disk has 16,384 blocks (128 KiB of map); 1 TiB, 128 MiB of
 * map. Smaller blocks send less per change (an ext4 change touches 4 KiB blocks) but the map
 * grows 16x at 4 KiB; writes through TrackedDisk are sent at sector granularity anyway, so the
 * map's block size only matters for changes found by rescanning. xxh64 of 64 KiB blocks runs
 * at ~4.8 GB/s here (per-call overhead included), SHA-256 at 1.77 GB/s.
 *
 * File layout (`<stateDir>/<vmId>/<diskId>.fp`): magic "FRYF", u32 version 1, u32 block size,
 * u32 reserved, u64 disk size, then one u64 per block, little-endian. 0 means unknown (never
 * sent); a real hash of 0 is stored as 1.
 */
import { existsSync, readFileSync } from 'node:fs';
import { xxh64 } from '@node-rs/xxhash';
import { writeFileAtomic } from './files';

export const FP_BLOCK_BYTES = 64 * 1024;
const HEADER_BYTES = 24;
const MAGIC = 0x46595246; // "FRYF" little-endian
export const UNKNOWN_FP = 0n;

export function fingerprint(block: Uint8Array): bigint {
  const h = xxh64(block);
  return h === 0n ? 1n : h;
}

const zeroFps = new Map<number, bigint>();
/** The fingerprint of `length` zero bytes (cached: zero blocks are the commonest). */
export function zeroFingerprint(length: number): bigint {
  let fp = zeroFps.get(length);
  if (fp === undefined) {
    fp = fingerprint(Buffer.alloc(length));
    zeroFps.set(length, fp);
  }
  return fp;
}

export class FingerprintMap {
  readonly blocks: number;
  private readonly table: BigUint64Array;

  constructor(readonly diskSizeBytes: number, table?: BigUint64Array) {
    this.blocks = Math.ceil(diskSizeBytes / FP_BLOCK_BYTES);
    this.table = table ?? new BigUint64Array(this.blocks);
  }

  get(block: number): bigint {
    return this.table[block] ?? UNKNOWN_FP;
  }

  set(block: number, fp: bigint): void {
    this.table[block] = fp;
  }

  /** Byte range of block `i` (the last may be shorter). */
  range(block: number): { offset: number; length: number } {
    const offset = block * FP_BLOCK_BYTES;
    return { offset, length: Math.min(FP_BLOCK_BYTES, this.diskSizeBytes - offset) };
  }

  knownBlocks(): number {
    let n = 0;
    for (const v of this.table) if (v !== UNKNOWN_FP) n++;
    return n;
  }

  encode(): Buffer {
    const out = Buffer.alloc(HEADER_BYTES + this.blocks * 8);
    out.writeUInt32LE(MAGIC, 0);
    out.writeUInt32LE(1, 4);
    out.writeUInt32LE(FP_BLOCK_BYTES, 8);
    out.writeBigUInt64LE(BigInt(this.diskSizeBytes), 16);
    Buffer.from(this.table.buffer, this.table.byteOffset, this.table.byteLength).copy(out, HEADER_BYTES);
    return out;
  }

  static decode(bytes: Buffer, diskSizeBytes: number): FingerprintMap | undefined {
    if (bytes.length < HEADER_BYTES || bytes.readUInt32LE(0) !== MAGIC || bytes.readUInt32LE(4) !== 1) return undefined;
    if (bytes.readUInt32LE(8) !== FP_BLOCK_BYTES || Number(bytes.readBigUInt64LE(16)) !== diskSizeBytes) return undefined;
    const blocks = Math.ceil(diskSizeBytes / FP_BLOCK_BYTES);
    if (bytes.length !== HEADER_BYTES + blocks * 8) return undefined;
    const table = new BigUint64Array(blocks);
    Buffer.from(table.buffer).set(bytes.subarray(HEADER_BYTES));
    return new FingerprintMap(diskSizeBytes, table);
  }

  /** Loads the map, or a map of unknowns when the file is missing or for another geometry. */
  static load(file: string, diskSizeBytes: number): FingerprintMap {
    if (existsSync(file)) {
      const map = FingerprintMap.decode(readFileSync(file), diskSizeBytes);
      if (map) return map;
    }
    return new FingerprintMap(diskSizeBytes);
  }

  save(file: string): void {
    writeFileAtomic(file, this.encode(), 0o600);
  }
}
