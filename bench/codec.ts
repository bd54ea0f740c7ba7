/**
 * Codec benchmark: seal + open of 4 MiB extents (one extent per batch, as the appliance
 * sends the initial copy), in MB/s of disk bytes, on two seeded data sets:
 *   (a) random bytes;
 *   (b) disk-like: 40% zero extents, 30% text, 30% random, shuffled;
 *   (c) real binary data: the node executable (zstd against brotli only).
 * Zero extents are found with `buf.equals(zeroExtent)` and sent as zero records, as the
 * appliance does. Each figure has a baseline measured in the same run on the same bytes:
 * plain SHA-256, and a deflate-1 variant of the same pipeline (what node:zlib alone gives).
 *
 * `npm run bench -- codec`, or alone: `node dist/bench/codec.js`.
 */
import { createCipheriv, createDecipheriv, createHash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { openBatch, sealBatch } from '../shared/codec/batch';
import { zstdAvailable } from '../shared/codec/compression';
import type { Batch, BatchRecord, CodecName } from '../shared/domain/wire-format';
import { formatResults, type BenchResult } from './types';

const EXTENT = 4 * 1024 * 1024;
const EXTENTS = 20; // 80 MiB per data set: 8 zero, 6 text, 6 random in (b)
const RUNS = 5;
const KEY = Buffer.alloc(32, 0x5a);
const ZERO = Buffer.alloc(EXTENT);

/** xorshift32: fast, seeded, good enough for test data. */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

function randomExtent(next: () => number): Buffer {
  const buf = Buffer.allocUnsafe(EXTENT);
  const words = new Uint32Array(buf.buffer, buf.byteOffset, EXTENT / 4);
  for (let i = 0; i < words.length; i++) words[i] = next();
  return buf;
}

const WORDS = (
  'the of and to in is that for it as was with be by on not he this are or his from at which but have an they you were ' +
  'her she there been one all we their has would when if so no what up out more will into some time could them other ' +
  'config server error warning info debug request response user file directory kernel module process thread memory ' +
  'disk block sector volume partition mount replication azure session batch extent 0 1 2 3 42 100 2026 true false null'
).split(' ');

function textExtent(next: () => number): Buffer {
  const buf = Buffer.allocUnsafe(EXTENT);
  let pos = 0;
  while (pos < EXTENT) {
    const r = next();
    const word = WORDS[r % WORDS.length]!;
    pos += buf.write(word, pos, 'latin1');
    if (pos < EXTENT) buf[pos++] = r % 13 === 0 ? 0x0a : 0x20;
  }
  return buf;
}

function dataSets(): Array<{ name: string; extents: Buffer[] }> {
  const next = prng(20261126);
  const random = Array.from({ length: EXTENTS }, () => randomExtent(next));
  const kinds: Array<'zero' | 'text' | 'random'> = [
    ...Array<'zero'>(Math.round(EXTENTS * 0.4)).fill('zero'),
    ...Array<'text'>(Math.round(EXTENTS * 0.3)).fill('text'),
    ...Array<'random'>(EXTENTS - Math.round(EXTENTS * 0.4) - Math.round(EXTENTS * 0.3)).fill('random'),
  ];
  for (let i = kinds.length - 1; i > 0; i--) {
    const j = next() % (i + 1);
    [kinds[i], kinds[j]] = [kinds[j]!, kinds[i]!];
  }
  const diskLike = kinds.map((k) => (k === 'zero' ? Buffer.alloc(EXTENT) : k === 'text' ? textExtent(next) : randomExtent(next)));
  return [
    { name: 'random', extents: random },
    { name: 'disk-like', extents: diskLike },
  ];
}

/** (c) real binary data: 4 MiB extents of the running node executable (about 100 MB). */
function binaryExtents(count: number): Buffer[] {
  const fd = openSync(process.execPath, 'r');
  try {
    const out: Buffer[] = [];
    for (let i = 0; i < count; i++) {
      const buf = Buffer.alloc(EXTENT);
      if (readSync(fd, buf, 0, EXTENT, i * EXTENT) < EXTENT) break;
      out.push(buf);
    }
    return out;
  } finally {
    closeSync(fd);
  }
}

function batchFor(extent: Buffer, index: number): Batch {
  const records: BatchRecord[] = extent.equals(ZERO)
    ? [{ kind: 'zero', offset: index * EXTENT, length: EXTENT }]
    : [{ kind: 'data', offset: index * EXTENT, data: extent }];
  return { vmId: 'bench-vm', diskId: 'disk0', epoch: 1, sequence: index + 1, capturedAt: 1, diskSizeBytes: EXTENTS * EXTENT, records };
}

let nonceCounter = 0;
const nonces = (size: number): Buffer => {
  const b = Buffer.alloc(size);
  b.writeUInt32LE(++nonceCounter, 0);
  return b;
};
const keys = () => KEY;

interface Pass {
  bytes: number;
  sealedBytes: number;
}

function sealOpen(extents: Buffer[], codec: CodecName): Pass {
  let sealedBytes = 0;
  extents.forEach((extent, i) => {
    const sealed = sealBatch(batchFor(extent, i), KEY, 1, nonces, { codec });
    sealedBytes += sealed.length;
    const opened = openBatch(sealed, keys);
    if (opened.records.length !== 1) throw new Error('bench: lost a record');
  });
  return { bytes: extents.length * EXTENT, sealedBytes };
}

/** The same pipeline with node:zlib deflate level 1: hash, compress, encrypt, and back. */
function deflatePipeline(extents: Buffer[]): Pass {
  let sealedBytes = 0;
  for (const extent of extents) {
    if (extent.equals(ZERO)) continue;
    const digest = createHash('sha256').update(extent).digest();
    const compressed = deflateRawSync(extent, { level: 1 });
    const nonce = nonces(12);
    const c = createCipheriv('aes-256-gcm', KEY, nonce);
    const ct = Buffer.concat([c.update(digest), c.update(compressed), c.final()]);
    const tag = c.getAuthTag();
    sealedBytes += ct.length + 16 + 208;
    const d = createDecipheriv('aes-256-gcm', KEY, nonce);
    d.setAuthTag(tag);
    const plain = d.update(ct);
    d.final();
    const out = inflateRawSync(plain.subarray(32));
    if (!createHash('sha256').update(out).digest().equals(plain.subarray(0, 32))) throw new Error('bench: digest');
  }
  return { bytes: extents.length * EXTENT, sealedBytes };
}

function sha256Only(extents: Buffer[]): Pass {
  for (const e of extents) createHash('sha256').update(e).digest();
  return { bytes: extents.length * EXTENT, sealedBytes: 0 };
}

/**
 * Median MB/s (10^6 bytes per second) of each function over RUNS runs, after one warm-up run
 * each. The functions take turns, run by run, so a change of machine load (2 shared cores)
 * hits a figure and its baseline alike.
 */
function measure(...fns: Array<() => Pass>): Array<{ mbps: number; pass: Pass }> {
  const passes = fns.map((fn) => fn());
  const rates: number[][] = fns.map(() => []);
  for (let run = 0; run < RUNS; run++) {
    fns.forEach((fn, i) => {
      const t0 = process.hrtime.bigint();
      passes[i] = fn();
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      rates[i]!.push(passes[i]!.bytes / 1e6 / seconds);
    });
  }
  return rates.map((r, i) => {
    r.sort((a, b) => a - b);
    return { mbps: r[Math.floor(r.length / 2)]!, pass: passes[i]! };
  });
}

function result(name: string, value: number, unit: string, baselineName: string, baseline: number): BenchResult {
  return { name, value, unit, baseline: { name: baselineName, value: baseline }, ratio: value / baseline };
}

export async function run(): Promise<BenchResult[]> {
  const codec: CodecName = zstdAvailable() ? 'zstd' : 'brotli';
  const results: BenchResult[] = [];
  const [random, diskLike] = dataSets();
  {
    const [main, sha] = measure(() => sealOpen(random!.extents, codec), () => sha256Only(random!.extents));
    results.push(result(`seal+open ${codec}-1, random 4 MiB extents`, main!.mbps, 'MB/s', 'SHA-256 of the same bytes', sha!.mbps));
  }
  {
    const ext = diskLike!.extents;
    const [main, sha, deflate, brotli] = measure(
      () => sealOpen(ext, codec),
      () => sha256Only(ext),
      () => deflatePipeline(ext),
      () => sealOpen(ext, 'brotli'),
    );
    results.push(result(`seal+open ${codec}-1, disk-like 4 MiB extents`, main!.mbps, 'MB/s', 'SHA-256 of the same bytes', sha!.mbps));
    results.push(result(`seal+open ${codec}-1, disk-like, vs deflate-1`, main!.mbps, 'MB/s', 'same pipeline with deflate-1', deflate!.mbps));
    results.push(result(`seal+open brotli-1 (fallback), disk-like`, brotli!.mbps, 'MB/s', `${codec}-1`, main!.mbps));
    const ratio = (100 * main!.pass.sealedBytes) / main!.pass.bytes;
    const deflateRatio = (100 * deflate!.pass.sealedBytes) / deflate!.pass.bytes;
    results.push(result(`sealed size, ${codec}-1, disk-like`, ratio, '% of input', 'deflate-1', deflateRatio));
  }
  const binary = binaryExtents(8);
  if (binary.length > 0 && codec === 'zstd') {
    const [z, br] = measure(() => sealOpen(binary, 'zstd'), () => sealOpen(binary, 'brotli'));
    results.push(result('seal+open zstd-1, node executable 4 MiB extents', z!.mbps, 'MB/s', 'brotli-1', br!.mbps));
  }
  return results;
}

if (require.main === module) {
  run()
    .then((r) => console.log(formatResults('codec', r)))
    .catch((err: unknown) => {
      console.error(err);
      process.exit(1);
    });
}
