/**
 * Shared Access Signature tokens, as Service Bus checks them on the CBS put-token request
 * (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-sas).
 *
 * Token: `SharedAccessSignature sr=<url-encoded audience>&sig=<url-encoded base64 HMAC>&se=<expiry,
 * unix seconds>&skn=<key name>`. The signature is HMAC-SHA256, keyed with the key's string bytes,
 * over `<url-encoded audience>\n<expiry>` (the audience exactly as it appears in the token).
 * Pure functions: the clock is passed in.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

export interface SharedAccessKey {
  name: string;
  key: string;
}

export interface SasToken {
  /** Decoded audience (`sb://host/entity`). */
  audience: string;
  /** The audience as it appears in the token (URL-encoded): what is signed. */
  rawAudience: string;
  signature: string;
  expiry: number;
  keyName: string;
}

export type SasCheck = { ok: true; token: SasToken } | { ok: false; reason: string };

export function parseSasToken(text: string): SasToken | undefined {
  const prefix = 'SharedAccessSignature ';
  if (!text.startsWith(prefix)) return undefined;
  const fields = new Map<string, string>();
  for (const pair of text.slice(prefix.length).split('&')) {
    const eq = pair.indexOf('=');
    if (eq > 0) fields.set(pair.slice(0, eq), pair.slice(eq + 1));
  }
  const sr = fields.get('sr');
  const sig = fields.get('sig');
  const se = fields.get('se');
  const skn = fields.get('skn');
  if (sr === undefined || sig === undefined || se === undefined || skn === undefined || !/^\d+$/.test(se)) return undefined;
  try {
    return {
      audience: decodeURIComponent(sr),
      rawAudience: sr,
      signature: decodeURIComponent(sig),
      expiry: Number(se),
      keyName: decodeURIComponent(skn),
    };
  } catch {
    return undefined;
  }
}

export function signSas(rawAudience: string, expiry: number, key: string): string {
  return createHmac('sha256', key).update(`${rawAudience}\n${expiry}`).digest('base64');
}

/** Builds a token the way the SDK does (for tests and tools). */
export function createSasToken(audience: string, keyName: string, key: string, expiry: number): string {
  const sr = encodeURIComponent(audience);
  const sig = encodeURIComponent(signSas(sr, expiry, key));
  return `SharedAccessSignature sr=${sr}&sig=${sig}&se=${expiry}&skn=${encodeURIComponent(keyName)}`;
}

/** Checks a token's form, key name, signature and expiry against the configured keys. */
export function verifySasToken(text: string, keys: readonly SharedAccessKey[], nowMs: number): SasCheck {
  const token = parseSasToken(text);
  if (!token) return { ok: false, reason: 'The token is not a well-formed SharedAccessSignature.' };
  const key = keys.find((k) => k.name === token.keyName);
  if (!key) return { ok: false, reason: `The key name '${token.keyName}' is not authorized on this namespace.` };
  const expected = Buffer.from(signSas(token.rawAudience, token.expiry, key.key));
  const given = Buffer.from(token.signature);
  if (expected.length !== given.length || !timingSafeEqual(expected, given)) {
    return { ok: false, reason: `The signature does not match the key '${token.keyName}'.` };
  }
  if (token.expiry * 1000 <= nowMs) return { ok: false, reason: 'The token has expired.' };
  return { ok: true, token };
}

/** The host (lower case, no port or brackets) and entity path of an audience `sb://host[:port]/path`. */
export function audienceParts(audience: string): { host: string; path: string } {
  const m = /^[a-z]+:\/\/([^/]*)(.*)$/i.exec(audience);
  const authority = (m?.[1] ?? '').toLowerCase();
  const host = authority.startsWith('[') ? authority.slice(1, authority.indexOf(']')) : authority.replace(/:\d*$/, '');
  return { host, path: (m ? m[2]! : audience).replace(/^\/+|\/+$/g, '').toLowerCase() };
}

/**
 * Whether a token for `audience` grants access to `entityPath`: the audience names the entity,
 * a parent path, or the namespace root (Service Bus accepts any token scoped at or above it).
 */
export function audienceCovers(audience: string, entityPath: string): boolean {
  const path = audience.replace(/^[a-z]+:\/\/[^/]*/i, '').replace(/^\/+|\/+$/g, '').toLowerCase();
  const entity = entityPath.replace(/^\/+|\/+$/g, '').toLowerCase();
  return path === '' || entity === path || entity.startsWith(path + '/');
}
