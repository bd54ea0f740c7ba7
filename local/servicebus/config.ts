/**
 * Entity configuration in the official Service Bus emulator's `Config.json` format
 * (https://learn.microsoft.com/azure/service-bus-messaging/overview-emulator#configuration),
 * so that a file written for the official emulator works unchanged here.
 *
 * ```json
 * {"UserConfig": {"Namespaces": [{"Name": "sbemulatorns",
 *    "Queues": [{"Name": "q", "Properties": {"LockDuration": "PT1M", "RequiresSession": false, ...}}],
 *    "Topics": [{"Name": "t", "Properties": {...}, "Subscriptions": [{"Name": "s", "Properties": {...}}]}]}],
 *  "Logging": {"Type": "Console"}}}
 * ```
 *
 * Properties the official format has and this emulator ignores (duplicate detection,
 * auto-forwarding, partitioning, subscription rules other than the `$Default` true filter)
 * are accepted and ignored, so a user's file still loads. Unknown properties are ignored too.
 * Durations are ISO-8601 (`PT1M`, `P14D`, `P10675199DT2H48M5.4775807S`).
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';

/** Settings of one message entity (a queue, or a topic subscription), in resolved units. */
export interface EntitySettings {
  /** Entity path as configured (`queue`, or `topic/Subscriptions/sub`). */
  name: string;
  requiresSession: boolean;
  lockDurationMs: number;
  maxDeliveryCount: number;
  /** Default (and maximum) time to live of a message; Infinity when unlimited. */
  defaultTtlMs: number;
  deadLetteringOnMessageExpiration: boolean;
  /** Largest accepted message, advertised as `max_message_size` on attach. */
  maxMessageSizeBytes: number;
  /**
   * Size above which the entity stops granting link credit to senders (backpressure):
   * Service Bus's `MaxSizeInMegabytes`.
   */
  maxSizeBytes: number;
}

export interface TopicSettings {
  name: string;
  maxMessageSizeBytes: number;
  subscriptions: EntitySettings[];
}

export interface NamespaceConfig {
  namespace: string;
  queues: EntitySettings[];
  topics: TopicSettings[];
}

/** The raw file shape (what a user writes). */
export interface EmulatorConfig {
  UserConfig: {
    Namespaces: Array<{
      Name: string;
      Queues?: Array<{ Name: string; Properties?: Record<string, unknown> }>;
      Topics?: Array<{
        Name: string;
        Properties?: Record<string, unknown>;
        Subscriptions?: Array<{ Name: string; Properties?: Record<string, unknown>; Rules?: unknown[] }>;
      }>;
    }>;
    Logging?: { Type?: string };
  };
}

/** A configuration error that names the file, the entity and the field at fault. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(
    message: string,
    readonly source: string,
    readonly entity?: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

// Service Bus Standard tier limits: 256 KB messages, 1 GB default entity size.
export const DEFAULT_MAX_MESSAGE_SIZE_KB = 256;
export const DEFAULT_MAX_SIZE_MB = 1024;
const DEFAULT_LOCK_DURATION_MS = 60_000;
const DEFAULT_MAX_DELIVERY_COUNT = 10;
const MAX_LOCK_DURATION_MS = 5 * 60_000;

const DURATION_RE = /^P(?:(\d+(?:\.\d+)?)Y)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)W)?(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$/;

/**
 * Parses an ISO-8601 duration into milliseconds. Years count 365 days and months 30, as .NET's
 * XmlConvert does for TimeSpan. Returns undefined when the text is not a duration.
 */
export function parseDuration(text: string): number | undefined {
  const m = DURATION_RE.exec(text.trim());
  if (!m || text.trim() === 'P' || text.trim().endsWith('T')) return undefined;
  const [, y, mo, w, d, h, mi, s] = m.map((v) => (v === undefined ? 0 : Number(v)));
  const days = (y ?? 0) * 365 + (mo ?? 0) * 30 + (w ?? 0) * 7 + (d ?? 0);
  const ms = (((days * 24 + (h ?? 0)) * 60 + (mi ?? 0)) * 60 + (s ?? 0)) * 1000;
  return Math.round(ms);
}

const duration = z.string().refine((s) => parseDuration(s) !== undefined, {
  message: 'is not an ISO-8601 duration (e.g. PT1M, P14D)',
});
const positiveInt = z.number().int().positive();

const entityProperties = z
  .object({
    LockDuration: duration.optional(),
    MaxDeliveryCount: positiveInt.optional(),
    RequiresSession: z.boolean().optional(),
    DefaultMessageTimeToLive: duration.optional(),
    DeadLetteringOnMessageExpiration: z.boolean().optional(),
    MaxMessageSizeInKilobytes: positiveInt.max(100 * 1024).optional(),
    MaxSizeInMegabytes: positiveInt.optional(),
  })
  .loose();

const entityName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,259}$/, {
  message: 'must be letters, digits, ".", "_" or "-", starting with a letter or digit',
});

