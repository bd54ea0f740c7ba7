/**
 * In-memory implementations of the ports, with the same contracts as the Azure ones (ETags,
 * atomic create, idempotent deletes). For unit tests of the use cases and for the memory side
 * of the port conformance suites; never used in production.
 */
import { DiskStoreError, type ApplyStats, type DiskRef, type DiskStore } from '../ports/disk-store';
import type { CapturedExtent, CaptureStats, CaptureStore } from '../ports/capture-store';
import { MAX_RETIREMENTS_PER_ROTATION, StateStoreError, type DiskRecord, type KeyRetirement, type OperationRecord, type StateStore, type VmRecord, type VmWithDisks, type WrappedKeyRecord } from '../ports/state-store';
import type { VhdContainer, VhdStore, VhdTarget } from '../ports/vhd-store';
import { MAX_PAGE_WRITE_BYTES } from '../ports/vhd-store';
import type { CaptureRecord } from '../domain/recovery-points';
import { contentBlockId, extentCount, extentRange, zeroBlockId } from '../domain/extents';
import { StagingTooLargeError, type StagedBlobInfo, type StagingStore } from '../ports/staging-store';
import type { BatchRecord } from '../domain/wire-format';

const clone = <T>(v: T): T => structuredClone(v);

export class MemoryStateStore implements StateStore {
  private readonly vms = new Map<string, VmRecord>();
  private readonly disks = new Map<string, Map<string, DiskRecord>>();
  private readonly keys = new Map<string, WrappedKeyRecord>();
  private readonly captures = new Map<string, CaptureRecord>();
  private readonly operations = new Map<string, OperationRecord>();
  private etags = 0;
  private nextEtag(): string {
    return `W/"${++this.etags}"`;
  }

