// Checkpoint loading benchmark (`npm run bench:load`, after `npx tsc -p tsconfig.json`).
//
// Synthesises a full-size Wan2.1 T2V 1.3B DiT checkpoint (every key and shape of the real one,
// from shared/manifests, random bf16 codes, ~2.8 GB; bench/synthesize.ts) once into a temporary
// folder, then
// compares, in the same run:
//   - loadSafetensors(file) (populate: true, the default) against a plain sequential read of
//     the same file (fs.readSync into one reused 64 MiB buffer until EOF), in interleaved
//     rounds, both from disk (page cache dropped before each measurement) when
//     /proc/sys/vm/drop_caches is writable, else both from the warm page cache (said so);
//   - the same pair with the file already in the page cache;
//   - the resident memory a load adds, against the file size (the tensors alias one mapping of
//     the page cache, so this should be ~1.0x, never 2x);
//   - loadSafetensors(file, { populate: false }): the lazy load, and the cost of touching every
//     page afterwards (toTypedArray() of every tensor, compared with the same pass over a
//     populated load: the difference is what demand paging adds to a first full pass).
//
// Environment: WAN_SHARED_DIR (default: ../shared beside the repository root),
// WAN_BENCH_DIR (default: os.tmpdir()/wan-native-bench), WAN_BENCH_ROUNDS (default 5).
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';

import { loadSafetensors, Tensor } from '../lib/index';
import { DIT_MANIFEST, ensureCheckpoint, manifestPath, readManifest, withInit } from './synthesize';
import { table } from './machine';

const CHUNK = 64 << 20;
const GB = 1e9;

// ---------------------------------------------------------------- measurements

// Drops the page cache (all clean pages, this file's included) after flushing dirty ones.
function dropCaches(): boolean {
  try {
    execFileSync('sync');
    fs.writeFileSync('/proc/sys/vm/drop_caches', '1');
    return true;
  } catch {
    return false;
  }
}

