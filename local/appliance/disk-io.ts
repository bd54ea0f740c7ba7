/** Opening source disks read-only: image files or block devices. */
import { existsSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { ApplianceError } from './errors';

/** Size in bytes: a file's length, or a block device's size from sysfs (512-byte units). */
export function diskSizeOf(path: string, fd: number): number {
  const st = fstatSync(fd);
  if (st.isBlockDevice()) {
    const major = Math.floor(st.rdev / 256) & 0xfff;
    const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
    const sys = `/sys/dev/block/${major}:${minor}/size`;
    if (!existsSync(sys)) throw new ApplianceError('DISK_UNREADABLE', `Cannot find the size of block device ${path} (${sys} is missing).`);
    return Number(readFileSync(sys, 'utf8').trim()) * 512;
  }
  if (!st.isFile()) throw new ApplianceError('DISK_UNREADABLE', `${path} is neither an image file nor a block device.`);
  return st.size;
}

export interface SourceDisk {
  path: string;
  fd: number;
  sizeBytes: number;
}

/** Opens a disk read-only; Ferry never writes a source disk (TrackedDisk aside). */
export function openSourceDisk(path: string): SourceDisk {
  if (!existsSync(path)) throw new ApplianceError('DISK_NOT_FOUND', `Disk ${path} does not exist; pass an image file or a block device to --disk.`);
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw new ApplianceError('DISK_UNREADABLE', `Cannot open ${path} for reading: ${(err as Error).message}`, { cause: err });
  }
  const sizeBytes = diskSizeOf(path, fd);
  if (sizeBytes === 0 || sizeBytes % 512 !== 0) {
    throw new ApplianceError('DISK_UNREADABLE', `Disk ${path} is ${sizeBytes} bytes; a disk must be a non-zero multiple of 512 bytes.`);
  }
  return { path, fd, sizeBytes };
}

/** Reads exactly `length` bytes at `offset` into `buf` (short reads retried). */
export function readFully(fd: number, buf: Buffer, length: number, offset: number): void {
  let pos = 0;
  while (pos < length) {
    const n = readSync(fd, buf, pos, length - pos, offset + pos);
    if (n === 0) throw new ApplianceError('DISK_UNREADABLE', `Unexpected end of disk at ${offset + pos}.`);
    pos += n;
  }
}
