/**
 * The fault suite's harness: a real local stack (Azurite, the Service Bus emulator, the
 * functions host) with several VMs replicating under churn, faults injected at random moments,
 * and the checks every scenario ends with:
 *
 * - every disk byte-exact against its source: churn stops, the agents stop, one last
 *   `--once` pass (ending with a tag, waiting until the cloud applied it) runs, and each cloud
 *   disk is read whole and compared with its source file byte for byte ("bytes lost" counts the
 *   differing bytes);
 * - no batch committed twice: the host runs with FERRY_FAULT_JOURNAL (shared/faults.ts), so
 *   each apply appends `applied <vm>/<disk> <epoch> <first> <last>` right after its applied
 *   sequence is recorded. Per disk and epoch those ranges must be strictly increasing and never
 *   overlap: a batch whose effect was committed a second time (a redelivery applied again after
 *   its record, or a stale batch applied after a later one) shows as a range starting at or
 *   below the previous end. A kill -9 between the record and the journal line can only lose a
 *   line (a hole), never add one, so the check cannot fail spuriously;
 * - no dead-lettered message.
 *
 * `FERRY_FAULTS=full` runs the figures (20 host kills, a 60 s cut...); the default,
 * `short`, runs every scenario briefly (the default `npm test` and CI).
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { ServiceBusClient } from '@azure/service-bus';
import { expect } from 'vitest';
import { TableStateStore } from '../../shared/azure/table-state-store';
import { churn } from '../../local/appliance/churn';
import { enable, runAgent, type RunOptions } from '../../local/appliance/commands';
import { ProcessServer } from '../../local/appliance/process-server';
import { RemoteSink } from '../../local/appliance/remote-sink';
import type { BatchSink } from '../../local/appliance/sink';
import { loadVmState } from '../../local/appliance/state';
import { createLogger } from '../../local/log';
import { SupervisedChild, tcpReady } from '../../local/stack/children';
import { azureTransport } from '../../local/appliance/commands';
import { readCloudDisk } from '../integration/appliance/helpers';
import { rng } from '../support/batches';
import { freePort } from '../support/ports';
import { ROOT, startTestStack, type TestStack } from '../support/stack';
import { waitFor } from '../support/wait';
import { writeRow, formatTable, type ScenarioRow } from './report';

export const FULL = process.env.FERRY_FAULTS === 'full';
export const MODE: 'short' | 'full' = FULL ? 'full' : 'short';
/** The short figure by default, the figure with FERRY_FAULTS=full. */
export const pick = <T>(short: T, full: T): T => (FULL ? full : short);

/** How many injections a scenario makes; FERRY_FAULTS_INJECTIONS overrides both modes (debugging). */
export const injectionCount = (short: number, full: number): number => Number(process.env.FERRY_FAULTS_INJECTIONS ?? pick(short, full));

const MiB = 1024 * 1024;
const CLI = join(ROOT, 'dist/local/appliance/cli.js');

export interface DiskSpec {
  vmId: string;
  diskId: string;
  path: string;
  sizeBytes: number;
}
export interface VmSpec {
  vmId: string;
  disks: DiskSpec[];
}

/** `<vm>/<disk>` -> epoch and sequence. */
export type Positions = Map<string, { epoch: number; seq: number }>;

const key = (vmId: string, diskId: string) => `${vmId}/${diskId}`;

export interface Injection {
  inFlight: number;
  recoveryMs: number;
}

/** Options of the agents' continuous mode in the suite: passes every second, tags every 5 s. */
export const AGENT_RUN: Pick<RunOptions, 'intervalMs' | 'tagIntervalMs' | 'rescanIntervalMs' | 'maxApplyWaitMs'> = {
  intervalMs: 1000,
  tagIntervalMs: 5000,
  rescanIntervalMs: 3_600_000,
  maxApplyWaitMs: 5000,
};

