import { describe, expect, it } from 'vitest';
import { rhea } from '../../../local/servicebus/rhea';
import {
  bytesToUuid, decodeBatchEnvelope, encodeMessage, mergeApplicationProperties, parseMessage, scanSections,
  toDotNetGuidBytes, toDotNetTicks, uuidToBytes,
} from '../../../local/servicebus/encoding';

const encode = (m: Record<string, unknown>): Buffer => rhea.message.encode(m as never);

describe('parseMessage / encodeMessage', () => {
  it('round-trips a message and adds the broker annotations', () => {
    const raw = encode({
      message_id: 'id-1', group_id: 'g', ttl: 1000, body: 'hello', application_properties: { a: 1 },
      message_annotations: { 'x-opt-scheduled-enqueue-time': new Date(5000), 'x-opt-sequence-number': 99, custom: 'c' },
    });
    const p = parseMessage(raw);
    expect(p).toMatchObject({ messageId: 'id-1', sessionId: 'g', ttlMs: 1000, scheduledAt: 5000, annCount: 4 });
    const out = encodeMessage(p, { sequenceNumber: 7, enqueuedAt: 1234, lockedUntil: 5678, state: 0, deliveryCount: 2 });
    const m = rhea.message.decode(out) as unknown as Record<string, unknown>;
    expect(m.body).toBe('hello');
    expect(m.message_id).toBe('id-1');
    expect(m.ttl).toBe(1000);
    expect(m.delivery_count).toBe(2);
    expect(m.application_properties).toEqual({ a: 1 });
    const ann = m.message_annotations as Record<string, unknown>;
    expect(ann['x-opt-sequence-number']).toBe(7);
    expect(ann['x-opt-enqueued-time']).toEqual(new Date(1234));
    expect(ann['x-opt-locked-until']).toEqual(new Date(5678));
    expect(ann.custom).toBe('c');
  });

  it('assigns a message id when there is none', () => {
    const p = parseMessage(encode({ body: 'x', group_id: 's' }), () => 'generated');
    expect(p.messageId).toBe('generated');
    const m = rhea.message.decode(encodeMessage(p, { sequenceNumber: 1, enqueuedAt: 0, state: 0, deliveryCount: 0 })) as unknown as Record<string, unknown>;
    expect(m.message_id).toBe('generated');
    expect(m.group_id).toBe('s');
    expect(parseMessage(encode({ body: 'x' }), () => 'gen2').messageId).toBe('gen2');
  });

  it('keeps the stored payload independent of the input buffer', () => {
    const raw = encode({ message_id: 'a', body: Buffer.alloc(100, 1) });
    const p = parseMessage(raw);
    raw.fill(0);
    expect(p.payload.buffer).not.toBe(raw.buffer);
    expect(scanSections(p.payload).length).toBe(2);
  });
});

describe('decodeBatchEnvelope', () => {
  it('returns each data section of a batch as a message', () => {
    const inner = [encode({ body: 'a' }), encode({ body: 'b' })];
    const envelope = encode({ body: rhea.message.data_sections(inner) } as never);
    const out = decodeBatchEnvelope(envelope);
    expect(out.map((b) => (rhea.message.decode(b) as unknown as { body: string }).body)).toEqual(['a', 'b']);
  });
});

describe('mergeApplicationProperties', () => {
  it('adds and replaces properties, keeping the others', () => {
    const p = parseMessage(encode({ message_id: 'a', body: 'x', application_properties: { keep: 'k', n: 1 } }));
    const merged = mergeApplicationProperties(p.payload, { n: 2, added: 'y' });
    const m = rhea.message.decode(merged) as unknown as { application_properties: unknown; body: string };
    expect(m.application_properties).toEqual({ keep: 'k', n: 2, added: 'y' });
    expect(m.body).toBe('x');
  });

  it('creates the section when the message has none', () => {
    const p = parseMessage(encode({ message_id: 'a', body: 'x' }));
    const m = rhea.message.decode(mergeApplicationProperties(p.payload, { DeadLetterReason: 'r' })) as unknown as { application_properties: unknown; message_id: string };
    expect(m.application_properties).toEqual({ DeadLetterReason: 'r' });
    expect(m.message_id).toBe('a');
  });
});

describe('identifiers', () => {
  it('puts lock tokens in .NET Guid byte order', () => {
    const rfc = uuidToBytes('00112233-4455-6677-8899-aabbccddeeff');
    expect(bytesToUuid(toDotNetGuidBytes(rfc))).toBe('33221100-5544-7766-8899-aabbccddeeff');
  });

  it('converts times to .NET ticks', () => {
    expect(toDotNetTicks(0).readBigInt64BE()).toBe(621_355_968_000_000_000n);
  });
});
