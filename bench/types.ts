/** One figure a benchmark measured, with the baseline measured in the same run. */
export interface BenchResult {
  name: string;
  value: number;
  unit: string;
  baseline?: { name: string; value: number };
  /** value / baseline.value */
  ratio?: number;
  /** A target from an issue, e.g. ">= 5000 msg/s", printed beside the figure. */
  target?: string;
}

export function formatResults(suite: string, results: BenchResult[]): string {
  const lines = [`== ${suite}`];
  for (const r of results) {
    let line = `  ${r.name.padEnd(52)} ${fmt(r.value).padStart(10)} ${r.unit}`;
    if (r.baseline) line += `   baseline ${r.baseline.name}: ${fmt(r.baseline.value)}   ratio ${fmt(r.ratio ?? r.value / r.baseline.value)}x`;
    if (r.target) line += `   target ${r.target}`;
    lines.push(line);
  }
  return lines.join('\n');
}

function fmt(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  if (Math.abs(n) >= 100) return n.toFixed(0);
  if (Math.abs(n) >= 10) return n.toFixed(1);
  return n.toFixed(2);
}
