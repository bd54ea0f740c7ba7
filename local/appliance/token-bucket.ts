/**
 * A token bucket for the upload bandwidth cap (`--limit-mbps`): `rate` bytes per second,
 * bursts up to `burst` bytes. `take(n)` resolves when n bytes may be sent; a request larger
 * than the burst is let through once the bucket is full and drives it negative, so the
 * long-run rate holds for any request size. Clock and sleep are injectable for tests.
 */
export interface BucketClock {
  now(): number;
  sleep(ms: number): Promise<void>;
}

const realClock: BucketClock = { now: () => performance.now(), sleep: (ms) => new Promise((r) => setTimeout(r, ms)) };

export class TokenBucket {
  private tokens: number;
  private last: number;
  private queue: Promise<void> = Promise.resolve();

  constructor(readonly bytesPerSecond: number, readonly burstBytes = Math.max(256 * 1024, bytesPerSecond / 10), private readonly clock: BucketClock = realClock) {
    this.tokens = burstBytes;
    this.last = clock.now();
  }

  private refill(): void {
    const now = this.clock.now();
    this.tokens = Math.min(this.burstBytes, this.tokens + ((now - this.last) / 1000) * this.bytesPerSecond);
    this.last = now;
  }

  /** Waits for `bytes` tokens; callers are served in order. */
  take(bytes: number): Promise<void> {
    const run = async (): Promise<void> => {
      this.refill();
      const need = Math.min(bytes, this.burstBytes);
      while (this.tokens < need) {
        await this.clock.sleep(Math.max(1, ((need - this.tokens) / this.bytesPerSecond) * 1000));
        this.refill();
      }
      this.tokens -= bytes;
    };
    const p = this.queue.then(run);
    this.queue = p.catch(() => undefined);
    return p;
  }
}

/** `--limit-mbps X`: megabits per second to bytes per second. */
export function mbpsToBytesPerSecond(mbps: number): number {
  return (mbps * 1_000_000) / 8;
}
