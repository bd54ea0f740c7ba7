/** `POST /api/vms/{vmId}/disable-replication`: stops replication and deletes the replica disks. */
import { app, type HttpRequest, type HttpResponseInit } from '@azure/functions';
import { replicationDeps } from '../shared/azure/composition';
import { disableReplication } from '../shared/services/vms';
import { handled, json, readJson } from './lib/http';

export async function disableReplicationHandler(request: HttpRequest): Promise<HttpResponseInit> {
  const body = await readJson(request, { optional: true });
  if (body !== undefined && (typeof body !== 'object' || body === null || Array.isArray(body) || Object.keys(body).length > 0)) {
    return json(400, { code: 'INVALID_REQUEST', message: 'disable-replication takes no body (or an empty JSON object).' });
  }
  return json(200, await disableReplication(replicationDeps(), request.params.vmId));
}

app.http('disable-replication', {
  methods: ['POST'],
  authLevel: 'function',
  route: 'vms/{vmId}/disable-replication',
  handler: handled(disableReplicationHandler),
});
