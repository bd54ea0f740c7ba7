/**
 * `npm run servicebus`: the emulator alone, in the foreground.
 *
 * Environment: FERRY_SERVICEBUS_CONFIG (default local/servicebus/Config.json),
 * FERRY_SERVICEBUS_PORT (5672), FERRY_SERVICEBUS_HOST (127.0.0.1),
 * FERRY_SERVICEBUS_DATA (<data dir>/servicebus; ':memory:' for no persistence),
 * FERRY_SERVICEBUS_CACHE_MB (64: message bodies kept in memory; the store has them all).
 */
import { join, resolve } from 'node:path';
import { createLogger } from '../log';
import { dataDir, projectRoot } from '../settings';
import { ConfigError, startServiceBusEmulator } from './index';

async function main(): Promise<void> {
  const log = createLogger('servicebus');
  const env = process.env;
  const configPath = resolve(env.FERRY_SERVICEBUS_CONFIG ?? join(projectRoot(), 'local', 'servicebus', 'Config.json'));
  const port = Number(env.FERRY_SERVICEBUS_PORT ?? 5672);
  const host = env.FERRY_SERVICEBUS_HOST ?? '127.0.0.1';
  const data = env.FERRY_SERVICEBUS_DATA === ':memory:' ? ':memory:' : resolve(env.FERRY_SERVICEBUS_DATA ?? join(dataDir(), 'servicebus'));
  const cacheMb = Number(env.FERRY_SERVICEBUS_CACHE_MB ?? 64);
  if (!Number.isFinite(cacheMb) || cacheMb < 0) {
    process.stderr.write(`FERRY_SERVICEBUS_CACHE_MB must be a number of megabytes (got '${env.FERRY_SERVICEBUS_CACHE_MB}').\n`);
    process.exit(1);
  }
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    process.stderr.write(`FERRY_SERVICEBUS_PORT must be a TCP port number (got '${env.FERRY_SERVICEBUS_PORT}').\n`);
    process.exit(1);
  }
  let emulator;
  try {
    emulator = await startServiceBusEmulator({ port, host, config: configPath, dataDir: data, logger: log, cacheBytes: cacheMb * 1024 * 1024 });
  } catch (err) {
    const message = err instanceof ConfigError ? err.message : `Service Bus emulator failed to start: ${(err as Error).message}`;
    process.stderr.write(message.split('\n')[0] + '\n');
    process.exit(1);
  }
  log.info(`Service Bus emulator listening on ${emulator.host}:${emulator.port} (${emulator.queueCount} queues, data in ${data})`);
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'Service Bus emulator stopping');
    emulator.close().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err }, 'error while stopping');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

void main();
