/**
 * App settings and local secrets, resolved the way Azure Functions resolves them:
 * defaults < `local.settings.json` `Values` < the process environment.
 *
 * Local-only secrets (the function key, the master key) are generated once into the data
 * directory with mode 0600 when the environment does not provide them.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

/** The repository root (two levels above `dist/local/` or `local/`). */
export function projectRoot(): string {
  let dir = resolve(__dirname);
  for (let i = 0; i < 5; i++) {
    if (existsSync(join(dir, 'host.json')) && existsSync(join(dir, 'package.json'))) return dir;
    dir = resolve(dir, '..');
  }
  return process.cwd();
}

/** `FERRY_DATA_DIR`, default `<root>/local/.data`. */
export function dataDir(root = projectRoot()): string {
  return resolve(process.env.FERRY_DATA_DIR ?? join(root, 'local', '.data'));
}

/** `local.settings.json` `Values` overlaid by the environment (the environment wins). */
export function loadAppSettings(root = projectRoot(), env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const settings: Record<string, string> = {};
  const file = join(root, 'local.settings.json');
  if (existsSync(file)) {
    const parsed = JSON.parse(readFileSync(file, 'utf8')) as { Values?: Record<string, unknown> };
    for (const [k, v] of Object.entries(parsed.Values ?? {})) if (typeof v === 'string') settings[k] = v;
  }
  for (const [k, v] of Object.entries(env)) if (typeof v === 'string') settings[k] = v;
  return settings;
}

/** Reads a secret file, or creates it (mode 0600) from `make()` when missing. */
export function readOrCreateSecret(file: string, make: () => string): string {
  if (existsSync(file)) return readFileSync(file, 'utf8').trim();
  mkdirSync(join(file, '..'), { recursive: true });
  const value = make();
  writeFileSync(file, value + '\n', { mode: 0o600, flag: 'wx' });
  chmodSync(file, 0o600);
  return value;
}

/** `FERRY_FUNCTION_KEY`, or the key generated once into `<dataDir>/function-key`. */
export function functionKey(dir = dataDir(), env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env.FERRY_FUNCTION_KEY;
  if (fromEnv) return fromEnv;
  return readOrCreateSecret(join(dir, 'function-key'), () => randomBytes(32).toString('base64url'));
}

/** `FERRY_MASTER_KEY` (base64 of 32 bytes), or the key generated once into `<dataDir>/master-key`. */
export function masterKey(dir = dataDir(), env: NodeJS.ProcessEnv = process.env): Buffer {
  const b64 = env.FERRY_MASTER_KEY ?? readOrCreateSecret(join(dir, 'master-key'), () => randomBytes(32).toString('base64'));
  const key = Buffer.from(b64, 'base64');
  if (key.length !== 32) {
    throw new Error('FERRY_MASTER_KEY must be the base64 encoding of exactly 32 bytes; generate one with `openssl rand -base64 32`.');
  }
  return key;
}
