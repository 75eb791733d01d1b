// VAE decode benchmark (`node dist/bench/vae.js`, after `npx tsc -p tsconfig.json`).
//
// Decodes a random latent with a VAE of the real Wan2.1 dimensions (dim 96, z 16: every key
// and shape of Wan2.1_VAE.pth from shared/manifests/wan2.1_vae.json; random fp32 weights, conv
// weights uniform in +-sqrt(3/fan_in), RMS gammas 1, biases 0; bench/synthesize.ts) through
// Vae.decodeFrames(), disposing each chunk, untiled and tiled (the default 272 x 272 tiles every
// 144 x 128), and reports for each:
//   - seconds per video frame, over the whole decode and over the steady chunks (every chunk
//     after the first decodes 4 frames with full feature caches);
//   - the achieved GFLOP/s: the decoder's FLOPs counted analytically (decodeFlops below) over
//     the seconds, next to the machine's fp32 matmul rate measured in the same run;
//   - the peak resident memory the decode adds (VmHWM growth from just before the decode to
//     after it) and what load + decode add (from just before the load), each next to
//     Vae.estimateDecodeMemory() for the same decode.
// Every measurement runs in its own child process (process.execPath on this script).
//
// The matmul rate: the addon's gemmRate(m, k, n, reps) when it exports one (seconds of each
// of `reps` fp32 at::mm calls of [m, k] x [k, n]), at 2048^3; without it the rate is reported
// as not measured.
//
// Environment: WAN_SHARED_DIR (default ../shared beside the repository root), WAN_BENCH_DIR
// (default os.tmpdir()/wan-native-bench: the 508 MB checkpoint, written once and reused),
// WAN_VAE_BENCH_SIZE (HxW, default 480x832), WAN_VAE_BENCH_FRAMES (latent frames of the untiled
// decode, default 5 = 17 video frames), WAN_VAE_BENCH_TILED_FRAMES (default 2 = 5 video
// frames: the 15 default tiles of 480x832 cost 2.8x the untiled decode per frame),
// WAN_VAE_BENCH=quick (64x64, 3 and 2 latent frames, for a smoke test).
import { execFileSync } from 'node:child_process';
import * as os from 'node:os';

import { runtimeInfo, Tensor, Vae } from '../lib/index';
import { native } from '../lib/native';
import { ensureVaeCheckpoint } from './synthesize';
import { machineBusySeconds, procStatusKiB } from './machine';

const MiB = 2 ** 20;
const GiB = 2 ** 30;
const DEFAULT_TILES = { tileX: 272, tileY: 272, tileStrideX: 144, tileStrideY: 128 };

function log(message: string): void {
  process.stderr.write(`${message}\n`);
}

// ---------------------------------------------------------------- FLOPs

// Multiply-adds count 2: a conv3d costs 2 Cin Cout kt kh kw per output element, a conv2d
// 2 Cin Cout kh kw, the middle attention 2 L^2 C for the scores and as much for P V (L = h w
// per frame), plus its two 1x1 projections. Norms, SiLU, the time interleave and the tile
// blending are not counted (elementwise, a few percent of the time at most).
// One chunk of the decoder (csrc/models/wan_vae.cpp, WanVae::run) on an h x w latent frame.
function chunkFlops(first: boolean, h: number, w: number, dim = 96, zDim = 16): number {
  const conv = (cin: number, cout: number, k: number, t: number, hh: number, ww: number) => 2 * cin * cout * k * t * hh * ww;
  const dims = [4 * dim, 4 * dim, 4 * dim, 2 * dim, dim];
  let t = 1, hh = h, ww = w, f = 0;
  f += conv(zDim, dims[0], 27, t, hh, ww);                       // decoder.conv1
  const residual = (cin: number, cout: number) =>
    conv(cin, cout, 27, t, hh, ww) + conv(cout, cout, 27, t, hh, ww) + (cin !== cout ? conv(cin, cout, 1, t, hh, ww) : 0);
  const L = hh * ww, c = dims[0];
  f += 2 * residual(c, c);                                        // middle.0, middle.2
  f += conv(c, 3 * c, 1, t, hh, ww) + conv(c, c, 1, t, hh, ww)   // middle.1 to_qkv, proj
    + t * 2 * 2 * L * L * c;                                      // scores and P V
  for (let i = 0; i < 4; i++) {
    const cin = i === 0 ? dims[0] : dims[i] / 2, cout = dims[i + 1];
    f += residual(cin, cout) + 2 * residual(cout, cout);
    if (i === 3) break;
    if (i < 2 && !first) {                                         // upsample3d: time_conv, 2x frames
      f += conv(cout, 2 * cout, 3, t, hh, ww);
      t *= 2;
    }
    hh *= 2;
    ww *= 2;
    f += conv(cout, cout / 2, 9, t, hh, ww);                       // resample.1 (conv2d 3x3)
  }
  return f + conv(dim, 3, 27, t, hh, ww);                         // head.2
}

// Tile starts as WanVae::Decoder places them (tile_starts in wan_vae.cpp).
function tileStarts(total: number, size: number, stride: number): number[] {
  const starts: number[] = [];
  for (let s = 0; ; s += stride) {
    if (s + size >= total) return [...starts, Math.max(0, total - size)];
    starts.push(s);
  }
}

