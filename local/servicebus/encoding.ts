/**
 * AMQP 1.0 message bytes as the broker stores and delivers them.
 *
 * A message is a sequence of described sections (AMQP 1.0 part 3.2): header (0x70),
 * delivery-annotations (0x71), message-annotations (0x72), properties (0x73),
 * application-properties (0x74), the body (data 0x75 / amqp-sequence 0x76 / amqp-value 0x77)
 * and a footer (0x78).
 *
 * The broker keeps a message as two byte strings, never as decoded objects (decoding loses AMQP
 * types: an int64 above 2^53 comes back as a Buffer, a ulong as a number; see
 * shared/notes/servicebus-amqp.md):
 * - `annotations`: the client's message-annotation map entries, minus the ones the broker owns;
 * - `payload`: the properties, application-properties, body and footer sections, verbatim.
 * The header is rebuilt on every delivery (it carries the delivery count), and the
 * message-annotations section is rebuilt from the client's entries plus the broker's
 * (`x-opt-sequence-number`, `x-opt-enqueued-time`, `x-opt-locked-until`...). Delivery
 * annotations are hop-by-hop and dropped, as Service Bus does.
 *
 * Everything kept from an incoming transfer is copied out: rhea hands out slices of its frame
 * buffers, and one kept slice would pin a whole frame (a batch of hundreds of messages) in
 * memory. (A large body that already owns its whole buffer is kept as it is.)
 */
import { randomUUID } from 'node:crypto';
import { rhea as amqp } from './rhea';

// rhea's low-level codec is not in its typings; these are the few members used here.
interface Typed { type: unknown; value: unknown; descriptor?: Typed }
interface RheaTypes {
  Reader: new (buf: Buffer) => { read(): Typed };
  Writer: new () => { write(o: Typed): void; toBuffer(): Buffer };
  wrap(o: unknown): Typed;
  wrap_string(s: string): Typed;
  wrap_ulong(n: number): Typed;
  wrap_list(l: unknown[]): Typed;
  Map32(items: Typed[]): Typed;
  described(descriptor: Typed, value: Typed): Typed;
}
// eslint-disable-next-line @typescript-eslint/no-require-imports
const types = require('rhea/lib/types.js') as RheaTypes;

/** message_format of a batch: an envelope whose data sections are each a whole message. */
export const BATCH_FORMAT = 0x80013700;

export const Section = {
  header: 0x70,
  deliveryAnnotations: 0x71,
  messageAnnotations: 0x72,
  properties: 0x73,
  applicationProperties: 0x74,
  data: 0x75,
  sequence: 0x76,
  value: 0x77,
  footer: 0x78,
} as const;

const SYMBOLIC_SECTIONS: Record<string, number> = {
  'amqp:header:list': 0x70,
  'amqp:delivery-annotations:map': 0x71,
  'amqp:message-annotations:map': 0x72,
  'amqp:properties:list': 0x73,
  'amqp:application-properties:map': 0x74,
  'amqp:data:binary': 0x75,
  'amqp:amqp-sequence:list': 0x76,
  'amqp:amqp-value:*': 0x77,
  'amqp:footer:map': 0x78,
};

/** Annotations the broker sets on delivery; a client's copies (a resent message) are dropped. */
const BROKER_ANNOTATIONS = new Set([
  'x-opt-sequence-number',
  'x-opt-enqueued-time',
  'x-opt-locked-until',
  'x-opt-lock-token',
  'x-opt-message-state',
  'x-opt-deadletter-source',
  'x-opt-enqueue-sequence-number',
]);

export class EncodingError extends Error {
  override readonly name = 'EncodingError';
}

function need(buf: Buffer, pos: number, n: number): void {
  if (pos + n > buf.length) throw new EncodingError(`truncated AMQP value at byte ${pos}`);
}

/** Returns the offset just past the AMQP value starting at `pos` (any type, described or not). */
export function skipValue(buf: Buffer, pos: number): number {
  need(buf, pos, 1);
  const code = buf[pos]!;
  if (code === 0x00) return skipValue(buf, skipValue(buf, pos + 1));
  let end: number;
  switch (code >> 4) {
    case 0x4: end = pos + 1; break;
    case 0x5: end = pos + 2; break;
    case 0x6: end = pos + 3; break;
    case 0x7: end = pos + 5; break;
    case 0x8: end = pos + 9; break;
    case 0x9: end = pos + 17; break;
    case 0xa: case 0xc: case 0xe: need(buf, pos, 2); end = pos + 2 + buf[pos + 1]!; break;
    case 0xb: case 0xd: case 0xf: need(buf, pos, 5); end = pos + 5 + buf.readUInt32BE(pos + 1); break;
    default: throw new EncodingError(`unknown AMQP type code 0x${code.toString(16)} at byte ${pos}`);
  }
  if (end > buf.length) throw new EncodingError(`truncated AMQP value at byte ${pos}`);
  return end;
}