function meminfo(field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

interface Rss { total: number; anon: number; file: number }

function rss(): Rss {
  const status = fs.readFileSync('/proc/self/status', 'utf8');
  const kb = (field: string) => {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status);
    return m ? Number(m[1]) * 1024 : NaN;
  };
  return { total: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile') };
}

function sequentialRead(file: string, buf: Buffer): { ms: number; bytes: number } {
  const t0 = performance.now();
  const fd = fs.openSync(file, 'r');
  let bytes = 0;
  try {
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      bytes += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return { ms: performance.now() - t0, bytes };
}

// Page faults are process-wide (getrusage), so they include the engine thread's populate loop.
interface LoadResult { ms: number; before: Rss; after: Rss; afterDispose: Rss; tensors: number; minflt: number; majflt: number }

function disposeAll(tensors: Map<string, Tensor>): void {
  for (const t of tensors.values()) t.dispose();
}

async function timedLoad(file: string, populate: boolean, keep = false): Promise<LoadResult & { loaded?: Map<string, Tensor> }> {
  const before = rss();
  const u0 = process.resourceUsage();
  const t0 = performance.now();
  const { tensors } = await loadSafetensors(file, { populate });
  const ms = performance.now() - t0;
  const u1 = process.resourceUsage();
  const after = rss();
  const faults = { minflt: u1.minorPageFault - u0.minorPageFault, majflt: u1.majorPageFault - u0.majorPageFault };
  if (keep) return { ms, before, after, afterDispose: after, tensors: tensors.size, ...faults, loaded: tensors };
  disposeAll(tensors);
  return { ms, before, after, afterDispose: rss(), tensors: tensors.size, ...faults };
}

// One full pass over every page of every tensor: toTypedArray() reads (and converts to f32)
// every element; the arrays are dropped one by one.
function touchAll(tensors: Map<string, Tensor>): number {
  const t0 = performance.now();
  let sink = 0;
  for (const t of tensors.values()) sink += t.toTypedArray().length;
  if (sink < 0) console.log(sink);
  return performance.now() - t0;
}

// ---------------------------------------------------------------- report helpers

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const gbps = (bytes: number, ms: number) => bytes / GB / (ms / 1000);
const gb = (bytes: number) => (bytes / GB).toFixed(3);
const mb = (bytes: number) => (bytes / 2 ** 20).toFixed(0);


// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  const rounds = Math.max(1, Number(process.env.WAN_BENCH_ROUNDS ?? 5) | 0);
  console.log(`bench:load  node ${process.version}, ${os.cpus().length} CPUs, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB RAM, ${os.release()}, load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  console.log(`manifest    ${manifestPath(DIT_MANIFEST)}`);
  // Random bf16 codes with the exponent forced to 120..123: finite, 2^-7 <= |x| < 2^-3.
  const ckpt = ensureCheckpoint({
    name: 'wan2.1_t2v_1.3B_dit.bf16.safetensors',
    tensors: withInit(readManifest(DIT_MANIFEST), 'BF16', () => ({ kind: 'bf16-codes' })),
    generator: 'wan-native bench/load.ts (random bf16 values)',
    log: () => undefined,
  });
  const { file } = ckpt;
  const want = { fileSize: ckpt.bytes, numTensors: ckpt.tensors };
  console.log(`checkpoint  ${file}`);
  console.log(`            ${ckpt.tensors} tensors, ${(ckpt.params / 1e9).toFixed(3)} B params, bf16, ${gb(ckpt.bytes)} GB (${ckpt.bytes} bytes)`);
  if (ckpt.writtenS === undefined) console.log('            reused (same size and header)');
  else console.log(`            written in ${ckpt.writtenS.toFixed(1)} s (${gbps(ckpt.bytes, 1000 * ckpt.writtenS).toFixed(2)} GB/s, random bf16, fsync'd)`);

  // Warm-up: the first native call loads the addon and libtorch and faults their code in
  // (~90 MiB of file-backed RSS, and a disk read when the cache is cold); keep that out of round 1.
  disposeAll((await loadSafetensors(file, { populate: false })).tensors);

  const cold = dropCaches();
  if (cold) {
    const cachedBefore = meminfo('Cached');
    sequentialRead(file, Buffer.allocUnsafe(CHUNK));  // bring it in to check that the drop works
    const cachedWarm = meminfo('Cached');
    dropCaches();
    const cachedAfter = meminfo('Cached');
    console.log(`page cache  dropped before each cold measurement (sync; echo 1 > /proc/sys/vm/drop_caches): ` +
      `Cached ${mb(cachedBefore)} -> ${mb(cachedWarm)} MiB after a read -> ${mb(cachedAfter)} MiB after a drop`);
  } else {
    console.log('page cache  /proc/sys/vm/drop_caches is not writable: every figure below is WARM-CACHE (the file is in the page cache)');
  }
  const GB_NOTE = 'GB = 1e9 bytes; times are wall-clock, ms';
  const buf = Buffer.allocUnsafe(CHUNK);

  // Interleaved (sequential read, load) pairs, the order alternating each round.
  type Pair = { read: number[]; load: number[]; growth: number[]; loads: LoadResult[] };
  const run = async (dropEach: boolean): Promise<Pair> => {
    const out: Pair = { read: [], load: [], growth: [], loads: [] };
    if (!dropEach) sequentialRead(file, buf);  // warm it
    for (let r = 0; r < rounds; r++) {
      const order = r % 2 === 0 ? ['read', 'load'] : ['load', 'read'];
      for (const what of order) {
        if (dropEach) dropCaches();
        if (what === 'read') {
          const { ms, bytes } = sequentialRead(file, buf);
          if (bytes !== want.fileSize) throw new Error(`read ${bytes} bytes, expected ${want.fileSize}`);
          out.read.push(ms);
        } else {
          const res = await timedLoad(file, true);
          if (res.tensors !== want.numTensors) throw new Error(`loaded ${res.tensors} tensors, expected ${want.numTensors}`);
          out.load.push(res.ms);
          out.growth.push((res.after.total - res.before.total) / want.fileSize);
          out.loads.push(res);
        }
      }
    }
    return out;
  };

  const coldRun = cold ? await run(true) : undefined;
  const warmRun = await run(false);

  // Lazy load: from disk when we can drop the cache, then one full pass over every tensor.
  if (cold) dropCaches();
  const lazy = await timedLoad(file, false, true);
  const lazyTouchMs = touchAll(lazy.loaded!);
  const lazyTouched = rss();
  disposeAll(lazy.loaded!);
  // The same pass over a populated load, pages already resident (the cost of toTypedArray alone).
  if (cold) dropCaches();
  const full = await timedLoad(file, true, true);
  const fullTouchMs = touchAll(full.loaded!);
  disposeAll(full.loaded!);

  // ---- report
  const label = cold ? 'cold (page cache dropped)' : 'warm-cache';
  const rows: (string | number)[][] = [];
  const addRows = (name: string, p: Pair) => {
    for (let r = 0; r < rounds; r++) {
      rows.push([`${name} round ${r + 1} (${r % 2 === 0 ? 'read first' : 'load first'})`,
        p.read[r].toFixed(0), gbps(want.fileSize, p.read[r]).toFixed(2),
        p.load[r].toFixed(0), gbps(want.fileSize, p.load[r]).toFixed(2),
        (p.read[r] / p.load[r]).toFixed(2)]);
    }
    const mr = median(p.read), ml = median(p.load);
    rows.push([`${name} median`, mr.toFixed(0), gbps(want.fileSize, mr).toFixed(2), ml.toFixed(0), gbps(want.fileSize, ml).toFixed(2), (mr / ml).toFixed(2)]);
    const br = Math.min(...p.read), bl = Math.min(...p.load);
    rows.push([`${name} best`, br.toFixed(0), gbps(want.fileSize, br).toFixed(2), bl.toFixed(0), gbps(want.fileSize, bl).toFixed(2), (br / bl).toFixed(2)]);
    rows.push([`${name} median of the per-round ratios`, '', '', '', '', median(p.read.map((r, i) => r / p.load[i])).toFixed(2)]);
  };
  if (coldRun) addRows(label, coldRun);
  addRows('warm (in page cache)', warmRun);
  console.log(`\nSequential read (fs.readSync, 64 MiB buffer) vs loadSafetensors (populate: true); ${GB_NOTE}`);
  console.log(table(['run', 'read ms', 'read GB/s', 'load ms', 'load GB/s', 'ratio load/read GB/s'], rows));

  const memRows: (string | number)[][] = [];
  const addMem = (name: string, p: Pair) => p.loads.forEach((l, r) => memRows.push([
    `${name} load ${r + 1}`, mb(l.before.total), mb(l.after.total), mb(l.after.total - l.before.total),
    mb(l.after.file - l.before.file), mb(l.after.anon - l.before.anon), ((l.after.total - l.before.total) / want.fileSize).toFixed(2) + 'x',
    mb(l.afterDispose.total), l.minflt, l.majflt]));
  if (coldRun) addMem(cold ? 'cold' : 'warm-cache', coldRun);
  addMem('warm', warmRun);
  console.log(`\nResident memory per load (MiB; file ${mb(want.fileSize)} MiB = ${Math.ceil(want.fileSize / 4096)} pages of 4 KiB; growth = RSS just after the load - RSS just before it; page faults of the whole process during the load)`);
  console.log(table(['load', 'RSS before', 'RSS after', 'growth', 'of which file', 'of which anon', 'growth / file', 'RSS after dispose', 'minor faults', 'major faults'], memRows));

  console.log(`\nLazy load (populate: false${cold ? ', page cache dropped first' : ', warm cache'}) and a full touch afterwards`);
  console.log(table(['step', 'ms', 'file-backed RSS growth MiB'], [
    ['loadSafetensors(populate: false)', lazy.ms.toFixed(1), mb(lazy.after.file - lazy.before.file)],
    ['then toTypedArray() of all tensors (faults every page in)', lazyTouchMs.toFixed(0), mb(lazyTouched.file - lazy.before.file)],
    [`loadSafetensors(populate: true)${cold ? ', page cache dropped first' : ''}`, full.ms.toFixed(0), mb(full.after.file - full.before.file)],
    ['then toTypedArray() of all tensors (pages resident)', fullTouchMs.toFixed(0), ''],
  ]));
  console.log(`(toTypedArray converts bf16 to a new Float32Array, so a pass costs more than touching pages; demand paging ` +
    `added ${(lazyTouchMs - fullTouchMs).toFixed(0)} ms to the first full pass after the lazy load.)`);

  const headline = coldRun ?? warmRun;
  const mr = median(headline.read), ml = median(headline.load);
  const growth = median(headline.growth);
  console.log('');
  const what = cold ? `from disk, page cache dropped before each; median of ${rounds}` : `WARM-CACHE; median of ${rounds}`;
  console.log(`load: ${gbps(want.fileSize, ml).toFixed(2)} GB/s, sequential read: ${gbps(want.fileSize, mr).toFixed(2)} GB/s, ratio ${(mr / ml).toFixed(2)} (${what})`);
  console.log(`per-round ratio load/read (each pair back to back): median ${median(headline.read.map((r, i) => r / headline.load[i])).toFixed(2)}`);
  if (coldRun)
    console.log(`warm cache: load: ${gbps(want.fileSize, median(warmRun.load)).toFixed(2)} GB/s, sequential read: ${gbps(want.fileSize, median(warmRun.read)).toFixed(2)} GB/s, ratio ${(median(warmRun.read) / median(warmRun.load)).toFixed(2)} (file already in the page cache)`);
  console.log(`lazy load (populate: false): ${lazy.ms.toFixed(1)} ms`);
  console.log(`RSS growth / file size: ${growth.toFixed(2)}x (median of ${headline.growth.length} ${cold ? 'cold' : 'warm-cache'} loads)`);
  if (!cold) console.log('NOTE: warm-cache figures: the page cache could not be dropped.');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
