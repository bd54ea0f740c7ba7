/**
 * Identifiers and sizes shared by the HTTP API, the wire format and storage names.
 *
 * Ids are lowercase so they are valid, unescaped, in blob names, table keys, Service Bus
 * session ids and URLs alike; 63 characters keeps `<vmId>/<diskId>` (127) within Service
 * Bus's 128-character session id limit.
 */
import { z } from 'zod';

export const ID_PATTERN = /^[a-z0-9][a-z0-9-]{0,62}$/;
export const ID_MAX_LENGTH = 63;

export const SECTOR_SIZE = 512;
/** 32 TiB: the largest disk Ferry replicates (Azure managed disks go to 32 TiB). */
export const MAX_DISK_SIZE_BYTES = 32 * 1024 ** 4;

const idSchema = (what: string) =>
  z
    .string()
    .regex(ID_PATTERN, `${what} must be 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit`);

export const vmIdSchema = idSchema('vmId');
export const diskIdSchema = idSchema('diskId');

export const diskSizeBytesSchema = z
  .number()
  .int()
  .positive()
  .max(MAX_DISK_SIZE_BYTES, `sizeBytes must be at most 32 TiB (${MAX_DISK_SIZE_BYTES} bytes)`)
  .refine((n) => n % SECTOR_SIZE === 0, { message: 'sizeBytes must be a multiple of 512' });

/** One disk as registered by enable-replication. */
export const diskSpecSchema = z.strictObject({
  diskId: diskIdSchema,
  sizeBytes: diskSizeBytesSchema,
});
export type DiskSpec = z.infer<typeof diskSpecSchema>;

export function isValidId(value: unknown): value is string {
  return typeof value === 'string' && ID_PATTERN.test(value);
}

export function isValidDiskSize(value: unknown): value is number {
  return (
    typeof value === 'number' &&
    Number.isSafeInteger(value) &&
    value > 0 &&
    value <= MAX_DISK_SIZE_BYTES &&
    value % SECTOR_SIZE === 0
  );
}
