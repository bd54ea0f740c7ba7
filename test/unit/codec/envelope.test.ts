import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { openBatch, sealBatch } from '../../../shared/codec/batch';
import { batchMessageId, envelopeFor, expectationFrom, sealedBytesFrom } from '../../../shared/codec/envelope';
import { batchSessionId, INLINE_MAX_SEALED_BYTES, parseEnvelope, SERVICE_BUS_ID_MAX, stagingBlobName } from '../../../shared/domain/envelope';
import type { Batch } from '../../../shared/domain/wire-format';
import { isWireFormatError } from '../../../shared/domain/wire-format-error';

const KEY = Buffer.alloc(32, 5);
const nonce = () => Buffer.from('00112233445566778899aabb', 'hex');

function batch(dataBytes: number): Batch {
  return {
    vmId: 'web-01',
    diskId: 'disk0',
    epoch: 3,
    sequence: 42,
    capturedAt: 1_764_147_600_000,
    diskSizeBytes: 1 << 30,
    records: dataBytes === 0 ? [] : [{ kind: 'data', offset: 0, data: randomBytes(dataBytes) }],
  };
}

function code(fn: () => unknown): [string, string] {
  try {
    fn();
  } catch (err) {
    if (isWireFormatError(err)) return [err.code, err.field];
    throw err;
  }
  throw new Error('no error');
}

