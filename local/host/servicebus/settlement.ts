/**
 * The Settlement gRPC service the Functions host runs for SDK-type Service Bus bindings
 * (`sdkBinding: true`, @azure/functions-extensions-servicebus), as the Service Bus extension's
 * `SettlementService` does in Azure: the worker's `ServiceBusMessageActions` call it with a
 * message's lock token (or a session id) and the host settles through the receiver that
 * received the message.
 *
 * One server per process: the extension builds its client once (a singleton) from
 * `--host/--port/--functions-grpc-max-message-length` on the worker's command line, which here
 * is this process's `process.argv`. Several hosts in one process (tests) therefore share the
 * server; each registers the messages it hands to a function under their lock tokens, and the
 * server routes a call to whoever registered the token. The server lives while at least one
 * host holds it; a later start binds the same port again when it can, so a client built
 * earlier still reaches it.
 *
 * As in Azure: a lock token is known only while the invocation it was delivered to runs
 * (settling afterwards fails with FAILED_PRECONDITION "LockToken ... not found."), a session id
 * only while an invocation of that session runs; errors of the settlement itself come back as
 * UNKNOWN with the error text.
 */
import { dirname, join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { DeadLetterOptions, ServiceBusReceivedMessage, ServiceBusReceiver, ServiceBusSessionReceiver } from '@azure/service-bus';
import rhea from 'rhea';

/** The value the Functions host passes (int.MaxValue: no practical limit). */
export const GRPC_MAX_MESSAGE_LENGTH = 2_147_483_647;
const HOST = '127.0.0.1';

/** A message handed to a function, until its invocation ends. */
export interface InFlightMessage {
  message: ServiceBusReceivedMessage;
  receiver: ServiceBusReceiver | ServiceBusSessionReceiver;
  /** Set once a settlement (complete, abandon, dead-letter, defer) succeeded. */
  settled?: 'completed' | 'abandoned' | 'deadlettered' | 'deferred';
}

/** A session whose message is being processed, until that invocation ends. */
export interface InFlightSession {
  receiver: ServiceBusSessionReceiver;
  /** ReleaseSession was called: the listener closes the session once the invocation ends. */
  releaseRequested: boolean;
}

type Callback = grpc.sendUnaryData<unknown>;
type Call = grpc.ServerUnaryCall<Record<string, unknown>, unknown>;

class GrpcError extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
  ) {
    super(message);
  }
}

export class SettlementServer {
  private readonly messages = new Map<string, InFlightMessage>();
  /** Per session id, the sessions in invocation (normally one; the newest is used). */
  private readonly sessions = new Map<string, InFlightSession[]>();

  constructor(
    private readonly server: grpc.Server,
    readonly port: number,
  ) {}

  get address(): string {
    return `${HOST}:${this.port}`;
  }

  /** Registers a message for the duration of its invocation; returns the unregister function. */
  registerMessage(entry: InFlightMessage): () => void {
    const token = normalizeToken(entry.message.lockToken);
    if (!token) throw new Error('A message received in peekLock mode has no lock token.');
    this.messages.set(token, entry);
    return () => {
      if (this.messages.get(token) === entry) this.messages.delete(token);
    };
  }

  registerSession(sessionId: string, entry: InFlightSession): () => void {
    const list = this.sessions.get(sessionId) ?? [];
    list.push(entry);
    this.sessions.set(sessionId, list);
    return () => {
      const l = this.sessions.get(sessionId);
      if (!l) return;
      const i = l.indexOf(entry);
      if (i >= 0) l.splice(i, 1);
      if (l.length === 0) this.sessions.delete(sessionId);
    };
  }

