/**
 * The `ferry` commands as library functions: the CLI (cli.ts) parses options and calls these;
 * tests call them directly. Each returns a result object (printed as JSON with `--json`) or
 * throws an ApplianceError whose message is the one-line reason.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync } from 'node:fs';
import { resolve } from 'node:path';
import { BlobServiceClient } from '@azure/storage-blob';
import { BlobCaptureStore } from '../../shared/azure/blob-capture-store';
import { DISKS_CONTAINER, storageConnectionString } from '../../shared/azure/composition';
import { contentBlockId, EXTENT_BYTES, extentRange } from '../../shared/domain/extents';
import { parseRecoveryPointId, recoveryPointId } from '../../shared/domain/recovery-points';
import { isValidId } from '../../shared/domain/ids';
import type { ConsistencyKind } from '../../shared/domain/wire-format';
import { createLogger, type Logger } from '../log';
import { functionKey, loadAppSettings } from '../settings';
import { MobilityAgent, type PassOptions, type PassResult, type ProgressEvent } from './agent';
import { AzureTransport } from './azure-transport';
import { CloudApi, DEFAULT_API, waitApplied, type OperationType, type OperationView, type VmView } from './cloud-api';
import { openSourceDisk, readFully } from './disk-io';
import { ApplianceError, errorMessage, isApplianceError } from './errors';
import type { CloudTransport } from './outbox';
import { ProcessServer } from './process-server';
import type { BatchSink } from './sink';
import { hasVmState, keyFilePath, listVmStates, loadVmState, saveRotatedKey, saveVmState, type VmState } from './state';

export interface CommonOptions {
  api?: string;
  stateDir: string;
  /** Default: FERRY_FUNCTION_KEY or local/.data/function-key. */
  functionKey?: string;
}

export function cloudApi(options: CommonOptions): CloudApi {
  return new CloudApi(options.api ?? DEFAULT_API, options.functionKey ?? functionKey());
}

// ---- enable ------------------------------------------------------------------------------

export interface EnableResult {
  vmId: string;
  keyId: number;
  state: string;
  disks: { diskId: string; path: string; sizeBytes: number }[];
}

export async function enable(options: CommonOptions & { vm: string; disks: string[] }): Promise<EnableResult> {
  if (!isValidId(options.vm)) throw new ApplianceError('BAD_ARGUMENT', `--vm '${options.vm}' must be 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit.`);
  if (options.disks.length === 0) throw new ApplianceError('BAD_ARGUMENT', 'Give at least one --disk PATH.');
  if (hasVmState(options.stateDir, options.vm)) {
    throw new ApplianceError('ALREADY_ENABLED', `VM '${options.vm}' is already enabled on this appliance (state in ${options.stateDir}/${options.vm}).`);
  }
  const disks = options.disks.map((p, i) => {
    const src = openSourceDisk(p);
    closeSync(src.fd);
    return { diskId: `disk${i}`, path: resolve(p), sizeBytes: src.sizeBytes };
  });
  const vm = await cloudApi(options).enable(options.vm, disks.map(({ diskId, sizeBytes }) => ({ diskId, sizeBytes })));
  const state: VmState = {
    version: 1,
    vmId: options.vm,
    apiUrl: options.api ?? DEFAULT_API,
    keyId: vm.keyId,
    dataKey: vm.dataKey,
    agentToken: randomBytes(32).toString('base64url'),
    enabledAt: new Date().toISOString(),
    nextTagId: 1,
    disks: disks.map((d) => ({
      ...d,
      epoch: vm.disks.find((c) => c.diskId === d.diskId)?.epoch ?? 1,
      initialCoveredBytes: 0,
      initialComplete: false,
      journal: {},
    })),
  };
  saveVmState(options.stateDir, state);
  return { vmId: vm.vmId, keyId: vm.keyId, state: vm.state, disks };
}

// ---- rotate-key --------------------------------------------------------------------------

export interface RotateKeyCommandResult {
  vmId: string;
  keyId: number;
  /** The replaced keys the cloud still accepts, each until its cut-off (ISO-8601). */
  previousKeys: { keyId: number; retiresAt: string }[];
  /** Where the new key was stored (mode 0600); never the key itself. */
  keyFile: string;
}

