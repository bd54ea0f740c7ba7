/**
 * Timer triggers. The handler gets the extension's TimerInfo as the host sends it (JSON with
 * PascalCase keys; the library camel-cases them): `{ schedule: { adjustForDST },
 * scheduleStatus: { last, next, lastUpdated }, isPastDue }`.
 *
 * Occurrences never overlap: the next one is computed once the running invocation is done, as
 * the extension does. Schedule status lives in memory only (Azure keeps it in storage), so
 * `isPastDue` is true only when an occurrence fires more than a second late (a busy host, or
 * an invocation that overran the next occurrence).
 */
import type { Logger } from 'pino';
import type { RegisteredFunction } from '../core-api';
import { HostError } from '../errors';
import { resolveAppSettingRefs } from '../host-json';
import type { Invoker } from '../invoker';
import { parseSchedule, type Schedule } from './ncrontab';

const MAX_TIMEOUT = 2 ** 31 - 1;
const PAST_DUE_MS = 1000;
const NEVER = '0001-01-01T00:00:00';

export class TimerListener {
  private readonly schedule: Schedule;
  private readonly runOnStartup: boolean;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private last: Date | undefined;

  constructor(
    private readonly fn: RegisteredFunction,
    private readonly triggerName: string,
    binding: Record<string, unknown>,
    settings: Record<string, string>,
    private readonly invoker: Invoker,
    private readonly logger: Logger,
  ) {
    const raw = typeof binding.schedule === 'string' ? binding.schedule : '';
    const text = resolveAppSettingRefs(raw, settings, `Function '${fn.metadata.name}' schedule`);
    try {
      this.schedule = parseSchedule(text);
    } catch (err) {
      throw HostError.invalidSchedule(fn.metadata.name, text, (err as Error).message);
    }
    this.runOnStartup = binding.runOnStartup === true;
  }

  describe(): string {
    return this.schedule.text;
  }

  start(): void {
    if (this.runOnStartup) {
      void this.fire(new Date(), 'Timer fired at startup (runOnStartup)').then(() => this.arm());
    } else {
      this.arm();
    }
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private arm(): void {
    if (this.stopped) return;
    const now = new Date();
    const due = this.schedule.next(now);
    const wait = (): void => {
      if (this.stopped) return;
      const left = due.getTime() - Date.now();
      if (left > 0) {
        this.timer = setTimeout(wait, Math.min(left, MAX_TIMEOUT));
        return;
      }
      void this.fire(due, 'Timer fired').then(() => this.arm());
    };
    this.logger.debug({ fn: this.fn.metadata.name, next: due.toISOString() }, 'Timer armed');
    wait();
  }

  private async fire(scheduled: Date, reason: string): Promise<void> {
    if (this.stopped) return;
    const now = new Date();
    const next = this.schedule.next(now);
    const timerInfo = {
      Schedule: { AdjustForDST: true },
      ScheduleStatus: {
        Last: this.last ? this.last.toISOString() : NEVER,
        Next: next.toISOString(),
        LastUpdated: now.toISOString(),
      },
      IsPastDue: now.getTime() - scheduled.getTime() > PAST_DUE_MS,
    };
    this.last = scheduled;
    await this.invoker.invoke(this.fn, { inputData: [{ name: this.triggerName, data: { json: JSON.stringify(timerInfo) } }] }, `${reason} at ${now.toISOString()}`);
  }
}
