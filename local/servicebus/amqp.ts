/**
 * What the broker needs from rhea beyond its public API, in one place: the outcome
 * constructors, link credit and session counters, raw (undecoded) transfers, and output tuning.
 * Each use names the rhea internal it relies on (rhea 3.0.5, lib/link.js, session.js,
 * connection.js, transport.js, frames.js).
 */
import type * as rhea from 'rhea';
import { rhea as amqp } from './rhea';

/** Marks transfers rhea must hand over undecoded (its decoder would strip AMQP types). */
export const RAW_FORMAT = 0x7fff_fff0;

// rhea internals used here (not in its typings).
export interface RawDelivery extends rhea.Delivery {
  remote_settled: boolean;
  sbLockToken?: string;
}
interface SessionInternals {
  incoming: { on_transfer(frame: { performative: { message_format?: number } }, receiver: unknown): void };
  outgoing: { next_delivery_id: number; next_pending_delivery: number; deliveries: { available(): number } };
}
interface SenderInternals {
  _draining: boolean;
  set_drained(v: boolean): void;
  connection: { _register(): void };
  state: { local_open: boolean; open_requests: number };
}

interface Outcome { described(): unknown }
interface RheaOutcomes {
  accepted(): Outcome;
  released(): Outcome;
  rejected(o?: { error?: { condition: string; description: string } }): Outcome;
  modified(o: { undeliverable_here?: boolean }): Outcome;
  decode(b: Buffer): rhea.Message;
}
export const outcomes = amqp.message as unknown as RheaOutcomes;

export function credit(link: rhea.Sender | rhea.Receiver): number {
  return (link as unknown as { credit: number }).credit;
}

function internals<T>(x: unknown): T {
  return x as T;
}

// rhea's frame encoder (not in its typings).
// eslint-disable-next-line @typescript-eslint/no-require-imports
const rheaFrames = require('rhea/lib/frames.js') as { write_frame(frame: RawFrame): Buffer };
interface RawFrame { performative?: unknown; payload?: Buffer }
interface RawSocket { write(b: Buffer): boolean; cork(): void; uncork(): void }

/** Frame payloads at least this large are written as they are, not copied into the frame. */
const ZERO_COPY_PAYLOAD = 16 * 1024;
/**
 * A large delivery is handed to rhea as its prefix (header and annotations) only; the body to
 * write after it in the same frame is found here by tuneOutput.
 */
const frameTails = new WeakMap<Buffer, Buffer>();
/** Connections whose transport writes frameTails. */
const tunedConnections = new WeakSet<object>();

/**
 * rhea writes every frame with its own socket.write (one syscall each) and copies each payload
 * into a fresh frame buffer. On the emulator's connections: defer output to the end of the tick
 * and cork the socket around it, so a burst of frames (transfers, dispositions, flows) leaves
 * in one writev; and write large payloads after their frame header instead of copying them.
 */
export function tuneOutput(conn: rhea.Connection): void {
  const c = conn as unknown as {
    output(): void;
    socket?: RawSocket;
    amqp_transport?: { pending: RawFrame[]; header_sent?: unknown; write(socket: RawSocket): void };
  };
  const transport = c.amqp_transport;
  if (transport?.header_sent && typeof transport.write === 'function' && Array.isArray(transport.pending)) {
    tunedConnections.add(conn);
    const write = transport.write.bind(transport);
    transport.write = (socket) => {
      if (!transport.pending.some((f) => f.payload && (f.payload.length >= ZERO_COPY_PAYLOAD || frameTails.has(f.payload)))) return write(socket);
      for (const frame of transport.pending) {
        const payload = frame.payload;
        const tail = payload && frameTails.get(payload);
        if (!payload || (payload.length < ZERO_COPY_PAYLOAD && !tail)) {
          socket.write(rheaFrames.write_frame(frame));
          continue;
        }
        const head = rheaFrames.write_frame({ ...frame, payload: undefined });
        head.writeUInt32BE(head.length + payload.length + (tail?.length ?? 0), 0);
        socket.write(head);
        socket.write(payload);
        if (tail) socket.write(tail);
      }
      transport.pending = [];
    };
  }
  const output = c.output.bind(c);
  let scheduled = false;
  c.output = () => {
    if (scheduled) return;
    scheduled = true;
    process.nextTick(() => {
      scheduled = false;
      const socket = c.socket;
      socket?.cork();
      try {
        output();
      } finally {
        socket?.uncork();
      }
    });
  };
}


/**
 * Sends `prefix` followed by `payload` as one message. When the connection is tuned and the
 * message fits one frame, rhea gets only the prefix and tuneOutput writes the body after it;
 * otherwise the two are joined.
 */
export function sendParts(link: rhea.Sender, prefix: Buffer, payload: Buffer, tag: Buffer): RawDelivery {
  const maxFrame = (link.connection as unknown as { max_frame_size?: number }).max_frame_size ?? 0xffffffff;
  let bytes: Buffer;
  if (payload.length >= ZERO_COPY_PAYLOAD && tunedConnections.has(link.connection) && prefix.length + payload.length + tag.length + 64 < maxFrame) {
    bytes = prefix;
    frameTails.set(prefix, payload);
  } else {
    bytes = Buffer.concat([prefix, payload]);
  }
  return link.send(bytes, tag, 0) as RawDelivery;
}

/** Makes rhea hand every transfer on this (peer-initiated) session over undecoded. */
export function receiveRaw(session: rhea.Session): void {
  const incoming = internals<SessionInternals>(session).incoming;
  const onTransfer = incoming.on_transfer.bind(incoming);
  incoming.on_transfer = (frame, receiver) => {
    if (!frame.performative.message_format) frame.performative.message_format = RAW_FORMAT;
    onTransfer(frame, receiver);
  };
}

