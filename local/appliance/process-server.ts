/**
 * The process server: seals batches in a pool of worker threads (one per core), spools them to
 * the outbox (the offline cache) and uploads them with `--threads` parallel uploads per VM
 * under an optional bandwidth cap. `ferry replicate` uses it in-process as the agent's sink;
 * `ferry process-server` puts the same object behind HTTPS (https-server.ts).
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { sealBatch } from '../../shared/codec/batch';
import type { Logger } from '../log';
import type { PlainBatch } from './batching';
import { ApplianceError } from './errors';
import { Outbox, type CloudTransport, type OutboxStats } from './outbox';
import { SealPool, type Sealed } from './seal-pool';
import type { BatchSink } from './sink';
import { currentKey, keyFileStamp, listVmStates, loadVmState } from './state';
import { ScheduleError, parseSchedule } from './bandwidth-schedule';
import { ScheduledThrottle, TokenBucket, mbpsToBytesPerSecond, type Throttle } from './token-bucket';

export interface ProcessServerOptions {
  stateDir: string;
  /** Default `<stateDir>/cache`. */
  cacheDir?: string;
  /** Parallel uploads per VM, 1..32; default 4. */
  threads?: number;
  limitMbps?: number;
  /** `--limit-schedule`: caps by day and hour (bandwidth-schedule.ts); outside its rules, limitMbps. */
  limitSchedule?: string;
  /** Default 10 GiB. */
  cacheMaxBytes?: number;
  /** Seal worker threads; default one per core; 0 seals on the main thread. */
  sealWorkers?: number;
  transport: CloudTransport;
  log?: Logger;
}

export const MAX_THREADS = 32;

/** The upload throttle: a schedule of caps, a fixed cap, or none. */
export function throttleFor(options: Pick<ProcessServerOptions, 'limitMbps' | 'limitSchedule' | 'log'>): Throttle | undefined {
  if (options.limitSchedule !== undefined) {
    let rules;
    try {
      rules = parseSchedule(options.limitSchedule);
    } catch (err) {
      if (err instanceof ScheduleError) throw new ApplianceError('BAD_ARGUMENT', `--limit-schedule: ${err.message}`);
      throw err;
    }
    return new ScheduledThrottle(rules, options.limitMbps, {
      onChange: (mbps, rule) => options.log?.info({ limitMbps: mbps, rule: rule ?? '--limit-mbps' }, mbps === null ? 'upload bandwidth: no cap' : `upload bandwidth cap: ${mbps} Mbps`),
    });
  }
  return options.limitMbps ? new TokenBucket(mbpsToBytesPerSecond(options.limitMbps)) : undefined;
}

export function checkThreads(threads: number): number {
  if (!Number.isInteger(threads) || threads < 1 || threads > MAX_THREADS) {
    throw new ApplianceError('BAD_ARGUMENT', `--threads must be an integer from 1 to ${MAX_THREADS}; got ${threads}.`);
  }
  return threads;
}

export class ProcessServer implements BatchSink {
  private readonly outboxes = new Map<string, Outbox>();
  private readonly keys = new Map<string, { key: Buffer; keyId: number; token: string; stamp: string }>();
  private readonly pool: SealPool;
  private readonly bucket: Throttle | undefined;
  readonly cacheDir: string;

  constructor(private readonly options: ProcessServerOptions) {
    this.pool = new SealPool(options.sealWorkers);
    this.cacheDir = options.cacheDir ?? join(options.stateDir, 'cache');
    this.bucket = throttleFor(options);
    checkThreads(options.threads ?? 4);
  }

  /**
   * The VM's current data key and agent token from the appliance state, cached; the key is read
   * again whenever `ferry rotate-key` replaces `<vm>/key.json` (one stat per call), so a running
   * process server seals every batch after a rotation with the new key id, without a restart.
   */
  vm(vmId: string): { key: Buffer; keyId: number; token: string } {
    let k = this.keys.get(vmId);
    const stamp = keyFileStamp(this.options.stateDir, vmId);
    if (!k || k.stamp !== stamp) {
      const state = loadVmState(this.options.stateDir, vmId);
      const { key, keyId } = currentKey(this.options.stateDir, state);
      if (k && k.keyId !== keyId) this.options.log?.info({ vm: vmId, keyId }, `VM ${vmId}: sealing with data key ${keyId} from now on`);
      k = { key, keyId, token: state.agentToken, stamp };
      this.keys.set(vmId, k);
    }
    return k;
  }

