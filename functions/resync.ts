/**
 * `POST /api/vms/{vmId}/resync`: moves the VM to `resync-required` and answers 202
 * `{vmId, state, epoch}`; the appliance then runs a checksum resync in that epoch (docs/resync.md).
 */
import { app, type HttpRequest, type HttpResponseInit } from '@azure/functions';
import { replicationDeps } from '../shared/azure/composition';
import { requestResync } from '../shared/services/resync';
import { handled, json, readJson } from './lib/http';

export async function resyncHandler(request: HttpRequest): Promise<HttpResponseInit> {
  const body = await readJson(request, { optional: true });
  return json(202, await requestResync(replicationDeps(), request.params.vmId, body));
}

app.http('resync', { methods: ['POST'], authLevel: 'function', route: 'vms/{vmId}/resync', handler: handled(resyncHandler) });