export interface SectionSpan {
  code: number;
  start: number;
  /** Offset of the section's value (after the descriptor). */
  valueStart: number;
  end: number;
}

function descriptorCode(buf: Buffer, pos: number): number {
  const c = buf[pos]!;
  if (c === 0x53) return buf[pos + 1]!;
  if (c === 0x44) return 0;
  if (c === 0x80) return buf.readUInt32BE(pos + 5) + buf.readUInt32BE(pos + 1) * 2 ** 32;
  if (c === 0xa3) return SYMBOLIC_SECTIONS[buf.toString('latin1', pos + 2, pos + 2 + buf[pos + 1]!)] ?? -1;
  if (c === 0xb3) return SYMBOLIC_SECTIONS[buf.toString('latin1', pos + 5, pos + 5 + buf.readUInt32BE(pos + 1))] ?? -1;
  return -1;
}

/** Splits an encoded message into its sections without decoding them. */
export function scanSections(buf: Buffer): SectionSpan[] {
  const spans: SectionSpan[] = [];
  let pos = 0;
  while (pos < buf.length) {
    if (buf[pos] !== 0x00) throw new EncodingError(`expected a described message section at byte ${pos}`);
    const valueStart = skipValue(buf, pos + 1);
    const end = skipValue(buf, valueStart);
    spans.push({ code: descriptorCode(buf, pos + 1), start: pos, valueStart, end });
    pos = end;
  }
  return spans;
}

/** Start and length of the bytes of a binary (vbin8/vbin32) value. */
function binaryBounds(buf: Buffer, pos: number): [number, number] {
  const c = buf[pos];
  if (c === 0xa0) return [pos + 2, buf[pos + 1]!];
  if (c === 0xb0) return [pos + 5, buf.readUInt32BE(pos + 1)];
  throw new EncodingError(`expected binary data at byte ${pos}`);
}

/**
 * The messages inside a batch envelope (format 0x80013700): each data section of the envelope's
 * body is one complete encoded message. Returned as views into `buf`; copy what you keep.
 */
export function decodeBatchEnvelope(buf: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (const s of scanSections(buf)) {
    if (s.code !== Section.data) continue;
    const [start, len] = binaryBounds(buf, s.valueStart);
    out.push(buf.subarray(start, start + len));
  }
  return out;
}

/** A message as accepted from a sender, ready to store. */
export interface ParsedMessage {
  messageId: string;
  sessionId: string | null;
  /** header.ttl in ms, when the sender set one. */
  ttlMs?: number;
  priority?: number;
  durable?: boolean;
  /** x-opt-scheduled-enqueue-time, ms since epoch. */
  scheduledAt?: number;
  partitionKey?: string;
  /** The client's message-annotation map entries (encoded key/value pairs), broker keys removed. */
  annotations: Buffer;
  /** Number of map elements in `annotations` (2 per entry, as AMQP counts them). */
  annCount: number;
  /** properties + application-properties + body + footer, verbatim (or with a message id added). */
  payload: Buffer;
}

const EMPTY = Buffer.alloc(0);

/**
 * A private copy outside Node's shared 8 KiB pool: a pooled slice would keep its whole slab
 * (and a frame slice its whole frame) alive for as long as the message is stored.
 */
function copyOut(src: Buffer): Buffer {
  // A large message usually arrives in frames rhea concatenated into a buffer of its own: a
  // view that covers (nearly) all of that buffer pins nothing else, so keep it.
  if (src.length >= 64 * 1024 && src.length >= src.buffer.byteLength * 0.95) return src;
  const b = Buffer.allocUnsafeSlow(src.length);
  src.copy(b);
  return b;
}

function messageIdToString(id: unknown): string | undefined {
  if (id === undefined || id === null) return undefined;
  if (Buffer.isBuffer(id)) return id.length === 16 ? amqp.uuid_to_string(id) : id.toString('hex');
  return String(id);
}

function readTimestamp(buf: Buffer, pos: number): number | undefined {
  if (buf[pos] !== 0x83) return undefined;
  return Number(buf.readBigInt64BE(pos + 1));
}

