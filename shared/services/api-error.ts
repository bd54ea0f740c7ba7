/**
 * The error every use case throws for a condition the caller can act on, with the HTTP status
 * it maps to and a stable `code` (docs/errors.md lists them). Messages say what was wrong and
 * what to do; they never contain keys, SAS tokens or connection strings.
 */
import type { ZodError } from 'zod';

export type ApiErrorCode =
  | 'INVALID_JSON'
  | 'INVALID_REQUEST'
  | 'INVALID_ID'
  | 'VM_NOT_FOUND'
  | 'DISK_NOT_FOUND'
  | 'ALREADY_ENABLED'
  | 'INVALID_TRANSITION'
  | 'CONCURRENT_ROTATION'
  | 'RECOVERY_POINT_NOT_FOUND'
  | 'NO_RECOVERY_POINT'
  | 'OPERATION_IN_PROGRESS'
  | 'OPERATION_NOT_FOUND'
  | 'PAYLOAD_TOO_LARGE'
  | 'STORAGE_UNAVAILABLE'
  | 'REPLICA_CHANGING'
  | 'INTERNAL';

const STATUS: Readonly<Record<ApiErrorCode, number>> = {
  INVALID_JSON: 400,
  INVALID_REQUEST: 400,
  INVALID_ID: 400,
  VM_NOT_FOUND: 404,
  DISK_NOT_FOUND: 404,
  ALREADY_ENABLED: 409,
  INVALID_TRANSITION: 409,
  CONCURRENT_ROTATION: 409,
  RECOVERY_POINT_NOT_FOUND: 404,
  NO_RECOVERY_POINT: 409,
  OPERATION_IN_PROGRESS: 409,
  OPERATION_NOT_FOUND: 404,
  PAYLOAD_TOO_LARGE: 413,
  STORAGE_UNAVAILABLE: 503,
  REPLICA_CHANGING: 503,
  INTERNAL: 500,
};

export class ApiError extends Error {
  override readonly name = 'ApiError';
  readonly status: number;
  constructor(
    readonly code: ApiErrorCode,
    message: string,
    options: { cause?: unknown } = {},
  ) {
    super(message, options);
    this.status = STATUS[code];
  }
  toJSON(): { code: ApiErrorCode; message: string } {
    return { code: this.code, message: this.message };
  }
}

export function isApiError(err: unknown): err is ApiError {
  return err instanceof Error && err.name === 'ApiError';
}

/** One line naming every field zod rejected: "disks.0.sizeBytes: must be a multiple of 512; policy: unknown key 'x'". */
export function describeZodError(err: ZodError): string {
  return err.issues
    .map((i) => {
      const path = i.path.length ? i.path.join('.') : '(body)';
      const msg = i.code === 'unrecognized_keys' ? `unknown field(s) ${i.keys.map((k) => `'${k}'`).join(', ')}` : i.message;
      return `${path}: ${msg}`;
    })
    .join('; ');
}

export const apiErrors = {
  invalidJson: (detail: string) => new ApiError('INVALID_JSON', `The request body is not valid JSON (${detail}); send a JSON object with Content-Type: application/json.`),
  invalidRequest: (what: string, err: ZodError) => new ApiError('INVALID_REQUEST', `Invalid ${what}: ${describeZodError(err)}.`),
  invalidId: (field: string) =>
    new ApiError('INVALID_ID', `${field} must match ^[a-z0-9][a-z0-9-]{0,62}$: 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit.`),
  vmNotFound: (vmId: string) => new ApiError('VM_NOT_FOUND', `VM '${vmId}' is not known; enable replication first (POST /api/vms/${vmId}/enable-replication) or list VMs (GET /api/vms).`),
  diskNotFound: (vmId: string, diskId: string, diskIds: readonly string[]) =>
    new ApiError('DISK_NOT_FOUND', `VM '${vmId}' has no disk '${diskId}'${diskIds.length ? ` (it has ${diskIds.join(', ')})` : ''}; see its disks with GET /api/vms/${vmId}.`),
  replicaChanging: (vmId: string, diskId: string, attempts: number) =>
    new ApiError('REPLICA_CHANGING', `The replica of VM '${vmId}' disk '${diskId}' changed ${attempts} times while its hashes were read (batches are being applied); retry, or read the hashes once the appliance has paused sending for this disk.`),
  alreadyEnabled: (vmId: string, state: string) =>
    new ApiError('ALREADY_ENABLED', `Replication of VM '${vmId}' is already enabled (state '${state}'); disable it first (POST /api/vms/${vmId}/disable-replication) to enable it again.`),
  invalidTransition: (message: string) => new ApiError('INVALID_TRANSITION', message),
  concurrentRotation: (vmId: string, keyId: number) =>
    new ApiError('CONCURRENT_ROTATION', `The data key of VM '${vmId}' was rotated by another request meanwhile (current key ${keyId}); its new key was returned to that request only. Rotate again if this appliance needs a key of its own.`),
  recoveryPointNotFound: (vmId: string, id: string) =>
    new ApiError('RECOVERY_POINT_NOT_FOUND', `VM '${vmId}' has no recovery point '${id}' (it may have expired under the retention policy); list them with GET /api/vms/${vmId}/recovery-points, or omit recoveryPointId to use the latest.`),
  noRecoveryPoint: (vmId: string, state: string) =>
    new ApiError('NO_RECOVERY_POINT', `VM '${vmId}' (state '${state}') has no recovery point yet: one exists once every disk has applied a batch carrying the same consistency tag after its initial copy. Run a replication pass that ends with a tag (ferry replicate --once) and retry.`),
  operationInProgress: (vmId: string, state: string, operationId: string) =>
    new ApiError('OPERATION_IN_PROGRESS', `VM '${vmId}' (state '${state}') is already running operation '${operationId}'; wait for it to finish (GET /api/vms/${vmId}/operations/${operationId}) and retry.`),
  operationNotFound: (vmId: string, operationId: string) =>
    new ApiError('OPERATION_NOT_FOUND', `VM '${vmId}' has no operation '${operationId}'; use the operationId returned by test-migrate, test-migrate-cleanup or migrate.`),
  tooLarge: (limit: number) => new ApiError('PAYLOAD_TOO_LARGE', `The request body is larger than ${limit} bytes; send a smaller body.`),
  unavailable: (what: string, cause: unknown) => new ApiError('STORAGE_UNAVAILABLE', `${what}: storage is unavailable right now; retry shortly.`, { cause }),
};
