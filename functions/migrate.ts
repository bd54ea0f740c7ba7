/**
 * `POST /api/vms/{vmId}/migrate`: starts the operation that writes fixed VHDs of the chosen recovery point (default: latest) to container `migrated`, then moves the VM to `migrated`.
 * 202 `{"operationId"}` at once; the work runs in the `run-operations` queue function.
 */
import { app, type HttpRequest, type HttpResponseInit } from '@azure/functions';
import { operationDeps } from '../shared/azure/composition';
import { startOperation } from '../shared/services/operations';
import { handled, json, readJson } from './lib/http';

export async function migrateHandler(request: HttpRequest): Promise<HttpResponseInit> {
  const body = await readJson(request, { optional: true });
  return json(202, await startOperation(operationDeps(), 'migrate', request.params.vmId, body));
}

app.http('migrate', { methods: ['POST'], authLevel: 'function', route: 'vms/{vmId}/migrate', handler: handled(migrateHandler) });
