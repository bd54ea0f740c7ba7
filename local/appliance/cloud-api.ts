/**
 * The Ferry cloud API as the appliance uses it (contract: CONTRACT.md, "HTTP API"). Network
 * failures become UNREACHABLE naming the endpoint and how to start the local stack.
 */
import type { RotateKeyResult, VmView } from '../../shared/services/vms';
import { ApplianceError, isApplianceError } from './errors';

/** The API's own response types: the appliance reads exactly what the functions return. */
export type { DiskView, RotateKeyResult, VmView } from '../../shared/services/vms';

/** One page of `GET /api/vms/{vmId}/disks/{diskId}/hashes`. */
export interface HashesPage {
  totalBlocks: number;
  blocks: { index: number; hash: string }[];
  next: number | null;
}

export type OperationType = 'test-migrate' | 'test-migrate-cleanup' | 'migrate';

/** `GET /api/vms/{vmId}/operations/{operationId}`, as the contract describes it. */
export interface OperationView {
  operationId: string;
  type: string;
  status: 'running' | 'succeeded' | 'failed';
  error?: { code: string; message: string };
  disks?: { diskId: string; vhdUrl: string; sizeBytes: number }[];
}

export const DEFAULT_API = 'http://127.0.0.1:7071';

export class CloudApi {
  readonly base: string;

  constructor(apiUrl: string, private readonly functionKey: string) {
    const trimmed = apiUrl.replace(/\/+$/, '');
    this.base = trimmed.endsWith('/api') ? trimmed : `${trimmed}/api`;
  }

