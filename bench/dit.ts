// DiT forward benchmark (`node dist/bench/dit.js`, after `npx tsc -p tsconfig.json`).
//
// One WanModel.forward at the real Wan2.1 T2V 1.3B dimensions (dim 1536, ffn 8960, 12 heads,
// 30 blocks; random weights) on this machine, per (tokens, storage dtype, attention mode):
//   - seconds, the model's FLOPs / seconds, and that rate as a fraction of the machine's
//     fp32 matmul rate measured in the same run;
//   - the peak resident memory a fresh process gains from just before the load to just after
//     the forward (VmHWM growth; the weights are mapped from the file, so file-backed pages
//     count, as they do for any process that reads a checkpoint).
// Every measurement runs in its own child process (process.execPath on this script).
//
// The checkpoints are synthesised by bench/synthesize.ts (ensureDitCheckpoint) from
// shared/manifests/wan2.1_t2v_1.3B_dit.json (every key and shape of the real one) and streamed to
// WAN_BENCH_DIR (default os.tmpdir()/wan-native-bench), once per storage dtype (F32 5.7 GB, BF16
// 2.8 GB, F8_E4M3 1.4 GB; reused when the size and the header match). Every tensor is stored in
// that dtype. Values: linear and conv weights uniform in +-sqrt(3/fan_in) (variance 1/fan_in, so
// activations keep their scale through the blocks), biases 0, norm weights 1, modulation uniform
// in +-sqrt(3/dim); fp8 values are the nearest e4m3fn codes of those values (never the 0x7F/0xFF
// NaN codes).
//
// The matmul rate: the addon's gemmRate(m, k, n, reps) (seconds of each of `reps` fp32 at::mm
// of [m, k] x [k, n]) at the FFN shape [tokens, 1536] x [1536, 8960], best of 5, in a child
// process at the start and at the end; the fractions use the better of the two. Also (and
// instead, with an addon that has no gemmRate) a "GEMM probe": a 1-block model with text_dim
// 8960 fed a [tokens, 8960] context and a 1-patch latent, whose forward is almost all fp32
// GEMMs of the DiT's own shapes through the model's own linear layers ([L, 8960] x [8960, 1536]
// in text_embedding.0, then three [L, 1536] x [1536, 1536]), plus a copy of the context and a
// GELU: what the model's linear layers reach, rather than what the machine can do.
//
// Also times 1-block and 2-block models (best of 3 forwards, first one reported too), which
// tells the cost of one block, the cost outside the blocks, and what bf16/fp8 storage adds
// per block (each linear widens its weight to fp32 on every call).
//
// The machine may be shared: before each measurement the bench waits (up to 5 minutes) for
// other processes to go quiet, reports the cores they kept busy during each timed forward
// (/proc/stat minus this process), and measures a job again (3 attempts in all) while that
// exceeded 0.25 cores.
//
// Environment: WAN_SHARED_DIR (default ../shared beside the repository root), WAN_BENCH_DIR,
// WAN_DIT_BENCH=quick (1,024 tokens, bf16, flash, and the matmul rates only),
// WAN_DIT_BENCH_WAIT (seconds to wait for quiet, default 300), WAN_DIT_BENCH_ATTEMPTS (3).
import { execFileSync } from 'node:child_process';
import * as os from 'node:os';

import { runtimeInfo, Tensor, WanModel } from '../lib/index';
import type { AttentionMode } from '../lib/model';
import { native } from '../lib/native';
import { benchDir, DIT_MANIFEST, ditSpecs, ensureDitCheckpoint, ensureDitLikeCheckpoint, manifestPath, type Storage, type TensorSpec } from './synthesize';
import { machineBusySeconds, othersBusy, procStatusKiB, snapshotAddon, table } from './machine';

const MiB = 2 ** 20;

// ---------------------------------------------------------------- dimensions and FLOPs

const D = 1536, FFN = 8960, LAYERS = 30, TEXT_LEN = 512, TEXT_DIM = 4096, FREQ_DIM = 256;
const PATCH_IN = 16 * 1 * 2 * 2, PATCH_OUT = 16 * 1 * 2 * 2;

