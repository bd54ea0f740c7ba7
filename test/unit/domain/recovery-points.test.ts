import { describe, expect, it } from 'vitest';
import { completeRecoveryPoints, expiredCaptures, parseRecoveryPointId, recoveryPointId, type CaptureRecord } from '../../../shared/domain/recovery-points';

const H = 3600_000;
function cap(diskId: string, tagId: number, createdAt: number, kind: CaptureRecord['kind'] = 'crash-consistent'): CaptureRecord {
  return { vmId: 'vm1', diskId, tagId, kind, capturedAt: createdAt - 1000, createdAt, sizeBytes: 1 << 20, epoch: 1, sequence: tagId };
}

describe('recovery point ids', () => {
  it('round-trips rp-<tagId> and refuses anything else', () => {
    expect(recoveryPointId(42)).toBe('rp-42');
    expect(parseRecoveryPointId('rp-42')).toBe(42);
    expect(parseRecoveryPointId('rp-0')).toBeUndefined();
    expect(parseRecoveryPointId('42')).toBeUndefined();
    expect(parseRecoveryPointId('rp-99999999999999999')).toBeUndefined();
  });
});

describe('completeRecoveryPoints', () => {
  it('lists only tags every disk has captured, newest first, created when the last disk captured', () => {
    const points = completeRecoveryPoints([cap('disk0', 1, 10), cap('disk1', 1, 12), cap('disk0', 2, 20), cap('disk1', 3, 30), cap('disk0', 3, 31)], ['disk0', 'disk1']);
    expect(points.map((p) => p.id)).toEqual(['rp-3', 'rp-1']);
    expect(points[1]).toMatchObject({ tagId: 1, createdAt: 12, kind: 'crash-consistent' });
    expect(points[0]!.disks.map((d) => d.diskId)).toEqual(['disk0', 'disk1']);
  });

  it('reports an app-consistent point when every disk captured an app-consistent tag', () => {
    expect(completeRecoveryPoints([cap('disk0', 5, 1, 'app-consistent')], ['disk0'])[0]!.kind).toBe('app-consistent');
  });
});

describe('expiredCaptures', () => {
  const disks = ['disk0', 'disk1'];
  const now = 100 * H;

  it('expires complete points older than the retention but keeps the newest one', () => {
    const captures = [cap('disk0', 1, 10 * H), cap('disk1', 1, 10 * H), cap('disk0', 2, 20 * H), cap('disk1', 2, 20 * H), cap('disk0', 3, 90 * H), cap('disk1', 3, 90 * H)];
    expect(expiredCaptures({ captures, diskIds: disks, retentionHours: 24, now }).map((c) => c.tagId)).toEqual([1, 1, 2, 2]);
    const old = captures.slice(0, 4);
    expect(expiredCaptures({ captures: old, diskIds: disks, retentionHours: 24, now }).map((c) => c.tagId)).toEqual([1, 1]);
  });

  it('with retention 0 keeps only the latest point', () => {
    const captures = [cap('disk0', 1, now), cap('disk1', 1, now), cap('disk0', 2, now), cap('disk1', 2, now)];
    expect(expiredCaptures({ captures, diskIds: disks, retentionHours: 0, now: now + 1 }).map((c) => c.tagId)).toEqual([1, 1]);
  });

  it('keeps points a running operation reads, and each disk\'s newest capture', () => {
    const captures = [cap('disk0', 1, 10 * H), cap('disk1', 1, 10 * H), cap('disk0', 2, 20 * H), cap('disk1', 2, 20 * H), cap('disk0', 3, 21 * H)];
    const expired = expiredCaptures({ captures, diskIds: disks, retentionHours: 1, now, inUse: new Set([1]) });
    // tag 2 is the newest complete point; disk0's tag 3 its newest capture (pending: disk1 may still reach it)
    expect(expired).toEqual([]);
  });

  it('drops pending captures older than the newest complete point: they can never complete', () => {
    const captures = [cap('disk0', 1, 99 * H), cap('disk0', 2, 99 * H), cap('disk1', 2, 99 * H), cap('disk0', 3, 99 * H), cap('disk1', 3, 99 * H)];
    expect(expiredCaptures({ captures, diskIds: disks, retentionHours: 24, now }).map((c) => `${c.diskId}@${c.tagId}`)).toEqual(['disk0@1']);
  });
});
