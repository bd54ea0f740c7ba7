/**
 * Supervised child processes for the local stack: spawn, prefix their output line by line,
 * wait until they are ready (a probe with a deadline, never a fixed sleep), and stop them
 * with SIGTERM, then SIGKILL after a grace period, so no process is left behind.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { createInterface } from 'node:readline';

export interface ChildSpec {
  /** Short name used as the log prefix. */
  name: string;
  command: string;
  args: string[];
  env: NodeJS.ProcessEnv;
  cwd?: string;
  /** Resolves true once the child serves requests. */
  ready: () => Promise<boolean>;
  readyTimeoutMs?: number;
}

export type LineSink = (name: string, line: string) => void;

export class StackError extends Error {
  override readonly name = 'StackError';
  constructor(message: string, readonly code: 'START_FAILED' | 'START_TIMEOUT' | 'EXITED') {
    super(message);
  }
}

/** True once something accepts TCP connections on host:port. */
export function tcpReady(port: number, host = '127.0.0.1', timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ port, host });
    const done = (ok: boolean): void => {
      socket.removeAllListeners();
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/** True once `GET url` answers 200. */
export async function httpReady(url: string, timeoutMs = 2000): Promise<boolean> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    await res.arrayBuffer();
    return res.status === 200;
  } catch {
    return false;
  }
}

const TAIL_LINES = 30;

export class SupervisedChild {
  private proc: ChildProcess | undefined;
  private readonly tail: string[] = [];
  private exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  private exited: Promise<void> = Promise.resolve();
  private stopping = false;

  constructor(readonly spec: ChildSpec, private readonly sink: LineSink, private readonly onUnexpectedExit: (child: SupervisedChild) => void) {}

  get pid(): number | undefined {
    return this.proc?.pid;
  }

  /** The last lines the child printed, for error messages. */
  recentOutput(): string {
    return this.tail.join('\n');
  }

  async start(): Promise<void> {
    const { spec } = this;
    const proc = spawn(spec.command, spec.args, { env: spec.env, cwd: spec.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = proc;
    for (const stream of [proc.stdout, proc.stderr]) {
      if (!stream) continue;
      createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => {
        this.tail.push(line);
        if (this.tail.length > TAIL_LINES) this.tail.shift();
        this.sink(spec.name, line);
      });
    }
    this.exited = new Promise((resolve) => {
      proc.once('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        if (!this.stopping) this.onUnexpectedExit(this);
        resolve();
      });
    });
    const spawnError = new Promise<Error>((resolve) => proc.once('error', resolve));

    const deadline = Date.now() + (spec.readyTimeoutMs ?? 60_000);
    for (;;) {
      if (this.exitInfo) {
        throw new StackError(`${spec.name} exited during start-up (${this.describeExit()}). Its last output:\n${this.recentOutput()}`, 'EXITED');
      }
      const failed = await Promise.race([spawnError, new Promise<undefined>((r) => setImmediate(r, undefined))]);
      if (failed) throw new StackError(`${spec.name} could not be started: ${failed.message}`, 'START_FAILED');
      if (await spec.ready()) return;
      if (Date.now() > deadline) {
        throw new StackError(
          `${spec.name} was not ready within ${Math.round((spec.readyTimeoutMs ?? 60_000) / 1000)} s. Its last output:\n${this.recentOutput()}`,
          'START_TIMEOUT',
        );
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  describeExit(): string {
    if (!this.exitInfo) return 'running';
    return this.exitInfo.signal ? `signal ${this.exitInfo.signal}` : `exit code ${this.exitInfo.code}`;
  }

  get running(): boolean {
    return this.proc !== undefined && this.exitInfo === undefined;
  }

  /** SIGTERM, then SIGKILL once `graceMs` has passed. */
  async stop(graceMs = 15_000): Promise<void> {
    this.stopping = true;
    const proc = this.proc;
    if (!proc || this.exitInfo) return;
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }

  /** For fault tests: kill -9 without a chance to clean up. */
  async kill(): Promise<void> {
    this.stopping = true;
    const proc = this.proc;
    if (!proc || this.exitInfo) return;
    proc.kill('SIGKILL');
    await this.exited;
  }
}
