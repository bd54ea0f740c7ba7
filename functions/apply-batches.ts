/**
 * Service Bus trigger on `replication-batches` (sessions: one per disk, so each disk's batches
 * are applied strictly in order by one instance at a time while disks proceed in parallel).
 *
 * It uses the SDK-type binding (`sdkBinding: true`, @azure/functions-extensions-servicebus) so
 * that it settles each message itself: complete when applied or already applied, dead-letter
 * with a specific reason when the batch can never be applied, abandon (then rethrow) on a
 * transient failure so Service Bus redelivers it, dead-lettering after MaxDeliveryCount.
 */
import '@azure/functions-extensions-servicebus';
import type { ServiceBusMessageContext } from '@azure/functions-extensions-servicebus';
import { app, type InvocationContext } from '@azure/functions';
import { applyDeps } from '../shared/azure/composition';
import { applyBatchMessages } from '../shared/services/apply';

export const REPLICATION_QUEUE = 'replication-batches';

/**
 * The Settlement proto declares the dead-letter reason and description as
 * google.protobuf.StringValue, so gRPC needs `{ value }`; the package (0.2.0-preview) types them
 * as plain strings, and a plain string fails to serialize ("object expected") in Azure as here.
 */
function stringValue(text: string): string {
  return { value: text } as unknown as string;
}

export async function applyBatches(messageContext: ServiceBusMessageContext, context: InvocationContext): Promise<void> {
  const messages = Array.isArray(messageContext.messages) ? messageContext.messages : [messageContext.messages];
  let outcomes;
  try {
    // One session's messages, in order: consecutive batches of the disk are written together.
    // One receive is one session; each batch must belong to it (checked against the envelope).
    const sessionId = messages[0]?.sessionId;
    outcomes = await applyBatchMessages(applyDeps(), messages.map((m) => m.body), sessionId === undefined ? {} : { sessionId });
  } catch (err) {
    context.warn(`${messages.length} batch message(s) not applied, will be redelivered: ${err instanceof Error ? err.message : String(err)}`);
    for (const m of messages) await messageContext.actions.abandon(m);
    throw err;
  }
  for (const [i, message] of messages.entries()) {
    const outcome = outcomes[i];
    if (!outcome) continue;
    if (outcome.kind === 'dead-letter') {
      context.warn(`Batch ${String(message.messageId)} dead-lettered: ${outcome.reason}: ${outcome.description}`);
      await messageContext.actions.deadletter(message, undefined, stringValue(outcome.reason), stringValue(outcome.description));
      continue;
    }
    if (outcome.kind === 'applied') {
      if (outcome.stats.segmentsCommitted > 0 || outcome.vmState) {
        const grouped = outcome.stats.groupedBatches ? ` (${outcome.stats.groupedBatches} batches written together)` : '';
        context.log(
          `Applied ${outcome.vmId}/${outcome.diskId} epoch ${outcome.epoch} seq ${outcome.sequence}: ${outcome.stats.extentsWritten} extents, ${outcome.stats.bytesUploaded} bytes up${grouped}` +
            (outcome.vmState ? `; VM now ${outcome.vmState}` : ''),
        );
      }
    } else {
      context.log(`Duplicate ${outcome.vmId}/${outcome.diskId} epoch ${outcome.epoch} seq ${outcome.sequence} (applied ${outcome.appliedSequence}): completed without change`);
    }
    await messageContext.actions.complete(message);
  }
}

app.serviceBusQueue('apply-batches', {
  connection: 'ServiceBusConnection',
  queueName: REPLICATION_QUEUE,
  isSessionsEnabled: true,
  sdkBinding: true,
  autoCompleteMessages: false,
  // A session receive's messages together, so consecutive batches of a disk are written once.
  cardinality: 'many',
  handler: applyBatches as unknown as (message: unknown, context: InvocationContext) => Promise<void>,
});
