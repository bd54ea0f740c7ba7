/**
 * bench/apply: how fast the cloud side applies batches, through the real host, emulator and
 * Azurite, against a plain `uploadData` of the same bytes to the same Azurite in the same run.
 *
 * - full extents: batches of 4 whole 4 MiB extents of random data (staged payloads);
 *   figure: MB/s applied, ratio vs plain upload (target >= 0.5x).
 * - random 4 KiB writes: batches of 256 scattered 4 KiB writes; figures: MB/s of changed bytes
 *   applied, and bytes written to storage per changed byte (read-modify-write amplification).
 * Payloads are sealed and staged before the clock starts: this measures the apply path only.
 */
import { randomBytes } from 'node:crypto';
import { ServiceBusClient, type ServiceBusMessage } from '@azure/service-bus';
import { BlobServiceClient } from '@azure/storage-blob';
import { sealBatch } from '../shared/codec/batch';
import { envelopeFor } from '../shared/codec/envelope';
import type { BatchRecord } from '../shared/domain/wire-format';
import { startEphemeralStack, type EphemeralStack } from '../local/stack/ephemeral';
import { formatResults, type BenchResult } from './types';

const MiB = 1024 * 1024;
const DISK = 256 * MiB;

async function api(stack: EphemeralStack, path: string, init: RequestInit = {}): Promise<unknown> {
  const res = await fetch(`${stack.apiUrl}${path}`, { ...init, headers: { 'x-functions-key': stack.functionKey, 'content-type': 'application/json' } });
  if (!res.ok) throw new Error(`${init.method ?? 'GET'} ${path}: ${res.status} ${await res.text()}`);
  return res.json();
}

