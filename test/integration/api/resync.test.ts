/**
 * Checksum resync on the real local stack: the cloud's extent hashes (GET .../hashes, read
 * from committed block ids) equal the hashes of the model; after POST .../resync the "appliance"
 * compares them with its diverged source and sends only the differing extents in the new
 * epoch, and the VM returns to protected with equal hashes.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXTENT_BYTES } from '../../../shared/domain/extents';
import { diffManifests, manifestOf, runsToByteRanges, type ExtentHash } from '../../../shared/domain/manifest';
import type { Batch, BatchRecord } from '../../../shared/domain/wire-format';
import { applyToModel, createBatchSender, type BatchSender } from '../../support/batches';
import { startTestStack, type TestStack } from '../../support/stack';
import { waitFor } from '../../support/wait';
import { apiClient } from '../../support/api';

const VM = 'resync-01';
const SIZE = 5 * EXTENT_BYTES + 512; // six extents, the last one 512 bytes

describe('checksum resync on the local stack', () => {
  let stack: TestStack;
  let sender: BatchSender;
  let dataKey: Buffer;
  const source = Buffer.alloc(SIZE);

  const api = (method: string, path: string, body?: unknown) => apiClient(stack)(method, path, body);
  const vm = async () => (await api('GET', `/vms/${VM}`)).body;

  /** Every page of the replica's hashes. */
  async function replicaHashes(pageSize: number): Promise<{ blocks: ExtentHash[]; epoch: number; appliedSequence: number }> {
    const blocks: ExtentHash[] = [];
    let from: number | null = 0;
    let last: any;
    while (from !== null) {
      const res = await api('GET', `/vms/${VM}/disks/disk0/hashes?from=${from}&count=${pageSize}`);
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      last = res.body;
      blocks.push(...last.blocks);
      from = last.next;
    }
    return { blocks, epoch: last.epoch, appliedSequence: last.appliedSequence };
  }

  async function send(epoch: number, sequence: number, records: BatchRecord[], extra: Partial<Batch> = {}): Promise<void> {
    await sender.send({ vmId: VM, diskId: 'disk0', epoch, sequence, capturedAt: Date.now(), diskSizeBytes: SIZE, records, ...extra }, dataKey);
  }

  async function waitApplied(epoch: number, sequence: number): Promise<void> {
    await waitFor(async () => {
      const d = (await vm()).disks[0];
      return d.epoch === epoch && d.appliedSequence >= sequence;
    }, `epoch ${epoch} sequence ${sequence} applied`, { timeoutMs: 20_000 });
  }

  beforeAll(async () => {
    stack = await startTestStack();
    sender = createBatchSender(stack.serviceBusConnectionString, stack.storageConnectionString);
    const res = await api('POST', `/vms/${VM}/enable-replication`, { disks: [{ diskId: 'disk0', sizeBytes: SIZE }] });
    expect(res.status).toBe(201);
    dataKey = Buffer.from(res.body.dataKey, 'base64');
  }, 180_000);

  afterAll(async () => {
    await sender?.close();
    if (stack && process.env.FERRY_TEST_VERBOSE) console.log(stack.logs.slice(-80).join('\n'));
    await stack?.stop();
  });

  it('serves the replica hashes, then resyncs only the differing extents back to protected', async () => {
    // Initial copy: extents 0-2 with data, 3 left zero, 4 and the short 5 with data.
    const initial: BatchRecord[][] = [
      [{ kind: 'data', offset: 0, data: randomBytes(3 * EXTENT_BYTES) }],
      [{ kind: 'data', offset: 4 * EXTENT_BYTES, data: randomBytes(EXTENT_BYTES + 512) }],
    ];
    await send(1, 1, initial[0]!, { initialCoveredBytes: 3 * EXTENT_BYTES });
    await send(1, 2, initial[1]!, { initialReplicationComplete: true });
    for (const r of initial) applyToModel(source, r);
    await waitFor(async () => (await vm()).state === 'protected', 'VM protected');

    const before = await replicaHashes(4);
    expect(before).toMatchObject({ epoch: 1, appliedSequence: 2 });
    expect(before.blocks).toEqual(manifestOf(source));

    const bad = await api('GET', `/vms/${VM}/disks/disk0/hashes?count=65537`);
    expect(bad.status).toBe(400);
    expect((await api('GET', `/vms/${VM}/disks/disk7/hashes`)).body.code).toBe('DISK_NOT_FOUND');
    expect((await api('GET', `/vms/${VM}/disks/disk0/hashes?recoveryPointId=rp-1`)).status).toBe(404);
    expect((await api('POST', `/vms/nobody/resync`)).status).toBe(404);

    // The source diverges without the cloud seeing it (extent 1 in part, the short extent 5).
    source.set(randomBytes(4096), EXTENT_BYTES + 8192);
    source.set(randomBytes(512), 5 * EXTENT_BYTES);

    const accepted = await api('POST', `/vms/${VM}/resync`);
    expect(accepted).toEqual({ status: 202, body: { vmId: VM, state: 'resync-required', epoch: 2 } });
    const required = await vm();
    expect(required.state).toBe('resync-required');
    expect(required.resync).toMatchObject({ epoch: 2, reason: 'requested' });

    // The appliance's side: compare, then send only what differs, in the new epoch.
    const replica = await replicaHashes(65_536);
    const runs = diffManifests(manifestOf(source), replica.blocks);
    expect(runs).toEqual([
      { start: 1, end: 2 },
      { start: 5, end: 6 },
    ]);
    const ranges = runsToByteRanges(runs, SIZE);
    const batches = ranges.map((r): BatchRecord[] => [{ kind: 'data', offset: r.offset, data: Buffer.from(source.subarray(r.offset, r.offset + r.length)) }]);
    expect(ranges.reduce((n, r) => n + r.length, 0)).toBe(EXTENT_BYTES + 512);
    for (const [i, records] of batches.entries()) await send(2, i + 1, records, i === batches.length - 1 ? { initialReplicationComplete: true } : {});
    await waitApplied(2, batches.length);
    const done = await waitFor(async () => {
      const cur = await vm();
      return cur.state === 'protected' ? cur : undefined;
    }, 'VM protected again');
    expect(done.resync).toBeNull();

    const after = await replicaHashes(3);
    expect(after).toMatchObject({ epoch: 2, appliedSequence: 2 });
    expect(after.blocks).toEqual(manifestOf(source));
  }, 60_000);
});
