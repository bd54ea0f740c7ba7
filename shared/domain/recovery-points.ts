/**
 * Recovery points as bookkeeping (pure; docs/recovery-points.md).
 *
 * - A **capture** is one disk's state at one consistency tag: taken by the apply function when
 *   it applies the batch carrying the tag, after the disk write and before the batch's sequence
 *   is recorded, so it is exactly the disk as of that batch.
 * - A **recovery point** is a tag for which *every* disk of the VM has its capture. Its id is
 *   `rp-<tagId>`. Until the last disk captures, the tag is pending and is not listed.
 * - **Retention** (`recoveryPointRetentionHours`): a point older than the retention is expired,
 *   but the newest complete point is always kept ("0 keeps only the latest"), as is each disk's
 *   newest capture (the next capture of that disk reuses its unchanged snapshots) and any point
 *   a running operation reads. Captures of pending tags newer than the newest complete point
 *   are kept (a slower disk may still complete them); older pending ones expire with age.
 */
import { z } from 'zod';
import type { ConsistencyKind } from './wire-format';

export interface CaptureRecord {
  vmId: string;
  diskId: string;
  tagId: number;
  kind: ConsistencyKind;
  /** Source time of the tagged batch (ms since epoch). */
  capturedAt: number;
  /** Cloud time when the capture was recorded (ms since epoch). */
  createdAt: number;
  sizeBytes: number;
  epoch: number;
  sequence: number;
}

export interface RecoveryPoint {
  id: string;
  tagId: number;
  kind: ConsistencyKind;
  /** When the point came into existence: the last disk's capture (cloud time). */
  createdAt: number;
  /** The point in time on the source: the newest capture time among its disks' batches. */
  capturedAt: number;
  /** One per disk of the VM, ordered by disk id. */
  disks: CaptureRecord[];
}

const RP_ID = /^rp-([1-9][0-9]{0,15})$/;

export function recoveryPointId(tagId: number): string {
  return `rp-${tagId}`;
}

/** A recovery point id from untrusted input (a body field or a query parameter). */
export const recoveryPointIdSchema = z
  .string()
  .max(64)
  .refine((id) => parseRecoveryPointId(id) !== undefined, "recoveryPointId must be 'rp-' followed by the point's number (1 to 2^53-1), as GET .../recovery-points lists it");

/** The tag id of `rp-<tagId>`, or undefined when `id` is not a recovery point id. */
export function parseRecoveryPointId(id: string): number | undefined {
  const m = RP_ID.exec(id);
  if (!m) return undefined;
  const n = Number(m[1]);
  return Number.isSafeInteger(n) ? n : undefined;
}

const byDiskId = (a: { diskId: string }, b: { diskId: string }) => a.diskId.localeCompare(b.diskId, 'en', { numeric: true });

/**
 * The complete recovery points among `captures`, newest (highest tag) first: the tags for which
 * every disk in `diskIds` has a capture.
 */
export function completeRecoveryPoints(captures: readonly CaptureRecord[], diskIds: readonly string[]): RecoveryPoint[] {
  const byTag = new Map<number, CaptureRecord[]>();
  for (const c of captures) byTag.set(c.tagId, [...(byTag.get(c.tagId) ?? []), c]);
  const points: RecoveryPoint[] = [];
  for (const [tagId, list] of byTag) {
    const disks = diskIds.map((d) => list.find((c) => c.diskId === d));
    if (diskIds.length === 0 || disks.some((d) => d === undefined)) continue;
    const present = (disks as CaptureRecord[]).sort(byDiskId);
    points.push({
      id: recoveryPointId(tagId),
      tagId,
      kind: present.some((c) => c.kind === 'crash-consistent') ? 'crash-consistent' : 'app-consistent',
      createdAt: Math.max(...present.map((c) => c.createdAt)),
      capturedAt: Math.max(...present.map((c) => c.capturedAt)),
      disks: present,
    });
  }
  return points.sort((a, b) => b.tagId - a.tagId);
}

export interface RetentionInput {
  captures: readonly CaptureRecord[];
  diskIds: readonly string[];
  retentionHours: number;
  now: number;
  /** Tags a running operation reads: never deleted. */
  inUse?: ReadonlySet<number>;
}

/** The captures retention deletes (see the module comment for what it always keeps). */
export function expiredCaptures({ captures, diskIds, retentionHours, now, inUse = new Set() }: RetentionInput): CaptureRecord[] {
  const cutoff = now - retentionHours * 3600_000;
  const points = completeRecoveryPoints(captures, diskIds);
  const newestComplete = points[0]?.tagId ?? 0;
  const completeTags = new Set(points.map((p) => p.tagId));
  const pointCreated = new Map(points.map((p) => [p.tagId, p.createdAt]));
  const newestPerDisk = new Map<string, number>();
  for (const c of captures) newestPerDisk.set(c.diskId, Math.max(newestPerDisk.get(c.diskId) ?? 0, c.tagId));
  return captures.filter((c) => {
    if (c.tagId === newestComplete || inUse.has(c.tagId) || newestPerDisk.get(c.diskId) === c.tagId) return false;
    if (!diskIds.includes(c.diskId)) return true; // a disk the VM no longer has
    if (completeTags.has(c.tagId)) return (pointCreated.get(c.tagId) ?? c.createdAt) < cutoff;
    if (c.tagId > newestComplete) return c.createdAt < cutoff;
    return true; // pending, older than the newest complete point: every disk is past it, it can never complete
  });
}
