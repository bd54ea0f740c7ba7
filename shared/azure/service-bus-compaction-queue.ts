/** CompactionQueue over the Service Bus session queue `compactions` (one sender per process). */
import { ServiceBusClient, type ServiceBusSender } from '@azure/service-bus';
import './amqp-fixes';
import { COMPACTIONS_QUEUE, compactionSessionId, type CompactionQueue, type CompactionRequest } from '../ports/compaction-queue';

/**
 * A send takes milliseconds when Service Bus is up. With the SDK's default (60 s per try, 3
 * retries) a send stuck on a connection that died with an outage could hold an apply
 * invocation (which asks for captures and compactions) for minutes, and its session and the
 * VM's RPO with it. Here a failed request throws within about 35 s: the batch is redelivered
 * and asks again.
 */
const SEND_RETRY = { retryOptions: { maxRetries: 3, timeoutInMs: 10_000, retryDelayInMs: 500 } };

export class ServiceBusCompactionQueue implements CompactionQueue {
  private sender: ServiceBusSender | undefined;

  constructor(private readonly connectionString: string, private readonly queue = COMPACTIONS_QUEUE) {}

  async request(message: CompactionRequest, delayMs = 0): Promise<void> {
    this.sender ??= new ServiceBusClient(this.connectionString, SEND_RETRY).createSender(this.queue);
    const msg = { body: message, contentType: 'application/json', sessionId: compactionSessionId(message) };
    if (delayMs > 0) await this.sender.scheduleMessages(msg, new Date(Date.now() + delayMs));
    else await this.sender.sendMessages(msg);
  }
}
