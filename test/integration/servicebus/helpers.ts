/**
 * Shared setup for the Service Bus emulator conformance suite: an emulator in-process on a free
 * port with a temporary data directory, and a real @azure/service-bus client against it.
 */
import { ServiceBusClient } from '@azure/service-bus';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { createLogger } from '../../../local/log';
import { startServiceBusEmulator, type ServiceBusEmulator } from '../../../local/servicebus/index';
import type { EmulatorConfig } from '../../../local/servicebus/config';

export type QueueSpec = { Name: string; Properties?: Record<string, unknown> };

export function uniqueName(prefix: string): string {
  return `${prefix}-${randomBytes(4).toString('hex')}`;
}

export function configOf(queues: QueueSpec[], topics: NonNullable<EmulatorConfig['UserConfig']['Namespaces'][number]['Topics']> = []): EmulatorConfig {
  return { UserConfig: { Namespaces: [{ Name: 'sbemulatorns', Queues: queues, Topics: topics }], Logging: { Type: 'Console' } } };
}

/** Polls `fn` until it returns a truthy value, or fails after `timeoutMs`. */
export async function waitFor<T>(fn: () => T | Promise<T>, timeoutMs = 10_000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export interface Harness {
  emulator: ServiceBusEmulator;
  client: ServiceBusClient;
  dataDir: string;
  stop(): Promise<void>;
}

export async function startHarness(config: EmulatorConfig, options: { persistent?: boolean } = {}): Promise<Harness> {
  const dataDir = mkdtempSync(join(tmpdir(), 'ferry-sb-'));
  const emulator = await startServiceBusEmulator({
    port: 0,
    config,
    dataDir: options.persistent === false ? ':memory:' : dataDir,
    logger: createLogger('servicebus', { level: process.env.FERRY_LOG_LEVEL ?? 'warn' }),
  });
  const client = new ServiceBusClient(emulator.connectionString, { retryOptions: { maxRetries: 1, timeoutInMs: 10_000 } });
  return {
    emulator, client, dataDir,
    async stop() {
      await client.close();
      await emulator.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
