/**
 * Service Bus trigger on `compactions` (sessions `<vmId>/<diskId>`, autoComplete): folds the
 * oldest part of a disk's delta log into its extents (docs/disk-log.md). The apply function asks
 * for it when a disk's log passes COMPACT_TRIGGER_BYTES; this runs beside the applies, so the
 * rewrite of many extents never delays replication (RPO). A transient failure throws: the
 * message is abandoned and redelivered. First it takes the recovery-point captures that tagged
 * batches left for it (each folded exactly up to its tag, then captured); then, if the log is
 * still at least half the trigger, it folds the oldest part. A request for a disk that is gone,
 * or a duplicate that finds nothing to do, completes without work.
 */
import { app, type InvocationContext } from '@azure/functions';
import { applyDeps } from '../shared/azure/composition';
import { captureAtTag } from '../shared/services/recovery-points';
import { COMPACTIONS_QUEUE, COMPACT_TRIGGER_BYTES, type CompactionRequest } from '../shared/ports/compaction-queue';

/** A capture that found another compaction running asks again this much later. */
const RETRY_LATER_MS = 10_000;

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
  const ref = { vmId: request.vmId, diskId: request.diskId };
  // Captures left by tagged batches first, each exactly at its tag (docs/disk-log.md).
  for (const marker of (await deps.disks.logState?.(ref))?.captures ?? []) {
    const folded = await deps.disks.compact(ref, disk.sizeBytes, { all: true, upTo: marker.position, exclusive: true });
    if (folded.skipped) {
      // Another compaction of this disk is running; it takes the markers too (the apply asks again).
      context.log(`Compaction of ${request.vmId}/${request.diskId}: another compaction is running; it takes this request.`);
      await deps.compactions?.request(ref, RETRY_LATER_MS);
      return;
    }
    const current = (await deps.state.getVm(request.vmId))?.disks.find((d) => d.diskId === request.diskId) ?? disk;
    const capture = await captureAtTag({ state: deps.state, captures: deps.captures, now: deps.now }, current, {
      consistency: { kind: marker.kind, tagId: marker.tagId },
      epoch: marker.position.epoch,
      sequence: marker.position.sequence,
      capturedAt: marker.capturedAt,
      initialReplicationComplete: marker.initialReplicationComplete,
    });
    await deps.disks.clearCapture?.(ref, marker.position);
    context.log(
      `Captured ${request.vmId}/${request.diskId} at tag ${marker.tagId} (epoch ${marker.position.epoch} sequence ${marker.position.sequence})${capture ? '' : ' (skipped: the disk was not fully copied at that tag)'} after folding ${folded.entriesFolded} log entries (${(folded.bytesFolded / 1048576).toFixed(1)} MiB) in ${Date.now() - started} ms.`,
    );
  }
  const r = await deps.disks.compact(ref, disk.sizeBytes, { minBytes: COMPACT_TRIGGER_BYTES / 2, exclusive: true });
  if (r.skipped) context.log(`Compaction of ${request.vmId}/${request.diskId}: another compaction is running; nothing to do.`);
  if (r.entriesFolded === 0) return;
  context.log(
    `Compacted ${request.vmId}/${request.diskId}: folded ${r.entriesFolded} log entries (${(r.bytesFolded / 1048576).toFixed(1)} MiB) into ${r.extentsWritten} extents in ${Date.now() - started} ms; ${(r.remainingBytes / 1048576).toFixed(1)} MiB left in the log.`,
  );
  // Applies ask only as the log grows (shouldRequestCompaction): what piled up meanwhile is asked for here.
  if (r.remainingBytes >= COMPACT_TRIGGER_BYTES) await deps.compactions?.request(ref);
}

app.serviceBusQueue('compact-disks', {
  connection: 'ServiceBusConnection',
  queueName: COMPACTIONS_QUEUE,
  isSessionsEnabled: true,
  handler: compactDisks,
});
