import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FingerprintMap, FP_BLOCK_BYTES, fingerprint, UNKNOWN_FP, zeroFingerprint } from '../../../local/appliance/fingerprints';

const dir = mkdtempSync(join(tmpdir(), 'ferry-fp-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('FingerprintMap', () => {
  it('starts unknown, round-trips through its file, and keeps the last short block', () => {
    const size = 3 * FP_BLOCK_BYTES + 1024;
    const map = new FingerprintMap(size);
    expect(map.blocks).toBe(4);
    expect(map.get(0)).toBe(UNKNOWN_FP);
    expect(map.range(3)).toEqual({ offset: 3 * FP_BLOCK_BYTES, length: 1024 });
    map.set(1, fingerprint(Buffer.alloc(FP_BLOCK_BYTES, 9)));
    map.set(3, zeroFingerprint(1024));
    const file = join(dir, 'a.fp');
    map.save(file);
    const back = FingerprintMap.load(file, size);
    expect(back.get(1)).toBe(map.get(1));
    expect(back.get(3)).toBe(zeroFingerprint(1024));
    expect(back.knownBlocks()).toBe(2);
  });

  it('ignores a map made for another disk size or a damaged file (everything unknown)', () => {
    const file = join(dir, 'b.fp');
    const map = new FingerprintMap(2 * FP_BLOCK_BYTES);
    map.set(0, 5n);
    map.save(file);
    expect(FingerprintMap.load(file, 4 * FP_BLOCK_BYTES).knownBlocks()).toBe(0);
    writeFileSync(file, Buffer.from('garbage'));
    expect(FingerprintMap.load(file, 2 * FP_BLOCK_BYTES).knownBlocks()).toBe(0);
  });

  it('tells blocks apart that differ in one byte, and never yields the unknown marker', () => {
    const a = Buffer.alloc(FP_BLOCK_BYTES, 1);
    const b = Buffer.from(a);
    b[FP_BLOCK_BYTES - 1] = 2;
    expect(fingerprint(a)).not.toBe(fingerprint(b));
    expect(fingerprint(a)).not.toBe(UNKNOWN_FP);
  });
});