function symbolAt(buf: Buffer, pos: number): string | undefined {
  const c = buf[pos];
  if (c === 0xa3) return buf.toString('latin1', pos + 2, pos + 2 + buf[pos + 1]!);
  if (c === 0xb3) return buf.toString('latin1', pos + 5, pos + 5 + buf.readUInt32BE(pos + 1));
  return undefined;
}

function stringAt(buf: Buffer, pos: number): string | undefined {
  const c = buf[pos];
  if (c === 0xa1) return buf.toString('utf8', pos + 2, pos + 2 + buf[pos + 1]!);
  if (c === 0xb1) return buf.toString('utf8', pos + 5, pos + 5 + buf.readUInt32BE(pos + 1));
  return undefined;
}

/** Bounds of a map's entries: [first entry offset, element count, end]. */
function mapBounds(buf: Buffer, pos: number): [number, number, number] {
  const c = buf[pos];
  if (c === 0xc1) return [pos + 3, buf[pos + 2]!, pos + 2 + buf[pos + 1]!];
  if (c === 0xd1) return [pos + 9, buf.readUInt32BE(pos + 5), pos + 5 + buf.readUInt32BE(pos + 1)];
  if (c === 0x40) return [pos + 1, 0, pos + 1];
  throw new EncodingError(`expected a map at byte ${pos}`);
}

/**
 * Parses what the broker needs from an incoming message and splits it for storage. A message
 * without a message id gets one (the SDK's lock renewer and settlement key on it).
 */
export function parseMessage(buf: Buffer, newId: () => string = randomUUID): ParsedMessage {
  const spans = scanSections(buf);
  const out: ParsedMessage = { messageId: '', sessionId: null, annotations: EMPTY, annCount: 0, payload: EMPTY };
  let payloadStart = buf.length;
  let propsSpan: SectionSpan | undefined;
  for (const s of spans) {
    if (s.code === Section.header) {
      const h = amqp.message.decode(buf.subarray(s.start, s.end));
      if (typeof h.ttl === 'number') out.ttlMs = h.ttl;
      if (typeof h.priority === 'number') out.priority = h.priority;
      if (typeof h.durable === 'boolean') out.durable = h.durable;
    } else if (s.code === Section.messageAnnotations) {
      const [first, count, end] = mapBounds(buf, s.valueStart);
      const kept: Buffer[] = [];
      let keptCount = 0;
      let pos = first;
      for (let i = 0; i + 1 < count; i += 2) {
        const keyEnd = skipValue(buf, pos);
        const valueEnd = skipValue(buf, keyEnd);
        const key = symbolAt(buf, pos) ?? stringAt(buf, pos);
        if (key === 'x-opt-scheduled-enqueue-time') out.scheduledAt = readTimestamp(buf, keyEnd);
        if (key === 'x-opt-partition-key') out.partitionKey = stringAt(buf, keyEnd);
        if (key === undefined || !BROKER_ANNOTATIONS.has(key)) {
          kept.push(buf.subarray(pos, valueEnd));
          keptCount += 2;
        }
        pos = valueEnd;
      }
      if (pos > end) throw new EncodingError('message annotations overrun their map');
      out.annotations = kept.length ? copyOut(Buffer.concat(kept)) : EMPTY;
      out.annCount = keptCount;
    } else if (s.code === Section.properties) {
      propsSpan = s;
      payloadStart = Math.min(payloadStart, s.start);
    } else if (s.code !== Section.deliveryAnnotations) {
      payloadStart = Math.min(payloadStart, s.start);
    }
  }
  let props = propsSpan ? amqp.message.decode(buf.subarray(propsSpan.start, propsSpan.end)) : undefined;
  const id = messageIdToString(props?.message_id);
  if (props?.group_id !== undefined && props.group_id !== null) out.sessionId = String(props.group_id);
  if (id !== undefined) {
    out.messageId = id;
    out.payload = copyOut(buf.subarray(payloadStart));
    return out;
  }
  out.messageId = newId();
  const rest = buf.subarray(propsSpan ? propsSpan.end : payloadStart);
  out.payload = copyOut(Buffer.concat([encodePropertiesWithId(buf, propsSpan, out.messageId), rest]));
  return out;
}

/**
 * The properties section with `id` as its message-id (first field), the other fields kept
 * byte for byte.
 */
