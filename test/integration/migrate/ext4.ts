/** Test data for the migration tests: a real ext4 image, and the batch records that copy it. */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { EXTENT_BYTES } from '../../../shared/domain/extents';
import type { BatchRecord } from '../../../shared/domain/wire-format';
import { rng } from '../../support/batches';

/** An ext4 image of `sizeMiB` made by `mke2fs -d` from a small deterministic tree. */
export function makeExt4Image(dir: string, name: string, sizeMiB: number, seed = 5): Buffer {
  const tree = join(dir, `${name}-tree`);
  mkdirSync(join(tree, 'etc'), { recursive: true });
  mkdirSync(join(tree, 'var/lib'), { recursive: true });
  const next = rng(seed);
  writeFileSync(join(tree, 'etc/hostname'), `${name}\n`);
  for (let i = 0; i < 6; i++) {
    const data = Buffer.alloc(256 * 1024 + i * 4096);
    for (let j = 0; j < data.length; j += 4) data.writeUInt32LE(Math.floor(next() * 0xffffffff), j);
    writeFileSync(join(tree, `var/lib/blob-${i}.bin`), data);
  }
  const img = join(dir, `${name}.img`);
  execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-E', 'root_owner=0:0', '-d', tree, img, `${sizeMiB}M`], { stdio: 'pipe' });
  return readFileSync(img);
}

/** One data record per non-zero 4 MiB extent of `image` (how an initial copy skips zeros). */
export function imageRecords(image: Buffer): BatchRecord[] {
  const records: BatchRecord[] = [];
  for (let off = 0; off < image.length; off += EXTENT_BYTES) {
    const chunk = image.subarray(off, Math.min(image.length, off + EXTENT_BYTES));
    if (chunk.some((b) => b !== 0)) records.push({ kind: 'data', offset: off, data: Buffer.from(chunk) });
  }
  return records;
}