function decodeFlops(frames: number, height: number, width: number, tiled: boolean): number {
  const h = height / 8, w = width / 8;
  const tiles: [number, number][] = [];
  if (tiled) {
    const th = Math.min(DEFAULT_TILES.tileY / 8, h), tw = Math.min(DEFAULT_TILES.tileX / 8, w);
    const ys = tileStarts(h, th, DEFAULT_TILES.tileStrideY / 8), xs = tileStarts(w, tw, DEFAULT_TILES.tileStrideX / 8);
    for (let i = 0; i < ys.length * xs.length; i++) tiles.push([th, tw]);
  } else {
    tiles.push([h, w]);
  }
  let f = 2 * 16 * 16 * frames * h * w;  // post-quant conv
  for (let k = 0; k < frames; k++) for (const [th, tw] of tiles) f += chunkFlops(k === 0, th, tw);
  return f;
}

// ---------------------------------------------------------------- the child: one decode

interface Job { file: string; frames: number; height: number; width: number; tiled: boolean; label: string }

interface Estimate { bytes: number; breakdown: Record<string, number>; peakAt: string }

interface JobResult {
  job: Job;
  threads: number;
  estimate: Estimate;
  hwmBeforeLoad: number;
  rssBeforeDecode: number;
  hwmBeforeDecode: number;
  hwmAfter: number;
  chunkSeconds: number[];
  chunkFrames: number[];
  cpuSeconds: number;
  othersCores: number;  // cores other processes kept busy during the decode
}

async function child(job: Job): Promise<void> {
  const threads = runtimeInfo().threads;  // starts libtorch before the baseline
  const hwmBeforeLoad = 1024 * procStatusKiB('VmHWM');
  const vae = await Vae.load(job.file);
  const tiling = job.tiled ? { tiled: true, ...DEFAULT_TILES } : {};
  const estimate = vae.estimateDecodeMemory({ frames: job.frames, height: job.height, width: job.width, call: 'decodeFrames', ...tiling });
  const h = job.height / 8, w = job.width / 8;
  const z = new Float32Array(16 * job.frames * h * w);
  for (let i = 0; i < z.length; i++) z[i] = Math.sin(i * 12.9898) * 2;
  const latent = Tensor.fromTypedArray(z, [16, job.frames, h, w]);
  const rssBeforeDecode = 1024 * procStatusKiB('VmRSS'), hwmBeforeDecode = 1024 * procStatusKiB('VmHWM');
  const chunkSeconds: number[] = [], chunkFrames: number[] = [];
  const busy0 = machineBusySeconds(), cpu0 = process.cpuUsage(), start = performance.now();
  let t0 = start;
  for await (const chunk of vae.decodeFrames(latent, tiling)) {
    const now = performance.now();
    chunkSeconds.push((now - t0) / 1000);
    chunkFrames.push(chunk.shape[1]);
    log(`  ${job.label}: chunk ${chunkSeconds.length}/${job.frames}, ${chunk.shape[1]} frames in ${((now - t0) / 1000).toFixed(1)} s`);
    chunk.dispose();
    t0 = performance.now();
  }
  const wall = (performance.now() - start) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const cpuSeconds = (cpu.user + cpu.system) / 1e6;
  const othersCores = Math.max(0, (machineBusySeconds() - busy0 - cpuSeconds) / wall);
  const result: JobResult = {
    job, threads, estimate, hwmBeforeLoad, rssBeforeDecode, hwmBeforeDecode, hwmAfter: 1024 * procStatusKiB('VmHWM'),
    chunkSeconds, chunkFrames, cpuSeconds, othersCores,
  };
  process.stdout.write(JSON.stringify(result));
}

function runChild(job: Job): JobResult {
  log(`${job.label}: decoding in a fresh process`);
  const out = execFileSync(process.execPath, [__filename, 'child', JSON.stringify(job)],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 20 });
  return JSON.parse(out) as JobResult;
}

// ---------------------------------------------------------------- the parent

function gemmRate(): { gflops: number; shape: string } | undefined {
  const addon = native() as unknown as { gemmRate?: (m: number, k: number, n: number, reps: number) => number[] };
  if (typeof addon.gemmRate !== 'function') return undefined;
  const n = 2048;
  const seconds = addon.gemmRate(n, n, n, 7).sort((a, b) => a - b);
  return { gflops: (2 * n * n * n) / seconds[Math.floor(seconds.length / 2)] / 1e9, shape: `[${n}, ${n}] x [${n}, ${n}]` };
}

