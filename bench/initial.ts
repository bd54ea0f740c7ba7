/**
 * bench/initial: `replicate --once` of a 1 GiB image through the whole local stack (read,
 * zero skip, fingerprints, zstd-1 + AES-GCM in worker threads, spool, staged upload to Azurite,
 * Service Bus, and the cloud applying it), until the cloud reports every batch applied; against
 * a plain `uploadFile` of the same file to the same Azurite in the same run.
 *
 * Images: disk-like (40% zero extents, 30% text, 30% random; target >= 1.0x the plain upload)
 * and random (target >= 0.5x).
 */
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlobServiceClient } from '@azure/storage-blob';
import { MobilityAgent } from '../local/appliance/agent';
import { waitApplied } from '../local/appliance/cloud-api';
import { azureTransport, cloudApi, enable } from '../local/appliance/commands';
import { ProcessServer } from '../local/appliance/process-server';
import { startEphemeralStack, type EphemeralStack } from '../local/stack/ephemeral';
import { createLogger } from '../local/log';
import { CORES, cpuBetween, describeCpu, measured, sampleCpu, totalCpu, type CpuSeconds } from './cpu';
import type { BenchResult } from './types';

const MiB = 1024 * 1024;
const SIZE = Number(process.env.FERRY_BENCH_INITIAL_MIB ?? 1024) * MiB;
/** FERRY_BENCH_INITIAL_KINDS=random (or disk-like): one image only. */
const KINDS = (process.env.FERRY_BENCH_INITIAL_KINDS ?? 'disk-like,random').split(',').filter((k): k is 'disk-like' | 'random' => k === 'disk-like' || k === 'random');

/** Writes a 1 GiB image extent by extent: 'disk-like' (seeded mix) or 'random'. */
function makeImage(path: string, kind: 'disk-like' | 'random'): void {
  const fd = openSync(path, 'w');
  const text = Buffer.from(Array.from({ length: 4 * MiB / 64 }, (_, i) => `line ${i}: the replication appliance reads the disk ...\n`.slice(0, 64)).join(''));
  let seed = 12345;
  const next = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  try {
    for (let off = 0; off < SIZE; off += 4 * MiB) {
      const r = kind === 'random' ? 1 : next();
      if (r < 0.4) continue; // a hole reads as zeros
      const buf = r < 0.7 ? Buffer.from(text) : randomBytes(4 * MiB);
      if (r < 0.7) buf.writeUInt32LE(off, 0);
      writeSync(fd, buf, 0, buf.length, off);
    }
    writeSync(fd, Buffer.alloc(1), 0, 1, SIZE - 1);
  } finally {
    closeSync(fd);
  }
}

async function plainUpload(stack: EphemeralStack, path: string, name: string): Promise<{ secs: number; cpu: CpuSeconds }> {
  const container = BlobServiceClient.fromConnectionString(stack.storageConnectionString).getContainerClient('bench-plain');
  await container.createIfNotExists();
  const { wall: secs, cpu } = await measured(stack, 'client', () => container.getBlockBlobClient(name).uploadFile(path, { blockSize: 8 * MiB, concurrency: 4 }));
  await container.getBlockBlobClient(name).delete();
  return { secs, cpu };
}

/**
 * What `replicate --once` does (commands.replicate), spelled out so that the phases can be
 * timed: the pass (everything read, sealed and handed over), sent (every message on the
 * queue), applied (the cloud reports every disk at the last sequence).
 */
async function ferryOnce(stack: EphemeralStack, dir: string, path: string, vm: string): Promise<{ pass: number; sent: number; applied: number; cpu: CpuSeconds }> {
  const stateDir = join(dir, `state-${vm}`);
  const common = { api: stack.apiUrl, stateDir, functionKey: stack.functionKey };
  await enable({ ...common, vm, disks: [path] });
  const server = new ProcessServer({
    stateDir,
    transport: azureTransport({ storageConnection: stack.storageConnectionString, serviceBusConnection: stack.serviceBusConnectionString }),
    log: createLogger('bench', { stream: process.stderr, level: 'warn' }),
  });
  const agent = new MobilityAgent(stateDir, vm, server);
  try {
    const before = sampleCpu(stack, 'appliance');
    const start = performance.now();
    const r = await agent.pass({ rescan: true, tag: 'crash-consistent' });
    const pass = (performance.now() - start) / 1000;
    await server.idle(vm);
    const sent = (performance.now() - start) / 1000;
    await waitApplied(cloudApi(common), vm, Object.fromEntries(r.disks.map((d) => [d.diskId, d.lastSequence])), { initialComplete: true, timeoutMs: 900_000 });
    const applied = (performance.now() - start) / 1000;
    return { pass, sent, applied, cpu: cpuBetween(before, sampleCpu(stack, 'appliance')) };
  } finally {
    agent.close();
    await server.close();
  }
}

export async function run(): Promise<BenchResult[]> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-bench-initial-'));
  const stack = await startEphemeralStack();
  const results: BenchResult[] = [];
  try {
    for (const kind of KINDS) {
      const path = join(dir, `${kind}.img`);
      makeImage(path, kind);
      const { secs: plain, cpu: plainCpu } = await plainUpload(stack, path, kind);
      const phases = await ferryOnce(stack, dir, path, `bench-${kind}`);
      const ferry = phases.applied;
      const mbps = SIZE / MiB / ferry;
      const plainMbps = SIZE / MiB / plain;
      results.push({
        name: `replicate --once, ${SIZE / MiB} MiB ${kind}, until applied (${ferry.toFixed(1)} s vs ${plain.toFixed(1)} s)`,
        value: mbps,
        unit: 'MiB/s',
        baseline: { name: 'plain uploadFile', value: plainMbps },
        ratio: mbps / plainMbps,
        target: kind === 'random' ? '>= 0.5x' : '>= 1.0x',
      });
      // the appliance's own part: read, fingerprint, seal, upload, every message on the queue
      const sentMbps = SIZE / MiB / phases.sent;
      results.push({
        name: `  appliance part, until sent (read+sealed ${phases.pass.toFixed(1)} s, sent ${phases.sent.toFixed(1)} s)`,
        value: sentMbps,
        unit: 'MiB/s',
        baseline: { name: 'plain uploadFile', value: plainMbps },
        ratio: sentMbps / plainMbps,
      });
      // Where the time went, and the bound it sets here: T core-seconds of work cannot take
      // less than T / cores seconds on this machine, however well the stages overlap.
      const used = totalCpu(phases.cpu);
      const plainUsed = totalCpu(plainCpu);
      results.push({
        name: `  CPU until applied, core-s (${describeCpu(phases.cpu)})`,
        value: used,
        unit: 'core-s',
        baseline: { name: `plain uploadFile (${describeCpu(plainCpu)})`, value: plainUsed },
        ratio: used / plainUsed,
      });
      results.push({
        name: `  the best ratio that CPU allows on ${CORES} cores (${used.toFixed(1)} / ${CORES} = ${(used / CORES).toFixed(1)} s at the least)`,
        value: plain / (used / CORES),
        unit: 'x',
        target: kind === 'random' ? '>= 0.5x' : '>= 1.0x',
      });
      rmSync(path, { force: true });
    }
  } finally {
    await stack.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  return results;
}
