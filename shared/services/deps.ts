/** What the use cases need, passed in: the ports, the master key, the clock and randomness. */
import type { DiskStore } from '../ports/disk-store';
import type { StateStore } from '../ports/state-store';

export interface ReplicationDeps {
  state: StateStore;
  disks: DiskStore;
  /** 32 bytes; wraps every data key. */
  masterKey: Buffer;
  /** ms since epoch. */
  now: () => number;
  randomBytes: (n: number) => Buffer;
}
