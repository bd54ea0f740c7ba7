/**
 * Service Bus messages -> the RPC data the Functions host sends the Node.js worker.
 *
 * The host binds the trigger to `string` (or `byte[]` with `dataType: 'binary'`) and sends it
 * as RpcTypedData; the library then JSON-parses strings when it can. So a JSON body arrives as
 * an object, any other text as a string, and with `dataType: 'binary'` the bytes as a Buffer.
 * With cardinality many the host sends `string[]` / `byte[][]` as typed collections.
 *
 * triggerMetadata is the Service Bus extension's binding data
 * (`ServiceBusTriggerBindingStrategy.GetBindingData`), converted as the host converts values
 * (`RpcMessageConversionExtensions.ToRpc`): strings as strings, `long[]` as a sint64
 * collection, `string[]` as a string collection WITHOUT null or empty entries, everything else
 * JSON (Newtonsoft). The library camel-cases the keys. Dates follow Newtonsoft: `...Utc` values
 * are DateTimes without a zone designator ("2026-11-26T09:00:00.123"), the others
 * DateTimeOffsets ("2026-11-26T09:00:00.123+00:00"); null values are left out.
 */
import { randomUUID } from 'node:crypto';
import type { ServiceBusReceivedMessage } from '@azure/service-bus';
import type { RpcTypedData } from '../core-types';

/** DateTime(Offset).MaxValue: where .NET clamps an expiry that never comes (infinite TTL). */
const NET_MAX_MS = Date.UTC(9999, 11, 31, 23, 59, 59, 999);
const NET_MAX_TEXT = '9999-12-31T23:59:59.9999999';

/** Newtonsoft's round-trip DateTime format, trailing zero fractions trimmed. */
function netDateTime(d: Date): string {
  if (d.getTime() >= NET_MAX_MS) return NET_MAX_TEXT;
  const iso = d.toISOString(); // 2026-11-26T09:00:00.120Z
  const [whole, frac = ''] = iso.slice(0, -1).split('.');
  const trimmed = frac.replace(/0+$/, '');
  return trimmed ? `${whole}.${trimmed}` : (whole as string);
}

function netDateTimeOffset(d: Date): string {
  return `${netDateTime(d)}+00:00`;
}

function toDate(v: unknown): Date | undefined {
  if (v instanceof Date && !Number.isNaN(v.getTime())) return v;
  if (typeof v === 'number') return new Date(v);
  return undefined;
}

function toLongNumber(v: unknown): number | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  // `long` objects from the SDK
  const n = Number((v as { toString(): string }).toString());
  return Number.isFinite(n) ? n : undefined;
}

/** The body bytes as received (with skipParsingBodyAsJson, data sections arrive as Buffers). */
function bodyOf(m: ServiceBusReceivedMessage): { bytes?: Buffer; value?: unknown } {
  const body: unknown = m.body;
  if (Buffer.isBuffer(body)) return { bytes: body };
  if (body instanceof Uint8Array) return { bytes: Buffer.from(body) };
  if (typeof body === 'string') return { bytes: Buffer.from(body, 'utf8') };
  return { value: body };
}

/** Trigger input for one message. */
export function messageToTypedData(m: ServiceBusReceivedMessage, binary: boolean): RpcTypedData {
  const { bytes, value } = bodyOf(m);
  if (bytes) return binary ? { bytes } : { string: bytes.toString('utf8') };
  if (value === undefined || value === null) return binary ? { bytes: Buffer.alloc(0) } : { string: '' };
  const json = JSON.stringify(value);
  return binary ? { bytes: Buffer.from(json, 'utf8') } : { json };
}

/** Trigger input for a batch. */
export function messagesToTypedData(ms: ServiceBusReceivedMessage[], binary: boolean): RpcTypedData {
  if (binary) {
    return { collectionBytes: { bytes: ms.map((m) => {
      const d = messageToTypedData(m, true);
      return d.bytes ?? Buffer.alloc(0);
    }) } };
  }
  const strings = ms.map((m) => {
    const d = messageToTypedData(m, false);
    return d.string ?? d.json ?? '';
  });
  // The host drops empty strings from string collections.
  return { collectionString: { string: strings.filter((s) => s !== '') } };
}

interface MessageFacts {
  DeliveryCount: number;
  DeadLetterSource?: string;
  LockToken?: string;
  ExpiresAtUtc?: string;
  ExpiresAt?: string;
  EnqueuedTimeUtc?: string;
  EnqueuedTime?: string;
  MessageId?: string;
  ContentType?: string;
  ReplyTo?: string;
  SequenceNumber?: number;
  To?: string;
  Subject?: string;
  Label?: string;
  CorrelationId?: string;
  ApplicationProperties: Record<string, unknown>;
  UserProperties: Record<string, unknown>;
  SessionId?: string;
  ReplyToSessionId?: string;
  PartitionKey?: string;
  TransactionPartitionKey?: string;
}

