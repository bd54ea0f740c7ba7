/**
 * The replication core end to end on the real local stack: enable a VM over HTTP, send sealed
 * batches through the Service Bus emulator, let the host's apply-batches function write them
 * into block blobs, and compare every disk byte for byte with an in-memory model. Bad batches
 * are dead-lettered with a specific reason and leave every disk untouched.
 */
import { BlobServiceClient } from '@azure/storage-blob';
import { ServiceBusClient, type ServiceBusReceivedMessage } from '@azure/service-bus';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobDiskStore } from '../../../shared/azure/blob-disk-store';
import { batchSessionId } from '../../../shared/domain/envelope';
import type { Batch, BatchRecord } from '../../../shared/domain/wire-format';
import { sealBatch } from '../../../shared/codec/batch';
import { envelopeFor } from '../../../shared/codec/envelope';
import { randomBytes } from 'node:crypto';
import { applyToModel, createBatchSender, randomRecords, rng, type BatchSender } from '../../support/batches';
import { startTestStack, type TestStack } from '../../support/stack';
import { waitFor } from '../../support/wait';
import { apiClient } from '../../support/api';

const MiB = 1024 * 1024;
const VM = 'app-01';
const SIZES: Record<string, number> = { disk0: 16 * MiB, disk1: 8 * MiB + 3 * 512 };

