import { describe, expect, it } from 'vitest';
import { maintainResync, nextEpoch, type ResyncRecord } from '../../../shared/domain/resync';

const NOW = 1_700_000_000_000;

describe('maintainResync', () => {
  it('drops the record outside resync-required', () => {
    const r: ResyncRecord = { epoch: 2, requestedAt: 1, reason: 'requested' };
    expect(maintainResync({ state: 'resync-required', resync: r }, { state: 'protected', resync: r }, [{ epoch: 2 }], NOW)).toBeUndefined();
  });

  it('keeps a record the change set on purpose', () => {
    const r: ResyncRecord = { epoch: 5, requestedAt: 1, reason: 'requested' };
    expect(maintainResync({ state: 'protected' }, { state: 'resync-required', resync: r }, [{ epoch: 1 }], NOW)).toBe(r);
  });

  it('sets the next epoch when a gap moves the VM to resync-required', () => {
    expect(maintainResync({ state: 'protected' }, { state: 'resync-required' }, [{ epoch: 1, missingSequence: 4 }, { epoch: 1 }], NOW)).toEqual({ epoch: 2, requestedAt: NOW, reason: 'sequence-gap' });
  });

  it('keeps the epoch while disks move into it, and ignores gaps in older epochs', () => {
    const r: ResyncRecord = { epoch: 2, requestedAt: 1, reason: 'requested' };
    const before = { state: 'resync-required' as const, resync: r };
    expect(maintainResync(before, { ...before }, [{ epoch: 2 }, { epoch: 1, missingSequence: 3 }], NOW)).toBe(r);
  });

  it('restarts in a fresh epoch after a gap inside the resync epoch, once', () => {
    const r: ResyncRecord = { epoch: 2, requestedAt: 1, reason: 'requested' };
    const disks = [{ epoch: 2, missingSequence: 3 }, { epoch: 1 }];
    const restarted = maintainResync({ state: 'resync-required', resync: r }, { state: 'resync-required', resync: r }, disks, NOW);
    expect(restarted).toEqual({ epoch: 3, requestedAt: NOW, reason: 'sequence-gap' });
    expect(maintainResync({ state: 'resync-required', resync: restarted }, { state: 'resync-required', resync: restarted }, disks, NOW + 1)).toBe(restarted);
  });

  it('nextEpoch is one above every disk', () => {
    expect(nextEpoch([{ epoch: 1 }, { epoch: 3 }])).toBe(4);
  });
});
