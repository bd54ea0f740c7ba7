/**
 * Helpers for the appliance's end-to-end tests: ext4 images made by mke2fs -d, reading a
 * cloud disk, and a stand-in consumer of `replication-batches`.
 *
 * The stand-in runs the cloud's own apply code (shared/services/apply.ts, the same function
 * apply-batches calls) against the test stack's storage, taking sessions from the queue as
 * the host would. The tests use the host's real apply-batches; the stand-in starts only with
 * FERRY_TEST_STANDIN_APPLY=1 (to tell an appliance bug from a host one). Sessions are
 * exclusive, so it also works beside the host.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ServiceBusClient, type ServiceBusSessionReceiver } from '@azure/service-bus';
import { BlobServiceClient } from '@azure/storage-blob';
import { BlobDiskStore } from '../../../shared/azure/blob-disk-store';
import { BlobStagingStore } from '../../../shared/azure/blob-staging-store';
import { TableStateStore } from '../../../shared/azure/table-state-store';
import { applyBatchMessage, type ApplyDeps } from '../../../shared/services/apply';
import { rng } from '../../support/batches';
import type { TestStack } from '../../support/stack';

const MiB = 1024 * 1024;

/** A directory of text and random files, then an ext4 image of `sizeMiB` made from it. */
export function makeExt4Image(dir: string, image: string, sizeMiB: number, seed = 7): void {
  const src = join(dir, 'src');
  mkdirSync(join(src, 'docs'), { recursive: true });
  mkdirSync(join(src, 'bin'), { recursive: true });
  const next = rng(seed);
  for (let i = 0; i < 40; i++) {
    const lines: string[] = [];
    for (let j = 0; j < 400 + Math.floor(next() * 800); j++) lines.push(`line ${j} of file ${i}: the quick brown fox ${Math.floor(next() * 1e9)}`);
    writeFileSync(join(src, 'docs', `file-${i}.txt`), lines.join('\n'));
  }
  for (let i = 0; i < 6; i++) writeFileSync(join(src, 'bin', `blob-${i}.bin`), randomBytes(MiB + Math.floor(next() * MiB)));
  execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '4096', '-E', 'lazy_itable_init=0,lazy_journal_init=0', '-d', src, image, `${sizeMiB}M`], { stdio: 'pipe' });
}

/** Runs debugfs -w commands against an image (unmounted). */
export function debugfs(image: string, commands: string[]): void {
  execFileSync('debugfs', ['-w', '-f', '-', image], { input: commands.join('\n') + '\n', stdio: ['pipe', 'pipe', 'pipe'] });
}

export function cloudDisks(stack: TestStack): BlobDiskStore {
  return new BlobDiskStore(BlobServiceClient.fromConnectionString(stack.storageConnectionString).getContainerClient('disks'));
}

export async function readCloudDisk(stack: TestStack, vmId: string, diskId: string, size: number): Promise<Buffer> {
  return cloudDisks(stack).read({ vmId, diskId }, size, 0, size);
}

/** Which 64 KiB blocks differ between two images, split into non-zero (data) and zero bytes. */
export function blockDiff(before: Buffer, after: Buffer, block = 64 * 1024): { dataBytes: number; zeroBytes: number; blocks: number } {
  let dataBytes = 0;
  let zeroBytes = 0;
  let blocks = 0;
  const zero = Buffer.alloc(block);
  for (let o = 0; o < after.length; o += block) {
    const a = before.subarray(o, o + block);
    const b = after.subarray(o, o + block);
    if (a.equals(b)) continue;
    blocks++;
    if (b.equals(zero.subarray(0, b.length))) zeroBytes += b.length;
    else dataBytes += b.length;
  }
  return { dataBytes, zeroBytes, blocks };
}

export interface StandInApplier {
  applied: number;
  stop(): Promise<void>;
}

export function startStandInApplier(stack: TestStack, sessions = 3): StandInApplier {
  if (!process.env.FERRY_TEST_STANDIN_APPLY) return { applied: 0, stop: async () => undefined };
  const cs = stack.storageConnectionString;
  const blobs = BlobServiceClient.fromConnectionString(cs);
  const deps: ApplyDeps = {
    staging: new BlobStagingStore(blobs.getContainerClient('staging')),
    state: TableStateStore.fromConnectionString(cs),
    disks: new BlobDiskStore(blobs.getContainerClient('disks')),
    masterKey: Buffer.from(stack.masterKey, 'base64'),
    now: () => Date.now(),
    randomBytes: (n) => randomBytes(n),
  };
  const sb = new ServiceBusClient(stack.serviceBusConnectionString, { retryOptions: { maxRetries: 2, timeoutInMs: 5000, retryDelayInMs: 200 } });
  let stopped = false;
  const out: StandInApplier = { applied: 0, stop: async () => undefined };
  const loop = async () => {
    while (!stopped) {
      let receiver: ServiceBusSessionReceiver | undefined;
      try {
        receiver = await sb.acceptNextSession('replication-batches', { maxAutoLockRenewalDurationInMs: 60_000 });
        let idle = 0;
        while (!stopped && idle < 3) {
          const msgs = await receiver.receiveMessages(20, { maxWaitTimeInMs: 300 });
          if (msgs.length === 0) idle++;
          for (const m of msgs) {
            const outcome = await applyBatchMessage(deps, m.body);
            if (outcome.kind === 'dead-letter') await receiver.deadLetterMessage(m, { deadLetterReason: outcome.reason, deadLetterErrorDescription: outcome.description });
            else {
              await receiver.completeMessage(m);
              out.applied++;
            }
            idle = 0;
          }
        }
      } catch {
        if (!stopped) await new Promise((r) => setTimeout(r, 200));
      } finally {
        await receiver?.close().catch(() => undefined);
      }
    }
  };
  const loops = Array.from({ length: sessions }, () => loop());
  out.stop = async () => {
    stopped = true;
    await Promise.allSettled(loops);
    await sb.close();
  };
  return out;
}
