/** The CloudTransport over the Azure SDKs: staging blobs with @azure/storage-blob, messages with @azure/service-bus. */
import { ServiceBusClient, type ServiceBusSender } from '@azure/service-bus';
import '../../shared/azure/amqp-fixes';
import type { AmqpAnnotatedMessage } from '@azure/core-amqp';
import { BlobServiceClient, type ContainerClient } from '@azure/storage-blob';
import type { CloudTransport } from './outbox';

export const BATCH_QUEUE = 'replication-batches';

export class AzureTransport implements CloudTransport {
  private client: ServiceBusClient | undefined;
  private sender: ServiceBusSender | undefined;
  private readonly containers = new Map<string, Promise<ContainerClient>>();
  private readonly blobs: BlobServiceClient;

  constructor(private readonly serviceBusConnection: string, storageConnection: string) {
    // Our own retry loop (the outbox) handles outages; the SDKs should fail fast instead.
    this.blobs = BlobServiceClient.fromConnectionString(storageConnection, { retryOptions: { maxTries: 2, tryTimeoutInMs: 60_000 } });
  }

  private container(name: string): Promise<ContainerClient> {
    let p = this.containers.get(name);
    if (!p) {
      const c = this.blobs.getContainerClient(name);
      p = c.createIfNotExists().then(() => c);
      p.catch(() => this.containers.delete(name));
      this.containers.set(name, p);
    }
    return p;
  }

  async stage(container: string, name: string, body: Buffer): Promise<void> {
    const c = await this.container(container);
    await c.getBlockBlobClient(name).uploadData(body, { blockSize: 8 * 1024 * 1024, concurrency: 1 });
  }

  private batchSender(): ServiceBusSender {
    if (!this.sender) {
      this.client = new ServiceBusClient(this.serviceBusConnection, { retryOptions: { maxRetries: 1, timeoutInMs: 15_000, retryDelayInMs: 200 } });
      this.sender = this.client.createSender(BATCH_QUEUE);
    }
    return this.sender;
  }

  async send(message: { body: unknown; contentType: string; sessionId: string; messageId: string }): Promise<void> {
    const sender = this.batchSender();
    if (Buffer.isBuffer(message.body)) {
      // A binary batch goes as an AMQP value section: the Functions Service Bus extension hands a
      // value section's bytes over as they are, where it would decode a data section as UTF-8 text.
      const amqp: AmqpAnnotatedMessage = {
        body: message.body,
        bodyType: 'value',
        properties: { messageId: message.messageId, groupId: message.sessionId, contentType: message.contentType },
      };
      await sender.sendMessages(amqp);
      return;
    }
    await sender.sendMessages(message);
  }

  /**
   * The queue's maximum message size as the broker announces it on the sender link; 0 (JSON
   * forms only) with FERRY_BINARY_MESSAGES=0, for functions older than binary batch messages.
   */
  async maxMessageBytes(): Promise<number> {
    if (process.env.FERRY_BINARY_MESSAGES === '0') return 0;
    const batch = await this.batchSender().createMessageBatch();
    return batch.maxSizeInBytes;
  }

  async reset(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    this.sender = undefined;
    await client?.close().catch(() => undefined);
  }

  async close(): Promise<void> {
    await this.reset();
  }
}
