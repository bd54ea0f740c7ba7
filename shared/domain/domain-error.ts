/**
 * The error of the pure helpers in shared/domain other than the wire format (which has
 * WireFormatError): arguments that break a documented precondition. These are programming
 * errors of the caller, never conditions of the data, so there is no retry.
 *
 * - `INVALID_ARGUMENT`: a value of the wrong type or shape (not a safe integer, not aligned).
 * - `OUT_OF_RANGE`: a value outside its documented range (beyond the disk, beyond a limit).
 */
export type DomainErrorCode = 'INVALID_ARGUMENT' | 'OUT_OF_RANGE';

export class DomainError extends Error {
  override readonly name = 'DomainError';
  readonly code: DomainErrorCode;
  /** The offending argument. */
  readonly field: string;

  constructor(code: DomainErrorCode, field: string, message: string) {
    super(message);
    this.code = code;
    this.field = field;
  }
}

export function isDomainError(err: unknown): err is DomainError {
  return typeof err === 'object' && err !== null && (err as { name?: unknown }).name === 'DomainError';
}
