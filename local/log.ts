/**
 * Logging for the local processes (emulator, host, stack, appliance).
 *
 * pino underneath; two output formats:
 * - `json` (one JSON object per line), for machines and log shippers;
 * - `pretty` (default): `HH:MM:SS.mmm LEVEL msg key=value ...`, for people and for the
 *   prefixed multi-process output of `npm start`.
 * `FERRY_LOG_FORMAT` picks the format, `FERRY_LOG_LEVEL` the level (default `info`).
 *
 * Secrets never reach the output: the fields listed in REDACT_PATHS are censored, and any
 * string value that looks like a SAS signature, a shared access key or an account key is
 * masked by `maskSecrets` before it is written.
 */
import pino, { type Logger, type DestinationStream } from 'pino';

export type { Logger } from 'pino';

const REDACT_PATHS = [
  'key', 'dataKey', 'masterKey', 'functionKey', 'connectionString', 'sas', 'token', 'authorization',
  '*.key', '*.dataKey', '*.masterKey', '*.functionKey', '*.connectionString', '*.sas', '*.token',
  'headers["x-functions-key"]', 'req.headers["x-functions-key"]',
];

const SECRET_PATTERNS: RegExp[] = [
  /(SharedAccessKey=)[^;"'\s]+/gi,
  /(AccountKey=)[^;"'\s]+/gi,
  /(sig=)[^&;"'\s]+/gi,
  /([?&]code=)[^&"'\s]+/gi,
];

/** Masks secret-looking substrings (SAS signatures, keys in connection strings, `code=`). */
export function maskSecrets(text: string): string {
  let out = text;
  for (const re of SECRET_PATTERNS) out = out.replace(re, '$1***');
  return out;
}

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO ', 40: 'WARN ', 50: 'ERROR', 60: 'FATAL' };
const OMIT = new Set(['level', 'time', 'msg', 'pid', 'hostname', 'name']);

function formatValue(v: unknown): string {
  if (typeof v === 'string') return /[\s"=]/.test(v) ? JSON.stringify(v) : v;
  if (v instanceof Object) return JSON.stringify(v);
  return String(v);
}

/** Renders one pino JSON line as `HH:MM:SS.mmm LEVEL [name] msg k=v ...`. */
export function prettyLine(json: string): string {
  let rec: Record<string, unknown>;
  try {
    rec = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json;
  }
  const time = new Date(typeof rec.time === 'number' ? rec.time : Date.now()).toISOString().slice(11, 23);
  const level = LEVEL_NAMES[rec.level as number] ?? String(rec.level);
  const parts = [time, level];
  if (typeof rec.name === 'string') parts.push(`[${rec.name}]`);
  if (rec.msg !== undefined) parts.push(String(rec.msg));
  for (const [k, v] of Object.entries(rec)) {
    if (OMIT.has(k) || v === undefined) continue;
    if (k === 'err' && v instanceof Object) {
      const e = v as { message?: string; stack?: string; code?: string };
      parts.push(`err=${formatValue(e.code ? `${e.code}: ${e.message}` : e.message)}`);
      continue;
    }
    parts.push(`${k}=${formatValue(v)}`);
  }
  return parts.join(' ');
}

class MaskingStream implements DestinationStream {
  constructor(private readonly pretty: boolean, private readonly out: NodeJS.WritableStream) {}
  write(chunk: string): void {
    const masked = maskSecrets(chunk.endsWith('\n') ? chunk.slice(0, -1) : chunk);
    this.out.write((this.pretty ? prettyLine(masked) : masked) + '\n');
  }
}

export interface LoggerOptions {
  level?: string;
  format?: 'json' | 'pretty';
  /** Where lines go; default stdout. */
  stream?: NodeJS.WritableStream;
}

export function createLogger(name: string, options: LoggerOptions = {}): Logger {
  const format = options.format ?? (process.env.FERRY_LOG_FORMAT === 'json' ? 'json' : 'pretty');
  const level = options.level ?? process.env.FERRY_LOG_LEVEL ?? 'info';
  return pino(
    { name, level, base: undefined, redact: { paths: REDACT_PATHS, censor: '***' } },
    new MaskingStream(format === 'pretty', options.stream ?? process.stdout),
  );
}