/**
 * `ferry rotate-key`: asks the cloud for a new data key and stores it in `<vm>/key.json`
 * (mode 0600). A running `replicate` or `process-server` notices the file and seals every later
 * batch with the new key id; batches already sealed (the offline cache) keep the old key, which
 * the cloud accepts until the cut-off (`--grace`, default 24 h).
 */
export async function rotateKey(options: CommonOptions & { vm: string; graceSeconds?: number }): Promise<RotateKeyCommandResult> {
  loadVmState(options.stateDir, options.vm); // NOT_ENABLED before asking the cloud: the key must have a home
  const r = await cloudApi(options).rotateKey(options.vm, options.graceSeconds);
  try {
    saveRotatedKey(options.stateDir, { version: 1, vmId: r.vmId, keyId: r.keyId, dataKey: r.dataKey, rotatedAt: r.createdAt });
  } catch (err) {
    const until = r.previousKeys.map((k) => `key ${k.keyId} until ${k.retiresAt}`).join(', ');
    throw new ApplianceError(
      'BAD_STATE',
      `The cloud rotated VM '${options.vm}' to key ${r.keyId}, but it could not be stored in ${keyFilePath(options.stateDir, options.vm)} (${errorMessage(err)}); the appliance keeps sealing with its old key (accepted: ${until || 'none'}). Fix the state directory and run \`ferry rotate-key --vm ${options.vm}\` again.`,
      { cause: err },
    );
  }
  return { vmId: r.vmId, keyId: r.keyId, previousKeys: r.previousKeys, keyFile: keyFilePath(options.stateDir, options.vm) };
}

// ---- replicate / agent -------------------------------------------------------------------

/** Runs the pre-tag hook (if any) through the shell; true when it exits 0 within 60 s. */
export async function runPreTagHook(command: string | undefined, log?: Logger): Promise<boolean> {
  if (!command) return true;
  return new Promise((resolve) => {
    execFile('/bin/sh', ['-c', command], { timeout: 60_000 }, (err, _stdout, stderr) => {
      if (err) log?.warn({ hook: command, err: err.message, stderr: stderr.trim().slice(-500) }, 'pre-tag hook failed; tagging crash-consistent instead');
      resolve(!err);
    });
  });
}

export interface ConnectionOptions {
  storageConnection?: string;
  serviceBusConnection?: string;
}

export function azureTransport(options: ConnectionOptions): CloudTransport {
  const settings = loadAppSettings();
  const sb = options.serviceBusConnection ?? settings.ServiceBusConnection;
  if (!sb) throw new ApplianceError('BAD_ARGUMENT', 'The setting ServiceBusConnection is not set (local.settings.json Values or the environment).');
  const storage = options.storageConnection ?? storageConnectionString({ AzureWebJobsStorage: settings.AzureWebJobsStorage ?? 'UseDevelopmentStorage=true' });
  return new AzureTransport(sb, storage);
}

export interface RunOptions extends CommonOptions {
  vm: string;
  once?: boolean;
  /** Between delta passes; default 5 s. */
  intervalMs?: number;
  /** Crash-consistent tag cadence in continuous mode; default 5 min (as Azure Site Recovery). */
  tagIntervalMs?: number;
  /** Full rescan cadence in continuous mode (changes not made through TrackedDisk); default 10 min. */
  rescanIntervalMs?: number;
  /** App-consistent tag cadence in continuous mode (default: none); needs `preTagHook` to mean anything. */
  appTagIntervalMs?: number;
  /**
   * A shell command run before each app-consistent tag (e.g. a script that runs fsfreeze or
   * flushes a database). Exit 0: the pass is tagged app-consistent; otherwise it is tagged
   * crash-consistent and the failure is logged.
   */
  preTagHook?: string;
  onProgress?: (e: ProgressEvent) => void;
  onPass?: (r: PassResult, stats: { lagMs: number; backlogBatches: number; sentBytes: number }) => void;
  /** Continuous mode: how long a pass waits for the previous one to be applied; default 2 min. */
  maxApplyWaitMs?: number;
  /** Stops the continuous loop. */
  signal?: AbortSignal;
  applyTimeoutMs?: number;
  log?: Logger;
}