  /** The gRPC handlers, by method name (camel case, as @grpc/proto-loader names them). */
  handlers(): grpc.UntypedServiceImplementation {
    const unary =
      (fn: (req: Record<string, unknown>) => Promise<unknown>) =>
      (call: Call, callback: Callback): void => {
        fn(call.request).then(
          (res) => callback(null, res),
          (err: unknown) => {
            if (err instanceof GrpcError) callback({ code: err.code, details: err.message });
            else callback({ code: grpc.status.UNKNOWN, details: errorText(err) });
          },
        );
      };
    return {
      complete: unary(async (req) => {
        await this.settle(req, 'completed', (e) => e.receiver.completeMessage(e.message));
        return {};
      }),
      abandon: unary(async (req) => {
        const props = decodePropertiesToModify(req.propertiesToModify);
        await this.settle(req, 'abandoned', (e) => e.receiver.abandonMessage(e.message, props));
        return {};
      }),
      deadletter: unary(async (req) => {
        const props = decodePropertiesToModify(req.propertiesToModify);
        const reason = stringValue(req.deadletterReason);
        const description = stringValue(req.deadletterErrorDescription);
        const options: Record<string, number | boolean | string | Date | null> = { ...(props ?? {}) };
        if (reason !== undefined) options.deadLetterReason = reason;
        if (description !== undefined) options.deadLetterErrorDescription = description;
        await this.settle(req, 'deadlettered', (e) => e.receiver.deadLetterMessage(e.message, options as DeadLetterOptions & typeof options));
        return {};
      }),
      defer: unary(async (req) => {
        const props = decodePropertiesToModify(req.propertiesToModify);
        await this.settle(req, 'deferred', (e) => e.receiver.deferMessage(e.message, props));
        return {};
      }),
      renewMessageLock: unary(async (req) => {
        const e = this.lookup(req);
        await run(() => e.receiver.renewMessageLock(e.message));
        return {};
      }),
      getSessionState: unary(async (req) => {
        const s = this.session(req);
        const state: unknown = await run(() => s.receiver.getSessionState());
        return { sessionState: stateBytes(state) };
      }),
      setSessionState: unary(async (req) => {
        const s = this.session(req);
        const bytes = Buffer.from((req.sessionState as Uint8Array | undefined) ?? []);
        await run(() => s.receiver.setSessionState(bytes));
        return {};
      }),
      releaseSession: unary(async (req) => {
        this.session(req).releaseRequested = true;
        return {};
      }),
      renewSessionLock: unary(async (req) => {
        const s = this.session(req);
        const until = await run(() => s.receiver.renewSessionLock());
        const ms = until.getTime();
        return { lockedUntil: { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1_000_000 } };
      }),
    };
  }

  private lookup(req: Record<string, unknown>): InFlightMessage {
    const token = String(req.locktoken ?? '');
    const e = this.messages.get(normalizeToken(token) ?? '');
    if (!e) throw new GrpcError(grpc.status.FAILED_PRECONDITION, `LockToken ${token} not found.`);
    return e;
  }

  private session(req: Record<string, unknown>): InFlightSession {
    const id = String(req.sessionId ?? '');
    const list = this.sessions.get(id);
    const s = list?.[list.length - 1];
    if (!s) throw new GrpcError(grpc.status.FAILED_PRECONDITION, `SessionId ${id} not found.`);
    return s;
  }

  private async settle(req: Record<string, unknown>, outcome: NonNullable<InFlightMessage['settled']>, op: (e: InFlightMessage) => Promise<void>): Promise<void> {
    const e = this.lookup(req);
    if (e.settled) {
      // The SDK would refuse too ("already settled"); say which way it went.
      throw new GrpcError(grpc.status.UNKNOWN, `The message with LockToken ${String(req.locktoken)} was already ${e.settled}; it cannot be settled again.`);
    }
    await run(() => op(e));
    e.settled = outcome;
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.tryShutdown(() => resolve());
      // Calls still open (a client that never finishes) must not hold the host's stop.
      setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, 2000).unref();
    });
  }
}

function normalizeToken(token: string | undefined): string | undefined {
  return token ? token.toLowerCase() : undefined;
}

async function run<T>(op: () => Promise<T>): Promise<T> {
  try {
    return await op();
  } catch (err) {
    throw new GrpcError(grpc.status.UNKNOWN, errorText(err));
  }
}

function errorText(err: unknown): string {
  if (err instanceof Error) return `${err.name}: ${err.message}`;
  return String(err);
}

/** google.protobuf.StringValue as @grpc/proto-loader hands it over: `{ value }`, or null when absent. */
function stringValue(v: unknown): string | undefined {
  if (v === null || v === undefined) return undefined;
  if (typeof v === 'object' && 'value' in v) return String((v as { value: unknown }).value ?? '');
  return String(v);
}

