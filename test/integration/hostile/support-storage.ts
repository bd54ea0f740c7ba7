/**
 * What the stack holds, for "nothing was stored" assertions: every table entity (its
 * properties, so an update shows), every blob in every container (with its ETag), and the
 * messages waiting on the non-session queues. Two snapshots are equal only if nothing was
 * written, apart from what the health-monitor timer writes on its own every minute (a VM
 * row's `lastHealth` and the `updatedAt` stamped with it, and so its ETag and Timestamp), which
 * is left out.
 */
import { ServiceBusClient } from '@azure/service-bus';
import { TableClient, TableServiceClient } from '@azure/data-tables';
import { BlobServiceClient } from '@azure/storage-blob';
import type { TestStack } from '../../support/stack';

export interface StorageSnapshot {
  tables: Record<string, string[]>;
  blobs: Record<string, string[]>;
  queues: Record<string, string[]>;
}

export async function snapshotStorage(stack: TestStack, queues: readonly string[] = ['operations']): Promise<StorageSnapshot> {
  const cs = stack.storageConnectionString;
  const tables: Record<string, string[]> = {};
  for await (const t of TableServiceClient.fromConnectionString(cs, { allowInsecureConnection: true }).listTables()) {
    const name = t.name!;
    const rows: string[] = [];
    for await (const e of TableClient.fromConnectionString(cs, name, { allowInsecureConnection: true }).listEntities()) {
      const { etag: _etag, timestamp: _timestamp, lastHealth: _lastHealth, updatedAt: _updatedAt, ...rest } = e as Record<string, unknown>;
      rows.push(JSON.stringify(rest));
    }
    tables[name] = rows.sort();
  }
  const blobs: Record<string, string[]> = {};
  const service = BlobServiceClient.fromConnectionString(cs);
  for await (const c of service.listContainers()) {
    const names: string[] = [];
    for await (const b of service.getContainerClient(c.name).listBlobsFlat()) names.push(`${b.name}|${b.properties.etag}`);
    blobs[c.name] = names.sort();
  }
  const sb = new ServiceBusClient(stack.serviceBusConnectionString);
  const waiting: Record<string, string[]> = {};
  try {
    for (const q of queues) {
      const receiver = sb.createReceiver(q);
      waiting[q] = (await receiver.peekMessages(1000)).map((m) => `${m.sequenceNumber?.toString()}|${m.messageId}`);
      await receiver.close();
    }
  } finally {
    await sb.close();
  }
  return { tables, blobs, queues: waiting };
}
