/**
 * Global setup of `npm run test:faults`: a fresh results directory for this run (the workers
 * inherit FERRY_FAULTS_OUT), and at the end the table of every scenario, printed and written
 * to `<dir>/faults.json`.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatTable, readRows } from './report';

export default function setup(): () => void {
  const dir = process.env.FERRY_FAULTS_OUT ?? mkdtempSync(join(tmpdir(), 'ferry-faults-'));
  process.env.FERRY_FAULTS_OUT = dir;
  const started = Date.now();
  return () => {
    const rows = readRows(dir);
    const file = join(dir, 'faults.json');
    writeFileSync(file, JSON.stringify({ mode: rows[0]?.mode, wallSeconds: (Date.now() - started) / 1000, rows }, null, 2));
    process.stdout.write(`\n${formatTable(rows)}\nWhole run: ${((Date.now() - started) / 1000).toFixed(0)} s. Figures in ${file}\n`);
  };
}
