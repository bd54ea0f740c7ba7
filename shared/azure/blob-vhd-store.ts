/**
 * VhdStore over page blobs: one container per purpose (`test-migrated`, `migrated`), created
 * on first use. Put Page is at most 4 MiB (Azure's limit; Azurite accepts more, Ferry does not
 * rely on it). URLs are returned without their query string, so never with a SAS.
 */
import type { BlobServiceClient, ContainerClient } from '@azure/storage-blob';
import { DiskStoreError } from '../ports/disk-store';
import { MAX_PAGE_WRITE_BYTES, type VhdContainer, type VhdStore, type VhdTarget } from '../ports/vhd-store';
import { statusOf } from './rest';

function wrap(err: unknown, what: string): DiskStoreError {
  if (err instanceof DiskStoreError) return err;
  const detail = err instanceof Error ? err.message.split('\n')[0] : String(err);
  return new DiskStoreError('STORAGE_UNAVAILABLE', `${what}: storage failed (${statusOf(err) ?? 'no status'}: ${detail}); retry.`, true, { cause: err });
}

export class BlobVhdStore implements VhdStore {
  private readonly ensured = new Map<VhdContainer, Promise<unknown>>();

  constructor(private readonly service: BlobServiceClient) {}

  private async containerFor(name: VhdContainer): Promise<ContainerClient> {
    const c = this.service.getContainerClient(name);
    let p = this.ensured.get(name);
    if (!p) {
      p = c.createIfNotExists();
      p.catch(() => this.ensured.delete(name));
      this.ensured.set(name, p);
    }
    await p;
    return c;
  }

  async create(target: VhdTarget, totalBytes: number): Promise<void> {
    try {
      const blob = (await this.containerFor(target.container)).getPageBlobClient(target.name);
      const props = await blob.getProperties().catch((err: unknown) => {
        if (statusOf(err) === 404) return undefined;
        throw err;
      });
      if (props?.blobType === 'PageBlob' && props.contentLength === totalBytes) return; // resumed: keep the pages written so far
      await blob.create(totalBytes, { blobHTTPHeaders: { blobContentType: 'application/octet-stream' } });
    } catch (err) {
      throw wrap(err, `creating page blob ${target.container}/${target.name}`);
    }
  }

  async writePages(target: VhdTarget, offset: number, data: Uint8Array): Promise<void> {
    if (data.length > MAX_PAGE_WRITE_BYTES || data.length % 512 !== 0 || offset % 512 !== 0) {
      throw new DiskStoreError('OUT_OF_BOUNDS', `A page write is 512-aligned and at most ${MAX_PAGE_WRITE_BYTES} bytes; got ${data.length} bytes at ${offset}.`, false);
    }
    try {
      const blob = (await this.containerFor(target.container)).getPageBlobClient(target.name);
      await blob.uploadPages(Buffer.from(data.buffer, data.byteOffset, data.length), offset, data.length);
    } catch (err) {
      throw wrap(err, `writing ${data.length} bytes at ${offset} of ${target.container}/${target.name}`);
    }
  }

  url(target: VhdTarget): string {
    const url = new URL(this.service.getContainerClient(target.container).getPageBlobClient(target.name).url);
    url.search = '';
    return url.toString();
  }

  async deletePrefix(container: VhdContainer, prefix: string): Promise<{ deleted: number }> {
    let deleted = 0;
    try {
      const c = await this.containerFor(container);
      for await (const item of c.listBlobsFlat({ prefix })) {
        await c.deleteBlob(item.name, { deleteSnapshots: 'include' }).catch((err: unknown) => {
          if (statusOf(err) !== 404) throw err;
        });
        deleted++;
      }
    } catch (err) {
      throw wrap(err, `deleting ${container}/${prefix}*`);
    }
    return { deleted };
  }
}
