/**
 * Ferry's Service Bus emulator: an AMQP 1.0 broker that the unmodified `@azure/service-bus` SDK
 * uses through a connection string with `UseDevelopmentEmulator=true`.
 *
 * ```ts
 * const sb = await startServiceBusEmulator({ port: 0, config: 'local/servicebus/Config.json', dataDir: tmp });
 * const client = new ServiceBusClient(sb.connectionString);
 * ...
 * await sb.close();
 * ```
 *
 * Entities come from a Config.json in the official emulator's format (see config.ts). Messages
 * persist in SQLite under `dataDir` (omit it, or pass ':memory:', to keep them in memory only).
 * Only the key name `RootManageSharedAccessKey` with key `SAS_KEY_VALUE` is accepted, as in the
 * official emulator.
 */
import type { Logger } from 'pino';
import { createLogger } from '../log';
import { Broker } from './broker';
import { loadConfigFile, parseConfig, type EmulatorConfig, type NamespaceConfig } from './config';
import type { SharedAccessKey } from './sas';
import { openStore } from './store';

export type { EmulatorConfig, NamespaceConfig } from './config';
export { ConfigError, loadConfigFile, parseConfig } from './config';

export const DEFAULT_KEY: SharedAccessKey = { name: 'RootManageSharedAccessKey', key: 'SAS_KEY_VALUE' };

export interface EmulatorOptions {
  /** TCP port; 0 picks a free one. Default 5672. */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** A parsed Config.json, or the path of one. Default: no entities. */
  config?: EmulatorConfig | string;
  /** Persistence directory; omit or ':memory:' to keep messages in memory only. */
  dataDir?: string;
  logger?: Logger;
  /** Accepted keys; default RootManageSharedAccessKey / SAS_KEY_VALUE. */
  keys?: SharedAccessKey[];
  /** Bytes of message bodies cached in memory (the store holds them all). Default 64 MiB. */
  cacheBytes?: number;
}

export interface ServiceBusEmulator {
  port: number;
  host: string;
  connectionString: string;
  /** Number of queues configured. */
  queueCount: number;
  close(): Promise<void>;
}

function resolveConfig(config: EmulatorConfig | string | undefined): NamespaceConfig {
  if (config === undefined) return { namespace: 'sbemulatorns', queues: [], topics: [] };
  if (typeof config === 'string') return loadConfigFile(config);
  return parseConfig(config, 'config object');
}

export async function startServiceBusEmulator(options: EmulatorOptions = {}): Promise<ServiceBusEmulator> {
  const host = options.host ?? '127.0.0.1';
  const logger = options.logger ?? createLogger('servicebus');
  const config = resolveConfig(options.config);
  const keys = options.keys ?? [DEFAULT_KEY];
  const store = openStore(options.dataDir);
  let broker: Broker;
  try {
    broker = new Broker({ config, store, logger, keys, cacheBytes: options.cacheBytes });
    await broker.listen(options.port ?? 5672, host);
  } catch (err) {
    store.close();
    throw err;
  }
  const key = keys[0] ?? DEFAULT_KEY;
  let closing: Promise<void> | undefined;
  return {
    port: broker.port,
    host,
    queueCount: broker.queueCount,
    connectionString: `Endpoint=sb://${host}:${broker.port};SharedAccessKeyName=${key.name};SharedAccessKey=${key.key};UseDevelopmentEmulator=true;`,
    close: () => (closing ??= broker.close()),
  };
}
