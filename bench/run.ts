/**
 * `npm run bench`: runs every benchmark module in bench/ (each exports `run()`), or only those
 * named on the command line (`npm run bench -- servicebus`), and prints their figures with the
 * ratio against the baseline each measured in the same run. `--json` prints JSON instead.
 */
import { readdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { formatResults, type BenchResult } from './types';

interface BenchModule {
  run: () => Promise<BenchResult[]>;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const json = args.includes('--json');
  const wanted = args.filter((a) => !a.startsWith('--'));
  const names = readdirSync(__dirname)
    .filter((f) => f.endsWith('.js') && !['run.js', 'types.js'].includes(f))
    .map((f) => basename(f, '.js'))
    .filter((n) => wanted.length === 0 || wanted.includes(n))
    .sort();
  if (names.length === 0) throw new Error(`No benchmark matches ${wanted.join(', ')}; available: ${readdirSync(__dirname).join(', ')}`);
  const all: Record<string, BenchResult[]> = {};
  for (const name of names) {
    const mod = (await import(join(__dirname, `${name}.js`))) as Partial<BenchModule>;
    if (typeof mod.run !== 'function') continue;
    const results = await mod.run();
    all[name] = results;
    if (!json) console.log(formatResults(name, results));
  }
  if (json) console.log(JSON.stringify(all, null, 2));
}

main().catch((err: unknown) => {
  console.error(`bench failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
  process.exit(1);
});