/** Lines of a logger, kept for assertions (pino JSON). */
export function lineLogger(name: string, lines: string[]) {
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n')) if (l.trim()) lines.push(l);
      if (process.env.FERRY_TEST_VERBOSE) process.stderr.write(`[${name}] ${chunk.toString('utf8')}`);
      cb();
    },
  });
  return createLogger(name, { stream, format: 'json' });
}

export class FaultRig {
  readonly rand: () => number;
  readonly stateDir: string;
  readonly journal: string;
  private readonly stops: (() => Promise<void>)[] = [];
  private tables: TableStateStore;

  private constructor(
    readonly name: string,
    readonly stack: TestStack,
    readonly dir: string,
    seed: number,
  ) {
    this.rand = rng(seed);
    this.stateDir = join(dir, 'appliance');
    this.journal = join(dir, 'applied.journal');
    this.tables = TableStateStore.fromConnectionString(stack.storageConnectionString);
  }

  /** One scenario on this stack: its own VMs, injections, figures. */
  scenario(name: string): Scenario {
    return new Scenario(this, name);
  }

  static async start(name: string, seed = Number(process.env.FERRY_FAULTS_SEED ?? 1), stackOptions: { durableAzurite?: boolean } = {}): Promise<FaultRig> {
    const dir = mkdtempSync(join(tmpdir(), `ferry-fault-${name}-`));
    const journal = join(dir, 'applied.journal');
    writeFileSync(journal, '');
    const stack = await startTestStack({ ...stackOptions, settings: { FERRY_FAULT_JOURNAL: journal } });
    const rig = new FaultRig(name, stack, dir, seed);
    mkdirSync(rig.stateDir, { recursive: true });
    return rig;
  }

  get common() {
    return { api: this.stack.apiUrl, stateDir: this.stateDir, functionKey: this.stack.functionKey };
  }

  get connections() {
    return { storageConnection: this.stack.storageConnectionString, serviceBusConnection: this.stack.serviceBusConnectionString };
  }

  /** The environment of a `ferry` child process against this stack. */
  get cliEnv(): NodeJS.ProcessEnv {
    return {
      ...process.env,
      FERRY_FUNCTION_KEY: this.stack.functionKey,
      AzureWebJobsStorage: this.stack.storageConnectionString,
      ServiceBusConnection: this.stack.serviceBusConnectionString,
      FERRY_LOG_FORMAT: 'json',
      FERRY_LOG_LEVEL: 'info',
    };
  }

  /** VMs `<prefix>-0..` with the given number of disks each: half random data, half zeros, enabled. */
  async makeVms(prefix: string, disksPerVm: number[], sizeMiB: number): Promise<VmSpec[]> {
    const vms: VmSpec[] = [];
    for (const [i, n] of disksPerVm.entries()) {
      const vmId = `${prefix}-${i}`;
      const paths: string[] = [];
      for (let d = 0; d < n; d++) {
        const path = join(this.dir, `${vmId}-disk${d}.img`);
        const img = Buffer.alloc(sizeMiB * MiB);
        randomBytes(img.length / 2).copy(img, 0);
        writeFileSync(path, img);
        paths.push(path);
      }
      await enable({ ...this.common, vm: vmId, disks: paths });
      vms.push({ vmId, disks: paths.map((path, d) => ({ vmId, diskId: `disk${d}`, path, sizeBytes: sizeMiB * MiB })) });
    }
    return vms;
  }

  /** Churn on every disk (through TrackedDisk, as `ferry churn`) until stopped. */
  churn(vms: VmSpec[], bytesPerSecond: number): { stop: () => Promise<void> } {
    const ac = new AbortController();
    const runs = vms.flatMap((vm) =>
      vm.disks.map((d) => churn({ disk: d.path, stateDir: this.stateDir, bytesPerSecond, ioSize: 4096, pattern: 'random', durationMs: 3_600_000, signal: ac.signal })),
    );
    const stop = async () => {
      ac.abort();
      await Promise.all(runs);
    };
    this.stops.push(stop);
    return { stop };
  }

