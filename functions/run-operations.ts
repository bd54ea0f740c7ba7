/**
 * Service Bus trigger on `operations` (non-session, autoComplete): runs or resumes one
 * operation. A transient failure throws, so the message is abandoned and redelivered; on the
 * last delivery (MaxDeliveryCount 10) the operation is marked failed instead.
 */
import { app, type InvocationContext } from '@azure/functions';
import { operationDeps } from '../shared/azure/composition';
import { OPERATIONS_QUEUE, type OperationMessage } from '../shared/ports/operation-queue';
import { runOperation } from '../shared/services/operations';

const MAX_DELIVERY_COUNT = 10;

function parseMessage(body: unknown): OperationMessage | undefined {
  const obj = typeof body === 'string' ? (JSON.parse(body) as unknown) : body;
  const m = obj as Partial<OperationMessage> | null;
  return typeof m?.vmId === 'string' && typeof m.operationId === 'string' ? { vmId: m.vmId, operationId: m.operationId } : undefined;
}

export async function runOperations(body: unknown, context: InvocationContext): Promise<void> {
  const message = parseMessage(body);
  if (!message) {
    context.warn(`Ignoring a message on '${OPERATIONS_QUEUE}' that is not {vmId, operationId}.`);
    return;
  }
  const deliveryCount = Number(context.triggerMetadata?.deliveryCount ?? 1);
  const outcome = await runOperation(operationDeps(), message, { finalAttempt: deliveryCount >= MAX_DELIVERY_COUNT });
  if (outcome.kind === 'skipped') context.log(`Operation ${message.operationId}: skipped (${outcome.reason}).`);
  else if (outcome.kind === 'succeeded') context.log(`Operation ${message.operationId} (${outcome.operation.type} of ${message.vmId}) succeeded.`);
  else context.warn(`Operation ${message.operationId} (${outcome.operation.type} of ${message.vmId}) failed: ${outcome.operation.error?.message ?? 'unknown'}`);
}

app.serviceBusQueue('run-operations', {
  connection: 'ServiceBusConnection',
  queueName: OPERATIONS_QUEUE,
  handler: runOperations,
});
