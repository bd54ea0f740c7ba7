/**
 * OperationQueue: hands a long-running operation to the queue-triggered worker (Service Bus
 * queue `operations`, non-session). At least once: the worker's processing is idempotent, and
 * the operation's state is in the StateStore, not in the message.
 */
export const OPERATIONS_QUEUE = 'operations';

export interface OperationMessage {
  vmId: string;
  operationId: string;
}

export interface OperationQueue {
  enqueue(message: OperationMessage): Promise<void>;
}
