/**
 * The Service Bus message of a sealed batch, as the outbox keeps it until it is sent
 * (docs/wire-format.md, "The Service Bus envelope" and "Binary batch messages").
 */
import { envelopeFor } from '../../shared/codec/envelope';
import type { JsonBatchEnvelope } from '../../shared/domain/envelope';

/**
 * A JSON envelope (inline base64, or naming a staging blob to upload first), or a binary batch
 * message whose body is the sealed batch itself. The binary form holds no bytes: the outbox
 * sends the batch's own buffer (or its cache file), so a spilled batch frees its memory and a
 * seal worker posts no copy.
 */
export type OutgoingMessage = { sessionId: string; messageId: string } & ({ envelope: JsonBatchEnvelope; stagedName?: string } | { binary: true });

/** The message for a sealed batch on a queue taking messages of `maxMessageBytes` (undefined: not known yet, JSON forms). */
export function outgoingMessage(sealed: Buffer, maxMessageBytes: number | undefined): OutgoingMessage {
  const { envelope, staged, sessionId, messageId } = envelopeFor(sealed, maxMessageBytes === undefined ? {} : { maxMessageBytes });
  if (Buffer.isBuffer(envelope)) return { sessionId, messageId, binary: true };
  return { sessionId, messageId, envelope, ...(staged ? { stagedName: staged.name } : {}) };
}
