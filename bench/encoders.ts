// Text encoder benchmark (`node dist/bench/encoders.js`, after `npx tsc -p tsconfig.json`).
//
// TextEncoder.encodeTokens at the real umT5-XXL dimensions (24 layers, dim 4096, dim_attn 4096,
// ffn 10240, 64 heads, vocab 256,384; random weights) on one 512-token prompt (random ids, mask
// all ones), for bf16 and scaled-fp8 storage, each in a fresh child process:
//   - seconds of the encode (two in a row: the first is the one a CLI call pays), the model's
//     FLOPs / seconds, and that rate next to the fp32 matmul rate of this machine measured in
//     the same run (addon gemmRate, [512, 4096] x [4096, 10240], best of 5, at the start and end);
//   - peak memory: VmHWM after load + one encode minus VmHWM before the load (the weights are
//     mapped from the file and populated, so file-backed pages count, as for any reader).
//
// Checkpoints, synthesised by bench/synthesize.ts (ensureUmt5Checkpoint) from
// shared/manifests/umt5_xxl_encoder.json (every key and shape) and streamed to WAN_BENCH_DIR
// (default os.tmpdir()/wan-native-bench), written once and reused when the size and header match:
//   bf16: every tensor BF16 (11.4 GB);
//   fp8:  the 2-D linear weights of the blocks as F8_E4M3 codes of weight / scale (nearest
//         e4m3fn value, never the NaN codes 0x7F/0xFF) with scale = absmax / 448 stored as an F32
//         scalar `<layer>.scale_weight`, a `scaled_fp8` marker (F8_E4M3, shape [0]), everything
//         else BF16 (ComfyUI's umt5_xxl_fp8_e4m3fn_scaled layout with official names; 6.7 GB).
//   fp8-unscaled, written and measured only when the scaled file does not load: the same
//         weights as plain e4m3fn codes of their values, no scales, no marker (Kijai-style).
// Values: linear weights U(+-sqrt(3/fan_in)), norm weights 1, relative position tables
// U(+-0.1), token embedding N(0, 1) * 0.1.
//
// The machine may be shared: before each measurement the bench waits (up to WAN_ENC_BENCH_WAIT
// seconds, default 600) for the 1-minute load average to fall to 1.5 or below, or for other
// processes to have kept at most 0.25 cores busy for 20 s (the average lags a finished job),
// reports the load average and the cores other processes kept busy during each encode
// (/proc/stat minus the child), and measures again once when that exceeded 0.25.
//
// Environment: WAN_SHARED_DIR, WAN_BENCH_DIR, WAN_ENC_BENCH=quick (2 layers, vocab 4096: a
// smoke test of the bench itself, not a measurement).
import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { runtimeInfo, Tensor, TextEncoder } from '../lib/index';
import { native } from '../lib/native';
import { benchDir, ensureUmt5Checkpoint, manifestPath, umt5CheckpointPath, type Umt5Storage as Storage } from './synthesize';
import { machineBusySeconds, othersBusy, procStatusKiB, snapshotAddon, table } from './machine';

const repoRoot = path.resolve(__dirname, '..', '..');
const QUICK = process.env.WAN_ENC_BENCH === 'quick';
const D = 4096, D_ATTN = 4096, D_FFN = 10240, LAYERS = QUICK ? 2 : 24, L = 512, VOCAB = QUICK ? 4096 : 256384;
const LOAD_LIMIT = 1.5, QUIET = 0.25, MiB = 2 ** 20;

// Multiply-adds count 2. Per layer: q, k, v, o; scores and PV; FFN gate, fc1, fc2.
const LAYER_FLOPS = 4 * 2 * L * D * D_ATTN + 2 * 2 * L * L * D_ATTN + 3 * 2 * L * D * D_FFN;
const FORWARD_FLOPS = LAYERS * LAYER_FLOPS;
const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

// ---------------------------------------------------------------- machine load

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));


