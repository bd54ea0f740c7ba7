/**
 * A StagingStore view for one session receive that downloads the staged payloads a few ahead
 * of their use (at most PREFETCH_COUNT blobs and PREFETCH_BYTES at once), so fetching the next
 * batches overlaps writing the current group instead of following it. Everything else passes
 * through. A prefetched blob is handed out once and then forgotten (memory stays bounded).
 */
import type { StagedBlobInfo, StagingStore } from '../ports/staging-store';

const PREFETCH_COUNT = 4;
const PREFETCH_BYTES = 64 * 1024 * 1024;

export interface StagedRef {
  name: string;
  sizeBytes: number;
}

export class PrefetchingStaging implements StagingStore {
  private readonly started = new Map<string, { blob: Promise<Buffer | undefined>; sizeBytes: number }>();
  private next = 0;

  constructor(private readonly inner: StagingStore, private readonly refs: readonly StagedRef[]) {}

  private fill(from: number): void {
    this.next = Math.max(this.next, from);
    let bytes = 0;
    for (const s of this.started.values()) bytes += s.sizeBytes;
    while (this.next < this.refs.length && this.started.size < PREFETCH_COUNT) {
      const ref = this.refs[this.next] as StagedRef;
      if (this.started.size > 0 && bytes + ref.sizeBytes > PREFETCH_BYTES) break;
      this.next++;
      if (this.started.has(ref.name)) continue;
      const blob = this.inner.get(ref.name, ref.sizeBytes);
      blob.catch(() => undefined); // observed when used; an unused failure is not an error
      this.started.set(ref.name, { blob, sizeBytes: ref.sizeBytes });
      bytes += ref.sizeBytes;
    }
  }

  get(name: string, maxBytes: number): Promise<Buffer | undefined> {
    const index = this.refs.findIndex((r) => r.name === name && r.sizeBytes === maxBytes);
    if (index < 0) return this.inner.get(name, maxBytes);
    this.fill(index);
    const p = this.started.get(name)?.blob ?? this.inner.get(name, maxBytes);
    this.started.delete(name); // the caller holds it now; the next get fetches further ahead
    return p;
  }

  put(name: string, body: Buffer): Promise<void> {
    return this.inner.put(name, body);
  }

  delete(name: string): Promise<void> {
    return this.inner.delete(name);
  }

  list(prefix?: string): AsyncIterable<StagedBlobInfo> {
    return this.inner.list(prefix);
  }
}
