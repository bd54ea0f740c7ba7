/**
 * Shared by the host tests: the compiled test app, a host on a free port with a captured log,
 * and small HTTP helpers.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, statSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Writable } from 'node:stream';
import { createLogger } from '../../../local/log';
import { startFunctionsHost, type FunctionsHost, type HostOptions } from '../../../local/host';

export const ROOT = resolve(__dirname, '../../..');
export const APP_ROOT = join(ROOT, 'test/fixtures/host-app');
export const APP_DIST = join(ROOT, 'dist/test/fixtures/host-app');
export const FUNCTION_KEY = 'test-function-key-0123456789';
export const ADMIN_KEY = 'test-admin-key-9876543210';

function staleSources(dir: string, rel = ''): string[] {
  const stale: string[] = [];
  for (const e of readdirSync(join(dir, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) stale.push(...staleSources(dir, r));
    else if (e.name.endsWith('.ts')) {
      const js = join(APP_DIST, r.replace(/\.ts$/, '.js'));
      if (!existsSync(js) || statSync(js).mtimeMs < statSync(join(dir, r)).mtimeMs) stale.push(r);
    }
  }
  return stale;
}

/** Compiles the project when some of the test app's JavaScript is missing or older than its source. */
export function ensureBuilt(): void {
  if (staleSources(APP_ROOT).length === 0) return;
  try {
    execFileSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', join(ROOT, 'tsconfig.json')], { cwd: ROOT, stdio: 'pipe' });
  } catch {
    // tsc emits despite type errors elsewhere in the tree; the check below decides.
  }
  // An unchanged source touched later is not re-emitted by incremental tsc: only missing output is fatal.
  const missing = staleSources(APP_ROOT).filter((r) => !existsSync(join(APP_DIST, r.replace(/\.ts$/, '.js'))));
  if (missing.length > 0) throw new Error(`The test app did not compile (${missing.join(', ')}); run npm run build.`);
}

/** Log lines the host wrote (JSON objects). */
export class LogCapture {
  readonly lines: Record<string, unknown>[] = [];
  readonly stream = new Writable({
    write: (chunk: Buffer, _enc, cb) => {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (line.trim()) this.lines.push(JSON.parse(line) as Record<string, unknown>);
      }
      cb();
    },
  });
  messages(): string[] {
    return this.lines.map((l) => String(l.msg));
  }
  text(): string {
    return this.lines.map((l) => JSON.stringify(l)).join('\n');
  }
}

export interface TestHost {
  host: FunctionsHost;
  log: LogCapture;
  api: string;
}

export async function startTestHost(options: Partial<HostOptions> & { mainFiles?: string } = {}): Promise<TestHost> {
  ensureBuilt();
  const log = new LogCapture();
  const { mainFiles, ...rest } = options;
  const host = await startFunctionsHost({
    appRoot: APP_ROOT,
    main: mainFiles ? `../../../dist/test/fixtures/host-app/${mainFiles}` : undefined,
    port: 0,
    functionKey: FUNCTION_KEY,
    adminKey: ADMIN_KEY,
    settings: {},
    logger: createLogger('host', { format: 'json', level: 'debug', stream: log.stream }),
    ...rest,
  });
  return { host, log, api: `${host.url}/api` };
}

export async function getJson(url: string, init?: RequestInit): Promise<{ status: number; body: any; headers: Headers }> {
  const res = await fetch(url, init);
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.status, body, headers: res.headers };
}
