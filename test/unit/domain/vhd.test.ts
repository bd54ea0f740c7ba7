import { describe, expect, it } from 'vitest';
import { encodeVhdFooter, vhdChecksum, vhdDataBytes, vhdGeometry, MiB } from '../../../shared/domain/vhd';

const uniqueId = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
const at = Date.UTC(2026, 0, 2, 3, 4, 5);

describe('vhdDataBytes', () => {
  it('rounds up to a whole MiB', () => {
    expect(vhdDataBytes(64 * MiB)).toBe(64 * MiB);
    expect(vhdDataBytes(64 * MiB + 512)).toBe(65 * MiB);
  });
  it('is at least 20 MiB', () => {
    expect(vhdDataBytes(512)).toBe(20 * MiB);
    expect(vhdDataBytes(20 * MiB - 512)).toBe(20 * MiB);
  });
});

describe('vhdGeometry (the VHD specification CHS algorithm)', () => {
  it.each([
    [20 * MiB, { cylinders: 602, heads: 4, sectorsPerTrack: 17 }],
    [64 * MiB, { cylinders: 963, heads: 8, sectorsPerTrack: 17 }],
    [1024 * MiB, { cylinders: 2080, heads: 16, sectorsPerTrack: 63 }],
    [127 * 1024 * MiB, { cylinders: 65278, heads: 16, sectorsPerTrack: 255 }],
    [200 * 1024 * MiB, { cylinders: 65535, heads: 16, sectorsPerTrack: 255 }],
  ])('%i bytes', (size, want) => {
    expect(vhdGeometry(size)).toEqual(want);
  });
});

describe('encodeVhdFooter', () => {
  const f = encodeVhdFooter({ currentSize: 64 * MiB, timestampMs: at, uniqueId });

  it('is 512 bytes with the fixed-disk fields at their offsets, big-endian', () => {
    expect(f.length).toBe(512);
    expect(f.toString('ascii', 0, 8)).toBe('conectix');
    expect(f.readUInt32BE(8)).toBe(2);
    expect(f.readUInt32BE(12)).toBe(0x00010000);
    expect(f.readBigUInt64BE(16)).toBe(0xffffffffffffffffn);
    expect(f.readUInt32BE(24)).toBe((at - Date.UTC(2000, 0, 1)) / 1000);
    expect(f.toString('ascii', 28, 32)).toBe('win ');
    expect(f.toString('ascii', 36, 40)).toBe('Wi2k');
    expect(f.readBigUInt64BE(40)).toBe(BigInt(64 * MiB));
    expect(f.readBigUInt64BE(48)).toBe(BigInt(64 * MiB));
    expect([f.readUInt16BE(56), f.readUInt8(58), f.readUInt8(59)]).toEqual([963, 8, 17]);
    expect(f.readUInt32BE(60)).toBe(2);
    expect(f.subarray(68, 84).equals(uniqueId)).toBe(true);
    expect(f.readUInt8(84)).toBe(0);
    expect(f.subarray(85).every((b) => b === 0)).toBe(true);
  });

  it('carries the one\'s complement of the byte sum as its checksum', () => {
    let sum = 0;
    for (let i = 0; i < 512; i++) if (i < 64 || i >= 68) sum += f[i]!;
    expect(f.readUInt32BE(64)).toBe(~sum >>> 0);
    expect(vhdChecksum(f)).toBe(f.readUInt32BE(64));
  });

  it('takes qemu\'s creator application on request', () => {
    expect(encodeVhdFooter({ currentSize: 20 * MiB, timestampMs: at, uniqueId, creatorApplication: 'qem2' }).toString('ascii', 28, 32)).toBe('qem2');
  });

  it('refuses a size that is not a multiple of 512, and a short unique id', () => {
    expect(() => encodeVhdFooter({ currentSize: 1000, timestampMs: at, uniqueId })).toThrow(/multiple of 512/);
    expect(() => encodeVhdFooter({ currentSize: 20 * MiB, timestampMs: at, uniqueId: Buffer.alloc(4) })).toThrow(/16/);
  });
});
