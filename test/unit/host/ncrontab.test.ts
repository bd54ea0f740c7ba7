import { describe, expect, it } from 'vitest';
import { parseSchedule } from '../../../local/host/timer/ncrontab';
import { parseTimeSpan } from '../../../local/host/host-json';

const next = (expr: string, from: string) => parseSchedule(expr).next(new Date(from)).toISOString();

describe('NCRONTAB schedules', () => {
  it('fires every second with all stars', () => {
    expect(next('* * * * * *', '2026-01-01T00:00:00.400Z')).toBe('2026-01-01T00:00:01.000Z');
  });

  it('handles steps, ranges and lists', () => {
    expect(next('*/15 * * * * *', '2026-01-01T00:00:16Z')).toBe('2026-01-01T00:00:30.000Z');
    expect(next('0 5-10/5 * * * *', '2026-01-01T00:06:00Z')).toBe('2026-01-01T00:10:00.000Z');
    expect(next('0 0 9,17 * * *', '2026-01-01T10:00:00Z')).toBe('2026-01-01T17:00:00.000Z');
  });

  it('understands day-of-week names, 7 as Sunday and month names', () => {
    // 2026-01-01 is a Thursday.
    expect(next('0 30 9 * * Mon-Fri', '2026-01-02T10:00:00Z')).toBe('2026-01-05T09:30:00.000Z');
    expect(next('0 0 0 * * 7', '2026-01-01T00:00:00Z')).toBe('2026-01-04T00:00:00.000Z');
    expect(next('0 0 0 1 Feb *', '2026-01-01T00:00:00Z')).toBe('2026-02-01T00:00:00.000Z');
  });

  it('accepts five fields, seconds being zero', () => {
    expect(next('*/5 * * * *', '2026-01-01T00:01:30Z')).toBe('2026-01-01T00:05:00.000Z');
  });

  it('crosses month and year ends', () => {
    expect(next('0 0 0 31 * *', '2026-04-01T00:00:00Z')).toBe('2026-05-31T00:00:00.000Z');
    expect(next('0 0 0 29 2 *', '2026-03-01T00:00:00Z')).toBe('2028-02-29T00:00:00.000Z');
  });

  it('takes TimeSpan schedules as intervals', () => {
    const s = parseSchedule('00:05:00');
    expect(s.kind).toBe('interval');
    expect(s.next(new Date('2026-01-01T00:00:00Z')).toISOString()).toBe('2026-01-01T00:05:00.000Z');
  });

  it('rejects malformed expressions with the reason', () => {
    expect(() => parseSchedule('* * * *')).toThrow('it has 4 fields, not 6');
    expect(() => parseSchedule('61 * * * * *')).toThrow('"61" is outside 0-59 in the second field');
    expect(() => parseSchedule('*/0 * * * * *')).toThrow('step "0" in the second field must be a positive integer');
    expect(() => parseSchedule('* * * * * Funday')).toThrow('"Funday" is not a number or a name');
    expect(() => parseSchedule('0 0 0 30 2 *').next(new Date())).toThrow('no occurrence');
  });
});

describe('TimeSpan', () => {
  it('parses hh:mm:ss, days and fractions', () => {
    expect(parseTimeSpan('00:00:30')).toBe(30_000);
    expect(parseTimeSpan('1.02:00:00')).toBe(26 * 3600_000);
    expect(parseTimeSpan('00:00:01.5')).toBe(1500);
    expect(parseTimeSpan('00:61:00')).toBeUndefined();
    expect(parseTimeSpan('soon')).toBeUndefined();
  });
});