/** Link credit the peer can still use, counting deliveries rhea has queued but not sent. */
export function senderCredit(link: rhea.Sender): number {
  const s = internals<SessionInternals>(link.session);
  const unsent = s.outgoing.next_delivery_id - s.outgoing.next_pending_delivery;
  return Math.min(credit(link) - unsent, s.outgoing.deliveries.available());
}

/**
 * Completes a drain the peer asked for: the flow that says "drained" (drain=true, credit 0,
 * delivery-count advanced over any credit left). Notes: set_drained alone does not write the
 * flow; and rhea's sender writes drain=true only while some credit is left to give up
 * (`_get_drain`), so a drain that arrives after every credit was used by deliveries already
 * sent or in flight (a backlog larger than the receive, or the receive's timer firing while
 * its messages are on the wire) would go unanswered. The SDK then waits out its drain timeout
 * and closes the link, which for a session receiver loses the session. answerEveryDrain
 * (called on every sender the broker attaches) makes rhea answer those too, as AMQP 1.0
 * 2.6.7 requires of a sender in drain mode.
 *
 * Deliveries rhea still queues must go out before the flow that counts them, so the answer
 * waits until none are left unsent.
 */
export function completeDrain(link: rhea.Sender, waitedMs = 0): void {
  const l = internals<SenderInternals>(link);
  if (!l._draining || !link.is_open()) return;
  const s = internals<SessionInternals>(link.session);
  if (s.outgoing.next_delivery_id !== s.outgoing.next_pending_delivery && waitedMs < DRAIN_WAIT_MAX_MS) {
    // not written yet (rhea writes on its next output, later if the peer's session window is
    // full): look again shortly (a timer, not a spin)
    setTimeout(() => completeDrain(link, waitedMs + DRAIN_RECHECK_MS), DRAIN_RECHECK_MS).unref();
    return;
  }
  l.set_drained(true);
  l.connection._register();
}

const DRAIN_RECHECK_MS = 5;
/** A peer that takes no transfers for this long gets its answer anyway (its link is stuck). */
const DRAIN_WAIT_MAX_MS = 10_000;

/** See completeDrain: a drain is answered even when no credit is left to give up. */
export function answerEveryDrain(link: rhea.Sender): void {
  const l = internals<SenderInternals & { _drained: boolean; credit: number; delivery_count: number; _get_drain(): boolean }>(link);
  l._get_drain = function answerDrain(this: typeof l): boolean {
    if (!this._draining || !this._drained) return false;
    this.delivery_count += this.credit;
    this.credit = 0;
    // Answered once. The drain is over (credit 0) until the peer's next flow sets _draining
    // again; left set, every later dispatch of the entity (completeDrain from idle()) answered
    // it again, and a late "drained" flow that crossed the peer's next receive zeroed the
    // peer's credit while this side counted it: the SDK then skipped its drain at the end of
    // that receive and messages went to the idle link (a SequenceGap in the fault suite;
    // test/integration/servicebus/drain-leftover.test.ts).
    this._drained = false;
    this._draining = false;
    return true;
  };
}

/** Undoes rhea's automatic attach reply, to send it later with `link.open()`. */
export function holdAttach(link: rhea.Sender): void {
  const st = internals<SenderInternals>(link).state;
  st.local_open = false;
  st.open_requests = Math.max(0, st.open_requests - 1);
}

/**
 * A late detach, flow, disposition or transfer on the channel of a session that this
 * connection has just ended is dropped (and reported through `onStray`) instead of failing the
 * whole connection, which rhea does by default ("detach received on invalid channel"). The race
 * that sends one is ordinary: when an acceptNextSession times out on both sides at once, the
 * broker refuses the held attach (attach and detach with the timeout) while the client ends the
 * session; rhea on the client answers the refusal with a detach after its own end. Failing the
 * connection for it lost every other session on it (their locks, and the batches in
 * invocation) about once a minute in an idle host.
 *
 * Only channels this connection saw end qualify. A frame on a channel it never had (a client
 * that reconnected to a restarted broker and still talks about its old sessions) keeps rhea's
 * answer: the connection fails and the client starts clean, instead of waiting forever for
 * replies about sessions the broker never knew.
 */
export function dropLateFrames(connection: rhea.Connection, onStray: (frame: string, channel: number) => void): void {
  type Conn = Record<string, unknown> & { remote_channel_map: Record<number, unknown> };
  const c = internals<Conn>(connection);
  const ended = new Set<number>();
  const removeSession = c.remove_session as (this: Conn, session: { remote: { channel?: number } }) => void;
  c.remove_session = function (this: Conn, session: { remote: { channel?: number } }): void {
    const channel = session.remote.channel;
    if (channel !== undefined && this.remote_channel_map[channel] === session) ended.add(channel);
    removeSession.call(this, session);
  };
  const onBegin = c.on_begin as (this: Conn, frame: { channel: number }) => void;
  c.on_begin = function (this: Conn, frame: { channel: number }): void {
    ended.delete(frame.channel); // the channel is in use again
    onBegin.call(this, frame);
  };
  for (const name of ['detach', 'flow', 'transfer', 'disposition']) {
    const key = `on_${name}`;
    const delegate = c[key] as (this: Conn, frame: { channel: number }) => void;
    c[key] = function (this: Conn, frame: { channel: number }): void {
      if (this.remote_channel_map[frame.channel] === undefined && ended.has(frame.channel)) {
        onStray(name, frame.channel);
        return;
      }
      delegate.call(this, frame);
    };
  }
}
