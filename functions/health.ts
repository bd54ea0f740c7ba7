/**
 * `GET /api/health`: liveness of the function app. Anonymous, as a load balancer's probe
 * would need; it reveals nothing but that the app is up.
 */
import { app, type HttpResponseInit } from '@azure/functions';

export async function health(): Promise<HttpResponseInit> {
  return { status: 200, jsonBody: { status: 'ok' } };
}

app.http('health', { methods: ['GET'], authLevel: 'anonymous', route: 'health', handler: health });