async function waitApplied(stack: EphemeralStack, vmId: string, seq: number, timeoutMs = 600_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const vm = (await api(stack, `/vms/${vmId}`)) as { disks: { appliedSequence: number }[] };
    if (vm.disks[0]!.appliedSequence >= seq) return;
    if (Date.now() > deadline) throw new Error(`${vmId}: sequence ${seq} not applied within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Seals, stages and returns the messages of a series of batches for one disk. */
async function prepare(stack: EphemeralStack, vmId: string, key: Buffer, batches: BatchRecord[][], firstSeq = 1): Promise<ServiceBusMessage[]> {
  const staging = BlobServiceClient.fromConnectionString(stack.storageConnectionString).getContainerClient('staging');
  await staging.createIfNotExists();
  const out: ServiceBusMessage[] = [];
  let seq = firstSeq - 1;
  for (const records of batches) {
    seq++;
    const sealed = sealBatch({ vmId, diskId: 'disk0', epoch: 1, sequence: seq, capturedAt: Date.now(), diskSizeBytes: DISK, records }, key, 1, randomBytes);
    const e = envelopeFor(sealed);
    if (e.staged) await staging.getBlockBlobClient(e.staged.name).uploadData(e.staged.body);
    out.push({ body: e.envelope, contentType: 'application/json', sessionId: e.sessionId, messageId: e.messageId });
  }
  return out;
}

/** Sends the messages, then waits until the last is applied; returns the seconds it took. */
async function timeApply(stack: EphemeralStack, vmId: string, messages: ServiceBusMessage[]): Promise<number> {
  const client = new ServiceBusClient(stack.serviceBusConnectionString);
  const sender = client.createSender('replication-batches');
  const start = process.hrtime.bigint();
  for (const m of messages) await sender.sendMessages(m);
  await waitApplied(stack, vmId, messages.length);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  await sender.close();
  await client.close();
  return seconds;
}

function uploadedBytes(logs: string[], vmId: string): number {
  let total = 0;
  for (const l of logs) {
    const m = new RegExp(`Applied ${vmId}/disk0 epoch \\d+ seq \\d+: \\d+ extents, (\\d+) bytes up`).exec(l);
    if (m) total += Number(m[1]);
  }
  return total;
}

export async function run(): Promise<BenchResult[]> {
  const stack = await startEphemeralStack();
  try {
    const enable = async (vmId: string): Promise<Buffer> => {
      const vm = (await api(stack, `/vms/${vmId}/enable-replication`, { method: 'POST', body: JSON.stringify({ disks: [{ diskId: 'disk0', sizeBytes: DISK }] }) })) as { dataKey: string };
      return Buffer.from(vm.dataKey, 'base64');
    };

    // Baseline: the same bytes, uploaded plainly to the same Azurite.
    const data = randomBytes(DISK);
    const plain = BlobServiceClient.fromConnectionString(stack.storageConnectionString).getContainerClient('bench-plain');
    await plain.createIfNotExists();
    const t0 = process.hrtime.bigint();
    await plain.getBlockBlobClient('plain').uploadData(data, { blockSize: 4 * MiB, concurrency: 4 });
    const plainSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const plainMBs = DISK / MiB / plainSeconds;

    // Full extents: 16 batches of 16 MiB (4 whole extents each).
    const fullKey = await enable('bench-full');
    const fullBatches: BatchRecord[][] = [];
    for (let off = 0; off < DISK; off += 16 * MiB) fullBatches.push([{ kind: 'data', offset: off, data: data.subarray(off, off + 16 * MiB) }]);
    const fullSeconds = await timeApply(stack, 'bench-full', await prepare(stack, 'bench-full', fullKey, fullBatches));
    const fullMBs = DISK / MiB / fullSeconds;

    // Random 4 KiB writes over a disk that already holds data (so partial extents must be read).
    const randKey = await enable('bench-rand');
    const seed: BatchRecord[][] = [];
    for (let off = 0; off < DISK; off += 16 * MiB) seed.push([{ kind: 'data', offset: off, data: data.subarray(off, off + 16 * MiB) }]);
    await timeApply(stack, 'bench-rand', await prepare(stack, 'bench-rand', randKey, seed));
    const before = uploadedBytes(stack.logs, 'bench-rand');
    const randBatches: BatchRecord[][] = [];
    const writesPerBatch = 256;
    const batches = 16;
    for (let b = 0; b < batches; b++) {
      const offsets = new Set<number>();
      while (offsets.size < writesPerBatch) offsets.add(Math.floor(Math.random() * (DISK / 4096)) * 4096);
      randBatches.push([...offsets].sort((x, y) => x - y).map((o) => ({ kind: 'data' as const, offset: o, data: randomBytes(4096) })));
    }
    const randMsgs = await prepare(stack, 'bench-rand', randKey, randBatches, seed.length + 1);
    const client = new ServiceBusClient(stack.serviceBusConnectionString);
    const sender = client.createSender('replication-batches');
    const t1 = process.hrtime.bigint();
    for (const m of randMsgs) await sender.sendMessages(m);
    await waitApplied(stack, 'bench-rand', seed.length + batches);
    const randSeconds = Number(process.hrtime.bigint() - t1) / 1e9;
    await sender.close();
    await client.close();
    const changed = batches * writesPerBatch * 4096;
    const written = uploadedBytes(stack.logs, 'bench-rand') - before;

    return [
      { name: 'plain uploadData to Azurite (baseline)', value: plainMBs, unit: 'MB/s' },
      { name: 'apply full 4 MiB extents (16 MiB batches)', value: fullMBs, unit: 'MB/s', baseline: { name: 'plain upload', value: plainMBs }, ratio: fullMBs / plainMBs, target: '>= 0.5x' },
      { name: 'apply random 4 KiB writes (256 per batch)', value: changed / MiB / randSeconds, unit: 'MB/s changed', baseline: { name: 'plain upload', value: plainMBs }, ratio: changed / MiB / randSeconds / plainMBs },
      { name: 'random 4 KiB writes: batches applied', value: batches / randSeconds, unit: 'batches/s' },
      { name: 'random 4 KiB writes: bytes written per changed byte', value: written / changed, unit: 'x' },
    ];
  } finally {
    await stack.stop();
  }
}

if (require.main === module) {
  run().then(
    (r) => console.log(formatResults('apply', r)),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}
