/**
 * `POST /api/vms/{vmId}/test-migrate-cleanup`: starts the operation that deletes the test VHDs, then returns the VM to `protected`.
 * 202 `{"operationId"}` at once; the work runs in the `run-operations` queue function.
 */
import { app, type HttpRequest, type HttpResponseInit } from '@azure/functions';
import { operationDeps } from '../shared/azure/composition';
import { startOperation } from '../shared/services/operations';
import { handled, json, readJson } from './lib/http';

export async function testMigrateCleanupHandler(request: HttpRequest): Promise<HttpResponseInit> {
  const body = await readJson(request, { optional: true });
  return json(202, await startOperation(operationDeps(), 'test-migrate-cleanup', request.params.vmId, body));
}

app.http('test-migrate-cleanup', { methods: ['POST'], authLevel: 'function', route: 'vms/{vmId}/test-migrate-cleanup', handler: handled(testMigrateCleanupHandler) });
