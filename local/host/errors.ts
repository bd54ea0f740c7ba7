/**
 * The host's one error type. `code` is stable (it is the `code` of the JSON error body for
 * HTTP errors); each factory writes its message once, saying what was wrong and what to do.
 */
export type HostErrorCode =
  | 'AppNotFound'
  | 'NoEntryPoint'
  | 'InvalidRoute'
  | 'InvalidSchedule'
  | 'InvalidHostJson'
  | 'MissingSetting'
  | 'UnsupportedTrigger'
  | 'PortInUse'
  | 'NotFound'
  | 'MethodNotAllowed'
  | 'Unauthorized'
  | 'PayloadTooLarge'
  | 'BadRequest'
  | 'InternalServerError'
  | 'ServiceUnavailable';

export class HostError extends Error {
  override readonly name = 'HostError';
  constructor(
    readonly code: HostErrorCode,
    message: string,
    readonly status = 500,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  static appNotFound(root: string, file: string): HostError {
    return new HostError('AppNotFound', `No ${file} in the app root ${root}; point FERRY_APP_ROOT (or appRoot) at a function app directory.`);
  }

  static noEntryPoint(root: string, main: string): HostError {
    return new HostError('NoEntryPoint', `Found zero files matching package.json "main" ${main} under ${root}; build the app first (npm run build).`);
  }

  static invalidRoute(fn: string, route: string, why: string): HostError {
    return new HostError('InvalidRoute', `Function '${fn}' has an invalid route template "${route}": ${why}.`);
  }

  static invalidSchedule(fn: string, schedule: string, why: string): HostError {
    return new HostError(
      'InvalidSchedule',
      `Function '${fn}' has an invalid schedule "${schedule}": ${why}. Use six NCRONTAB fields "{second} {minute} {hour} {day} {month} {day-of-week}" or a TimeSpan "hh:mm:ss".`,
    );
  }

  static missingSetting(fn: string, name: string): HostError {
    return new HostError('MissingSetting', `Function '${fn}' needs the app setting ${name} (a Service Bus connection string); set it in local.settings.json Values or the environment.`);
  }

  static unsupportedTrigger(fn: string, type: string): HostError {
    return new HostError('UnsupportedTrigger', `Function '${fn}' uses trigger type '${type}', which the local host does not serve; it supports httpTrigger, timerTrigger and serviceBusTrigger.`);
  }

  static notFound(method: string, path: string): HostError {
    return new HostError('NotFound', `No function serves ${method} ${path}. Check the route and the /api prefix.`, 404);
  }

  static methodNotAllowed(method: string, path: string, allowed: string[]): HostError {
    return new HostError('MethodNotAllowed', `${path} does not accept ${method}; allowed: ${allowed.join(', ')}.`, 405);
  }

  static unauthorized(admin: boolean): HostError {
    return new HostError(
      'Unauthorized',
      admin
        ? 'This function requires the admin (master) key: send it in the x-functions-key header or the code query parameter.'
        : 'This function requires a function key: send it in the x-functions-key header or the code query parameter.',
      401,
    );
  }

  static payloadTooLarge(limit: number): HostError {
    return new HostError('PayloadTooLarge', `The request body exceeds the limit of ${limit} bytes; send less (large payloads belong in blob storage).`, 413);
  }

  static internal(invocationId: string): HostError {
    return new HostError('InternalServerError', `The function failed (invocation ${invocationId}); the host log has the details.`, 500);
  }

  static stopping(): HostError {
    return new HostError('ServiceUnavailable', 'The functions host is shutting down; retry against a running host.', 503);
  }
}
