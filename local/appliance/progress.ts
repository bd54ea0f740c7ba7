/**
 * What `replicate` and `agent` show while they run: per-disk bars (percent, MB/s, ETA) during
 * the initial copy and a compact live line during delta replication, on a TTY only; JSON lines
 * with `--json`; nothing otherwise.
 */
import { MultiBar, Presets, type SingleBar } from 'cli-progress';
import type { ProgressEvent } from './agent';

export interface ProgressView {
  onProgress(e: ProgressEvent): void;
  line(text: string): void;
  stop(): void;
}

export function progressView(mode: { json: boolean; tty: boolean }): ProgressView {
  if (mode.json) {
    let last = 0;
    return {
      onProgress(e) {
        const now = Date.now();
        if (now - last < 1000 && e.doneBytes < e.totalBytes) return;
        last = now;
        process.stdout.write(JSON.stringify({ event: 'progress', ...e }) + '\n');
      },
      line() {},
      stop() {},
    };
  }
  if (!mode.tty) return { onProgress() {}, line() {}, stop() {} };
  let multi: MultiBar | undefined;
  const bars = new Map<string, { bar: SingleBar; start: number }>();
  return {
    onProgress(e) {
      if (e.phase === 'delta') return;
      multi ??= new MultiBar(
        { format: '{disk} [{bar}] {percentage}% | {mbps} MB/s | ETA {eta_formatted} | sent {sent} MB', hideCursor: true, clearOnComplete: false, etaBuffer: 20 },
        Presets.shades_classic,
      );
      let b = bars.get(e.diskId);
      if (!b) {
        b = { bar: multi.create(e.totalBytes, 0, { disk: e.diskId.padEnd(6), mbps: '0', sent: '0' }), start: Date.now() };
        bars.set(e.diskId, b);
      }
      const secs = Math.max(0.001, (Date.now() - b.start) / 1000);
      b.bar.update(e.doneBytes, { mbps: (e.doneBytes / 1e6 / secs).toFixed(0), sent: (e.sentBytes / 1e6).toFixed(0) });
    },
    line(text) {
      if (multi) return;
      process.stdout.write(`\r\x1b[2K${text}`);
    },
    stop() {
      multi?.stop();
      multi = undefined;
      bars.clear();
    },
  };
}