/**
 * `propertiesToModify`: an AMQP-encoded map (the Functions host decodes it with
 * `AmqpCodec.DecodeMap`); empty bytes mean none.
 */
export function decodePropertiesToModify(bytes: unknown): Record<string, number | boolean | string | Date | null> | undefined {
  if (!bytes || (bytes as Uint8Array).length === 0) return undefined;
  let value: unknown;
  try {
    const { Reader } = rhea.types as unknown as { Reader: new (b: Buffer) => { read(): unknown } };
    value = rhea.types.unwrap(new Reader(Buffer.from(bytes as Uint8Array)).read());
  } catch (err) {
    throw new GrpcError(grpc.status.INVALID_ARGUMENT, `propertiesToModify is not an AMQP-encoded map: ${errorText(err)}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value) || Buffer.isBuffer(value)) {
    throw new GrpcError(grpc.status.INVALID_ARGUMENT, 'propertiesToModify is not an AMQP-encoded map.');
  }
  return value as Record<string, number | boolean | string | Date | null>;
}

function stateBytes(state: unknown): Buffer {
  if (state === null || state === undefined) return Buffer.alloc(0);
  if (Buffer.isBuffer(state)) return state;
  if (state instanceof Uint8Array) return Buffer.from(state);
  if (typeof state === 'string') return Buffer.from(state, 'utf8');
  return Buffer.from(JSON.stringify(state), 'utf8');
}

// ---- the process-wide server ----

let current: { server: SettlementServer; users: number } | undefined;
let starting: Promise<SettlementServer> | undefined;
/** The port of the last server, bound again by the next one so that existing clients still reach it. */
let lastPort = 0;
const ARG_NAMES = ['--host', '--port', '--functions-grpc-max-message-length'];

function protoPath(): string {
  // The extension ships the service definition next to its bundle (dist/proto).
  return join(dirname(require.resolve('@azure/functions-extensions-servicebus')), 'proto', 'settlement.proto');
}

async function startServer(): Promise<SettlementServer> {
  const def = protoLoader.loadSync(protoPath(), { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true });
  const pkg = grpc.loadPackageDefinition(def) as unknown as { Settlement: grpc.ServiceClientConstructor };
  const server = new grpc.Server({ 'grpc.max_receive_message_length': GRPC_MAX_MESSAGE_LENGTH, 'grpc.max_send_message_length': GRPC_MAX_MESSAGE_LENGTH });
  const bind = (port: number): Promise<number> =>
    new Promise((resolve, reject) => server.bindAsync(`${HOST}:${port}`, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
  let port: number;
  try {
    port = await bind(lastPort);
  } catch (err) {
    if (lastPort === 0) throw err;
    port = await bind(0);
  }
  const settlement = new SettlementServer(server, port);
  server.addService(pkg.Settlement.service, settlement.handlers());
  lastPort = port;
  setWorkerArgs(port);
  return settlement;
}

/**
 * Puts `--host 127.0.0.1 --port <p> --functions-grpc-max-message-length <n>` into process.argv,
 * as the Functions host passes them to the worker process; earlier values of these options are
 * removed (minimist would turn repeats into arrays).
 */
function setWorkerArgs(port: number): void {
  const argv = process.argv;
  for (let i = 2; i < argv.length; ) {
    const a = argv[i] as string;
    const name = ARG_NAMES.find((n) => a === n || a.startsWith(`${n}=`));
    if (name) argv.splice(i, a === name ? 2 : 1);
    else i++;
  }
  argv.push('--host', HOST, '--port', String(port), '--functions-grpc-max-message-length', String(GRPC_MAX_MESSAGE_LENGTH));
}

/** The process's settlement server, started on first use; call `releaseSettlementServer` when done. */
export async function acquireSettlementServer(): Promise<SettlementServer> {
  if (current) {
    current.users++;
    return current.server;
  }
  starting ??= startServer().finally(() => {
    starting = undefined;
  });
  const server = await starting;
  const cur = current as { server: SettlementServer; users: number } | undefined;
  if (cur && cur.server === server) cur.users++;
  else current = { server, users: 1 };
  return server;
}

export async function releaseSettlementServer(server: SettlementServer): Promise<void> {
  if (!current || current.server !== server) return;
  current.users--;
  if (current.users > 0) return;
  current = undefined;
  await server.close();
}
