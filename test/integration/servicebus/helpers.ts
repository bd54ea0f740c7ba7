/**
 * Shared setup for the Service Bus emulator conformance suite: an emulator in-process on a free
 * port with a temporary data directory, and a real @azure/service-bus client against it.
 */
import { ServiceBusClient } from '@azure/service-bus';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
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
export async function waitFor<T>(fn: () => T | Promise<T>, timeoutMs = 10_000, what = 'condition'): Promise<Exclude<T, undefined | null | false | 0 | ''>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as Exclude<T, undefined | null | false | 0 | ''>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The conformance suites run against both stores: SQLite in a temp dir, and memory only. */
export const STORES = ['SQLite', 'memory'] as const;
export type StoreKind = (typeof STORES)[number];

export interface Harness {
  emulator: ServiceBusEmulator;
  client: ServiceBusClient;
  dataDir: string;
  stop(): Promise<void>;
}

export async function startHarness(config: EmulatorConfig, options: { store?: StoreKind } = {}): Promise<Harness> {
  const dataDir = mkdtempSync(join(tmpdir(), 'ferry-sb-'));
  const emulator = await startServiceBusEmulator({
    port: 0,
    config,
    dataDir: options.store === 'memory' ? ':memory:' : dataDir,
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

const root = resolve(__dirname, '../../..');
export const emulatorMainJs = join(root, 'dist/local/servicebus/main.js');

/**
 * Builds when dist/ is missing or older than local/servicebus (`npm test` builds first; this
 * covers running vitest alone). Errors elsewhere in the tree do not stop tsc from emitting ours.
 */
export function ensureBuilt(): void {
  const srcDir = join(root, 'local/servicebus');
  const outDir = join(root, 'dist/local/servicebus');
  const stale = readdirSync(srcDir).filter((f) => f.endsWith('.ts')).some((f) => {
    const js = join(outDir, f.replace(/\.ts$/, '.js'));
    return !existsSync(js) || statSync(js).mtimeMs < statSync(join(srcDir, f)).mtimeMs;
  });
  if (!stale) return;
  try {
    execFileSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', join(root, 'tsconfig.json')], { stdio: 'pipe' });
  } catch (err) {
    if (!existsSync(emulatorMainJs)) throw err;
  }
}
