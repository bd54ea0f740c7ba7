/**
 * The appliance's state for one VM, in `<stateDir>/<vmId>/state.json` (mode 0600, replaced
 * atomically): the data key, the agent token, the disks, and per disk the epoch, the initial
 * copy's progress and the change journal's read positions. The next sequence number is not
 * here: the sink that accepted the batches (outbox) is its source of truth, so a crash between
 * handing a batch over and saving this file can neither leave a gap nor reuse a number.
 *
 * After `ferry rotate-key`, the new data key is in `<stateDir>/<vmId>/key.json` (mode 0600,
 * replaced atomically), apart from state.json: a running agent saves state.json from its own
 * copy and would otherwise write the old key back. The key with the higher key id of the two
 * files is the current one (currentKey).
 */
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { dataDir } from '../settings';
import { ApplianceError } from './errors';
import { writeFileAtomic } from './files';

const diskStateSchema = z.strictObject({
  diskId: z.string(),
  path: z.string(),
  sizeBytes: z.number().int().positive(),
  epoch: z.number().int().positive(),
  /** Bytes [0, initialCoveredBytes) of the initial copy are handed over (durably accepted). */
  initialCoveredBytes: z.number().int().nonnegative(),
  initialComplete: z.boolean(),
  /** Change-journal segment file name -> bytes consumed. */
  journal: z.record(z.string(), z.number().int().nonnegative()),
});

const vmStateSchema = z.strictObject({
  version: z.literal(1),
  vmId: z.string(),
  apiUrl: z.string(),
  keyId: z.number().int().positive(),
  /** base64 of the 32-byte data key returned by enable-replication. */
  dataKey: z.string(),
  /** base64url of 32 random bytes; the agent presents it to a process server. */
  agentToken: z.string(),
  enabledAt: z.string(),
  nextTagId: z.number().int().positive(),
  disks: z.array(diskStateSchema),
});

/** `<vm>/key.json`: the newest data key from `ferry rotate-key`. */
const keyFileSchema = z.strictObject({
  version: z.literal(1),
  vmId: z.string(),
  keyId: z.number().int().positive(),
  /** base64 of the 32-byte data key returned by rotate-key. */
  dataKey: z.string(),
  rotatedAt: z.string(),
});

export type DiskState = z.infer<typeof diskStateSchema>;
export type KeyFile = z.infer<typeof keyFileSchema>;
export type VmState = z.infer<typeof vmStateSchema>;

export function defaultStateDir(): string {
  return join(dataDir(), 'appliance');
}

export function vmDir(stateDir: string, vmId: string): string {
  return join(stateDir, vmId);
}

function stateFile(stateDir: string, vmId: string): string {
  return join(vmDir(stateDir, vmId), 'state.json');
}

export function hasVmState(stateDir: string, vmId: string): boolean {
  return existsSync(stateFile(stateDir, vmId));
}

export function loadVmState(stateDir: string, vmId: string): VmState {
  const file = stateFile(stateDir, vmId);
  if (!existsSync(file)) {
    throw new ApplianceError('NOT_ENABLED', `VM '${vmId}' is not enabled on this appliance (no ${file}); run \`ferry enable --vm ${vmId} --disk PATH\` first.`);
  }
  const parsed = vmStateSchema.safeParse(JSON.parse(readFileSync(file, 'utf8')));
  if (!parsed.success) throw new ApplianceError('BAD_STATE', `${file} is damaged: ${parsed.error.issues[0]?.message ?? 'invalid'}; disable and enable the VM again.`);
  return parsed.data;
}

export function saveVmState(stateDir: string, state: VmState): void {
  writeFileAtomic(stateFile(stateDir, state.vmId), JSON.stringify(state, null, 2) + '\n', 0o600);
}

export function listVmStates(stateDir: string): string[] {
  if (!existsSync(stateDir)) return [];
  return readdirSync(stateDir).filter((name) => existsSync(stateFile(stateDir, name))).sort();
}

export function dataKeyOf(state: VmState): Buffer {
  return Buffer.from(state.dataKey, 'base64');
}

export function keyFilePath(stateDir: string, vmId: string): string {
  return join(vmDir(stateDir, vmId), 'key.json');
}

/** Writes the key from rotate-key (mode 0600, atomic replace). */
export function saveRotatedKey(stateDir: string, key: KeyFile): void {
  writeFileAtomic(keyFilePath(stateDir, key.vmId), JSON.stringify(key, null, 2) + '\n', 0o600);
}

/** The rotated key, if any. */
export function loadRotatedKey(stateDir: string, vmId: string): KeyFile | undefined {
  const file = keyFilePath(stateDir, vmId);
  if (!existsSync(file)) return undefined;
  const parsed = keyFileSchema.safeParse(JSON.parse(readFileSync(file, 'utf8')));
  if (!parsed.success || parsed.data.vmId !== vmId) throw new ApplianceError('BAD_STATE', `${file} is damaged; run \`ferry rotate-key --vm ${vmId}\` to get a new key.`);
  return parsed.data;
}

/** The VM's current data key: key.json's when it is newer than the one enable stored. */
export function currentKey(stateDir: string, state: VmState): { keyId: number; key: Buffer } {
  const rotated = loadRotatedKey(stateDir, state.vmId);
  if (rotated && rotated.keyId > state.keyId) return { keyId: rotated.keyId, key: Buffer.from(rotated.dataKey, 'base64') };
  return { keyId: state.keyId, key: dataKeyOf(state) };
}

/** Identifies the key file's current version cheaply (changes whenever it is replaced). */
export function keyFileStamp(stateDir: string, vmId: string): string {
  try {
    const st = statSync(keyFilePath(stateDir, vmId));
    return `${st.ino}:${st.mtimeMs}:${st.size}`;
  } catch {
    return 'none';
  }
}