// Waits until the 1-minute load average is at most LOAD_LIMIT, or (as it lags a finished job
// by a minute or so) other processes have kept at most QUIET cores busy for the last 20 s;
// returns the load average then, and whether either held (false: waited WAN_ENC_BENCH_WAIT s).
async function waitQuiet(label: string): Promise<{ loadavg: number; quiet: boolean }> {
  const deadline = performance.now() + 1000 * Number(process.env.WAN_ENC_BENCH_WAIT ?? 600);
  if (os.loadavg()[0] <= LOAD_LIMIT) return { loadavg: os.loadavg()[0], quiet: true };
  log(`${label}: load average ${os.loadavg()[0].toFixed(2)} > ${LOAD_LIMIT}; waiting`);
  let quietFor = 0, busy = 0;
  while (os.loadavg()[0] > LOAD_LIMIT && quietFor < 20000 && performance.now() < deadline) {
    busy = await othersBusy(2000);
    quietFor = busy <= QUIET ? quietFor + 2000 : 0;
  }
  log(`${label}: load average ${os.loadavg()[0].toFixed(2)}, other processes ${busy.toFixed(2)} cores` +
    `${os.loadavg()[0] > LOAD_LIMIT && quietFor < 20000 ? ': still busy, going ahead' : ''}`);
  return { loadavg: os.loadavg()[0], quiet: os.loadavg()[0] <= LOAD_LIMIT || quietFor >= 20000 };
}

// ---------------------------------------------------------------- the child: one measurement

interface Job { file: string; storage: Storage; reps: number; others: string[] }

// Drops this bench's other checkpoints from the page cache (GNU dd: advise DONTNEED for the
// whole file), so that they do not press on the pages of the one measured.
function dropFromCache(file: string): void {
  try {
    if (fs.existsSync(file)) execFileSync('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none']);
  } catch {
    // not GNU dd: leave the cache alone
  }
}
interface JobResult {
  loadS: number; seconds: number[]; cpuSeconds: number[]; othersCores: number[];
  hwmBeforeMiB: number; rssAfterLoadMiB: number; fileRssAfterLoadMiB: number; fileRssAfterFirstMiB: number; rssBeforeMiB: number; hwmAfterFirstMiB: number; hwmAfterMiB: number;
  outputShape: number[]; outputRms: number; nonFinite: number; threads: number; config: Record<string, unknown>;
}


async function child(job: Job): Promise<void> {
  const info = runtimeInfo();  // loads the addon and libtorch before the baseline
  const ids = new BigInt64Array(L);
  for (let i = 0; i < L; i++) ids[i] = BigInt(crypto.randomInt(VOCAB));
  const idsT = Tensor.fromTypedArray(ids, [1, L]), maskT = Tensor.fromTypedArray(new BigInt64Array(L).fill(1n), [1, L]);
  const hwmBefore = procStatusKiB('VmHWM'), rssBefore = procStatusKiB('VmRSS'), fileStart = procStatusKiB('RssFile');
  let t0 = performance.now();
  const enc = await TextEncoder.load(job.file, { textLen: L });
  const loadS = (performance.now() - t0) / 1000;
  const rssAfterLoad = procStatusKiB('VmRSS'), fileAfterLoad = procStatusKiB('RssFile');
  log(`  ${job.storage}: loaded in ${loadS.toFixed(1)} s (${JSON.stringify(enc.config)})`);
  const seconds: number[] = [], cpuSeconds: number[] = [], othersCores: number[] = [];
  let hwmAfterFirst = NaN, fileAfterFirst = NaN, outputRms = NaN, nonFinite = 0, outputShape: number[] = [];
  for (let r = 0; r < job.reps; r++) {
    const b0 = machineBusySeconds(), c0 = process.cpuUsage();
    t0 = performance.now();
    const out = await enc.encodeTokens(idsT, maskT);
    const s = (performance.now() - t0) / 1000;
    const c = process.cpuUsage(c0), own = (c.user + c.system) / 1e6;
    if (r === 0) [hwmAfterFirst, fileAfterFirst] = [procStatusKiB('VmHWM'), procStatusKiB('RssFile')];
    seconds.push(s);
    cpuSeconds.push(own);
    othersCores.push(Math.max(0, (machineBusySeconds() - b0 - own) / s));
    log(`  ${job.storage}: encode ${r + 1}/${job.reps} ${s.toFixed(1)} s (cpu/wall ${(own / s).toFixed(2)}, other processes ${othersCores[r].toFixed(2)} cores, load average ${os.loadavg()[0].toFixed(2)})`);
    if (r === job.reps - 1) {
      outputShape = out.shape;
      let sum = 0;
      for (const e of out.toTypedArray() as Float32Array) {
        if (Number.isFinite(e)) sum += e * e;
        else nonFinite++;
      }
      outputRms = Math.sqrt(sum / numel(outputShape));
    }
    out.dispose();
  }
  const hwmAfter = procStatusKiB('VmHWM');
  enc.dispose();
  const result: JobResult = {
    loadS, seconds, cpuSeconds, othersCores, threads: info.threads, config: enc.config,
    hwmBeforeMiB: hwmBefore / 1024, rssBeforeMiB: rssBefore / 1024, rssAfterLoadMiB: rssAfterLoad / 1024,
    hwmAfterFirstMiB: hwmAfterFirst / 1024, fileRssAfterLoadMiB: (fileAfterLoad - fileStart) / 1024, fileRssAfterFirstMiB: (fileAfterFirst - fileStart) / 1024, hwmAfterMiB: hwmAfter / 1024, outputShape, outputRms, nonFinite,
  };
  process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
}

