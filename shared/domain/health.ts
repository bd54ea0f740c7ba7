/**
 * Health and RPO of a VM, computed from its stored state and an injected clock (pure).
 *
 * RPO (recovery point objective, as Azure Site Recovery shows it) is how much data a
 * failover now would lose: `now - capturedAt` of the newest batch applied, for the disk that
 * is furthest behind. The appliance sends at least one batch per crash-consistent interval
 * (a marker batch if nothing changed), so an idle disk's RPO stays bounded.
 *
 * Rules (each adds a reason; health is the worst severity, `healthy` without reasons):
 *
 * | code | severity | when |
 * | --- | --- | --- |
 * | `RESYNC_REQUIRED` | critical | state `resync-required` |
 * | `SEQUENCE_GAP` | critical | a disk lost a batch (a gap in its sequence) |
 * | `RPO_CRITICAL` | critical | RPO > 2 x `rpoThresholdSeconds` (*) |
 * | `RPO_EXCEEDED` | warning | RPO > `rpoThresholdSeconds` (*) |
 * | `RPO_UNKNOWN` | warning | a disk has applied no batch with a capture time (*) |
 * | `DEAD_LETTERED` | warning | a disk has dead-lettered batches |
 * | `CLOCK_SKEW` | warning | a capture time is more than 5 minutes in the future: the appliance's clock is ahead and RPO reads too low |
 *
 * (*) RPO is judged only while the VM replicates normally (`protected`, `test-migrating`,
 * `migrating`); during the initial copy or a resync it is reported, not judged, as Azure
 * Site Recovery does. `migrated` and `disabled` VMs are `healthy` with `rpoSeconds` null.
 */
import type { ReplicationPolicy } from './policy';
import type { VmState } from './state-machine';

export type Health = 'healthy' | 'warning' | 'critical';

export type HealthReasonCode =
  | 'RESYNC_REQUIRED'
  | 'SEQUENCE_GAP'
  | 'RPO_CRITICAL'
  | 'RPO_EXCEEDED'
  | 'RPO_UNKNOWN'
  | 'DEAD_LETTERED'
  | 'CLOCK_SKEW';

export interface HealthReason {
  code: HealthReasonCode;
  message: string;
  /** The disk concerned, when the reason is about one disk. */
  diskId?: string;
}

export interface DiskHealthInput {
  diskId: string;
  /** Sequence of the newest applied batch in the current epoch; 0 = none yet. */
  appliedSequence: number;
  /** `capturedAt` (ms since epoch) of the newest applied batch; undefined/null = none. */
  lastCaptureTime?: number | null;
  /** Batches of this disk in the dead-letter queue. */
  deadLetteredCount?: number;
  /** Set when a batch arrived above appliedSequence + 1, or one was dead-lettered unapplied. */
  gap?: { expectedSequence: number; receivedSequence?: number } | null;
}

export interface HealthInput {
  state: VmState;
  disks: readonly DiskHealthInput[];
  policy: Pick<ReplicationPolicy, 'rpoThresholdSeconds'>;
  /** ms since epoch: the injected clock. */
  now: number;
  /** Named in messages' routes; `{vmId}` when absent. */
  vmId?: string;
}

export interface HealthReport {
  health: Health;
  healthReasons: HealthReason[];
  /** Seconds, whole; null when unknown (some disk has applied nothing) or not replicating. */
  rpoSeconds: number | null;
}

export const CLOCK_SKEW_TOLERANCE_MS = 5 * 60 * 1000;

const SEVERITY: Readonly<Record<HealthReasonCode, Exclude<Health, 'healthy'>>> = {
  RESYNC_REQUIRED: 'critical',
  SEQUENCE_GAP: 'critical',
  RPO_CRITICAL: 'critical',
  RPO_EXCEEDED: 'warning',
  RPO_UNKNOWN: 'warning',
  DEAD_LETTERED: 'warning',
  CLOCK_SKEW: 'warning',
};

const JUDGES_RPO: ReadonlySet<VmState> = new Set<VmState>(['protected', 'test-migrating', 'migrating']);

export function computeHealth(input: HealthInput): HealthReport {
  const { state, disks, policy, now } = input;
  if (state === 'migrated' || state === 'disabled') return { health: 'healthy', healthReasons: [], rpoSeconds: null };

  const reasons: HealthReason[] = [];
  if (state === 'resync-required') {
    reasons.push({
      code: 'RESYNC_REQUIRED',
      message: `A disk lost batches or a resync was requested: the appliance must copy the disks again. Run a resync (POST /api/vms/${input.vmId ?? '{vmId}'}/resync) if none is running.`,
    });
  }

  let rpoSeconds: number | null = disks.length === 0 ? null : 0;
  let worstDisk: string | undefined;
  for (const d of disks) {
    if (d.gap) {
      const got = d.gap.receivedSequence === undefined ? '' : `, received ${d.gap.receivedSequence}`;
      reasons.push({
        code: 'SEQUENCE_GAP',
        diskId: d.diskId,
        message: `Disk '${d.diskId}' expected batch ${d.gap.expectedSequence}${got}: a batch was lost, so the disk needs a resync.`,
      });
    }
    if ((d.deadLetteredCount ?? 0) > 0) {
      reasons.push({
        code: 'DEAD_LETTERED',
        diskId: d.diskId,
        message: `Disk '${d.diskId}' has ${d.deadLetteredCount} dead-lettered batch(es) in queue replication-batches; their reasons say why.`,
      });
    }
    const t = d.lastCaptureTime;
    if (t === undefined || t === null) {
      rpoSeconds = null;
      continue;
    }
    if (t - now > CLOCK_SKEW_TOLERANCE_MS) {
      reasons.push({
        code: 'CLOCK_SKEW',
        diskId: d.diskId,
        message: `Disk '${d.diskId}' has a capture time ${Math.round((t - now) / 1000)} s in the future: the appliance's clock is ahead, so RPO reads too low. Synchronise its clock (NTP).`,
      });
    }
    const rpo = Math.max(0, Math.floor((now - t) / 1000));
    if (rpoSeconds !== null && rpo >= rpoSeconds) {
      if (rpo > rpoSeconds || worstDisk === undefined) worstDisk = d.diskId;
      rpoSeconds = rpo;
    }
  }

  if (JUDGES_RPO.has(state)) {
    const limit = policy.rpoThresholdSeconds;
    if (rpoSeconds === null) {
      reasons.push({ code: 'RPO_UNKNOWN', message: 'A disk has applied no batch yet, so RPO is unknown. Check that the appliance is replicating (ferry status).' });
    } else if (rpoSeconds > 2 * limit) {
      reasons.push({
        code: 'RPO_CRITICAL',
        diskId: worstDisk,
        message: `RPO is ${rpoSeconds} s (disk '${worstDisk}'), more than twice the threshold of ${limit} s. Check that the appliance is running and reaches Azure, and the queue's backlog.`,
      });
    } else if (rpoSeconds > limit) {
      reasons.push({
        code: 'RPO_EXCEEDED',
        diskId: worstDisk,
        message: `RPO is ${rpoSeconds} s (disk '${worstDisk}'), above the threshold of ${limit} s. The appliance or the apply function is falling behind.`,
      });
    }
  }

  reasons.sort((a, b) => (SEVERITY[a.code] === SEVERITY[b.code] ? 0 : SEVERITY[a.code] === 'critical' ? -1 : 1));
  const health: Health = reasons.length === 0 ? 'healthy' : SEVERITY[reasons[0]!.code];
  return { health, healthReasons: reasons, rpoSeconds };
}