export interface ReplicateResult {
  vmId: string;
  passes: number;
  tagId?: number;
  disks: (PassResult['disks'][number] & { appliedSequence?: number })[];
  state?: string;
}

/** Runs the agent against a sink; with `once`, one tagged pass, then waits for the cloud. */
export async function runAgent(options: RunOptions, sink: BatchSink): Promise<ReplicateResult> {
  const api = cloudApi(options);
  const first = await api.getVm(options.vm); // NOT_ENABLED / UNREACHABLE before any work
  const newAgent = () => new MobilityAgent(options.stateDir, options.vm, sink, options.onProgress ? { onProgress: options.onProgress } : {});
  let agent = newAgent();
  /**
   * A pass, again from the last checkpoint while the process server restarts under it: a
   * restarted process server lost what it had not made durable and re-sends sequences that may
   * have left as empty markers, so everything since the checkpoint is read again (a new agent
   * loads the checkpoint: fingerprints, journal positions, initial progress) and sent under the
   * sequences the process server gives now.
   */
  const pass = async (passOptions: PassOptions): Promise<PassResult | undefined> => {
    for (;;) {
      try {
        return await agent.pass(passOptions);
      } catch (err) {
        if (!(isApplianceError(err) && err.code === 'PROCESS_SERVER_RESTARTED')) throw err;
        // stopping: the next start goes back to the checkpoint anyway
        if (options.signal?.aborted && !options.once) return undefined;
        options.log?.warn({ vm: options.vm }, 'the process server restarted: going back to the last checkpoint');
        agent.close();
        sink.restart?.();
        agent = newAgent();
        passOptions = { ...passOptions, rescan: true };
      }
    }
  };
  /** A resync the cloud asks for (docs/resync.md): hash, compare, restart in the new epoch. */
  const resyncIfAsked = async (vm: VmView): Promise<void> => {
    const epoch = vm.resync?.epoch;
    if (!epoch || agent.state.disks.every((d) => d.epoch >= epoch)) return;
    // no old-epoch batch may still be in flight while the replica's hashes are read
    const sent = Object.fromEntries(await Promise.all(agent.state.disks.map(async (d) => [d.diskId, (await sink.nextSequence(options.vm, d.diskId, d.epoch)) - 1] as const)));
    await waitApplied(api, options.vm, sent, { timeoutMs: 30_000 }).catch(() => undefined); // after a gap, nothing more applies
    const done = await agent.resync(epoch, async (diskId) => {
      const hashes = new Map<number, string>();
      for (let from: number | null = 0; from !== null; ) {
        const page = await api.hashes(options.vm, diskId, from);
        for (const b of page.blocks) hashes.set(b.index, b.hash);
        from = page.next;
      }
      return hashes;
    });
    options.log?.info({ vm: options.vm, epoch, disks: done }, 'resync: only differing extents will be sent');
  };
  try {
    await resyncIfAsked(first);
    if (options.once) {
      const r = (await pass({ rescan: true, tag: 'crash-consistent' }))!;
      const want = Object.fromEntries(r.disks.map((d) => [d.diskId, d.lastSequence]));
      const vm = await waitApplied(api, options.vm, want, {
        initialComplete: r.disks.every((d) => d.initialComplete),
        epochs: Object.fromEntries(agent.state.disks.map((d) => [d.diskId, d.epoch])),
        ...(options.applyTimeoutMs !== undefined ? { timeoutMs: options.applyTimeoutMs } : {}),
      });
      if (r.tagId !== undefined && vm.disks.every((d) => d.initialReplicationPercent >= 100)) {
        // The contract: --once exits when a recovery point exists for exactly what it sent. The
        // cloud may capture a tag after its batch is applied (docs/disk-log.md): wait for it.
        const wanted = recoveryPointId(r.tagId);
        const deadline = Date.now() + (options.applyTimeoutMs ?? 120_000);
        while (!(await api.recoveryPoints(options.vm)).some((p) => p.id === wanted)) {
          if (Date.now() > deadline) throw new ApplianceError('OPERATION_FAILED', `Everything VM '${options.vm}' sent is applied, but its recovery point ${wanted} did not appear in time; see the VM's health (ferry status).`);
          await new Promise((resolve) => setTimeout(resolve, 500));
        }
      }
      return {
        vmId: options.vm,
        passes: 1,
        ...(r.tagId !== undefined ? { tagId: r.tagId } : {}),
        disks: r.disks.map((d) => ({ ...d, appliedSequence: vm.disks.find((c) => c.diskId === d.diskId)?.appliedSequence ?? 0 })),
        state: vm.state,
      };
    }
    let passes = 0;
    let lastTag = Date.now();
    let lastAppTag = Date.now();
    let lastRescan = Date.now();
    let last: PassResult | undefined;
    const interval = options.intervalMs ?? 5000;
    // Cloud backpressure: a pass starts once the cloud has applied the previous one (or after
    // maxApplyWaitMs), so a cloud slower than the churn gets fewer, larger batches (more
    // changes per extent per batch) instead of an ever-growing queue.
    let unapplied: Record<string, number> | undefined;
    while (!options.signal?.aborted) {
      if (unapplied) {
        // bounded as a whole: with the cloud away the pass goes on and the outbox spools (and says so)
        let unreachable = false;
        let vm = await waitApplied(api, options.vm, unapplied, { timeoutMs: options.maxApplyWaitMs ?? 120_000 }).catch((err: unknown) => {
          unreachable = err instanceof ApplianceError && err.code === 'UNREACHABLE';
          options.log?.warn({ err: errorMessage(err) }, unreachable ? 'the cloud API is unreachable; batches stay in the cache; going on' : 'the cloud is behind; going on');
          return undefined;
        });
        if (!vm && !unreachable) vm = await api.getVm(options.vm, 5000).catch(() => undefined);
        if (vm?.resync) {
          await resyncIfAsked(vm);
          unapplied = undefined;
        }
        if (options.signal?.aborted) break; // stopped while waiting for the cloud: no further pass
      }
      const started = Date.now();
      const rescan = passes === 0 || started - lastRescan >= (options.rescanIntervalMs ?? 600_000);
      let tag: ConsistencyKind | undefined = started - lastTag >= (options.tagIntervalMs ?? 300_000) ? 'crash-consistent' : undefined;
      if (options.appTagIntervalMs !== undefined && started - lastAppTag >= options.appTagIntervalMs) {
        lastAppTag = started;
        tag = (await runPreTagHook(options.preTagHook, options.log)) ? 'app-consistent' : 'crash-consistent';
      }
      const done = await pass({ rescan, marker: true, ...(tag ? { tag } : {}) });
      if (!done) break;
      last = done;
      if (rescan) lastRescan = started;
      if (tag) lastTag = started;
      unapplied = Object.fromEntries(last.disks.map((d) => [d.diskId, d.lastSequence]));
      passes++;
      // a process server restarted since the pass is found again by the next pass, which goes back to the checkpoint
      const st = await sink.stats(options.vm).catch((err: unknown) => {
        if (isApplianceError(err) && err.code === 'PROCESS_SERVER_RESTARTED') return undefined;
        throw err;
      });
      options.onPass?.(last, { lagMs: Date.now() - started, backlogBatches: st?.pendingBatches ?? 0, sentBytes: st?.sentBytes ?? 0 });
      const wait = Math.max(0, interval - (Date.now() - started));
      await new Promise<void>((r) => {
        const onAbort = () => (clearTimeout(t), r());
        const t = setTimeout(() => {
          options.signal?.removeEventListener('abort', onAbort);
          r();
        }, wait);
        options.signal?.addEventListener('abort', onAbort, { once: true });
      });
    }
    return { vmId: options.vm, passes, disks: last?.disks ?? [] };
  } finally {
    agent.close();
  }
}