  /** The cloud's applied position of every disk, read from Tables (works while the host is down). */
  async applied(vms: VmSpec[]): Promise<Positions> {
    const out: Positions = new Map();
    for (const vm of vms) {
      const found = await this.tables.getVm(vm.vmId);
      for (const d of found?.disks ?? []) out.set(key(vm.vmId, d.diskId), { epoch: d.epoch, seq: d.appliedSequence });
    }
    return out;
  }

  /** What the appliance's process server has accepted for every disk (in the agent's current epoch). */
  async accepted(vms: VmSpec[], sinkOf: (vmId: string) => BatchSink): Promise<Positions> {
    const out: Positions = new Map();
    for (const vm of vms) {
      const state = loadVmState(this.stateDir, vm.vmId);
      const sink = sinkOf(vm.vmId);
      for (const d of state.disks) out.set(key(vm.vmId, d.diskId), { epoch: d.epoch, seq: (await sink.nextSequence(vm.vmId, d.diskId, d.epoch)) - 1 });
    }
    return out;
  }

  /** Batches accepted by the appliance and not yet applied by the cloud. */
  static behind(accepted: Positions, applied: Positions): number {
    let n = 0;
    for (const [k, a] of accepted) {
      const c = applied.get(k);
      if (!c || c.epoch < a.epoch) n += a.seq;
      else if (c.epoch === a.epoch) n += Math.max(0, a.seq - c.seq);
    }
    return n;
  }

  /** A snapshot at the moment of an injection: what was accepted, and how much of it was in flight. */
  async snapshot(vms: VmSpec[], sinkOf: (vmId: string) => BatchSink): Promise<{ accepted: Positions; inFlight: number }> {
    const [accepted, applied] = await Promise.all([this.accepted(vms, sinkOf), this.applied(vms)]);
    return { accepted, inFlight: FaultRig.behind(accepted, applied) };
  }

  /** Waits until the cloud has applied everything in `target`; resolves with the time it took from `since`. */
  async caughtUp(vms: VmSpec[], target: Positions, since: number, what: string, timeoutMs = 180_000): Promise<number> {
    await waitFor(async () => FaultRig.behind(target, await this.applied(vms)) === 0, what, { timeoutMs, intervalMs: 100 });
    return Date.now() - since;
  }

  /** A random wait in [minMs, maxMs) (the moment of the next injection). */
  async randomPause(minMs: number, maxMs: number): Promise<void> {
    await new Promise((r) => setTimeout(r, minMs + this.rand() * (maxMs - minMs)));
  }

  /** Per disk and epoch, the committed ranges must be strictly increasing (see the top of this file). */
  checkJournal(vmIds: ReadonlySet<string>): { commits: number; doubles: string[] } {
    const last = new Map<string, number>();
    const doubles: string[] = [];
    let commits = 0;
    for (const line of readFileSync(this.journal, 'utf8').split('\n')) {
      const m = /^applied (\S+) (\d+) (\d+) (\d+)$/.exec(line);
      if (!m) continue;
      const [, disk, epoch, first, lastSeq] = m as unknown as [string, string, string, string, string];
      if (!vmIds.has(disk.split('/')[0]!)) continue;
      const k = `${disk} epoch ${epoch}`;
      const prev = last.get(k) ?? 0;
      commits += Number(lastSeq) - Number(first) + 1;
      if (Number(first) <= prev) doubles.push(`${k}: ${first}..${lastSeq} committed after ${prev}`);
      last.set(k, Math.max(prev, Number(lastSeq)));
    }
    return { commits, doubles };
  }

  /** The dead-letter reasons of `replication-batches`, oldest first. */
  async deadLetters(): Promise<string[]> {
    const client = new ServiceBusClient(this.stack.serviceBusConnectionString);
    try {
      const dlq = client.createReceiver('replication-batches', { subQueueType: 'deadLetter' });
      const reasons = (await dlq.peekMessages(500)).map((m) => String(m.deadLetterReason));
      await dlq.close();
      return reasons;
    } finally {
      await client.close();
    }
  }

