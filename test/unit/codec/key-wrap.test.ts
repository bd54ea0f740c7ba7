import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { KeyWrapError, unwrapDataKey, wrapDataKey } from '../../../shared/codec/key-wrap';

describe('key wrap', () => {
  const master = randomBytes(32);
  const dataKey = randomBytes(32);

  it('round-trips and never contains the plain key', () => {
    const wrapped = wrapDataKey(master, dataKey, 'vm1', 1);
    expect(wrapped).toHaveLength(61);
    expect(wrapped.includes(dataKey)).toBe(false);
    expect(unwrapDataKey(master, wrapped, 'vm1', 1).equals(dataKey)).toBe(true);
  });

  it('refuses another master key, another VM, another key id, and any flipped byte', () => {
    const wrapped = wrapDataKey(master, dataKey, 'vm1', 1);
    expect(() => unwrapDataKey(randomBytes(32), wrapped, 'vm1', 1)).toThrow(/does not unwrap with this master key/);
    expect(() => unwrapDataKey(master, wrapped, 'vm2', 1)).toThrow(KeyWrapError);
    expect(() => unwrapDataKey(master, wrapped, 'vm1', 2)).toThrow(KeyWrapError);
    for (let i = 0; i < wrapped.length; i++) {
      const bad = Buffer.from(wrapped);
      bad[i] = (bad[i] ?? 0) ^ 0x01;
      expect(() => unwrapDataKey(master, bad, 'vm1', 1)).toThrow(KeyWrapError);
    }
  });

  it('rejects keys of the wrong size with a message naming the setting', () => {
    expect(() => wrapDataKey(randomBytes(16), dataKey, 'vm1', 1)).toThrow(/FERRY_MASTER_KEY/);
    expect(() => wrapDataKey(master, randomBytes(31), 'vm1', 1)).toThrow(/32 bytes/);
  });
});
