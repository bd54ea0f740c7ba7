/**
 * Faults of the functions host: kill -9 mid-apply (at random moments with batches in flight,
 * and at a random step of an apply via FERRY_FAULT_KILL_AT), restarted each time; then two host
 * instances consuming at once (as Azure scales out), one of them killed or scaled in and out.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FaultPoint } from '../../shared/faults';
import { freePort } from '../support/ports';
import { waitFor } from '../support/wait';
import { FaultRig, InProcessAppliance, SHAPE, allProtected, expectClean, injectionCount, pick } from './harness';

const APPLY_POINTS: FaultPoint[] = [
  'apply.state-read',
  'apply.batch-opened',
  'disk.blocks-staged',
  'disk.segment-committed',
  'apply.disk-written',
  'capture.snapshotted',
  'apply.captured',
  'apply.recorded',
  'apply.done',
];

describe('faults: the functions host', () => {
  let rig: FaultRig;
  beforeAll(async () => {
    rig = await FaultRig.start('host');
  }, 180_000);
  afterAll(async () => rig?.close(), 120_000);

  it(
    'kill -9 of the host mid-apply, restarted each time: every disk exact, no batch committed twice',
    async () => {
      const sc = await rig.scenario('host-kill').begin();
      const vms = await rig.makeVms('hk', SHAPE.vms, SHAPE.diskMiB);
      const app = new InProcessAppliance(rig);
      app.start(vms);
      const churn = rig.churn(vms, SHAPE.churnBytesPerSecond);
      await allProtected(rig, vms);
      const kills = injectionCount(2, 20);
      const armedBefore = rig.stack.logs.filter((l) => l.includes('FERRY_FAULT_KILL_AT=')).length;
      for (let i = 0; i < kills; i++) {
        await rig.randomPause(300, pick(1500, 4000));
        if (i % 2 === 0) {
          // at a random moment, with batches in flight
          await waitFor(async () => (await rig.snapshot(vms, app.sinkOf)).inFlight > 0, 'batches in flight', { timeoutMs: 30_000, intervalMs: 20 });
          await sc.inject(vms, app.sinkOf, `kill -9 #${i + 1}`, () => rig.stack.stack.stopChild('host', { mode: 'kill' }), async () => void (await rig.stack.stack.restartHost({})));
        } else {
          // at a random step of an apply: the host kills itself there (shared/faults.ts)
          const point = APPLY_POINTS[Math.floor(rig.rand() * APPLY_POINTS.length)]!;
          await sc.inject(
            vms,
            app.sinkOf,
            `kill -9 at ${point} #${i + 1}`,
            async () => {
              const armed = await rig.stack.stack.restartHost({ FERRY_FAULT_KILL_AT: point }, { wait: false });
              await waitFor(() => !armed.running, `the host to crash at ${point}`, { timeoutMs: 90_000 });
            },
            async () => void (await rig.stack.stack.restartHost({})),
          );
        }
      }
      await churn.stop();
      await app.stopAgents();
      const row = await sc.finish(vms, app.sinkOf);
      expect(row.injections).toBe(kills);
      expect(rig.stack.logs.filter((l) => l.includes('FERRY_FAULT_KILL_AT=')).length - armedBefore).toBe(Math.floor(kills / 2));
      expectClean(row, app.errors);
    },
    pick(300_000, 1_500_000),
  );

  it(
    'two host instances consuming at once, one killed or scaled in and out repeatedly: still exact',
    async () => {
      const sc = await rig.scenario('two-hosts').begin();
      await rig.stack.stack.addHost('host2', await freePort());
      const fromLine = rig.stack.logs.length;
      const vms = await rig.makeVms('th', [...SHAPE.vms, 1], SHAPE.diskMiB);
      const app = new InProcessAppliance(rig);
      app.start(vms);
      const churn = rig.churn(vms, SHAPE.churnBytesPerSecond);
      await allProtected(rig, vms);
      const events = injectionCount(2, 12);
      for (let i = 0; i < events; i++) {
        await rig.randomPause(300, pick(1500, 4000));
        const name = i % 2 === 0 ? 'host' : 'host2';
        const mode = i % 4 < 2 ? 'kill' : 'stop';
        await sc.inject(vms, app.sinkOf, `${mode} ${name} #${i + 1}`, () => rig.stack.stack.stopChild(name, { mode }), async () => void (await rig.stack.stack.startChild(name)));
      }
      await churn.stop();
      await app.stopAgents();
      const row = await sc.finish(vms, app.sinkOf);
      // both instances applied batches of this scenario
      const lines = rig.stack.logs.slice(fromLine);
      for (const name of ['[host]', '[host2]']) expect(lines.some((l) => l.startsWith(name) && l.includes("Executed 'Functions.apply-batches'"))).toBe(true);
      expectClean(row, app.errors);
    },
    pick(300_000, 1_200_000),
  );
});
