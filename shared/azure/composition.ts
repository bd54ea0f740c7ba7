/**
 * The composition root of the cloud side: builds the concrete ports from app settings, once
 * per process (a Functions worker keeps module state between invocations). Settings are read
 * from the environment, where Azure Functions (and the local host) put the app settings.
 */
import { randomBytes } from 'node:crypto';
import { BlobServiceClient } from '@azure/storage-blob';
import { STAGING_CONTAINER } from '../domain/envelope';
import type { ApplyDeps } from '../services/apply';
import type { ReplicationDeps } from '../services/deps';
import type { OperationDeps } from '../services/operations';
import { BlobCaptureStore } from './blob-capture-store';
import { BlobDiskStore } from './blob-disk-store';
import { BlobVhdStore } from './blob-vhd-store';
import { ServiceBusCompactionQueue } from './service-bus-compaction-queue';
import { ServiceBusOperationQueue } from './service-bus-operation-queue';
import { BlobStagingStore } from './blob-staging-store';
import { TableStateStore } from './table-state-store';

export const DISKS_CONTAINER = 'disks';

/** Azurite's development storage, spelled out: the SDKs do not all accept the shorthand. */
const DEVELOPMENT_STORAGE =
  'DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;' +
  'BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;';

export class ConfigurationError extends Error {
  override readonly name = 'ConfigurationError';
}

export function storageConnectionString(env: NodeJS.ProcessEnv = process.env): string {
  const cs = env.AzureWebJobsStorage;
  if (!cs) throw new ConfigurationError('The app setting AzureWebJobsStorage is not set; set it to the storage account connection string.');
  return /UseDevelopmentStorage=true/i.test(cs) ? DEVELOPMENT_STORAGE : cs;
}

export function masterKeyFromEnv(env: NodeJS.ProcessEnv = process.env): Buffer {
  const b64 = env.FERRY_MASTER_KEY;
  const key = b64 ? Buffer.from(b64, 'base64') : Buffer.alloc(0);
  if (key.length !== 32) {
    throw new ConfigurationError('The app setting FERRY_MASTER_KEY must be the base64 of 32 bytes (a Key Vault reference in Azure); it is missing or malformed.');
  }
  return key;
}

/**
 * Storage retries of the host: a few quick ones. The SDK's default (4 tries, 4 s doubling: up to
 * 28 s of backoff on one request) outlived a message's session lock when storage blinked, so
 * the batch was redelivered anyway, and kept an apply waiting long after storage was back.
 * Service Bus redelivery is the longer retry.
 */
const BLOB_RETRY = { retryOptions: { maxTries: 4, retryDelayInMs: 500, maxRetryDelayInMs: 4000 } };

let cached: (ApplyDeps & { captures: BlobCaptureStore }) | undefined;
let cachedOperations: OperationDeps | undefined;

export function replicationDeps(): ReplicationDeps {
  return applyDeps();
}

/** Recovery points and operations: the apply deps plus VHD page blobs and the `operations` queue. */
export function operationDeps(env: NodeJS.ProcessEnv = process.env): OperationDeps {
  if (cachedOperations) return cachedOperations;
  const base = applyDeps();
  const sb = env.ServiceBusConnection;
  if (!sb) throw new ConfigurationError('The app setting ServiceBusConnection is not set; set it to the Service Bus connection string.');
  cachedOperations = {
    ...base,
    vhds: new BlobVhdStore(BlobServiceClient.fromConnectionString(storageConnectionString(), BLOB_RETRY)),
    queue: new ServiceBusOperationQueue(sb),
  };
  return cachedOperations;
}

export function applyDeps(): ApplyDeps & { captures: BlobCaptureStore } {
  if (cached) return cached;
  const cs = storageConnectionString();
  const blobs = BlobServiceClient.fromConnectionString(cs, BLOB_RETRY);
  cached = {
    staging: new BlobStagingStore(blobs.getContainerClient(STAGING_CONTAINER)),
    state: TableStateStore.fromConnectionString(cs),
    disks: new BlobDiskStore(blobs.getContainerClient(DISKS_CONTAINER)),
    captures: new BlobCaptureStore(blobs.getContainerClient(DISKS_CONTAINER)),
    masterKey: masterKeyFromEnv(),
    // Background compaction of delta logs; without Service Bus, captures still fold the logs.
    ...(process.env.ServiceBusConnection ? { compactions: new ServiceBusCompactionQueue(process.env.ServiceBusConnection) } : {}),
    now: () => Date.now(),
    randomBytes: (n) => randomBytes(n),
  };
  return cached;
}
