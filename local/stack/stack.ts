/**
 * The whole local stack: Azurite (blob, queue, table), the Service Bus emulator and the local
 * functions host, each a supervised child process. Used by `npm start` (local/stack/main.ts) and
 * by the integration tests (test/support/stack.ts), which run it on free ports in a temp dir.
 */
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { httpReady, SupervisedChild, StackError, tcpReady, type LineSink } from './children';

/** Azurite's well-known development account (public, documented by Microsoft; not a secret). */
export const DEV_ACCOUNT = 'devstoreaccount1';
export const DEV_ACCOUNT_KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';
export const EMULATOR_KEY_NAME = 'RootManageSharedAccessKey';
export const EMULATOR_KEY = 'SAS_KEY_VALUE';

export interface StackPorts {
  blob: number;
  queue: number;
  table: number;
  servicebus: number;
  host: number;
}

export const DEFAULT_PORTS: StackPorts = { blob: 10000, queue: 10001, table: 10002, servicebus: 5672, host: 7071 };

export interface StackOptions {
  /** Project root: where package.json, host.json and dist/ are. */
  root: string;
  /** Where Azurite and the emulator keep their data (`local/.data` for `npm start`). */
  dataDir: string;
  ports: StackPorts;
  functionKey: string;
  /** base64 of 32 bytes. */
  masterKey: string;
  /** Path of a Config.json for the emulator; default Ferry's own. */
  servicebusConfig?: string;
  /**
   * Azurite saves its metadata every 5 s, so a kill -9 loses the writes it acknowledged since;
   * with this, it writes each change before answering, as Azure Storage keeps what it
   * acknowledged (local/stack/azurite-durable.ts; the fault tests that kill Azurite).
   */
  durableAzurite?: boolean;
  /** Extra app settings for the host (they win over the computed ones). */
  settings?: Record<string, string>;
  sink: LineSink;
  /** Called when a child dies while the stack is up. */
  onUnexpectedExit?: (name: string, how: string) => void;
}

export interface StackEndpoints {
  apiUrl: string;
  storageConnectionString: string;
  serviceBusConnectionString: string;
  ports: StackPorts;
}

export function storageConnectionString(ports: Pick<StackPorts, 'blob' | 'queue' | 'table'>): string {
  if (ports.blob === 10000 && ports.queue === 10001 && ports.table === 10002) return 'UseDevelopmentStorage=true';
  const base = 'http://127.0.0.1';
  return (
    `DefaultEndpointsProtocol=http;AccountName=${DEV_ACCOUNT};AccountKey=${DEV_ACCOUNT_KEY};` +
    `BlobEndpoint=${base}:${ports.blob}/${DEV_ACCOUNT};QueueEndpoint=${base}:${ports.queue}/${DEV_ACCOUNT};` +
    `TableEndpoint=${base}:${ports.table}/${DEV_ACCOUNT};`
  );
}

export function serviceBusConnectionString(port: number): string {
  return `Endpoint=sb://127.0.0.1:${port};SharedAccessKeyName=${EMULATOR_KEY_NAME};SharedAccessKey=${EMULATOR_KEY};UseDevelopmentEmulator=true;`;
}

/** Ports named by app settings that override the defaults, as the contract says. */
export function portsFromSettings(settings: Record<string, string | undefined>, defaults: StackPorts = DEFAULT_PORTS): StackPorts {
  const ports = { ...defaults };
  const storage = settings.AzureWebJobsStorage;
  if (storage && !/UseDevelopmentStorage=true/i.test(storage)) {
    for (const [kind, key] of [['blob', 'BlobEndpoint'], ['queue', 'QueueEndpoint'], ['table', 'TableEndpoint']] as const) {
      const m = new RegExp(`${key}=https?://[^:;/]+:(\\d+)`, 'i').exec(storage);
      if (m?.[1]) ports[kind] = Number(m[1]);
    }
  }
  const sb = settings.ServiceBusConnection;
  const sbPort = sb ? /Endpoint=sb:\/\/[^:;/]+:(\d+)/i.exec(sb)?.[1] : undefined;
  if (sbPort) ports.servicebus = Number(sbPort);
  const explicit = (name: string): number | undefined => {
    const v = settings[name];
    if (v === undefined || v === '') return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0 || n > 65535) throw new StackError(`${name}=${v} is not a TCP port; use an integer 1..65535.`, 'START_FAILED');
    return n;
  };
  ports.servicebus = explicit('FERRY_SERVICEBUS_PORT') ?? ports.servicebus;
  ports.host = explicit('FERRY_HOST_PORT') ?? ports.host;
  return ports;
}

