/**
 * Recovery points, test migration and migration end to end on the local stack: two ext4 disks
 * replicate through the Service Bus emulator and the host's apply function; the cloud takes a
 * recovery point at each tag; test-migrate and migrate run in the queue-triggered operations
 * function and write fixed VHDs that qemu-img reads back as exactly the disks at the tag.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ServiceBusClient } from '@azure/service-bus';
import { BlobServiceClient } from '@azure/storage-blob';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Batch, BatchRecord } from '../../../shared/domain/wire-format';
import { applyToModel, createBatchSender, randomRecords, rng, type BatchSender } from '../../support/batches';
import { startTestStack, type TestStack } from '../../support/stack';
import { waitFor } from '../../support/wait';
import { imageRecords, makeExt4Image } from './ext4';
import { apiClient } from '../../support/api';

const MiB = 1024 * 1024;
const VM = 'mig-01';

describe('recovery points and migration on the local stack', () => {
  let stack: TestStack;
  let sender: BatchSender;
  let blobs: BlobServiceClient;
  let work: string;
  let key: Buffer;
  const disks: Record<string, Buffer> = {}; // the source disks, kept current
  const seq: Record<string, number> = { disk0: 0, disk1: 0 };

  const api = (method: string, path: string, body?: unknown) => apiClient(stack)(method, path, body);

  async function send(diskId: string, records: BatchRecord[], extra: Partial<Batch> = {}): Promise<number> {
    const sequence = ++seq[diskId]!;
    const source = disks[diskId]!;
    await sender.send({ vmId: VM, diskId, epoch: 1, sequence, capturedAt: Date.now(), diskSizeBytes: source.length, records, ...extra }, key);
    applyToModel(source, records);
    return sequence;
  }

  async function applied(): Promise<Record<string, number>> {
    const vm = (await api('GET', `/vms/${VM}`)).body as { disks: { diskId: string; appliedSequence: number }[] };
    return Object.fromEntries(vm.disks.map((d) => [d.diskId, d.appliedSequence]));
  }

  async function waitApplied(what: string): Promise<void> {
    await waitFor(async () => {
      const a = await applied();
      return Object.keys(seq).every((d) => a[d] === seq[d]);
    }, what, { timeoutMs: 30_000 });
  }

  async function runOperation(route: string, body?: unknown): Promise<any> {
    const started = await api('POST', `/vms/${VM}/${route}`, body);
    expect(started.status, JSON.stringify(started.body)).toBe(202);
    expect(started.body).toEqual({ operationId: expect.stringMatching(/^op-[0-9a-f]{16}$/) });
    return waitFor(async () => {
      const op = await api('GET', `/vms/${VM}/operations/${started.body.operationId}`);
      return op.body.status !== 'running' ? op.body : undefined;
    }, `${route} to finish`, { timeoutMs: 30_000 });
  }

  /** Downloads a VHD by its URL (no SAS: the connection string's key reads it) and checks it with qemu-img. */
  async function expectVhdEquals(vhd: { diskId: string; vhdUrl: string; sizeBytes: number }, expected: Buffer): Promise<void> {
    const url = new URL(vhd.vhdUrl);
    expect(url.search).toBe('');
    const [, , container, ...name] = url.pathname.split('/');
    const path = join(work, `${vhd.diskId}.vhd`);
    await blobs.getContainerClient(container!).getBlobClient(name.join('/')).downloadToFile(path);
    const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', '-f', 'vpc', path], { encoding: 'utf8' })) as { 'virtual-size': number };
    expect(info['virtual-size']).toBe(vhd.sizeBytes);
    expect(vhd.sizeBytes).toBe(Math.max(20 * MiB, Math.ceil(expected.length / MiB) * MiB));
    const raw = join(work, `${vhd.diskId}.raw`);
    execFileSync('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', path, raw]);
    const got = readFileSync(raw);
    expect(got.subarray(0, expected.length).equals(expected), `${vhd.diskId} differs from the source at the tag`).toBe(true);
    expect(got.subarray(expected.length).every((b) => b === 0)).toBe(true);
    return void raw;
  }

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'ferry-migrate-'));
    disks.disk0 = makeExt4Image(work, 'disk0', 64);
    disks.disk1 = makeExt4Image(work, 'disk1', 21, 9); // 21 MiB: the VHD rounds nothing; 20 MiB minimum holds
    stack = await startTestStack();
    sender = createBatchSender(stack.serviceBusConnectionString, stack.storageConnectionString);
    blobs = BlobServiceClient.fromConnectionString(stack.storageConnectionString);
    const res = await api('POST', `/vms/${VM}/enable-replication`, { disks: Object.entries(disks).map(([diskId, d]) => ({ diskId, sizeBytes: d.length })) });
    expect(res.status).toBe(201);
    key = Buffer.from(res.body.dataKey, 'base64');
  }, 180_000);

  afterAll(async () => {
    await sender?.close();
    if (stack && process.env.FERRY_TEST_VERBOSE) console.log(stack.logs.slice(-80).join('\n'));
    await stack?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  let atTag1: Record<string, Buffer>;

  it('replicates two ext4 disks and takes a recovery point at the tag ending the initial copy', async () => {
    for (const [diskId, image] of Object.entries(disks)) {
      const records = imageRecords(image);
      for (let i = 0; i < records.length; i += 2) {
        const last = i + 2 >= records.length;
        await send(diskId, records.slice(i, i + 2), last ? { initialReplicationComplete: true, consistency: { kind: 'crash-consistent', tagId: 1 } } : {});
      }
    }
    atTag1 = Object.fromEntries(Object.entries(disks).map(([d, b]) => [d, Buffer.from(b)])); // the source copied aside at the tag
    await waitApplied('the initial copy applied');
    const rps = await waitFor(async () => {
      const r = await api('GET', `/vms/${VM}/recovery-points`);
      return r.body.recoveryPoints.length > 0 ? r.body.recoveryPoints : undefined;
    }, 'a recovery point');
    expect(rps).toEqual([{ id: 'rp-1', createdAt: expect.any(String), capturedAt: expect.any(String), type: 'crash-consistent', disks: [expect.objectContaining({ diskId: 'disk0' }), expect.objectContaining({ diskId: 'disk1' })] }]);
    expect((await api('GET', `/vms/${VM}`)).body.state).toBe('protected');
  });

  it('refuses bad requests with the documented 4xx', async () => {
    expect((await api('POST', `/vms/${VM}/test-migrate`, { recoveryPointId: 'rp-999' })).body.code).toBe('RECOVERY_POINT_NOT_FOUND');
    expect((await api('POST', `/vms/ghost-01/migrate`, {})).status).toBe(404);
    expect((await api('POST', `/vms/${VM}/migrate`, { recoveryPointId: 'rp-1', extra: 1 })).status).toBe(400);
    const cleanup = await api('POST', `/vms/${VM}/test-migrate-cleanup`);
    expect(cleanup.status).toBe(409);
    expect(cleanup.body.message).toMatch(/state 'protected'/);
    expect((await api('GET', `/vms/${VM}/operations/op-0000000000000000`)).status).toBe(404);
  });

  it('test-migrates the point while writes go on: the VHDs are the disks at the tag, and cleanup deletes them', async () => {
    const next = rng(11);
    for (const diskId of Object.keys(disks)) await send(diskId, randomRecords(next, disks[diskId]!.length, 6, 64 * 1024));
    await waitApplied('writes after the tag');
    const op = await runOperation('test-migrate', {});
    expect(op).toMatchObject({ type: 'test-migrate', status: 'succeeded', recoveryPointId: 'rp-1' });
    expect(op.disks.map((d: { diskId: string }) => d.diskId)).toEqual(['disk0', 'disk1']);
    for (const d of op.disks) {
      expect(d.vhdUrl).toMatch(/\/test-migrated\//);
      await expectVhdEquals(d, atTag1[d.diskId]!);
      execFileSync('e2fsck', ['-fn', join(work, `${d.diskId}.raw`)], { stdio: 'pipe' });
    }
    expect((await api('GET', `/vms/${VM}`)).body.state).toBe('test-migrating');
    const busy = await api('POST', `/vms/${VM}/migrate`, {});
    expect(busy.status).toBe(409);
    expect(busy.body.message).toMatch(/test-migrating/);

    const cleanup = await runOperation('test-migrate-cleanup');
    expect(cleanup.status).toBe('succeeded');
    const left: string[] = [];
    for await (const b of blobs.getContainerClient('test-migrated').listBlobsFlat({ prefix: `${VM}/` })) left.push(b.name);
    expect(left).toEqual([]);
    expect((await api('GET', `/vms/${VM}`)).body.state).toBe('protected');
  });

  it('takes a consistent point while batches keep flowing on both disks, migrates it, then refuses batches', async () => {
    const next = rng(23);
    let atTag2: Record<string, Buffer> | undefined;
    for (let round = 0; round < 4; round++) {
      for (const diskId of Object.keys(disks)) {
        const tagged = round === 2 ? { consistency: { kind: 'crash-consistent' as const, tagId: 2 } } : {};
        await send(diskId, randomRecords(next, disks[diskId]!.length, 4, 32 * 1024), tagged);
      }
      if (round === 2) atTag2 = Object.fromEntries(Object.entries(disks).map(([d, b]) => [d, Buffer.from(b)]));
    }
    await waitApplied('the flowing batches');
    const rps = (await api('GET', `/vms/${VM}/recovery-points`)).body.recoveryPoints as { id: string }[];
    expect(rps.map((r) => r.id)).toEqual(['rp-2', 'rp-1']);

    const op = await runOperation('migrate', { recoveryPointId: 'rp-2' });
    expect(op).toMatchObject({ type: 'migrate', status: 'succeeded', recoveryPointId: 'rp-2' });
    for (const d of op.disks) {
      expect(d.vhdUrl).toMatch(/\/migrated\//);
      await expectVhdEquals(d, atTag2![d.diskId]!);
    }
    expect((await api('GET', `/vms/${VM}`)).body.state).toBe('migrated');

    await send('disk0', [{ kind: 'data', offset: 0, data: Buffer.alloc(512, 1) }]);
    const sb = new ServiceBusClient(stack.serviceBusConnectionString);
    try {
      const receiver = sb.createReceiver('replication-batches', { subQueueType: 'deadLetter' });
      const dead = await waitFor(async () => (await receiver.peekMessages(50)).find((m) => m.deadLetterReason === 'VmNotReplicating'), 'the batch dead-lettered');
      expect(dead.deadLetterErrorDescription).toMatch(/was migrated to Azure .*Stop the appliance for this VM/);
      await receiver.close();
    } finally {
      await sb.close();
    }
    expect((await api('GET', `/vms/${VM}`)).body.state).toBe('migrated');
  });
});
