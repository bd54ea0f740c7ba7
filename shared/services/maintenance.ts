/**
 * Periodic upkeep, run by timer triggers:
 * - `monitorHealth`: recomputes every VM's health and RPO from its stored state and the clock,
 *   so a stalled appliance shows up as RPO growing past the policy threshold even when no batch
 *   arrives to trigger anything; records each change of health and reports it.
 * - `cleanStaging`: deletes staging blobs no batch message can still need.
 */
import { isStateStoreError, type VmWithDisks } from '../ports/state-store';
import type { ApplyDeps } from './apply';
import type { ReplicationDeps } from './deps';
import { toVmView, updateVmWithRetry } from './vms';

export interface HealthChange {
  vmId: string;
  from: string | undefined;
  to: string;
  reasons: string[];
  rpoSeconds: number | null;
}

export async function monitorHealth(deps: ReplicationDeps): Promise<HealthChange[]> {
  const changes: HealthChange[] = [];
  const now = deps.now();
  for (const entry of await deps.state.listVms()) {
    const view = toVmView(entry, now);
    const codes = view.healthReasons.map((r) => r.code).sort();
    const last = entry.vm.lastHealth;
    if (last && last.health === view.health && last.codes.join() === codes.join()) continue;
    try {
      await updateVmWithRetry(deps, entry.vm.vmId, (vm) => ({ ...vm, lastHealth: { health: view.health, codes, rpoSeconds: view.rpoSeconds, at: now } }));
    } catch (err) {
      if (isStateStoreError(err) && err.code === 'NOT_FOUND') continue; // deleted meanwhile
      throw err;
    }
    changes.push({ vmId: entry.vm.vmId, from: last?.health, to: view.health, reasons: view.healthReasons.map((r) => r.message), rpoSeconds: view.rpoSeconds });
  }
  return changes;
}

/** `<vmId>/<diskId>/<epoch 10>-<sequence 20>-<nonce 24 hex>` (docs/wire-format.md). */
const STAGING_NAME = /^([a-z0-9][a-z0-9-]{0,62})\/([a-z0-9][a-z0-9-]{0,62})\/(\d{10})-(\d{20})-[0-9a-f]{24}$/;

export interface CleanStagingOptions {
  /** Blobs older than this are deleted whatever they are (default 14 days: the queue's message TTL). */
  maxAgeMs?: number;
  /** Blobs younger than this are never deleted (default 1 hour: the sender may not have sent their message yet). */
  graceMs?: number;
}

/**
 * Deletes a staging blob when no message can still need it: its batch is applied (sequence at
 * or below the disk's applied sequence in its epoch, or an older epoch), its VM or disk is gone
 * or no longer replicating, its name is not Ferry's, or it has outlived the queue's message TTL.
 */
export async function cleanStaging(deps: ApplyDeps, options: CleanStagingOptions = {}): Promise<{ examined: number; deleted: number }> {
  const now = deps.now();
  const maxAge = options.maxAgeMs ?? 14 * 24 * 3600_000;
  const grace = options.graceMs ?? 3600_000;
  const vms = new Map<string, VmWithDisks | undefined>();
  let examined = 0;
  let deleted = 0;
  for await (const blob of deps.staging.list()) {
    examined++;
    const age = now - blob.lastModified;
    if (age < grace) continue;
    let obsolete = age > maxAge;
    const m = STAGING_NAME.exec(blob.name);
    if (!m) obsolete = true;
    else if (!obsolete) {
      const [, vmId = '', diskId, epoch, seq] = m;
      if (!vms.has(vmId)) vms.set(vmId, await deps.state.getVm(vmId));
      const vm = vms.get(vmId);
      const disk = vm?.disks.find((d) => d.diskId === diskId);
      if (!vm || !disk || vm.vm.state === 'disabled' || vm.vm.state === 'migrated') obsolete = true;
      else obsolete = Number(epoch) < disk.epoch || (Number(epoch) === disk.epoch && Number(seq) <= disk.appliedSequence);
    }
    if (obsolete) {
      await deps.staging.delete(blob.name);
      deleted++;
    }
  }
  return { examined, deleted };
}
