/** `GET /api/vms/{vmId}/operations/{operationId}`: the state of a test-migrate, cleanup or migrate operation. */
import { app, type HttpRequest, type HttpResponseInit } from '@azure/functions';
import { operationDeps } from '../shared/azure/composition';
import { getOperation } from '../shared/services/operations';
import { handled, json } from './lib/http';

export async function getOperationHandler(request: HttpRequest): Promise<HttpResponseInit> {
  return json(200, await getOperation(operationDeps(), request.params.vmId, request.params.operationId));
}

app.http('get-operation', { methods: ['GET'], authLevel: 'function', route: 'vms/{vmId}/operations/{operationId}', handler: handled(getOperationHandler) });
