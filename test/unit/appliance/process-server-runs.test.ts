/**
 * The process server over HTTPS when an agent or the process server itself dies mid-pass
 * (found by the fault suite, test/faults/appliance.fault.test.ts):
 * - an agent killed with uploads unfinished leaves batches beyond a gap; the next run of the
 *   agent continues at the gap, and its batches of those numbers must be the ones sent (they
 *   were taken for replays and dropped, with their changes);
 * - a restarted process server has lost what it had not made durable and re-sends the numbers
 *   that may have left as empty markers; an agent that goes on with its numbers would have its
 *   batches dropped as replays of the markers, so the agent's client must refuse to go on until
 *   the agent has gone back to its checkpoint.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { isApplianceError } from '../../../local/appliance/errors';
import { startHttpsProcessServer } from '../../../local/appliance/https-server';
import type { CloudTransport } from '../../../local/appliance/outbox';
import type { PlainBatch } from '../../../local/appliance/batching';
import { ProcessServer } from '../../../local/appliance/process-server';
import { RemoteSink } from '../../../local/appliance/remote-sink';
import { saveVmState } from '../../../local/appliance/state';
import { waitFor } from '../../support/wait';

const dir = mkdtempSync(join(tmpdir(), 'ferry-ps-runs-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

class MemoryTransport implements CloudTransport {
  sent: { seq: number; sealedBytes: number }[] = [];
  async stage(): Promise<void> {}
  async send(m: { body: unknown }): Promise<void> {
    const env = m.body as { seq: number; payload: { inline?: string; blob?: { sizeBytes: number } } };
    this.sent.push({ seq: env.seq, sealedBytes: env.payload.inline !== undefined ? Buffer.from(env.payload.inline, 'base64').length : env.payload.blob!.sizeBytes });
  }
  async close(): Promise<void> {}
}

function enableVm(stateDir: string, vmId: string): void {
  saveVmState(stateDir, {
    version: 1,
    vmId,
    apiUrl: 'http://127.0.0.1:7071',
    keyId: 1,
    dataKey: randomBytes(32).toString('base64'),
    agentToken: randomBytes(32).toString('base64url'),
    enabledAt: new Date().toISOString(),
    nextTagId: 1,
    disks: [{ diskId: 'disk0', path: '/dev/null', sizeBytes: 1024 * 1024, epoch: 1, initialCoveredBytes: 0, initialComplete: true, journal: {} }],
  });
}

/** A batch of `bytes` random (incompressible) bytes at offset 0. */
function batch(vmId: string, sequence: number, bytes: number): PlainBatch {
  return {
    meta: { vmId, diskId: 'disk0', epoch: 1, sequence, capturedAt: Date.now(), diskSizeBytes: 1024 * 1024, initialReplicationComplete: true, initialCoveredBytes: 1024 * 1024 },
    records: [{ kind: 'data', offset: 0, length: bytes }],
    data: randomBytes(bytes),
  };
}

async function start(stateDir: string, port = 0) {
  const transport = new MemoryTransport();
  const server = new ProcessServer({ stateDir, transport, threads: 2, sealWorkers: 0 });
  const https = await startHttpsProcessServer(server, { port, host: '127.0.0.1', certDir: join(stateDir, 'process-server') });
  return {
    transport,
    server,
    https,
    /** As a kill would: connections cut, nothing made durable. */
    async crash() {
      https.server.closeAllConnections();
      await https.close();
    },
  };
}

const code = (p: Promise<unknown>) => p.then(() => 'resolved', (err: unknown) => (isApplianceError(err) ? err.code : String(err)));

