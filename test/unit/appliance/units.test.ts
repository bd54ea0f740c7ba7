import { describe, expect, it } from 'vitest';
import { parseDuration, parseRate, parseSize } from '../../../local/appliance/units';

describe('units', () => {
  it('parses sizes, rates and durations', () => {
    expect(parseSize('4k')).toBe(4096);
    expect(parseSize('64KiB')).toBe(65536);
    expect(parseSize('1MB')).toBe(1_000_000);
    expect(parseRate('20MB/s')).toBe(20_000_000);
    expect(parseRate('5')).toBe(5_000_000);
    expect(parseDuration('60s')).toBe(60_000);
    expect(parseDuration('2m')).toBe(120_000);
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('3')).toBe(3000);
  });

  it('names the option and the expected form on bad input', () => {
    expect(() => parseSize('4q', '--io-size')).toThrow("--io-size '4q' is not a size such as 4k, 64KiB or 1MB.");
    expect(() => parseDuration('soon', '--duration')).toThrow("--duration 'soon' is not a duration such as 500ms, 60s, 2m or 1h.");
  });
});