interface FlopShape { tokens: number; layers: number; textLen?: number; textDim?: number; ffn?: number }
interface Flops { total: number; gemm: number; attention: number }

// Multiply-adds count 2. Per block: self-attention q, k, v, o projections, scores and PV;
// cross-attention q, o over the tokens, k, v over the text tokens, scores and PV; the FFN.
// Outside: text embedding, time embedding and projection, patch embedding, head.
function forwardFlops({ tokens: L, layers, textLen = TEXT_LEN, textDim = TEXT_DIM, ffn = FFN }: FlopShape): Flops {
  const d = D;
  const blockGemm = 4 * 2 * L * d * d + 2 * 2 * L * d * d + 2 * 2 * textLen * d * d + 2 * 2 * L * d * ffn;
  const blockAttention = 2 * 2 * L * L * d + 2 * 2 * L * textLen * d;
  const outside = 2 * textLen * textDim * d + 2 * textLen * d * d  // text embedding
    + 2 * FREQ_DIM * d + 2 * d * d + 2 * d * 6 * d                 // time embedding, projection
    + 2 * L * PATCH_IN * d + 2 * L * d * PATCH_OUT;                // patch embedding, head
  const gemm = layers * blockGemm + outside;
  const attention = layers * blockAttention;
  return { total: gemm + attention, gemm, attention };
}

// ---------------------------------------------------------------- synthetic checkpoints

// The GEMM probe: one block, text_embedding.0 taking an 8960-wide context.
function probeSpecs(): TensorSpec[] {
  return ditSpecs(1).map((s) => (s.key === 'text_embedding.0.weight' ? { key: s.key, shape: [D, FFN] } : s));
}

// ---------------------------------------------------------------- the child: one measurement

interface Job {
  kind: 'forward' | 'probe' | 'gemm';
  file: string;
  tokens: number;        // forward: latent tokens; probe: context tokens
  attention: AttentionMode;
  reps: number;
  label: string;
}

interface JobResult {
  job: Job;
  threads: number;
  loadS: number;
  seconds: number[];     // wall seconds of each timed forward
  cpuSeconds: number[];  // process CPU seconds (all threads) of each
  othersCores: number[]; // cores other processes kept busy during each (from /proc/stat)
  warmupS: number;       // the first forward of the process (1 patch, seqLen 64)
  smallS: number[];      // two more of those, seqLen 1
  hwmBeforeMiB: number;  // VmHWM just before the load
  rssAfterLoadMiB: number;
  hwmAfterMiB: number;   // VmHWM after the last forward
  rssBeforeMiB: number;
  outputRms: number;
  nonFinite: number;
  patchPads: boolean;
  latent: number[];
  seqLen: number;
  loadavg: number[];
}


function uniformUnitVariance(n: number): Float32Array {
  const a = new Float32Array(n);
  const b = Math.sqrt(3);
  for (let i = 0; i < n; i++) a[i] = (Math.random() * 2 - 1) * b;
  return a;
}

// Latent [16, F, H, W] giving `tokens` patches: F * H/2 * W/2 = tokens, F = 4 when possible.
// `pads`: the patch embedding was seen padding its input by the patch size (conv3d called
// with padding = stride gives grid (F + 2, H/2 + 2, W/2 + 2)); then the latent is chosen so
// that the padded grid has `tokens` patches, and the report says so.
function latentShape(tokens: number, pads: boolean): number[] {
  for (const f of [4, 1]) {
    if (tokens % f) continue;
    const side = Math.sqrt(tokens / f);
    if (!Number.isInteger(side)) continue;
    if (!pads) return [16, f, 2 * side, 2 * side];
    if (f - 2 >= 1 && side - 2 >= 1) return [16, f - 2, 2 * (side - 2), 2 * (side - 2)];
  }
  throw new Error(`bench/dit: no latent shape for ${tokens} tokens`);
}

// Output [C, F', 2h, 2w] -> the F' * h * w tokens the model saw.
const outputTokens = (shape: number[]) => shape[1] * (shape[2] / 2) * (shape[3] / 2);

