/**
 * Ferry's local functions host: loads a compiled Azure Functions (Node.js v4 model) app the way
 * the Azure runtime does and serves its HTTP, timer and Service Bus queue triggers, without
 * Azure Functions Core Tools.
 *
 * What differs from Azure is written where it happens; the main points: one process runs
 * host and functions (Azure runs the worker as a child process), HTTP bodies are buffered
 * (unless the app calls `app.setup({ enableHttpStream: true })`, which is served as in Azure, through
 * the library's own proxy), timer schedule status is kept in memory,
 * and function keys come from the options instead of storage.
 */
import type { Logger } from 'pino';
import { createLogger } from '../log';
import type { RegisteredFunction } from './core-api';
import type { RpcBindingInfo } from './core-types';
import { HostError } from './errors';
import { readHostJson } from './host-json';
import { HttpFrontEnd, toHttpFunction, type HttpFunction } from './http/server';
import { Invoker } from './invoker';
import { loadApp } from './loader';
import { acquireSettlementServer, releaseSettlementServer, type SettlementServer } from './servicebus/settlement';
import { ServiceBusListener } from './servicebus/trigger';
import { TimerListener } from './timer/trigger';

export { HostError } from './errors';

export interface HostOptions {
  /** Directory with package.json (its `main` names the compiled functions) and host.json. */
  appRoot: string;
  /** Overrides package.json `main` (a glob relative to appRoot). */
  main?: string;
  /** 0 = any free port. Default 7071. */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** Accepted for authLevel 'function'. */
  functionKey: string;
  /** The master key, the only key accepted for authLevel 'admin' (also good for 'function'). Default: functionKey. */
  adminKey?: string;
  /** App settings; exported into process.env for the functions, as Azure does. */
  settings: Record<string, string>;
  logger?: Logger;
  /** Request bodies above this are refused with 413. Default FERRY_HOST_MAX_BODY_BYTES or 100 MiB (Azure's limit). */
  maxRequestBodyBytes?: number;
}

export interface FunctionInfo {
  name: string;
  /** The trigger binding type: httpTrigger, timerTrigger, serviceBusTrigger. */
  trigger: string;
  /** httpTrigger: the allowed methods (undefined = all), full route and auth level. */
  methods?: string[];
  route?: string;
  authLevel?: string;
  /** timerTrigger: the schedule; serviceBusTrigger: the queue, or `topic/Subscriptions/sub`. */
  schedule?: string;
  entityPath?: string;
}

export interface FunctionsHost {
  port: number;
  /** http://127.0.0.1:PORT (no route prefix). */
  url: string;
  /** The route prefix from host.json (usually "api"). */
  routePrefix: string;
  functions: FunctionInfo[];
  /** Stops taking work, lets in-flight invocations finish (at most graceMs, default 10 s), then closes. */
  stop(options?: { graceMs?: number }): Promise<void>;
}

const DEFAULT_MAX_BODY = 100 * 1024 * 1024;

function maxBodyFromEnv(): number | undefined {
  const raw = process.env.FERRY_HOST_MAX_BODY_BYTES;
  if (!raw) return undefined;
  const n = Number(raw);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`FERRY_HOST_MAX_BODY_BYTES must be a positive integer, not "${raw}".`);
  return n;
}

function triggerOf(fn: RegisteredFunction): [string, RpcBindingInfo] | undefined {
  return Object.entries(fn.metadata.bindings).find(([, b]) => b.direction === 'in' && /trigger$/i.test(String(b.type ?? '')));
}

