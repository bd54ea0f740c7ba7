import { describe, expect, it } from 'vitest';
import { computeHealth, type DiskHealthInput, type HealthInput } from '../../../shared/domain/health';
import { DEFAULT_POLICY } from '../../../shared/domain/policy';

const NOW = Date.UTC(2026, 10, 26, 12, 0, 0);
const secondsAgo = (s: number) => NOW - s * 1000;

function input(disks: DiskHealthInput[], extra: Partial<HealthInput> = {}): HealthInput {
  return { state: 'protected', disks, policy: DEFAULT_POLICY, now: NOW, vmId: 'web-01', ...extra };
}

const fresh = (diskId: string, ago = 30): DiskHealthInput => ({ diskId, appliedSequence: 10, lastCaptureTime: secondsAgo(ago), deadLetteredCount: 0 });

describe('computeHealth', () => {
  it('is healthy with RPO of the worst disk when every disk is recent', () => {
    expect(computeHealth(input([fresh('disk0', 30), fresh('disk1', 120)]))).toEqual({ health: 'healthy', healthReasons: [], rpoSeconds: 120 });
  });

  it('truncates RPO to whole seconds', () => {
    expect(computeHealth(input([{ diskId: 'd', appliedSequence: 1, lastCaptureTime: NOW - 1999 }])).rpoSeconds).toBe(1);
  });

  it('warns when RPO exceeds the threshold, naming the disk', () => {
    const r = computeHealth(input([fresh('disk0'), fresh('disk1', 901)]));
    expect(r.health).toBe('warning');
    expect(r.rpoSeconds).toBe(901);
    expect(r.healthReasons).toEqual([
      { code: 'RPO_EXCEEDED', diskId: 'disk1', message: "RPO is 901 s (disk 'disk1'), above the threshold of 900 s. The appliance or the apply function is falling behind." },
    ]);
  });

  it('is not a warning at exactly the threshold', () => {
    expect(computeHealth(input([fresh('disk0', 900)])).health).toBe('healthy');
  });

  it('is critical above twice the threshold', () => {
    const r = computeHealth(input([fresh('disk0', 1801)]));
    expect(r.health).toBe('critical');
    expect(r.healthReasons.map((x) => x.code)).toEqual(['RPO_CRITICAL']);
  });

  it('follows the policy threshold', () => {
    expect(computeHealth(input([fresh('disk0', 61)], { policy: { rpoThresholdSeconds: 60 } })).health).toBe('warning');
  });

  it('reports but does not judge RPO during initial replication', () => {
    expect(computeHealth(input([fresh('disk0', 5000)], { state: 'initial-replication' }))).toEqual({ health: 'healthy', healthReasons: [], rpoSeconds: 5000 });
    expect(computeHealth(input([{ diskId: 'disk0', appliedSequence: 0 }], { state: 'initial-replication' }))).toEqual({ health: 'healthy', healthReasons: [], rpoSeconds: null });
  });

  it('warns when a protected disk has no capture time', () => {
    const r = computeHealth(input([fresh('disk0'), { diskId: 'disk1', appliedSequence: 0, lastCaptureTime: null }]));
    expect(r.rpoSeconds).toBeNull();
    expect(r.healthReasons.map((x) => x.code)).toEqual(['RPO_UNKNOWN']);
  });

  it('is critical on a sequence gap and warns on dead-lettered batches, critical first', () => {
    const r = computeHealth(
      input([
        { ...fresh('disk0'), deadLetteredCount: 2 },
        { ...fresh('disk1'), gap: { expectedSequence: 11, receivedSequence: 13 } },
      ]),
    );
    expect(r.health).toBe('critical');
    expect(r.healthReasons).toEqual([
      { code: 'SEQUENCE_GAP', diskId: 'disk1', message: "Disk 'disk1' expected batch 11, received 13: a batch was lost, so the disk needs a resync." },
      { code: 'DEAD_LETTERED', diskId: 'disk0', message: "Disk 'disk0' has 2 dead-lettered batch(es) in queue replication-batches; their reasons say why." },
    ]);
  });

  it('is critical while a resync is required', () => {
    const r = computeHealth(input([fresh('disk0')], { state: 'resync-required' }));
    expect(r.health).toBe('critical');
    expect(r.healthReasons[0]?.message).toContain('POST /api/vms/web-01/resync');
  });

  it('warns of an appliance clock ahead of ours, and never reports a negative RPO', () => {
    const r = computeHealth(input([{ diskId: 'disk0', appliedSequence: 1, lastCaptureTime: NOW + 10 * 60 * 1000 }]));
    expect(r.rpoSeconds).toBe(0);
    expect(r.healthReasons.map((x) => x.code)).toEqual(['CLOCK_SKEW']);
    expect(computeHealth(input([{ diskId: 'disk0', appliedSequence: 1, lastCaptureTime: NOW + 60 * 1000 }])).health).toBe('healthy');
  });

  it('is healthy with no RPO once migrated or disabled', () => {
    for (const state of ['migrated', 'disabled'] as const) {
      expect(computeHealth(input([{ ...fresh('disk0', 99999), deadLetteredCount: 3 }], { state }))).toEqual({ health: 'healthy', healthReasons: [], rpoSeconds: null });
    }
  });

  it('moves with the injected clock', () => {
    const disks = [fresh('disk0', 0)];
    expect(computeHealth({ ...input(disks), now: NOW + 899_000 }).health).toBe('healthy');
    expect(computeHealth({ ...input(disks), now: NOW + 901_000 }).health).toBe('warning');
    expect(computeHealth({ ...input(disks), now: NOW + 1_801_000 }).health).toBe('critical');
  });
});
