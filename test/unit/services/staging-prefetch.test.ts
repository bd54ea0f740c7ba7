import { describe, expect, it } from 'vitest';
import type { StagedBlobInfo, StagingStore } from '../../../shared/ports/staging-store';
import { PrefetchingStaging } from '../../../shared/services/staging-prefetch';

const MiB = 1024 * 1024;

/** A staging store whose gets resolve only when the test says so, recording what is in flight. */
function slowStore(sizes: Record<string, number>) {
  const pending = new Map<string, () => void>();
  const started: string[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const store: StagingStore = {
    put: async () => undefined,
    delete: async () => undefined,
    list: async function* (): AsyncIterable<StagedBlobInfo> {},
    get: (name) => {
      started.push(name);
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      return new Promise((resolve) =>
        pending.set(name, () => {
          inFlight--;
          resolve(name in sizes ? Buffer.from(name) : undefined);
        }),
      );
    },
  };
  return { store, started, pending, stats: () => ({ inFlight, maxInFlight }) };
}

describe('PrefetchingStaging', () => {
  it('fetches a few payloads ahead of their use, in order, and hands each out once', async () => {
    const names = Array.from({ length: 10 }, (_, i) => `b${i}`);
    const sizes = Object.fromEntries(names.map((n) => [n, MiB]));
    const s = slowStore(sizes);
    const p = new PrefetchingStaging(s.store, names.map((name) => ({ name, sizeBytes: MiB })));
    const first = p.get('b0', MiB);
    // b0 plus the next ones, at most 4 started
    expect(s.started).toEqual(['b0', 'b1', 'b2', 'b3']);
    for (const n of names) s.pending.get(n)?.();
    expect((await first)?.toString()).toBe('b0');
    for (const n of names.slice(1)) {
      const got = p.get(n, MiB);
      for (const m of names) s.pending.get(m)?.();
      expect((await got)?.toString()).toBe(n);
    }
    expect(s.started).toEqual(names); // each fetched exactly once
    expect(s.stats().maxInFlight).toBeLessThanOrEqual(4);
  });

  it('bounds the bytes fetched ahead, and passes unknown names through', async () => {
    const refs = [
      { name: 'big0', sizeBytes: 40 * MiB },
      { name: 'big1', sizeBytes: 40 * MiB },
      { name: 'big2', sizeBytes: 40 * MiB },
    ];
    const s = slowStore({ big0: 1, big1: 1, big2: 1, other: 1 });
    const p = new PrefetchingStaging(s.store, refs);
    void p.get('big0', 40 * MiB);
    expect(s.started).toEqual(['big0']); // big1 would pass 64 MiB in flight
    void p.get('other', MiB);
    expect(s.started).toEqual(['big0', 'other']);
    const wrongSize = p.get('big1', 1);
    expect(s.started).toEqual(['big0', 'other', 'big1']); // a different size is not the prefetched one
    for (const n of ['big0', 'other', 'big1']) s.pending.get(n)?.();
    expect((await wrongSize)?.toString()).toBe('big1');
  });
});
