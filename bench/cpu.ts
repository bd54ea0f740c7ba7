/**
 * CPU time of the local stack's processes and of the bench's own process (which runs the
 * appliance, or the baseline's client), read around a phase. It shows where a figure's time
 * goes, and the bound that time sets on this machine: work that takes T core-seconds cannot
 * finish in less than T / cores seconds, however well it overlaps.
 *
 * Linux only (/proc/<pid>/stat); elsewhere the children read as unknown and are left out.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import type { EphemeralStack } from '../local/stack/ephemeral';

/** The stack's children by the names the figures use. */
const CHILDREN: Record<string, string> = { azurite: 'azurite', host: 'host', servicebus: 'emulator' };
/** Clock ticks per second of /proc's utime and stime (USER_HZ: 100 on every Linux Node supports). */
const TICKS_PER_SECOND = 100;

export type CpuSeconds = Record<string, number>;

/** CPU seconds used so far by a process, or undefined once it is gone. */
export function procCpuSeconds(pid: number): number | undefined {
  try {
    // the command name (field 2) may hold spaces: fields are counted after its closing parenthesis
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND; // utime, stime
  } catch {
    return undefined;
  }
}

/** CPU seconds used so far by each of the stack's processes and by this one (`self` names it). */
export function sampleCpu(stack: EphemeralStack, self: string): CpuSeconds {
  const usage = process.cpuUsage();
  const out: CpuSeconds = { [self]: (usage.user + usage.system) / 1e6 };
  for (const [child, name] of Object.entries(CHILDREN)) {
    const pid = stack.stack.child(child)?.pid;
    const secs = pid ? procCpuSeconds(pid) : undefined;
    if (secs !== undefined) out[name] = secs;
  }
  return out;
}

/** What each process used between two samples (a process missing from either is left out). */
export function cpuBetween(before: CpuSeconds, after: CpuSeconds): CpuSeconds {
  const out: CpuSeconds = {};
  for (const [name, secs] of Object.entries(after)) {
    const was = before[name];
    if (was !== undefined) out[name] = Math.max(0, secs - was);
  }
  return out;
}

export function totalCpu(used: CpuSeconds): number {
  return Object.values(used).reduce((a, b) => a + b, 0);
}

export const CORES = availableParallelism();

/** "azurite 28.1, host 20.3, appliance 11.0, emulator 0.6", largest first. */
export function describeCpu(used: CpuSeconds): string {
  return Object.entries(used)
    .sort((a, b) => b[1] - a[1])
    .map(([name, secs]) => `${name} ${secs.toFixed(1)}`)
    .join(', ');
}

/** Runs `phase` and returns its result, its wall-clock seconds and the CPU seconds each process used. */
export async function measured<T>(stack: EphemeralStack, self: string, phase: () => Promise<T>): Promise<{ result: T; wall: number; cpu: CpuSeconds }> {
  const before = sampleCpu(stack, self);
  const start = performance.now();
  const result = await phase();
  const wall = (performance.now() - start) / 1000;
  return { result, wall, cpu: cpuBetween(before, sampleCpu(stack, self)) };
}