function facts(m: ServiceBusReceivedMessage): MessageFacts {
  const enqueued = toDate(m.enqueuedTimeUtc);
  const expires = toDate(m.expiresAtUtc);
  const str = (v: unknown): string | undefined => (v === undefined || v === null ? undefined : String(v));
  const props = { ...(m.applicationProperties ?? {}) } as Record<string, unknown>;
  return {
    // .NET counts this delivery too; the JS SDK (and AMQP) count earlier ones.
    DeliveryCount: (m.deliveryCount ?? 0) + 1,
    DeadLetterSource: str(m.deadLetterSource),
    LockToken: str(m.lockToken),
    ExpiresAtUtc: expires && netDateTime(expires),
    ExpiresAt: expires && netDateTimeOffset(expires),
    EnqueuedTimeUtc: enqueued && netDateTime(enqueued),
    EnqueuedTime: enqueued && netDateTimeOffset(enqueued),
    MessageId: str(m.messageId),
    ContentType: str(m.contentType),
    ReplyTo: str(m.replyTo),
    SequenceNumber: toLongNumber(m.sequenceNumber),
    To: str(m.to),
    Subject: str(m.subject),
    Label: str(m.subject),
    CorrelationId: str(m.correlationId),
    ApplicationProperties: props,
    UserProperties: props,
    SessionId: str(m.sessionId),
    ReplyToSessionId: str(m.replyToSessionId),
    PartitionKey: str(m.partitionKey),
    TransactionPartitionKey: str(m.partitionKey),
  };
}

/** How the host converts one binding-data value. */
function toRpc(value: unknown, kind: 'string' | 'json'): RpcTypedData | undefined {
  if (value === undefined || value === null) return undefined;
  return kind === 'string' ? { string: String(value) } : { json: JSON.stringify(value) };
}

const STRING_KEYS = [
  'DeadLetterSource', 'LockToken', 'MessageId', 'ContentType', 'ReplyTo', 'To', 'Subject', 'Label', 'CorrelationId',
  'SessionId', 'ReplyToSessionId', 'PartitionKey', 'TransactionPartitionKey',
] as const;
const JSON_KEYS = ['DeliveryCount', 'ExpiresAtUtc', 'ExpiresAt', 'EnqueuedTimeUtc', 'EnqueuedTime', 'SequenceNumber', 'ApplicationProperties', 'UserProperties'] as const;

function sys(functionName: string): RpcTypedData {
  return { json: JSON.stringify({ MethodName: functionName, UtcNow: netDateTime(new Date()) + 'Z', RandGuid: randomUUID() }) };
}

export function singleTriggerMetadata(m: ServiceBusReceivedMessage, functionName: string): Record<string, RpcTypedData> {
  const f = facts(m);
  const out: Record<string, RpcTypedData> = {};
  for (const k of STRING_KEYS) {
    const v = toRpc(f[k], 'string');
    if (v) out[k] = v;
  }
  for (const k of JSON_KEYS) {
    const v = toRpc(f[k], 'json');
    if (v) out[k] = v;
  }
  out.sys = sys(functionName);
  return out;
}

export function batchTriggerMetadata(ms: ServiceBusReceivedMessage[], functionName: string): Record<string, RpcTypedData> {
  const all = ms.map(facts);
  const out: Record<string, RpcTypedData> = {};
  for (const k of STRING_KEYS) {
    // string[] -> collectionString, nulls and empties dropped (host behaviour).
    out[`${k}Array`] = { collectionString: { string: all.map((f) => f[k]).filter((s): s is string => typeof s === 'string' && s !== '') } };
  }
  // long[] -> collectionSint64
  out.SequenceNumberArray = { collectionSint64: { sint64: all.map((f) => f.SequenceNumber ?? 0) } };
  // int[], DateTime[], DateTimeOffset[], IDictionary[] -> JSON arrays
  for (const k of ['DeliveryCount', 'ExpiresAtUtc', 'ExpiresAt', 'EnqueuedTimeUtc', 'EnqueuedTime', 'ApplicationProperties', 'UserProperties'] as const) {
    out[`${k}Array`] = { json: JSON.stringify(all.map((f) => f[k] ?? null)) };
  }
  out.sys = sys(functionName);
  return out;
}
