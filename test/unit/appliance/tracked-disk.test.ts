import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { commitJournal, journalDir, mergeRanges, readJournal, TrackedDisk } from '../../../local/appliance/tracked-disk';

const dir = mkdtempSync(join(tmpdir(), 'ferry-tracked-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('mergeRanges', () => {
  it('sorts and merges overlapping and adjacent ranges', () => {
    expect(mergeRanges([{ offset: 4096, length: 512 }, { offset: 0, length: 1024 }, { offset: 512, length: 1024 }, { offset: 1536, length: 512 }])).toEqual([
      { offset: 0, length: 2048 },
      { offset: 4096, length: 512 },
    ]);
  });
});

describe('TrackedDisk and its journal', () => {
  it('writes the image, journals sector-aligned ranges, and reads each only once after a commit', () => {
    const image = join(dir, 'd.img');
    writeFileSync(image, Buffer.alloc(1024 * 1024));
    const state = join(dir, 'state');
    const disk = TrackedDisk.open(image, state);
    disk.write(100, Buffer.from('hello')); // inside sector 0
    disk.write(8192, Buffer.alloc(4096, 1));
    expect(readFileSync(image).subarray(100, 105).toString()).toBe('hello');
    const jdir = journalDir(state, image);
    const first = readJournal(jdir, {});
    expect(first.ranges).toEqual([{ offset: 0, length: 512 }, { offset: 8192, length: 4096 }]);
    const positions = commitJournal(jdir, first);
    expect(readJournal(jdir, positions).ranges).toEqual([]);
    disk.write(512, Buffer.alloc(600, 2)); // sectors 1-2
    disk.close();
    const second = readJournal(jdir, positions);
    expect(second.ranges).toEqual([{ offset: 512, length: 1024 }]);
    expect(second.finished).toHaveLength(1);
    commitJournal(jdir, second);
    expect(readdirSync(jdir)).toEqual([]);
  });

  it('refuses a write past the end and a missing disk', () => {
    const image = join(dir, 'e.img');
    writeFileSync(image, Buffer.alloc(4096));
    const disk = TrackedDisk.open(image, join(dir, 'state2'));
    expect(() => disk.write(4000, Buffer.alloc(512))).toThrow(/does not fit/);
    disk.close();
    expect(() => TrackedDisk.open(join(dir, 'missing.img'), dir)).toThrow(/does not exist/);
    expect(existsSync(join(dir, 'missing.img'))).toBe(false);
  });
});