type GemmRate = (m: number, k: number, n: number, reps: number) => number[];

// gemmRate at the FFN shape [tokens, 1536] x [1536, 8960], one product per call (each call
// also makes its inputs and runs one untimed product), so each is checked for disturbance.
function gemmChild(job: Job): void {
  const fn = (native() as unknown as { gemmRate?: GemmRate }).gemmRate;
  const seconds: number[] = [], othersCores: number[] = [];
  if (typeof fn === 'function') {
    for (let r = 0; r < job.reps; r++) {
      const b0 = machineBusySeconds(), c0 = process.cpuUsage(), t0 = performance.now();
      seconds.push(fn(job.tokens, D, FFN, 1)[0]);
      const c = process.cpuUsage(c0), wall = (performance.now() - t0) / 1000;
      othersCores.push(Math.max(0, (machineBusySeconds() - b0 - (c.user + c.system) / 1e6) / wall));
    }
    log(`  ${job.label}: ${seconds.map((x) => ((2 * job.tokens * D * FFN) / x / 1e9).toFixed(1)).join(', ')} GFLOP/s (other processes ${othersCores.map((x) => x.toFixed(2)).join(', ')} cores)`);
  }
  process.stdout.write(`RESULT ${JSON.stringify({ job, seconds, othersCores })}\n`);
}

async function child(job: Job): Promise<void> {
  if (job.kind === 'gemm') return gemmChild(job);
  const info = runtimeInfo();  // loads the addon and libtorch before the baseline
  const loadavg = os.loadavg();
  const hwmBefore = procStatusKiB('VmHWM'), rssBefore = procStatusKiB('VmRSS');
  const probe = job.kind === 'probe';
  let t0 = performance.now();
  const model = await WanModel.load(job.file, { attentionMode: job.attention, ...(probe ? { textLen: job.tokens } : {}) });
  const loadS = (performance.now() - t0) / 1000;
  const rssAfterLoad = procStatusKiB('VmRSS');
  const cfg = model.config;
  log(`  ${job.label}: loaded in ${loadS.toFixed(1)} s (${cfg.numLayers} blocks, dim ${cfg.dim}, ffn ${cfg.ffnDim}, text ${cfg.textLen} x ${cfg.textDim}, ${info.threads} threads, compute ${cfg.computeDtype})`);

  const ctxLen = probe ? job.tokens : TEXT_LEN;
  const t = Tensor.fromTypedArray(new BigInt64Array([500n]), [1]);
  const context = Tensor.fromTypedArray(uniformUnitVariance(ctxLen * cfg.textDim), [ctxLen, cfg.textDim]);

  // An untimed forward of a [16, 1, 2, 2] latent (1 patch) first, so that library start-up is
  // not timed; its output shape also tells whether the patch embedding pads its input.
  const xs = Tensor.fromTypedArray(uniformUnitVariance(16 * 4), [16, 1, 2, 2]);
  t0 = performance.now();
  const warm = await model.forward({ x: [xs], t, context: [context], seqLen: 64 });
  const warmupS = (performance.now() - t0) / 1000;
  const patchPads = outputTokens(warm[0].shape) !== 1;
  if (patchPads) log(`  ${job.label}: WARNING: a 1-patch latent [16, 1, 2, 2] came out as [${warm[0].shape.join(', ')}]: the patch embedding pads its input`);
  for (const o of warm) o.dispose();
  // Two more (forward jobs): what a forward costs whatever the token count (every weight
  // read, and widened to fp32 when stored narrower; the text embedding; the cross-attention
  // k, v over the 512 text tokens), without the first forward's one-time costs.
  const smallS: number[] = [];
  for (let r = 0; !probe && r < 2; r++) {
    t0 = performance.now();
    for (const o of await model.forward({ x: [xs], t, context: [context], seqLen: patchPads ? 27 : 1 })) o.dispose();
    smallS.push((performance.now() - t0) / 1000);
  }

  // The probe feeds the smallest latent (1 patch, or 27 when the patch embedding pads).
  const shape = probe ? [16, 1, 2, 2] : latentShape(job.tokens, patchPads);
  const seqLen = probe ? (patchPads ? 27 : 1) : job.tokens;
  const x = probe ? xs : Tensor.fromTypedArray(uniformUnitVariance(shape.reduce((a, b) => a * b, 1)), shape);

  const seconds: number[] = [], cpuSeconds: number[] = [], othersCores: number[] = [];
  let outputRms = NaN, nonFinite = 0;
  for (let r = 0; r < job.reps; r++) {
    const b0 = machineBusySeconds();
    const c0 = process.cpuUsage();
    t0 = performance.now();
    const outs = await model.forward({ x: [x], t, context: [context], seqLen });
    const s = (performance.now() - t0) / 1000;
    const c = process.cpuUsage(c0);
    const own = (c.user + c.system) / 1e6;
    const others = Math.max(0, (machineBusySeconds() - b0 - own) / s);
    seconds.push(s);
    cpuSeconds.push(own);
    othersCores.push(others);
    log(`  ${job.label}: forward ${r + 1}/${job.reps} ${s.toFixed(2)} s (cpu/wall ${(own / s).toFixed(2)}, other processes ${others.toFixed(2)} cores)`);
    if (outputTokens(outs[0].shape) !== seqLen)
      throw new Error(`${job.label}: the output [${outs[0].shape.join(', ')}] holds ${outputTokens(outs[0].shape)} tokens, expected ${seqLen}`);
    if (r === job.reps - 1) {
      const v = outs[0].toTypedArray() as Float32Array;
      let sum = 0;
      for (const e of v) {
        if (Number.isFinite(e)) sum += e * e;
        else nonFinite++;
      }
      outputRms = Math.sqrt(sum / v.length);
    }
    for (const o of outs) o.dispose();
  }
  const hwmAfter = procStatusKiB('VmHWM');
  model.dispose();
  const result: JobResult = {
    job, threads: info.threads, loadS, seconds, cpuSeconds, othersCores, warmupS, smallS,
    hwmBeforeMiB: hwmBefore / 1024, rssBeforeMiB: rssBefore / 1024, rssAfterLoadMiB: rssAfterLoad / 1024,
    hwmAfterMiB: hwmAfter / 1024, outputRms, nonFinite, loadavg, patchPads, latent: shape, seqLen,
  };
  process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
}

