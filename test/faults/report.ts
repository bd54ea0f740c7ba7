/**
 * The fault suite's figures: each scenario writes one row (a JSON file) into the results
 * directory; the suite's global teardown (vitest.faults.config.ts) prints them all as one table
 * and writes `faults.json`. In the default `npm test` each file prints its own rows.
 */
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface ScenarioRow {
  scenario: string;
  mode: 'short' | 'full';
  injections: number;
  /** Per injection: batches the appliance had accepted that the cloud had not applied yet. */
  inFlight: number[];
  /** Per injection: from the fault's end (the restart, the reconnection) until every batch accepted before the fault is applied. */
  recoveryMs: number[];
  bytesLost: number;
  disksExact: number;
  disks: number;
  /** Batch commits (applied-sequence records) checked for doubles, and how many were doubles. */
  commits: number;
  doubleCommits: number;
  wallSeconds: number;
  /** Problems (a clean scenario has none). */
  notes: string[];
  /** Figures beyond the table's (RPO during an outage, how the cache filled...). */
  detail?: string[];
}

export function resultsDir(): string {
  const dir = process.env.FERRY_FAULTS_OUT ?? join(tmpdir(), 'ferry-faults');
  mkdirSync(dir, { recursive: true });
  return dir;
}

export function writeRow(row: ScenarioRow): string {
  const file = join(resultsDir(), `${row.scenario}.row.json`);
  writeFileSync(file, JSON.stringify(row, null, 2));
  return file;
}

export function readRows(dir = resultsDir()): ScenarioRow[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.row.json'))
    .sort()
    .map((f) => JSON.parse(readFileSync(join(dir, f), 'utf8')) as ScenarioRow);
}

const median = (xs: number[]): number => {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)]!;
};

function range(xs: number[], fmt: (n: number) => string): string {
  if (xs.length === 0) return '-';
  return `${fmt(median(xs))} median, ${fmt(Math.max(...xs))} max`;
}

export function formatTable(rows: ScenarioRow[]): string {
  const head = ['scenario', 'injections', 'batches in flight at injection', 'recovery time', 'bytes lost', 'disks exact', 'double commits', 'wall'];
  const body = rows.map((r) => [
    r.scenario,
    String(r.injections),
    range(r.inFlight, (n) => String(n)),
    range(r.recoveryMs, (n) => `${(n / 1000).toFixed(1)} s`),
    String(r.bytesLost),
    `${r.disksExact}/${r.disks}${r.disksExact === r.disks ? ' (all)' : ''}`,
    `${r.doubleCommits} of ${r.commits}`,
    `${r.wallSeconds.toFixed(0)} s`,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  const out = [line(head), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...body.map(line)];
  const notes = rows.flatMap((r) => [...(r.detail ?? []), ...r.notes].map((n) => `  ${r.scenario}: ${n}`));
  return [`Fault suite (${rows[0]?.mode ?? '?'}):`, ...out, ...(notes.length ? ['Notes:', ...notes] : [])].join('\n');
}
