/** Small durable-file helpers: atomic replace (temp file, fsync, rename) with a mode. */
import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { randomBytes } from 'node:crypto';

/**
 * Writes `data` to `file` so that a crash leaves either the old or the new content, never a
 * mix: write a temp file beside it, fsync, rename over.
 */
export function writeFileAtomic(file: string, data: string | Uint8Array, mode = 0o600): void {
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const fd = openSync(tmp, 'w', mode);
  try {
    try {
      const buf = typeof data === 'string' ? Buffer.from(data) : data;
      let pos = 0;
      while (pos < buf.length) pos += writeSync(fd, buf, pos, buf.length - pos);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
  } catch (err) {
    // a full disk (ENOSPC): the partial temp file would hold on to the space, and no one else
    // knows its name to remove it
    rmSync(tmp, { force: true });
    throw err;
  }
}