  /** The VMs enabled in the state directory. */
  knownVms(): string[] {
    return listVmStates(this.options.stateDir);
  }

  outbox(vmId: string): Outbox {
    let o = this.outboxes.get(vmId);
    if (!o) {
      o = new Outbox(join(this.cacheDir, vmId), this.options.transport, {
        threads: this.options.threads ?? 4,
        makeMarker: (diskId, epoch, seq) => this.marker(vmId, diskId, epoch, seq),
        maxBytes: this.options.cacheMaxBytes ?? 10 * 1024 ** 3,
        ...(this.bucket ? { bucket: this.bucket } : {}),
        ...(this.options.log ? { log: this.options.log } : {}),
      });
      this.outboxes.set(vmId, o);
    }
    return o;
  }

  /**
   * An empty batch for a sequence that may have been sent before a crash (see outbox.ts): the
   * disk's flags as the appliance state last recorded them.
   */
  private marker(vmId: string, diskId: string, epoch: number, sequence: number): Buffer {
    const state = loadVmState(this.options.stateDir, vmId);
    const disk = state.disks.find((d) => d.diskId === diskId);
    if (!disk) throw new ApplianceError('BAD_STATE', `The cache of VM '${vmId}' holds disk '${diskId}', which its state does not list.`);
    const { key, keyId } = this.vm(vmId);
    return sealBatch(
      {
        vmId, diskId, epoch, sequence, capturedAt: Date.now(), diskSizeBytes: disk.sizeBytes, records: [],
        initialReplicationComplete: disk.initialComplete,
        initialCoveredBytes: disk.initialComplete ? disk.sizeBytes : disk.initialCoveredBytes,
      },
      key,
      keyId,
      randomBytes,
    );
  }

  /**
   * One past the newest batch accepted with no gap. With `run` (an agent's run id over HTTPS,
   * remote-sink.ts) the agent starts a run from its checkpoint: the disk now belongs to that run,
   * batches an earlier run left beyond a gap are dropped (outbox.ts, dropBeyondGap), and that
   * run's uploads still arriving are refused (`submit`). Without `run`, only a look.
   */
  async nextSequence(vmId: string, diskId: string, epoch: number, run?: string): Promise<number> {
    const outbox = this.outbox(vmId);
    if (run !== undefined) {
      this.runs.set(`${vmId}/${diskId}`, run);
      const dropped = outbox.dropBeyondGap(diskId, epoch);
      if (dropped > 0) this.options.log?.info({ vm: vmId, disk: diskId, dropped }, `VM ${vmId} ${diskId}: a new agent run; ${dropped} batch(es) an earlier run left beyond a gap dropped (re-sent from its checkpoint)`);
    }
    return outbox.acceptedThrough(diskId, epoch) + 1;
  }

  /** The agent run that owns a disk (the last to ask for its next sequence with a run id). */
  private readonly runs = new Map<string, string>();

  async submit(plain: PlainBatch, release: () => void, run?: string): Promise<void> {
    const { vmId, diskId, epoch, sequence } = plain.meta;
    const { key, keyId } = this.vm(vmId);
    const outbox = this.outbox(vmId);
    await outbox.waitForRoom();
    let out: Sealed;
    try {
      out = await this.pool.seal(plain, key, keyId, outbox.knownMaxMessageBytes);
    } finally {
      release();
    }
    // checked after sealing: a new run may have taken the disk meanwhile
    const owner = this.runs.get(`${vmId}/${diskId}`);
    if (run !== undefined && owner !== undefined && owner !== run) {
      throw new ApplianceError('STALE_RUN', `Batch ${sequence} of VM '${vmId}' ${diskId} comes from an agent run that another run of the agent has replaced; it is not queued.`);
    }
    outbox.put(diskId, epoch, sequence, out.sealed, out.message);
  }

  async sync(vmId: string): Promise<void> {
    await this.outbox(vmId).sync();
  }

  async stats(vmId: string): Promise<OutboxStats> {
    return { ...this.outbox(vmId).stats };
  }

  /** Resolves when every batch of the VM has been sent. */
  async idle(vmId: string): Promise<void> {
    await this.outbox(vmId).idle();
  }

  /** Loads every VM's cache found on disk, so a restarted process server resumes draining it. */
  resumeCached(vmIds: string[]): void {
    for (const vmId of vmIds) this.outbox(vmId);
  }

  async close(): Promise<void> {
    for (const o of this.outboxes.values()) o.close();
    await this.pool.close();
    await this.options.transport.close();
  }
}