export interface ReplicateOptions extends RunOptions, ConnectionOptions {
  threads?: number;
  limitMbps?: number;
  limitSchedule?: string;
  cacheDir?: string;
  cacheMaxBytes?: number;
  sealWorkers?: number;
  /** A transport to use instead of the Azure SDKs (tests). */
  transport?: CloudTransport;
}

/** `ferry replicate`: the agent and the process server in one process. */
export async function replicate(options: ReplicateOptions): Promise<ReplicateResult> {
  const log = options.log ?? createLogger('ferry', { stream: process.stderr });
  const server = new ProcessServer({
    stateDir: options.stateDir,
    transport: options.transport ?? azureTransport(options),
    log,
    ...(options.threads !== undefined ? { threads: options.threads } : {}),
    ...(options.limitMbps !== undefined ? { limitMbps: options.limitMbps } : {}),
    ...(options.limitSchedule !== undefined ? { limitSchedule: options.limitSchedule } : {}),
    ...(options.cacheDir !== undefined ? { cacheDir: options.cacheDir } : {}),
    ...(options.cacheMaxBytes !== undefined ? { cacheMaxBytes: options.cacheMaxBytes } : {}),
    ...(options.sealWorkers !== undefined ? { sealWorkers: options.sealWorkers } : {}),
  });
  try {
    return await runAgent(options, server);
  } finally {
    await server.close();
  }
}

