import { describe, expect, it } from 'vitest';
import { ScheduleError, capAt, parseSchedule } from '../../../local/appliance/bandwidth-schedule';
import { ScheduledThrottle, mbpsToBytesPerSecond } from '../../../local/appliance/token-bucket';
import { throttleFor } from '../../../local/appliance/process-server';

/** A local time: 2026-11-23 is a Monday. */
const at = (day: number, hh: number, mm = 0) => new Date(2026, 10, 23 + day, hh, mm);
const MON = 0;
const FRI = 4;
const SAT = 5;
const SUN = 6;

describe('bandwidth schedule', () => {
  const rules = parseSchedule('Mon-Fri 08:00-18:00=50; Sat,Sun=200; *=unlimited');

  it('applies the first matching rule: work hours, weekend, otherwise', () => {
    expect(capAt(rules, at(MON, 8, 0)).mbps).toBe(50);
    expect(capAt(rules, at(FRI, 17, 59)).mbps).toBe(50);
    expect(capAt(rules, at(FRI, 18, 0)).mbps).toBeNull(); // end is exclusive
    expect(capAt(rules, at(MON, 7, 59)).mbps).toBeNull();
    expect(capAt(rules, at(SAT, 12)).mbps).toBe(200);
    expect(capAt(rules, at(SUN, 23, 59)).mbps).toBe(200);
  });

  it('falls back to --limit-mbps when no rule matches', () => {
    const r = parseSchedule('Mon-Fri 09:00-17:00=20');
    expect(capAt(r, at(MON, 10), 500).mbps).toBe(20);
    expect(capAt(r, at(MON, 20), 500).mbps).toBe(500);
    expect(capAt(r, at(SAT, 10)).mbps).toBeNull();
  });

  it('handles ranges past midnight and wrapping day ranges', () => {
    const night = parseSchedule('Fri-Mon 22:00-06:00=900');
    expect(capAt(night, at(FRI, 23)).mbps).toBe(900);
    expect(capAt(night, at(SAT, 5, 59)).mbps).toBe(900); // Friday night, after midnight
    expect(capAt(night, at(MON, 23)).mbps).toBe(900);
    expect(capAt(night, at(MON + 1, 3)).mbps).toBe(900); // Monday night, Tuesday morning
    expect(capAt(night, at(MON + 1, 23)).mbps).toBeNull(); // Tuesday night is not in Fri-Mon
    expect(capAt(night, at(FRI, 3)).mbps).toBeNull(); // Thursday night is not either
    expect(capAt(parseSchedule('00:00-24:00=5'), at(FRI, 23, 59)).mbps).toBe(5);
  });

  it('refuses malformed schedules with a message naming the rule and the fix', () => {
    for (const [spec, fragment] of [
      ['', /empty/],
      ['Mon-Fri 08:00-18:00', /no '=<Mbps>'/],
      ['Mon-Fri 08:00-18:00=fast', /'fast' is not a cap/],
      ['Mon-Fri 08:00-18:00=0.1', /between 0.5 and 10000/],
      ['Moonday=5', /'Moonday' is not a day/],
      ['Mon 8-18=5', /not a time/],
      ['Mon 25:00-26:00=5', /not a time HH:MM/],
      ['Mon 10:00-10:00=5', /empty/],
      ['Mon Tue Wed=5', /more than days and hours/],
    ] as const) {
      expect(() => parseSchedule(spec), spec).toThrow(ScheduleError);
      expect(() => parseSchedule(spec), spec).toThrow(fragment);
    }
    expect(() => throttleFor({ limitSchedule: 'Mon=fast' })).toThrow(/--limit-schedule: /);
  });
});

describe('ScheduledThrottle', () => {
  it('holds each period at its own cap and changes rate at the boundary', async () => {
    let clockMs = 0;
    const clock = { now: () => clockMs, sleep: async (ms: number) => void (clockMs += ms) };
    const start = at(MON, 17, 59).getTime();
    const changes: (number | null)[] = [];
    const throttle = new ScheduledThrottle(parseSchedule('Mon-Fri 08:00-18:00=8; *=80'), undefined, {
      clock,
      now: () => new Date(start + clockMs),
      onChange: (mbps) => changes.push(mbps),
    });
    // 60 s of work hours at 8 Mbps = 1 MB/s: about 60 MB pass, then the evening cap of 10 MB/s.
    let sentInWork = 0;
    while (clockMs < 60_000) {
      await throttle.take(100_000);
      if (clockMs < 60_000) sentInWork += 100_000;
    }
    expect(sentInWork / 60).toBeGreaterThan(mbpsToBytesPerSecond(8) * 0.95);
    expect(sentInWork / 60).toBeLessThan(mbpsToBytesPerSecond(8) * 1.05);
    const eveningStart = clockMs;
    let sentInEvening = 0;
    while (clockMs - eveningStart < 10_000) {
      await throttle.take(100_000);
      sentInEvening += 100_000;
    }
    const rate = sentInEvening / ((clockMs - eveningStart) / 1000);
    expect(rate).toBeGreaterThan(mbpsToBytesPerSecond(80) * 0.95);
    expect(rate).toBeLessThan(mbpsToBytesPerSecond(80) * 1.1);
    expect(changes).toEqual([8, 80]);
    expect(throttle.current()).toBe(80);
  });

  it('does not wait at all while the schedule says unlimited', async () => {
    let clockMs = 0;
    const clock = { now: () => clockMs, sleep: async (ms: number) => void (clockMs += ms) };
    const throttle = new ScheduledThrottle(parseSchedule('*=unlimited'), 1, { clock, now: () => at(MON, 12) });
    for (let i = 0; i < 100; i++) await throttle.take(10_000_000);
    expect(clockMs).toBe(0);
  });
});
