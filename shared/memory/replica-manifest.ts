/**
 * ReplicaManifest over any DiskStore, by reading and hashing each extent: what the block
 * lists of the Azure layout say without reading. For unit tests and the memory stores only.
 */
import { contentBlockId, extentRange } from '../domain/extents';
import type { DiskRef, DiskStore } from '../ports/disk-store';
import type { ReplicaManifest } from '../ports/replica-manifest';

export class HashingReplicaManifest implements ReplicaManifest {
  constructor(private readonly disks: DiskStore) {}

  async blockIds(disk: DiskRef, sizeBytes: number, from: number, count: number): Promise<string[]> {
    const ids: string[] = [];
    for (let index = from; index < from + count; index++) {
      const { offset, length } = extentRange(index, sizeBytes);
      ids.push(contentBlockId(await this.disks.read(disk, sizeBytes, offset, length)));
    }
    return ids;
  }
}
