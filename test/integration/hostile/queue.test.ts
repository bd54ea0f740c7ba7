/**
 * Hostile queue messages through the real local stack (issue 6): Azurite, the Service Bus
 * emulator and the functions host with apply-batches. Two VMs are enabled over HTTP and given
 * content by valid batches; then every field of the wire format is corrupted one at a time
 * (sealed header, envelope JSON, staged blob reference), batches are truncated, replaced by
 * random bytes, replayed onto another disk, VM or position, sealed with the other VM's key,
 * sent in another disk's session, made oversize, or pointed at a missing or foreign staging
 * blob. Each is sent as the appliance sends (queue `replication-batches`, the disk's session)
 * and must be dead-lettered with its specific reason and a description naming the fault, be
 * counted in its VM's health, and leave every disk byte-identical; a following valid batch
 * still applies.
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { ServiceBusClient, type ServiceBusReceivedMessage, type ServiceBusSender } from '@azure/service-bus';
import { BlobServiceClient, type ContainerClient } from '@azure/storage-blob';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobDiskStore } from '../../../shared/azure/blob-disk-store';
import { sealBatch } from '../../../shared/codec/batch';
import { envelopeFor } from '../../../shared/codec/envelope';
import { BATCH_CONTENT_TYPE, batchSessionId } from '../../../shared/domain/envelope';
import type { Batch, BatchRecord } from '../../../shared/domain/wire-format';
import { apiClient, enableVm } from '../../support/api';
import { applyToModel } from '../../support/batches';
import { HEADER_FIELDS } from '../../support/hostile-batches';
import { startTestStack, type TestStack } from '../../support/stack';
import { waitFor } from '../../support/wait';

const MiB = 1024 * 1024;
const SIZE = MiB;
const VMS: Record<string, string[]> = { 'vm-a': ['disk0', 'disk1'], 'vm-b': ['disk0'] };
const ALL_DISKS = Object.entries(VMS).flatMap(([vmId, disks]) => disks.map((diskId) => ({ vmId, diskId })));
const at = (name: string): number => HEADER_FIELDS.find((f) => f.name === name)!.offset;
/** A body to send as a binary batch message (docs/wire-format.md, "Binary batch messages"). */
class BinaryBody {
  constructor(readonly bytes: Buffer) {}
}

interface Case {
  name: string;
  reason: string;
  /** What the DeadLetterErrorDescription must say. */
  says: RegExp;
  /** The VM whose health counts it; null when the message names no known VM. */
  countedOn: string | null;
  body: unknown;
  sessionId: string;
}

