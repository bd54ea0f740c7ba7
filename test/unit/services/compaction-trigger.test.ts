/**
 * When an apply asks for a compaction (shared/ports/compaction-queue.ts): at the crossing of the
 * trigger and at every further half trigger of growth, never at every apply of a large log.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { shouldRequestCompaction } from '../../../shared/ports/compaction-queue';

const MiB = 1024 * 1024;
const T = 512 * MiB;

describe('shouldRequestCompaction', () => {
  it('asks at the crossing and at each half trigger beyond it, not in between', () => {
    expect(shouldRequestCompaction(0, 100 * MiB, T)).toBe(false);
    expect(shouldRequestCompaction(500 * MiB, 520 * MiB, T)).toBe(true); // crossing
    expect(shouldRequestCompaction(520 * MiB, 540 * MiB, T)).toBe(false); // still above, no new step
    expect(shouldRequestCompaction(760 * MiB, 770 * MiB, T)).toBe(true); // past 768 MiB
    expect(shouldRequestCompaction(800 * MiB, 800 * MiB, T)).toBe(false); // an apply that wrote no log
  });

  it('over any growth sequence: one request per crossing plus one per half trigger grown above it', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 64 }), { minLength: 1, maxLength: 200 }), (steps) => {
        let log = 0;
        let requests = 0;
        for (const s of steps) {
          const before = log;
          log += s * MiB;
          if (shouldRequestCompaction(before, log, T)) requests++;
        }
        const expected = log < T ? 0 : 1 + (Math.floor(log / (T / 2)) - 2);
        expect(requests).toBe(expected);
      }),
    );
  });
});