// ---------------------------------------------------------------- the parent

function log(msg: string): void {
  process.stderr.write(`[bench/encoders ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

function spawnJob(job: Job): JobResult {
  const out = execFileSync(process.execPath, [__filename, '--child', JSON.stringify(job)], {
    stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 24, encoding: 'utf8',
  });
  const line = out.split('\n').reverse().find((l) => l.startsWith('RESULT '));
  if (!line) throw new Error(`${job.storage}: the child printed no result`);
  return JSON.parse(line.slice(7)) as JobResult;
}

type Good = JobResult & { loadavgBefore: number; quiet: boolean; error?: undefined };
type Measured = Good | { error: string };

// A fresh process per measurement; once more if other processes were busy during it.
async function runChild(job: Job): Promise<Measured> {
  const disturbance = (r: JobResult) => Math.min(...r.othersCores);
  // File pages of the weights reclaimed by the kernel during the encode (memory pressure from
  // other processes' page cache) would make the peak an underestimate.
  const evicted = (r: JobResult) => r.fileRssAfterLoadMiB - r.fileRssAfterFirstMiB > 64;
  const measure = async (): Promise<Good> => {
    for (const other of job.others) dropFromCache(other);
    const { loadavg: loadavgBefore, quiet } = await waitQuiet(job.storage);
    return { ...spawnJob(job), loadavgBefore, quiet };
  };
  let first;
  try {
    first = await measure();
  } catch (err) {
    const line = String((err as { stdout?: string }).stdout ?? '').split('\n').find((l) => l.startsWith('ERROR '));
    const msg = line ? line.slice(6) : String(err);
    log(`${job.storage}: FAILED: ${msg}`);
    return { error: msg };
  }
  if (disturbance(first) <= QUIET && first.quiet && !evicted(first)) return first;
  log(`${job.storage}: other processes kept ${disturbance(first).toFixed(2)} cores busy (load average before ${first.loadavgBefore.toFixed(2)}), ` +
    `${(first.fileRssAfterLoadMiB - first.fileRssAfterFirstMiB).toFixed(0)} MiB of weights reclaimed during the encode; measuring again`);
  const second = await measure().catch(() => first);
  const worse = (r: Good) => (evicted(r) ? 10 : 0) + (r.quiet ? 0 : 1) + disturbance(r);
  return worse(second) < worse(first) ? second : first;
}

// Best of 5 products; up to 3 tries while other processes keep more than QUIET cores busy.
async function gemmRate(when: string): Promise<{ rate: number; loadavg: number; others: number }> {
  let best = { rate: 0, loadavg: NaN, others: Infinity };
  for (let t = 0; t < 3 && best.others > QUIET; t++) {
    const { loadavg } = await waitQuiet(`matmul rate (${when})`);
    const b0 = machineBusySeconds(), c0 = process.cpuUsage(), t0 = performance.now();
    const seconds = native().gemmRate(L, D, D_FFN, 5);
    const c = process.cpuUsage(c0);
    const others = Math.max(0, (machineBusySeconds() - b0 - (c.user + c.system) / 1e6) / ((performance.now() - t0) / 1000));
    const rate = (2 * L * D * D_FFN) / Math.min(...seconds) / 1e9;
    log(`matmul rate (${when}): ${rate.toFixed(1)} GFLOP/s (other processes ${others.toFixed(2)} cores, load average ${loadavg.toFixed(2)})`);
    if (others < best.others) best = { rate, loadavg, others };
    if (others > QUIET) await sleep(10000);
  }
  return best;
}



const f1 = (x: number) => x.toFixed(1), f2 = (x: number) => x.toFixed(2);
const la = () => os.loadavg().map(f2).join(' ');

async function main(): Promise<void> {
  const started = performance.now();
  const dir = benchDir();
  const addon = snapshotAddon(dir);
  const info = runtimeInfo();
  console.log(`bench/encoders  node ${process.version}, ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? '?'}), ` +
    `${(os.totalmem() / 2 ** 30).toFixed(1)} GiB RAM, libtorch ${info.torchVersion} ${info.backend}, ${info.threads} threads; load average ${la()}`);
  console.log(`manifest        ${manifestPath('umt5_xxl_encoder.json')}${QUICK ? ' (QUICK: 2 layers, vocab 4096; not a measurement)' : ''}`);
  if (addon) console.log(`addon           ${addon}`);

  const storages: Storage[] = ['bf16', 'fp8'];
  const files = {} as Record<Storage, { file: string; bytes: number }>;
  for (const s of storages) files[s] = ensureUmt5Checkpoint({ storage: s, layers: LAYERS, vocab: VOCAB, log });

  const gemmStart = await gemmRate('start');
  const results = {} as Record<Storage, Measured>;
  for (let i = 0; i < storages.length; i++) {
    const storage = storages[i];
    log(`${storage}: starting`);
    const others = (['bf16', 'fp8', 'fp8-unscaled'] as Storage[]).filter((s) => s !== storage).map((s) => umt5CheckpointPath(s, LAYERS, VOCAB));
    results[storage] = await runChild({ file: files[storage].file, storage, reps: 2, others });
    if (storage === 'fp8' && results.fp8.error !== undefined) {
      log('fp8: the scaled file did not load; measuring plain (unscaled) e4m3fn weights instead');
      files['fp8-unscaled'] = ensureUmt5Checkpoint({ storage: 'fp8-unscaled', layers: LAYERS, vocab: VOCAB, log });
      storages.push('fp8-unscaled');
    }
  }
  const gemmEnd = await gemmRate('end');
  const matmul = Math.max(gemmStart.rate, gemmEnd.rate);

  console.log('');
  console.log(`matmul rate: ${f1(gemmStart.rate)} (start), ${f1(gemmEnd.rate)} (end) GFLOP/s (addon gemmRate, fp32 [${L}, ${D}] x [${D}, ${D_FFN}], best of 5; ` +
    `load average ${f2(gemmStart.loadavg)} and ${f2(gemmEnd.loadavg)} before, other processes ${f2(gemmStart.others)} and ${f2(gemmEnd.others)} cores during them; fractions below use the better)`);
  console.log(`FLOPs per encode (2 per multiply-add): ${f1(FORWARD_FLOPS / 1e9)} GFLOP = ${LAYERS} layers x ${f2(LAYER_FLOPS / 1e9)} ` +
    `(q,k,v,o ${f2((4 * 2 * L * D * D_ATTN) / 1e9)}, scores+PV ${f2((2 * 2 * L * L * D_ATTN) / 1e9)}, FFN ${f2((3 * 2 * L * D * D_FFN) / 1e9)})`);
  console.log('');
  console.log(`One ${L}-token prompt, fresh process per storage (peak = VmHWM after load + first encode - VmHWM before the load; weights = RSS growth of the load; ` +
    `file-backed RSS: RssFile growth since before the load, after the load and after the first encode; files are ${storages.map((s) => `${s} ${(files[s].bytes / MiB).toFixed(0)}`).join(', ')} MiB)`);
  const rows = storages.map((s) => {
    const r = results[s];
    if (r.error !== undefined) return [s, f2(files[s].bytes / 1e9), `FAILED (below)`, ...Array(11).fill('')];
    const best = Math.min(...r.seconds), rate = FORWARD_FLOPS / best / 1e9;
    const peak = r.hwmAfterFirstMiB - r.hwmBeforeMiB;
    return [s, f2(files[s].bytes / 1e9), f1(r.loadS), r.seconds.map(f1).join(', '), f1(rate), f2(rate / matmul),
      `${peak.toFixed(0)} (${f2((peak * MiB) / 1e9)} GB)`, (r.rssAfterLoadMiB - r.rssBeforeMiB).toFixed(0), f2((peak * MiB) / files[s].bytes),
      `${r.fileRssAfterLoadMiB.toFixed(0)} / ${r.fileRssAfterFirstMiB.toFixed(0)}`,
      r.cpuSeconds.map((c, i) => f2(c / r.seconds[i])).join(', '), r.othersCores.map(f2).join(', '), f2(r.loadavgBefore),
      r.nonFinite ? `${r.nonFinite} non-finite!` : r.outputRms.toPrecision(3)];
  });
  console.log(table(['storage', 'file GB', 'load s', 'encode s (1st, 2nd)', 'GFLOP/s (best)', 'of matmul rate', 'peak growth MiB', 'weights MiB',
    'peak / file', 'file-backed RSS after load / encode MiB', 'cpu/wall', 'other procs (cores)', 'load avg before', 'output rms'], rows));
  console.log('');
  for (const s of storages) {
    const r = results[s];
    if (r.error !== undefined) {
      console.log(`${s}: FAILED to load or encode: ${r.error.slice(0, 300)}${r.error.length > 300 ? '...' : ''}`);
      continue;
    }
    const best = Math.min(...r.seconds), peak = (r.hwmAfterFirstMiB - r.hwmBeforeMiB) * MiB;
    console.log(`${s}: encode ${f1(r.seconds[0])} s first, ${f1(best)} s best; ${f1(FORWARD_FLOPS / best / 1e9)} GFLOP/s = ` +
      `${f2(FORWARD_FLOPS / best / 1e9 / matmul)} of the matmul rate; peak memory ${f2(peak / 1e9)} GB for a ${f2(files[s].bytes / 1e9)} GB file ` +
      `(output [${r.outputShape.join(', ')}], rms ${r.outputRms.toPrecision(3)}${r.nonFinite ? `, ${r.nonFinite} non-finite` : ''})` +
      (r.fileRssAfterLoadMiB - r.fileRssAfterFirstMiB > 64 ? `; WARNING: ${(r.fileRssAfterLoadMiB - r.fileRssAfterFirstMiB).toFixed(0)} MiB of the weights were reclaimed during the encode, so the peak is an underestimate` : ''));
  }
  console.log(`load average now ${la()}; bench took ${((performance.now() - started) / 60000).toFixed(1)} min`);
}

if (process.argv[2] === '--child') {
  child(JSON.parse(process.argv[3]) as Job).catch((err) => {
    console.error(err);
    process.stdout.write(`ERROR ${String((err as Error)?.message ?? err).replace(/\n/g, ' ')}\n`);
    process.exit(1);
  });
} else {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
