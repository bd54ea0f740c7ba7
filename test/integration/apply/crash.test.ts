/**
 * Crash safety of the apply path: the functions host is killed (SIGKILL, via
 * FERRY_FAULT_KILL_AT, see shared/faults.ts) at each step of an apply in turn; a new host then
 * gets the redelivered message, and the disk must converge to exactly the right content.
 */
import { randomBytes } from 'node:crypto';
import { BlobServiceClient } from '@azure/storage-blob';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobDiskStore } from '../../../shared/azure/blob-disk-store';
import { SEGMENT_BYTES } from '../../../shared/domain/extents';
import type { FaultPoint } from '../../../shared/faults';
import type { BatchRecord } from '../../../shared/domain/wire-format';
import { createBatchSender, type BatchSender } from '../../support/batches';
import { startTestStack, type TestStack } from '../../support/stack';
import { waitFor } from '../../support/wait';
import { enableVm } from '../../support/api';

const MiB = 1024 * 1024;
const VM = 'crash-01';
const SIZE = 2 * SEGMENT_BYTES; // two segments, so a crash can fall between their commits
const POINTS: FaultPoint[] = [
  'apply.state-read',
  'apply.batch-opened',
  'disk.blocks-staged',
  'disk.segment-committed',
  'apply.disk-written',
  'apply.recorded',
  'apply.done',
];

describe('apply survives kill -9 of the host at every step', () => {
  let stack: TestStack;
  let sender: BatchSender;
  let disks: BlobDiskStore;
  let key: Buffer;
  let seq = 0;
  const model = new Map<number, Buffer>(); // offset -> bytes written there (sparse model of a 2 GiB disk)

  const applied = async (): Promise<number> => {
    const res = await fetch(`${stack.apiUrl}/vms/${VM}`, { headers: { 'x-functions-key': stack.functionKey } });
    return ((await res.json()) as { disks: { appliedSequence: number }[] }).disks[0]!.appliedSequence;
  };

  beforeAll(async () => {
    stack = await startTestStack();
    sender = createBatchSender(stack.serviceBusConnectionString, stack.storageConnectionString);
    disks = new BlobDiskStore(BlobServiceClient.fromConnectionString(stack.storageConnectionString).getContainerClient('disks'));
    key = await enableVm(stack, VM, [{ diskId: 'disk0', sizeBytes: SIZE }]);
  }, 180_000);

  afterAll(async () => {
    await sender?.close();
    await stack?.stop();
  });

  it.each(POINTS)('converges after a crash at %s', async (point) => {
    const host = await stack.stack.restartHost({ FERRY_FAULT_KILL_AT: point }, { wait: false });
    seq++;
    // Zeros over the start of the previous batch's write, a partial extent in segment 0, and a
    // record straddling the boundary between the two segments.
    const records: BatchRecord[] = [
      ...(seq > 1 ? [{ kind: 'zero' as const, offset: 4096 * (seq - 1), length: 512 }] : []),
      { kind: 'data', offset: 4096 * seq, data: randomBytes(4096) },
      { kind: 'data', offset: SEGMENT_BYTES - MiB, data: randomBytes(2 * MiB) },
    ];
    await sender.send({ vmId: VM, diskId: 'disk0', epoch: 1, sequence: seq, capturedAt: Date.now(), diskSizeBytes: SIZE, records }, key);
    await waitFor(() => !host.running, `the host to crash at ${point}`, { timeoutMs: 60_000 });
    expect(stack.logs.some((l) => l.includes(`FERRY_FAULT_KILL_AT=${point}`))).toBe(true);

    await stack.stack.restartHost({});
    await waitFor(async () => (await applied()) >= seq, `sequence ${seq} applied after the restart`, { timeoutMs: 90_000 });
    for (const r of records) {
      if (r.kind === 'data') model.set(r.offset, Buffer.from(r.data));
      else model.get(r.offset)?.fill(0, 0, r.length);
    }
    for (const [offset, bytes] of model) {
      const got = await disks.read({ vmId: VM, diskId: 'disk0' }, SIZE, offset, bytes.length);
      expect(got.equals(bytes), `bytes at ${offset} after a crash at ${point}`).toBe(true);
    }
  });
});
