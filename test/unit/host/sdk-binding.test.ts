/**
 * The model binding data of SDK-type Service Bus bindings, decoded by the real extension
 * (@azure/functions-extensions-servicebus), and the settlement service's small decoders.
 */
import { AmqpAnnotatedMessage } from '@azure/core-amqp';
import type { ServiceBusReceivedMessage } from '@azure/service-bus';
import rhea from 'rhea';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lockTokenBytes, modelBindingData, sdkTypedData } from '../../../local/host/servicebus/sdk-binding';
import { acquireSettlementServer, decodePropertiesToModify, releaseSettlementServer, type SettlementServer } from '../../../local/host/servicebus/settlement';

let server: SettlementServer;
let createClient: (source: string, data: unknown) => { messages: ServiceBusReceivedMessage | ServiceBusReceivedMessage[] };

beforeAll(async () => {
  server = await acquireSettlementServer();
  require('@azure/functions-extensions-servicebus');
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { ResourceFactoryResolver } = require('@azure/functions-extensions-base');
  createClient = (source, data) => ResourceFactoryResolver.getInstance().createClient(source, data);
});
afterAll(async () => {
  await releaseSettlementServer(server);
});

/** A received message as the JS client builds it from the broker's AMQP message. */
function received(rheaMessage: Record<string, unknown>, lockToken: string): ServiceBusReceivedMessage {
  const decoded = rhea.message.decode(rhea.message.encode(rheaMessage as unknown as rhea.Message));
  return { lockToken, _rawAmqpMessage: AmqpAnnotatedMessage.fromRheaMessage(decoded as never) } as unknown as ServiceBusReceivedMessage;
}

describe('SDK-type binding data', () => {
  it('writes the lock token in .NET GUID byte order', () => {
    expect(lockTokenBytes('33221100-5544-7766-8899-aabbccddeeff').toString('hex')).toBe('00112233445566778899aabbccddeeff');
    expect(() => lockTokenBytes('nope')).toThrow(/Not a GUID/);
  });

  it('is decoded by the extension into the message the broker sent', () => {
    const enqueued = new Date('2026-01-02T03:04:05.678Z');
    const m = received(
      {
        body: rhea.message.data_section(Buffer.from(JSON.stringify({ a: 1, s: 'x' }))),
        content_type: 'application/json',
        message_id: 'm-1',
        correlation_id: 'c-1',
        subject: 'subj',
        group_id: 'session-1',
        delivery_count: 2,
        application_properties: { tenant: 'a', n: 5, ok: true },
        message_annotations: { 'x-opt-sequence-number': 42, 'x-opt-enqueued-time': enqueued },
      },
      '01234567-89ab-cdef-0123-456789abcdef',
    );
    const data = modelBindingData(m);
    expect(data).toMatchObject({ version: '1.0', source: 'AzureServiceBusReceivedMessage', contentType: 'application/octet-stream' });
    const { messages } = createClient(data.source, data);
    expect(messages).toMatchObject({
      body: { a: 1, s: 'x' },
      messageId: 'm-1',
      correlationId: 'c-1',
      subject: 'subj',
      sessionId: 'session-1',
      contentType: 'application/json',
      deliveryCount: 2,
      applicationProperties: { tenant: 'a', n: 5, ok: true },
      lockToken: '01234567-89ab-cdef-0123-456789abcdef',
    });
    expect(String((messages as ServiceBusReceivedMessage).sequenceNumber)).toBe('42');
    // The extension (0.2.0-preview) reads x-opt-enqueued-time only when it decodes to a number
    // or string; a JS Date annotation encoded here does not, so it stays undefined (the raw
    // annotation is there). Through the emulator it arrives (see the integration test).
    expect((messages as ServiceBusReceivedMessage).enqueuedTimeUtc).toBeUndefined();
    expect((messages as ServiceBusReceivedMessage)._rawAmqpMessage.messageAnnotations?.['x-opt-enqueued-time']).toEqual(enqueued);
  });

  it('hands an amqp-value body of binary (a binary batch message) to the function as the same bytes', () => {
    const big = Buffer.alloc(300_000, 7);
    big.write('FRYB');
    const m = received({ message_id: 'm-2', group_id: 'vm/disk0', content_type: 'application/vnd.ferry.batch', body: big }, '00000000-0000-0000-0000-000000000003');
    const { messages } = createClient('AzureServiceBusReceivedMessage', modelBindingData(m));
    const got = (messages as ServiceBusReceivedMessage).body as unknown;
    expect(Buffer.isBuffer(got) && got.equals(big)).toBe(true);
  });

  it('passes text and binary bodies, and many messages as a collection', () => {
    const text = received({ body: rhea.message.data_section(Buffer.from('plain')), content_type: 'text/plain' }, '00000000-0000-0000-0000-000000000001');
    const bin = received({ body: rhea.message.data_section(Buffer.from([0, 1, 2])) }, '00000000-0000-0000-0000-000000000002');
    const typed = sdkTypedData([text, bin], true);
    const list = typed.collectionModelBindingData?.modelBindingData ?? [];
    expect(list).toHaveLength(2);
    const { messages } = createClient(list[0]!.source, list);
    expect((messages as ServiceBusReceivedMessage[]).map((x) => x.body)).toEqual(['plain', Buffer.from([0, 1, 2]).toString('utf8')]);
    expect((messages as ServiceBusReceivedMessage[]).map((x) => x.lockToken)).toEqual(['00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000002']);
  });

  it('refuses a message without a lock token (receiveAndDelete)', () => {
    expect(() => modelBindingData({ _rawAmqpMessage: {} } as unknown as ServiceBusReceivedMessage)).toThrow(/peekLock/);
  });
});

describe('propertiesToModify', () => {
  const encode = (v: unknown): Buffer => {
    const types = rhea.types as unknown as { Writer: new () => { write(v: unknown): void; toBuffer(): Buffer }; wrap_map(m: unknown): unknown; wrap(v: unknown): unknown };
    const w = new types.Writer();
    w.write(v);
    return w.toBuffer();
  };

  it('decodes an AMQP map; empty bytes are none', () => {
    expect(decodePropertiesToModify(Buffer.alloc(0))).toBeUndefined();
    expect(decodePropertiesToModify(undefined)).toBeUndefined();
    const types = rhea.types as unknown as { wrap_map(m: unknown): unknown };
    expect(decodePropertiesToModify(encode(types.wrap_map({ a: 'x', n: 3, b: false })))).toEqual({ a: 'x', n: 3, b: false });
  });

  it('refuses anything else with a clear message', () => {
    const types = rhea.types as unknown as { wrap(v: unknown): unknown };
    expect(() => decodePropertiesToModify(encode(types.wrap('text')))).toThrow(/not an AMQP-encoded map/);
    expect(() => decodePropertiesToModify(Buffer.from([0xff, 0x00]))).toThrow(/not an AMQP-encoded map/);
  });
});