  onStop(fn: () => Promise<void>): void {
    this.stops.push(fn);
  }

  async close(): Promise<void> {
    for (const stop of this.stops.reverse()) await stop().catch(() => undefined);
    await this.stack.stop();
    if (!process.env.FERRY_FAULTS_KEEP) rmSync(this.dir, { recursive: true, force: true });
  }
}


/** One scenario's injections and figures, on a rig shared by the scenarios of a file. */
export class Scenario {
  readonly notes: string[] = [];
  readonly detail: string[] = [];
  readonly injections: Injection[] = [];
  private readonly started = Date.now();
  private deadLetteredBefore = 0;
  /** Dead letters this scenario expects (counted in `detail`, not as a problem). */
  allowDeadLetters: RegExp | undefined;

  constructor(readonly rig: FaultRig, readonly name: string) {}

  /** Call before the scenario makes faults: its dead letters are counted from here. */
  async begin(): Promise<this> {
    this.deadLetteredBefore = (await this.rig.deadLetters()).length;
    return this;
  }

  /**
   * One injection: `fault` breaks something (and returns when the fault is over: a kill, or an
   * outage's end), `restore` repairs it (restart, reconnect); recovery time runs from the
   * fault's end until every batch the appliance had accepted at the injection is applied.
   */
  async inject(vms: VmSpec[], sinkOf: (vmId: string) => BatchSink, label: string, fault: () => Promise<void>, restore: () => Promise<void>): Promise<Injection> {
    const snap = await this.rig.snapshot(vms, sinkOf);
    await fault();
    const faultEnd = Date.now();
    await restore();
    const recoveryMs = await this.rig.caughtUp(vms, snap.accepted, faultEnd, `recovery after ${label}`);
    const inj = { inFlight: snap.inFlight, recoveryMs };
    this.injections.push(inj);
    if (process.env.FERRY_TEST_VERBOSE) process.stderr.write(`[faults] ${this.name}: ${label}: ${snap.inFlight} in flight, recovered in ${recoveryMs} ms\n`);
    return inj;
  }

  /**
   * The end of a scenario: one last `--once` pass per VM (in parallel) through `agentSinkOf`
   * (default `sinkOf`; the agents and the churn must be stopped), then every cloud disk
   * compared with its source byte for byte, the
   * commit journal checked, the dead-letter queue read; the row is written and returned.
   */
  async finish(vms: VmSpec[], sinkOf: (vmId: string) => BatchSink, extra: Partial<ScenarioRow> = {}, agentSinkOf = sinkOf): Promise<ScenarioRow> {
    await Promise.all(
      vms.map(async (vm) => {
        const r = await runAgent({ ...this.rig.common, vm: vm.vmId, once: true, applyTimeoutMs: 180_000 }, agentSinkOf(vm.vmId));
        if (r.state !== 'protected') this.notes.push(`${vm.vmId} ended ${r.state}`);
      }),
    );
    let bytesLost = 0;
    let exact = 0;
    const disks = vms.flatMap((v) => v.disks);
    for (const d of disks) {
      const src = readFileSync(d.path);
      const cloud = await readCloudDisk(this.rig.stack, d.vmId, d.diskId, d.sizeBytes);
      let differ = 0;
      const blocks: number[] = [];
      for (let i = 0; i < src.length; i++) {
        if (src[i] === cloud[i]) continue;
        differ++;
        if (blocks[blocks.length - 1] !== Math.floor(i / 4096)) blocks.push(Math.floor(i / 4096));
      }
      bytesLost += differ;
      if (differ === 0) exact++;
      else this.notes.push(`${d.vmId}/${d.diskId}: ${differ} bytes in ${blocks.length} 4 KiB blocks differ from the source (blocks ${blocks.slice(0, 8).join(', ')}${blocks.length > 8 ? '...' : ''})`);
    }
    const journal = this.rig.checkJournal(new Set(vms.map((v) => v.vmId)));
    const deadLettered = (await this.rig.deadLetters()).slice(this.deadLetteredBefore);
    const expected = deadLettered.filter((r) => this.allowDeadLetters?.test(r));
    if (expected.length > 0) this.detail.push(`${expected.length} message(s) dead-lettered as expected (${[...new Set(expected)].join(', ')})`);
    if (deadLettered.length > expected.length) this.notes.push(`${deadLettered.length - expected.length} message(s) dead-lettered (${[...new Set(deadLettered)].join(', ')})`);
    const row: ScenarioRow = {
      scenario: this.name,
      mode: MODE,
      injections: this.injections.length,
      inFlight: this.injections.map((i) => i.inFlight),
      recoveryMs: this.injections.map((i) => i.recoveryMs),
      bytesLost,
      disksExact: exact,
      disks: disks.length,
      commits: journal.commits,
      doubleCommits: journal.doubles.length,
      wallSeconds: (Date.now() - this.started) / 1000,
      notes: [...this.notes, ...journal.doubles.map((d) => `double commit: ${d}`)],
      detail: this.detail,
      ...extra,
    };
    writeRow(row);
    console.log(formatTable([row]));
    return row;
  }

}

