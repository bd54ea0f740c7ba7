/**
 * `replicate --once` end to end on the real local stack with a real file system: an ext4
 * image made by mke2fs -d is enabled and replicated; the cloud disk is byte-exact; files are
 * changed with debugfs; the next pass sends exactly the changed 64 KiB blocks; a restart
 * sends nothing that did not change.
 */
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlobServiceClient } from '@azure/storage-blob';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { churn } from '../../../local/appliance/churn';
import { enable, migrate, replicate, runOperation, verify } from '../../../local/appliance/commands';
import { loadVmState } from '../../../local/appliance/state';
import { TrackedDisk } from '../../../local/appliance/tracked-disk';
import { startTestStack, type TestStack } from '../../support/stack';
import { waitFor } from '../../support/wait';
import { blockDiff, debugfs, makeExt4Image, readCloudDisk, startStandInApplier, type StandInApplier } from './helpers';

const MiB = 1024 * 1024;
const VM = 'ext4-vm';

describe('ferry replicate --once with an ext4 image', () => {
  let stack: TestStack;
  let applier: StandInApplier;
  let dir: string;
  let image: string;
  let stateDir: string;

  const common = () => ({
    api: stack.apiUrl,
    stateDir,
    functionKey: stack.functionKey,
    storageConnection: stack.storageConnectionString,
    serviceBusConnection: stack.serviceBusConnectionString,
    applyTimeoutMs: 60_000,
  });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ferry-appliance-'));
    image = join(dir, 'disk0.img');
    stateDir = join(dir, 'state');
    makeExt4Image(dir, image, 48);
    stack = await startTestStack();
    applier = startStandInApplier(stack);
  }, 180_000);

  afterAll(async () => {
    await applier?.stop();
    await stack?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('replicates the initial copy byte-exact and the VM becomes protected', async () => {
    const enabled = await enable({ ...common(), vm: VM, disks: [image] });
    expect(enabled.disks).toEqual([{ diskId: 'disk0', path: image, sizeBytes: 48 * MiB }]);
    const r = await replicate({ ...common(), vm: VM, once: true });
    expect(r.state).toBe('protected');
    expect(r.tagId).toBe(1);
    const d = r.disks[0]!;
    expect(d.initialComplete).toBe(true);
    expect(d.firstSequence).toBe(1);
    expect(d.appliedSequence).toBe(d.lastSequence);
    expect(d.dataBytes + d.zeroBytes).toBe(48 * MiB);
    expect((await readCloudDisk(stack, VM, 'disk0', 48 * MiB)).equals(readFileSync(image))).toBe(true);
    expect(loadVmState(stateDir, VM).disks[0]!.initialComplete).toBe(true);
  });

  it('after debugfs changes, sends exactly the changed blocks and the cloud disk is byte-exact again', async () => {
    const before = readFileSync(image);
    const newFile = join(dir, 'new.txt');
    writeFileSync(newFile, 'a new file written by debugfs\n'.repeat(5000));
    debugfs(image, ['rm /docs/file-3.txt', `write ${newFile} /docs/new.txt`, 'mkdir /etc2']);
    const after = readFileSync(image);
    const diff = blockDiff(before, after);
    expect(diff.blocks).toBeGreaterThan(0);
    const r = await replicate({ ...common(), vm: VM, once: true });
    const d = r.disks[0]!;
    expect(d.dataBytes).toBe(diff.dataBytes);
    expect(d.zeroBytes).toBe(diff.zeroBytes);
    expect(d.appliedSequence).toBe(d.lastSequence);
    expect((await readCloudDisk(stack, VM, 'disk0', 48 * MiB)).equals(after)).toBe(true);
  });

  it('a restart with nothing changed sends only the tagged marker batch', async () => {
    const r = await replicate({ ...common(), vm: VM, once: true });
    const d = r.disks[0]!;
    expect({ dataBytes: d.dataBytes, zeroBytes: d.zeroBytes, batches: d.batches, records: d.records }).toEqual({ dataBytes: 0, zeroBytes: 0, batches: 1, records: 0 });
    expect(r.tagId).toBe(3);
  });

  it('test-migrate writes a fixed VHD of the latest recovery point (the disk byte-exact, then the footer); cleanup removes it', async () => {
    const op = await runOperation({ ...common(), vm: VM, type: 'test-migrate', timeoutMs: 120_000 });
    expect(op.status).toBe('succeeded');
    const disk = op.disks![0]!;
    expect(disk).toMatchObject({ diskId: 'disk0', sizeBytes: 48 * MiB });
    const path = decodeURIComponent(new URL(disk.vhdUrl).pathname).split('/').slice(2);
    const blob = BlobServiceClient.fromConnectionString(stack.storageConnectionString).getContainerClient(path[0]!).getBlobClient(path.slice(1).join('/'));
    const vhd = await blob.downloadToBuffer(0, 48 * MiB + 512);
    expect(vhd.subarray(0, 48 * MiB).equals(readFileSync(image))).toBe(true);
    expect(vhd.subarray(48 * MiB, 48 * MiB + 8).toString('ascii')).toBe('conectix');
    const cleanup = await runOperation({ ...common(), vm: VM, type: 'test-migrate-cleanup', timeoutMs: 120_000 });
    expect(cleanup.status).toBe('succeeded');
    // verify by hashes against the latest recovery point
    const v = await verify({ ...common(), vm: VM });
    expect(v).toMatchObject({ identical: true, disks: [{ diskId: 'disk0', extents: 12, differing: [] }] });
  }, 150_000);

  it('a copy of the image changed while the appliance was stopped: only the differences travel', async () => {
    const before = readFileSync(image);
    const changed = Buffer.from(before);
    changed.fill(0x5a, 10 * MiB + 4096, 10 * MiB + 8192); // one 4 KiB change inside one 64 KiB block
    changed.fill(0, 20 * MiB, 21 * MiB); // 1 MiB zeroed
    const tmp = join(dir, 'changed.img');
    writeFileSync(tmp, changed);
    copyFileSync(tmp, image);
    const diff = blockDiff(before, changed);
    const stale = await verify({ ...common(), vm: VM });
    expect(stale.identical).toBe(false);
    const changedExtents = [2, 5].filter((i) => !before.subarray(i * 4 * MiB, (i + 1) * 4 * MiB).equals(changed.subarray(i * 4 * MiB, (i + 1) * 4 * MiB)));
    expect(stale.disks[0]!.differing).toEqual(changedExtents); // 10 MiB + 4 KiB and 20 MiB lie in extents 2 and 5
    const r = await replicate({ ...common(), vm: VM, once: true, threads: 1 });
    expect(r.disks[0]!.dataBytes).toBe(diff.dataBytes);
    expect(r.disks[0]!.zeroBytes).toBe(diff.zeroBytes);
    expect((await readCloudDisk(stack, VM, 'disk0', 48 * MiB)).equals(changed)).toBe(true);
    expect((await verify({ ...common(), vm: VM })).identical).toBe(true);
  });

  it('a checksum resync moves to a new epoch and sends only the differing extent (never a blind full copy)', async () => {
    const before = readFileSync(image);
    const changed = Buffer.from(before);
    changed[30 * MiB + 100] = (changed[30 * MiB + 100]! + 1) % 256;
    writeFileSync(image, changed);
    const res = await fetch(`${stack.apiUrl}/vms/${VM}/resync`, { method: 'POST', headers: { 'x-functions-key': stack.functionKey, 'content-type': 'application/json' }, body: '{}' });
    expect(res.status).toBe(202);
    const { epoch } = (await res.json()) as { epoch: number };
    expect(epoch).toBe(2);
    const r = await replicate({ ...common(), vm: VM, once: true });
    expect(r.state).toBe('protected');
    const d = r.disks[0]!;
    expect(d.firstSequence).toBe(1);
    expect(d.dataBytes + d.zeroBytes).toBe(4 * MiB); // the one 4 MiB extent whose hash differs
    expect(loadVmState(stateDir, VM).disks[0]!.epoch).toBe(2);
    expect((await readCloudDisk(stack, VM, 'disk0', 48 * MiB)).equals(changed)).toBe(true);
  });

  it('continuous mode: TrackedDisk churn travels from the journal every pass, with crash- and app-consistent tags (pre-tag hook)', async () => {
    const hookMark = join(dir, 'hook-ran');
    const ac = new AbortController();
    const passes: { dirty: number; data: number; scanned: number; tagged: boolean }[] = [];
    const running = replicate({
      ...common(),
      vm: VM,
      intervalMs: 300,
      tagIntervalMs: 1500,
      appTagIntervalMs: 2500,
      preTagHook: `touch ${hookMark}`,
      signal: ac.signal,
      onPass: (r) => passes.push({ dirty: r.disks[0]!.dirtyBytes, data: r.disks[0]!.dataBytes, scanned: r.disks[0]!.scannedBytes, tagged: r.tagId !== undefined }),
    });
    const churned = await churn({ disk: image, stateDir, bytesPerSecond: 2_000_000, ioSize: 4096, pattern: 'random', durationMs: 4000 });
    expect(churned.bytes).toBeGreaterThan(6_000_000);
    // every condition is awaited (under load a pass waits for the cloud to apply the one before)
    await waitFor(() => passes.length >= 2 && passes.slice(1).some((p) => p.dirty > 0) && passes.some((p) => p.tagged) && existsSync(hookMark), 'a pass that sent journal ranges, a tagged pass and the pre-tag hook', { timeoutMs: 60_000 });
    ac.abort();
    await running;
    expect(existsSync(hookMark)).toBe(true);
    expect(passes.some((p) => p.tagged)).toBe(true);
    // after the first pass, no rescan: only the journal's ranges are read and sent
    expect(passes.slice(1).every((p) => p.scanned === 0)).toBe(true);
    const sentByDelta = passes.slice(1).reduce((a, p) => a + p.data, 0);
    expect(sentByDelta).toBeLessThanOrEqual(churned.bytes);
    const r = await replicate({ ...common(), vm: VM, once: true });
    expect(r.state).toBe('protected');
    expect((await readCloudDisk(stack, VM, 'disk0', 48 * MiB)).equals(readFileSync(image))).toBe(true);
    const rps = await fetch(`${stack.apiUrl}/vms/${VM}/recovery-points`, { headers: { 'x-functions-key': stack.functionKey } });
    if (rps.status === 200) {
      const body = (await rps.json()) as { recoveryPoints: { type: string }[] };
      expect(body.recoveryPoints.some((p) => p.type === 'app-consistent')).toBe(true);
    }
  }, 150_000);

  it('migrate (cut-over) makes a final pass and tag, and migrates exactly the source as it is then', async () => {
    // writes through TrackedDisk still in the journal, then a plain write into the same 64 KiB
    // blocks (CI under load once left churn pending here, and the final pass lost the plain write)
    const tracked = TrackedDisk.open(image, stateDir);
    for (const off of [30 * MiB + 4096, 30 * MiB + 65536 + 512]) tracked.write(off, Buffer.alloc(4096, 0x66));
    tracked.close();
    const changed = readFileSync(image);
    changed.fill(0x77, 30 * MiB + 8192, 30 * MiB + 65536); // written after the last pass: only the final sync carries it
    changed.fill(0x78, 30 * MiB + 65536 + 8192, 30 * MiB + 65536 + 12288);
    writeFileSync(image, changed);
    const op = await migrate({ ...common(), vm: VM, timeoutMs: 120_000 });
    expect(op).toMatchObject({ type: 'migrate', status: 'succeeded', disks: [{ diskId: 'disk0', sizeBytes: 48 * MiB }] });
    const path = decodeURIComponent(new URL(op.disks![0]!.vhdUrl).pathname).split('/').slice(2);
    expect(path[0]).toBe('migrated');
    const blob = BlobServiceClient.fromConnectionString(stack.storageConnectionString).getContainerClient(path[0]!).getBlobClient(path.slice(1).join('/'));
    expect((await blob.downloadToBuffer(0, 48 * MiB)).equals(changed)).toBe(true);
    const vm = (await (await fetch(`${stack.apiUrl}/vms/${VM}`, { headers: { 'x-functions-key': stack.functionKey } })).json()) as { state: string };
    expect(vm.state).toBe('migrated');
  }, 180_000);
});
