import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  acceptsBatches,
  initialState,
  isVmState,
  transition,
  TRANSITIONS,
  VM_EVENTS,
  VM_STATES,
  type VmEventType,
  type VmState,
} from '../../../shared/domain/state-machine';

function go(state: VmState, type: VmEventType, vmId = 'web-01') {
  return transition(state, { type }, { vmId });
}

describe('VM state machine', () => {
  it('starts in initial-replication', () => {
    expect(initialState()).toBe('initial-replication');
  });

  it('follows the happy path: initial replication, test migration, cleanup, migration', () => {
    let s: VmState = initialState();
    for (const [event, want] of [
      ['initialReplicationComplete', 'protected'],
      ['testMigrateStarted', 'test-migrating'],
      ['testMigrateFinished', 'test-migrating'],
      ['testCleanup', 'protected'],
      ['migrateStarted', 'migrating'],
      ['migrateCompleted', 'migrated'],
      ['disable', 'disabled'],
      ['enable', 'initial-replication'],
    ] as const) {
      const r = go(s, event);
      expect(r).toEqual({ ok: true, state: want });
      if (r.ok) s = r.state;
    }
  });

  it('moves to resync-required on a gap and back to protected when the resync completes', () => {
    expect(go('protected', 'gapDetected')).toEqual({ ok: true, state: 'resync-required' });
    expect(go('resync-required', 'gapDetected')).toEqual({ ok: true, state: 'resync-required' });
    expect(go('resync-required', 'resyncRequested')).toEqual({ ok: true, state: 'resync-required' });
    expect(go('resync-required', 'resyncComplete')).toEqual({ ok: true, state: 'protected' });
  });

  it('returns a failed migration to protected', () => {
    expect(go('migrating', 'migrateFailed')).toEqual({ ok: true, state: 'protected' });
  });

  it('rejects migrate during initial replication with the documented message', () => {
    const r = go('initial-replication', 'migrateStarted', 'x');
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.error).toEqual({
      code: 'INVALID_TRANSITION',
      vmId: 'x',
      state: 'initial-replication',
      event: 'migrateStarted',
      allowedFrom: ['protected'],
      message: "VM 'x' is in state 'initial-replication'; migrate needs 'protected'. Wait until initial replication completes (see GET /api/vms/x).",
    });
  });

  it('tells the user to clean up a test migration before migrating', () => {
    const r = go('test-migrating', 'migrateStarted');
    expect(!r.ok && r.error.message).toBe(
      "VM 'web-01' is in state 'test-migrating'; migrate needs 'protected'. Clean up the test migration first (POST /api/vms/web-01/test-migrate-cleanup).",
    );
  });

  it('tells the user to resync before a test migration of a VM with a gap', () => {
    const r = go('resync-required', 'testMigrateStarted');
    expect(!r.ok && r.error.message).toBe(
      "VM 'web-01' is in state 'resync-required'; test-migrate needs 'protected'. Resync it first (POST /api/vms/web-01/resync) and wait until the resync completes (see GET /api/vms/web-01).",
    );
  });

  it('lists every allowed state when several are', () => {
    const r = go('migrating', 'disable');
    expect(!r.ok && r.error.message).toBe(
      "VM 'web-01' is in state 'migrating'; disable-replication needs 'initial-replication' or 'protected' or 'migrated' or 'resync-required'. Wait for the migration to finish (see GET /api/vms/web-01).",
    );
  });

  it('rejects a second disable and names the VM generically without an id', () => {
    const r = transition('disabled', { type: 'disable' });
    expect(!r.ok && r.error.message).toBe(
      "The VM is in state 'disabled'; disable-replication needs 'initial-replication' or 'protected' or 'migrated' or 'resync-required'. Replication is disabled; enable it again (POST /api/vms/{vmId}/enable-replication).",
    );
  });

  it('gives every rejected (state, event) pair a message naming the state', () => {
    for (const state of VM_STATES) {
      for (const type of VM_EVENTS) {
        const r = go(state, type);
        if (r.ok) {
          expect(VM_STATES).toContain(r.state);
        } else {
          expect(r.error.message).toContain(`in state '${state}'`);
          expect(r.error.allowedFrom).not.toContain(state);
          expect(r.error.allowedFrom.length).toBeGreaterThan(0);
        }
      }
    }
  });

  it('accepts batches except after migration or disable', () => {
    expect(VM_STATES.filter((s) => !acceptsBatches(s))).toEqual(['migrated', 'disabled']);
  });

  it('recognises states', () => {
    expect(isVmState('protected')).toBe(true);
    expect(isVmState('Protected')).toBe(false);
    expect(isVmState(undefined)).toBe(false);
  });

  it('matches the transition table in docs/state-machine.md', () => {
    const doc = readFileSync(join(__dirname, '../../../docs/state-machine.md'), 'utf8');
    const lines = doc.split('\n');
    const start = lines.findIndex((l) => l.startsWith('| event \\ state |'));
    expect(start).toBeGreaterThan(0);
    const header = lines[start];
    const table = lines.slice(start + 2, start + 2 + VM_EVENTS.length);
    const cols = header!.split('|').slice(2, -1).map((c) => c.trim().replace(/`/g, ''));
    expect(cols).toEqual([...VM_STATES]);
    for (const event of VM_EVENTS) {
      const line = table.find((l) => l.startsWith(`| \`${event}\` |`));
      expect(line, `row for ${event}`).toBeDefined();
      const cells = line!.split('|').slice(2, -1).map((c) => c.trim().replace(/`/g, ''));
      cells.forEach((cell, i) => {
        const from = VM_STATES[i]!;
        const want = TRANSITIONS[event][from];
        expect(cell === '-' ? undefined : cell === '=' ? from : cell, `${event} from ${from}`).toBe(want);
      });
    }
  });
});
