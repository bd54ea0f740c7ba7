/**
 * Service Bus messages as the Functions host sends them for SDK-type bindings
 * (`sdkBinding: true`): RpcTypedData `modelBindingData` with source
 * `AzureServiceBusReceivedMessage`, whose content is the message's lock token (16 bytes, .NET
 * GUID byte order), the ASCII marker `x-opt-lock-token`, then the whole AMQP-encoded message.
 * @azure/functions-extensions-servicebus decodes exactly that (`ServiceBusMessageDecoder`).
 *
 * The JavaScript client does not keep the bytes it received, so the AMQP message is encoded
 * again from `_rawAmqpMessage` (header, delivery and message annotations, properties,
 * application properties, body sections and footer as the broker sent them).
 */
import { AmqpMessageHeader, AmqpMessageProperties } from '@azure/core-amqp';
import type { ServiceBusReceivedMessage } from '@azure/service-bus';
import rhea from 'rhea';
import type { RpcTypedData } from '../core-types';

export const MODEL_BINDING_SOURCE = 'AzureServiceBusReceivedMessage';
const LOCK_TOKEN_MARKER = Buffer.from('x-opt-lock-token', 'ascii');

export interface ModelBindingData {
  version: string;
  source: string;
  contentType: string;
  content: Buffer;
}

/** RpcTypedData with the model binding fields the worker protocol has (not in the host's core types). */
export type SdkTypedData = RpcTypedData & {
  modelBindingData?: ModelBindingData;
  collectionModelBindingData?: { modelBindingData: ModelBindingData[] };
};

/** A GUID string in .NET's `Guid.ToByteArray()` order: the first three groups little-endian. */
export function lockTokenBytes(token: string): Buffer {
  const hex = token.replace(/[{}]/g, '');
  const groups = hex.split('-');
  if (groups.length !== 5 || !/^[0-9a-fA-F-]{36}$/.test(hex)) throw new Error(`Not a GUID lock token: "${token}"`);
  const [a, b, c, d, e] = groups.map((g) => Buffer.from(g, 'hex')) as [Buffer, Buffer, Buffer, Buffer, Buffer];
  return Buffer.concat([a.reverse(), b.reverse(), c.reverse(), d, e]);
}

/** The received message encoded again as one AMQP message (bare message plus annotations). */
export function encodeAmqpMessage(message: ServiceBusReceivedMessage): Buffer {
  const raw = message._rawAmqpMessage;
  const rheaMessage: Record<string, unknown> = {
    ...AmqpMessageHeader.toRheaMessageHeader(raw.header ?? {}),
    ...AmqpMessageProperties.toRheaMessageProperties(raw.properties ?? {}),
  };
  if (raw.deliveryAnnotations && Object.keys(raw.deliveryAnnotations).length > 0) rheaMessage.delivery_annotations = raw.deliveryAnnotations;
  if (raw.messageAnnotations && Object.keys(raw.messageAnnotations).length > 0) rheaMessage.message_annotations = raw.messageAnnotations;
  if (raw.applicationProperties && Object.keys(raw.applicationProperties).length > 0) rheaMessage.application_properties = raw.applicationProperties;
  if (raw.footer && Object.keys(raw.footer).length > 0) rheaMessage.footer = raw.footer;
  // The body as rhea decoded it: a data or sequence Section (encoded back as is), or an amqp-value.
  if (raw.body !== undefined) rheaMessage.body = raw.body;
  return rhea.message.encode(rheaMessage as unknown as rhea.Message);
}

export function modelBindingData(message: ServiceBusReceivedMessage): ModelBindingData {
  if (!message.lockToken) throw new Error('SDK-type bindings need peekLock messages (the message has no lock token).');
  return {
    version: '1.0',
    source: MODEL_BINDING_SOURCE,
    contentType: 'application/octet-stream',
    content: Buffer.concat([lockTokenBytes(message.lockToken), LOCK_TOKEN_MARKER, encodeAmqpMessage(message)]),
  };
}

export function sdkTypedData(messages: ServiceBusReceivedMessage[], many: boolean): SdkTypedData {
  if (many) return { collectionModelBindingData: { modelBindingData: messages.map(modelBindingData) } };
  return { modelBindingData: modelBindingData(messages[0] as ServiceBusReceivedMessage) };
}
