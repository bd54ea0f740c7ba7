/** `GET /api/vms` and `GET /api/vms/{vmId}`: the cloud's view of replicated VMs. */
import { app, type HttpRequest, type HttpResponseInit } from '@azure/functions';
import { replicationDeps } from '../shared/azure/composition';
import { getVm, listVms } from '../shared/services/vms';
import { handled, json } from './lib/http';

export async function listVmsHandler(): Promise<HttpResponseInit> {
  return json(200, { vms: await listVms(replicationDeps()) });
}

export async function getVmHandler(request: HttpRequest): Promise<HttpResponseInit> {
  return json(200, await getVm(replicationDeps(), request.params.vmId));
}

app.http('list-vms', { methods: ['GET'], authLevel: 'function', route: 'vms', handler: handled(listVmsHandler) });
app.http('get-vm', { methods: ['GET'], authLevel: 'function', route: 'vms/{vmId}', handler: handled(getVmHandler) });
