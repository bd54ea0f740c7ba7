/**
 * `--limit-mbps`: the token bucket holds the upload rate within 10% over more than 30 seconds,
 * through the real agent, seal workers and outbox (the transport only records what it is
 * given and when, so the figure is the cap itself, not Azurite's speed).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { MobilityAgent } from '../../../local/appliance/agent';
import type { CloudTransport } from '../../../local/appliance/outbox';
import { ProcessServer } from '../../../local/appliance/process-server';
import { saveVmState } from '../../../local/appliance/state';

const MiB = 1024 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'ferry-throttle-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('--limit-mbps', () => {
  it('holds 16 Mbps within 10% over more than 30 s', async () => {
    const image = join(dir, 'random.img');
    writeFileSync(image, randomBytes(88 * MiB)); // incompressible; 88 MiB at 2 MB/s spans > 30 s even with a 16 MiB burst and last batch
    saveVmState(dir, {
      version: 1, vmId: 'tvm', apiUrl: 'x', keyId: 1, dataKey: randomBytes(32).toString('base64'), agentToken: 't', enabledAt: new Date().toISOString(), nextTagId: 1,
      disks: [{ diskId: 'disk0', path: image, sizeBytes: 88 * MiB, epoch: 1, initialCoveredBytes: 0, initialComplete: false, journal: {} }],
    });
    const uploads: { at: number; bytes: number }[] = [];
    const transport: CloudTransport = {
      async stage(_c, _n, body) {
        uploads.push({ at: performance.now(), bytes: body.length });
      },
      async send(m) {
        const p = (m.body as { payload: { inline?: string } }).payload;
        if (p.inline) uploads.push({ at: performance.now(), bytes: Buffer.byteLength(p.inline, 'base64') });
      },
      async close() {},
    };
    const limitMbps = 16;
    const server = new ProcessServer({ stateDir: dir, transport, threads: 4, limitMbps });
    const agent = new MobilityAgent(dir, 'tvm', server);
    try {
      await agent.pass({ tag: 'crash-consistent' });
      await server.idle('tvm');
    } finally {
      agent.close();
      await server.close();
    }
    uploads.sort((a, b) => a.at - b.at);
    const first = uploads[0]!;
    const last = uploads[uploads.length - 1]!;
    const seconds = (last.at - first.at) / 1000;
    // each upload is paid for before it starts: the rate is what went before the last one
    const bytes = uploads.slice(0, -1).reduce((a, u) => a + u.bytes, 0);
    const rate = bytes / seconds;
    const target = (limitMbps * 1e6) / 8;
    expect(seconds).toBeGreaterThan(30);
    expect(Math.abs(rate - target) / target).toBeLessThan(0.1);
  }, 90_000);
});
