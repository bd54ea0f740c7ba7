/**
 * The batch codecs (docs/wire-format.md, "Codecs") over buffers. Decompression is always
 * bounded by the size the authenticated header declares, so a hostile or buggy stream can
 * never make us allocate more than that.
 */
import { brotliCompressSync, brotliDecompressSync, constants as zlibConstants } from 'node:zlib';
import type { CodecName } from '../domain/wire-format';
import { WireFormatError } from '../domain/wire-format-error';

/** The subset of zstd-napi's low-level binding we use: one reused context each way. */
interface ZstdBinding {
  CCtx: new () => { compress(dst: Uint8Array, src: Uint8Array, level: number): number };
  DCtx: new () => { decompress(dst: Uint8Array, src: Uint8Array): number };
  compressBound(size: number): number;
}

const ZSTD_LEVEL = 1;
const BROTLI_QUALITY = 1;

let zstd: ZstdBinding | null | undefined;
let cctx: InstanceType<ZstdBinding['CCtx']> | undefined;
let dctx: InstanceType<ZstdBinding['DCtx']> | undefined;
/** Reused output buffer for zstd compression; grows to the largest batch seen. */
let scratch = Buffer.alloc(0);

function loadZstd(): ZstdBinding | null {
  if (zstd === undefined) {
    try {
      // The low-level binding lets us compress into a reused buffer and decompress into one
      // of exactly the declared size; the high-level API allocates for every call.
      zstd = require('zstd-napi/binding') as ZstdBinding;
    } catch {
      zstd = null;
    }
  }
  return zstd;
}

/** True when the native zstd binding loaded (it compiles at `npm install`). */
export function zstdAvailable(): boolean {
  return loadZstd() !== null;
}

/** zstd when its native binding works, else brotli (no native dependency). */
export function defaultCodec(): CodecName {
  return zstdAvailable() ? 'zstd' : 'brotli';
}

/**
 * Compresses `src`. The zstd result is a view into a reused buffer, valid only until the
 * next call: callers consume it at once (the cipher copies it).
 */
export function compress(codec: CodecName, src: Buffer): Buffer {
  switch (codec) {
    case 'none':
      return src;
    case 'zstd': {
      const z = loadZstd();
      if (z === null) {
        throw new WireFormatError('BAD_FIELD', 'codec', "Codec zstd is not available: zstd-napi did not load. Run 'npm install' (it compiles zstd-napi), or seal with codec brotli.");
      }
      cctx ??= new z.CCtx();
      const bound = z.compressBound(src.length);
      if (scratch.length < bound) scratch = Buffer.allocUnsafe(bound);
      const n = cctx.compress(scratch, src, ZSTD_LEVEL);
      return scratch.subarray(0, n);
    }
    case 'brotli':
      return brotliCompressSync(src, {
        params: {
          [zlibConstants.BROTLI_PARAM_QUALITY]: BROTLI_QUALITY,
          [zlibConstants.BROTLI_PARAM_SIZE_HINT]: src.length,
        },
      });
  }
}

function failed(codec: CodecName, detail: string, cause?: unknown): WireFormatError {
  return new WireFormatError('DECOMPRESS_FAILED', 'ciphertext', `The ${codec} stream does not decompress to the declared recordStreamBytes: ${detail}.`, { cause });
}

/** Decompresses `src` into exactly `expectedBytes` (the authenticated recordStreamBytes). */
export function decompress(codec: CodecName, src: Buffer, expectedBytes: number): Buffer {
  switch (codec) {
    case 'none':
      if (src.length !== expectedBytes) throw failed(codec, `${src.length} bytes instead of ${expectedBytes}`);
      return src;
    case 'zstd': {
      const z = loadZstd();
      if (z === null) throw failed(codec, 'zstd-napi did not load; run npm install');
      dctx ??= new z.DCtx();
      const out = Buffer.allocUnsafe(expectedBytes);
      let n: number;
      try {
        n = dctx.decompress(out, src);
      } catch (err) {
        throw failed(codec, err instanceof Error ? err.message : String(err), err);
      }
      if (n !== expectedBytes) throw failed(codec, `${n} bytes instead of ${expectedBytes}`);
      return out;
    }
    case 'brotli': {
      let out: Buffer;
      try {
        // maxOutputLength must be >= 1; a longer result fails, and the length check below
        // catches the one-byte slack for empty streams.
        out = brotliDecompressSync(src, { maxOutputLength: Math.max(1, expectedBytes) });
      } catch (err) {
        throw failed(codec, err instanceof Error ? err.message : String(err), err);
      }
      if (out.length !== expectedBytes) throw failed(codec, `${out.length} bytes instead of ${expectedBytes}`);
      return out;
    }
  }
}
