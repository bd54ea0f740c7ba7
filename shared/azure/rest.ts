/** Small helpers shared by the Azure adapters. */

/** The HTTP status of an Azure SDK error (RestError and friends), if it has one. */
export function statusOf(err: unknown): number | undefined {
  const s = (err as { statusCode?: unknown } | null)?.statusCode;
  return typeof s === 'number' ? s : undefined;
}

/** Runs `fn` over `items` with at most `limit` calls in flight. */
export async function runLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const item = items[next++] as T;
      await fn(item);
    }
  });
  await Promise.all(workers);
}

/** Like runLimited, collecting each item's result in the items' order. */
export async function runLimitedMap<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  const indexed = items.map((item, i) => ({ item, i }));
  await runLimited(indexed, limit, async ({ item, i }) => {
    out[i] = await fn(item);
  });
  return out;
}
