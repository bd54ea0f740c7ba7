/**
 * StagingStore: sealed batches too large for a Service Bus message wait in blob container
 * `staging` (docs/wire-format.md). The appliance uploads before it sends the message; the apply
 * function downloads, and deletes once applied. Orphans are removed by a timer after a grace period.
 */
export interface StagedBlobInfo {
  name: string;
  /** ms since epoch. */
  lastModified: number;
}

export interface StagingStore {
  put(name: string, body: Buffer): Promise<void>;
  /** The blob's bytes, or undefined when it does not exist. Refuses blobs larger than `maxBytes`. */
  get(name: string, maxBytes: number): Promise<Buffer | undefined>;
  /** Idempotent. */
  delete(name: string): Promise<void>;
  list(prefix?: string): AsyncIterable<StagedBlobInfo>;
}
