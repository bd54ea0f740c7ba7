import { describe, expect, it } from 'vitest';
import { TokenBucket, mbpsToBytesPerSecond } from '../../../local/appliance/token-bucket';

function fakeClock() {
  let now = 0;
  return { now: () => now, sleep: async (ms: number) => void (now += ms), get t() { return now; } };
}

describe('TokenBucket', () => {
  it('holds the configured rate over many requests', async () => {
    const clock = fakeClock();
    const bucket = new TokenBucket(1_000_000, 100_000, clock);
    for (let i = 0; i < 100; i++) await bucket.take(50_000);
    // 5 MB at 1 MB/s, less the initial 100 kB burst
    expect(clock.t).toBeGreaterThanOrEqual(4900 - 1);
    expect(clock.t).toBeLessThanOrEqual(5000);
  });

  it('lets a request larger than the burst through and charges it (the long-run rate holds)', async () => {
    const clock = fakeClock();
    const bucket = new TokenBucket(1_000_000, 100_000, clock);
    await bucket.take(4_000_000);
    expect(clock.t).toBe(0);
    await bucket.take(1);
    expect(clock.t).toBeGreaterThanOrEqual(3900);
  });

  it('serves callers in order', async () => {
    const clock = fakeClock();
    const bucket = new TokenBucket(1000, 1000, clock);
    const order: number[] = [];
    await Promise.all([1, 2, 3].map((i) => bucket.take(1000).then(() => order.push(i))));
    expect(order).toEqual([1, 2, 3]);
  });

  it('converts megabits to bytes', () => {
    expect(mbpsToBytesPerSecond(8)).toBe(1_000_000);
  });
});
