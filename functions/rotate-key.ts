/**
 * `POST /api/vms/{vmId}/rotate-key`, body optional `{"graceSeconds": n}` (0..604800, default
 * 86400): a new data key becomes current and is returned once, on this response only; batches
 * sealed with the previous keys apply until the cut-off, then are dead-lettered `KeyRetired`.
 */
import { app, type HttpRequest, type HttpResponseInit } from '@azure/functions';
import { replicationDeps } from '../shared/azure/composition';
import { rotateKey } from '../shared/services/vms';
import { handled, json, readJson } from './lib/http';

export async function rotateKeyHandler(request: HttpRequest): Promise<HttpResponseInit> {
  const body = await readJson(request, { optional: true });
  return json(201, await rotateKey(replicationDeps(), request.params.vmId, body));
}

app.http('rotate-key', { methods: ['POST'], authLevel: 'function', route: 'vms/{vmId}/rotate-key', handler: handled(rotateKeyHandler) });
