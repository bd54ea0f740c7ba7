/**
 * Service Bus trigger on `compactions` (sessions `<vmId>/<diskId>`, autoComplete): folds the
 * oldest part of a disk's delta log into its extents (docs/disk-log.md). The apply function asks
 * for it when a disk's log passes COMPACT_TRIGGER_BYTES; this runs beside the applies, so the
 * rewrite of many extents never delays replication (RPO). A transient failure throws: the
 * message is abandoned and redelivered. A request for a disk that is gone, or whose log is
 * already below half the trigger (a duplicate), completes without work.
 */
import { app, type InvocationContext } from '@azure/functions';
import { applyDeps } from '../shared/azure/composition';
import { COMPACTIONS_QUEUE, COMPACT_TRIGGER_BYTES, type CompactionRequest } from '../shared/ports/compaction-queue';

function parseRequest(body: unknown): CompactionRequest | undefined {
  const obj = typeof body === 'string' ? (JSON.parse(body) as unknown) : body;
  const m = obj as Partial<CompactionRequest> | null;
  return typeof m?.vmId === 'string' && typeof m.diskId === 'string' ? { vmId: m.vmId, diskId: m.diskId } : undefined;
}

export async function compactDisks(body: unknown, context: InvocationContext): Promise<void> {
  const request = parseRequest(body);
  if (!request) {
    context.warn(`Ignoring a message on '${COMPACTIONS_QUEUE}' that is not {vmId, diskId}.`);
    return;
  }
  const deps = applyDeps();
  const found = await deps.state.getVm(request.vmId);
  const disk = found?.disks.find((d) => d.diskId === request.diskId);
  if (!disk || !deps.disks.compact) {
    context.log(`Compaction of ${request.vmId}/${request.diskId}: the disk is gone; nothing to do.`);
    return;
  }
  const started = Date.now();
  const r = await deps.disks.compact(request, disk.sizeBytes, { minBytes: COMPACT_TRIGGER_BYTES / 2 });
  if (r.entriesFolded === 0) return;
  context.log(
    `Compacted ${request.vmId}/${request.diskId}: folded ${r.entriesFolded} log entries (${(r.bytesFolded / 1048576).toFixed(1)} MiB) into ${r.extentsWritten} extents in ${Date.now() - started} ms; ${(r.remainingBytes / 1048576).toFixed(1)} MiB left in the log.`,
  );
}

app.serviceBusQueue('compact-disks', {
  connection: 'ServiceBusConnection',
  queueName: COMPACTIONS_QUEUE,
  isSessionsEnabled: true,
  handler: compactDisks,
});
