/**
 * Timer trigger schedules, as the Functions timer extension reads them
 * (https://learn.microsoft.com/azure/azure-functions/functions-bindings-timer#ncrontab-expressions):
 * six NCRONTAB fields `{second} {minute} {hour} {day} {month} {day-of-week}` (five fields are
 * accepted too, seconds then being 0), each `*`, a value, a range `a-b`, a list `a,b`, a step
 * `* /n` or `a-b/n`; month and day names (`Jan`, `Mon`); day-of-week 0 or 7 = Sunday. Or a
 * TimeSpan `hh:mm:ss`: every that long, counted from the last run.
 *
 * Times are UTC (WEBSITE_TIME_ZONE is not supported here). Like cron, when both day and
 * day-of-week are restricted, a day matching either runs.
 */
import { parseTimeSpan } from '../host-json';

export interface Schedule {
  /** The first occurrence strictly after `after`. */
  next(after: Date): Date;
  readonly text: string;
  readonly kind: 'cron' | 'interval';
}

interface Field {
  values: Set<number>;
  star: boolean;
}

const MONTHS = ['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC'];
const DAYS = ['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'];

function parseValue(text: string, names: string[] | undefined, nameBase: number): number {
  if (/^\d+$/.test(text)) return Number(text);
  const upper = text.toUpperCase();
  const i = names ? names.findIndex((n) => upper === n || fullName(upper, n)) : -1;
  if (i >= 0) return i + nameBase;
  throw new Error(`"${text}" is not a number${names ? ' or a name' : ''}`);
}

/** `MONDAY` for `MON`, `JANUARY` for `JAN`: full English names are accepted too. */
function fullName(upper: string, short: string): boolean {
  const full: Record<string, string> = {
    SUN: 'SUNDAY', MON: 'MONDAY', TUE: 'TUESDAY', WED: 'WEDNESDAY', THU: 'THURSDAY', FRI: 'FRIDAY', SAT: 'SATURDAY',
    JAN: 'JANUARY', FEB: 'FEBRUARY', MAR: 'MARCH', APR: 'APRIL', MAY: 'MAY', JUN: 'JUNE', JUL: 'JULY', AUG: 'AUGUST',
    SEP: 'SEPTEMBER', OCT: 'OCTOBER', NOV: 'NOVEMBER', DEC: 'DECEMBER',
  };
  return full[short] === upper;
}

function parseField(text: string, min: number, max: number, what: string, names?: string[], nameBase = 0): Field {
  const values = new Set<number>();
  let star = false;
  for (const item of text.split(',')) {
    if (item === '') throw new Error(`empty list item in the ${what} field`);
    const [rangeText, stepText, extra] = item.split('/');
    if (extra !== undefined || rangeText === undefined) throw new Error(`"${item}" in the ${what} field has more than one "/"`);
    let lo: number;
    let hi: number;
    if (rangeText === '*' || rangeText === '?') {
      lo = min;
      hi = max;
      if (stepText === undefined) star = true;
    } else {
      const [a, b, more] = rangeText.split('-');
      if (more !== undefined || a === undefined || a === '') throw new Error(`"${rangeText}" in the ${what} field is not a value or range`);
      lo = parseValue(a, names, nameBase);
      hi = b === undefined ? (stepText !== undefined ? max : lo) : parseValue(b, names, nameBase);
    }
    const step = stepText === undefined ? 1 : Number(stepText);
    if (!Number.isInteger(step) || step < 1) throw new Error(`step "${stepText}" in the ${what} field must be a positive integer`);
    // Day-of-week 7 is Sunday too: a lone 7 becomes 0; ranges ending at 7 wrap below.
    if (what === 'day-of-week' && lo === 7 && hi === 7) lo = hi = 0;
    const top = what === 'day-of-week' ? 7 : max;
    if (lo < min || hi > top || lo > hi) throw new Error(`"${item}" is outside ${min}-${max} in the ${what} field`);
    for (let v = lo; v <= hi; v += step) values.add(what === 'day-of-week' ? v % 7 : v);
  }
  return { values, star };
}

class CronSchedule implements Schedule {
  readonly kind = 'cron';
  private readonly second: Field;
  private readonly minute: Field;
  private readonly hour: Field;
  private readonly day: Field;
  private readonly month: Field;
  private readonly dow: Field;

  constructor(readonly text: string) {
    const fields = text.trim().split(/\s+/);
    if (fields.length === 5) fields.unshift('0');
    if (fields.length !== 6) throw new Error(`it has ${fields.length} fields, not 6`);
    const [s, mi, h, d, mo, dw] = fields as [string, string, string, string, string, string];
    this.second = parseField(s, 0, 59, 'second');
    this.minute = parseField(mi, 0, 59, 'minute');
    this.hour = parseField(h, 0, 23, 'hour');
    this.day = parseField(d, 1, 31, 'day');
    this.month = parseField(mo, 1, 12, 'month', MONTHS, 1);
    this.dow = parseField(dw, 0, 6, 'day-of-week', DAYS, 0);
    if (this.month.values.size === 0 || this.day.values.size === 0) throw new Error('it never fires');
  }

  private dayMatches(t: Date): boolean {
    const dayOk = this.day.values.has(t.getUTCDate());
    const dowOk = this.dow.values.has(t.getUTCDay());
    if (this.day.star || this.dow.star) return dayOk && dowOk;
    return dayOk || dowOk;
  }

  next(after: Date): Date {
    const t = new Date(Math.floor(after.getTime() / 1000) * 1000 + 1000);
    // Bounded search: five years of days is plenty for any satisfiable expression.
    for (let guard = 0; guard < 366 * 5 * 24 * 60; guard++) {
      if (!this.month.values.has(t.getUTCMonth() + 1)) {
        t.setUTCMonth(t.getUTCMonth() + 1, 1);
        t.setUTCHours(0, 0, 0, 0);
        continue;
      }
      if (!this.dayMatches(t)) {
        t.setUTCDate(t.getUTCDate() + 1);
        t.setUTCHours(0, 0, 0, 0);
        continue;
      }
      if (!this.hour.values.has(t.getUTCHours())) {
        t.setUTCHours(t.getUTCHours() + 1, 0, 0, 0);
        continue;
      }
      if (!this.minute.values.has(t.getUTCMinutes())) {
        t.setUTCMinutes(t.getUTCMinutes() + 1, 0, 0);
        continue;
      }
      if (!this.second.values.has(t.getUTCSeconds())) {
        t.setUTCSeconds(t.getUTCSeconds() + 1, 0);
        continue;
      }
      return t;
    }
    throw new Error(`the schedule "${this.text}" has no occurrence in the next five years`);
  }
}

class IntervalSchedule implements Schedule {
  readonly kind = 'interval';
  constructor(readonly text: string, private readonly ms: number) {}
  next(after: Date): Date {
    return new Date(after.getTime() + this.ms);
  }
}

/** Parses a schedule; throws an Error saying what is wrong. */
export function parseSchedule(text: string): Schedule {
  if (/^\s*[\d.-]+:\d/.test(text)) {
    const ms = parseTimeSpan(text);
    if (ms === undefined || ms <= 0) throw new Error('it is not a positive TimeSpan "hh:mm:ss"');
    return new IntervalSchedule(text, ms);
  }
  return new CronSchedule(text);
}
