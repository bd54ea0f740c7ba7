/**
 * One error class for the appliance, with a stable `code` (docs/appliance.md, "Errors").
 * The CLI prints `message` as its one-line reason and exits non-zero.
 */
export type ApplianceErrorCode =
  | 'DISK_NOT_FOUND'
  | 'DISK_UNREADABLE'
  | 'BAD_ARGUMENT'
  | 'NOT_ENABLED'
  | 'ALREADY_ENABLED'
  | 'UNREACHABLE'
  | 'API_ERROR'
  | 'UNAUTHORIZED'
  | 'BAD_STATE'
  | 'CERTIFICATE_MISMATCH'
  | 'PROCESS_SERVER_RESTARTED'
  | 'STALE_RUN'
  | 'CLOUD_NOT_APPLIED'
  | 'OPERATION_FAILED'
  | 'VERIFY_MISMATCH';

export class ApplianceError extends Error {
  override readonly name = 'ApplianceError';
  constructor(readonly code: ApplianceErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

export function isApplianceError(err: unknown): err is ApplianceError {
  return err instanceof Error && err.name === 'ApplianceError';
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