export class LocalStack {
  private readonly children: SupervisedChild[] = [];
  private stopped = false;
  readonly endpoints: StackEndpoints;

  constructor(private readonly options: StackOptions) {
    const { ports } = options;
    this.endpoints = {
      apiUrl: `http://127.0.0.1:${ports.host}/api`,
      storageConnectionString: storageConnectionString(ports),
      serviceBusConnectionString: serviceBusConnectionString(ports.servicebus),
      ports,
    };
  }

  child(name: string): SupervisedChild | undefined {
    return this.children.find((c) => c.spec.name === name);
  }

  async start(): Promise<StackEndpoints> {
    const { root, dataDir, ports, sink } = this.options;
    const node = process.execPath;
    const azuriteDir = join(dataDir, 'azurite');
    const sbDir = join(dataDir, 'servicebus');
    mkdirSync(azuriteDir, { recursive: true });
    mkdirSync(sbDir, { recursive: true });
    const baseEnv: NodeJS.ProcessEnv = { ...process.env, FERRY_DATA_DIR: dataDir };
    const onExit = (c: SupervisedChild): void => this.options.onUnexpectedExit?.(c.spec.name, c.describeExit());

    const azurite = new SupervisedChild(
      {
        name: 'azurite',
        command: node,
        args: [
          ...(this.options.durableAzurite ? ['-r', join(root, 'dist/local/stack/azurite-durable.js')] : []),
          require.resolve('azurite/dist/src/azurite.js', { paths: [root] }),
          '--location', azuriteDir,
          '--blobHost', '127.0.0.1', '--blobPort', String(ports.blob),
          '--queueHost', '127.0.0.1', '--queuePort', String(ports.queue),
          '--tableHost', '127.0.0.1', '--tablePort', String(ports.table),
          '--skipApiVersionCheck', '--disableTelemetry', '--silent',
        ],
        env: baseEnv,
        cwd: azuriteDir,
        ready: async () => (await tcpReady(ports.blob)) && (await tcpReady(ports.queue)) && (await tcpReady(ports.table)),
      },
      sink,
      onExit,
    );
    const servicebus = new SupervisedChild(
      {
        name: 'servicebus',
        command: node,
        args: [join(root, 'dist/local/servicebus/main.js')],
        env: {
          ...baseEnv,
          FERRY_SERVICEBUS_PORT: String(ports.servicebus),
          FERRY_SERVICEBUS_DATA: sbDir,
          ...(this.options.servicebusConfig ? { FERRY_SERVICEBUS_CONFIG: resolve(this.options.servicebusConfig) } : {}),
        },
        cwd: root,
        ready: () => tcpReady(ports.servicebus),
      },
      sink,
      onExit,
    );
    const host = this.hostChild(baseEnv, onExit);

    this.children.push(azurite, servicebus, host);
    try {
      // Storage and the broker do not depend on each other; the host needs both.
      await Promise.all([azurite.start(), servicebus.start()]);
      await host.start();
    } catch (err) {
      await this.stop();
      throw err;
    }
    return this.endpoints;
  }

