/**
 * In-memory implementations of the ports, with the same contracts as the Azure ones (ETags,
 * atomic create, idempotent deletes). For unit tests of the use cases and for the memory side
 * of the port conformance suites; never used in production.
 */
import { DiskStoreError, type ApplyStats, type DiskRef, type DiskStore } from '../ports/disk-store';
import { StateStoreError, type DiskRecord, type StateStore, type VmRecord, type VmWithDisks, type WrappedKeyRecord } from '../ports/state-store';
import type { StagedBlobInfo, StagingStore } from '../ports/staging-store';
import type { BatchRecord } from '../domain/wire-format';

const clone = <T>(v: T): T => structuredClone(v);

export class MemoryStateStore implements StateStore {
  private readonly vms = new Map<string, VmRecord>();
  private readonly disks = new Map<string, Map<string, DiskRecord>>();
  private readonly keys = new Map<string, WrappedKeyRecord>();
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
    if (b && b.body.length > maxBytes) throw new Error(`Staging blob ${name} is larger than ${maxBytes} bytes.`);
    return b ? Buffer.from(b.body) : undefined;
  }
  async delete(name: string): Promise<void> {
    this.blobs.delete(name);
  }
  async *list(prefix = ''): AsyncIterable<StagedBlobInfo> {
    for (const [name, b] of this.blobs) if (name.startsWith(prefix)) yield { name, lastModified: b.lastModified };
  }
}
