/**
 * Timer (every 15 minutes): deletes expired recovery points and the snapshots no remaining
 * point refers to (policy `recoveryPointRetentionHours`), and re-queues operations that stalled.
 */
import { app, type InvocationContext, type Timer } from '@azure/functions';
import { operationDeps } from '../shared/azure/composition';
import { resumeStalledOperations } from '../shared/services/operations';
import { enforceRetention } from '../shared/services/recovery-points';

export async function recoveryPointRetention(_timer: Timer, context: InvocationContext): Promise<void> {
  const deps = operationDeps();
  for (const r of await enforceRetention(deps)) {
    if (r.deletedCaptures > 0 || r.deletedSnapshots > 0) context.log(`Retention of VM '${r.vmId}': deleted ${r.deletedCaptures} disk captures and ${r.deletedSnapshots} snapshots.`);
  }
  for (const id of await resumeStalledOperations(deps)) context.warn(`Operation ${id} had stalled; queued it again.`);
}

app.timer('recovery-point-retention', { schedule: '0 */15 * * * *', runOnStartup: false, handler: recoveryPointRetention });
