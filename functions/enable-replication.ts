/**
 * `POST /api/vms/{vmId}/enable-replication`: registers a VM and its disks, creates its data
 * key and returns it once (this response is the only place it ever appears).
 */
import { app, type HttpRequest, type HttpResponseInit } from '@azure/functions';
import { replicationDeps } from '../shared/azure/composition';
import { enableReplication } from '../shared/services/vms';
import { handled, json, readJson } from './lib/http';

export async function enableReplicationHandler(request: HttpRequest): Promise<HttpResponseInit> {
  const body = await readJson(request);
  const { vm, dataKey } = await enableReplication(replicationDeps(), request.params.vmId, body);
  return json(201, { ...vm, dataKey });
}

app.http('enable-replication', {
  methods: ['POST'],
  authLevel: 'function',
  route: 'vms/{vmId}/enable-replication',
  handler: handled(enableReplicationHandler),
});
