/**
 * Crash safety of captures: the host is killed (FERRY_FAULT_KILL_AT) after the snapshots of a
 * tagged batch and before its manifest, and after the capture but before the sequence is
 * recorded; the redelivered batch must converge to one recovery point holding exactly the disk
 * as of that batch, and the first attempt's orphan snapshots must be collectable.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlobServiceClient } from '@azure/storage-blob';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobCaptureStore } from '../../../shared/azure/blob-capture-store';
import { SEGMENT_BYTES, EXTENT_BYTES } from '../../../shared/domain/extents';
import type { FaultPoint } from '../../../shared/faults';
import type { BatchRecord } from '../../../shared/domain/wire-format';
import { applyToModel, createBatchSender, type BatchSender } from '../../support/batches';
import { ROOT, startTestStack, type TestStack } from '../../support/stack';
import { waitFor } from '../../support/wait';
import { enableVm } from '../../support/api';

const MiB = 1024 * 1024;
const VM = 'capcrash-01';
const SIZE = 2 * SEGMENT_BYTES; // two segments: a capture snapshots both
const POINTS: FaultPoint[] = ['capture.snapshotted', 'apply.captured'];

describe('captures survive kill -9 of the host', () => {
  let stack: TestStack;
  let sender: BatchSender;
  let captures: BlobCaptureStore;
  let key: Buffer;
  let seq = 0;
  const model = Buffer.alloc(SIZE);

  const get = async (path: string): Promise<any> => (await fetch(`${stack.apiUrl}${path}`, { headers: { 'x-functions-key': stack.functionKey } })).json();

  let configDir: string;

  beforeAll(async () => {
    // As in Service Bus, a message's lock outlives the process that held it: after a crash, an
    // operation is redelivered when its lock expires (PT5M in the shipped config). Shorten it
    // here so the resume test does not wait five minutes; the host renews locks while it runs.
    const config = JSON.parse(readFileSync(join(ROOT, 'local/servicebus/Config.json'), 'utf8'));
    for (const q of config.UserConfig.Namespaces[0].Queues) if (q.Name === 'operations') q.Properties.LockDuration = 'PT5S';
    configDir = mkdtempSync(join(tmpdir(), 'ferry-sbconfig-'));
    writeFileSync(join(configDir, 'Config.json'), JSON.stringify(config));
    stack = await startTestStack({ servicebusConfig: join(configDir, 'Config.json') });
    sender = createBatchSender(stack.serviceBusConnectionString, stack.storageConnectionString);
    captures = new BlobCaptureStore(BlobServiceClient.fromConnectionString(stack.storageConnectionString).getContainerClient('disks'));
    key = await enableVm(stack, VM, [{ diskId: 'disk0', sizeBytes: SIZE }]);
  }, 180_000);

  afterAll(async () => {
    await sender?.close();
    await stack?.stop();
    if (configDir) rmSync(configDir, { recursive: true, force: true });
  });

  it.each(POINTS)('converges to one recovery point after a crash at %s', async (point) => {
    const host = await stack.stack.restartHost({ FERRY_FAULT_KILL_AT: point }, { wait: false });
    seq++;
    const records: BatchRecord[] = [
      { kind: 'data', offset: 4096 * seq, data: randomBytes(4096) },
      { kind: 'data', offset: SEGMENT_BYTES - MiB, data: randomBytes(2 * MiB) }, // straddles both segments
    ];
    await sender.send(
      { vmId: VM, diskId: 'disk0', epoch: 1, sequence: seq, capturedAt: Date.now(), diskSizeBytes: SIZE, records, initialReplicationComplete: true, consistency: { kind: 'crash-consistent', tagId: seq } },
      key,
    );
    applyToModel(model, records);
    await waitFor(() => !host.running, `the host to crash at ${point}`, { timeoutMs: 60_000 });
    expect(stack.logs.some((l) => l.includes(`FERRY_FAULT_KILL_AT=${point}`))).toBe(true);

    await stack.stack.restartHost({});
    await waitFor(async () => (await get(`/vms/${VM}`)).disks[0].appliedSequence >= seq, `sequence ${seq} applied after the restart`, { timeoutMs: 90_000 });
    const rps = (await get(`/vms/${VM}/recovery-points`)).recoveryPoints as { id: string }[];
    expect(rps[0]?.id).toBe(`rp-${seq}`);

    const orphans = await captures.collectGarbage({ vmId: VM, diskId: 'disk0' }, 0);
    if (point === 'capture.snapshotted') expect(orphans.deleted).toBeGreaterThan(0); // the first attempt's snapshots
    for (const extent of [0, SEGMENT_BYTES / EXTENT_BYTES - 1, SEGMENT_BYTES / EXTENT_BYTES]) {
      const got = await captures.readExtent({ vmId: VM, diskId: 'disk0' }, SIZE, seq, extent);
      expect(got.equals(model.subarray(extent * EXTENT_BYTES, (extent + 1) * EXTENT_BYTES)), `extent ${extent} at tag ${seq}`).toBe(true);
    }
  });

  it('resumes a test migration after a crash mid-way (after its disk is recorded) and finishes it', async () => {
    const host = await stack.stack.restartHost({ FERRY_FAULT_KILL_AT: 'operation.disk-exported' }, { wait: false });
    await waitFor(async () => (await fetch(`${stack.apiUrl.replace(/\/api$/, '')}/api/health`).catch(() => undefined))?.ok, 'the host up');
    const res = await fetch(`${stack.apiUrl}/vms/${VM}/test-migrate`, { method: 'POST', headers: { 'x-functions-key': stack.functionKey } });
    expect(res.status).toBe(202);
    const { operationId } = (await res.json()) as { operationId: string };
    await waitFor(() => !host.running, 'the host to crash after exporting the disk', { timeoutMs: 60_000 });
    await stack.stack.restartHost({});
    const op = await waitFor(async () => {
      const o = await get(`/vms/${VM}/operations/${operationId}`);
      return o.status !== 'running' ? o : undefined;
    }, 'the operation to finish after the restart', { timeoutMs: 90_000 });
    expect(op).toMatchObject({ status: 'succeeded', recoveryPointId: `rp-${seq}`, disks: [{ diskId: 'disk0', sizeBytes: SIZE }] });
    expect((await get(`/vms/${VM}`)).state).toBe('test-migrating');
    const url = new URL(op.disks[0].vhdUrl as string);
    const blob = BlobServiceClient.fromConnectionString(stack.storageConnectionString).getContainerClient('test-migrated').getPageBlobClient(url.pathname.split('/').slice(3).join('/'));
    const footer = await blob.downloadToBuffer(SIZE, 512);
    expect(footer.toString('ascii', 0, 8)).toBe('conectix');
    expect((await blob.downloadToBuffer(SEGMENT_BYTES - MiB, 2 * MiB)).equals(model.subarray(SEGMENT_BYTES - MiB, SEGMENT_BYTES + MiB))).toBe(true);
  }, 120_000);
});