describe('hostile messages on replication-batches (local stack)', () => {
  let stack: TestStack;
  let sb: ServiceBusClient;
  let sender: ServiceBusSender;
  let staging: ContainerClient;
  let disks: BlobDiskStore;
  const keys: Record<string, Buffer> = {};
  const models: Record<string, Buffer> = {};
  const next: Record<string, number> = {};
  const api = (method: string, path: string, body?: unknown) => apiClient(stack)(method, path, body);
  const vm = async (vmId: string) => (await api('GET', `/vms/${vmId}`)).body;

  function batch(vmId: string, diskId: string, records: BatchRecord[], extra: Partial<Batch> = {}): Batch {
    return { vmId, diskId, epoch: 1, sequence: next[`${vmId}/${diskId}`]!, capturedAt: Date.now() - 1000, diskSizeBytes: SIZE, records, ...extra };
  }

  async function send(body: unknown, sessionId: string, messageId: string = randomUUID()): Promise<string> {
    if (body instanceof BinaryBody) {
      // as the appliance sends a binary batch message: the sealed bytes in an amqp-value section
      await sender.sendMessages({ body: body.bytes, bodyType: 'value', properties: { messageId, groupId: sessionId, contentType: BATCH_CONTENT_TYPE } });
      return messageId;
    }
    await sender.sendMessages({ body, contentType: 'application/json', sessionId, messageId });
    return messageId;
  }

  /** Seals and sends a good batch (staged when large), then waits until the cloud reports it applied. */
  async function sendGood(vmId: string, diskId: string, records: BatchRecord[], extra: Partial<Batch> = {}, binary = false): Promise<void> {
    const b = batch(vmId, diskId, records, extra);
    const out = envelopeFor(sealBatch(b, keys[vmId]!, 1, randomBytes), binary ? { maxMessageBytes: 256 * 1024 } : { inlineMaxBytes: 32 * 1024 });
    if (out.staged) await staging.getBlockBlobClient(out.staged.name).uploadData(out.staged.body);
    await send(Buffer.isBuffer(out.envelope) ? new BinaryBody(out.envelope) : out.envelope, out.sessionId, out.messageId);
    applyToModel(models[`${vmId}/${diskId}`]!, records);
    next[`${vmId}/${diskId}`]!++;
    await waitFor(async () => (await vm(vmId)).disks.find((d: { diskId: string }) => d.diskId === diskId).appliedSequence >= b.sequence, `${vmId}/${diskId} seq ${b.sequence} applied`, { timeoutMs: 30_000 });
  }

  async function readDisk(vmId: string, diskId: string): Promise<Buffer> {
    return disks.read({ vmId, diskId }, SIZE, 0, SIZE);
  }

  /** All of the dead-letter queue. A client of its own: the SDK keeps one peek cursor per entity and client. */
  async function deadLetters(): Promise<ServiceBusReceivedMessage[]> {
    const client = new ServiceBusClient(stack.serviceBusConnectionString);
    try {
      return await client.createReceiver('replication-batches', { subQueueType: 'deadLetter' }).peekMessages(200);
    } finally {
      await client.close();
    }
  }

  beforeAll(async () => {
    stack = await startTestStack();
    sb = new ServiceBusClient(stack.serviceBusConnectionString);
    sender = sb.createSender('replication-batches');
    const blobs = BlobServiceClient.fromConnectionString(stack.storageConnectionString);
    staging = blobs.getContainerClient('staging');
    await staging.createIfNotExists();
    disks = new BlobDiskStore(blobs.getContainerClient('disks'));
    for (const [vmId, ids] of Object.entries(VMS)) {
      keys[vmId] = await enableVm(stack, vmId, ids.map((diskId) => ({ diskId, sizeBytes: SIZE })));
      for (const diskId of ids) {
        models[`${vmId}/${diskId}`] = Buffer.alloc(SIZE);
        next[`${vmId}/${diskId}`] = 1;
      }
    }
    // content: an initial copy (staged: incompressible 512 KiB), then a small delta, per disk
    for (const { vmId, diskId } of ALL_DISKS) {
      await sendGood(vmId, diskId, [{ kind: 'data', offset: 0, data: randomBytes(SIZE / 2) }, { kind: 'zero', offset: SIZE / 2, length: SIZE / 2 }], { initialReplicationComplete: true });
      await sendGood(vmId, diskId, [{ kind: 'data', offset: 8192, data: randomBytes(4096) }]);
    }
    for (const vmId of Object.keys(VMS)) await waitFor(async () => (await vm(vmId)).state === 'protected', `${vmId} protected`);
  }, 180_000);

  afterAll(async () => {
    await sender?.close();
    await sb?.close();
    if (stack && process.env.FERRY_TEST_VERBOSE) console.log(stack.logs.slice(-120).join('\n'));
    await stack?.stop();
  });

  it('dead-letters every hostile message with its specific reason, counts it on its VM, touches no disk, and a valid batch still applies', async () => {
    const before: Record<string, Buffer> = {};
    for (const { vmId, diskId } of ALL_DISKS) {
      before[`${vmId}/${diskId}`] = await readDisk(vmId, diskId);
      expect(before[`${vmId}/${diskId}`]!.equals(models[`${vmId}/${diskId}`]!), `${vmId}/${diskId} before`).toBe(true);
    }
    const appliedBefore = Object.fromEntries(await Promise.all(Object.keys(VMS).map(async (v) => [v, (await vm(v)).disks.map((d: { appliedSequence: number }) => d.appliedSequence)])));

    const A = 'vm-a';
    const sessionA0 = batchSessionId(A, 'disk0');
    const records: BatchRecord[] = [{ kind: 'data', offset: 0, data: Buffer.alloc(4096, 0xee) }];
    /** The next batch of vm-a/disk0, sealed with its key: the starting point of most cases. */
    const sealedNext = (extra: Partial<Batch> = {}, key = keys[A]!): Buffer => sealBatch(batch(A, 'disk0', records, extra), key, 1, randomBytes);
    const inlineEnv = (sealed: Buffer): Record<string, unknown> => JSON.parse(JSON.stringify(envelopeFor(sealed).envelope)) as Record<string, unknown>;
    /** The envelope of a valid batch, carrying `bytes` instead. */
    const carrying = (bytes: Buffer): Record<string, unknown> => ({ ...inlineEnv(sealedNext()), payload: { inline: bytes.toString('base64') } });
    const withField = (name: string, write: (b: Buffer, offset: number) => void): Record<string, unknown> => {
      const bytes = Buffer.from(sealedNext());
      write(bytes, at(name));
      return carrying(bytes);
    };
    const refused = (code: string, field: string): RegExp => new RegExp(`VM 'vm-a' disk 'disk0' epoch 1 sequence 3 was refused \\(${code} in ${field.replace(/[[\].]/g, '\\$&')}\\)`);
    /** A staged batch of vm-a/disk0: its envelope and blob, the blob not uploaded yet. */
    const staged = (extra: Partial<Batch> = {}) => {
      const out = envelopeFor(sealBatch(batch(A, 'disk0', [{ kind: 'data', offset: 0, data: randomBytes(64 * 1024) }], extra), keys[A]!, 1, randomBytes), { inlineMaxBytes: 1024 });
      return { env: JSON.parse(JSON.stringify(out.envelope)) as { payload: { blob: Record<string, unknown> } } & Record<string, unknown>, blob: out.staged! };
    };
    const upload = (name: string, body: Buffer) => staging.getBlockBlobClient(name).uploadData(body);
    const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

    const cases: Case[] = [];
    const add = (name: string, reason: string, says: RegExp, body: unknown, countedOn: string | null = A, sessionId = sessionA0): void => {
      cases.push({ name, reason, says, body, countedOn, sessionId });
    };

    // -- every field of the sealed header, one at a time (a value its rule refuses, or a valid
    //    value that GCM or the expectations refuse)
    add('magic', 'InvalidBatch', refused('BAD_MAGIC', 'magic'), withField('magic', (b, o) => b.write('XRYB', o, 'ascii')));
    add('formatVersion', 'InvalidBatch', refused('UNSUPPORTED_VERSION', 'formatVersion'), withField('formatVersion', (b, o) => (b[o] = 2)));
    add('codec', 'InvalidBatch', refused('BAD_FIELD', 'codec'), withField('codec', (b, o) => (b[o] = 9)));
    add('consistency', 'InvalidBatch', refused('BAD_FIELD', 'consistency'), withField('consistency', (b, o) => (b[o] = 7)));
    add('flags', 'InvalidBatch', refused('BAD_FIELD', 'flags'), withField('flags', (b, o) => (b[o] = 0x80)));
    add('keyId 0', 'InvalidBatch', refused('BAD_FIELD', 'keyId'), withField('keyId', (b, o) => b.writeUInt32LE(0, o)));
    add('keyId of another key', 'BatchMismatch', /names key 1 but the sealed batch key 2/, withField('keyId', (b, o) => b.writeUInt32LE(2, o)));
    add('epoch', 'BatchMismatch', refused('UNEXPECTED_BATCH', 'epoch'), withField('epoch', (b, o) => b.writeUInt32LE(2, o)));
    add('sequence', 'BatchMismatch', refused('UNEXPECTED_BATCH', 'sequence'), withField('sequence', (b, o) => b.writeBigUInt64LE(4n, o)));
    add('sequence above 2^53', 'InvalidBatch', refused('BAD_FIELD', 'sequence'), withField('sequence', (b, o) => b.writeBigUInt64LE(1n << 60n, o)));
    add('capturedAt', 'AuthenticationFailed', refused('AUTH_FAILED', 'ciphertext'), withField('capturedAt', (b, o) => b.writeBigUInt64LE(BigInt(Date.now()), o)));
    add('capturedAt 0', 'InvalidBatch', refused('BAD_FIELD', 'capturedAt'), withField('capturedAt', (b, o) => b.writeBigUInt64LE(0n, o)));
    add('diskSizeBytes', 'AuthenticationFailed', refused('AUTH_FAILED', 'ciphertext'), withField('diskSizeBytes', (b, o) => b.writeBigUInt64LE(BigInt(2 * SIZE), o)));
    add('diskSizeBytes unaligned', 'InvalidBatch', refused('BAD_FIELD', 'diskSizeBytes'), withField('diskSizeBytes', (b, o) => b.writeBigUInt64LE(BigInt(SIZE + 1), o)));
    add('initialCoveredBytes', 'InvalidBatch', refused('BAD_FIELD', 'initialCoveredBytes'), withField('initialCoveredBytes', (b, o) => b.writeBigUInt64LE(513n, o)));
    add('tagId without a tag', 'InvalidBatch', refused('BAD_FIELD', 'tagId'), withField('tagId', (b, o) => b.writeBigUInt64LE(5n, o)));
    add('recordCount', 'InvalidBatch', refused('SIZE_LIMIT', 'recordCount'), withField('recordCount', (b, o) => b.writeUInt32LE(0x7fff_ffff, o)));
    add('recordStreamBytes', 'InvalidBatch', refused('SIZE_LIMIT', 'recordStreamBytes'), withField('recordStreamBytes', (b, o) => b.writeUInt32LE(0xffff_ffff, o)));
    add('payloadBytes', 'InvalidBatch', refused('TRUNCATED', 'ciphertext'), withField('payloadBytes', (b, o) => b.writeUInt32LE(b.readUInt32LE(o) + 1, o)));
    add('vmIdLength', 'InvalidBatch', refused('BAD_FIELD', 'vmIdLength'), withField('vmIdLength', (b, o) => (b[o] = 0)));
    add('vmId', 'BatchMismatch', refused('UNEXPECTED_BATCH', 'vmId'), withField('vmId', (b, o) => b.write('vm-b', o, 'ascii')));
    add('vmId not an id', 'InvalidBatch', refused('BAD_FIELD', 'vmId'), withField('vmId', (b, o) => b.write('VM-A', o, 'ascii')));
    add('diskIdLength', 'InvalidBatch', refused('BAD_FIELD', 'diskIdLength'), withField('diskIdLength', (b, o) => (b[o] = 64)));
    add('diskId', 'BatchMismatch', refused('UNEXPECTED_BATCH', 'diskId'), withField('diskId', (b, o) => b.write('disk1', o, 'ascii')));
    add('nonce', 'AuthenticationFailed', refused('AUTH_FAILED', 'ciphertext'), withField('nonce', (b, o) => (b[o] = b[o]! ^ 1)));
    add('ciphertext', 'AuthenticationFailed', refused('AUTH_FAILED', 'ciphertext'), withField('nonce', (b) => (b[240] = b[240]! ^ 0x10)));
    add('GCM tag', 'AuthenticationFailed', refused('AUTH_FAILED', 'ciphertext'), withField('nonce', (b) => (b[b.length - 1] = b[b.length - 1]! ^ 0x80)));
    // -- truncations, trailing bytes, random bytes
    const full = sealedNext();
    add('truncated to 100 bytes', 'InvalidBatch', refused('TRUNCATED', 'header'), carrying(full.subarray(0, 100)));
    add('truncated by one byte', 'InvalidBatch', refused('TRUNCATED', 'ciphertext'), carrying(full.subarray(0, full.length - 1)));
    add('a trailing byte', 'InvalidBatch', refused('TRAILING_DATA', 'bytes'), carrying(Buffer.concat([full, Buffer.from([0])])));
    add('random bytes as the batch', 'InvalidBatch', refused('BAD_MAGIC', 'magic'), carrying(Buffer.concat([Buffer.from([0]), randomBytes(300)])));
    add('random bytes as the body', 'InvalidEnvelope', /not a Ferry batch envelope v1: The message body is not JSON/, Buffer.concat([Buffer.from('\x00'), randomBytes(200)]), null);
    // -- every field of the envelope
    const env = inlineEnv(sealedNext());
    add('envelope v', 'InvalidEnvelope', /batch envelope v1: v: /, { ...env, v: 2 });
    add('envelope vmId not an id', 'InvalidEnvelope', /batch envelope v1: vmId: /, { ...env, vmId: 'VM-A' }, null);
    add('envelope vmId of the other VM (replay onto another VM)', 'BatchMismatch', /VM 'vm-b' disk 'disk0' epoch 1 sequence 3 was refused \(UNEXPECTED_BATCH in vmId\)/, { ...env, vmId: 'vm-b' }, 'vm-b', batchSessionId('vm-b', 'disk0'));
    add('envelope vmId unknown', 'UnknownVm', /VM 'ghost' .*no such VM is replicating/, { ...env, vmId: 'ghost' }, null, batchSessionId('ghost', 'disk0'));
    add('envelope diskId of the other disk (replay onto another disk)', 'BatchMismatch', /VM 'vm-a' disk 'disk1' epoch 1 sequence 3 was refused \(UNEXPECTED_BATCH in diskId\)/, { ...env, diskId: 'disk1' }, A, batchSessionId(A, 'disk1'));
    add('envelope diskId unknown', 'UnknownDisk', /the VM has no disk 'disk7' \(it has disk0, disk1\)/, { ...env, diskId: 'disk7' }, A, batchSessionId(A, 'disk7'));
    add('envelope epoch', 'BatchMismatch', /epoch 2 sequence 3 was refused \(UNEXPECTED_BATCH in epoch\)/, { ...env, epoch: 2 });
    add('envelope seq beyond the next (forged position: no resync)', 'BatchMismatch', /sequence 9 was refused \(UNEXPECTED_BATCH in sequence\)/, { ...env, seq: 9 });
    add('envelope keyId', 'UnknownKey', /VM 'vm-a' has no data key 9/, { ...env, keyId: 9 });
    add('envelope capturedAt', 'BatchMismatch', /capturedAt \d+ differs from the sealed one/, { ...env, capturedAt: (env.capturedAt as number) + 1 });
    add('envelope unknown field', 'InvalidEnvelope', /batch envelope v1: admin: Unrecognized key/, { ...env, admin: true });
    add('envelope payload not base64', 'InvalidEnvelope', /batch envelope v1: payload\.inline: /, { ...env, payload: { inline: '*not base64*' } });
    add('envelope payload missing', 'InvalidEnvelope', /payload must hold "inline" .* or "blob"/, { ...env, payload: {} });
    add('oversize inline payload', 'InvalidEnvelope', /payload\.inline: /, { ...env, payload: { inline: randomBytes(100 * 1024).toString('base64') } });
    // -- the batch sealed with the other VM's key; a valid batch in another disk's session
    add("sealed with the other VM's key", 'AuthenticationFailed', /refused \(AUTH_FAILED in ciphertext\): it was not sealed with key 1 of VM 'vm-a'/, inlineEnv(sealedNext({}, keys['vm-b'])));
    add("a valid batch in another disk's session", 'WrongSession', /arrived in session 'vm-a\/disk1'; a disk's batches must be sent in session 'vm-a\/disk0'/, inlineEnv(sealedNext()), A, batchSessionId(A, 'disk1'));
    // -- binary batch messages (the sealed batch is the body): the same checks, from the header
    {
      const bytes = Buffer.from(sealedNext());
      bytes.writeBigUInt64LE(BigInt(Date.now()), at('capturedAt'));
      add('binary: capturedAt changed', 'AuthenticationFailed', refused('AUTH_FAILED', 'ciphertext'), new BinaryBody(bytes));
      const version = Buffer.from(sealedNext());
      version[at('formatVersion')] = 2;
      add('binary: a header that does not parse', 'InvalidEnvelope', /binary batch message's header is invalid: Batch format version 2/, new BinaryBody(version));
      const whole = sealedNext();
      add('binary: truncated by one byte', 'InvalidEnvelope', /binary batch message's header is invalid: The batch is \d+ bytes; ciphertext needs at least \d+/, new BinaryBody(whole.subarray(0, whole.length - 1)));
      add("binary: sealed with the other VM's key", 'AuthenticationFailed', /refused \(AUTH_FAILED in ciphertext\): it was not sealed with key 1 of VM 'vm-a'/, new BinaryBody(sealedNext({}, keys['vm-b'])));
      add("binary: in another disk's session", 'WrongSession', /arrived in session 'vm-a\/disk1'/, new BinaryBody(sealedNext()), A, batchSessionId(A, 'disk1'));
    }
    // -- the staged blob reference, one field at a time, and the blob itself
    {
      const s = staged();
      await upload(s.blob.name, s.blob.body);
      const ref = s.env.payload.blob;
      add('blob container', 'InvalidEnvelope', /payload\.blob\.container: /, { ...s.env, payload: { blob: { ...ref, container: 'disks' } } });
      add('blob name of another VM', 'InvalidEnvelope', /payload\.blob\.name: must start with vm-a\/disk0\//, { ...s.env, payload: { blob: { ...ref, name: (ref.name as string).replace('vm-a/', 'vm-b/') } } });
      add('blob sizeBytes', 'StagingBlobMismatch', /is \d+ bytes; the envelope says \d+/, { ...s.env, payload: { blob: { ...ref, sizeBytes: (ref.sizeBytes as number) + 512 } } });
      add('blob sha256', 'StagingBlobMismatch', /does not match the envelope's SHA-256/, { ...s.env, payload: { blob: { ...ref, sha256: 'f'.repeat(64) } } });
      add("blob larger than the envelope's sizeBytes", 'StagingBlobMismatch', /above the \d+ bytes expected/, { ...s.env, payload: { blob: { ...ref, sizeBytes: 256 } } });
    }
    {
      const s = staged();
      add('staging blob missing', 'StagingBlobMissing', /its payload blob staging\/vm-a\/disk0\/\S+ does not exist/, s.env);
    }
    {
      // the blob holds vm-b's authentic batch (digest and size updated to match it)
      const s = staged();
      const foreign = sealBatch(batch('vm-b', 'disk0', [{ kind: 'data', offset: 0, data: randomBytes(64 * 1024) }]), keys['vm-b']!, 1, randomBytes);
      await upload(s.blob.name, foreign);
      add("staging blob of another VM", 'BatchMismatch', refused('UNEXPECTED_BATCH', 'vmId'), { ...s.env, payload: { blob: { ...s.env.payload.blob, sizeBytes: foreign.length, sha256: sha(foreign) } } });
    }
    {
      const s = staged();
      const big = Buffer.concat([s.blob.body, randomBytes(2 * MiB)]);
      await upload(s.blob.name, big);
      add('staging blob larger than the envelope says', 'StagingBlobMismatch', /is \d+ bytes, above the \d+ bytes expected/, s.env);
    }

    // a replay of an applied batch onto its own disk is a duplicate: completed, not dead-lettered
    const dupEnv = inlineEnv(sealBatch(batch(A, 'disk0', records, { sequence: 1 }), keys[A]!, 1, randomBytes));
    const dupId = await send(dupEnv, sessionA0);
    const ids = new Map<string, Case>();
    for (const c of cases) ids.set(await send(c.body, c.sessionId), c);

    let missing: string[] = [];
    const dead = await waitFor(
      async () => {
        const all = await deadLetters();
        const seen = new Set(all.map((m) => String(m.messageId)));
        missing = [...ids].filter(([id]) => !seen.has(id)).map(([, c]) => c.name);
        return missing.length === 0 ? all : undefined;
      },
      `${ids.size} hostile messages dead-lettered`,
      { timeoutMs: 30_000, intervalMs: 250 },
    ).catch((err: unknown) => {
      throw new Error(`${err instanceof Error ? err.message : String(err)}; not dead-lettered: ${missing.join('; ')}`);
    });
    const byId = new Map(dead.map((m) => [String(m.messageId), m]));
    const problems: string[] = [];
    for (const [id, c] of ids) {
      const m = byId.get(id)!;
      if (m.deadLetterReason !== c.reason || !c.says.test(m.deadLetterErrorDescription ?? '')) {
        problems.push(`${c.name}: expected ${c.reason} ${c.says}, got ${m.deadLetterReason}: ${m.deadLetterErrorDescription}`);
      }
    }
    expect(problems).toEqual([]);
    expect(byId.has(dupId), 'the duplicate was dead-lettered').toBe(false);

    // counted in each VM's health; forged positions did not force a resync
    for (const vmId of Object.keys(VMS)) {
      const count = cases.filter((c) => c.countedOn === vmId).length;
      const v = await vm(vmId);
      expect(v.state, `${vmId}: ${JSON.stringify(v.healthReasons)}`).toBe('protected');
      expect(v.health).toBe('warning');
      const reason = v.healthReasons.find((r: { code: string }) => r.code === 'DEAD_LETTERED');
      expect(reason?.message).toMatch(new RegExp(`^${count} batch\\(es\\) of this VM were dead-lettered; the last: `));
      expect(v.healthReasons.map((r: { code: string }) => r.code)).not.toContain('SEQUENCE_GAP');
      expect(v.disks.map((d: { appliedSequence: number }) => d.appliedSequence)).toEqual(appliedBefore[vmId]);
    }
    for (const { vmId, diskId } of ALL_DISKS) {
      expect((await readDisk(vmId, diskId)).equals(before[`${vmId}/${diskId}`]!), `${vmId}/${diskId} was changed`).toBe(true);
    }

    // the pipeline is not wedged: the next valid batch of every disk applies (as a binary message)
    for (const { vmId, diskId } of ALL_DISKS) await sendGood(vmId, diskId, [{ kind: 'data', offset: 65536, data: randomBytes(2048) }], {}, true);
    for (const { vmId, diskId } of ALL_DISKS) expect((await readDisk(vmId, diskId)).equals(models[`${vmId}/${diskId}`]!), `${vmId}/${diskId} after`).toBe(true);
  });
});
