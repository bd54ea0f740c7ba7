/**
 * The split roles over HTTPS (`ferry process-server` + `ferry agent`), the CLI as a user runs
 * it (a child process, exit codes, --json), and the offline cache (the Service Bus emulator
 * stopped during replication, then started again).
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { azureTransport, enable, replicate, runAgent } from '../../../local/appliance/commands';
import { startHttpsProcessServer } from '../../../local/appliance/https-server';
import { ProcessServer } from '../../../local/appliance/process-server';
import { RemoteSink } from '../../../local/appliance/remote-sink';
import { loadVmState, saveVmState } from '../../../local/appliance/state';
import { TrackedDisk } from '../../../local/appliance/tracked-disk';
import { rng } from '../../support/batches';
import { SupervisedChild } from '../../../local/stack/children';
import { ROOT, startTestStack, type TestStack } from '../../support/stack';
import { waitFor } from '../../support/wait';
import { makeExt4Image, readCloudDisk, startStandInApplier, type StandInApplier } from './helpers';

const run = promisify(execFile);
const MiB = 1024 * 1024;

describe('appliance: split roles, CLI, offline cache', () => {
  let stack: TestStack;
  let applier: StandInApplier;
  let dir: string;
  let stateDir: string;
  let sbRestarted: SupervisedChild | undefined;

  const conn = () => ({ storageConnection: stack.storageConnectionString, serviceBusConnection: stack.serviceBusConnectionString });
  const common = () => ({ api: stack.apiUrl, stateDir, functionKey: stack.functionKey, applyTimeoutMs: 60_000 });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ferry-split-'));
    stateDir = join(dir, 'state');
    stack = await startTestStack();
    applier = startStandInApplier(stack);
  }, 180_000);

  afterAll(async () => {
    await applier?.stop();
    await sbRestarted?.stop();
    await stack?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('agent -> HTTPS process server replicates byte-exact; TrackedDisk writes travel without a rescan; a wrong token is refused', async () => {
    const image = join(dir, 'split.img');
    makeExt4Image(join(dir, 'split'), image, 24, 11);
    await enable({ ...common(), vm: 'split-vm', disks: [image] });
    const server = new ProcessServer({ stateDir, transport: azureTransport(conn()), threads: 4 });
    const https = await startHttpsProcessServer(server, { port: 0, host: '127.0.0.1', certDir: join(stateDir, 'process-server') });
    try {
      const sink = new RemoteSink(https.url, stateDir, 'split-vm', { fingerprint: https.certificate.fingerprint256 });
      const first = await runAgent({ ...common(), vm: 'split-vm', once: true }, sink);
      expect(first.state).toBe('protected');
      expect((await readCloudDisk(stack, 'split-vm', 'disk0', 24 * MiB)).equals(readFileSync(image))).toBe(true);

      // writes through TrackedDisk: the journal names them; --once rescans, so the journal's
      // sectors and then the touched 64 KiB blocks travel whole, and nothing else does
      const disk = TrackedDisk.open(image, stateDir);
      const next = rng(5);
      let written = 0;
      const touched = new Set<number>();
      for (let i = 0; i < 50; i++) {
        const data = Buffer.alloc(4096, Math.floor(next() * 255) + 1);
        const off = Math.floor(next() * (24 * MiB / 4096)) * 4096;
        disk.write(off, data);
        touched.add(Math.floor(off / 65536));
        written += 4096;
      }
      disk.write(3 * 512, Buffer.alloc(512, 7)); // one sector
      touched.add(0);
      disk.close();
      const second = await runAgent({ ...common(), vm: 'split-vm', once: true }, sink);
      const d = second.disks[0]!;
      expect(d.dirtyBytes).toBeLessThanOrEqual(written + 512);
      expect(d.dataBytes).toBeLessThanOrEqual(touched.size * 65536 + d.dirtyBytes);
      expect(d.dataBytes).toBeGreaterThan(0);
      expect((await readCloudDisk(stack, 'split-vm', 'disk0', 24 * MiB)).equals(readFileSync(image))).toBe(true);

      // a wrong token: 401, reported as UNAUTHORIZED
      const state = loadVmState(stateDir, 'split-vm');
      saveVmState(stateDir, { ...state, agentToken: 'not-the-token' });
      const bad = new RemoteSink(https.url, stateDir, 'split-vm');
      await expect(bad.nextSequence('split-vm', 'disk0', 1)).rejects.toMatchObject({ code: 'UNAUTHORIZED' });
      saveVmState(stateDir, state);
      // a different certificate than the pinned one is refused before anything is sent
      writeFileSync(join(stateDir, 'split-vm', 'process-server.pem'), readFileSync(join(ROOT, 'test/integration/appliance/fixtures/other-cert.pem')));
      await expect(new RemoteSink(https.url, stateDir, 'split-vm').nextSequence('split-vm', 'disk0', 1)).rejects.toMatchObject({ code: 'CERTIFICATE_MISMATCH' });
    } finally {
      await https.close();
      await server.close();
    }
  });

  it('the CLI: enable, replicate --once --json, status --json, and one-line errors with exit status 1', async () => {
    const image = join(dir, 'cli.img');
    writeFileSync(image, Buffer.alloc(8 * MiB, 1));
    const env = { ...process.env, FERRY_FUNCTION_KEY: stack.functionKey, AzureWebJobsStorage: stack.storageConnectionString, ServiceBusConnection: stack.serviceBusConnectionString, FERRY_LOG_LEVEL: 'warn' };
    const ferry = (...args: string[]) => run(process.execPath, [join(ROOT, 'dist/local/appliance/cli.js'), ...args, '--api', stack.apiUrl, '--state-dir', stateDir], { env, cwd: ROOT });
    await ferry('enable', '--vm', 'cli-vm', '--disk', image, '--json');
    const lines = (await ferry('replicate', '--vm', 'cli-vm', '--once', '--json', '--threads', '2')).stdout.trim().split('\n');
    // JSON progress lines, then the result object
    expect(JSON.parse(lines[0]!)).toMatchObject({ event: 'progress', diskId: 'disk0', phase: 'initial' });
    const result = JSON.parse(lines.slice(lines.findIndex((l) => l.startsWith('{') && !l.includes('"event"'))).join('\n')) as { state: string; tagId: number };
    expect(result).toMatchObject({ state: 'protected', tagId: 1 });
    const st = JSON.parse((await ferry('status', '--vm', 'cli-vm', '--json')).stdout) as { state: string; disks: { initialReplicationPercent: number }[] };
    expect(st.state).toBe('protected');
    expect(st.disks[0]!.initialReplicationPercent).toBe(100);
    const op = JSON.parse((await ferry('test-migrate', '--vm', 'cli-vm', '--json')).stdout) as { status: string; type: string; disks: { diskId: string; vhdUrl: string }[] };
    expect(op).toMatchObject({ status: 'succeeded', type: 'test-migrate', disks: [{ diskId: 'disk0' }] });
    expect(op.disks[0]!.vhdUrl).toMatch(/\/test-migrated\//);
    expect(JSON.parse((await ferry('verify', '--vm', 'cli-vm', '--json')).stdout)).toMatchObject({ identical: true, recoveryPointId: 'rp-1' });
    const img = readFileSync(image);
    img[5 * MiB] = 9;
    writeFileSync(image, img);
    const differs = await ferry('verify', '--vm', 'cli-vm').then(() => undefined, (e: { code: number; stderr: string; stdout: string }) => e);
    expect(differs?.code).toBe(1);
    expect(differs?.stderr.trim()).toBe("ferry: 1 extent(s) of VM 'cli-vm' differ from recovery point rp-1.");
    const missing = await ferry('enable', '--vm', 'x-vm', '--disk', join(dir, 'nope.img')).then(() => undefined, (e: { code: number; stderr: string }) => e);
    expect(missing?.code).toBe(1);
    expect(missing?.stderr.trim()).toBe(`ferry: Disk ${join(dir, 'nope.img')} does not exist; pass an image file or a block device to --disk.`);
    const notEnabled = await ferry('replicate', '--vm', 'ghost', '--once').then(() => undefined, (e: { code: number; stderr: string }) => e);
    expect(notEnabled?.stderr).toMatch(/^ferry: VM 'ghost' is not enabled/);
    const down = await run(process.execPath, [join(ROOT, 'dist/local/appliance/cli.js'), 'status', '--api', 'http://127.0.0.1:9'], { env }).then(() => undefined, (e: { code: number; stderr: string }) => e);
    expect(down?.code).toBe(1);
    expect(down?.stderr).toMatch(/^ferry: The Ferry API at http:\/\/127\.0\.0\.1:9\/api is not reachable .*start the local stack with npm start/);
  }, 90_000);

  it('offline cache: with Service Bus stopped the batches are spooled, then drained in order when it is back; byte-exact', async () => {
    const image = join(dir, 'offline.img');
    writeFileSync(image, randomBytes(40 * MiB)); // three batches of up to 16 MiB
    await enable({ ...common(), vm: 'offline-vm', disks: [image] });
    const sbChild = stack.stack.child('servicebus')!;
    await sbChild.stop();
    // a SupervisedChild cannot be started again after stop(); a fresh one with the same spec can
    sbRestarted = new SupervisedChild(
      sbChild.spec,
      (name, line) => {
        stack.logs.push(`[${name}] ${line}`);
        if (process.env.FERRY_TEST_VERBOSE) process.stderr.write(`[${name}] ${line}\n`);
      },
      () => undefined,
    );
    const cacheDir = join(dir, 'cache');
    const replicating = replicate({ ...common(), ...conn(), vm: 'offline-vm', once: true, cacheDir, applyTimeoutMs: 120_000 });
    // the pass spools everything while Service Bus is away
    const spooled = await waitFor(() => {
      const files = (() => {
        try {
          return readdirSync(join(cacheDir, 'offline-vm', 'disk0'));
        } catch {
          return [];
        }
      })();
      return files.length >= 2 ? files.length : 0;
    }, 'batches spooled to the cache', { timeoutMs: 30_000 });
    expect(spooled).toBeGreaterThanOrEqual(2);
    await sbRestarted.start();
    const r = await replicating;
    expect(r.state).toBe('protected');
    expect((await readCloudDisk(stack, 'offline-vm', 'disk0', 40 * MiB)).equals(readFileSync(image))).toBe(true);
    expect(readdirSync(join(cacheDir, 'offline-vm', 'disk0'))).toEqual([]);
  }, 150_000);
});
