import { describe, expect, it } from 'vitest';
import { diskIdSchema, diskSizeBytesSchema, diskSpecSchema, isValidDiskSize, isValidId, MAX_DISK_SIZE_BYTES, vmIdSchema } from '../../../shared/domain/ids';
import { DEFAULT_POLICY, parseReplicationPolicy } from '../../../shared/domain/policy';

describe('ids', () => {
  it('accepts lowercase ids of 1 to 63 characters', () => {
    for (const id of ['a', '0', 'web-01', 'a'.repeat(63), '9-'])
      expect(vmIdSchema.safeParse(id).success && diskIdSchema.safeParse(id).success && isValidId(id)).toBe(true);
  });

  it('rejects other ids', () => {
    for (const id of ['', '-a', 'Web', 'a_b', 'a/b', 'a'.repeat(64), 'é', ' a', 7, null]) {
      expect(vmIdSchema.safeParse(id).success).toBe(false);
      expect(isValidId(id)).toBe(false);
    }
  });

  it('says what an id must be', () => {
    const r = vmIdSchema.safeParse('Web');
    expect(!r.success && r.error.issues[0]?.message).toBe("vmId must be 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit");
  });

  it('accepts disk sizes that are positive multiples of 512 up to 32 TiB', () => {
    for (const n of [512, 1024 ** 3, MAX_DISK_SIZE_BYTES]) expect(diskSizeBytesSchema.safeParse(n).success && isValidDiskSize(n)).toBe(true);
    for (const n of [0, -512, 1000, MAX_DISK_SIZE_BYTES + 512, 512.5, 2 ** 53, '512', Number.NaN]) {
      expect(diskSizeBytesSchema.safeParse(n).success).toBe(false);
      expect(isValidDiskSize(n)).toBe(false);
    }
  });

  it('rejects unknown fields in a disk spec', () => {
    expect(diskSpecSchema.safeParse({ diskId: 'disk0', sizeBytes: 512 }).success).toBe(true);
    expect(diskSpecSchema.safeParse({ diskId: 'disk0', sizeBytes: 512, path: '/x' }).success).toBe(false);
  });
});

describe('replication policy', () => {
  it('has the documented defaults', () => {
    expect(DEFAULT_POLICY).toEqual({ rpoThresholdSeconds: 900, recoveryPointRetentionHours: 24, crashConsistentFrequencyMinutes: 5, appConsistentFrequencyMinutes: 60 });
    const r = parseReplicationPolicy(undefined);
    expect(r.success && r.data).toEqual(DEFAULT_POLICY);
  });

  it('fills defaults around given fields', () => {
    const r = parseReplicationPolicy({ rpoThresholdSeconds: 300, appConsistentFrequencyMinutes: 0 });
    expect(r.success && r.data).toEqual({ ...DEFAULT_POLICY, rpoThresholdSeconds: 300, appConsistentFrequencyMinutes: 0 });
  });

  it('rejects unknown fields, naming them', () => {
    const r = parseReplicationPolicy({ rpoThresholdSecond: 300 });
    expect(r.success).toBe(false);
    expect(!r.success && r.error.issues[0]).toMatchObject({ code: 'unrecognized_keys', keys: ['rpoThresholdSecond'] });
  });

  it('enforces ranges', () => {
    for (const bad of [
      { recoveryPointRetentionHours: 361 },
      { recoveryPointRetentionHours: -1 },
      { rpoThresholdSeconds: 0 },
      { rpoThresholdSeconds: 1.5 },
      { crashConsistentFrequencyMinutes: 0 },
      { appConsistentFrequencyMinutes: -5 },
      { appConsistentFrequencyMinutes: '60' },
    ]) {
      expect(parseReplicationPolicy(bad).success, JSON.stringify(bad)).toBe(false);
    }
    expect(parseReplicationPolicy({ recoveryPointRetentionHours: 360 }).success).toBe(true);
  });
});