  async createVm(vm: VmRecord, disks: DiskRecord[], key: WrappedKeyRecord): Promise<void> {
    if (this.vms.has(vm.vmId)) throw new StateStoreError('ALREADY_EXISTS', `VM '${vm.vmId}': already exists.`);
    this.vms.set(vm.vmId, { ...clone(vm), etag: this.nextEtag() });
    this.disks.set(vm.vmId, new Map(disks.map((d) => [d.diskId, { ...clone(d), etag: this.nextEtag() }])));
    this.keys.set(`${key.vmId}:${key.keyId}`, clone(key));
  }
  async getVm(vmId: string): Promise<VmWithDisks | undefined> {
    const vm = this.vms.get(vmId);
    if (!vm) return undefined;
    return { vm: clone(vm), disks: [...(this.disks.get(vmId)?.values() ?? [])].map(clone) };
  }
  async listVms(): Promise<VmWithDisks[]> {
    const out: VmWithDisks[] = [];
    for (const id of [...this.vms.keys()].sort()) out.push((await this.getVm(id))!);
    return out;
  }
  async getDisk(vmId: string, diskId: string): Promise<DiskRecord | undefined> {
    const d = this.disks.get(vmId)?.get(diskId);
    return d ? clone(d) : undefined;
  }
  async getKey(vmId: string, keyId: number): Promise<WrappedKeyRecord | undefined> {
    const k = this.keys.get(`${vmId}:${keyId}`);
    return k ? clone(k) : undefined;
  }
  async listKeys(vmId: string): Promise<WrappedKeyRecord[]> {
    return [...this.keys.values()].filter((k) => k.vmId === vmId).sort((a, b) => a.keyId - b.keyId).map(clone);
  }
  async rotateKey(vm: VmRecord, key: WrappedKeyRecord, retire: readonly KeyRetirement[]): Promise<string> {
    // every check before any write, and no await in between: all or nothing, as one transaction
    if (retire.length > MAX_RETIREMENTS_PER_ROTATION) throw new Error(`At most ${MAX_RETIREMENTS_PER_ROTATION} keys can be retired in one rotation.`);
    const cur = this.vms.get(vm.vmId);
    if (!cur) throw new StateStoreError('NOT_FOUND', `VM '${vm.vmId}': not found.`);
    if (vm.etag !== undefined && cur.etag !== vm.etag) throw new StateStoreError('CONFLICT', `VM '${vm.vmId}': changed meanwhile.`);
    if (this.keys.has(`${key.vmId}:${key.keyId}`)) throw new StateStoreError('ALREADY_EXISTS', `key ${key.keyId} of VM '${key.vmId}': already exists.`);
    for (const r of retire) if (!this.keys.has(`${vm.vmId}:${r.keyId}`)) throw new StateStoreError('NOT_FOUND', `key ${r.keyId} of VM '${vm.vmId}': not found.`);
    const etag = this.nextEtag();
    this.vms.set(vm.vmId, { ...clone(vm), etag });
    this.keys.set(`${key.vmId}:${key.keyId}`, clone(key));
    for (const r of retire) this.keys.get(`${vm.vmId}:${r.keyId}`)!.retiresAt = r.retiresAt;
    return etag;
  }
  async putVm(vm: VmRecord): Promise<string> {
    const cur = this.vms.get(vm.vmId);
    if (vm.etag !== undefined && cur?.etag !== vm.etag) throw new StateStoreError(cur ? 'CONFLICT' : 'NOT_FOUND', `VM '${vm.vmId}': changed meanwhile.`);
    const etag = this.nextEtag();
    this.vms.set(vm.vmId, { ...clone(vm), etag });
    return etag;
  }
  async putDisk(disk: DiskRecord): Promise<string> {
    const rows = this.disks.get(disk.vmId) ?? new Map<string, DiskRecord>();
    const cur = rows.get(disk.diskId);
    if (disk.etag !== undefined && cur?.etag !== disk.etag) throw new StateStoreError(cur ? 'CONFLICT' : 'NOT_FOUND', `disk '${disk.vmId}/${disk.diskId}': changed meanwhile.`);
    const etag = this.nextEtag();
    rows.set(disk.diskId, { ...clone(disk), etag });
    this.disks.set(disk.vmId, rows);
    return etag;
  }
  async deleteVm(vmId: string): Promise<void> {
    this.vms.delete(vmId);
    this.disks.delete(vmId);
    for (const k of [...this.keys.keys()]) if (k.startsWith(`${vmId}:`)) this.keys.delete(k);
    for (const k of [...this.captures.keys()]) if (k.startsWith(`${vmId}:`)) this.captures.delete(k);
    for (const k of [...this.operations.keys()]) if (k.startsWith(`${vmId}:`)) this.operations.delete(k);
  }
  async putCapture(c: CaptureRecord): Promise<void> {
    this.captures.set(`${c.vmId}:${c.tagId}:${c.diskId}`, clone(c));
  }
  async listCaptures(vmId: string): Promise<CaptureRecord[]> {
    return [...this.captures.values()].filter((c) => c.vmId === vmId).map(clone);
  }
  async deleteCapture(vmId: string, diskId: string, tagId: number): Promise<void> {
    this.captures.delete(`${vmId}:${tagId}:${diskId}`);
  }
  async putOperation(op: OperationRecord): Promise<string> {
    const id = `${op.vmId}:${op.operationId}`;
    const cur = this.operations.get(id);
    if (op.etag === undefined && cur) throw new StateStoreError('ALREADY_EXISTS', `operation '${op.operationId}': already exists.`);
    if (op.etag !== undefined && cur?.etag !== op.etag) throw new StateStoreError(cur ? 'CONFLICT' : 'NOT_FOUND', `operation '${op.operationId}': changed meanwhile.`);
    const etag = this.nextEtag();
    this.operations.set(id, { ...clone(op), etag });
    return etag;
  }
  async getOperation(vmId: string, operationId: string): Promise<OperationRecord | undefined> {
    const op = this.operations.get(`${vmId}:${operationId}`);
    return op ? clone(op) : undefined;
  }
}

