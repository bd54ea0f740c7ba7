/**
 * The seed scenario at its scale: one appliance replicating 200 VMs with 2 small disks each.
 * Thousands of batches are loaded into the queue, two host instances consume it at once (as
 * Azure scales out), and every disk must end byte-exact, with no dead letter.
 */
import { randomBytes } from 'node:crypto';
import { ServiceBusClient, type ServiceBusMessage } from '@azure/service-bus';
import { BlobServiceClient } from '@azure/storage-blob';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobDiskStore } from '../../../shared/azure/blob-disk-store';
import { sealBatch } from '../../../shared/codec/batch';
import { envelopeFor } from '../../../shared/codec/envelope';
import { applyToModel, randomRecords, rng } from '../../support/batches';
import { freePort } from '../../support/ports';
import { startTestStack, type TestStack } from '../../support/stack';
import { waitFor } from '../../support/wait';

const VMS = 200;
const DISKS = ['disk0', 'disk1'];
const SIZE = 1024 * 1024;
/** 5 per disk: 2,000 batches (about a minute here); FERRY_BULK_BATCHES=10 loads 4,000. */
const BATCHES_PER_DISK = Number(process.env.FERRY_BULK_BATCHES ?? 5);

describe('200 VMs, two hosts', () => {
  let stack: TestStack;
  const keys = new Map<string, Buffer>();
  const models = new Map<string, Buffer>();
  const vmId = (i: number): string => `bulk-${String(i).padStart(3, '0')}`;
  const api = (path: string, init: RequestInit = {}) =>
    fetch(`${stack.apiUrl}${path}`, { ...init, headers: { 'x-functions-key': stack.functionKey, 'content-type': 'application/json' } });

  beforeAll(async () => {
    stack = await startTestStack();
    await stack.stack.addHost('host2', await freePort());
    for (let i = 0; i < VMS; i++) {
      const res = await api(`/vms/${vmId(i)}/enable-replication`, { method: 'POST', body: JSON.stringify({ disks: DISKS.map((diskId) => ({ diskId, sizeBytes: SIZE })) }) });
      expect(res.status).toBe(201);
      keys.set(vmId(i), Buffer.from(((await res.json()) as { dataKey: string }).dataKey, 'base64'));
    }
  }, 300_000);

  afterAll(async () => stack?.stop());

  it('applies every batch of every disk exactly, whichever host takes it', async () => {
    const next = rng(200);
    const messages: ServiceBusMessage[] = [];
    // Batch-major order: sequence 1 of every disk, then 2..., so sessions interleave on the queue.
    for (let seq = 1; seq <= BATCHES_PER_DISK; seq++) {
      for (let i = 0; i < VMS; i++) {
        for (const diskId of DISKS) {
          const id = `${vmId(i)}/${diskId}`;
          const model = models.get(id) ?? Buffer.alloc(SIZE);
          models.set(id, model);
          const records = randomRecords(next, SIZE, 3, 8 * 1024);
          applyToModel(model, records);
          const sealed = sealBatch(
            { vmId: vmId(i), diskId, epoch: 1, sequence: seq, capturedAt: Date.now(), diskSizeBytes: SIZE, records, initialReplicationComplete: seq === BATCHES_PER_DISK },
            keys.get(vmId(i))!,
            1,
            randomBytes,
          );
          const out = envelopeFor(sealed);
          expect(out.staged).toBeUndefined();
          messages.push({ body: out.envelope, contentType: 'application/json', sessionId: out.sessionId, messageId: out.messageId });
        }
      }
    }
    expect(messages).toHaveLength(VMS * DISKS.length * BATCHES_PER_DISK);

    const client = new ServiceBusClient(stack.serviceBusConnectionString);
    const sender = client.createSender('replication-batches');
    let batch = await sender.createMessageBatch();
    for (const m of messages) {
      if (!batch.tryAddMessage(m)) {
        await sender.sendMessages(batch);
        batch = await sender.createMessageBatch();
        expect(batch.tryAddMessage(m)).toBe(true);
      }
    }
    await sender.sendMessages(batch);
    await sender.close();

    const started = Date.now();
    await waitFor(
      async () => {
        const { vms } = (await (await api('/vms')).json()) as { vms: { state: string; disks: { appliedSequence: number }[] }[] };
        const done = vms.filter((v) => v.state === 'protected' && v.disks.every((d) => d.appliedSequence === BATCHES_PER_DISK)).length;
        return done === VMS;
      },
      'every VM protected with every batch applied',
      { timeoutMs: 240_000, intervalMs: 1000 },
    );
    const seconds = (Date.now() - started) / 1000;
    console.log(`bulk: ${messages.length} batches applied by two hosts in ${seconds.toFixed(1)} s (${(messages.length / seconds).toFixed(0)} batches/s)`);

    const store = new BlobDiskStore(BlobServiceClient.fromConnectionString(stack.storageConnectionString).getContainerClient('disks'));
    for (const [id, model] of models) {
      const [vm, diskId] = id.split('/') as [string, string];
      expect((await store.read({ vmId: vm, diskId }, SIZE, 0, SIZE)).equals(model), `${id} differs`).toBe(true);
    }
    const dlq = client.createReceiver('replication-batches', { subQueueType: 'deadLetter' });
    expect(await dlq.peekMessages(10)).toHaveLength(0);
    await dlq.close();
    await client.close();
    // both hosts did some of the work
    for (const name of ['[host]', '[host2]']) expect(stack.logs.some((l) => l.startsWith(name) && l.includes("Executed 'Functions.apply-batches'"))).toBe(true);
  }, 400_000);
});