/** Sizes of a scenario: short (CI, the default `npm test`) or the (FERRY_FAULTS=full). */
export const SHAPE = {
  /** Disks per VM. */
  vms: pick([2, 1], [2, 1, 1, 1]),
  diskMiB: pick(4, 16),
  churnBytesPerSecond: pick(64, 256) * 1024,
};

/** Waits until every VM is protected (its initial copy applied). */
export async function allProtected(rig: FaultRig, vms: VmSpec[]): Promise<void> {
  const state = async (vmId: string) => ((await (await fetch(`${rig.stack.apiUrl}/vms/${vmId}`, { headers: { 'x-functions-key': rig.stack.functionKey } })).json()) as { state: string }).state;
  await waitFor(async () => (await Promise.all(vms.map((v) => state(v.vmId)))).every((s) => s === 'protected'), 'every VM protected', { timeoutMs: 180_000, intervalMs: 250 });
}

/** The checks every scenario ends with: nothing lost, every disk exact, no double commit, no agent error. */
export function expectClean(row: ScenarioRow, errors: unknown[] = []): void {
  expect(errors.map(String)).toEqual([]);
  expect(row.notes).toEqual([]);
  expect(row.bytesLost).toBe(0);
  expect(row.disksExact).toBe(row.disks);
  expect(row.doubleCommits).toBe(0);
  expect(row.commits).toBeGreaterThan(0);
}

/** `ferry replicate` in this process: one process server (sink) for all VMs, one continuous agent per VM. */
export class InProcessAppliance {
  readonly server: ProcessServer;
  readonly lines: string[] = [];
  readonly errors: unknown[] = [];
  private runs: { ac: AbortController; done: Promise<unknown> }[] = [];

  constructor(private readonly rig: FaultRig, options: { cacheDir?: string; cacheMaxBytes?: number } = {}) {
    this.server = new ProcessServer({
      stateDir: rig.stateDir,
      transport: azureTransport(rig.connections),
      threads: 4,
      sealWorkers: 1,
      log: lineLogger('appliance', this.lines),
      ...options,
    });
    rig.onStop(() => this.close());
  }

  readonly sinkOf = (): BatchSink => this.server;

  start(vms: VmSpec[]): void {
    for (const vm of vms) {
      const ac = new AbortController();
      const done = runAgent({ ...this.rig.common, vm: vm.vmId, ...AGENT_RUN, signal: ac.signal, ...(process.env.FERRY_FAULTS_DEBUG ? { onPass: (p) => console.log(`pass ${vm.vmId}`, JSON.stringify(p)) } : {}), log: lineLogger(`agent ${vm.vmId}`, this.lines) }, this.server).catch((err: unknown) => {
        this.errors.push(err);
      });
      this.runs.push({ ac, done });
    }
  }

