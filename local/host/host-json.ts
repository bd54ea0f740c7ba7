/**
 * The parts of host.json (version 2.0) the local host honours: the HTTP route prefix and the
 * Service Bus extension settings, with Azure's defaults
 * (https://learn.microsoft.com/azure/azure-functions/functions-bindings-service-bus#hostjson-settings).
 */
import { existsSync, readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { HostError } from './errors';

export interface ServiceBusSettings {
  autoCompleteMessages: boolean;
  maxConcurrentCalls: number;
  maxConcurrentSessions: number;
  maxMessageBatchSize: number;
  maxAutoLockRenewalDurationMs: number;
  sessionIdleTimeoutMs: number;
  /** Read for completeness: @azure/service-bus 7.x has no prefetch, so it has no effect. */
  prefetchCount: number;
}

export interface HostJson {
  routePrefix: string;
  /** host.json functionTimeout; undefined = unbounded ("-1" or absent). */
  functionTimeoutMs: number | undefined;
  serviceBus: ServiceBusSettings;
}

/** .NET TimeSpan text: `[d.]hh:mm[:ss[.fffffff]]`. Milliseconds, or undefined when malformed. */
export function parseTimeSpan(text: string): number | undefined {
  const m = /^\s*(-)?(?:(\d+)\.)?(\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:\.(\d{1,7}))?)?\s*$/.exec(text);
  if (!m) return undefined;
  const [, neg, d, h, mi, s, f] = m;
  const hours = Number(h);
  const minutes = Number(mi);
  const seconds = Number(s ?? 0);
  if (hours > 23 || minutes > 59 || seconds > 59) return undefined;
  const ms = (((Number(d ?? 0) * 24 + hours) * 60 + minutes) * 60 + seconds) * 1000 + Math.round(Number(`0.${f ?? '0'}`) * 1000);
  return neg ? -ms : ms;
}

function num(value: unknown, fallback: number, name: string): number {
  if (value === undefined || value === null) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new HostError('InvalidHostJson', `host.json ${name} must be a non-negative number, not ${JSON.stringify(value)}.`);
  }
  return value;
}

function span(value: unknown, fallbackMs: number, name: string): number {
  if (value === undefined || value === null) return fallbackMs;
  const ms = typeof value === 'string' ? parseTimeSpan(value) : undefined;
  if (ms === undefined || ms < 0) {
    throw new HostError('InvalidHostJson', `host.json ${name} must be a TimeSpan "hh:mm:ss", not ${JSON.stringify(value)}.`);
  }
  return ms;
}

export function readHostJson(appRoot: string): HostJson {
  const file = join(appRoot, 'host.json');
  if (!existsSync(file)) throw HostError.appNotFound(appRoot, 'host.json');
  let parsed: {
    functionTimeout?: unknown;
    extensions?: { http?: { routePrefix?: unknown }; serviceBus?: Record<string, unknown> };
  };
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new HostError('InvalidHostJson', `Cannot read ${file}: ${(err as Error).message}`, 500, { cause: err });
  }
  const prefix = parsed.extensions?.http?.routePrefix;
  const sb = parsed.extensions?.serviceBus ?? {};
  const p = 'extensions.serviceBus.';
  const timeout = parsed.functionTimeout;
  return {
    routePrefix: typeof prefix === 'string' ? prefix.replace(/^\/+|\/+$/g, '') : 'api',
    functionTimeoutMs: timeout === undefined || timeout === null || timeout === '-1' ? undefined : span(timeout, 0, 'functionTimeout'),
    serviceBus: {
      autoCompleteMessages: sb.autoCompleteMessages === undefined ? true : sb.autoCompleteMessages === true,
      maxConcurrentCalls: Math.max(1, num(sb.maxConcurrentCalls, 16 * Math.max(1, cpus().length), p + 'maxConcurrentCalls')),
      maxConcurrentSessions: Math.max(1, num(sb.maxConcurrentSessions, 8, p + 'maxConcurrentSessions')),
      maxMessageBatchSize: Math.max(1, num(sb.maxMessageBatchSize, 1000, p + 'maxMessageBatchSize')),
      maxAutoLockRenewalDurationMs: span(sb.maxAutoLockRenewalDuration, 5 * 60_000, p + 'maxAutoLockRenewalDuration'),
      // Unset, the extension falls back to the client's try timeout (one minute).
      sessionIdleTimeoutMs: span(sb.sessionIdleTimeout, 60_000, p + 'sessionIdleTimeout'),
      prefetchCount: num(sb.prefetchCount, 0, p + 'prefetchCount'),
    },
  };
}

/**
 * Resolves `%Name%` app-setting references in a binding property, as Azure does for
 * binding expressions (`queueName: '%QueueName%'`). An unknown name is an error.
 */
export function resolveAppSettingRefs(value: string, settings: Record<string, string>, what: string): string {
  return value.replace(/%([^%]+)%/g, (_m, name: string) => {
    const v = settings[name] ?? process.env[name];
    if (v === undefined) throw new HostError('MissingSetting', `${what} refers to the app setting %${name}%, which is not set; set it in local.settings.json Values or the environment.`);
    return v;
  });
}