export class MemoryDiskStore implements DiskStore {
  readonly contents = new Map<string, Buffer>();
  /** Number of apply calls that changed something (for "the disk was not touched" checks). */
  writes = 0;
  private key(d: DiskRef): string {
    return `${d.vmId}/${d.diskId}`;
  }
  async create(disk: DiskRef, sizeBytes: number): Promise<void> {
    if (!this.contents.has(this.key(disk))) this.contents.set(this.key(disk), Buffer.alloc(sizeBytes));
  }
  async apply(disk: DiskRef, sizeBytes: number, records: readonly BatchRecord[]): Promise<ApplyStats> {
    for (const r of records) {
      const len = r.kind === 'zero' ? r.length : r.data.length;
      if (r.offset < 0 || r.offset + len > sizeBytes) throw new DiskStoreError('OUT_OF_BOUNDS', `A record at ${r.offset} is outside the disk.`, false);
    }
    const buf = this.contents.get(this.key(disk)) ?? Buffer.alloc(sizeBytes);
    let bytes = 0;
    for (const r of records) {
      if (r.kind === 'zero') buf.fill(0, r.offset, r.offset + r.length);
      else buf.set(r.data, r.offset);
      bytes += r.kind === 'zero' ? r.length : r.data.length;
    }
    this.contents.set(this.key(disk), buf);
    if (records.length > 0) this.writes++;
    return { extentsWritten: 0, extentsRead: 0, bytesUploaded: bytes, bytesDownloaded: 0, segmentsCommitted: records.length > 0 ? 1 : 0 };
  }
  async applyBatches(disk: DiskRef, sizeBytes: number, batches: readonly (readonly BatchRecord[])[]): Promise<ApplyStats> {
    for (const records of batches) {
      for (const r of records) {
        const len = r.kind === 'zero' ? r.length : r.data.length;
        if (r.offset < 0 || r.offset + len > sizeBytes) throw new DiskStoreError('OUT_OF_BOUNDS', `A record at ${r.offset} is outside the disk.`, false);
      }
    }
    const total: ApplyStats = { extentsWritten: 0, extentsRead: 0, bytesUploaded: 0, bytesDownloaded: 0, segmentsCommitted: 0 };
    const before = this.writes;
    for (const records of batches) {
      const s = await this.apply(disk, sizeBytes, records);
      total.bytesUploaded += s.bytesUploaded;
      total.segmentsCommitted = Math.max(total.segmentsCommitted, s.segmentsCommitted);
    }
    this.writes = Math.min(this.writes, before + 1);
    return total;
  }
  async read(disk: DiskRef, sizeBytes: number, offset: number, length: number): Promise<Buffer> {
    const buf = this.contents.get(this.key(disk)) ?? Buffer.alloc(sizeBytes);
    return Buffer.from(buf.subarray(offset, offset + length));
  }
  async delete(disk: DiskRef): Promise<void> {
    this.contents.delete(this.key(disk));
  }
}

export class MemoryStagingStore implements StagingStore {
  readonly blobs = new Map<string, { body: Buffer; lastModified: number }>();
  constructor(private readonly now: () => number = Date.now) {}
  async put(name: string, body: Buffer): Promise<void> {
    this.blobs.set(name, { body: Buffer.from(body), lastModified: this.now() });
  }
  async get(name: string, maxBytes: number): Promise<Buffer | undefined> {
    const b = this.blobs.get(name);
    if (b && b.body.length > maxBytes) throw new StagingTooLargeError(`Staging blob ${name} is ${b.body.length} bytes, above the ${maxBytes} bytes expected.`);
    return b ? Buffer.from(b.body) : undefined;
  }
  async delete(name: string): Promise<void> {
    this.blobs.delete(name);
  }
  async *list(prefix = ''): AsyncIterable<StagedBlobInfo> {
    for (const [name, b] of this.blobs) if (name.startsWith(prefix)) yield { name, lastModified: b.lastModified };
  }
}

