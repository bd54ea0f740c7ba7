/**
 * Faults of the cloud's services: kill -9 of the Service Bus emulator and of Azurite (each
 * restarted with its data kept), and the network to the cloud cut (both stopped) for a minute
 * (6 s in the short run): the appliance spools and says it is offline, then drains; the VM's
 * RPO shows the outage once the cloud answers again, then recovers.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../support/wait';
import { FaultRig, InProcessAppliance, SHAPE, allProtected, expectClean, injectionCount, pick, type Positions } from './harness';

describe('faults: the cloud services', () => {
  let rig: FaultRig;
  beforeAll(async () => {
    // Azurite as durable as Azure Storage: each acknowledged change on disk before it answers
    // (local/stack/azurite-durable.ts); its own 5-second metadata saves lose writes on a kill -9
    rig = await FaultRig.start('cloud', undefined, { durableAzurite: true });
  }, 180_000);
  afterAll(async () => rig?.close(), 120_000);

  for (const [scenario, child, prefix] of [
    ['servicebus-kill', 'servicebus', 'sk'],
    ['azurite-kill', 'azurite', 'ak'],
  ] as const) {
    it(
      `kill -9 of ${child}, restarted with its data: every disk exact, no batch committed twice`,
      async () => {
        const sc = await rig.scenario(scenario).begin();
        const vms = await rig.makeVms(prefix, SHAPE.vms, SHAPE.diskMiB);
        const app = new InProcessAppliance(rig);
        app.start(vms);
        const churn = rig.churn(vms, SHAPE.churnBytesPerSecond);
        await allProtected(rig, vms);
        const kills = injectionCount(1, 6);
        for (let i = 0; i < kills; i++) {
          await rig.randomPause(300, pick(1500, 4000));
          let before: Positions = new Map();
          await sc.inject(
            vms,
            app.sinkOf,
            `kill -9 ${child} #${i + 1}`,
            async () => {
              if (child === 'azurite') before = await rig.applied(vms);
              await rig.stack.stack.stopChild(child, { mode: 'kill' });
            },
            async () => {
              await rig.stack.stack.startChild(child);
              if (child !== 'azurite') return;
              // what Storage acknowledged before the kill is still there: no applied position went back
              const after = await rig.applied(vms);
              const lost = [...before].filter(([k, b]) => { const a = after.get(k); return !a || a.epoch < b.epoch || (a.epoch === b.epoch && a.seq < b.seq); });
              for (const [k, b] of lost) sc.notes.push(`kill -9 azurite #${i + 1}: ${k} was applied up to ${b.epoch}/${b.seq} before the kill, ${after.get(k)?.epoch ?? '-'}/${after.get(k)?.seq ?? '-'} after the restart`);
              sc.detail.push(`kill -9 azurite #${i + 1}: ${before.size - lost.length}/${before.size} disks' applied positions kept across the kill`);
            },
          );
        }
        await churn.stop();
        await app.stopAgents();
        const row = await sc.finish(vms, app.sinkOf);
        expectClean(row, app.errors);
      },
      pick(240_000, 900_000),
    );
  }

  it(
    'the network to the cloud cut: the appliance spools and shows it is offline, then drains; RPO shows the outage, then recovers',
    async () => {
      const sc = await rig.scenario('network-cut').begin();
      const vms = await rig.makeVms('nc', SHAPE.vms, SHAPE.diskMiB);
      const app = new InProcessAppliance(rig);
      app.start(vms);
      const churn = rig.churn(vms, SHAPE.churnBytesPerSecond);
      await allProtected(rig, vms);
      const cutMs = pick(6_000, 60_000);
      const cuts = injectionCount(1, 2);
      const rpo = async (vmId: string): Promise<number | null> => {
        const res = await fetch(`${rig.stack.apiUrl}/vms/${vmId}`, { headers: { 'x-functions-key': rig.stack.functionKey } });
        return res.status === 200 ? ((await res.json()) as { rpoSeconds: number | null }).rpoSeconds : null;
      };
      for (let i = 0; i < cuts; i++) {
        await rig.randomPause(300, pick(1500, 4000));
        const linesBefore = app.lines.length;
        let offlineSeen = 0;
        let spooledMax = 0;
        let rpoAfter = 0;
        await sc.inject(
          vms,
          app.sinkOf,
          `network cut ${cutMs / 1000} s #${i + 1}`,
          async () => {
            await Promise.all([rig.stack.stack.stopChild('servicebus'), rig.stack.stack.stopChild('azurite')]);
            // at least cutMs, and until every VM's appliance has noticed (it notices on a send)
            const until = Date.now() + cutMs;
            const cap = Date.now() + 120_000;
            while (Date.now() < until || (offlineSeen < vms.length && Date.now() < cap)) {
              // the appliance's own view while the cloud cannot be asked
              const stats = await Promise.all(vms.map((v) => app.server.stats(v.vmId)));
              offlineSeen = Math.max(offlineSeen, stats.filter((x) => x.offline).length);
              spooledMax = Math.max(spooledMax, stats.reduce((n, x) => n + x.pendingBatches, 0));
              await new Promise((r) => setTimeout(r, 250));
            }
          },
          async () => {
            await Promise.all([rig.stack.stack.startChild('azurite'), rig.stack.stack.startChild('servicebus')]);
            // the first RPO the cloud reports again covers the outage
            rpoAfter = await waitFor(async () => {
              const all = await Promise.all(vms.map((v) => rpo(v.vmId)));
              return all.every((x) => x !== null) ? Math.min(...(all as number[])) : 0;
            }, 'the cloud to answer again', { timeoutMs: 60_000, intervalMs: 200 });
          },
        );
        // every VM's outbox said offline during the cut and held batches back; the log says why
        expect(offlineSeen).toBe(vms.length);
        expect(spooledMax).toBeGreaterThan(0);
        expect(app.lines.slice(linesBefore).some((l) => /unreachable; spooling batches to the cache/.test(l))).toBe(true);
        // the outbox says so at its next retry (its backoff reaches 5 s during the cut): it may come after the recovery
        await waitFor(() => app.lines.slice(linesBefore).some((l) => /reachable again; draining the cache/.test(l)), 'the appliance to say the cloud is reachable again', { timeoutMs: 20_000, intervalMs: 100 });
        expect(rpoAfter).toBeGreaterThanOrEqual(Math.floor(cutMs / 1000) - 2);
        // RPO recovers: every VM's RPO back within a few passes
        const recovered = Date.now();
        await waitFor(async () => (await Promise.all(vms.map((v) => rpo(v.vmId)))).every((x) => x !== null && x <= 10), 'RPO back under 10 s', { timeoutMs: 120_000, intervalMs: 250 });
        sc.detail.push(`cut ${i + 1}: ${cutMs / 1000} s; appliance offline on ${offlineSeen}/${vms.length} VMs, up to ${spooledMax} batches spooled; RPO ${rpoAfter} s at reconnection, under 10 s again ${((Date.now() - recovered) / 1000).toFixed(1)} s later`);
      }
      await churn.stop();
      await app.stopAgents();
      const row = await sc.finish(vms, app.sinkOf);
      expectClean(row, app.errors);
    },
    pick(240_000, 900_000),
  );
});
