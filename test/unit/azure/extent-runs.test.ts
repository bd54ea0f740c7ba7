/** extentRuns: which extents a compaction reads together (shared/azure/blob-disk-store.ts). */
import { describe, expect, it } from 'vitest';
import { extentRuns } from '../../../shared/azure/blob-disk-store';
import type { ExtentWrite } from '../../../shared/domain/extents';

const w = (blockIndex: number): ExtentWrite => ({ extentIndex: blockIndex, segment: 0, blockIndex, extentOffset: blockIndex * 4194304, extentLength: 4194304, pieces: [], full: false, allZero: false });
const indexes = (runs: ExtentWrite[][]) => runs.map((r) => r.map((x) => x.blockIndex));

describe('extentRuns', () => {
  it('groups neighbouring extents that need their current bytes, at most maxRun per run, in block order', () => {
    const writes = [7, 1, 2, 3, 4, 5, 9, 10].map(w);
    expect(indexes(extentRuns(writes, 4, () => true))).toEqual([[1, 2, 3, 4], [5], [7], [9, 10]]);
  });

  it('keeps an extent that needs no read (full, zero, never written) on its own, and runs of one with maxRun 1', () => {
    const writes = [1, 2, 3, 4].map(w);
    expect(indexes(extentRuns(writes, 4, (x) => x.blockIndex !== 3))).toEqual([[1, 2], [3], [4]]);
    expect(indexes(extentRuns(writes, 1, () => true))).toEqual([[1], [2], [3], [4]]);
    expect(extentRuns([], 4, () => true)).toEqual([]);
  });
});
