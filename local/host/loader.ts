/**
 * Loads a function app the way the Azure Functions Node.js worker does (`startApp.ts`): read
 * `package.json`, glob its `main`, require every matching file while `@azure/functions-core` is
 * provided, and keep what the files registered. Then ask the programming model for its
 * capabilities, which also locks `app.setup()` as in Azure.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { isAbsolute, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { AppRegistry, withCoreApi } from './core-api';
import type { RpcLogLevel } from './core-types';
import { HostError } from './errors';
import { globFiles } from './glob';

/** The capabilities the real worker announces before the library adds its own. */
export const WORKER_CAPABILITIES: Readonly<Record<string, string>> = {
  RawHttpBodyBytes: 'true',
  RpcHttpTriggerMetadataRemoved: 'true',
  RpcHttpBodyOnly: 'true',
  IgnoreEmptyValuedRpcHttpHeaders: 'true',
  UseNullableValueDictionaryForHttp: 'true',
  WorkerStatus: 'true',
  TypedDataCollection: 'true',
  HandlesWorkerTerminateMessage: 'true',
};

export interface LoadedApp {
  registry: AppRegistry;
  /** Entry point files, relative to the app root. */
  files: string[];
  capabilities: Record<string, string>;
  /** Forgets the modules this app loaded, so a later host in this process loads them afresh. */
  unload(): void;
}

export interface LoadOptions {
  main?: string;
  systemLog: (level: RpcLogLevel, message: string, err?: unknown) => void;
}

interface PackageJson {
  main?: unknown;
  type?: unknown;
}

export async function loadApp(appRoot: string, options: LoadOptions): Promise<LoadedApp> {
  const root = resolve(appRoot);
  const pkgFile = join(root, 'package.json');
  if (!existsSync(pkgFile)) throw HostError.appNotFound(root, 'package.json');
  if (!existsSync(join(root, 'host.json'))) throw HostError.appNotFound(root, 'host.json');
  const pkg = JSON.parse(readFileSync(pkgFile, 'utf8')) as PackageJson;
  const main = options.main ?? (typeof pkg.main === 'string' ? pkg.main : undefined);
  if (!main) throw HostError.noEntryPoint(root, '(package.json has no "main")');
  const files = isAbsolute(main) ? [main] : globFiles(main, root);
  if (files.length === 0) throw HostError.noEntryPoint(root, main);

  const registry = new AppRegistry((level, message) => options.systemLog(level, message));
  const appRequire = createRequire(pkgFile);
  let loaded: string[] = [];

  await withCoreApi(registry.createCoreApi(), async () => {
    // Every app module runs afresh for each host, even while another host of the same app is
    // alive in this process: a cached module would not register its functions again. That
    // includes @azure/functions, which keeps the core API it saw first in module state.
    for (const k of appModules) delete require.cache[k];
    forget(appRequire, '@azure/functions');
    const before = new Set(Object.keys(require.cache));
    try {
      await loadFiles();
    } finally {
      loaded = Object.keys(require.cache).filter((k) => !before.has(k));
      for (const k of loaded) appModules.add(k);
    }
  });

  async function loadFiles(): Promise<void> {
    for (const file of files) {
      const path = isAbsolute(file) ? file : join(root, file);
      options.systemLog('debug', `Loading entry point file "${file}"`);
      try {
        if (isESModule(path, pkg)) {
          await import(pathToFileURL(path).href);
        } else {
          createRequire(path)(path);
        }
      } catch (err) {
        // The worker logs and goes on with whatever registered; so do we, loudly.
        options.systemLog('error', `Worker was unable to load entry point "${file}": ${(err as Error)?.message ?? String(err)}`, err);
      }
    }
  }

  let capabilities: Record<string, string> = { ...WORKER_CAPABILITIES };
  const model = registry.programmingModel;
  if (model?.getCapabilities) {
    capabilities = await withCoreApi(registry.createCoreApi(), () => model.getCapabilities!({ ...WORKER_CAPABILITIES }));
  }
  registry.startupDone = true;

  return {
    registry,
    files,
    capabilities,
    unload() {
      for (const k of loaded) delete require.cache[k];
    },
  };
}

/** Modules some app load brought in: dropped from the cache before every load. */
const appModules = new Set<string>();

function forget(req: NodeJS.Require, id: string): void {
  try {
    delete require.cache[req.resolve(id)];
  } catch {
    // not installed for this app: it cannot register anything anyway
  }
}

function isESModule(path: string, pkg: PackageJson): boolean {
  if (path.endsWith('.mjs')) return true;
  if (path.endsWith('.cjs')) return false;
  return pkg.type === 'module';
}
