import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtureState, type FixtureEvent } from '../../fixtures/host-app/lib/events';
import { waitFor } from '../../support/wait';
import { startTestHost, type TestHost } from './helpers';

let t: TestHost;
let since: number;

function events(fn: string): FixtureEvent[] {
  return fixtureState().events.filter((e) => e.fn === fn && e.at >= since);
}

beforeAll(async () => {
  since = Date.now();
  t = await startTestHost({ mainFiles: 'timers/*.js' });
});

afterAll(async () => {
  await t?.host.stop({ graceMs: 2000 });
});

describe('timer triggers', () => {
  it('lists the timers with their schedules', () => {
    expect(t.host.functions).toEqual(
      expect.arrayContaining([
        { name: 'everySecond', trigger: 'timerTrigger', schedule: '* * * * * *' },
        { name: 'atStartup', trigger: 'timerTrigger', schedule: '0 0 0 1 1 *' },
        { name: 'everyTwoSeconds', trigger: 'timerTrigger', schedule: '00:00:02' },
      ]),
    );
  });

  it('runs a runOnStartup timer once at start, with the Timer object', async () => {
    const [ev] = await waitFor(() => events('atStartup').length > 0 && events('atStartup'), 'the startup run');
    const timer = ev?.timer as { isPastDue: boolean; schedule: unknown; scheduleStatus: { last: string; next: string; lastUpdated: string } };
    expect(timer.isPastDue).toBe(false);
    expect(timer.schedule).toEqual({ adjustForDST: true });
    expect(timer.scheduleStatus.last).toBe('0001-01-01T00:00:00');
    // Next is the next 1 January, midnight UTC.
    expect(timer.scheduleStatus.next).toBe(`${new Date().getUTCFullYear() + 1}-01-01T00:00:00.000Z`);
  });

  it('fires an every-second NCRONTAB schedule on whole seconds, once per second', async () => {
    const runs = await waitFor(() => events('everySecond').length >= 3 && events('everySecond'), 'three every-second runs', { timeoutMs: 10_000 });
    const seconds = runs.map((e) => Math.floor(e.at / 1000));
    expect(new Set(seconds).size).toBe(seconds.length);
    const second = runs[1]?.timer as { scheduleStatus: { last: string; next: string } };
    expect(Date.parse(second.scheduleStatus.next) - Date.parse(second.scheduleStatus.last)).toBeGreaterThanOrEqual(1000);
  });

  it('fires a TimeSpan schedule every interval', async () => {
    const runs = await waitFor(() => events('everyTwoSeconds').length >= 2 && events('everyTwoSeconds'), 'two interval runs', { timeoutMs: 10_000 });
    const gap = (runs[1]?.at ?? 0) - (runs[0]?.at ?? 0);
    expect(gap).toBeGreaterThanOrEqual(1900);
  });

  it('logs an Executed line per timer run', async () => {
    await waitFor(() => t.log.lines.some((l) => String(l.msg).startsWith(`Executed 'Functions.everySecond' (Succeeded`)), 'an Executed line');
  });
});
