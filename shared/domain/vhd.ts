/**
 * The fixed VHD that Azure imports as a managed disk (pure encoding, no I/O).
 *
 * A fixed VHD is the disk's bytes followed by a 512-byte footer. Azure requires the data part
 * to be a whole number of MiB, at least 20 MiB, so Ferry rounds the replicated disk's size up
 * (`vhdDataBytes`): the bytes past the source disk's end read as zeros. The page blob holding
 * it is `vhdDataBytes(size) + 512` bytes long.
 *
 * Footer layout (Microsoft "Virtual Hard Disk Image Format Specification", Hard Disk Footer
 * Format; every field big-endian):
 *
 * | offset | bytes | field |
 * | --- | --- | --- |
 * | 0 | 8 | cookie `conectix` |
 * | 8 | 4 | features: 2 (reserved bit, always set) |
 * | 12 | 4 | file format version 0x00010000 |
 * | 16 | 8 | data offset: 0xFFFFFFFFFFFFFFFF for a fixed disk |
 * | 24 | 4 | timestamp: seconds since 2000-01-01 00:00:00 UTC |
 * | 28 | 4 | creator application (`win ` by default) |
 * | 32 | 4 | creator version |
 * | 36 | 4 | creator host OS `Wi2k` |
 * | 40 | 8 | original size (bytes) |
 * | 48 | 8 | current size (bytes): the data length |
 * | 56 | 4 | disk geometry: cylinders u16, heads u8, sectors per track u8 (the spec's CHS algorithm) |
 * | 60 | 4 | disk type: 2 = fixed |
 * | 64 | 4 | checksum: one's complement of the byte sum of the footer with this field zero |
 * | 68 | 16 | unique id |
 * | 84 | 1 | saved state: 0 |
 * | 85 | 427 | zeros |
 *
 * The creator application matters to readers that size the disk: qemu takes the current size
 * for `win ` and `qem2`, but derives it from the geometry (a little smaller) for others.
 */
import { DomainError } from './domain-error';

export const VHD_FOOTER_BYTES = 512;
export const MiB = 1024 * 1024;
/** Azure: a VHD imported as a managed disk is at least 20 MiB. */
export const MIN_VHD_DATA_BYTES = 20 * MiB;
/** qemu refuses vpc images over 2040 GiB; Azure's own limit for a page blob is 8 TiB. */
export const MAX_VHD_DATA_BYTES = 8 * 1024 * 1024 * MiB - MiB;
/** 2000-01-01T00:00:00Z in ms since the Unix epoch. */
export const VHD_EPOCH_MS = Date.UTC(2000, 0, 1);

export type CreatorApplication = 'win ' | 'qem2';

export interface VhdFooterFields {
  /** Data bytes before the footer: a multiple of 512 (of 1 MiB for Azure). */
  currentSize: number;
  /** ms since the Unix epoch; stored in seconds since 2000. */
  timestampMs: number;
  /** 16 bytes. */
  uniqueId: Uint8Array;
  /** Default `win `. */
  creatorApplication?: CreatorApplication;
}

/** The data length of the VHD of a disk of `diskSizeBytes`: rounded up to a MiB, at least 20 MiB. */
export function vhdDataBytes(diskSizeBytes: number): number {
  if (!Number.isSafeInteger(diskSizeBytes) || diskSizeBytes <= 0) {
    throw new DomainError('INVALID_ARGUMENT', 'diskSizeBytes', `diskSizeBytes ${String(diskSizeBytes)} is not a positive integer.`);
  }
  const rounded = Math.max(MIN_VHD_DATA_BYTES, Math.ceil(diskSizeBytes / MiB) * MiB);
  if (rounded > MAX_VHD_DATA_BYTES) {
    throw new DomainError('OUT_OF_RANGE', 'diskSizeBytes', `A ${diskSizeBytes}-byte disk does not fit a page blob VHD (at most ${MAX_VHD_DATA_BYTES} bytes).`);
  }
  return rounded;
}

