/**
 * Data keys at rest: each VM's 256-bit data key is stored only wrapped by the master key
 * (FERRY_MASTER_KEY locally; Key Vault's role in Azure), with AES-256-GCM.
 *
 * Layout (61 bytes): version 0x01 | nonce (12) | ciphertext (32) | tag (16).
 * The associated data binds the wrapped key to its VM and key id, so a wrapped key copied onto
 * another VM's row does not unwrap.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';

const VERSION = 1;
const WRAPPED_BYTES = 1 + 12 + 32 + 16;

export class KeyWrapError extends Error {
  override readonly name = 'KeyWrapError';
}

function aad(vmId: string, keyId: number): Buffer {
  return Buffer.from(`ferry-data-key:v${VERSION}:${vmId}:${keyId}`, 'utf8');
}

function checkKey(masterKey: Uint8Array): void {
  if (masterKey.length !== 32) throw new KeyWrapError('The master key must be 32 bytes (FERRY_MASTER_KEY is base64 of 32 bytes).');
}

export function wrapDataKey(masterKey: Uint8Array, dataKey: Uint8Array, vmId: string, keyId: number, rng: (n: number) => Uint8Array = randomBytes): Buffer {
  checkKey(masterKey);
  if (dataKey.length !== 32) throw new KeyWrapError('A data key must be 32 bytes.');
  const nonce = Buffer.from(rng(12));
  const cipher = createCipheriv('aes-256-gcm', masterKey, nonce);
  cipher.setAAD(aad(vmId, keyId));
  const ct = Buffer.concat([cipher.update(dataKey), cipher.final()]);
  return Buffer.concat([Buffer.from([VERSION]), nonce, ct, cipher.getAuthTag()]);
}

export function unwrapDataKey(masterKey: Uint8Array, wrapped: Uint8Array, vmId: string, keyId: number): Buffer {
  checkKey(masterKey);
  if (wrapped.length !== WRAPPED_BYTES || wrapped[0] !== VERSION) {
    throw new KeyWrapError(`The stored key ${keyId} of VM '${vmId}' is not a version-${VERSION} wrapped key.`);
  }
  const buf = Buffer.from(wrapped);
  const decipher = createDecipheriv('aes-256-gcm', masterKey, buf.subarray(1, 13));
  decipher.setAAD(aad(vmId, keyId));
  decipher.setAuthTag(buf.subarray(45));
  try {
    return Buffer.concat([decipher.update(buf.subarray(13, 45)), decipher.final()]);
  } catch {
    throw new KeyWrapError(`The stored key ${keyId} of VM '${vmId}' does not unwrap with this master key: FERRY_MASTER_KEY differs from the one used at enable time.`);
  }
}
