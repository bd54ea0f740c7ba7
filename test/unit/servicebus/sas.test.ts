import { createSasTokenProvider } from '@azure/core-amqp';
import { describe, expect, it } from 'vitest';
import { audienceCovers, createSasToken, parseSasToken, verifySasToken } from '../../../local/servicebus/sas';

const keys = [{ name: 'RootManageSharedAccessKey', key: 'SAS_KEY_VALUE' }];
const now = 1_700_000_000_000;
const audience = 'sb://127.0.0.1:5672/orders';

describe('verifySasToken', () => {
  it('accepts a token signed with the configured key', () => {
    const token = createSasToken(audience, 'RootManageSharedAccessKey', 'SAS_KEY_VALUE', now / 1000 + 3600);
    const check = verifySasToken(token, keys, now);
    expect(check.ok).toBe(true);
    expect(check.ok && check.token.audience).toBe(audience);
  });

  it('accepts the token the SDK itself builds (@azure/core-amqp createSasTokenProvider)', async () => {
    const provider = createSasTokenProvider({ name: 'RootManageSharedAccessKey', key: 'SAS_KEY_VALUE' });
    const { token } = await provider.getToken(audience);
    expect(verifySasToken(token, keys, Date.now()).ok).toBe(true);
    expect(parseSasToken(token)).toMatchObject({ audience, rawAudience: encodeURIComponent(audience), keyName: 'RootManageSharedAccessKey' });
  });

  it('refuses a wrong key', () => {
    const token = createSasToken(audience, 'RootManageSharedAccessKey', 'WRONG', now / 1000 + 3600);
    expect(verifySasToken(token, keys, now)).toEqual({ ok: false, reason: "The signature does not match the key 'RootManageSharedAccessKey'." });
  });

  it('refuses an unknown key name', () => {
    const token = createSasToken(audience, 'Other', 'SAS_KEY_VALUE', now / 1000 + 3600);
    expect(verifySasToken(token, keys, now)).toEqual({ ok: false, reason: "The key name 'Other' is not authorized on this namespace." });
  });

  it('refuses an expired token', () => {
    const token = createSasToken(audience, 'RootManageSharedAccessKey', 'SAS_KEY_VALUE', now / 1000 - 1);
    expect(verifySasToken(token, keys, now)).toEqual({ ok: false, reason: 'The token has expired.' });
  });

  it('refuses a tampered audience', () => {
    const token = createSasToken(audience, 'RootManageSharedAccessKey', 'SAS_KEY_VALUE', now / 1000 + 60).replace('orders', 'other');
    expect(verifySasToken(token, keys, now).ok).toBe(false);
  });

  it('refuses text that is not a SAS token', () => {
    expect(verifySasToken('Bearer abc', keys, now)).toEqual({ ok: false, reason: 'The token is not a well-formed SharedAccessSignature.' });
    expect(verifySasToken('SharedAccessSignature sr=a&sig=b', keys, now).ok).toBe(false);
  });
});

describe('audienceCovers', () => {
  it('grants an entity, its sub-paths and the namespace root', () => {
    expect(audienceCovers('sb://h:1/orders', 'orders')).toBe(true);
    expect(audienceCovers('sb://h:1/Orders', 'orders/$management')).toBe(true);
    expect(audienceCovers('sb://h:1/', 'orders')).toBe(true);
    expect(audienceCovers('sb://h:1/orders', 'orders2')).toBe(false);
    expect(audienceCovers('sb://h:1/other', 'orders')).toBe(false);
  });
});
