import { describe, expect, it } from 'vitest';
import { BATCH_DATA_BYTES, BatchBuilder, BufferPool, toRecords } from '../../../local/appliance/batching';

describe('BatchBuilder', () => {
  it('coalesces adjacent data and adjacent zero records, keeping data back to back', () => {
    const b = new BatchBuilder(Buffer.alloc(1024 * 1024));
    b.addData(0, Buffer.alloc(512, 1), 10);
    b.addData(512, Buffer.alloc(512, 2), 5);
    b.addZero(1024, 512, 7);
    b.addZero(1536, 1024, 7);
    b.addData(4096, Buffer.alloc(512, 3), 8);
    const t = b.take();
    expect(t.records).toEqual([
      { kind: 'data', offset: 0, length: 1024 },
      { kind: 'zero', offset: 1024, length: 1536 },
      { kind: 'data', offset: 4096, length: 512 },
    ]);
    expect(t.firstReadAt).toBe(5);
    const recs = toRecords(t);
    expect(recs[0]).toMatchObject({ kind: 'data', offset: 0 });
    expect(Buffer.from((recs[0] as { data: Uint8Array }).data)).toEqual(Buffer.concat([Buffer.alloc(512, 1), Buffer.alloc(512, 2)]));
    expect(Buffer.from((recs[2] as { data: Uint8Array }).data)).toEqual(Buffer.alloc(512, 3));
    expect(b.empty).toBe(true);
  });

  it('does not coalesce a gap', () => {
    const b = new BatchBuilder(Buffer.alloc(4096));
    b.addData(0, Buffer.alloc(512), 1);
    b.addData(1024, Buffer.alloc(512), 1);
    expect(b.take().records).toHaveLength(2);
  });

  it('overflows at the batch data limit', () => {
    const b = new BatchBuilder(Buffer.alloc(BATCH_DATA_BYTES));
    b.addData(0, Buffer.alloc(BATCH_DATA_BYTES - 512), 1);
    expect(b.wouldOverflow(512)).toBe(false);
    expect(b.wouldOverflow(1024)).toBe(true);
  });
});

describe('BufferPool', () => {
  it('hands out a fixed number of buffers and makes the next taker wait for a release', async () => {
    const pool = new BufferPool(2, 4096);
    const a = await pool.acquire();
    const b = await pool.acquire();
    expect(a.buffer).toBeInstanceOf(SharedArrayBuffer);
    let got: Buffer | undefined;
    const c = pool.acquire().then((x) => (got = x));
    await Promise.resolve();
    expect(got).toBeUndefined();
    pool.release(a.subarray(0, 100));
    await c;
    expect(got!.buffer).toBe(a.buffer);
    expect(got!.length).toBe(4096);
    void b;
  });
});
