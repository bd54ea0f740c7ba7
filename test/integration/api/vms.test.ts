/**
 * The VM routes end to end: the real host, Azurite and emulator (test stack), over HTTP.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiClient, type Api } from '../../support/api';
import { startTestStack, type TestStack } from '../../support/stack';

describe('VM API', () => {
  let stack: TestStack;
  let call: Api;

  beforeAll(async () => {
    stack = await startTestStack();
    call = apiClient(stack);
  });
  afterAll(async () => stack?.stop());

  const disks = [
    { diskId: 'disk0', sizeBytes: 64 * 1024 * 1024 },
    { diskId: 'disk1', sizeBytes: 8 * 1024 * 1024 },
  ];

  it('enables replication: 201 with the VM and a 32-byte data key, once', async () => {
    const res = await call('POST', '/vms/web-01/enable-replication', { disks });
    expect(res.status).toBe(201);
    expect(Buffer.from(res.body.dataKey, 'base64')).toHaveLength(32);
    expect(res.body).toMatchObject({
      vmId: 'web-01',
      state: 'initial-replication',
      rpoSeconds: null,
      disks: [
        { diskId: 'disk0', sizeBytes: 64 * 1024 * 1024, initialReplicationPercent: 0, appliedSequence: 0, lastAppliedAt: null },
        { diskId: 'disk1', sizeBytes: 8 * 1024 * 1024, initialReplicationPercent: 0, appliedSequence: 0, lastAppliedAt: null },
      ],
    });
    expect(['healthy', 'warning', 'critical']).toContain(res.body.health);
    const again = await call('POST', '/vms/web-01/enable-replication', { disks });
    expect(again.status).toBe(409);
    expect(again.body.code).toBe('ALREADY_ENABLED');
    expect(again.body.message).toContain("'initial-replication'");
  });

  it('never returns the data key again', async () => {
    const one = await call('GET', '/vms/web-01');
    expect(one.status).toBe(200);
    expect(one.body.dataKey).toBeUndefined();
    const all = await call('GET', '/vms');
    expect(all.status).toBe(200);
    expect(all.body.vms.map((v: { vmId: string }) => v.vmId)).toContain('web-01');
    expect(JSON.stringify(all.body)).not.toMatch(/dataKey/);
  });

  it('404 for an unknown VM, 401 without or with a wrong key', async () => {
    expect((await call('GET', '/vms/nope')).body.code).toBe('VM_NOT_FOUND');
    expect((await call('GET', '/vms/nope')).status).toBe(404);
    expect((await call('GET', '/vms', undefined, {})).status).toBe(401);
    expect((await call('GET', '/vms', undefined, { 'x-functions-key': 'wrong' })).status).toBe(401);
  });

  it.each([
    ['malformed JSON', '{"disks": [', 'INVALID_JSON'],
    ['an unknown field', { disks, extra: 1 }, 'INVALID_REQUEST'],
    ['a wrong type', { disks: [{ diskId: 'disk0', sizeBytes: '1024' }] }, 'INVALID_REQUEST'],
    ['an unaligned size', { disks: [{ diskId: 'disk0', sizeBytes: 1000 }] }, 'INVALID_REQUEST'],
    ['a negative size', { disks: [{ diskId: 'disk0', sizeBytes: -512 }] }, 'INVALID_REQUEST'],
    ['a size beyond 2^53', '{"disks":[{"diskId":"disk0","sizeBytes":90071992547409930}]}', 'INVALID_REQUEST'],
    ['duplicate disk ids', { disks: [disks[0], disks[0]] }, 'INVALID_REQUEST'],
    ['no disks', { disks: [] }, 'INVALID_REQUEST'],
    ['an unknown policy field', { disks, policy: { rpoThresholdSecond: 60 } }, 'INVALID_REQUEST'],
  ])('400 for %s, and nothing stored', async (_what, body, code) => {
    const res = await call('POST', '/vms/bad-01/enable-replication', body);
    expect(res.status).toBe(400);
    expect(res.body.code).toBe(code);
    expect(res.body.message.length).toBeGreaterThan(10);
    expect((await call('GET', '/vms/bad-01')).status).toBe(404);
  });

  it.each(['UPPER', 'a.b', 'x'.repeat(64), '-lead', 'caf%C3%A9'])('400 for the id %s', async (id) => {
    const res = await call('POST', `/vms/${id}/enable-replication`, { disks });
    expect(res.status).toBe(400);
    expect(res.body.code).toBe('INVALID_ID');
  });

  it('disables replication, after which it can be enabled again with a new key', async () => {
    await call('POST', '/vms/db-01/enable-replication', { disks: [disks[1]] });
    const off = await call('POST', '/vms/db-01/disable-replication');
    expect(off.status).toBe(200);
    expect(off.body.state).toBe('disabled');
    const twice = await call('POST', '/vms/db-01/disable-replication');
    expect(twice.status).toBe(409);
    expect(twice.body.message).toContain("'disabled'");
    const on = await call('POST', '/vms/db-01/enable-replication', { disks });
    expect(on.status).toBe(201);
    expect(on.body.keyId).toBe(2);
  });
});