async function main(): Promise<void> {
  const quick = process.env.WAN_VAE_BENCH === 'quick';
  const [height, width] = (quick ? '64x64' : process.env.WAN_VAE_BENCH_SIZE ?? '480x832').split('x').map(Number);
  const frames = Number(process.env.WAN_VAE_BENCH_FRAMES ?? (quick ? 3 : 5));
  const tiledFrames = Number(process.env.WAN_VAE_BENCH_TILED_FRAMES ?? 2);
  for (const [name, v] of [['height', height], ['width', width]] as const)
    if (!Number.isSafeInteger(v) || v <= 0 || v % 8 !== 0) throw new Error(`bench/vae: ${name} ${v} is not a positive multiple of 8`);
  const file = ensureVaeCheckpoint({ generator: 'wan-native bench/vae.ts v1 (random f32: U(+-sqrt(3/fan_in)), gammas 1, biases 0)', log });
  const info = runtimeInfo();
  log(`libtorch ${info.torchVersion}, ${info.threads} threads, ${os.cpus()[0]?.model ?? 'unknown CPU'}, ${(os.totalmem() / GiB).toFixed(1)} GiB`);

  const gemm = gemmRate();
  log(gemm ? `fp32 matmul ${gemm.shape}: ${gemm.gflops.toFixed(1)} GFLOP/s (median of 7)` : 'fp32 matmul rate: not measured (the addon has no gemmRate)');

  const jobs: Job[] = [
    { file, frames, height, width, tiled: false, label: `untiled ${height}x${width}, ${1 + 4 * (frames - 1)} frames` },
    { file, frames: tiledFrames, height, width, tiled: true, label: `tiled ${height}x${width}, ${1 + 4 * (tiledFrames - 1)} frames` },
  ];
  const rows: string[] = [];
  const summary: string[] = [];
  for (const job of jobs) {
    const r = runChild(job);
    const videoFrames = r.chunkFrames.reduce((a, b) => a + b, 0);
    const seconds = r.chunkSeconds.reduce((a, b) => a + b, 0);
    const steadyS = r.chunkSeconds.slice(1).reduce((a, b) => a + b, 0), steadyFrames = videoFrames - r.chunkFrames[0];
    const flops = decodeFlops(job.frames, height, width, job.tiled);
    const steadyFlops = flops - decodeFlops(1, height, width, job.tiled);
    const gflops = flops / seconds / 1e9, steadyGflops = steadyFrames ? steadyFlops / steadyS / 1e9 : NaN;
    const measured = r.hwmAfter - r.hwmBeforeDecode, total = r.hwmAfter - r.hwmBeforeLoad;
    const e = r.estimate, estDecode = e.bytes - e.breakdown.weights;
    const pct = (a: number, b: number) => `${a >= b ? '+' : ''}${(100 * (a / b - 1)).toFixed(1)}%`;
    rows.push([
      job.label, videoFrames, seconds.toFixed(1), (seconds / videoFrames).toFixed(2),
      steadyFrames ? (steadyS / steadyFrames).toFixed(2) : '-', (flops / 1e12).toFixed(2), gflops.toFixed(1),
      Number.isNaN(steadyGflops) ? '-' : steadyGflops.toFixed(1),
      gemm ? `${(100 * steadyGflops / gemm.gflops).toFixed(0)}%` : '-',
      (measured / GiB).toFixed(2), (estDecode / GiB).toFixed(2), pct(estDecode, measured),
      (total / GiB).toFixed(2), (e.bytes / GiB).toFixed(2), pct(e.bytes, total), r.othersCores.toFixed(2),
    ].join(' | '));
    summary.push(`${job.label}: ${(seconds / videoFrames).toFixed(2)} s/frame (steady ${steadyFrames ? (steadyS / steadyFrames).toFixed(2) : '-'}), ` +
      `${steadyGflops.toFixed(1)} GFLOP/s steady; decode peak +${(measured / GiB).toFixed(2)} GiB VmHWM, estimated ${(estDecode / GiB).toFixed(2)} (${pct(estDecode, measured)}); ` +
      `chunks ${r.chunkSeconds.map((s) => s.toFixed(1)).join(', ')} s; cpu/wall ${(r.cpuSeconds / seconds).toFixed(2)}; ` +
      `estimate breakdown (MiB) ${Object.entries(e.breakdown).map(([k, v]) => `${k} ${(v / MiB).toFixed(0)}`).join(', ')}; peak at ${e.peakAt}; ` +
      `RSS before decode ${(r.rssBeforeDecode / MiB).toFixed(0)} MiB, VmHWM ${(r.hwmBeforeDecode / MiB).toFixed(0)} MiB`);
  }
  console.log(`# VAE decode, dim 96, random fp32 weights, ${info.threads} threads, libtorch ${info.torchVersion}`);
  console.log(gemm ? `fp32 matmul rate ${gemm.shape}: ${gemm.gflops.toFixed(1)} GFLOP/s (median of 7, gemmRate)` : 'fp32 matmul rate: not measured');
  console.log('| decode | frames | s | s/frame | s/frame steady | TFLOP | GFLOP/s | GFLOP/s steady | of matmul | decode peak GiB | estimate GiB | error | load+decode GiB | estimate GiB | error | other cores |');
  console.log('|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|');
  for (const r of rows) console.log(`| ${r} |`);
  for (const s of summary) console.log(s);
}

if (process.argv[2] === 'child') {
  child(JSON.parse(process.argv[3]) as Job).catch((err) => {
    console.error(err);
    process.exit(1);
  });
} else if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}

export { chunkFlops, decodeFlops };
