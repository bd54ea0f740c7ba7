/**
 * Composition of the resync and hash-manifest use cases (services/resync.ts): the apply deps
 * of composition.ts plus a ReplicaManifest over the same `disks` container. Built once per
 * process, like the rest.
 */
import { BlobServiceClient } from '@azure/storage-blob';
import type { HashDeps } from '../services/resync';
import { BlobReplicaManifest } from './blob-replica-manifest';
import { DISKS_CONTAINER, applyDeps, storageConnectionString } from './composition';

let cached: HashDeps | undefined;

export function hashDeps(): HashDeps {
  if (cached) return cached;
  const base = applyDeps();
  const container = BlobServiceClient.fromConnectionString(storageConnectionString()).getContainerClient(DISKS_CONTAINER);
  cached = { ...base, manifests: new BlobReplicaManifest(container) };
  return cached;
}
