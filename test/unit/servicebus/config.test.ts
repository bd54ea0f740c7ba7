import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { ConfigError, loadConfigFile, parseConfig, parseDuration } from '../../../local/servicebus/config';

const wrap = (queues: unknown[], topics: unknown[] = []): unknown => ({
  UserConfig: { Namespaces: [{ Name: 'ns', Queues: queues, Topics: topics }], Logging: { Type: 'Console' } },
});

describe('parseDuration', () => {
  it.each([
    ['PT1M', 60_000], ['PT5M', 300_000], ['P14D', 14 * 86_400_000], ['PT2S', 2000], ['PT0.5S', 500],
    ['P1DT2H3M4S', 93_784_000], ['P1W', 7 * 86_400_000],
  ])('%s is %d ms', (text, ms) => expect(parseDuration(text)).toBe(ms));

  it.each(['', 'P', 'PT', '1M', 'PT1X', 'one minute'])('rejects %j', (text) => expect(parseDuration(text)).toBeUndefined());
});

describe('parseConfig', () => {
  it('resolves queue settings with Service Bus defaults', () => {
    const cfg = parseConfig(wrap([{ Name: 'a' }, { Name: 'b', Properties: { RequiresSession: true, LockDuration: 'PT30S', MaxDeliveryCount: 3, DefaultMessageTimeToLive: 'PT1H', DeadLetteringOnMessageExpiration: true, MaxMessageSizeInKilobytes: 1024, MaxSizeInMegabytes: 10 } }]));
    expect(cfg.queues[0]).toEqual({
      name: 'a', requiresSession: false, lockDurationMs: 60_000, maxDeliveryCount: 10, defaultTtlMs: Infinity,
      deadLetteringOnMessageExpiration: false, maxMessageSizeBytes: 256 * 1024, maxSizeBytes: 1024 * 1024 * 1024,
    });
    expect(cfg.queues[1]).toEqual({
      name: 'b', requiresSession: true, lockDurationMs: 30_000, maxDeliveryCount: 3, defaultTtlMs: 3_600_000,
      deadLetteringOnMessageExpiration: true, maxMessageSizeBytes: 1024 * 1024, maxSizeBytes: 10 * 1024 * 1024,
    });
  });

  it('treats TimeSpan.MaxValue as no expiry and ignores properties it does not implement', () => {
    const cfg = parseConfig(wrap([{ Name: 'a', Properties: { DefaultMessageTimeToLive: 'P10675199DT2H48M5.4775807S', ForwardTo: '', RequiresDuplicateDetection: false } }]));
    expect(cfg.queues[0]!.defaultTtlMs).toBe(Infinity);
  });

  it('reads topics and subscriptions as subscription entities', () => {
    const cfg = parseConfig(wrap([], [{ Name: 't', Properties: {}, Subscriptions: [{ Name: 's1', Properties: { MaxDeliveryCount: 2 } }] }]));
    expect(cfg.topics[0]!.subscriptions[0]).toMatchObject({ name: 't/Subscriptions/s1', maxDeliveryCount: 2 });
  });

  it('names the entity and the field of an invalid value', () => {
    expect(() => parseConfig(wrap([{ Name: 'ok' }, { Name: 'bad', Properties: { MaxDeliveryCount: 0 } }]), 'Config.json'))
      .toThrow("Config.json: entity 'bad' field Properties.MaxDeliveryCount:");
    expect(() => parseConfig(wrap([{ Name: 'bad', Properties: { LockDuration: 'soon' } }]), 'C.json'))
      .toThrow("C.json: entity 'bad' field Properties.LockDuration: is not an ISO-8601 duration (e.g. PT1M, P14D)");
  });

  it('refuses a lock duration over five minutes, duplicate names and a missing namespace', () => {
    expect(() => parseConfig(wrap([{ Name: 'q', Properties: { LockDuration: 'PT6M' } }]), 'f')).toThrow(/entity 'q' field Properties.LockDuration: must be more than 0 and at most PT5M/);
    expect(() => parseConfig(wrap([{ Name: 'q' }, { Name: 'Q' }]), 'f')).toThrow("f: entity 'Q' field Name: duplicate entity name");
    const err = (() => { try { parseConfig({ UserConfig: { Namespaces: [] } }, 'f'); } catch (e) { return e; } })();
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).field).toBe('UserConfig.Namespaces');
  });

  it('loads the shipped Config.json', () => {
    const cfg = loadConfigFile(join(__dirname, '../../../local/servicebus/Config.json'));
    expect(cfg.queues.map((q) => [q.name, q.requiresSession, q.lockDurationMs])).toEqual([
      ['replication-batches', true, 60_000],
      ['operations', false, 300_000],
      ['compactions', true, 300_000],
    ]);
  });

  it('names the file when it cannot be read or parsed', () => {
    expect(() => loadConfigFile('/nonexistent/Config.json')).toThrow(/^\/nonexistent\/Config.json: cannot read the file/);
  });
});