const fileSchema = z.object({
  UserConfig: z.object({
    Namespaces: z
      .array(
        z.object({
          Name: z.string().min(1),
          Queues: z.array(z.object({ Name: entityName, Properties: entityProperties.optional() }).loose()).optional(),
          Topics: z
            .array(
              z
                .object({
                  Name: entityName,
                  Properties: entityProperties.optional(),
                  Subscriptions: z
                    .array(z.object({ Name: entityName, Properties: entityProperties.optional() }).loose())
                    .optional(),
                })
                .loose(),
            )
            .optional(),
        }).loose(),
      )
      .min(1),
    Logging: z.object({ Type: z.string().optional() }).loose().optional(),
  }).loose(),
});

type EntityProperties = z.infer<typeof entityProperties>;

function toSettings(name: string, p: EntityProperties | undefined, source: string): EntitySettings {
  const props = p ?? {};
  const lockDurationMs = props.LockDuration ? parseDuration(props.LockDuration)! : DEFAULT_LOCK_DURATION_MS;
  // Service Bus caps LockDuration at 5 minutes; a longer one is a configuration mistake.
  if (lockDurationMs <= 0 || lockDurationMs > MAX_LOCK_DURATION_MS) {
    throw new ConfigError(
      `${source}: entity '${name}' field Properties.LockDuration: must be more than 0 and at most PT5M (got ${props.LockDuration})`,
      source, name, 'Properties.LockDuration',
    );
  }
  const ttl = props.DefaultMessageTimeToLive ? parseDuration(props.DefaultMessageTimeToLive)! : Infinity;
  if (ttl <= 0) {
    throw new ConfigError(
      `${source}: entity '${name}' field Properties.DefaultMessageTimeToLive: must be more than 0`,
      source, name, 'Properties.DefaultMessageTimeToLive',
    );
  }
  return {
    name,
    requiresSession: props.RequiresSession ?? false,
    lockDurationMs,
    maxDeliveryCount: props.MaxDeliveryCount ?? DEFAULT_MAX_DELIVERY_COUNT,
    // TimeSpan.MaxValue (about 29,000 years) means "never": treat anything past 1000 years so.
    defaultTtlMs: ttl > 1000 * 365 * 86_400_000 ? Infinity : ttl,
    deadLetteringOnMessageExpiration: props.DeadLetteringOnMessageExpiration ?? false,
    maxMessageSizeBytes: (props.MaxMessageSizeInKilobytes ?? DEFAULT_MAX_MESSAGE_SIZE_KB) * 1024,
    maxSizeBytes: (props.MaxSizeInMegabytes ?? DEFAULT_MAX_SIZE_MB) * 1024 * 1024,
  };
}

/** Walks the raw object along a zod issue path to name the entity the issue is in. */
function describePath(raw: unknown, path: ReadonlyArray<PropertyKey>): { entity?: string; field: string } {
  let node: unknown = raw;
  let entity: string | undefined;
  let fieldStart = 0;
  path.forEach((key, i) => {
    if (node && typeof node === 'object') node = (node as Record<PropertyKey, unknown>)[key];
    if (node && typeof node === 'object' && typeof (node as { Name?: unknown }).Name === 'string' && typeof key === 'number') {
      entity = (node as { Name: string }).Name;
      fieldStart = i + 1;
    }
  });
  const field = path.slice(entity ? fieldStart : 0).map(String).join('.') || '(root)';
  return { entity, field };
}

/**
 * Validates a parsed Config.json. `source` names the file in error messages.
 * @throws ConfigError naming the entity and the field.
 */
export function parseConfig(raw: unknown, source = 'config'): NamespaceConfig {
  const parsed = fileSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const { entity, field } = describePath(raw, issue.path);
    const where = entity ? `entity '${entity}' field ${field}` : `field ${field}`;
    throw new ConfigError(`${source}: ${where}: ${issue.message}`, source, entity, field);
  }
  const ns = parsed.data.UserConfig.Namespaces[0]!;
  const seen = new Set<string>();
  const unique = (name: string): string => {
    const key = name.toLowerCase();
    if (seen.has(key)) throw new ConfigError(`${source}: entity '${name}' field Name: duplicate entity name`, source, name, 'Name');
    seen.add(key);
    return name;
  };
  const queues = (ns.Queues ?? []).map((q) => toSettings(unique(q.Name), q.Properties, source));
  const topics = (ns.Topics ?? []).map((t) => ({
    name: unique(t.Name),
    maxMessageSizeBytes: (t.Properties?.MaxMessageSizeInKilobytes ?? DEFAULT_MAX_MESSAGE_SIZE_KB) * 1024,
    subscriptions: (t.Subscriptions ?? []).map((s) =>
      toSettings(`${t.Name}/Subscriptions/${s.Name}`, { ...t.Properties, ...s.Properties }, source),
    ),
  }));
  return { namespace: ns.Name, queues, topics };
}

/** Reads and validates a Config.json file. */
export function loadConfigFile(path: string): NamespaceConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`${path}: cannot read the file: ${(err as Error).message}`, path);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`${path}: not valid JSON: ${(err as Error).message}`, path);
  }
  return parseConfig(raw, path);
}
