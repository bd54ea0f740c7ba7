/**
 * waitApplied against an API that does not answer in time or fails while the cloud's storage
 * is away: the wait as a whole keeps its deadline (the continuous agent's backpressure must get
 * control back and go on spooling) and says the cloud could not be asked.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { CloudApi, waitApplied } from '../../../local/appliance/cloud-api';

const vmView = (applied: number) => ({
  vmId: 'vm-1',
  state: 'protected',
  health: 'healthy',
  healthReasons: [],
  rpoSeconds: 1,
  policy: {},
  keyId: 1,
  createdAt: new Date(0).toISOString(),
  resync: null,
  disks: [{ diskId: 'disk0', sizeBytes: 4096, initialReplicationPercent: 100, epoch: 1, appliedSequence: applied, lastAppliedAt: null, lastCapturedAt: null }],
});

describe('waitApplied while the cloud is away', () => {
  let server: Server | undefined;
  afterEach(async () => {
    server?.closeAllConnections();
    await new Promise((r) => server?.close(r));
    server = undefined;
  });

  const serve = async (handler: Parameters<typeof createServer>[1]): Promise<CloudApi> => {
    server = createServer(handler);
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    return new CloudApi(`http://127.0.0.1:${(server.address() as AddressInfo).port}`, 'key');
  };

  it('an API that never answers: rejected with UNREACHABLE at the deadline, not after the 30 s request timeout', async () => {
    const api = await serve(() => undefined); // the request hangs (the host waiting on a storage that is down)
    const started = Date.now();
    const err = await waitApplied(api, 'vm-1', { disk0: 3 }, { timeoutMs: 1500 }).catch((e: unknown) => e);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(err).toMatchObject({ code: 'UNREACHABLE' });
    expect(String((err as Error).message)).toMatch(/could not say what it applied for VM 'vm-1'.*not reachable/);
  });

  it('5xx answers are an outage: asked again, and the wait ends once the cloud answers and has applied', async () => {
    let calls = 0;
    const api = await serve((_req, res) => {
      calls++;
      if (calls <= 2) {
        res.writeHead(503, { 'content-type': 'application/json' }).end(JSON.stringify({ code: 'STORAGE_UNAVAILABLE', message: 'storage is away' }));
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(vmView(calls >= 4 ? 3 : 2)));
    });
    const vm = await waitApplied(api, 'vm-1', { disk0: 3 }, { timeoutMs: 10_000 });
    expect(vm.disks[0]!.appliedSequence).toBe(3);
    expect(calls).toBe(4);
  });

  it('a 4xx is not an outage: rejected at once', async () => {
    const api = await serve((_req, res) => res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ code: 'VM_NOT_FOUND', message: 'no such VM' })));
    const err = await waitApplied(api, 'vm-1', { disk0: 3 }, { timeoutMs: 10_000 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'NOT_ENABLED' });
  });
});