describe('apply-batches on the local stack', () => {
  let stack: TestStack;
  let sender: BatchSender;
  let sb: ServiceBusClient;
  let disks: BlobDiskStore;
  let dataKey: Buffer;
  const models: Record<string, Buffer> = { disk0: Buffer.alloc(SIZES.disk0!), disk1: Buffer.alloc(SIZES.disk1!) };
  const next: Record<string, number> = { disk0: 1, disk1: 1 };
  const random = rng(2026);

  const api = (method: string, path: string, body?: unknown) => apiClient(stack)(method, path, body);
  const vm = async () => (await api('GET', `/vms/${VM}`)).body;
  const applied = async (diskId: string) => (await vm()).disks.find((d: { diskId: string }) => d.diskId === diskId).appliedSequence as number;

  function batch(diskId: string, records: BatchRecord[], extra: Partial<Batch> = {}): Batch {
    return { vmId: VM, diskId, epoch: 1, sequence: next[diskId]!, capturedAt: Date.now(), diskSizeBytes: SIZES[diskId]!, records, ...extra };
  }

  /** Sends a good batch and waits until the cloud reports it applied. */
  async function sendGood(diskId: string, records: BatchRecord[], extra: Partial<Batch> = {}, inlineMaxBytes?: number): Promise<void> {
    const b = batch(diskId, records, extra);
    await sender.send(b, dataKey, inlineMaxBytes !== undefined ? { inlineMaxBytes } : {});
    applyToModel(models[diskId]!, records);
    next[diskId]!++;
    await waitFor(async () => (await applied(diskId)) >= b.sequence, `${diskId} seq ${b.sequence} applied`, { timeoutMs: 30_000 });
  }

  async function expectDisksMatchModel(): Promise<void> {
    for (const diskId of Object.keys(SIZES)) {
      const got = await disks.read({ vmId: VM, diskId }, SIZES[diskId]!, 0, SIZES[diskId]!);
      expect(got.equals(models[diskId]!), `${diskId} differs from the model`).toBe(true);
    }
  }

  async function deadLetters(): Promise<ServiceBusReceivedMessage[]> {
    const receiver = sb.createReceiver('replication-batches', { subQueueType: 'deadLetter' });
    try {
      return await receiver.peekMessages(200);
    } finally {
      await receiver.close();
    }
  }

  async function expectDeadLettered(reason: string, match: RegExp): Promise<void> {
    const found = await waitFor(async () => (await deadLetters()).find((m) => m.deadLetterReason === reason && match.test(m.deadLetterErrorDescription ?? '')), `a dead letter ${reason} ${match}`, { timeoutMs: 30_000 });
    expect(found.deadLetterErrorDescription).toMatch(match);
  }

  beforeAll(async () => {
    stack = await startTestStack();
    sender = createBatchSender(stack.serviceBusConnectionString, stack.storageConnectionString);
    sb = new ServiceBusClient(stack.serviceBusConnectionString);
    disks = new BlobDiskStore(BlobServiceClient.fromConnectionString(stack.storageConnectionString).getContainerClient('disks'));
    const res = await api('POST', `/vms/${VM}/enable-replication`, { disks: Object.entries(SIZES).map(([diskId, sizeBytes]) => ({ diskId, sizeBytes })) });
    expect(res.status).toBe(201);
    dataKey = Buffer.from(res.body.dataKey, 'base64');
  }, 180_000);

  afterAll(async () => {
    await sender?.close();
    await sb?.close();
    if (stack && process.env.FERRY_TEST_VERBOSE) console.log(stack.logs.slice(-80).join('\n'));
    await stack?.stop();
  });

  it('applies initial replication and deltas byte-exact, inline and staged, then moves the VM to protected', async () => {
    for (const diskId of Object.keys(SIZES)) {
      const size = SIZES[diskId]!;
      // the initial copy in two halves, the second large enough to go through blob staging
      await sendGood(diskId, [{ kind: 'data', offset: 0, data: randomBytes(size / 2 - ((size / 2) % 512)) }], { initialCoveredBytes: size / 2 - ((size / 2) % 512) });
      const half = size / 2 - ((size / 2) % 512);
      await sendGood(diskId, [{ kind: 'zero', offset: half, length: 512 }, { kind: 'data', offset: half + 512, data: randomBytes(size - half - 512) }], { initialReplicationComplete: true }, 64 * 1024);
    }
    const v = await waitFor(async () => {
      const cur = await vm();
      return cur.state === 'protected' ? cur : undefined;
    }, 'VM protected');
    expect(v.disks.map((d: { initialReplicationPercent: number }) => d.initialReplicationPercent)).toEqual([100, 100]);
    for (let round = 0; round < 4; round++) {
      for (const diskId of Object.keys(SIZES)) await sendGood(diskId, randomRecords(random, SIZES[diskId]!, 8, round % 2 ? 4096 : 3 * MiB));
    }
    await expectDisksMatchModel();
    const after = await vm();
    expect(after.rpoSeconds).not.toBeNull();
    expect(after.disks[0].lastAppliedAt).toMatch(/^\d{4}-/);
  });

  it('completes a redelivered or duplicate batch without changing anything', async () => {
    const dupSeq = next.disk0! - 1;
    await sender.send(batch('disk0', [{ kind: 'data', offset: 0, data: Buffer.alloc(4096, 0xee) }], { sequence: dupSeq }), dataKey);
    await sendGood('disk0', [{ kind: 'data', offset: 8192, data: Buffer.alloc(512, 1) }]);
    await expectDisksMatchModel();
  });

  it.each([
    ['tampered ciphertext', 'AuthenticationFailed', /AUTH_FAILED/, (b: Batch) => sender.send(b, dataKey, { tamper: (s) => { s[s.length - 40] = (s[s.length - 40] ?? 0) ^ 0xff; return s; } })],
    ['a batch sealed with another key', 'AuthenticationFailed', /AUTH_FAILED/, (b: Batch) => sender.send(b, randomBytes(32))],
    ['an unknown key id', 'UnknownKey', /no data key 7/, (b: Batch) => sender.send(b, dataKey, { keyId: 7 })],
    ['a truncated payload', 'InvalidBatch', /TRUNCATED/, async (b: Batch) => {
      const out = envelopeFor(sealBatch(b, dataKey, 1, randomBytes));
      const env = out.envelope as { payload: { inline: string } };
      await sender.sendRaw({ ...out.envelope, payload: { inline: env.payload.inline.slice(0, 200) } }, out.sessionId);
    }],
    ['a batch replayed onto another disk', 'BatchMismatch', /UNEXPECTED_BATCH/, async (b: Batch) => {
      const out = envelopeFor(sealBatch({ ...b, diskId: 'disk1', diskSizeBytes: SIZES.disk1!, sequence: next.disk1! }, dataKey, 1, randomBytes));
      await sender.sendRaw({ ...out.envelope, diskId: 'disk0', seq: b.sequence }, batchSessionId(VM, 'disk0'));
    }],
  ])('dead-letters %s and leaves the disks untouched', async (_what, reason, match, sendBad) => {
    const deadBefore = (await vm()).healthReasons.length;
    await sendBad(batch('disk0', [{ kind: 'data', offset: 0, data: Buffer.alloc(4096, 0xab) }]));
    await expectDeadLettered(reason, match);
    await sendGood('disk0', [{ kind: 'data', offset: 16384, data: randomBytes(1024) }]);
    await expectDisksMatchModel();
    const v = await vm();
    expect(v.health).not.toBe('healthy');
    expect(v.healthReasons.some((r: { code: string }) => r.code === 'DEAD_LETTERED')).toBe(true);
    expect(v.healthReasons.length).toBeGreaterThanOrEqual(Math.min(deadBefore, 1));
  });

  it('dead-letters a batch for an unknown VM', async () => {
    const out = envelopeFor(sealBatch({ ...batch('disk0', [{ kind: 'zero', offset: 0, length: 512 }]), vmId: 'ghost-01' }, dataKey, 1, randomBytes));
    await sender.sendRaw(out.envelope, out.sessionId);
    await expectDeadLettered('UnknownVm', /ghost-01/);
    await expectDisksMatchModel();
  });

  it('never applies past a gap: dead-letters it naming the missing sequence and requires a resync', async () => {
    const missing = next.disk1!;
    await sender.send(batch('disk1', [{ kind: 'data', offset: 0, data: Buffer.alloc(512, 0x55) }], { sequence: missing + 1 }), dataKey);
    await expectDeadLettered('SequenceGap', new RegExp(`sequence ${missing} never did`));
    const v = await waitFor(async () => {
      const cur = await vm();
      return cur.state === 'resync-required' ? cur : undefined;
    }, 'VM resync-required');
    expect(v.health).toBe('critical');
    await expectDisksMatchModel();
  });
});
