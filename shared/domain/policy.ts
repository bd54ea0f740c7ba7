/**
 * The replication policy of a VM (the `policy` of enable-replication), in the shape of
 * Azure Site Recovery's replication policy. Unknown fields are rejected, so a typo such as
 * `rpoThresholdSecond` is a 400 rather than a silently ignored setting.
 */
import { z } from 'zod';

export const replicationPolicySchema = z.strictObject({
  /** RPO above this is a warning, above twice this critical (see health.ts). */
  rpoThresholdSeconds: z.number().int().min(60).max(86_400).default(900),
  /** How long recovery points are kept; 0 keeps only the latest. ASR's limit: 15 days. */
  recoveryPointRetentionHours: z.number().int().min(0).max(360).default(24),
  /** How often the appliance tags a crash-consistent point across the VM's disks. */
  crashConsistentFrequencyMinutes: z.number().int().min(1).max(60).default(5),
  /** How often an app-consistent point is taken; 0 = never. */
  appConsistentFrequencyMinutes: z.number().int().min(0).max(720).default(60),
});

export type ReplicationPolicy = z.infer<typeof replicationPolicySchema>;

export const DEFAULT_POLICY: ReplicationPolicy = Object.freeze(replicationPolicySchema.parse({}));

/**
 * Parses a policy from untrusted JSON (`undefined` = all defaults). Returns zod's result so
 * the HTTP edge can turn issues into a 400 naming the field.
 */
export function parseReplicationPolicy(input: unknown) {
  return replicationPolicySchema.safeParse(input ?? {});
}
