/** A small client of the HTTP API for integration tests (the function key sent as Azure expects). */
import { expect } from 'vitest';

export interface ApiResponse {
  status: number;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- tests assert on shapes freely
  body: any;
}

export type Api = (method: string, path: string, body?: unknown, headers?: Record<string, string>) => Promise<ApiResponse>;

export function apiClient(target: { apiUrl: string; functionKey: string }): Api {
  return async (method, path, body, headers = { 'x-functions-key': target.functionKey }) => {
    const res = await fetch(`${target.apiUrl}${path}`, {
      method,
      headers: { ...headers, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : undefined };
  };
}

/** Enables replication of a VM (expects 201) and returns its data key. */
export async function enableVm(target: { apiUrl: string; functionKey: string }, vmId: string, disks: { diskId: string; sizeBytes: number }[]): Promise<Buffer> {
  const res = await apiClient(target)('POST', `/vms/${vmId}/enable-replication`, { disks });
  expect(res.status, JSON.stringify(res.body)).toBe(201);
  return Buffer.from(res.body.dataKey as string, 'base64');
}