function encodePropertiesWithId(buf: Buffer, span: SectionSpan | undefined, id: string): Buffer {
  let count = 0;
  let rest: Buffer = EMPTY;
  if (span) {
    const pos = span.valueStart;
    const code = buf[pos];
    let first: number;
    if (code === 0xc0) { count = buf[pos + 2]!; first = pos + 3; }
    else if (code === 0xd0) { count = buf.readUInt32BE(pos + 5); first = pos + 9; }
    else if (code === 0x45) { count = 0; first = pos + 1; }
    else throw new EncodingError(`expected a list in the properties section at byte ${pos}`);
    if (count > 0) rest = buf.subarray(skipValue(buf, first), span.end);
  }
  const idBytes = Buffer.from(id, 'utf8');
  const idLen = (idBytes.length > 255 ? 5 : 2) + idBytes.length;
  const out = Buffer.allocUnsafe(3 + 9 + idLen + rest.length);
  let p = 0;
  out[p++] = 0x00; out[p++] = 0x53; out[p++] = Section.properties;
  out[p++] = 0xd0; out.writeUInt32BE(4 + idLen + rest.length, p); p += 4;
  out.writeUInt32BE(Math.max(count, 1), p); p += 4;
  if (idBytes.length > 255) { out[p++] = 0xb1; out.writeUInt32BE(idBytes.length, p); p += 4; }
  else { out[p++] = 0xa1; out[p++] = idBytes.length; }
  p += idBytes.copy(out, p);
  rest.copy(out, p);
  return out;
}

/** What the broker adds when it hands a stored message out. */
export interface DeliveryInfo {
  sequenceNumber: number;
  enqueuedAt: number;
  lockedUntil?: number;
  /** 0 active, 1 deferred, 2 scheduled (x-opt-message-state). */
  state: number;
  deadLetterSource?: string | null;
  /** Earlier deliveries (header.delivery_count). */
  deliveryCount: number;
}

export interface StoredParts {
  annotations: Buffer;
  annCount: number;
  payload: Buffer;
  ttlMs?: number | null;
  priority?: number | null;
  durable?: boolean | null;
}

function writeSymbolKey(b: Buffer, pos: number, key: string): number {
  b[pos] = 0xa3;
  b[pos + 1] = key.length;
  b.write(key, pos + 2, 'latin1');
  return pos + 2 + key.length;
}

/** Encodes a stored message for a transfer or a `$management` reply. */
export function encodeMessage(parts: StoredParts, info: DeliveryInfo): Buffer {
  return encodePrefix(parts, info, parts.payload);
}

/**
 * The header and message-annotation sections of a delivery: followed by `parts.payload` they
 * make the encoded message. With `tail` given, it is copied after them into the same buffer.
 */
export function encodePrefix(parts: StoredParts, info: DeliveryInfo, tail?: Buffer): Buffer {
  const dls = info.deadLetterSource ? Buffer.from(info.deadLetterSource, 'utf8') : undefined;
  // header: list8 of 5 fields (durable, priority, ttl, first-acquirer, delivery-count)
  const hasTtl = parts.ttlMs !== undefined && parts.ttlMs !== null;
  const headerFields = 1 + 2 + (hasTtl ? 5 : 1) + 1 + 5;
  const headerLen = 3 + 3 + headerFields;
  let brokerLen = (2 + 21 + 9) + (2 + 19 + 9) + (2 + 19 + 5);
  let brokerCount = 6;
  if (info.lockedUntil !== undefined) { brokerLen += 2 + 18 + 9; brokerCount += 2; }
  if (dls) { brokerLen += 2 + 23 + 5 + dls.length; brokerCount += 2; }
  const annLen = 3 + 1 + 8 + parts.annotations.length + brokerLen;
  const b = Buffer.allocUnsafe(headerLen + annLen + (tail?.length ?? 0));
  let p = 0;
  b[p++] = 0x00; b[p++] = 0x53; b[p++] = Section.header;
  b[p++] = 0xc0; b[p++] = 1 + headerFields; b[p++] = 5;
  b[p++] = parts.durable ? 0x41 : 0x42;
  b[p++] = 0x50; b[p++] = parts.priority ?? 4;
  if (hasTtl) { b[p++] = 0x70; b.writeUInt32BE(Math.min(parts.ttlMs!, 0xffffffff), p); p += 4; } else b[p++] = 0x40;
  b[p++] = 0x42;
  b[p++] = 0x70; b.writeUInt32BE(info.deliveryCount, p); p += 4;
  const annStart = p;
  b[p++] = 0x00; b[p++] = 0x53; b[p++] = Section.messageAnnotations;
  b[p++] = 0xd1; b.writeUInt32BE(4 + parts.annotations.length + brokerLen, p); p += 4;
  b.writeUInt32BE(parts.annCount + brokerCount, p); p += 4;
  p += parts.annotations.copy(b, p);
  p = writeSymbolKey(b, p, 'x-opt-sequence-number');
  b[p++] = 0x81; b.writeBigInt64BE(BigInt(info.sequenceNumber), p); p += 8;
  p = writeSymbolKey(b, p, 'x-opt-enqueued-time');
  b[p++] = 0x83; b.writeBigInt64BE(BigInt(info.enqueuedAt), p); p += 8;
  p = writeSymbolKey(b, p, 'x-opt-message-state');
  b[p++] = 0x71; b.writeInt32BE(info.state, p); p += 4;
  if (info.lockedUntil !== undefined) {
    p = writeSymbolKey(b, p, 'x-opt-locked-until');
    b[p++] = 0x83; b.writeBigInt64BE(BigInt(Math.round(info.lockedUntil)), p); p += 8;
  }
  if (dls) {
    p = writeSymbolKey(b, p, 'x-opt-deadletter-source');
    b[p++] = 0xb1; b.writeUInt32BE(dls.length, p); p += 4; p += dls.copy(b, p);
  }
  if (p - annStart !== annLen) throw new EncodingError('internal: annotation length mismatch');
  if (tail) p += tail.copy(b, p);
  return p === b.length ? b : b.subarray(0, p);
}