export async function startFunctionsHost(options: HostOptions): Promise<FunctionsHost> {
  const logger = options.logger ?? createLogger('host');
  const hostJson = readHostJson(options.appRoot);
  const restoreEnv = exportSettings(options.settings);
  const systemLogger = logger.child({ category: 'Host.Function.Console' });

  // The settlement service for SDK-type Service Bus bindings, before the functions load: the
  // worker finds it through process.argv (--host/--port), as in Azure.
  let settlement: SettlementServer;
  try {
    settlement = await acquireSettlementServer();
  } catch (err) {
    restoreEnv();
    throw err;
  }

  let app;
  try {
    app = await loadApp(options.appRoot, {
      main: options.main,
      systemLog: (level, message, err) => {
        const lvl = level === 'warning' ? 'warn' : level === 'information' ? 'info' : level === 'critical' ? 'fatal' : level === 'none' ? undefined : level;
        if (lvl) systemLogger[lvl](err ? { err } : {}, message);
      },
    });
  } catch (err) {
    await releaseSettlementServer(settlement);
    restoreEnv();
    throw err;
  }
  const { registry } = app;
  const invoker = new Invoker(registry, logger, hostJson.functionTimeoutMs);

  const cleanup = async (): Promise<void> => {
    app.unload();
    restoreEnv();
    await releaseSettlementServer(settlement);
  };

  const http: HttpFunction[] = [];
  const timers: TimerListener[] = [];
  const serviceBus: ServiceBusListener[] = [];
  const infos: FunctionInfo[] = [];
  let front: HttpFrontEnd;
  try {
    if (app.capabilities.HttpUri) logger.info(`HTTP streaming enabled by the app (library proxy at ${app.capabilities.HttpUri})`);
    for (const fn of registry.functions) {
      const trigger = triggerOf(fn);
      const name = fn.metadata.name;
      if (!trigger) {
        logger.error({ fn: name }, `Function '${name}' has no trigger binding; it is not loaded.`);
        continue;
      }
      const [triggerName, binding] = trigger;
      const type = String(binding.type);
      const unserved = Object.entries(fn.metadata.bindings).filter(
        ([n, b]) => n !== triggerName && !(b.direction === 'out' && String(b.type).toLowerCase() === 'http'),
      );
      if (unserved.length > 0) {
        const list = unserved.map(([n, b]) => `${n} (${String(b.type)}, ${String(b.direction)})`).join(', ');
        logger.warn({ fn: name }, `Function '${name}' declares bindings the local host does not serve: ${list}; extra inputs arrive empty and outputs are dropped.`);
      }
      switch (type.toLowerCase()) {
        case 'httptrigger': {
          const f = toHttpFunction(fn, triggerName, binding);
          http.push(f);
          const route = `/${[hostJson.routePrefix, f.route.template].filter((s) => s !== '').join('/')}`;
          infos.push({ name, trigger: type, methods: f.methods, route, authLevel: f.authLevel });
          break;
        }
        case 'timertrigger': {
          const t = new TimerListener(fn, triggerName, binding, options.settings, invoker, logger);
          timers.push(t);
          infos.push({ name, trigger: type, schedule: t.describe() });
          break;
        }
        case 'servicebustrigger': {
          const l = new ServiceBusListener(fn, triggerName, binding, options.settings, hostJson.serviceBus, invoker, logger, settlement);
          serviceBus.push(l);
          infos.push({ name, trigger: type, entityPath: l.entityPath });
          break;
        }
        default:
          // Azure fails just that function ("binding type not registered"); the rest run.
          logger.error({ fn: name }, HostError.unsupportedTrigger(name, type).message);
      }
    }
    if (registry.functions.length === 0) logger.warn(`No job functions found in ${app.files.join(', ')}; the files loaded but registered nothing.`);

    front = new HttpFrontEnd(http, {
      routePrefix: hostJson.routePrefix,
      streamUri: app.capabilities.HttpUri,
      functionKey: options.functionKey,
      adminKey: options.adminKey ?? options.functionKey,
      maxBodyBytes: options.maxRequestBodyBytes ?? maxBodyFromEnv() ?? DEFAULT_MAX_BODY,
      invoker,
      logger,
    });
    await invoker.runHooks('appStart', appHookContext(registry, { functionAppDirectory: options.appRoot }));
  } catch (err) {
    await cleanup();
    throw err;
  }

  let port: number;
  try {
    port = await front.listen(options.port ?? 7071, options.host ?? '127.0.0.1');
    for (const t of timers) t.start();
    await Promise.all(serviceBus.map((l) => l.start()));
  } catch (err) {
    if ((err as NodeJS.ErrnoException)?.code === 'EADDRINUSE') {
      err = new HostError('PortInUse', `Port ${options.port ?? 7071} is in use; stop what listens there or set FERRY_HOST_PORT (port option) to another port.`, 500, { cause: err });
    }
    timers.forEach((t) => t.stop());
    await Promise.allSettled(serviceBus.map((l) => l.close()));
    await front.stopAccepting().catch(() => undefined);
    await cleanup();
    throw err;
  }

  let stopping: Promise<void> | undefined;
  const stop = async (graceMs: number): Promise<void> => {
    // Stop taking new work everywhere first...
    const closed = front.stopAccepting();
    timers.forEach((t) => t.stop());
    await Promise.allSettled(serviceBus.map((l) => l.stopReceiving()));
    // ...then let what runs finish, bounded.
    logger.debug({ inFlight: invoker.inFlight }, 'Stopping: no new work taken; waiting for invocations in flight');
    const drained = await invoker.drain(graceMs);
    if (!drained) logger.warn({ inFlight: invoker.inFlight }, `Stopping with ${invoker.inFlight} invocation(s) still running after ${graceMs} ms.`);
    front.closeAll();
    await closed;
    logger.debug('Stopping: HTTP closed; closing Service Bus receivers');
    await Promise.allSettled(serviceBus.map((l) => l.close()));
    logger.debug('Stopping: Service Bus closed');
    try {
      await invoker.runHooks('appTerminate', appHookContext(registry, {}));
    } catch (err) {
      logger.error({ err }, 'An appTerminate hook failed');
    }
    await cleanup();
  };

  return {
    port,
    url: `http://127.0.0.1:${port}`,
    routePrefix: hostJson.routePrefix,
    functions: infos,
    stop(opts = {}) {
      stopping ??= stop(opts.graceMs ?? 10_000);
      return stopping;
    },
  };
}

function appHookContext(registry: RegisteredFunctionRegistry, extra: Record<string, unknown>): Record<string, unknown> {
  return {
    get hookData() {
      return registry.appLevelOnlyHookData;
    },
    get appHookData() {
      return registry.appHookData;
    },
    ...extra,
  };
}

type RegisteredFunctionRegistry = { appLevelOnlyHookData: Record<string, unknown>; appHookData: Record<string, unknown> };

/** Puts the app settings into process.env (as Azure does); returns how to undo it. */
function exportSettings(settings: Record<string, string>): () => void {
  const previous = new Map<string, string | undefined>();
  for (const [k, v] of Object.entries(settings)) {
    if (process.env[k] === v) continue;
    previous.set(k, process.env[k]);
    process.env[k] = v;
  }
  return () => {
    for (const [k, v] of previous) {
      if (process.env[k] !== settings[k]) continue;
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    previous.clear();
  };
}