  private async call<T>(method: string, path: string, body?: unknown, timeoutMs = 30_000): Promise<{ status: number; body: T & { code?: string; message?: string } }> {
    let res: Response;
    try {
      res = await fetch(`${this.base}${path}`, {
        method,
        headers: { 'x-functions-key': this.functionKey, 'content-type': 'application/json' },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (err) {
      throw new ApplianceError('UNREACHABLE', `The Ferry API at ${this.base} is not reachable (${(err as Error & { cause?: Error }).cause?.message ?? (err as Error).message}); start the local stack with npm start, or pass --api URL.`, { cause: err });
    }
    const text = await res.text();
    let parsed: unknown = undefined;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      throw new ApplianceError('API_ERROR', `${method} ${this.base}${path} answered ${res.status} with a body that is not JSON; is --api pointing at the Ferry functions host?`);
    }
    if (res.status === 401 || res.status === 403) {
      throw new ApplianceError('UNAUTHORIZED', `The Ferry API at ${this.base} refused the function key (${res.status}); set FERRY_FUNCTION_KEY or local/.data/function-key to the host's key.`);
    }
    return { status: res.status, body: parsed as T & { code?: string; message?: string } };
  }

  private fail(what: string, r: { status: number; body: { code?: string; message?: string } }): never {
    throw new ApplianceError('API_ERROR', `${what} failed: ${r.status} ${r.body?.code ?? ''} ${r.body?.message ?? ''}`.trim());
  }

  async enable(vmId: string, disks: { diskId: string; sizeBytes: number }[]): Promise<VmView & { dataKey: string }> {
    const r = await this.call<VmView & { dataKey: string }>('POST', `/vms/${encodeURIComponent(vmId)}/enable-replication`, { disks });
    if (r.status === 409) throw new ApplianceError('ALREADY_ENABLED', `VM '${vmId}' is already enabled in the cloud: ${r.body.message ?? ''} Disable it first (POST /api/vms/${vmId}/disable-replication) to enable it again.`.trim());
    if (r.status !== 201) this.fail(`Enabling VM '${vmId}'`, r);
    return r.body;
  }

  /** `POST /api/vms/{vmId}/rotate-key`: the new key, handed out on this response only. */
  async rotateKey(vmId: string, graceSeconds?: number): Promise<RotateKeyResult> {
    const r = await this.call<RotateKeyResult>('POST', `/vms/${encodeURIComponent(vmId)}/rotate-key`, graceSeconds !== undefined ? { graceSeconds } : {});
    if (r.status === 404) throw new ApplianceError('NOT_ENABLED', `VM '${vmId}' is not enabled in the cloud at ${this.base}; run \`ferry enable --vm ${vmId} --disk PATH\`.`);
    if (r.status !== 201) this.fail(`Rotating the data key of VM '${vmId}'`, r);
    return r.body;
  }

  /** `GET /api/vms/{vmId}`; `timeoutMs` (default 30 s) bounds the whole request. */
  async getVm(vmId: string, timeoutMs?: number): Promise<VmView> {
    const r = await this.call<VmView>('GET', `/vms/${encodeURIComponent(vmId)}`, undefined, timeoutMs);
    if (r.status === 404) throw new ApplianceError('NOT_ENABLED', `VM '${vmId}' is not enabled in the cloud at ${this.base}; run \`ferry enable --vm ${vmId} --disk PATH\`.`);
    if (r.status !== 200) this.fail(`Reading VM '${vmId}'`, r);
    return r.body;
  }

  /** Starts test-migrate, test-migrate-cleanup or migrate; resolves with the operation id. */
  async startOperation(vmId: string, type: OperationType, recoveryPointId?: string): Promise<string> {
    const body = type !== 'test-migrate-cleanup' && recoveryPointId ? { recoveryPointId } : type === 'test-migrate-cleanup' ? undefined : {};
    const r = await this.call<{ operationId: string }>('POST', `/vms/${encodeURIComponent(vmId)}/${type}`, body);
    if (r.status === 404) throw new ApplianceError('NOT_ENABLED', `VM '${vmId}' is not enabled in the cloud at ${this.base}: ${r.body.message ?? ''}`.trim());
    if (r.status !== 202) this.fail(`Starting ${type} of VM '${vmId}'`, r);
    return r.body.operationId;
  }

  async getOperation(vmId: string, operationId: string): Promise<OperationView> {
    const r = await this.call<OperationView>('GET', `/vms/${encodeURIComponent(vmId)}/operations/${encodeURIComponent(operationId)}`);
    if (r.status !== 200) this.fail(`Reading operation ${operationId} of VM '${vmId}'`, r);
    return r.body;
  }

  async resync(vmId: string): Promise<number> {
    const r = await this.call<{ epoch: number }>('POST', `/vms/${encodeURIComponent(vmId)}/resync`, {});
    if (r.status !== 202) this.fail(`Requesting a resync of VM '${vmId}'`, r);
    return r.body.epoch;
  }

  async hashes(vmId: string, diskId: string, from: number): Promise<HashesPage> {
    const r = await this.call<HashesPage>('GET', `/vms/${encodeURIComponent(vmId)}/disks/${encodeURIComponent(diskId)}/hashes?from=${from}`);
    if (r.status !== 200) this.fail(`Reading the extent hashes of ${vmId}/${diskId}`, r);
    return r.body;
  }

  /** `GET /api/vms/{vmId}/recovery-points`, newest first. */
  async recoveryPoints(vmId: string): Promise<{ id: string; createdAt: string; type: string }[]> {
    const r = await this.call<{ recoveryPoints: { id: string; createdAt: string; type: string }[] }>('GET', `/vms/${encodeURIComponent(vmId)}/recovery-points`);
    if (r.status === 404) throw new ApplianceError('NOT_ENABLED', `VM '${vmId}' is not enabled in the cloud at ${this.base}.`);
    if (r.status !== 200) this.fail(`Listing recovery points of VM '${vmId}'`, r);
    return r.body.recoveryPoints;
  }

  async listVms(): Promise<VmView[]> {
    const r = await this.call<{ vms: VmView[] }>('GET', '/vms');
    if (r.status !== 200) this.fail('Listing VMs', r);
    return r.body.vms;
  }
}

/**
 * Polls the cloud until every disk's appliedSequence reaches `want[diskId]` (what
 * `replicate --once` waits for before it exits). The wait is bounded by `timeoutMs` as a
 * whole, each request included: while the cloud's storage or broker is away the API can take
 * long to answer or answer 5xx, and the caller (the continuous agent's backpressure) must get
 * control back on time, with an error that says the cloud could not be asked.
 */
export async function waitApplied(
  api: CloudApi,
  vmId: string,
  want: Record<string, number>,
  options: { timeoutMs?: number; onPoll?: (vm: VmView) => void; initialComplete?: boolean; epochs?: Record<string, number> } = {},
): Promise<VmView> {
  const deadline = Date.now() + (options.timeoutMs ?? 10 * 60_000);
  let delay = 100;
  let unanswered: ApplianceError | undefined;
  for (;;) {
    let vm: VmView | undefined;
    try {
      vm = await api.getVm(vmId, Math.max(1000, Math.min(30_000, deadline - Date.now())));
      unanswered = undefined;
    } catch (err) {
      // the API unreachable, slow or failing (5xx) is an outage: asked again until the deadline
      if (!(isApplianceError(err) && (err.code === 'UNREACHABLE' || (err.code === 'API_ERROR' && / failed: 5\d\d\b/.test(err.message))))) throw err;
      unanswered = err;
    }
    if (vm) {
      options.onPoll?.(vm);
      const v = vm;
      const behind = Object.entries(want).filter(([diskId, seq]) => {
        const disk = v.disks.find((d) => d.diskId === diskId);
        const epoch = options.epochs?.[diskId];
        if (epoch !== undefined && (disk?.epoch ?? 0) !== epoch) return (disk?.epoch ?? 0) < epoch;
        return (disk?.appliedSequence ?? 0) < seq;
      });
      // the disk rows and the VM's state are separate updates: when the initial copy (or a
      // resync) is complete, also wait for the VM to leave initial-replication / resync-required
      const settled = !options.initialComplete || (v.state !== 'initial-replication' && v.state !== 'resync-required');
      if (behind.length === 0 && settled) return v;
      if (Date.now() > deadline) {
        if (behind.length === 0) throw new ApplianceError('CLOUD_NOT_APPLIED', `VM '${vmId}' applied everything but is still in ${v.state}.`);
        const detail = behind.map(([diskId, seq]) => `${diskId} at ${v.disks.find((d) => d.diskId === diskId)?.appliedSequence ?? 0} of ${seq}`).join(', ');
        throw new ApplianceError('CLOUD_NOT_APPLIED', `The cloud has not applied everything sent for VM '${vmId}' (${detail}); is the functions host running apply-batches?`);
      }
    } else if (Date.now() > deadline) {
      throw new ApplianceError('UNREACHABLE', `The cloud could not say what it applied for VM '${vmId}' in time: ${unanswered!.message}`, { cause: unanswered });
    }
    await new Promise((r) => setTimeout(r, Math.max(0, Math.min(delay, deadline + 1 - Date.now()))));
    delay = Math.min(1000, delay * 1.5);
  }
}