/**
 * Returns `payload` with `props` merged into its application-properties (added, or replacing
 * values of the same key); other properties keep their exact AMQP types.
 */
export function mergeApplicationProperties(payload: Buffer, props: Record<string, unknown>): Buffer {
  const entries = Object.entries(props).filter(([, v]) => v !== undefined);
  if (entries.length === 0) return payload;
  const spans = scanSections(payload);
  const existing = spans.find((s) => s.code === Section.applicationProperties);
  let items: Typed[] = [];
  if (existing) {
    const map = new types.Reader(payload.subarray(existing.valueStart, existing.end)).read();
    items = Array.isArray(map.value) ? [...(map.value as Typed[])] : [];
  }
  for (const [k, v] of entries) {
    const idx = items.findIndex((t, i) => i % 2 === 0 && t.value === k);
    const wrapped = types.wrap(v === null ? null : v);
    if (idx >= 0) items[idx + 1] = wrapped;
    else items.push(types.wrap_string(k), wrapped);
  }
  const w = new types.Writer();
  w.write(types.described(types.wrap_ulong(Section.applicationProperties), types.Map32(items)));
  const section = w.toBuffer();
  if (existing) {
    return Buffer.concat([payload.subarray(0, existing.start), section, payload.subarray(existing.end)]);
  }
  const props0 = spans.find((s) => s.code === Section.properties);
  const at = props0 ? props0.end : 0;
  return Buffer.concat([payload.subarray(0, at), section, payload.subarray(at)]);
}

/** .NET Guid byte order (bytes 0-3, 4-5, 6-7 reversed): how Service Bus puts lock tokens in delivery tags. */
export function toDotNetGuidBytes(rfc: Buffer): Buffer {
  const b = Buffer.from(rfc);
  b[0] = rfc[3]!; b[1] = rfc[2]!; b[2] = rfc[1]!; b[3] = rfc[0]!;
  b[4] = rfc[5]!; b[5] = rfc[4]!;
  b[6] = rfc[7]!; b[7] = rfc[6]!;
  return b;
}

export function uuidToBytes(uuid: string): Buffer {
  return Buffer.from(uuid.replace(/-/g, ''), 'hex');
}

export function bytesToUuid(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** .NET ticks (100 ns since 0001-01-01) as an 8-byte big-endian long, for `locked-until-utc`. */
export function toDotNetTicks(ms: number): Buffer {
  const ticks = BigInt(Math.round(ms)) * 10_000n + 621_355_968_000_000_000n;
  const b = Buffer.alloc(8);
  b.writeBigInt64BE(ticks);
  return b;
}

/** An AMQP long that may arrive as a JS number or an 8-byte big-endian Buffer. */
export function longToNumber(v: unknown): number | undefined {
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  if (Buffer.isBuffer(v) && v.length === 8) return Number(v.readBigInt64BE());
  return undefined;
}