/** Captures as full copies of a MemoryDiskStore's disks (the Azure one shares unchanged segments). */
export class MemoryCaptureStore implements CaptureStore {
  readonly captures = new Map<string, Buffer>();
  collected = 0;
  constructor(private readonly disks: MemoryDiskStore) {}
  private key(d: DiskRef, tagId: number): string {
    return `${d.vmId}/${d.diskId}@${tagId}`;
  }
  private get(d: DiskRef, tagId: number): Buffer {
    const c = this.captures.get(this.key(d, tagId));
    if (!c) throw new DiskStoreError('CAPTURE_NOT_FOUND', `Disk ${d.vmId}/${d.diskId} has no capture at tag ${tagId}.`, false);
    return c;
  }
  async capture(disk: DiskRef, sizeBytes: number, tagId: number): Promise<CaptureStats> {
    if (this.captures.has(this.key(disk, tagId))) return { alreadyCaptured: true, segmentsSnapshotted: 0, segmentsReused: 0 };
    const content = this.disks.contents.get(`${disk.vmId}/${disk.diskId}`) ?? Buffer.alloc(sizeBytes);
    this.captures.set(this.key(disk, tagId), Buffer.from(content));
    return { alreadyCaptured: false, segmentsSnapshotted: 1, segmentsReused: 0 };
  }
  async hasCapture(disk: DiskRef, tagId: number): Promise<boolean> {
    return this.captures.has(this.key(disk, tagId));
  }
  async extents(disk: DiskRef, sizeBytes: number, tagId: number): Promise<CapturedExtent[]> {
    const c = this.get(disk, tagId);
    return Array.from({ length: extentCount(sizeBytes) }, (_, i) => {
      const { offset, length } = extentRange(i, sizeBytes);
      const blockId = contentBlockId(c.subarray(offset, offset + length));
      return { extentIndex: i, blockId, zero: blockId === zeroBlockId(length) };
    });
  }
  async readExtent(disk: DiskRef, sizeBytes: number, tagId: number, extentIndex: number): Promise<Buffer> {
    const { offset, length } = extentRange(extentIndex, sizeBytes);
    return Buffer.from(this.get(disk, tagId).subarray(offset, offset + length));
  }
  async deleteCapture(disk: DiskRef, tagId: number): Promise<void> {
    this.captures.delete(this.key(disk, tagId));
  }
  async collectGarbage(): Promise<{ deleted: number }> {
    this.collected++;
    return { deleted: 0 };
  }
}

export class MemoryVhdStore implements VhdStore {
  readonly blobs = new Map<string, Buffer>();
  /** Page writes, for "only non-zero ranges, at most 4 MiB each" checks. */
  readonly pageWrites: { name: string; offset: number; length: number }[] = [];
  private key(t: VhdTarget): string {
    return `${t.container}/${t.name}`;
  }
  async create(target: VhdTarget, totalBytes: number): Promise<void> {
    if (this.blobs.get(this.key(target))?.length !== totalBytes) this.blobs.set(this.key(target), Buffer.alloc(totalBytes));
  }
  async writePages(target: VhdTarget, offset: number, data: Uint8Array): Promise<void> {
    const blob = this.blobs.get(this.key(target));
    if (!blob) throw new Error(`No page blob ${this.key(target)}.`);
    if (offset % 512 !== 0 || data.length % 512 !== 0 || data.length > MAX_PAGE_WRITE_BYTES || offset + data.length > blob.length) {
      throw new Error(`Bad page write of ${data.length} bytes at ${offset} to ${this.key(target)}.`);
    }
    blob.set(data, offset);
    this.pageWrites.push({ name: this.key(target), offset, length: data.length });
  }
  url(target: VhdTarget): string {
    return `memory://${this.key(target)}`;
  }
  async deletePrefix(container: VhdContainer, prefix: string): Promise<{ deleted: number }> {
    let deleted = 0;
    for (const k of [...this.blobs.keys()]) {
      if (k.startsWith(`${container}/${prefix}`)) {
        this.blobs.delete(k);
        deleted++;
      }
    }
    return { deleted };
  }
}