// ---- test-migrate, test-migrate-cleanup, migrate -----------------------------------------

/**
 * Starts the operation and waits for it; resolves with the finished operation exactly as
 * `GET .../operations/{operationId}` returns it, or throws OPERATION_FAILED with its error.
 */
export async function runOperation(options: CommonOptions & { vm: string; type: OperationType; recoveryPoint?: string; timeoutMs?: number }): Promise<OperationView> {
  const api = cloudApi(options);
  const id = await api.startOperation(options.vm, options.type, options.recoveryPoint);
  const deadline = Date.now() + (options.timeoutMs ?? 60 * 60_000);
  let delay = 200;
  for (;;) {
    const op = await api.getOperation(options.vm, id);
    if (op.status === 'succeeded') return op;
    if (op.status === 'failed') throw new ApplianceError('OPERATION_FAILED', `${options.type} of VM '${options.vm}' failed: ${op.error?.code ?? ''} ${op.error?.message ?? ''}`.trim());
    if (Date.now() > deadline) throw new ApplianceError('OPERATION_FAILED', `${options.type} of VM '${options.vm}' (${id}) is still running after ${Math.round((options.timeoutMs ?? 3_600_000) / 1000)} s.`);
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(2000, delay * 1.5);
  }
}

/**
 * `ferry migrate` (cut-over). Without `--recovery-point`, it first makes the final recovery
 * point itself: one last delta pass of the (quiesced) source ending with a crash-consistent tag,
 * waits until the cloud has applied it and the recovery point of that tag exists, then migrates
 * exactly that point, so nothing written before the cut-over is left behind.
 */
export async function migrate(options: ReplicateOptions & { recoveryPoint?: string; finalSync?: boolean; recoveryPointWaitMs?: number; timeoutMs?: number }): Promise<OperationView> {
  let recoveryPoint = options.recoveryPoint;
  if (recoveryPoint === undefined && options.finalSync !== false) {
    const pass = await replicate({ ...options, once: true });
    if (pass.tagId === undefined) throw new ApplianceError('OPERATION_FAILED', `The final pass of VM '${options.vm}' carried no consistency tag; migrate a recovery point instead (--recovery-point).`);
    const wanted = recoveryPointId(pass.tagId);
    const api = cloudApi(options);
    const deadline = Date.now() + (options.recoveryPointWaitMs ?? 120_000);
    while (!(await api.recoveryPoints(options.vm)).some((p) => p.id === wanted)) {
      if (Date.now() > deadline) throw new ApplianceError('OPERATION_FAILED', `The final recovery point ${wanted} of VM '${options.vm}' did not appear within ${Math.round((options.recoveryPointWaitMs ?? 120_000) / 1000)} s.`);
      await new Promise((r) => setTimeout(r, 250));
    }
    recoveryPoint = wanted;
  }
  return runOperation({ ...options, type: 'migrate', ...(recoveryPoint !== undefined ? { recoveryPoint } : {}) });
}

