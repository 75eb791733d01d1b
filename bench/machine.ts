// What every benchmark reads about the machine and prints: this process's memory counters,
// how busy the other processes keep the cores, a snapshot of the addon being measured, tables.
import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

const repoRoot = path.resolve(__dirname, '..', '..');

/** A kB field of /proc/self/status (VmHWM, VmRSS, RssFile, ...), in KiB. */
export function procStatusKiB(field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync('/proc/self/status', 'utf8'));
  if (!m) throw new Error(`no ${field} in /proc/self/status`);
  return Number(m[1]);
}

/** Busy CPU seconds of the whole machine so far (/proc/stat, USER_HZ = 100). */
export function machineBusySeconds(): number {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = f;
  return (user + nice + system + irq + softirq + (steal ?? 0)) / 100;
}

/** Cores kept busy by other processes over the next `ms` (this process idle meanwhile). */
export async function othersBusy(ms: number): Promise<number> {
  const b0 = machineBusySeconds(), c0 = process.cpuUsage(), t0 = performance.now();
  await new Promise((r) => setTimeout(r, ms));
  const c = process.cpuUsage(c0);
  return Math.max(0, (machineBusySeconds() - b0 - (c.user + c.system) / 1e6) / ((performance.now() - t0) / 1000));
}

/** A markdown table, the first column left-aligned, the others right-aligned. */
export function table(head: string[], rows: (string | number)[][]): string {
  const cells = [head, ...rows.map((r) => r.map(String))];
  const widths = head.map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  const line = (r: string[]) => `| ${r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')} |`;
  return [line(cells[0]), `|${widths.map((w, i) => (i === 0 ? ':' : '-') + '-'.repeat(w) + (i === 0 ? '-' : ':')).join('|')}|`,
    ...cells.slice(1).map(line)].join('\n');
}

/**
 * A local build can be rebuilt while a bench runs (replacing the .node under a running process):
 * measure a copy of it, taken once, unless WAN_NATIVE_BINARY names one. Returns what was copied.
 */
export function snapshotAddon(dir: string): string | undefined {
  if (process.env.WAN_NATIVE_BINARY) return undefined;
  let resolved: string;
  try {
    resolved = require('node-gyp-build').path(repoRoot) as string;
  } catch {
    return undefined;
  }
  if (!resolved.startsWith(path.join(repoRoot, 'build') + path.sep)) return undefined;
  const bytes = fs.readFileSync(resolved);
  const copy = path.join(dir, `wan_native.snapshot-${process.pid}.node`);
  fs.writeFileSync(copy, bytes);
  process.on('exit', () => fs.rmSync(copy, { force: true }));
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => process.exit(130));
  process.env.WAN_NATIVE_BINARY = copy;
  const sha = crypto.createHash('sha256').update(bytes).digest('hex').slice(0, 12);
  return `${resolved} (built ${fs.statSync(resolved).mtime.toISOString()}, sha256 ${sha}), measured from a copy`;
}

/**
 * Runs `script --child <job as JSON>` in a fresh Node process (its stderr passed through) and
 * returns what it printed on its `RESULT <JSON>` line: one measurement per process, so that
 * each starts from the same memory and heap.
 */
export function runChildJob<R>(script: string, job: unknown, bench: string): R {
  const out = execFileSync(process.execPath, [script, '--child', JSON.stringify(job)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  const line = out.split('\n').find((l) => l.startsWith('RESULT '));
  if (!line) throw new Error(`${bench}: no result from ${JSON.stringify(job)}:\n${out}`);
  return JSON.parse(line.slice(7)) as R;
}
