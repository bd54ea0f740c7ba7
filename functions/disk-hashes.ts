/**
 * `GET /api/vms/{vmId}/disks/{diskId}/hashes[?recoveryPointId=&from=&count=]`: one page (at most
 * 65,536) of the disk's 4 MiB extent hashes, of the live replica or of a recovery point, read
 * from committed block ids (docs/resync.md).
 */
import { app, type HttpRequest, type HttpResponseInit } from '@azure/functions';
import { hashDeps } from '../shared/azure/resync-composition';
import { diskHashes } from '../shared/services/resync';
import { handled, json } from './lib/http';

export async function diskHashesHandler(request: HttpRequest): Promise<HttpResponseInit> {
  return json(200, await diskHashes(hashDeps(), request.params.vmId, request.params.diskId, Object.fromEntries(request.query.entries())));
}

app.http('disk-hashes', { methods: ['GET'], authLevel: 'function', route: 'vms/{vmId}/disks/{diskId}/hashes', handler: handled(diskHashesHandler) });
