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
  /**
   * The blob's bytes, or undefined when it does not exist. A blob larger than `maxBytes` is
   * refused with StagingTooLargeError (permanent: the apply function dead-letters the batch).
   */
  get(name: string, maxBytes: number): Promise<Buffer | undefined>;
  /** Idempotent. */
  delete(name: string): Promise<void>;
  list(prefix?: string): AsyncIterable<StagedBlobInfo>;
}

/** A staged blob is larger than the caller accepts (the envelope's sizeBytes): permanent. */
export class StagingTooLargeError extends Error {
  override readonly name = 'StagingTooLargeError';
}

/** Type guard on `name`, not `instanceof`. */
export function isStagingTooLargeError(err: unknown): err is StagingTooLargeError {
  return typeof err === 'object' && err !== null && (err as { name?: unknown }).name === 'StagingTooLargeError';
}
