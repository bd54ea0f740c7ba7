/**
 * Bandwidth schedules (`--limit-schedule`): different upload caps in and out of work hours, as
 * Azure Site Recovery's process server throttling has ("work hours" and "non-work hours").
 *
 * A schedule is a list of rules separated by `;`, the first matching rule wins:
 *
 *   Mon-Fri 08:00-18:00=50; Sat,Sun=200; *=unlimited
 *
 * - days: `Mon`..`Sun`, ranges (`Mon-Fri`, `Fri-Mon` wraps), lists (`Sat,Sun`), or omitted (every day);
 * - hours: `HH:MM-HH:MM` in the appliance's local time, end exclusive; a range past midnight
 *   (`22:00-06:00`) is allowed and belongs to the day it starts on; omitted: the whole day;
 * - `*` alone is every day, all day;
 * - the cap: megabits per second (0.5..10000), or `unlimited`.
 * When no rule matches, `--limit-mbps` applies (or no cap).
 */

export interface ScheduleRule {
  /** Days of week the rule starts on, 0 = Sunday (as Date#getDay). */
  days: ReadonlySet<number>;
  /** Minutes after local midnight; start === end means the whole day. */
  startMinute: number;
  endMinute: number;
  /** Megabits per second; null: no cap. */
  mbps: number | null;
  text: string;
}

export class ScheduleError extends Error {
  override readonly name = 'ScheduleError';
}

const DAY_NAMES = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];
const MIN_MBPS = 0.5;
const MAX_MBPS = 10_000;
const EXAMPLE = `e.g. --limit-schedule "Mon-Fri 08:00-18:00=50; *=500"`;

function day(name: string, rule: string): number {
  const i = DAY_NAMES.indexOf(name.toLowerCase().slice(0, 3));
  if (i < 0 || name.length < 3) throw new ScheduleError(`In the bandwidth schedule rule '${rule}': '${name}' is not a day (use Mon, Tue, Wed, Thu, Fri, Sat, Sun); ${EXAMPLE}.`);
  return i;
}

function minute(hhmm: string, rule: string): number {
  const m = /^(\d{1,2}):(\d{2})$/.exec(hhmm);
  const h = m ? Number(m[1]) : NaN;
  const min = m ? Number(m[2]) : NaN;
  if (!m || h > 24 || min > 59 || (h === 24 && min !== 0)) throw new ScheduleError(`In the bandwidth schedule rule '${rule}': '${hhmm}' is not a time HH:MM (00:00..24:00); ${EXAMPLE}.`);
  return h * 60 + min;
}

function parseDays(spec: string, rule: string): Set<number> {
  const days = new Set<number>();
  for (const part of spec.split(',')) {
    const [a, b, ...rest] = part.split('-');
    if (!a || rest.length > 0) throw new ScheduleError(`In the bandwidth schedule rule '${rule}': '${part}' is not a day or a day range; ${EXAMPLE}.`);
    const from = day(a, rule);
    const to = b === undefined ? from : day(b, rule);
    for (let d = from; ; d = (d + 1) % 7) {
      days.add(d);
      if (d === to) break;
    }
  }
  return days;
}

export function parseSchedule(spec: string): ScheduleRule[] {
  const rules: ScheduleRule[] = [];
  for (const raw of spec.split(';')) {
    const text = raw.trim();
    if (!text) continue;
    const eq = text.lastIndexOf('=');
    if (eq < 0) throw new ScheduleError(`The bandwidth schedule rule '${text}' has no '=<Mbps>'; ${EXAMPLE}.`);
    const cap = text.slice(eq + 1).trim().toLowerCase();
    let mbps: number | null;
    if (cap === 'unlimited') mbps = null;
    else {
      mbps = Number(cap);
      if (!cap || !Number.isFinite(mbps) || mbps < MIN_MBPS || mbps > MAX_MBPS) {
        throw new ScheduleError(`In the bandwidth schedule rule '${text}': '${cap}' is not a cap in Mbps between ${MIN_MBPS} and ${MAX_MBPS} or 'unlimited'.`);
      }
    }
    const words = text.slice(0, eq).trim().split(/\s+/).filter(Boolean);
    let days = new Set([0, 1, 2, 3, 4, 5, 6]);
    let startMinute = 0;
    let endMinute = 0;
    if (words.length === 1 && words[0] === '*') words.length = 0;
    for (const w of words) {
      if (/^\d/.test(w)) {
        const [a, b, ...rest] = w.split('-');
        if (!a || !b || rest.length > 0) throw new ScheduleError(`In the bandwidth schedule rule '${text}': '${w}' is not a time range HH:MM-HH:MM; ${EXAMPLE}.`);
        startMinute = minute(a, text);
        endMinute = minute(b, text) % (24 * 60);
        if (startMinute === endMinute && minute(b, text) !== 24 * 60) throw new ScheduleError(`In the bandwidth schedule rule '${text}': the time range '${w}' is empty.`);
      } else days = parseDays(w, text);
    }
    if (words.length > 2) throw new ScheduleError(`The bandwidth schedule rule '${text}' has more than days and hours before '='; ${EXAMPLE}.`);
    rules.push({ days, startMinute, endMinute, mbps, text });
  }
  if (rules.length === 0) throw new ScheduleError(`The bandwidth schedule is empty; ${EXAMPLE}.`);
  return rules;
}

function matches(rule: ScheduleRule, at: Date): boolean {
  const today = at.getDay();
  const m = at.getHours() * 60 + at.getMinutes();
  if (rule.startMinute === rule.endMinute) return rule.days.has(today);
  if (rule.startMinute < rule.endMinute) return rule.days.has(today) && m >= rule.startMinute && m < rule.endMinute;
  // Past midnight: the evening part belongs to today, the morning part to the day before.
  return (rule.days.has(today) && m >= rule.startMinute) || (rule.days.has((today + 6) % 7) && m < rule.endMinute);
}

/** The cap in force at `at`: the first matching rule's, else `fallbackMbps` (undefined: no cap). */
export function capAt(rules: readonly ScheduleRule[], at: Date, fallbackMbps?: number): { mbps: number | null; rule?: string } {
  for (const r of rules) if (matches(r, at)) return { mbps: r.mbps, rule: r.text };
  return { mbps: fallbackMbps ?? null };
}
