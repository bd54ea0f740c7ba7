import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decideBatch } from '../../../shared/domain/sequencing';

describe('decideBatch', () => {
  it('applies the next sequence of the current epoch', () => {
    expect(decideBatch({ epoch: 1, appliedSequence: 4 }, { epoch: 1, sequence: 5 })).toEqual({ action: 'apply', startsEpoch: false });
  });

  it('starts the first epoch and a new epoch at sequence 1', () => {
    expect(decideBatch({ epoch: 0, appliedSequence: 0 }, { epoch: 1, sequence: 1 })).toEqual({ action: 'apply', startsEpoch: true });
    expect(decideBatch({ epoch: 1, appliedSequence: 900 }, { epoch: 2, sequence: 1 })).toEqual({ action: 'apply', startsEpoch: true });
  });

  it('drops redeliveries and batches of an older epoch', () => {
    expect(decideBatch({ epoch: 1, appliedSequence: 4 }, { epoch: 1, sequence: 4 })).toEqual({ action: 'duplicate' });
    expect(decideBatch({ epoch: 1, appliedSequence: 4 }, { epoch: 1, sequence: 1 })).toEqual({ action: 'duplicate' });
    expect(decideBatch({ epoch: 2, appliedSequence: 1 }, { epoch: 1, sequence: 5 })).toEqual({ action: 'stale-epoch' });
  });

  it('reports a gap with the sequence it expected', () => {
    expect(decideBatch({ epoch: 1, appliedSequence: 4 }, { epoch: 1, sequence: 6 })).toEqual({ action: 'gap', expectedSequence: 5 });
    expect(decideBatch({ epoch: 1, appliedSequence: 4 }, { epoch: 2, sequence: 2 })).toEqual({ action: 'gap', expectedSequence: 1 });
  });

  it('applies each batch exactly once under any redelivery pattern of an in-order stream', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 3 }), { minLength: 1, maxLength: 60 }), (repeats) => {
        // Sequence i is delivered 1 + repeats[i] times in a row (at-least-once, in order).
        let disk = { epoch: 1, appliedSequence: 0 };
        const applied: number[] = [];
        repeats.forEach((r, i) => {
          for (let k = 0; k <= r; k++) {
            const d = decideBatch(disk, { epoch: 1, sequence: i + 1 });
            expect(d.action === 'apply' || d.action === 'duplicate').toBe(true);
            if (d.action === 'apply') {
              applied.push(i + 1);
              disk = { epoch: 1, appliedSequence: i + 1 };
            }
          }
        });
        expect(applied).toEqual(repeats.map((_, i) => i + 1));
      }),
    );
  });
});
