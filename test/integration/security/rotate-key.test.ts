/**
 * Key rotation end to end (real stack, the CLI as a child process): enable, replicate, rotate
 * while `replicate` runs (the next batches carry the new key id, without a restart), a batch
 * sealed with the old key before its cut-off (applied) and after it (dead-lettered KeyRetired,
 * the disk untouched), the disk byte-exact throughout; and the Table adapter's rotation
 * transaction (ETag, all or nothing) and two rotations at once against Azurite.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ServiceBusClient } from '@azure/service-bus';
import { BlobServiceClient } from '@azure/storage-blob';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { azureTransport, replicate } from '../../../local/appliance/commands';
import type { CloudTransport } from '../../../local/appliance/outbox';
import { keyFilePath, loadVmState } from '../../../local/appliance/state';
import { TrackedDisk } from '../../../local/appliance/tracked-disk';
import { BlobDiskStore } from '../../../shared/azure/blob-disk-store';
import { TableStateStore } from '../../../shared/azure/table-state-store';
import { parseEnvelope } from '../../../shared/domain/envelope';
import { StateStoreError } from '../../../shared/ports/state-store';
import { rotateKey } from '../../../shared/services/vms';
import { apiClient, enableVm, type Api } from '../../support/api';
import { createBatchSender, rng, type BatchSender } from '../../support/batches';
import { ROOT, startTestStack, type TestStack } from '../../support/stack';
import { waitFor } from '../../support/wait';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

describe('key rotation (real stack)', () => {
  let stack: TestStack;
  let api: Api;
  let dir: string;
  let stateDir: string;
  let sender: BatchSender;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ferry-rotate-'));
    stateDir = join(dir, 'state');
    stack = await startTestStack();
    api = apiClient(stack);
    sender = createBatchSender(stack.serviceBusConnectionString, stack.storageConnectionString);
  }, 180_000);

  afterAll(async () => {
    await sender?.close();
    await stack?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const env = () => ({ ...process.env, FERRY_FUNCTION_KEY: stack.functionKey, AzureWebJobsStorage: stack.storageConnectionString, ServiceBusConnection: stack.serviceBusConnectionString, FERRY_LOG_LEVEL: 'warn' });
  const ferry = (...args: string[]) => run(process.execPath, [join(ROOT, 'dist/local/appliance/cli.js'), ...args, '--api', stack.apiUrl, '--state-dir', stateDir], { env: env(), cwd: ROOT });
  const cloudDisk = (vmId: string) =>
    new BlobDiskStore(BlobServiceClient.fromConnectionString(stack.storageConnectionString).getContainerClient('disks')).read({ vmId, diskId: 'disk0' }, SIZE, 0, SIZE);
  const applied = async (vmId: string): Promise<number> => (await api('GET', `/vms/${vmId}`)).body.disks[0].appliedSequence as number;

  it('rotates under a running replicate, accepts the old key until its cut-off, then dead-letters KeyRetired; the disk stays byte-exact', async () => {
    const image = join(dir, 'disk0.img');
    const next = rng(42);
    const img = Buffer.alloc(SIZE);
    for (let o = 0; o < SIZE / 2; o += 4) img.writeUInt32LE(Math.floor(next() * 0xffffffff), o);
    writeFileSync(image, img);
    await ferry('enable', '--vm', 'rot-vm', '--disk', image);
    const key1 = Buffer.from(loadVmState(stateDir, 'rot-vm').dataKey, 'base64');
    await ferry('replicate', '--vm', 'rot-vm', '--once', '--threads', '2');
    expect((await cloudDisk('rot-vm')).equals(readFileSync(image))).toBe(true);

    // replicate keeps running (in-process, so the envelopes it sends can be seen)
    const seen: { seq: number; keyId: number }[] = [];
    const inner = azureTransport({ storageConnection: stack.storageConnectionString, serviceBusConnection: stack.serviceBusConnectionString });
    const recording: CloudTransport = {
      stage: (c, n, b) => inner.stage(c, n, b),
      send: async (m) => {
        const e = parseEnvelope(m.body);
        seen.push({ seq: e.seq, keyId: e.keyId });
        await inner.send(m);
      },
      reset: async () => inner.reset?.(),
      close: () => inner.close(),
    };
    const stop = new AbortController();
    const running = replicate({ api: stack.apiUrl, stateDir, functionKey: stack.functionKey, vm: 'rot-vm', intervalMs: 200, rescanIntervalMs: 3_600_000, transport: recording, sealWorkers: 1, signal: stop.signal });
    const churn = (offset: number, fill: number) => {
      const disk = TrackedDisk.open(image, stateDir);
      disk.write(offset, Buffer.alloc(64 * 1024, fill));
      disk.close();
    };
    try {
      churn(MiB, 1);
      await waitFor(() => seen.some((s) => s.keyId === 1 && s.seq > 1), 'a key-1 batch of the running replicate');

      const rotated = await ferry('rotate-key', '--vm', 'rot-vm', '--json');
      const r = JSON.parse(rotated.stdout) as { keyId: number; previousKeys: { keyId: number; retiresAt: string }[]; keyFile: string };
      expect(r).toMatchObject({ vmId: 'rot-vm', keyId: 2, keyFile: keyFilePath(stateDir, 'rot-vm'), previousKeys: [{ keyId: 1 }] });
      expect(Date.parse(r.previousKeys[0]!.retiresAt) - Date.now()).toBeGreaterThan(23 * 3600 * 1000);
      expect(statSync(r.keyFile).mode & 0o777).toBe(0o600);
      const key2 = JSON.parse(readFileSync(r.keyFile, 'utf8')).dataKey as string;
      expect(Buffer.from(key2, 'base64').length).toBe(32);
      expect(rotated.stdout + rotated.stderr).not.toContain(key2);
      expect((await api('GET', '/vms/rot-vm')).body.keyId).toBe(2);

      churn(3 * MiB, 2);
      await waitFor(() => seen.some((s) => s.keyId === 2), 'a batch sealed with key 2 by the replicate that was already running', { timeoutMs: 30_000 });
      // the pass that carries the change may follow the first key-2 batch (a marker): wait for the bytes
      await waitFor(async () => (await cloudDisk('rot-vm')).equals(readFileSync(image)), 'the cloud disk to match the image after the rotation', { timeoutMs: 30_000, intervalMs: 250 });
    } finally {
      stop.abort();
      await running;
    }
    // no batch after the first key-2 one went back to key 1
    const firstNew = seen.findIndex((s) => s.keyId === 2);
    expect(seen.slice(firstNew).every((s) => s.keyId === 2)).toBe(true);
    await waitFor(async () => (await applied('rot-vm')) === Math.max(...seen.map((s) => s.seq)), 'the cloud to apply every batch sent');
    expect((await cloudDisk('rot-vm')).equals(readFileSync(image))).toBe(true);

    // a batch sealed with key 1 before its cut-off applies (it re-sends the image's own bytes)
    const n = await applied('rot-vm');
    const batch = (sequence: number, records: { kind: 'data'; offset: number; data: Buffer }[]) => ({
      vmId: 'rot-vm', diskId: 'disk0', epoch: 1, sequence, capturedAt: Date.now(), diskSizeBytes: SIZE, initialCoveredBytes: SIZE, initialReplicationComplete: true, records,
    });
    await sender.send(batch(n + 1, [{ kind: 'data', offset: MiB, data: readFileSync(image).subarray(MiB, MiB + 4096) }]), key1, { keyId: 1 });
    await waitFor(async () => (await applied('rot-vm')) === n + 1, 'the key-1 batch before its cut-off to apply');

    // rotate again with a 2 s grace: keys 1 and 2 retire 2 s from now
    const short = JSON.parse((await ferry('rotate-key', '--vm', 'rot-vm', '--grace', '2s', '--json')).stdout) as { keyId: number; previousKeys: { keyId: number; retiresAt: string }[] };
    expect(short.keyId).toBe(3);
    expect(short.previousKeys.map((k) => k.keyId)).toEqual([1, 2]);
    const cutoff = Date.parse(short.previousKeys[0]!.retiresAt);
    expect(short.previousKeys[1]!.retiresAt).toBe(short.previousKeys[0]!.retiresAt);
    await waitFor(() => Date.now() > cutoff + 50, 'the cut-off of keys 1 and 2 to pass', { timeoutMs: 10_000 });

    const before = await cloudDisk('rot-vm');
    await sender.send(batch(n + 2, [{ kind: 'data', offset: 2 * MiB, data: Buffer.alloc(4096, 0xee) }]), key1, { keyId: 1 });
    const vm = await waitFor(async () => {
      const v = (await api('GET', '/vms/rot-vm')).body;
      return v.healthReasons.some((h: { code: string }) => h.code === 'DEAD_LETTERED') ? v : undefined;
    }, 'the retired-key batch to be dead-lettered');
    const reason = vm.healthReasons.find((h: { code: string }) => h.code === 'DEAD_LETTERED').message as string;
    expect(reason).toContain(`sequence ${n + 2} is sealed with data key 1, retired at ${new Date(cutoff).toISOString()} (the VM's current key is 3)`);
    expect(vm.disks[0].appliedSequence).toBe(n + 1);
    expect((await cloudDisk('rot-vm')).equals(before)).toBe(true);
    expect(before.equals(readFileSync(image))).toBe(true);

    const sb = new ServiceBusClient(stack.serviceBusConnectionString);
    try {
      const dlq = sb.createReceiver('replication-batches', { subQueueType: 'deadLetter', receiveMode: 'receiveAndDelete' });
      const dead = await waitFor(async () => (await dlq.receiveMessages(10, { maxWaitTimeInMs: 500 })).find((m) => m.deadLetterReason === 'KeyRetired'), 'the KeyRetired message in the dead-letter queue');
      expect(dead.deadLetterErrorDescription).toMatch(/^Batch for VM 'rot-vm' disk 'disk0' epoch 1 sequence \d+ is sealed with data key 1, retired at .*Make the appliance seal with the current key/);
    } finally {
      await sb.close();
    }

    // the Table holds the three keys wrapped only, the retired ones with their cut-off
    const keys = await TableStateStore.fromConnectionString(stack.storageConnectionString).listKeys('rot-vm');
    expect(keys.map((k) => [k.keyId, k.retiresAt])).toEqual([[1, cutoff], [2, cutoff], [3, undefined]]);
    const key3 = Buffer.from(JSON.parse(readFileSync(keyFilePath(stateDir, 'rot-vm'), 'utf8')).dataKey as string, 'base64');
    for (const k of keys) for (const raw of [key1, key3]) expect(k.wrapped.includes(raw)).toBe(false);
  }, 150_000);

  it('the CLI and the route refuse what they cannot do, with a reason', async () => {
    const notHere = await ferry('rotate-key', '--vm', 'nowhere').then(() => undefined, (e: { code: number; stderr: string }) => e);
    expect(notHere?.code).toBe(1);
    expect(notHere?.stderr).toMatch(/^ferry: VM 'nowhere' is not enabled on this appliance/);
    const badGrace = await ferry('rotate-key', '--vm', 'nowhere', '--grace', '8d').then(() => undefined, (e: { code: number; stderr: string }) => e);
    expect(badGrace?.code).toBe(2);
    expect(await api('POST', '/vms/ghost/rotate-key', {})).toMatchObject({ status: 404, body: { code: 'VM_NOT_FOUND' } });
    expect(await api('POST', '/vms/ghost/rotate-key', { graceSeconds: -5 })).toMatchObject({ status: 400, body: { code: 'INVALID_REQUEST', message: 'Invalid rotate-key request: graceSeconds: graceSeconds must be at least 0 (0 retires the previous keys at once).' } });
    expect(await api('POST', '/vms/ghost/rotate-key', '{')).toMatchObject({ status: 400, body: { code: 'INVALID_JSON' } });
    expect((await api('POST', '/vms/ghost/rotate-key', {}, {})).status).toBe(401);
    await enableVm(stack, 'rot-gone', [{ diskId: 'disk0', sizeBytes: MiB }]);
    expect((await api('POST', '/vms/rot-gone/disable-replication')).status).toBe(200);
    const disabled = await api('POST', '/vms/rot-gone/rotate-key');
    expect(disabled).toMatchObject({ status: 409, body: { code: 'INVALID_TRANSITION' } });
    expect(disabled.body.message).toMatch(/^VM 'rot-gone' is in state 'disabled' and takes no batches/);
  });

  it('Table adapter: the rotation is one transaction under the VM ETag; of two rotations at once exactly one wins', async () => {
    const state = TableStateStore.fromConnectionString(stack.storageConnectionString);
    await enableVm(stack, 'rot-tx', [{ diskId: 'disk0', sizeBytes: MiB }]);
    const found = (await state.getVm('rot-tx'))!;
    const key = (keyId: number) => ({ vmId: 'rot-tx', keyId, wrapped: randomBytes(61), createdAt: Date.now() });
    // a key to retire that does not exist: nothing is written, not even the VM row
    await expect(state.rotateKey({ ...found.vm, keyId: 2 }, key(2), [{ keyId: 9, retiresAt: 1 }])).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect((await state.getVm('rot-tx'))!.vm).toMatchObject({ keyId: 1, etag: found.vm.etag });
    expect((await state.listKeys('rot-tx')).map((k) => k.keyId)).toEqual([1]);
    const etag = await state.rotateKey({ ...found.vm, keyId: 2 }, key(2), [{ keyId: 1, retiresAt: 1234 }]);
    expect((await state.getVm('rot-tx'))!.vm).toMatchObject({ keyId: 2, etag });
    // the same read again: its ETag is stale
    const stale = await state.rotateKey({ ...found.vm, keyId: 3 }, key(3), []).then(() => undefined, (e: unknown) => e);
    expect(stale).toBeInstanceOf(StateStoreError);
    expect(stale).toMatchObject({ code: 'CONFLICT' });
    // a key id that exists
    await expect(state.rotateKey({ ...found.vm, keyId: 2, etag }, key(2), [])).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
    expect((await state.listKeys('rot-tx')).map((k) => [k.keyId, k.retiresAt])).toEqual([[1, 1234], [2, undefined]]);

    const deps = { state, disks: undefined as never, masterKey: Buffer.from(stack.masterKey, 'base64'), now: () => Date.now(), randomBytes: (n: number) => randomBytes(n) };
    const results = await Promise.allSettled([rotateKey(deps, 'rot-tx', {}), rotateKey(deps, 'rot-tx', {})]);
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    expect(results.find((r): r is PromiseRejectedResult => r.status === 'rejected')?.reason).toMatchObject({ code: 'CONCURRENT_ROTATION' });
    expect((await state.listKeys('rot-tx')).map((k) => k.keyId)).toEqual([1, 2, 3]);
    expect((await state.getVm('rot-tx'))!.vm.keyId).toBe(3);
  });
});
