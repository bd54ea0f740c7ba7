/**
 * One invocation, step for step as the Node.js worker runs it (azure-functions-nodejs-worker
 * `InvocationHandler.ts`): the programming model builds the arguments from the RPC request,
 * preInvocation hooks may swap inputs and handler, the handler runs, postInvocation hooks may
 * swap the result or clear the error, and the model converts the result back to RPC data.
 * The host's part is the RPC request going in, the log line coming out, and knowing what is
 * still running when it stops.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { AppRegistry, HookName, RegisteredFunction } from './core-api';
import type {
  CoreInvocationContext,
  FunctionCallback,
  InvocationState,
  RpcInvocationRequest,
  RpcInvocationResponse,
  RpcLogCategory,
  RpcLogLevel,
  RpcParameterBinding,
  RpcTypedData,
} from './core-types';

export interface InvocationInput {
  inputData: RpcParameterBinding[];
  triggerMetadata?: Record<string, RpcTypedData>;
  /** W3C traceparent to pass on; a new one otherwise. */
  traceParent?: string;
  /** Chosen by the caller when it must know the id up front (HTTP streaming); a new UUID otherwise. */
  invocationId?: string;
}

export type InvocationOutcome =
  | { ok: true; invocationId: string; response: RpcInvocationResponse; durationMs: number }
  | { ok: false; invocationId: string; error: unknown; durationMs: number };

/** Logs below this level are dropped. */
const PINO_LEVEL: Record<RpcLogLevel, 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | undefined> = {
  trace: 'trace',
  debug: 'debug',
  information: 'info',
  warning: 'warn',
  error: 'error',
  critical: 'fatal',
  none: undefined,
};

export class Invoker {
  private readonly running = new Set<Promise<unknown>>();
  private inLogHook = false;

  constructor(
    private readonly registry: AppRegistry,
    private readonly logger: Logger,
    /** host.json functionTimeout: past it the invocation counts as failed (the handler cannot be stopped). */
    private readonly timeoutMs?: number,
  ) {}

  get inFlight(): number {
    return this.running.size;
  }

