/**
 * A token bucket for the upload bandwidth cap (`--limit-mbps`): `rate` bytes per second,
 * bursts up to `burst` bytes. `take(n)` resolves when n bytes may be sent; a request larger
 * than the burst is let through once the bucket is full and drives it negative, so the
 * long-run rate holds for any request size. Clock and sleep are injectable for tests.
 */
import { capAt, type ScheduleRule } from './bandwidth-schedule';

export interface BucketClock {
  now(): number;
  sleep(ms: number): Promise<void>;
}

const realClock: BucketClock = { now: () => performance.now(), sleep: (ms) => new Promise((r) => setTimeout(r, ms)) };

/** What the uploads wait on: a fixed cap (TokenBucket) or a schedule of caps (ScheduledThrottle). */
export interface Throttle {
  take(bytes: number): Promise<void>;
}

export class TokenBucket implements Throttle {
  private tokens: number;
  private last: number;
  private queue: Promise<void> = Promise.resolve();
  private readonly fixedBurst: boolean;
  burstBytes: number;

  /** `burstBytes` defaults to a tenth of a second at the rate (at least 256 KiB), and follows setRate. */
  constructor(public bytesPerSecond: number, burstBytes?: number, private readonly clock: BucketClock = realClock) {
    this.fixedBurst = burstBytes !== undefined;
    this.burstBytes = burstBytes ?? Math.max(256 * 1024, bytesPerSecond / 10);
    this.tokens = this.burstBytes;
    this.last = clock.now();
  }

  /** Changes the rate from now on (a schedule moving into or out of work hours). */
  setRate(bytesPerSecond: number): void {
    if (bytesPerSecond === this.bytesPerSecond) return;
    this.refill();
    this.bytesPerSecond = bytesPerSecond;
    if (!this.fixedBurst) this.burstBytes = Math.max(256 * 1024, bytesPerSecond / 10);
    this.tokens = Math.min(this.tokens, this.burstBytes);
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

/**
 * `--limit-schedule`: the cap follows the schedule's rule in force at each upload
 * (bandwidth-schedule.ts); between caps one token bucket carries on at the new rate.
 */
export class ScheduledThrottle implements Throttle {
  private readonly bucket: TokenBucket;
  private lastRule: string | undefined = '';

  constructor(
    private readonly rules: readonly ScheduleRule[],
    private readonly fallbackMbps: number | undefined,
    private readonly options: { clock?: BucketClock; now?: () => Date; onChange?: (mbps: number | null, rule: string | undefined) => void } = {},
  ) {
    this.bucket = new TokenBucket(mbpsToBytesPerSecond(1), undefined, options.clock ?? realClock);
  }

  /** The cap in force now, in Mbps (null: none). */
  current(): number | null {
    return capAt(this.rules, (this.options.now ?? (() => new Date()))(), this.fallbackMbps).mbps;
  }

  take(bytes: number): Promise<void> {
    const { mbps, rule } = capAt(this.rules, (this.options.now ?? (() => new Date()))(), this.fallbackMbps);
    if (rule !== this.lastRule) {
      this.lastRule = rule;
      this.options.onChange?.(mbps, rule);
    }
    if (mbps === null) return Promise.resolve();
    this.bucket.setRate(mbpsToBytesPerSecond(mbps));
    return this.bucket.take(bytes);
  }
}
