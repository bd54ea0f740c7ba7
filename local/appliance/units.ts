/** Parsing the CLI's human units: sizes ("4k", "1MiB"), rates ("20MB/s"), durations ("60s"). */
import { ApplianceError } from './errors';

const SIZE_UNITS: Record<string, number> = {
  '': 1, b: 1, k: 1024, kb: 1000, kib: 1024, m: 1024 ** 2, mb: 1000 ** 2, mib: 1024 ** 2, g: 1024 ** 3, gb: 1000 ** 3, gib: 1024 ** 3,
};

export function parseSize(text: string, what = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(text);
  const unit = SIZE_UNITS[m?.[2]?.toLowerCase() ?? 'x'];
  if (!m || unit === undefined) throw new ApplianceError('BAD_ARGUMENT', `${what} '${text}' is not a size such as 4k, 64KiB or 1MB.`);
  return Math.round(Number(m[1]) * unit);
}

/** "20MB/s" -> bytes per second; a bare number is MB/s. */
export function parseRate(text: string): number {
  const stripped = text.replace(/\/s$/i, '');
  const bare = /^\s*\d+(\.\d+)?\s*$/.test(stripped);
  const n = parseSize(bare ? `${stripped}MB` : stripped, '--rate');
  if (n <= 0) throw new ApplianceError('BAD_ARGUMENT', `--rate must be above 0; got '${text}'.`);
  return n;
}

/** "60s", "2m", "500ms", "1h"; a bare number is seconds. Returns milliseconds. */
export function parseDuration(text: string, what = 'duration'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/i.exec(text);
  if (!m) throw new ApplianceError('BAD_ARGUMENT', `${what} '${text}' is not a duration such as 500ms, 60s, 2m or 1h.`);
  const mult = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's').toLowerCase() as 'ms'];
  return Number(m[1]) * mult;
}
