/** StagingStore over blob container `staging`. */
import type { ContainerClient } from '@azure/storage-blob';
import { STAGING_CONTAINER } from '../domain/envelope';
import { StagingTooLargeError, type StagedBlobInfo, type StagingStore } from '../ports/staging-store';
import { statusOf } from './rest';

export { StagingTooLargeError };

export class BlobStagingStore implements StagingStore {
  private ensured: Promise<unknown> | undefined;
  constructor(private readonly container: ContainerClient) {
    if (container.containerName !== STAGING_CONTAINER) throw new Error(`The staging container must be named '${STAGING_CONTAINER}'.`);
  }

  async put(name: string, body: Buffer): Promise<void> {
    this.ensured ??= this.container.createIfNotExists();
    await this.ensured;
    await this.container.getBlockBlobClient(name).uploadData(body, { blockSize: 4 * 1024 * 1024, concurrency: 4 });
  }

  async get(name: string, maxBytes: number): Promise<Buffer | undefined> {
    const blob = this.container.getBlockBlobClient(name);
    try {
      const props = await blob.getProperties();
      if ((props.contentLength ?? 0) > maxBytes) throw new StagingTooLargeError(`Staging blob ${name} is ${props.contentLength} bytes, above the ${maxBytes} bytes expected.`);
      return await blob.downloadToBuffer(0, props.contentLength ?? 0);
    } catch (err) {
      if (statusOf(err) === 404) return undefined;
      throw err;
    }
  }

  async delete(name: string): Promise<void> {
    await this.container.deleteBlob(name).catch((err: unknown) => {
      if (statusOf(err) !== 404) throw err;
    });
  }

  async *list(prefix?: string): AsyncIterable<StagedBlobInfo> {
    try {
      for await (const b of this.container.listBlobsFlat(prefix ? { prefix } : {})) {
        yield { name: b.name, lastModified: b.properties.lastModified?.getTime() ?? 0 };
      }
    } catch (err) {
      if (statusOf(err) !== 404) throw err;
    }
  }
}
