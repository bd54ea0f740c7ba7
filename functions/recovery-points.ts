/** `GET /api/vms/{vmId}/recovery-points`: the VM's complete recovery points, newest first. */
import { app, type HttpRequest, type HttpResponseInit } from '@azure/functions';
import { replicationDeps } from '../shared/azure/composition';
import { listRecoveryPoints } from '../shared/services/recovery-points';
import { handled, json } from './lib/http';

export async function listRecoveryPointsHandler(request: HttpRequest): Promise<HttpResponseInit> {
  return json(200, { recoveryPoints: await listRecoveryPoints(replicationDeps(), request.params.vmId) });
}

app.http('list-recovery-points', { methods: ['GET'], authLevel: 'function', route: 'vms/{vmId}/recovery-points', handler: handled(listRecoveryPointsHandler) });
