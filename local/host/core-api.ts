/**
 * Provides the virtual module `@azure/functions-core` to the function app, as the Azure
 * Functions Node.js worker does (azure-functions-nodejs-worker `setupCoreModule.ts`): a proxy
 * on `Module.prototype.require` answers that one name and passes everything else through.
 *
 * Several hosts may live in one process (tests do that). The proxy answers with the core API of
 * the app being loaded at that moment (`withCoreApi` sets it, loads are serialized), and the
 * loader gives every app a fresh copy of `@azure/functions`, whose `tryGetCoreApiLazy()` caches
 * the object it got first; so each app stays bound to its own registry for its lifetime.
 */
import Module from 'node:module';
import type {
  Disposable,
  FunctionCallback,
  FunctionMetadata,
  HookCallback,
  ProgrammingModel,
  RpcLogCategory,
  RpcLogLevel,
} from './core-types';

export const CORE_MODULE_NAME = '@azure/functions-core';

/** Version of the worker contract we mirror (the worker's own `version`). */
const WORKER_VERSION = '3.10.1';
/** Reported as `hostVersion`; 4.x is what `@azure/functions` 4.x expects. */
const HOST_VERSION = '4.1000.0';

export interface RegisteredFunction {
  functionId: string;
  metadata: FunctionMetadata;
  callback: FunctionCallback;
}

export const HOOK_NAMES = ['preInvocation', 'postInvocation', 'appStart', 'appTerminate', 'log'] as const;
export type HookName = (typeof HOOK_NAMES)[number];

/** What an app registered while it loaded; one per host. */
export class AppRegistry {
  programmingModel: ProgrammingModel | undefined;
  readonly functions: RegisteredFunction[] = [];
  readonly hooks: Record<HookName, HookCallback[]> = {
    preInvocation: [],
    postInvocation: [],
    appStart: [],
    appTerminate: [],
    log: [],
  };
  /** Shared by every hook of the app (the worker's `appHookData`). */
  readonly appHookData: Record<string, unknown> = {};
  /** `hookData` of appStart/appTerminate only (the worker's `appLevelOnlyHookData`). */
  readonly appLevelOnlyHookData: Record<string, unknown> = {};
  /** Set once startup has finished: later registrations are refused, as in the worker. */
  startupDone = false;
  private nextId = 1;

  constructor(private readonly systemLog: (level: RpcLogLevel, message: string) => void) {}

  /** The object `require('@azure/functions-core')` returns to this app. */
  createCoreApi(): Record<string, unknown> {
    const registry = this;
    return {
      version: WORKER_VERSION,
      get hostVersion() {
        return HOST_VERSION;
      },
      setProgrammingModel(model: ProgrammingModel): void {
        registry.programmingModel = model;
      },
      getProgrammingModel(): ProgrammingModel | undefined {
        return registry.programmingModel;
      },
      registerFunction(metadata: FunctionMetadata, callback: FunctionCallback): Disposable {
        return registry.registerFunction(metadata, callback);
      },
      registerHook(hookName: string, callback: HookCallback): Disposable {
        return registry.registerHook(hookName, callback);
      },
      log(level: RpcLogLevel, _category: RpcLogCategory, message: string): void {
        registry.systemLog(level, message);
      },
      Disposable: CoreDisposable,
    };
  }

  registerFunction(metadata: FunctionMetadata, callback: FunctionCallback): Disposable {
    if (this.startupDone) throw new Error('A function can only be registered during app startup.');
    if (!metadata || typeof metadata.name !== 'string' || !metadata.bindings) {
      throw new Error('registerFunction needs metadata with a name and bindings.');
    }
    const lower = metadata.name.toLowerCase();
    if (this.functions.some((f) => f.metadata.name.toLowerCase() === lower)) {
      throw new Error(`A function named "${metadata.name}" is already registered; function names must be unique (case-insensitive).`);
    }
    const entry: RegisteredFunction = { functionId: metadata.functionId ?? String(this.nextId++), metadata, callback };
    this.functions.push(entry);
    return new CoreDisposable(() => {
      if (this.startupDone) throw new Error('A function can only be disposed during app startup.');
      const i = this.functions.indexOf(entry);
      if (i >= 0) this.functions.splice(i, 1);
    });
  }

  registerHook(hookName: string, callback: HookCallback): Disposable {
    if (!(HOOK_NAMES as readonly string[]).includes(hookName)) {
      // The worker throws a RangeError for unknown hook names; the library relies on its name.
      const err = new RangeError(`Unrecognized hook "${hookName}"`);
      (err as RangeError & { isAzureFunctionsSystemError: boolean }).isAzureFunctionsSystemError = true;
      throw err;
    }
    if (typeof callback !== 'function') throw new TypeError(`The "${hookName}" hook callback must be a function.`);
    const list = this.hooks[hookName as HookName];
    list.push(callback);
    return new CoreDisposable(() => {
      const i = list.indexOf(callback);
      if (i >= 0) list.splice(i, 1);
    });
  }
}

class CoreDisposable implements Disposable {
  #callOnDispose: (() => void) | undefined;
  constructor(callOnDispose: () => void) {
    this.#callOnDispose = callOnDispose;
  }
  static from(...items: Disposable[]): CoreDisposable {
    return new CoreDisposable(() => items.forEach((i) => i.dispose()));
  }
  dispose(): void {
    const fn = this.#callOnDispose;
    this.#callOnDispose = undefined;
    fn?.();
  }
}

let current: Record<string, unknown> | undefined;
let installed = false;
let queue: Promise<unknown> = Promise.resolve();

function install(): void {
  if (installed) return;
  installed = true;
  const proto = Module.prototype as unknown as { require: (id: string) => unknown };
  proto.require = new Proxy(proto.require, {
    apply(target, thisArg, args: unknown[]) {
      if (args[0] === CORE_MODULE_NAME) {
        if (!current) {
          // Outside a host load: behave as if the module did not exist, which puts
          // `@azure/functions` into its documented "test mode".
          const err = new Error(`Cannot find module '${CORE_MODULE_NAME}'`) as Error & { code: string };
          err.code = 'MODULE_NOT_FOUND';
          throw err;
        }
        return current;
      }
      return Reflect.apply(target, thisArg, args);
    },
  });
}

/**
 * Runs `load` with `require('@azure/functions-core')` answering `coreApi`. Loads of different
 * hosts in one process run one after another.
 */
export function withCoreApi<T>(coreApi: Record<string, unknown>, load: () => Promise<T>): Promise<T> {
  install();
  const run = async (): Promise<T> => {
    current = coreApi;
    try {
      return await load();
    } finally {
      current = undefined;
    }
  };
  const result = queue.then(run, run);
  queue = result.catch(() => undefined);
  return result;
}
