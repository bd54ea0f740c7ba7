/**
 * The appliance's keys: the agent-token comparator (constant time by construction: digests of
 * equal length into timingSafeEqual; not a timing test), the rotated key file (mode 0600) and
 * a process server that picks up a rotated key without a restart.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openBatch } from '../../../shared/codec/batch';
import { sealedBytesFrom } from '../../../shared/codec/envelope';
import { parseEnvelope } from '../../../shared/domain/envelope';
import { tokenMatches } from '../../../local/appliance/https-server';
import type { CloudTransport } from '../../../local/appliance/outbox';
import { ProcessServer } from '../../../local/appliance/process-server';
import { currentKey, keyFilePath, loadRotatedKey, loadVmState, saveRotatedKey, saveVmState, type VmState } from '../../../local/appliance/state';

describe('tokenMatches', () => {
  const token = randomBytes(32).toString('base64url');
  it('accepts exactly the expected token', () => {
    expect(tokenMatches(token, token)).toBe(true);
    expect(tokenMatches(Buffer.from(token).toString(), token)).toBe(true);
  });
  it('refuses another token of the same length, a prefix, a longer one, and empty tokens', () => {
    const other = token.slice(0, -1) + (token.endsWith('A') ? 'B' : 'A');
    expect(tokenMatches(other, token)).toBe(false);
    expect(tokenMatches(token.slice(0, 10), token)).toBe(false);
    expect(tokenMatches(`${token}x`, token)).toBe(false);
    expect(tokenMatches('', token)).toBe(false);
    expect(tokenMatches('', '')).toBe(false);
  });
});

describe('rotated keys on the appliance', () => {
  let dir: string;
  let state: VmState;
  const key1 = randomBytes(32);
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'ferry-keys-'));
    state = {
      version: 1, vmId: 'vm1', apiUrl: 'http://127.0.0.1:9', keyId: 1, dataKey: key1.toString('base64'), agentToken: 't', enabledAt: new Date().toISOString(), nextTagId: 1,
      disks: [{ diskId: 'disk0', path: '/dev/null', sizeBytes: 65536, epoch: 1, initialCoveredBytes: 0, initialComplete: false, journal: {} }],
    };
    saveVmState(dir, state);
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('key.json is written with mode 0600 and wins over state.json only when its key id is newer', () => {
    expect(currentKey(dir, state)).toEqual({ keyId: 1, key: key1 });
    const key2 = randomBytes(32);
    saveRotatedKey(dir, { version: 1, vmId: 'vm1', keyId: 2, dataKey: key2.toString('base64'), rotatedAt: new Date().toISOString() });
    expect(statSync(keyFilePath(dir, 'vm1')).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, 'vm1', 'state.json')).mode & 0o777).toBe(0o600);
    expect(currentKey(dir, loadVmState(dir, 'vm1'))).toEqual({ keyId: 2, key: key2 });
    // the VM enabled again (state.json with key 3): the stale key.json loses
    saveVmState(dir, { ...state, keyId: 3 });
    expect(currentKey(dir, loadVmState(dir, 'vm1')).keyId).toBe(3);
    expect(loadRotatedKey(dir, 'vm1')?.keyId).toBe(2);
  });

  it('a running process server seals the next batch with the rotated key id, without a restart', async () => {
    const sent: unknown[] = [];
    const transport: CloudTransport = { stage: async () => undefined, send: async (m) => void sent.push(m.body), close: async () => undefined };
    const server = new ProcessServer({ stateDir: dir, transport, sealWorkers: 0, threads: 1 });
    const submit = async (sequence: number) =>
      server.submit({ meta: { vmId: 'vm1', diskId: 'disk0', epoch: 1, sequence, capturedAt: Date.now(), diskSizeBytes: 65536 }, records: [{ kind: 'data', offset: 0, length: 512 }], data: Buffer.alloc(512, sequence) }, () => undefined);
    try {
      await submit(1);
      const key2 = randomBytes(32);
      saveRotatedKey(dir, { version: 1, vmId: 'vm1', keyId: 2, dataKey: key2.toString('base64'), rotatedAt: new Date().toISOString() });
      await submit(2);
      await server.idle('vm1');
      const envs = sent.map((b) => parseEnvelope(b));
      expect(envs.map((e) => [e.seq, e.keyId])).toEqual([[1, 1], [2, 2]]);
      const keys = new Map([[1, key1], [2, key2]]);
      for (const e of envs) expect(openBatch(sealedBytesFrom(e), (_v, k) => keys.get(k)).header.keyId).toBe(e.keyId);
    } finally {
      await server.close();
    }
  });
});