// ---- status ------------------------------------------------------------------------------

export async function status(options: CommonOptions & { vm?: string }): Promise<VmView[]> {
  const api = cloudApi(options);
  return options.vm ? [await api.getVm(options.vm)] : api.listVms();
}

export function formatStatus(vms: VmView[]): string {
  if (vms.length === 0) return 'No VMs are enabled.';
  const lines = ['VM                   STATE                 HEALTH    RPO     DISKS'];
  for (const vm of vms) {
    const disks = vm.disks.map((d) => `${d.diskId} ${d.initialReplicationPercent}% seq ${d.appliedSequence}`).join(', ');
    const rpo = vm.rpoSeconds === null ? '-' : `${vm.rpoSeconds}s`;
    lines.push(`${vm.vmId.padEnd(20)} ${vm.state.padEnd(21)} ${vm.health.padEnd(9)} ${rpo.padEnd(7)} ${disks}`);
  }
  return lines.join('\n');
}

export { listVmStates };

// ---- verify ------------------------------------------------------------------------------

export interface VerifyResult {
  vmId: string;
  recoveryPointId: string;
  identical: boolean;
  disks: { diskId: string; extents: number; differing: number[] }[];
}

/**
 * `ferry verify`: compares the source disks with a recovery point (default: the latest) by
 * hashes, without downloading the cloud copy: each 4 MiB extent's content block id (the
 * SHA-256 prefix the cloud names its blocks by, shared/domain/extents.ts) against the
 * recovery point's hash manifest. Throws VERIFY_MISMATCH naming the differing extents.
 */
export async function verify(options: CommonOptions & ConnectionOptions & { vm: string; recoveryPoint?: string }): Promise<VerifyResult> {
  const state = loadVmState(options.stateDir, options.vm);
  const api = cloudApi(options);
  const points = await api.recoveryPoints(options.vm);
  const rpId = options.recoveryPoint ?? points[0]?.id;
  if (!rpId) throw new ApplianceError('NOT_ENABLED', `VM '${options.vm}' has no recovery point yet; run \`ferry replicate --vm ${options.vm} --once\` first.`);
  const tagId = parseRecoveryPointId(rpId);
  if (tagId === undefined || !points.some((p) => p.id === rpId)) {
    throw new ApplianceError('BAD_ARGUMENT', `Recovery point '${rpId}' is not one of VM '${options.vm}' (${points.length} exist; see GET /api/vms/${options.vm}/recovery-points).`);
  }
  const settings = loadAppSettings();
  const cs = options.storageConnection ?? storageConnectionString({ AzureWebJobsStorage: settings.AzureWebJobsStorage ?? 'UseDevelopmentStorage=true' });
  const captures = new BlobCaptureStore(BlobServiceClient.fromConnectionString(cs).getContainerClient(DISKS_CONTAINER));
  const result: VerifyResult = { vmId: options.vm, recoveryPointId: rpId, identical: true, disks: [] };
  const buf = Buffer.allocUnsafe(EXTENT_BYTES);
  for (const d of state.disks) {
    const cloud = await captures.extents({ vmId: options.vm, diskId: d.diskId }, d.sizeBytes, tagId);
    const src = openSourceDisk(d.path);
    const differing: number[] = [];
    try {
      if (src.sizeBytes !== d.sizeBytes) throw new ApplianceError('BAD_STATE', `Disk ${d.path} is ${src.sizeBytes} bytes, not the ${d.sizeBytes} it had at enable.`);
      for (const e of cloud) {
        const { offset, length } = extentRange(e.extentIndex, d.sizeBytes);
        readFully(src.fd, buf, length, offset);
        if (contentBlockId(buf.subarray(0, length)) !== e.blockId) differing.push(e.extentIndex);
      }
    } finally {
      closeSync(src.fd);
    }
    result.disks.push({ diskId: d.diskId, extents: cloud.length, differing });
    if (differing.length > 0) result.identical = false;
  }
  return result;
}
