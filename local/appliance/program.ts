/**
 * The `ferry` command line (commander): one command per line of the contract
 * (../shared/CONTRACT.md, "The appliance CLI"). Each action parses options and calls a
 * library function from commands.ts; failures print one line and exit non-zero.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { createLogger } from '../log';
import { churn } from './churn';
import { azureTransport, enable, formatStatus, migrate, replicate, rotateKey, runAgent, runOperation, status, verify, type ReplicateResult } from './commands';
import { DEFAULT_API, type OperationType } from './cloud-api';
import { ApplianceError, errorMessage } from './errors';
import { DEFAULT_PROCESS_SERVER_PORT, startHttpsProcessServer } from './https-server';
import { progressView } from './progress';
import { ProcessServer } from './process-server';
import { RemoteSink } from './remote-sink';
import { defaultStateDir, listVmStates } from './state';
import { join } from 'node:path';
import { parseDuration, parseRate, parseSize } from './units';

const intArg = (name: string, min: number, max: number) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be an integer from ${min} to ${max}.`);
  return n;
};
const numArg = (name: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${name} must be a number above 0.`);
  return n;
};
const collect = (v: string, prev: string[]) => [...prev, v];

interface Common {
  api: string;
  stateDir: string;
  json?: boolean;
}

function print(json: boolean | undefined, result: unknown, human: string): void {
  process.stdout.write((json ? JSON.stringify(result, null, 2) : human) + '\n');
}

function summary(r: ReplicateResult): string {
  const lines = r.disks.map((d) => `  ${d.diskId}: batches ${d.firstSequence}..${d.lastSequence}, data ${(d.dataBytes / 1e6).toFixed(1)} MB, zero ${(d.zeroBytes / 1e6).toFixed(1)} MB, applied ${d.appliedSequence ?? '-'}`);
  return [`VM ${r.vmId}: ${r.state ?? 'stopped'}${r.tagId !== undefined ? `, crash-consistent tag ${r.tagId}` : ''}`, ...lines].join('\n');
}

function addCommon(cmd: Command, json = true): Command {
  cmd.option('--api <url>', 'the Ferry API (functions host)', DEFAULT_API).option('--state-dir <dir>', 'appliance state directory', defaultStateDir());
  if (json) cmd.option('--json', 'print results as JSON');
  return cmd;
}

function stopSignal(): AbortSignal {
  const ac = new AbortController();
  const stop = () => ac.abort();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  return ac.signal;
}

function liveLine(view: ReturnType<typeof progressView>) {
  return (r: { disks: { dataBytes: number }[] }, s: { lagMs: number; backlogBatches: number; sentBytes: number }) => {
    const data = r.disks.reduce((a, d) => a + d.dataBytes, 0);
    view.line(`delta: pass ${(s.lagMs / 1000).toFixed(1)} s, changed ${(data / 1e6).toFixed(2)} MB, backlog ${s.backlogBatches} batches, uploaded ${(s.sentBytes / 1e6).toFixed(0)} MB`);
  };
}

export function buildProgram(): Command {
  const program = new Command('ferry')
    .description('Ferry replication appliance: mobility agent and process server')
    .showHelpAfterError()
    .configureOutput({ outputError: (str, write) => write(str) });

  addCommon(
    program
      .command('enable')
      .description('register a VM and its disks with the cloud and store its state (data key included, mode 0600)')
      .requiredOption('--vm <id>', 'VM id')
      .option('--disk <path>', 'disk image or block device (repeat; disk0, disk1... in order)', collect, [] as string[])
      .addHelpText('after', '\nExample:\n  ferry enable --vm web-01 --disk /dev/sdb --disk ./data.img'),
  ).action(async (o: Common & { vm: string; disk: string[] }) => {
    const r = await enable({ api: o.api, stateDir: o.stateDir, vm: o.vm, disks: o.disk });
    print(o.json, r, `Enabled ${r.vmId} (key ${r.keyId}, ${r.state}): ${r.disks.map((d) => `${d.diskId}=${d.path} (${d.sizeBytes} bytes)`).join(', ')}`);
  });

  addCommon(
    program
      .command('rotate-key')
      .description("rotate the VM's data key: the cloud issues a new key (stored in the state directory, mode 0600); a running replicate or process-server seals with it from its next batch")
      .requiredOption('--vm <id>', 'VM id')
      .option('--grace <duration>', 'how long the cloud still accepts batches sealed with the previous keys (0s..168h)', '24h')
      .addHelpText('after', '\nExample:\n  ferry rotate-key --vm web-01 --grace 1h'),
  ).action(async (o: Common & { vm: string; grace: string }) => {
    const ms = parseDuration(o.grace, '--grace');
    if (ms > 7 * 24 * 3600 * 1000 || ms % 1000 !== 0) throw new ApplianceError('BAD_ARGUMENT', `--grace '${o.grace}' must be whole seconds from 0s to 168h.`);
    const r = await rotateKey({ api: o.api, stateDir: o.stateDir, vm: o.vm, graceSeconds: ms / 1000 });
    const prev = r.previousKeys.map((k) => `key ${k.keyId} accepted until ${k.retiresAt}`).join('; ');
    print(o.json, r, `Rotated ${r.vmId} to key ${r.keyId} (stored in ${r.keyFile})${prev ? `; ${prev}` : ''}.`);
  });

  addCommon(
    program
      .command('replicate')
      .description('initial replication, then near-continuous delta replication (agent and process server in one process)')
      .requiredOption('--vm <id>', 'VM id')
      .option('--once', 'one pass ending with a crash-consistent tag; exit 0 when the cloud has applied it')
      .option('--threads <n>', 'parallel uploads per VM (1..32)', intArg('--threads', 1, 32), 4)
      .option('--limit-mbps <x>', 'cap upload bandwidth (megabits per second)', numArg('--limit-mbps'))
      .option('--limit-schedule <rules>', 'caps by day and hour, first match wins, e.g. "Mon-Fri 08:00-18:00=50; *=500" (outside its rules: --limit-mbps)')
      .option('--interval <duration>', 'time between delta passes', '5s')
      .option('--tag-interval <duration>', 'crash-consistent tag cadence', '5m')
      .option('--rescan-interval <duration>', 'full fingerprint rescan cadence (finds changes not made through TrackedDisk)', '10m')
      .option('--app-tag-interval <duration>', 'app-consistent tag cadence (default: none)')
      .option('--pre-tag-hook <command>', 'shell command run before each app-consistent tag (e.g. fsfreeze)')
      .option('--cache-dir <dir>', 'offline cache (default <state-dir>/cache)')
      .option('--cache-max-gb <n>', 'bound of the offline cache; the agent pauses when it is full', numArg('--cache-max-gb'), 10)
      .addHelpText('after', '\nExamples:\n  ferry replicate --vm web-01 --once\n  ferry replicate --vm web-01 --threads 8 --limit-mbps 200\n  ferry replicate --vm web-01 --limit-schedule "Mon-Fri 08:00-18:00=50; *=unlimited"'),
  ).action(async (o: Common & { vm: string; once?: boolean; threads: number; limitMbps?: number; limitSchedule?: string; interval: string; tagInterval: string; rescanInterval: string; appTagInterval?: string; preTagHook?: string; cacheDir?: string; cacheMaxGb: number }) => {
    const view = progressView({ json: !!o.json, tty: !!process.stdout.isTTY });
    try {
      const r = await replicate({
        api: o.api,
        stateDir: o.stateDir,
        vm: o.vm,
        once: !!o.once,
        threads: o.threads,
        ...(o.limitMbps !== undefined ? { limitMbps: o.limitMbps } : {}),
        ...(o.limitSchedule !== undefined ? { limitSchedule: o.limitSchedule } : {}),
        ...(o.cacheDir ? { cacheDir: o.cacheDir } : {}),
        cacheMaxBytes: o.cacheMaxGb * 1024 ** 3,
        intervalMs: parseDuration(o.interval, '--interval'),
        tagIntervalMs: parseDuration(o.tagInterval, '--tag-interval'),
        rescanIntervalMs: parseDuration(o.rescanInterval, '--rescan-interval'),
        ...(o.appTagInterval ? { appTagIntervalMs: parseDuration(o.appTagInterval, '--app-tag-interval') } : {}),
        ...(o.preTagHook ? { preTagHook: o.preTagHook } : {}),
        onProgress: (e) => view.onProgress(e),
        onPass: liveLine(view),
        signal: stopSignal(),
      });
      view.stop();
      print(o.json, r, summary(r));
    } finally {
      view.stop();
    }
  });

  program
    .command('process-server')
    .description('run a process server that mobility agents send to over HTTPS')
    .option('--port <n>', 'HTTPS port', intArg('--port', 0, 65535), DEFAULT_PROCESS_SERVER_PORT)
    .option('--host <addr>', 'address to listen on', '0.0.0.0')
    .option('--state-dir <dir>', 'appliance state directory (VM keys and agent tokens)', defaultStateDir())
    .option('--threads <n>', 'parallel uploads per VM (1..32)', intArg('--threads', 1, 32), 4)
    .option('--limit-mbps <x>', 'cap upload bandwidth (megabits per second)', numArg('--limit-mbps'))
    .option('--limit-schedule <rules>', 'caps by day and hour, first match wins, e.g. "Mon-Fri 08:00-18:00=50; *=500" (outside its rules: --limit-mbps)')
    .option('--cache-dir <dir>', 'offline cache (default <state-dir>/cache)')
    .option('--cache-max-gb <n>', 'bound of the offline cache', numArg('--cache-max-gb'), 10)
    .option('--headers-timeout <duration>', 'a request whose headers take longer is cut (408)', '30s')
    .option('--request-timeout <duration>', 'a request (upload included) that takes longer is cut (408)', '5m')
    .addHelpText('after', '\nExample:\n  ferry process-server --port 9443 --threads 8')
    .action(async (o: { port: number; host: string; stateDir: string; threads: number; limitMbps?: number; limitSchedule?: string; cacheDir?: string; cacheMaxGb: number; headersTimeout: string; requestTimeout: string }) => {
      const timeouts = { headersTimeoutMs: parseDuration(o.headersTimeout, '--headers-timeout'), requestTimeoutMs: parseDuration(o.requestTimeout, '--request-timeout') };
      const log = createLogger('process-server');
      const server = new ProcessServer({
        stateDir: o.stateDir,
        transport: azureTransport({}),
        threads: o.threads,
        log,
        cacheMaxBytes: o.cacheMaxGb * 1024 ** 3,
        ...(o.limitMbps !== undefined ? { limitMbps: o.limitMbps } : {}),
        ...(o.limitSchedule !== undefined ? { limitSchedule: o.limitSchedule } : {}),
        ...(o.cacheDir ? { cacheDir: o.cacheDir } : {}),
      });
      server.resumeCached(listVmStates(o.stateDir));
      const https = await startHttpsProcessServer(server, { port: o.port, host: o.host, certDir: join(o.stateDir, 'process-server'), log, timeouts });
      log.info({ url: `https://${o.host}:${https.port}`, fingerprint: https.certificate.fingerprint256 }, 'process server listening');
      await new Promise<void>((r) => stopSignal().addEventListener('abort', () => r(), { once: true }));
      await https.close();
      await server.close();
    });

  addCommon(
    program
      .command('agent')
      .description('run the mobility agent for one VM against a process server')
      .requiredOption('--vm <id>', 'VM id')
      .requiredOption('--process-server <url>', 'the process server, e.g. https://127.0.0.1:9443')
      .option('--fingerprint <sha256>', "the process server certificate's SHA-256 fingerprint, checked at first contact")
      .option('--once', 'one pass ending with a crash-consistent tag; exit 0 when the cloud has applied it')
      .option('--interval <duration>', 'time between delta passes', '5s')
      .option('--rescan-interval <duration>', 'full fingerprint rescan cadence', '10m')
      .addHelpText('after', '\nExample:\n  ferry agent --vm web-01 --process-server https://ps-01:9443 --once'),
  ).action(async (o: Common & { vm: string; processServer: string; fingerprint?: string; once?: boolean; interval: string; rescanInterval: string }) => {
    const view = progressView({ json: !!o.json, tty: !!process.stdout.isTTY });
    try {
      const sink = new RemoteSink(o.processServer, o.stateDir, o.vm, o.fingerprint ? { fingerprint: o.fingerprint } : {});
      const r = await runAgent(
        { api: o.api, stateDir: o.stateDir, vm: o.vm, once: !!o.once, intervalMs: parseDuration(o.interval, '--interval'), rescanIntervalMs: parseDuration(o.rescanInterval, '--rescan-interval'), onProgress: (e) => view.onProgress(e), onPass: liveLine(view), signal: stopSignal(), log: createLogger('agent', { stream: process.stderr }) },
        sink,
      );
      view.stop();
      print(o.json, r, summary(r));
    } finally {
      view.stop();
    }
  });

  program
    .command('churn')
    .description('write changes into a disk image through the tracked-write path (tests and benchmarks)')
    .requiredOption('--disk <path>', 'disk image')
    .requiredOption('--rate <rate>', 'write rate, e.g. 20MB/s')
    .option('--io-size <size>', 'bytes per write', '4k')
    .addOption(new Option('--pattern <p>', 'write pattern').choices(['random', 'sequential']).default('random'))
    .option('--duration <d>', 'how long to write', '60s')
    .option('--state-dir <dir>', 'appliance state directory (holds the change journal)', defaultStateDir())
    .option('--json', 'print the result as JSON')
    .addHelpText('after', '\nExample:\n  ferry churn --disk ./disk0.img --rate 20MB/s --io-size 4k --pattern random --duration 60s')
    .action(async (o: { disk: string; rate: string; ioSize: string; pattern: 'random' | 'sequential'; duration: string; stateDir: string; json?: boolean }) => {
      const r = await churn({ disk: o.disk, stateDir: o.stateDir, bytesPerSecond: parseRate(o.rate), ioSize: parseSize(o.ioSize, '--io-size'), pattern: o.pattern, durationMs: parseDuration(o.duration, '--duration'), signal: stopSignal() });
      print(o.json, r, `Wrote ${r.writes} x ${o.ioSize} (${(r.bytes / 1e6).toFixed(1)} MB) in ${r.seconds.toFixed(1)} s: ${(r.bytesPerSecond / 1e6).toFixed(2)} MB/s`);
    });

  const operation = (type: OperationType, description: string, example: string) =>
    addCommon(
      program
        .command(type)
        .description(description)
        .requiredOption('--vm <id>', 'VM id')
        .addHelpText('after', `\nExample:\n  ${example}`),
    );
  for (const [type, description, example, rp] of [
    ['test-migrate', 'write fixed VHDs of a recovery point to container test-migrated and wait; replication goes on', 'ferry test-migrate --vm web-01', true],
    ['test-migrate-cleanup', 'delete the test migration and wait', 'ferry test-migrate-cleanup --vm web-01', false],
    ['migrate', 'cut-over: a final delta pass and tag of the quiesced source (unless --recovery-point or --no-final-sync), then fixed VHDs of that point in container migrated; replication stops', 'ferry migrate --vm web-01', true],
  ] as const) {
    const cmd = operation(type, description, example);
    if (rp) cmd.option('--recovery-point <id>', type === 'migrate' ? 'migrate this recovery point instead of making a final one' : 'a recovery point id (default: the latest)');
    if (type === 'migrate') cmd.option('--no-final-sync', 'migrate the latest recovery point without a final pass');
    cmd.action(async (o: Common & { vm: string; recoveryPoint?: string; finalSync?: boolean }) => {
      const common = { api: o.api, stateDir: o.stateDir, vm: o.vm, ...(o.recoveryPoint ? { recoveryPoint: o.recoveryPoint } : {}) };
      const op = type === 'migrate' ? await migrate({ ...common, finalSync: o.finalSync !== false }) : await runOperation({ ...common, type });
      print(o.json, op, [`${type} of ${o.vm}: ${op.status} (${op.operationId})`, ...(op.disks ?? []).map((d) => `  ${d.diskId}: ${d.vhdUrl} (${d.sizeBytes} bytes)`)].join('\n'));
    });
  }

  addCommon(
    program
      .command('verify')
      .description('compare the source disks with a recovery point by hashes, without downloading; exit 0 only if identical')
      .requiredOption('--vm <id>', 'VM id')
      .option('--recovery-point <id>', 'a recovery point id (default: the latest)')
      .addHelpText('after', '\nExample:\n  ferry verify --vm web-01'),
  ).action(async (o: Common & { vm: string; recoveryPoint?: string }) => {
    const r = await verify({ api: o.api, stateDir: o.stateDir, vm: o.vm, ...(o.recoveryPoint ? { recoveryPoint: o.recoveryPoint } : {}) });
    print(o.json, r, [`${o.vm} vs ${r.recoveryPointId}: ${r.identical ? 'identical' : 'DIFFERENT'}`, ...r.disks.map((d) => `  ${d.diskId}: ${d.extents} extents, ${d.differing.length} differ${d.differing.length ? ` (${d.differing.slice(0, 10).join(', ')}${d.differing.length > 10 ? ', ...' : ''})` : ''}`)].join('\n'));
    if (!r.identical) {
      const n = r.disks.reduce((a, d) => a + d.differing.length, 0);
      throw new ApplianceError('VERIFY_MISMATCH', `${n} extent(s) of VM '${o.vm}' differ from recovery point ${r.recoveryPointId}.`);
    }
  });

  addCommon(
    program
      .command('status')
      .description("the cloud's view: state, health, progress, RPO")
      .option('--vm <id>', 'one VM (default: all)')
      .addHelpText('after', '\nExample:\n  ferry status --vm web-01 --json'),
  ).action(async (o: Common & { vm?: string }) => {
    const vms = await status({ api: o.api, stateDir: o.stateDir, ...(o.vm ? { vm: o.vm } : {}) });
    print(o.json, o.vm ? vms[0] : { vms }, formatStatus(vms));
  });

  return program;
}

/** Runs the CLI; resolves with the exit code. */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  program.exitOverride();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (err) {
    const e = err as { code?: string; exitCode?: number };
    if (typeof e.code === 'string' && e.code.startsWith('commander.')) return e.exitCode ?? 1;
    process.stderr.write(`ferry: ${err instanceof ApplianceError ? err.message : errorMessage(err)}\n`);
    return err instanceof ApplianceError && err.code === 'BAD_ARGUMENT' ? 2 : 1;
  }
}