  private hostChild(
    baseEnv: NodeJS.ProcessEnv,
    onExit: (c: SupervisedChild) => void,
    extraEnv: Record<string, string> = {},
    name = 'host',
    port = this.options.ports.host,
  ): SupervisedChild {
    const { root, sink } = this.options;
    return new SupervisedChild(
      {
        name,
        command: process.execPath,
        args: [join(root, 'dist/local/host/main.js')],
        env: {
          ...baseEnv,
          FERRY_APP_ROOT: root,
          FERRY_HOST_PORT: String(port),
          FERRY_FUNCTION_KEY: this.options.functionKey,
          FERRY_MASTER_KEY: this.options.masterKey,
          AzureWebJobsStorage: this.endpoints.storageConnectionString,
          ServiceBusConnection: this.endpoints.serviceBusConnectionString,
          ...this.options.settings,
          ...extraEnv,
        },
        cwd: root,
        ready: () => httpReady(`http://127.0.0.1:${port}/api/health`),
      },
      sink,
      onExit,
    );
  }

  /**
   * Starts one more functions host on `port`, consuming the same queues and storage: a second
   * instance, as Azure scales out. Stopped with the stack.
   */
  async addHost(name: string, port: number): Promise<SupervisedChild> {
    const onExit = (c: SupervisedChild): void => this.options.onUnexpectedExit?.(c.spec.name, c.describeExit());
    const host = this.hostChild({ ...process.env, FERRY_DATA_DIR: this.options.dataDir }, onExit, {}, name, port);
    this.children.push(host);
    await host.start();
    return host;
  }

  /**
   * Replaces the functions host with a new one (same ports), with extra environment: for fault
   * tests (crash injection) and restarts. `mode: 'kill'` ends the old one with SIGKILL.
   * The new host is returned started unless `wait: false` (a host armed to crash may die before
   * it is ready to answer).
   */
  async restartHost(extraEnv: Record<string, string> = {}, { mode = 'stop', wait = true }: { mode?: 'stop' | 'kill'; wait?: boolean } = {}): Promise<SupervisedChild> {
    const old = this.child('host');
    if (old) {
      if (mode === 'kill') await old.kill();
      else await old.stop();
      this.children.splice(this.children.indexOf(old), 1);
    }
    const onExit = (c: SupervisedChild): void => this.options.onUnexpectedExit?.(c.spec.name, c.describeExit());
    const host = this.hostChild({ ...process.env, FERRY_DATA_DIR: this.options.dataDir }, onExit, extraEnv);
    this.children.push(host);
    const started = host.start();
    if (wait) await started;
    else started.catch(() => undefined);
    return host;
  }

  /**
   * For fault tests: ends a child (`mode: 'kill'` is kill -9, `'stop'` SIGTERM then SIGKILL)
   * and leaves it down; `startChild` brings it back with the same command, ports and data
   * directory (Azurite and the emulator keep their data, as after a real crash or outage).
   */
  async stopChild(name: string, { mode = 'stop' }: { mode?: 'stop' | 'kill' } = {}): Promise<void> {
    const child = this.child(name);
    if (!child) throw new StackError(`No child named '${name}' in this stack.`, 'START_FAILED');
    if (mode === 'kill') await child.kill();
    else await child.stop();
  }

  /** Starts a child stopped by `stopChild` again (a fresh process with the same spec). */
  async startChild(name: string): Promise<SupervisedChild> {
    const old = this.child(name);
    if (!old) throw new StackError(`No child named '${name}' in this stack.`, 'START_FAILED');
    if (old.running) throw new StackError(`${name} is still running; stop it first.`, 'START_FAILED');
    const onExit = (c: SupervisedChild): void => this.options.onUnexpectedExit?.(c.spec.name, c.describeExit());
    const fresh = new SupervisedChild(old.spec, this.options.sink, onExit);
    this.children.splice(this.children.indexOf(old), 1, fresh);
    await fresh.start();
    return fresh;
  }

  /** kill -9 (or stop) a child, then start it again: a crash and its supervisor's restart. */
  async restartChild(name: string, options: { mode?: 'stop' | 'kill' } = {}): Promise<SupervisedChild> {
    await this.stopChild(name, options);
    return this.startChild(name);
  }

  /** Stops the host first (it drains in-flight work), then the emulator and Azurite. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    const hosts = this.children.filter((c) => !['servicebus', 'azurite'].includes(c.spec.name));
    await Promise.all(hosts.map((h) => h.stop()));
    for (const name of ['servicebus', 'azurite']) await this.child(name)?.stop();
  }
}