describe('envelope', () => {
  it('sends a batch that fits the queue as a binary message: the body is the sealed batch, its fields read from the header', () => {
    const sealed = sealBatch(batch(300 * 1024), KEY, 1, nonce);
    const out = envelopeFor(sealed, { maxMessageBytes: 1024 * 1024 });
    expect(Buffer.isBuffer(out.envelope) && out.envelope === sealed).toBe(true);
    expect(out.staged).toBeUndefined();
    expect(out.sessionId).toBe('web-01/disk0');
    const env = parseEnvelope(sealed);
    expect(env).toMatchObject({ v: 1, vmId: 'web-01', diskId: 'disk0', epoch: 3, seq: 42, keyId: 1, capturedAt: 1_764_147_600_000 });
    expect(sealedBytesFrom(env).equals(sealed)).toBe(true);
    expect(openBatch(sealedBytesFrom(env), () => KEY, expectationFrom(env)).records).toHaveLength(1);
    // too large for the queue (4 KiB kept for the message's own overhead): staged as before
    expect(envelopeFor(sealed, { maxMessageBytes: sealed.length + 4095 }).staged).toBeDefined();
    expect(Buffer.isBuffer(envelopeFor(sealed, { maxMessageBytes: sealed.length + 4096 }).envelope)).toBe(true);
    // the queue's limit unknown: the JSON forms
    expect(Buffer.isBuffer(envelopeFor(sealed).envelope)).toBe(false);
  });

  it('refuses a binary message whose header does not parse, naming the field', () => {
    const sealed = sealBatch(batch(1024), KEY, 1, nonce);
    const bad = Buffer.from(sealed);
    bad[4] = 9; // formatVersion
    expect(code(() => parseEnvelope(bad))).toEqual(['BAD_ENVELOPE', 'body.formatVersion']);
    expect(code(() => parseEnvelope(sealed.subarray(0, 100)))).toEqual(['BAD_ENVELOPE', 'body.header']);
    // bytes that are not a batch at all are taken for JSON text and refused as such
    expect(code(() => parseEnvelope(Buffer.from([1, 2, 3, 4, 5])))[0]).toBe('BAD_ENVELOPE');
  });

  it('carries a small batch inline and round-trips through JSON', () => {
    const sealed = sealBatch(batch(4096), KEY, 1, nonce);
    const out = envelopeFor(sealed);
    expect(out.staged).toBeUndefined();
    expect(out.sessionId).toBe('web-01/disk0');
    expect(out.messageId).toMatch(/^[0-9a-f]{64}$/);
    const env = parseEnvelope(JSON.stringify(out.envelope));
    expect(env).toMatchObject({ v: 1, vmId: 'web-01', diskId: 'disk0', epoch: 3, seq: 42, keyId: 1, capturedAt: 1_764_147_600_000 });
    const opened = openBatch(sealedBytesFrom(env), () => KEY, expectationFrom(env));
    expect(opened.header.sequence).toBe(42);
  });

  it('stages a large batch under a deterministic name and checks the blob', () => {
    const sealed = sealBatch(batch(256 * 1024), KEY, 1, nonce);
    expect(sealed.length).toBeGreaterThan(INLINE_MAX_SEALED_BYTES);
    const out = envelopeFor(sealed);
    expect(out.staged?.name).toBe('web-01/disk0/0000000003-00000000000000000042-00112233445566778899aabb');
    expect(out.staged?.container).toBe('staging');
    const env = parseEnvelope(Buffer.from(JSON.stringify(out.envelope)));
    expect(sealedBytesFrom(env, sealed).equals(sealed)).toBe(true);
    const damaged = Buffer.from(sealed);
    damaged[1000] = damaged[1000]! ^ 1;
    expect(code(() => sealedBytesFrom(env, damaged))).toEqual(['DIGEST_MISMATCH', 'payload.blob.sha256']);
    expect(code(() => sealedBytesFrom(env, sealed.subarray(1)))).toEqual(['BAD_ENVELOPE', 'payload.blob.sizeBytes']);
    expect(code(() => sealedBytesFrom(env))).toEqual(['BAD_ENVELOPE', 'payload.blob']);
    expect(JSON.stringify(out.envelope).length).toBeLessThan(600);
  });

  it('keeps the largest inline message well under 256 KB', () => {
    const sealed = Buffer.alloc(INLINE_MAX_SEALED_BYTES);
    const json = JSON.stringify({ v: 1, vmId: 'a'.repeat(63), diskId: 'b'.repeat(63), epoch: 4294967295, seq: Number.MAX_SAFE_INTEGER, keyId: 4294967295, capturedAt: 8.64e15, payload: { inline: sealed.toString('base64') } });
    expect(json.length).toBeLessThan(200 * 1024);
    expect(parseEnvelope(json).seq).toBe(Number.MAX_SAFE_INTEGER);
  });

  it('rejects bodies that are not envelopes, naming the path', () => {
    const good = envelopeFor(sealBatch(batch(0), KEY, 1, nonce)).envelope;
    expect(code(() => parseEnvelope('not json'))).toEqual(['BAD_ENVELOPE', 'body']);
    expect(code(() => parseEnvelope({ ...good, v: 2 }))).toEqual(['BAD_ENVELOPE', 'v']);
    expect(code(() => parseEnvelope({ ...good, extra: 1 }))).toEqual(['BAD_ENVELOPE', 'extra']);
    expect(code(() => parseEnvelope({ ...good, vmId: 'Web' }))).toEqual(['BAD_ENVELOPE', 'vmId']);
    expect(code(() => parseEnvelope({ ...good, seq: 0 }))).toEqual(['BAD_ENVELOPE', 'seq']);
    expect(code(() => parseEnvelope({ ...good, payload: { inline: '***' } }))[0]).toBe('BAD_ENVELOPE');
    const blob = { container: 'staging', name: 'web-01/disk1/0000000003-00000000000000000042-00112233445566778899aabb', sizeBytes: 500000, sha256: 'a'.repeat(64) };
    expect(code(() => parseEnvelope({ ...good, payload: { blob } }))).toEqual(['BAD_ENVELOPE', 'payload.blob.name']);
    expect(code(() => parseEnvelope({ ...good, payload: { blob: { ...blob, name: blob.name.replace('disk1', 'disk0'), container: 'other' } } }))[0]).toBe('BAD_ENVELOPE');
    expect(parseEnvelope({ ...good, payload: { blob: { ...blob, name: blob.name.replace('disk1', 'disk0') } } }).seq).toBe(42);
  });

  it('fits the longest ids in Service Bus session and message ids', () => {
    const vm = 'v'.repeat(63);
    const disk = 'd'.repeat(63);
    expect(batchSessionId(vm, disk).length).toBe(127);
    expect(batchSessionId(vm, disk).length).toBeLessThanOrEqual(SERVICE_BUS_ID_MAX);
    expect(batchMessageId(vm, disk, 4294967295, Number.MAX_SAFE_INTEGER).length).toBe(64);
    expect(batchMessageId('a', 'b', 1, 1)).not.toBe(batchMessageId('a', 'b', 1, 2));
    expect(stagingBlobName(vm, disk, 4294967295, Number.MAX_SAFE_INTEGER, Buffer.alloc(12)).length).toBe(184);
  });
});
