/** CompactionQueue over the Service Bus session queue `compactions` (one sender per process). */
import { ServiceBusClient, type ServiceBusSender } from '@azure/service-bus';
import { COMPACTIONS_QUEUE, compactionSessionId, type CompactionQueue, type CompactionRequest } from '../ports/compaction-queue';

export class ServiceBusCompactionQueue implements CompactionQueue {
  private sender: ServiceBusSender | undefined;

  constructor(private readonly connectionString: string, private readonly queue = COMPACTIONS_QUEUE) {}

  async request(message: CompactionRequest): Promise<void> {
    this.sender ??= new ServiceBusClient(this.connectionString).createSender(this.queue);
    await this.sender.sendMessages({ body: message, contentType: 'application/json', sessionId: compactionSessionId(message) });
  }
}