  /** Resolves once nothing runs, or after `timeoutMs`; true when everything finished. */
  async drain(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.running.size > 0) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.allSettled([...this.running]),
        new Promise((r) => {
          timer = setTimeout(r, left);
        }),
      ]);
      clearTimeout(timer);
    }
    return true;
  }

  /** Runs `work` as tracked in-flight work (stop waits for it). */
  track<T>(work: Promise<T>): Promise<T> {
    this.running.add(work);
    const done = (): void => {
      this.running.delete(work);
    };
    work.then(done, done);
    return work;
  }

  invoke(fn: RegisteredFunction, input: InvocationInput, reason: string): Promise<InvocationOutcome> {
    return this.track(this.run(fn, input, reason));
  }

  private async run(fn: RegisteredFunction, input: InvocationInput, reason: string): Promise<InvocationOutcome> {
    const invocationId = input.invocationId ?? randomUUID();
    const name = fn.metadata.name;
    const log = this.logger.child({ fn: name, invocationId });
    const started = process.hrtime.bigint();
    const elapsed = (): number => Number((process.hrtime.bigint() - started) / 1_000_000n);
    log.debug(`Executing 'Functions.${name}' (Reason='${reason}', Id=${invocationId})`);

    const request: RpcInvocationRequest = {
      invocationId,
      functionId: fn.functionId,
      inputData: input.inputData,
      triggerMetadata: input.triggerMetadata ?? {},
      traceContext: { traceParent: input.traceParent ?? newTraceParent(), traceState: '', attributes: {} },
    };
    let invocationContext: unknown;
    const hookData: Record<string, unknown> = {};
    const coreCtx: CoreInvocationContext & { state?: InvocationState } = {
      invocationId,
      request,
      metadata: { ...fn.metadata, functionId: fn.functionId },
      state: undefined,
      log: (level: RpcLogLevel, category: RpcLogCategory, message: string) =>
        this.emitLog(log, level, category, message, { hookData, invocationContext }),
    };

    try {
      const model = this.registry.programmingModel;
      if (!model) throw new Error('The app registered functions without a programming model.');
      const invocModel = model.getInvocationModel(coreCtx);
      const args = await invocModel.getArguments();
      invocationContext = args.context;
      const registry = this.registry;

      const pre = {
        get hookData() {
          return hookData;
        },
        get appHookData() {
          return registry.appHookData;
        },
        get invocationContext() {
          return invocationContext;
        },
        functionCallback: fn.callback as FunctionCallback,
        inputs: args.inputs,
      };
      coreCtx.state = 'preInvocationHooks';
      try {
        await this.runHooks('preInvocation', pre);
      } finally {
        coreCtx.state = undefined;
      }

      const post = {
        get hookData() {
          return hookData;
        },
        get appHookData() {
          return registry.appHookData;
        },
        get invocationContext() {
          return invocationContext;
        },
        inputs: pre.inputs,
        result: null as unknown,
        error: null as unknown,
      };
      coreCtx.state = 'invocation';
      try {
        post.result = await this.withTimeout(invocModel.invokeFunction(invocationContext, pre.inputs, pre.functionCallback), name, invocationId);
      } catch (err) {
        post.error = err ?? new Error('The function threw a null or undefined value.');
      } finally {
        coreCtx.state = undefined;
      }

      coreCtx.state = 'postInvocationHooks';
      try {
        await this.runHooks('postInvocation', post);
      } finally {
        coreCtx.state = undefined;
      }
      // As in the worker: any error still set after the hooks fails the invocation.
      if (post.error !== null && post.error !== undefined) throw post.error;
      const response = await invocModel.getResponse(invocationContext, post.result);
      const durationMs = elapsed();
      log.info({ durationMs }, `Executed 'Functions.${name}' (Succeeded, Id=${invocationId}, Duration=${durationMs}ms)`);
      return { ok: true, invocationId, response, durationMs };
    } catch (error) {
      const durationMs = elapsed();
      log.error({ durationMs, err: error }, `Executed 'Functions.${name}' (Failed, Id=${invocationId}, Duration=${durationMs}ms)`);
      return { ok: false, invocationId, error, durationMs };
    }
  }

  /**
   * As in Azure, an invocation running past functionTimeout fails ("Timeout value of ...
   * exceeded"). Azure then restarts the worker; here the handler's promise is left to settle
   * on its own, unobserved.
   */
  private withTimeout<T>(work: Promise<T>, name: string, invocationId: string): Promise<T> {
    const ms = this.timeoutMs;
    if (ms === undefined || ms <= 0) return work;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new FunctionTimeoutError(name, invocationId, ms)), ms);
    });
    return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
  }

  /** Runs one kind of hook in registration order; a throwing hook fails the invocation. */
  async runHooks(name: HookName, context: Record<string, unknown>): Promise<void> {
    for (const hook of [...this.registry.hooks[name]]) await hook(context);
  }

  /** Routes a log line from the app to the host logger, through the app's log hooks. */
  emitLog(
    log: Logger,
    level: RpcLogLevel,
    category: RpcLogCategory,
    message: string,
    invocation?: { hookData: Record<string, unknown>; invocationContext: unknown },
  ): void {
    const hooks = this.registry.hooks.log;
    if (hooks.length > 0 && !this.inLogHook) {
      const registry = this.registry;
      const ctx = {
        level,
        message,
        get category() {
          return category;
        },
        get hookData() {
          return invocation?.hookData ?? {};
        },
        get appHookData() {
          return registry.appHookData;
        },
        get invocationContext() {
          return invocation?.invocationContext;
        },
      };
      this.inLogHook = true;
      try {
        for (const hook of hooks) hook(ctx);
        level = ctx.level;
        message = ctx.message;
      } catch (err) {
        log.warn({ err }, 'A log hook threw; the log line is written unchanged.');
      } finally {
        this.inLogHook = false;
      }
    }
    const method = PINO_LEVEL[level];
    if (!method) return;
    if (category === 'user') log[method](message);
    else log[method]({ category }, message);
  }
}

export class FunctionTimeoutError extends Error {
  override readonly name = 'FunctionTimeoutError';
  readonly code = 'FunctionTimeout';
  constructor(fn: string, invocationId: string, ms: number) {
    super(`Timeout value of ${formatSpan(ms)} exceeded by function 'Functions.${fn}' (Id: '${invocationId}'). Initiating cancellation.`);
  }
}

function formatSpan(ms: number): string {
  const s = Math.floor(ms / 1000);
  const pad = (n: number): string => String(n).padStart(2, '0');
  const frac = ms % 1000 ? `.${String(ms % 1000).padStart(3, '0')}` : '';
  return `${pad(Math.floor(s / 3600))}:${pad(Math.floor(s / 60) % 60)}:${pad(s % 60)}${frac}`;
}

function newTraceParent(): string {
  return `00-${randomBytes(16).toString('hex')}-${randomBytes(8).toString('hex')}-00`;
}