  /** Stops the continuous agents (each ends after its current pass). */
  async stopAgents(): Promise<void> {
    for (const r of this.runs) r.ac.abort();
    await Promise.all(this.runs.map((r) => r.done));
    this.runs = [];
  }

  async close(): Promise<void> {
    await this.stopAgents();
    await this.server.close();
  }
}

/** `ferry process-server` and one `ferry agent` per VM as child processes, over HTTPS. */
export class SplitAppliance {
  processServer!: SupervisedChild;
  readonly agents = new Map<string, SupervisedChild>();
  readonly lines: string[] = [];
  port = 0;

  constructor(private readonly rig: FaultRig) {
    rig.onStop(() => this.close());
  }

  get url(): string {
    return `https://127.0.0.1:${this.port}`;
  }

  private child(name: string, args: string[], ready: () => Promise<boolean>): SupervisedChild {
    return new SupervisedChild(
      { name, command: process.execPath, args: [CLI, ...args], env: this.rig.cliEnv, cwd: ROOT, ready },
      (n, line) => {
        this.lines.push(`[${n}] ${line}`);
        if (process.env.FERRY_TEST_VERBOSE) process.stderr.write(`[${n}] ${line}\n`);
      },
      () => undefined,
    );
  }

  async startProcessServer(): Promise<void> {
    this.port ||= await freePort();
    this.processServer = this.child('process-server', ['process-server', '--port', String(this.port), '--host', '127.0.0.1', '--state-dir', this.rig.stateDir], () => tcpReady(this.port));
    await this.processServer.start();
  }

  async startAgent(vmId: string): Promise<void> {
    const agent = this.child(`agent ${vmId}`, ['agent', '--vm', vmId, '--process-server', this.url, '--interval', '1s', '--api', this.rig.stack.apiUrl, '--state-dir', this.rig.stateDir], async () => true);
    this.agents.set(vmId, agent);
    await agent.start();
  }

  /**
   * Starts the agent of `vm` again after a kill and waits until it is at work (its first pass
   * was accepted beyond what the process server held at the start): a `ferry agent` still
   * loading when the scenario stops it could not end its pass cleanly.
   */
  async restartAgent(vm: VmSpec): Promise<void> {
    const before = await this.rig.accepted([vm], this.sinkOf);
    await this.startAgent(vm.vmId);
    await waitFor(async () => [...(await this.rig.accepted([vm], this.sinkOf))].some(([k, p]) => p.seq > (before.get(k)?.seq ?? 0)), `the restarted agent of ${vm.vmId} to make a pass`, { timeoutMs: 60_000, intervalMs: 100 });
  }

  /**
   * The process server as the test talks to it (the agent's own HTTPS client and pinned
   * certificate), only looking (it takes no disk over from the agents); a new client each
   * time, as the process server is restarted between calls (a client refuses to go on with a
   * restarted process server, remote-sink.ts).
   */
  readonly sinkOf = (vmId: string): BatchSink => new RemoteSink(this.url, this.rig.stateDir, vmId, { observe: true });

  /** The sink of the final `--once` pass: an agent run of its own (it takes the disks over). */
  readonly agentSinkOf = (vmId: string): BatchSink => new RemoteSink(this.url, this.rig.stateDir, vmId);

  /** Stops the agents (SIGTERM: each ends after its pass); returns a note for each that did not exit 0. */
  async stopAgents(): Promise<string[]> {
    await Promise.all([...this.agents.values()].map((a) => a.stop()));
    const notes = [...this.agents].filter(([, a]) => a.describeExit() !== 'exit code 0').map(([vmId, a]) => `agent ${vmId} ended with ${a.describeExit()}`);
    this.agents.clear();
    return notes;
  }

  async close(): Promise<void> {
    await this.stopAgents();
    await this.processServer?.stop();
  }
}

export { MiB };
