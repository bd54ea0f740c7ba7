/**
 * The churn generator: writes into a disk image through TrackedDisk at a steady rate, random
 * or sequential, with incompressible data (the hardest case for the pipeline).
 */
import { randomBytes } from 'node:crypto';
import { ApplianceError } from './errors';
import { TrackedDisk } from './tracked-disk';

export interface ChurnOptions {
  disk: string;
  stateDir: string;
  bytesPerSecond: number;
  ioSize: number;
  pattern: 'random' | 'sequential';
  durationMs: number;
  /** Stops early when aborted. */
  signal?: AbortSignal;
}

export interface ChurnResult {
  writes: number;
  bytes: number;
  seconds: number;
  bytesPerSecond: number;
}

export async function churn(options: ChurnOptions): Promise<ChurnResult> {
  if (options.ioSize < 512 || options.ioSize % 512 !== 0) throw new ApplianceError('BAD_ARGUMENT', `--io-size must be a multiple of 512 bytes; got ${options.ioSize}.`);
  const disk = TrackedDisk.open(options.disk, options.stateDir);
  try {
    if (options.ioSize > disk.sizeBytes) throw new ApplianceError('BAD_ARGUMENT', `--io-size ${options.ioSize} is larger than the disk (${disk.sizeBytes} bytes).`);
    const slots = Math.floor(disk.sizeBytes / options.ioSize);
    // a pool of random data, reused at random offsets: incompressible without a fresh RNG call per write
    const pool = randomBytes(Math.max(8 * 1024 * 1024, options.ioSize * 2));
    const start = performance.now();
    let writes = 0;
    let bytes = 0;
    let seqSlot = 0;
    while (!options.signal?.aborted) {
      const elapsed = performance.now() - start;
      if (elapsed >= options.durationMs) break;
      const due = Math.min(options.durationMs, elapsed + 50) * (options.bytesPerSecond / 1000);
      while (bytes + options.ioSize <= due) {
        const slot = options.pattern === 'random' ? Math.floor(Math.random() * slots) : seqSlot++ % slots;
        const src = Math.floor(Math.random() * (pool.length - options.ioSize));
        const data = pool.subarray(src, src + options.ioSize);
        data.writeUInt32LE(writes, 0); // distinct content per write
        disk.write(slot * options.ioSize, data);
        writes++;
        bytes += options.ioSize;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    const seconds = (performance.now() - start) / 1000;
    return { writes, bytes, seconds, bytesPerSecond: bytes / seconds };
  } finally {
    disk.close();
  }
}