export interface ChsGeometry {
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
}

/** CHS geometry of a disk of `sizeBytes`, by the algorithm in the VHD specification (appendix). */
export function vhdGeometry(sizeBytes: number): ChsGeometry {
  let totalSectors = Math.floor(sizeBytes / 512);
  if (totalSectors > 65535 * 16 * 255) totalSectors = 65535 * 16 * 255;
  let sectorsPerTrack: number;
  let heads: number;
  let cylinderTimesHeads: number;
  if (totalSectors >= 65535 * 16 * 63) {
    sectorsPerTrack = 255;
    heads = 16;
    cylinderTimesHeads = Math.floor(totalSectors / sectorsPerTrack);
  } else {
    sectorsPerTrack = 17;
    cylinderTimesHeads = Math.floor(totalSectors / sectorsPerTrack);
    heads = Math.floor((cylinderTimesHeads + 1023) / 1024);
    if (heads < 4) heads = 4;
    if (cylinderTimesHeads >= heads * 1024 || heads > 16) {
      sectorsPerTrack = 31;
      heads = 16;
      cylinderTimesHeads = Math.floor(totalSectors / sectorsPerTrack);
    }
    if (cylinderTimesHeads >= heads * 1024) {
      sectorsPerTrack = 63;
      heads = 16;
      cylinderTimesHeads = Math.floor(totalSectors / sectorsPerTrack);
    }
  }
  return { cylinders: Math.floor(cylinderTimesHeads / heads), heads, sectorsPerTrack };
}

/** One's complement of the byte sum of `footer`, skipping the checksum field itself. */
export function vhdChecksum(footer: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < footer.length; i++) if (i < 64 || i >= 68) sum += footer[i] ?? 0;
  return ~sum >>> 0;
}

/** The 512-byte footer of a fixed VHD. */
export function encodeVhdFooter(fields: VhdFooterFields): Buffer {
  const { currentSize, timestampMs, uniqueId } = fields;
  if (!Number.isSafeInteger(currentSize) || currentSize <= 0 || currentSize % 512 !== 0) {
    throw new DomainError('INVALID_ARGUMENT', 'currentSize', `currentSize ${String(currentSize)} is not a positive multiple of 512.`);
  }
  if (uniqueId.length !== 16) throw new DomainError('INVALID_ARGUMENT', 'uniqueId', `uniqueId is ${uniqueId.length} bytes; it must be 16.`);
  if (!Number.isFinite(timestampMs) || timestampMs < VHD_EPOCH_MS) {
    throw new DomainError('OUT_OF_RANGE', 'timestampMs', `timestampMs ${String(timestampMs)} is before 2000-01-01, which a VHD cannot record.`);
  }
  const f = Buffer.alloc(VHD_FOOTER_BYTES);
  f.write('conectix', 0, 'ascii');
  f.writeUInt32BE(2, 8);
  f.writeUInt32BE(0x00010000, 12);
  f.writeBigUInt64BE(0xffffffffffffffffn, 16);
  f.writeUInt32BE(Math.floor((timestampMs - VHD_EPOCH_MS) / 1000) >>> 0, 24);
  f.write(fields.creatorApplication ?? 'win ', 28, 'ascii');
  f.writeUInt32BE(0x000a0000, 32);
  f.write('Wi2k', 36, 'ascii');
  f.writeBigUInt64BE(BigInt(currentSize), 40);
  f.writeBigUInt64BE(BigInt(currentSize), 48);
  const g = vhdGeometry(currentSize);
  f.writeUInt16BE(g.cylinders, 56);
  f.writeUInt8(g.heads, 58);
  f.writeUInt8(g.sectorsPerTrack, 59);
  f.writeUInt32BE(2, 60);
  Buffer.from(uniqueId).copy(f, 68);
  f.writeUInt8(0, 84);
  f.writeUInt32BE(vhdChecksum(f), 64);
  return f;
}
