import type { ServiceBusReceivedMessage } from '@azure/service-bus';
import { describe, expect, it } from 'vitest';
import { batchTriggerMetadata, messagesToTypedData, messageToTypedData, singleTriggerMetadata } from '../../../local/host/servicebus/convert';

function message(over: Partial<ServiceBusReceivedMessage> & { body: unknown }): ServiceBusReceivedMessage {
  return {
    messageId: 'id-1',
    deliveryCount: 0,
    sequenceNumber: { toString: () => '42' },
    enqueuedTimeUtc: new Date('2026-11-26T09:00:00.120Z'),
    expiresAtUtc: new Date('2026-11-26T10:00:00Z'),
    lockToken: '0f8fad5b-d9cb-469f-a165-70867728950e',
    applicationProperties: { a: 1 },
    ...over,
  } as unknown as ServiceBusReceivedMessage;
}

describe('Service Bus message bodies as the host sends them', () => {
  it('sends data-section bytes as a string (the library then parses JSON)', () => {
    expect(messageToTypedData(message({ body: Buffer.from('{"x":1}') }), false)).toEqual({ string: '{"x":1}' });
  });

  it('sends bytes with dataType binary', () => {
    expect(messageToTypedData(message({ body: Buffer.from([1, 2]) }), true)).toEqual({ bytes: Buffer.from([1, 2]) });
  });

  it('sends AMQP value bodies as JSON', () => {
    expect(messageToTypedData(message({ body: { v: true } }), false)).toEqual({ json: '{"v":true}' });
  });

  it('sends batches as string collections without empty entries', () => {
    const data = messagesToTypedData([message({ body: Buffer.from('a') }), message({ body: Buffer.alloc(0) })], false);
    expect(data).toEqual({ collectionString: { string: ['a'] } });
  });
});

describe('Service Bus trigger metadata', () => {
  it('has the extension binding data with .NET conventions', () => {
    const meta = singleTriggerMetadata(message({ body: Buffer.from('x'), sessionId: 's1' }), 'fn');
    expect(meta.MessageId).toEqual({ string: 'id-1' });
    expect(meta.DeliveryCount).toEqual({ json: '1' });
    expect(meta.SequenceNumber).toEqual({ json: '42' });
    expect(meta.EnqueuedTimeUtc).toEqual({ json: '"2026-11-26T09:00:00.12"' });
    expect(meta.EnqueuedTime).toEqual({ json: '"2026-11-26T09:00:00.12+00:00"' });
    expect(meta.ExpiresAtUtc).toEqual({ json: '"2026-11-26T10:00:00"' });
    expect(meta.SessionId).toEqual({ string: 's1' });
    expect(meta.ApplicationProperties).toEqual({ json: '{"a":1}' });
    expect(meta.UserProperties).toEqual(meta.ApplicationProperties);
    expect(meta).not.toHaveProperty('ContentType');
  });

  it('clamps an infinite expiry to DateTime.MaxValue', () => {
    const meta = singleTriggerMetadata(message({ body: Buffer.from('x'), expiresAtUtc: new Date(8.64e15) }), 'fn');
    expect(meta.ExpiresAtUtc).toEqual({ json: '"9999-12-31T23:59:59.9999999"' });
  });

  it('has Array forms for batches', () => {
    const meta = batchTriggerMetadata([message({ body: Buffer.from('x') }), message({ body: Buffer.from('y'), messageId: 'id-2', deliveryCount: 2 })], 'fn');
    expect(meta.MessageIdArray).toEqual({ collectionString: { string: ['id-1', 'id-2'] } });
    expect(meta.DeliveryCountArray).toEqual({ json: '[1,3]' });
    expect(meta.SequenceNumberArray).toEqual({ collectionSint64: { sint64: [42, 42] } });
    expect(meta.ApplicationPropertiesArray).toEqual({ json: '[{"a":1},{"a":1}]' });
  });
});
