/**
 * The `<entity>/$management` request/response node: the operations the SDK sends there
 * (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-amqp-request-response).
 *
 * A request carries `operation` (all prefixed `com.microsoft:`) and an AMQP map body with
 * string keys; the reply carries `statusCode` (200, or 204 for an empty peek, which the SDK
 * tests for exactly) and the result map. Operations that change state answer only once the
 * store has committed the change. Failures are thrown as BrokerError (status code and
 * condition). Long values may arrive as numbers or 8-byte big-endian Buffers.
 */
import { rhea as amqp } from './rhea';
import { bytesToUuid, longToNumber, parseMessage, uuidToBytes } from './encoding';
import { BrokerError } from './errors';
import type { Disposition, Entity, SettleOptions } from './queue';

export type Respond = (statusCode: number, body?: unknown) => void;

function sessionIdOf(body: Record<string, unknown>): string | undefined {
  const v = body['session-id'];
  return v === undefined || v === null ? undefined : String(v);
}

export function handleManagementRequest(
  entity: Entity,
  op: string,
  body: Record<string, unknown>,
  respond: Respond,
  afterCommit: (fn: () => void) => void,
): void {
  switch (op) {
    case 'com.microsoft:renew-lock': {
      const expirations = lockTokens(body).map((t) => new Date(entity.renewLock(t)));
      respond(200, { expirations });
      return;
    }
    case 'com.microsoft:peek-message': {
      const from = longToNumber(body['from-sequence-number']) ?? 1;
      const count = Number(body['message-count'] ?? 1);
      const sessionId = sessionIdOf(body);
      const found = entity.peek(from, count, sessionId);
      // The SDK tests for exactly 204 when there is nothing to peek.
      if (found.length === 0) respond(204);
      else respond(200, { messages: found.map((m) => ({ message: entity.encode(m) })) });
      return;
    }
    case 'com.microsoft:update-disposition': {
      const status = String(body['disposition-status'] ?? '');
      const disposition: Disposition | undefined = ({ completed: 'complete', abandoned: 'abandon', defered: 'defer', suspended: 'deadletter' } as const)[status as 'completed'];
      if (!disposition) throw BrokerError.badRequest(`Unknown disposition-status '${status}'.`);
      const options: SettleOptions = {
        deadLetterReason: body['deadletter-reason'] as string | undefined,
        deadLetterDescription: body['deadletter-description'] as string | undefined,
        propertiesToModify: body['properties-to-modify'] as Record<string, unknown> | undefined,
      };
      for (const t of lockTokens(body)) entity.settle(t, disposition, options);
      afterCommit(() => respond(200));
      return;
    }
    case 'com.microsoft:receive-by-sequence-number': {
      const seqs = longArray(body['sequence-numbers']);
      const receiveAndDelete = Number(body['receiver-settle-mode'] ?? 1) === 0;
      const sessionId = sessionIdOf(body);
      const got = entity.receiveDeferred(seqs, receiveAndDelete, sessionId);
      const messages = got.map((g) => {
        const m: Record<string, unknown> = { message: g.bytes };
        if (g.lockToken) m['lock-token'] = amqp.types.wrap_uuid(uuidToBytes(g.lockToken));
        return m;
      });
      afterCommit(() => respond(200, { messages }));
      return;
    }
    case 'com.microsoft:schedule-message': {
      if (entity.isDeadLetterQueue) throw BrokerError.notAllowed('Cannot schedule messages on a dead-letter queue.');
      const items = (body.messages ?? []) as Array<Record<string, unknown>>;
      const now = Date.now();
      const parsed = items.map((it) => {
        const raw = it.message;
        if (!Buffer.isBuffer(raw)) throw BrokerError.badRequest('schedule-message: each entry needs an encoded `message`.');
        if (raw.length > entity.settings.maxMessageSizeBytes) throw BrokerError.messageTooLarge(raw.length, entity.settings.maxMessageSizeBytes);
        return parseMessage(raw);
      });
      if (entity.requiresSession && parsed.some((p) => !p.sessionId)) {
        throw BrokerError.notAllowed('The SessionId was not set on a message, and it cannot be sent to the entity. Entities that have session support enabled can only receive messages that have the SessionId set to a valid value.');
      }
      const seqs = parsed.map((p) => entity.enqueue(p, now).seq);
      afterCommit(() => respond(200, { 'sequence-numbers': amqp.types.wrap_array(seqs.map((s) => longBytes(s)), 0x81, undefined) }));
      return;
    }
    case 'com.microsoft:cancel-scheduled-message': {
      entity.cancelScheduled(longArray(body['sequence-numbers']));
      afterCommit(() => respond(200));
      return;
    }
    case 'com.microsoft:renew-session-lock': {
      const expiration = new Date(entity.renewSessionLock(String(body['session-id'])));
      respond(200, { expiration });
      return;
    }
    case 'com.microsoft:get-session-state': {
      const sessionId = String(body['session-id']);
      entity.heldSession(sessionId);
      const state = entity.getSessionState(sessionId);
      respond(200, { 'session-state': state ?? null });
      return;
    }
    case 'com.microsoft:set-session-state': {
      const sessionId = String(body['session-id']);
      entity.heldSession(sessionId);
      const state = body['session-state'];
      entity.setSessionState(sessionId, Buffer.isBuffer(state) ? state : null);
      afterCommit(() => respond(200));
      return;
    }
    case 'com.microsoft:enumerate-sessions': {
      const skip = Number(body.skip ?? 0);
      const top = Number(body.top ?? 100);
      const ids = [...entity.sessions.values()].filter((s) => s.count > 0 || s.state).map((s) => s.id).slice(skip, skip + top);
      if (ids.length === 0) respond(204);
      else respond(200, { skip: skip + ids.length, 'sessions-ids': ids });
      return;
    }
    default:
      throw BrokerError.badRequest(`The $management operation '${op}' is not supported by this emulator.`);
  }
}

function lockTokens(body: Record<string, unknown>): string[] {
  const raw = body['lock-tokens'];
  const list = Array.isArray(raw) ? raw : raw === undefined ? [] : [raw];
  return list.map((t) => (Buffer.isBuffer(t) ? bytesToUuid(t) : String(t)));
}

function longArray(v: unknown): number[] {
  const list = Array.isArray(v) ? v : v === undefined || v === null ? [] : [v];
  return list.map((x) => {
    const n = longToNumber(x);
    if (n === undefined) throw BrokerError.badRequest('Expected an array of sequence numbers (long).');
    return n;
  });
}

function longBytes(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigInt64BE(BigInt(n));
  return b;
}
