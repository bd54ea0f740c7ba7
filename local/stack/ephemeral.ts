/**
 * The local stack on free ports in a temporary directory, with generated keys: what the
 * integration tests and the benchmarks run against, beside a developer's `npm start`.
 * Requires a build (the children run from dist/).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectRoot } from '../settings';
import { LocalStack, type StackEndpoints } from './stack';

export interface EphemeralStack extends StackEndpoints {
  stack: LocalStack;
  dataDir: string;
  functionKey: string;
  masterKey: string;
  /** Output lines of all children, prefixed `[name] `. */
  logs: string[];
  stop(): Promise<void>;
}

export interface EphemeralStackOptions {
  settings?: Record<string, string>;
  servicebusConfig?: string;
  /** Azurite writes every acknowledged change to disk before answering (local/stack/azurite-durable.ts). */
  durableAzurite?: boolean;
  /** Also called with every output line. */
  onLine?: (name: string, line: string) => void;
}

/** A TCP port that was free a moment ago (the OS picked it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export async function freePorts(n: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < n) ports.add(await freePort());
  return [...ports];
}

export async function startEphemeralStack(options: EphemeralStackOptions = {}): Promise<EphemeralStack> {
  const dataDir = mkdtempSync(join(tmpdir(), 'ferry-stack-'));
  const [blob, queue, table, servicebus, host] = (await freePorts(5)) as [number, number, number, number, number];
  const functionKey = randomBytes(24).toString('base64url');
  const masterKey = randomBytes(32).toString('base64');
  const logs: string[] = [];
  const stack = new LocalStack({
    root: projectRoot(),
    dataDir,
    ports: { blob, queue, table, servicebus, host },
    functionKey,
    masterKey,
    ...(options.servicebusConfig ? { servicebusConfig: options.servicebusConfig } : {}),
    ...(options.settings ? { settings: options.settings } : {}),
    ...(options.durableAzurite ? { durableAzurite: true } : {}),
    sink: (name, line) => {
      logs.push(`[${name}] ${line}`);
      options.onLine?.(name, line);
    },
  });
  try {
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
  } catch (err) {
    rmSync(dataDir, { recursive: true, force: true });
    throw err;
  }
}
