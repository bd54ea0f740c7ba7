/** Timer (every 15 minutes): deletes staging blobs that no batch message can still need. */
import { app, type InvocationContext, type Timer } from '@azure/functions';
import { applyDeps } from '../shared/azure/composition';
import { cleanStaging } from '../shared/services/maintenance';

export async function stagingCleanup(_timer: Timer, context: InvocationContext): Promise<void> {
  const { examined, deleted } = await cleanStaging(applyDeps());
  if (deleted > 0) context.log(`Staging cleanup: deleted ${deleted} of ${examined} blobs.`);
}

app.timer('staging-cleanup', { schedule: '0 */15 * * * *', runOnStartup: false, handler: stagingCleanup });
