/** CompactionQueue over the Service Bus session queue `compactions` (one sender per process). */
import { ServiceBusClient, type ServiceBusSender } from '@azure/service-bus';
import { COMPACTIONS_QUEUE, compactionSessionId, type CompactionQueue, type CompactionRequest } from '../ports/compaction-queue';

export class ServiceBusCompactionQueue implements CompactionQueue {
  private sender: ServiceBusSender | undefined;

  constructor(private readonly connectionString: string, private readonly queue = COMPACTIONS_QUEUE) {}

  async request(message: CompactionRequest, delayMs = 0): Promise<void> {
    this.sender ??= new ServiceBusClient(this.connectionString).createSender(this.queue);
    const msg = { body: message, contentType: 'application/json', sessionId: compactionSessionId(message) };
    if (delayMs > 0) await this.sender.scheduleMessages(msg, new Date(Date.now() + delayMs));
    else await this.sender.sendMessages(msg);
  }
}