describe('process server: agent runs and restarts', () => {
  it('a new agent run continues at the gap an earlier run left: the batches that run left beyond it are dropped, its late uploads refused (STALE_RUN), and the new batches of those numbers are the ones sent', async () => {
    const stateDir = join(dir, 'runs');
    enableVm(stateDir, 'vm-a');
    const ps = await start(stateDir);
    try {
      const first = new RemoteSink(ps.https.url, stateDir, 'vm-a');
      expect(await first.nextSequence('vm-a', 'disk0', 1)).toBe(1);
      await first.submit(batch('vm-a', 1, 1024), () => undefined);
      // batch 2 of this run never arrives (the agent is killed while uploading it); 3 did
      await first.submit(batch('vm-a', 3, 1024), () => undefined);

      const second = new RemoteSink(ps.https.url, stateDir, 'vm-a');
      expect(await second.nextSequence('vm-a', 'disk0', 1)).toBe(2);
      // an upload of the first run still arriving is refused, not queued
      expect(await code(first.submit(batch('vm-a', 4, 1024), () => undefined))).toBe('STALE_RUN');
      await second.submit(batch('vm-a', 2, 20_480), () => undefined);
      await second.submit(batch('vm-a', 3, 20_480), () => undefined);
      await waitFor(() => ps.transport.sent.length >= 3, 'three batches sent', { timeoutMs: 10_000, intervalMs: 20 });
      await ps.server.idle('vm-a');
      expect(ps.transport.sent.map((s) => s.seq)).toEqual([1, 2, 3]);
      // batch 3 as sent is the second run's (20 KiB of random bytes), not the first run's 1 KiB
      expect(ps.transport.sent[2]!.sealedBytes).toBeGreaterThan(20_480);
      // a look (no run named) takes nothing over
      const look = new RemoteSink(ps.https.url, stateDir, 'vm-a', { observe: true });
      expect(await look.nextSequence('vm-a', 'disk0', 1)).toBe(4);
      await second.submit(batch('vm-a', 4, 1024), () => undefined);
    } finally {
      await ps.crash();
      await ps.server.close();
    }
  });

  it("an agent's client refuses to go on with a restarted process server (PROCESS_SERVER_RESTARTED, even for an upload it took) until the agent went back to its checkpoint", async () => {
    const stateDir = join(dir, 'restart');
    enableVm(stateDir, 'vm-b');
    const ps1 = await start(stateDir);
    const port = ps1.https.port;
    const sink = new RemoteSink(ps1.https.url, stateDir, 'vm-b', { retryForMs: 20_000 });
    expect(await sink.nextSequence('vm-b', 'disk0', 1)).toBe(1);
    await sink.submit(batch('vm-b', 1, 1024), () => undefined);
    await sink.sync('vm-b');
    await sink.submit(batch('vm-b', 2, 1024), () => undefined); // accepted, not made durable
    await ps1.crash();
    await ps1.server.close();

    // an upload in flight while the process server is down: retried, then refused by the new one
    const inFlight = code(sink.submit(batch('vm-b', 3, 1024), () => undefined));
    const ps2 = await start(stateDir, port);
    try {
      expect(await inFlight).toBe('PROCESS_SERVER_RESTARTED');
      expect(await code(sink.sync('vm-b'))).toBe('PROCESS_SERVER_RESTARTED');
      expect(await code(sink.submit(batch('vm-b', 4, 1024), () => undefined))).toBe('PROCESS_SERVER_RESTARTED');
      // back at the checkpoint: a new run asks where to continue
      sink.restart();
      const next = await sink.nextSequence('vm-b', 'disk0', 1);
      expect(next).toBeGreaterThanOrEqual(2);
      await sink.submit(batch('vm-b', next, 20_480), () => undefined);
      await sink.sync('vm-b');
      await waitFor(() => ps2.transport.sent.some((s) => s.seq === next), `batch ${next} sent`, { timeoutMs: 10_000, intervalMs: 20 });
      expect(ps2.transport.sent.find((s) => s.seq === next)!.sealedBytes).toBeGreaterThan(20_480);
    } finally {
      await ps2.crash();
      await ps2.server.close();
    }
  });
});