// ---------------------------------------------------------------- the parent

function log(msg: string): void {
  process.stderr.write(`[bench/dit ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

const QUIET = 0.25;  // cores other processes may keep busy for a measurement to count as quiet

// Waits (up to WAN_DIT_BENCH_WAIT seconds, default 300) for other processes to go quiet.
async function waitQuiet(label: string): Promise<void> {
  const deadline = performance.now() + 1000 * Number(process.env.WAN_DIT_BENCH_WAIT ?? 300);
  let busy = await othersBusy(2000);
  if (busy <= QUIET) return;
  log(`${label}: other processes keep ${busy.toFixed(2)} cores busy; waiting for a quieter machine`);
  while (busy > QUIET && performance.now() < deadline) busy = await othersBusy(10000);
  log(`${label}: ${busy > QUIET ? `still ${busy.toFixed(2)} busy cores; going ahead` : 'quiet now'}`);
}

function spawnJob(job: Job): JobResult {
  const out = execFileSync(process.execPath, [__filename, '--child', JSON.stringify(job)], {
    stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 24, encoding: 'utf8',
  });
  const line = out.split('\n').reverse().find((l) => l.startsWith('RESULT '));
  if (!line) throw new Error(`${job.label}: the child printed no result`);
  return JSON.parse(line.slice(7)) as JobResult;
}

// One measurement in a fresh process; measured again (up to WAN_DIT_BENCH_ATTEMPTS times in
// all, default 3, when the timed forwards took under 4 minutes) while other processes were
// busy during it, keeping the least disturbed.
async function runChild(job: Job): Promise<JobResult> {
  const attempts = Math.max(1, Number(process.env.WAN_DIT_BENCH_ATTEMPTS ?? 3) | 0);
  // What other processes did during the forward that counts (the fastest of the reps).
  const disturbance = (r: JobResult) => (r.seconds.length ? r.othersCores[r.seconds.indexOf(min(r.seconds))] : 0);
  let best: JobResult | undefined;
  for (let a = 1; a <= attempts; a++) {
    await waitQuiet(job.label);
    log(`${job.label}: starting${a > 1 ? ` (attempt ${a})` : ''}`);
    const r = spawnJob(job);
    if (!best || disturbance(r) < disturbance(best)) best = r;
    if (disturbance(best) <= QUIET || r.seconds.reduce((x, y) => x + y, 0) > 240) break;
    if (a < attempts) log(`${job.label}: other processes kept ${disturbance(r).toFixed(2)} cores busy during it; measuring again`);
  }
  return best!;
}



const min = (xs: number[]) => Math.min(...xs);
const f1 = (x: number) => x.toFixed(1), f2 = (x: number) => x.toFixed(2);

async function main(): Promise<void> {
  const quick = process.env.WAN_DIT_BENCH === 'quick';
  const started = performance.now();
  const dir = benchDir();
  const addon = snapshotAddon(dir);
  const info = runtimeInfo();
  console.log(`bench/dit  node ${process.version}, ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? '?'}), ` +
    `${(os.totalmem() / 2 ** 30).toFixed(1)} GiB RAM, libtorch ${info.torchVersion} ${info.backend}, ${info.threads} threads`);
  console.log(`manifest   ${manifestPath(DIT_MANIFEST)}`);
  if (addon) console.log(`addon      ${addon}`);

  const storages: Storage[] = quick ? ['bf16'] : ['f32', 'bf16', 'fp8'];
  const full: Partial<Record<Storage, string>> = {};
  for (const s of storages) full[s] = ensureDitCheckpoint({ storage: s, log });
  const probeFile = ensureDitLikeCheckpoint({ name: 'dit-gemm-probe', specs: probeSpecs(), storage: 'f32', what: 'GEMM probe: 1 block, text_dim 8960', log });
  const small: Record<string, string> = {};
  if (!quick) for (const blocks of [1, 2]) for (const s of storages)
    small[`${blocks}.${s}`] = ensureDitCheckpoint({ blocks, storage: s, log });

  const tokenCounts = quick ? [1024] : [1024, 4096];
  // ---- the matmul rate, before and after everything else
  const probeRates: Record<number, number[]> = {};
  let probeSeqLen = 1;
  const runProbes = async (when: string) => {
    for (const tokens of tokenCounts) {
      const r = await runChild({ kind: 'probe', file: probeFile, tokens, attention: 'sdpa', reps: 3, label: `GEMM probe ${tokens} x 8960 (${when})` });
      const rate = forwardFlops({ tokens: r.seqLen, layers: 1, textLen: tokens, textDim: FFN }).total / min(r.seconds) / 1e9;
      probeSeqLen = r.seqLen;
      (probeRates[tokens] ??= []).push(rate);
      log(`GEMM probe ${tokens} (${when}): ${f1(rate)} GFLOP/s (best of ${r.seconds.map(f2).join(', ')} s)`);
    }
  };
  await runProbes('start');
  const gemmRates: Record<number, number[]> = {};
  const runGemm = async (when: string) => {
    for (const tokens of tokenCounts) {
      const r = await runChild({ kind: 'gemm', file: '', tokens, attention: 'sdpa', reps: 5, label: `gemmRate [${tokens}, ${D}] x [${D}, ${FFN}] (${when})` });
      if (r.seconds.length) (gemmRates[tokens] ??= []).push((2 * tokens * D * FFN) / min(r.seconds) / 1e9);
      else log('matmul rate: unavailable (the addon has no gemmRate)');
    }
  };
  await runGemm('start');

  // ---- full 30-block forwards
  const plan: { tokens: number; storage: Storage; attention: AttentionMode }[] = [];
  for (const storage of storages) for (const attention of (quick ? ['flash'] : ['flash', 'sdpa']) as AttentionMode[])
    plan.push({ tokens: 1024, storage, attention });
  if (!quick) for (const attention of ['flash', 'sdpa'] as AttentionMode[]) plan.push({ tokens: 4096, storage: 'bf16', attention });
  const fullResults: { tokens: number; storage: Storage; attention: AttentionMode; r: JobResult }[] = [];
  for (const p of plan)
    fullResults.push({ ...p, r: await runChild({ kind: 'forward', file: full[p.storage]!, tokens: p.tokens, attention: p.attention, reps: 1, label: `${p.tokens} tokens ${p.storage} ${p.attention}` }) });

  // ---- 1 and 2 blocks: where the time goes
  // (sdpa at both token counts, flash at 1,024 only: flash at 4,096 is timed by the full run)
  const smallResults: { tokens: number; storage: Storage; attention: AttentionMode; blocks: number; r: JobResult }[] = [];
  const smallPlan: { tokens: number; attention: AttentionMode }[] = quick ? [] : [
    { tokens: 1024, attention: 'sdpa' }, { tokens: 1024, attention: 'flash' }, { tokens: 4096, attention: 'sdpa' }];
  for (const { tokens, attention } of smallPlan) for (const storage of storages) for (const blocks of [1, 2])
    smallResults.push({ tokens, storage, attention, blocks, r: await runChild({ kind: 'forward', file: small[`${blocks}.${storage}`], tokens, attention, reps: 3, label: `${tokens} tokens ${storage} ${attention}, ${blocks} block(s)` }) });

  await runProbes('end');
  await runGemm('end');

  // ---- report
  const haveGemm = tokenCounts.every((t) => gemmRates[t]?.length);
  const rateFor = (tokens: number) => Math.max(...(haveGemm ? gemmRates[tokens] : probeRates[tokens]));
  console.log('');
  for (const tokens of tokenCounts) {
    const pr = probeRates[tokens];
    const gf = forwardFlops({ tokens: probeSeqLen, layers: 1, textLen: tokens, textDim: FFN });
    const gr = gemmRates[tokens];
    console.log(`matmul rate at ${tokens} tokens: ` + (gr?.length
      ? `${gr.map(f1).join(' (start), ')} (end) GFLOP/s (addon gemmRate, fp32 [${tokens}, ${D}] x [${D}, ${FFN}], best of 5); `
      : 'addon gemmRate: unavailable; ') +
      `GEMM probe (the model's own linear layers: fp32 [${tokens}, ${FFN}] x [${FFN}, ${D}] + 3 x [${tokens}, ${D}] x [${D}, ${D}] inside a forward, ${f1(gf.total / 1e9)} GFLOP): ` +
      `${pr.map(f1).join(' (start), ')} (end) GFLOP/s` + (gr?.length ? `, ${f2(Math.max(...pr) / Math.max(...gr))} of gemmRate` : ''));
  }
  console.log(`fractions below use ${haveGemm ? 'the better of the two gemmRate runs' : 'the better of the two GEMM probe runs'} at the same token count`);
  console.log('');
  const rows = fullResults.map(({ tokens, storage, attention, r }) => {
    const fl = forwardFlops({ tokens, layers: LAYERS });
    const s = r.seconds[0];
    const rate = fl.total / s / 1e9;
    return [tokens, storage, attention, f1(s), f1(fl.total / 1e9), f1(rate), f2(rate / rateFor(tokens)),
      (r.hwmAfterMiB - r.hwmBeforeMiB).toFixed(0), (r.rssAfterLoadMiB - r.rssBeforeMiB).toFixed(0),
      f2(r.cpuSeconds[0] / s), f2(r.othersCores[0]), f2(r.warmupS), f2(min(r.smallS)), r.nonFinite ? `${r.nonFinite} non-finite!` : r.outputRms.toPrecision(3)];
  });
  console.log('One forward, 30 blocks (fresh process each; peak = VmHWM after the forward - VmHWM before the load; weights = RSS growth of ' +
    'the load alone; first forward = the untimed first forward of the process, a [16, 1, 2, 2] latent (seqLen 64); 1-patch forward = the best of ' +
    'two more of those (seqLen 1): the per-forward cost that does not grow with the tokens (every weight read, and widened to fp32 when stored narrower; ' +
    `the text embedding; the cross-attention k and v of the 512 text tokens: ${f1(forwardFlops({ tokens: 1, layers: LAYERS }).total / 1e9)} GFLOP))`);
  console.log(table(['tokens', 'storage', 'attention', 'seconds', 'GFLOP', 'GFLOP/s', 'of matmul rate', 'peak RSS growth MiB', 'weights MiB', 'cpu/wall', 'other procs (cores)', 'first forward (1 patch) s', '1-patch forward s', 'output rms'], rows));

  if (smallResults.length) {
    console.log('');
    console.log('1 and 2 blocks (best of 3 forwards in one process; the first in brackets); per block = 2 blocks - 1 block, outside = 1 block - per block');
    const srows: (string | number)[][] = [];
    for (const { tokens, attention } of smallPlan) for (const storage of storages) {
      const pick = (blocks: number) => smallResults.find((x) => x.tokens === tokens && x.storage === storage && x.attention === attention && x.blocks === blocks)!.r;
      const one = pick(1), two = pick(2);
      const perBlock = min(two.seconds) - min(one.seconds);
      const outside = min(one.seconds) - perBlock;
      const blockFl = forwardFlops({ tokens, layers: 2 }).total - forwardFlops({ tokens, layers: 1 }).total;
      const blockGemm = forwardFlops({ tokens, layers: 2 }).gemm - forwardFlops({ tokens, layers: 1 }).gemm;
      const fullRun = fullResults.find((x) => x.tokens === tokens && x.storage === storage && x.attention === attention);
      srows.push([tokens, storage, attention, `${f2(min(one.seconds))} (${f2(one.seconds[0])})`, `${f2(min(two.seconds))} (${f2(two.seconds[0])})`,
        f2(perBlock), f1(blockFl / perBlock / 1e9), f2(blockGemm / 1e9 / rateFor(tokens)), f2(outside),
        f1(outside + LAYERS * perBlock), fullRun ? f1(fullRun.r.seconds[0]) : '-',
        f2(Math.max(one.othersCores[one.seconds.indexOf(min(one.seconds))], two.othersCores[two.seconds.indexOf(min(two.seconds))]))]);
    }
    console.log(table(['tokens', 'storage', 'attention', '1 block s', '2 blocks s', 'per block s', 'block GFLOP/s', 'block GEMMs at matmul rate s', 'outside blocks s', '30-block estimate s', '30-block measured s', 'other procs (cores)'], srows));
  }
  console.log('');
  console.log(`FLOPs per forward (2 per multiply-add): ${tokenCounts.map((t) => {
    const f = forwardFlops({ tokens: t, layers: LAYERS });
    return `${t} tokens ${f1(f.total / 1e9)} GFLOP (GEMMs ${f1(f.gemm / 1e9)}, attention scores and PV ${f1(f.attention / 1e9)})`;
  }).join('; ')}`);
  const all = [...fullResults.map((x) => x.r), ...smallResults.map((x) => x.r)];
  if (all.some((r) => r.patchPads))
    console.log(`WARNING: the patch embedding padded its input (a [16, 1, 2, 2] latent gave more than 1 patch); the latents were ` +
      `shrunk so that the model still saw the stated token counts: ${[...new Set(fullResults.map(({ tokens, r }) => `${tokens} tokens <- x [${r.latent.join(', ')}]`))].join(', ')}`);
  else
    console.log(`latents: ${[...new Set(fullResults.map(({ tokens, r }) => `${tokens} tokens <- x [${r.latent.join(', ')}]`))].join(', ')}; context [${TEXT_LEN}, ${TEXT_DIM}], t = [500]`);
  console.log(`load average now ${os.loadavg().map(f2).join(' ')}; bench took ${((performance.now() - started) / 60000).toFixed(1)} min`);
}

if (process.argv[2] === '--child') {
  child(JSON.parse(process.argv[3]) as Job).catch((err) => {
    console.error(err);
    process.exit(1);
  });
} else {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
