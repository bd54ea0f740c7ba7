/**
 * The HTTP edge shared by the HTTP functions: read and parse JSON bodies with a size limit,
 * and turn errors into `{code, message}` responses. Unexpected errors are logged with their
 * invocation id and answered with a generic 500 that reveals nothing.
 */
import type { HttpRequest, HttpResponseInit, InvocationContext } from '@azure/functions';
import { ApiError, apiErrors, isApiError } from '../../shared/services/api-error';

export const MAX_JSON_BODY_BYTES = 64 * 1024;

export async function readJson(request: HttpRequest, { optional = false, limit = MAX_JSON_BODY_BYTES } = {}): Promise<unknown> {
  const declared = Number(request.headers.get('content-length') ?? '0');
  if (declared > limit) throw apiErrors.tooLarge(limit);
  const text = await request.text();
  if (Buffer.byteLength(text) > limit) throw apiErrors.tooLarge(limit);
  if (text.trim() === '') {
    if (optional) return undefined;
    throw apiErrors.invalidJson('the body is empty');
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw apiErrors.invalidJson(err instanceof Error ? err.message : 'parse error');
  }
}

export function json(status: number, body: unknown): HttpResponseInit {
  return { status, jsonBody: body, headers: { 'cache-control': 'no-store' } };
}

export function errorResponse(err: unknown, context: InvocationContext): HttpResponseInit {
  if (isApiError(err)) {
    if (err.status >= 500) context.warn(`${err.code}: ${err.message}`);
    return json(err.status, err.toJSON());
  }
  if (err instanceof Error && err.name === 'ConfigurationError') {
    // A missing or malformed app setting: say which (the message names the setting, never its value).
    context.error(err.message);
    return json(500, { code: 'CONFIGURATION_ERROR', message: err.message });
  }
  context.error(`Unexpected error: ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`);
  const internal = new ApiError('INTERNAL', `An unexpected error occurred (invocation ${context.invocationId}); it has been logged. Retry, and report it if it persists.`);
  return json(500, internal.toJSON());
}

type Handler = (request: HttpRequest, context: InvocationContext) => Promise<HttpResponseInit>;

/** Wraps a handler so every error becomes a `{code, message}` response. */
export function handled(fn: Handler): Handler {
  return async (request, context) => {
    try {
      return await fn(request, context);
    } catch (err) {
      return errorResponse(err, context);
    }
  };
}
