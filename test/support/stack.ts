/**
 * Starts the same local stack as `npm start` (Azurite, the Service Bus emulator, the functions
 * host, as child processes) on free ports in a temporary directory, so integration tests run
 * beside a developer's `npm start`. Requires a build (`npm test` builds first).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { LocalStack, type StackEndpoints } from '../../local/stack/stack';
import { freePorts } from './ports';

export interface TestStack extends StackEndpoints {
  stack: LocalStack;
  dataDir: string;
  functionKey: string;
  masterKey: string;
  /** Output lines of all children, prefixed, for diagnosing failures. */
  logs: string[];
  stop(): Promise<void>;
}

export const ROOT = resolve(__dirname, '../..');

export async function startTestStack(options: { settings?: Record<string, string>; servicebusConfig?: string } = {}): Promise<TestStack> {
  const dataDir = mkdtempSync(join(tmpdir(), 'ferry-stack-'));
  const [blob, queue, table, servicebus, host] = (await freePorts(5)) as [number, number, number, number, number];
  const functionKey = randomBytes(24).toString('base64url');
  const masterKey = randomBytes(32).toString('base64');
  const logs: string[] = [];
  const stack = new LocalStack({
    root: ROOT,
    dataDir,
    ports: { blob, queue, table, servicebus, host },
    functionKey,
    masterKey,
    ...(options.servicebusConfig ? { servicebusConfig: options.servicebusConfig } : {}),
    ...(options.settings ? { settings: options.settings } : {}),
    sink: (name, line) => {
      logs.push(`[${name}] ${line}`);
      if (process.env.FERRY_TEST_VERBOSE) process.stderr.write(`[${name}] ${line}\n`);
    },
  });
  const endpoints = await stack.start();
  return {
    ...endpoints,
    stack,
    dataDir,
    functionKey,
    masterKey,
    logs,
    async stop() {
      await stack.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
