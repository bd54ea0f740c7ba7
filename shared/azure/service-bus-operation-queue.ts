/** OperationQueue over the Service Bus queue `operations` (one sender per process). */
import { ServiceBusClient, type ServiceBusSender } from '@azure/service-bus';
import './amqp-fixes';
import { OPERATIONS_QUEUE, type OperationMessage, type OperationQueue } from '../ports/operation-queue';

export class ServiceBusOperationQueue implements OperationQueue {
  private sender: ServiceBusSender | undefined;

  constructor(private readonly connectionString: string, private readonly queue = OPERATIONS_QUEUE) {}

  async enqueue(message: OperationMessage): Promise<void> {
    this.sender ??= new ServiceBusClient(this.connectionString).createSender(this.queue);
    await this.sender.sendMessages({ body: message, contentType: 'application/json', messageId: `${message.vmId}:${message.operationId}` });
  }
}
