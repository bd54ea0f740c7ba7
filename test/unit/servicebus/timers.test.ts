import { describe, expect, it } from 'vitest';
import { Timers } from '../../../local/servicebus/queue';
import { waitFor } from '../../integration/servicebus/helpers';

describe('Timers', () => {
  it('fires deadlines in order and forgets cancelled ones at once', async () => {
    const timers = new Timers();
    const fired: string[] = [];
    const now = Date.now();
    const handles = Array.from({ length: 1000 }, (_, i) => timers.schedule(now + 60_000 + i, () => fired.push(`late${i}`)));
    timers.schedule(now + 30, () => fired.push('b'));
    timers.schedule(now + 10, () => fired.push('a'));
    const c = timers.schedule(now + 20, () => fired.push('cancelled'));
    timers.cancel(c);
    for (const h of handles) timers.cancel(h);
    expect(timers.size).toBe(2);
    await waitFor(() => fired.length === 2, 2000, 'both deadlines');
    expect(fired).toEqual(['a', 'b']);
    expect(timers.size).toBe(0);
    timers.close();
  });
});
