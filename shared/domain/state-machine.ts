/**
 * The replication state of a VM (docs/state-machine.md). Pure: `transition` says what an
 * event does to a state; callers persist the result (with an ETag, so two writers cannot
 * both move the same VM).
 */

export const VM_STATES = [
  'initial-replication',
  'protected',
  'test-migrating',
  'migrating',
  'migrated',
  'resync-required',
  'disabled',
] as const;
export type VmState = (typeof VM_STATES)[number];

/**
 * - `enable`: replication (re-)enabled; a new VM starts in `initialState()` without it.
 * - `initialReplicationComplete`: every disk finished its initial copy.
 * - `gapDetected`: a disk's batches cannot be applied in order (lost or dead-lettered batch).
 * - `resyncRequested`: POST .../resync, or the appliance starting a resync (new epoch).
 * - `resyncComplete`: every disk finished the full copy of the new epoch.
 * - `testMigrateStarted` / `testMigrateFinished`: test migration operation started / ended
 *   (its disks remain until cleanup, whatever its outcome).
 * - `testCleanup`: POST .../test-migrate-cleanup.
 * - `migrateStarted` / `migrateCompleted` / `migrateFailed`: the migration operation.
 * - `disable`: POST .../disable-replication.
 */
export const VM_EVENTS = [
  'enable',
  'initialReplicationComplete',
  'gapDetected',
  'resyncRequested',
  'resyncComplete',
  'testMigrateStarted',
  'testMigrateFinished',
  'testCleanup',
  'migrateStarted',
  'migrateCompleted',
  'migrateFailed',
  'disable',
] as const;
export type VmEventType = (typeof VM_EVENTS)[number];
export interface VmEvent {
  type: VmEventType;
}

/** event -> (from state -> to state). A state missing from an event's row rejects it. */
export const TRANSITIONS: Readonly<Record<VmEventType, Readonly<Partial<Record<VmState, VmState>>>>> = {
  enable: { disabled: 'initial-replication' },
  initialReplicationComplete: { 'initial-replication': 'protected' },
  gapDetected: {
    'initial-replication': 'resync-required',
    protected: 'resync-required',
    'test-migrating': 'resync-required',
    // The migration reads a recovery point taken before the gap, so it goes on; the gap is
    // recorded on the disk and raised again if the migration fails.
    migrating: 'migrating',
    'resync-required': 'resync-required',
  },
  resyncRequested: {
    'initial-replication': 'resync-required',
    protected: 'resync-required',
    'resync-required': 'resync-required',
  },
  resyncComplete: { 'resync-required': 'protected' },
  testMigrateStarted: { protected: 'test-migrating' },
  testMigrateFinished: { 'test-migrating': 'test-migrating', 'resync-required': 'resync-required' },
  testCleanup: { 'test-migrating': 'protected', 'resync-required': 'resync-required' },
  migrateStarted: { protected: 'migrating' },
  migrateCompleted: { migrating: 'migrated' },
  migrateFailed: { migrating: 'protected' },
  disable: {
    'initial-replication': 'disabled',
    protected: 'disabled',
    'resync-required': 'disabled',
    migrated: 'disabled',
  },
};

export function initialState(): VmState {
  return 'initial-replication';
}

/** The user-facing name of each event: the API route or what happened. */
const ACTION: Readonly<Record<VmEventType, string>> = {
  enable: 'enable-replication',
  initialReplicationComplete: 'completing initial replication',
  gapDetected: 'recording a sequence gap',
  resyncRequested: 'resync',
  resyncComplete: 'completing a resync',
  testMigrateStarted: 'test-migrate',
  testMigrateFinished: 'finishing a test migration',
  testCleanup: 'test-migrate-cleanup',
  migrateStarted: 'migrate',
  migrateCompleted: 'completing a migration',
  migrateFailed: 'failing a migration',
  disable: 'disable-replication',
};

export interface TransitionError {
  code: 'INVALID_TRANSITION';
  vmId: string | undefined;
  state: VmState;
  event: VmEventType;
  /** States from which the event is allowed. */
  allowedFrom: VmState[];
  message: string;
}

export type TransitionResult = { ok: true; state: VmState } | { ok: false; error: TransitionError };

export interface TransitionOptions {
  /** Named in the error message and its hint. */
  vmId?: string;
}

export function isVmState(value: unknown): value is VmState {
  return typeof value === 'string' && (VM_STATES as readonly string[]).includes(value);
}

/** What the current state asks the user to do before the rejected action can succeed. */
function hint(state: VmState, vm: string, vmId: string | undefined): string {
  const route = `/api/vms/${vmId ?? '{vmId}'}`;
  switch (state) {
    case 'initial-replication':
      return `Wait until initial replication completes (see GET ${route}).`;
    case 'protected':
      return `${vm} is replicating normally.`;
    case 'test-migrating':
      return `Clean up the test migration first (POST ${route}/test-migrate-cleanup).`;
    case 'migrating':
      return `Wait for the migration to finish (see GET ${route}).`;
    case 'migrated':
      return `${vm} has been migrated; only disable-replication remains.`;
    case 'resync-required':
      return `Resync it first (POST ${route}/resync) and wait until the resync completes (see GET ${route}).`;
    case 'disabled':
      return `Replication is disabled; enable it again (POST ${route}/enable-replication).`;
  }
}

/**
 * Applies `event` to `state`. Rejections name the current state, the states the action
 * needs, and what to do next:
 * "VM 'x' is in state 'initial-replication'; migrate needs 'protected'. Wait until initial
 * replication completes (see GET /api/vms/x)."
 */
export function transition(state: VmState, event: VmEvent, options: TransitionOptions = {}): TransitionResult {
  const row = TRANSITIONS[event.type];
  const next = row[state];
  if (next !== undefined) return { ok: true, state: next };
  const allowedFrom = VM_STATES.filter((s) => row[s] !== undefined);
  const vm = options.vmId === undefined ? 'The VM' : `VM '${options.vmId}'`;
  const needs = allowedFrom.map((s) => `'${s}'`).join(' or ');
  return {
    ok: false,
    error: {
      code: 'INVALID_TRANSITION',
      vmId: options.vmId,
      state,
      event: event.type,
      allowedFrom,
      message: `${vm} is in state '${state}'; ${ACTION[event.type]} needs ${needs}. ${hint(state, vm, options.vmId)}`,
    },
  };
}

/**
 * States in which the cloud applies incoming batches. While migrating, batches still apply
 * (the migration reads a recovery point, not the live disk), so a failed migration returns
 * to 'protected' without a gap. After 'migrated' and 'disabled' batches are dropped.
 */
export function acceptsBatches(state: VmState): boolean {
  return state !== 'migrated' && state !== 'disabled';
}
