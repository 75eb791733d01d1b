// GPU benchmark (`node dist/bench/gpu.js`, with an addon built against a CUDA libtorch).
//
// On one GPU, in one run:
//   1. Attention alone at the 1.3B's 832x480x81 shape (32,760 tokens, 12 heads of 128, bf16):
//      'sdpa' (libtorch's SDPA), 'flash' and 'sageattn' (our kernels), milliseconds per call
//      (median of 5, the device synchronised around each) and TFLOP/s (4 L^2 D H per call).
//   2. Each elementwise chain that `compile` fuses, alone at that shape (dim 1536, ffn 8960):
//      milliseconds per call eager and fused (median of 5, synchronised around each), and the
//      ratio. The eager rows run what a bf16 block runs without compile.
//   3. WanModel.forward of the Wan2.1 T2V 1.3B DiT (random bf16 weights synthesised from
//      shared/manifests by bench/synthesize.ts) at that size, computing in bf16, per attention
//      mode, with `compile` and with `compile` + `cudaGraphs` (sdpa): seconds per forward (a
//      warm-up, then the median of 3) and the allocator's peak; then the same three ways at 16
//      tokens, where kernel launches set the pace (median of 10).
//   4. The same with blocksToSwap 0, 10, 20 and 30 (prefetchBlocks 1, sdpa): seconds, peak
//      VRAM, and both as ratios to no swap; fp8_e4m3fn storage (widened to bf16 per layer) and
//      fp8_e4m3fn_fast (fp8 matmuls), without swap.
//   5. bench/gpu-reference.py, the same forward in PyTorch eager on the same GPU and the same
//      file, and the ratio of our sdpa forward to it (when python3 has torch with CUDA).
//   6. Vae.decode of that latent (21 frames -> 81 frames of 832x480) on the GPU in float32
//      (random weights, bench/synthesize.ts): seconds (after a 1-frame warm-up) and peak.
// The forward times include copying the inputs (17 MB) to the GPU and the output back.
//
// Environment: WAN_SHARED_DIR, WAN_BENCH_DIR (bench/synthesize.ts), WAN_GPU_BENCH=quick
// (a 4-block model at 16,380 tokens, for a check that everything runs) or fp8 (the bf16 sdpa
// forward and the fp8 rows alone).
import { execFileSync } from 'node:child_process';

import { runtimeInfo, Tensor, Vae, WanModel } from '../lib/index';
import type { AttentionMode, ModelLoaderOptions } from '../lib/index';
import { attentionSeconds, fusedOpSeconds, gpuMemory } from '../lib/ops';
import type { FusedOp } from '../lib/ops';
import { table } from './machine';
import { ensureDitCheckpoint, ensureVaeCheckpoint } from './synthesize';
import { randn } from '../test/helpers';

const quick = process.env.WAN_GPU_BENCH === 'quick';
const fp8Only = process.env.WAN_GPU_BENCH === 'fp8';
const [FRAMES, HEIGHT, WIDTH] = quick ? [11, 60, 104] : [21, 60, 104];  // latent of 832x480, 41 or 81 frames
const TOKENS = FRAMES * (HEIGHT / 2) * (WIDTH / 2);
const GiB = 2 ** 30;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function log(line: string): void {
  process.stderr.write(`[gpu bench] ${line}\n`);
}

function attentionTable(): string {
  const [H, D] = [12, 128];
  const q = randn([1, TOKENS, H, D], 1, 'bf16'), k = randn([1, TOKENS, H, D], 2, 'bf16'), v = randn([1, TOKENS, H, D], 3, 'bf16');
  const flops = 4 * TOKENS * TOKENS * D * H;
  const rows = (['sdpa', 'flash', 'sageattn'] as AttentionMode[]).map((mode) => {
    const s = median(attentionSeconds(q, k, v, mode, 'cuda', 5));
    log(`attention ${mode}: ${(s * 1e3).toFixed(1)} ms`);
    return [mode, (s * 1e3).toFixed(1), (flops / s / 1e12).toFixed(0)];
  });
  return table([`attention, L = ${TOKENS}, 12 x 128, bf16`, 'ms per call', 'TFLOP/s'], rows);
}

function fusedOpsTable(): string {
  const grid: [number, number, number] = [FRAMES, HEIGHT / 2, WIDTH / 2];
  const dims = { dim: 1536, headDim: 128, ffnDim: 8960 };
  const what: Record<FusedOp, string> = {
    normRope: 'q/k RMS norm + RoPE (bf16 in and out)',
    modulate: 'modulation, float32 -> bf16',
    gatedResidual: 'gated residual, float32 + bf16 * gate',
    linearGelu: 'ffn.0 + GELU(tanh), bf16',
  };
  const rows = (Object.keys(what) as FusedOp[]).map((op) => {
    try {
      const [eager, fused] = (['eager', 'fused'] as const).map((how) => median(fusedOpSeconds(op, how, grid, dims, 5)));
      log(`${op}: eager ${(eager * 1e3).toFixed(2)} ms, fused ${(fused * 1e3).toFixed(2)} ms`);
      return [what[op], (eager * 1e3).toFixed(2), (fused * 1e3).toFixed(2), (eager / fused).toFixed(2)];
    } catch (e) {  // one failing kernel should not cost the rest of the run
      log(`${op}: ${(e as Error).message}`);
      return [what[op], 'failed', (e as Error).message, ''];
    }
  });
  return table([`compile's fused ops, ${TOKENS} tokens`, 'eager ms', 'fused ms', 'eager / fused'], rows);
}

interface ForwardResult { seconds: number; peak: number }

// A warm-up forward, then the median of `reps`, of a latent [16, F, H, W] (default: the bench's).
async function timeForward(file: string, options: ModelLoaderOptions, reps = 3, latent = [FRAMES, HEIGHT, WIDTH]): Promise<ForwardResult> {
  const model = await WanModel.load(file, { device: 'cuda', basePrecision: 'bf16', ...options });
  try {
    const [F, H, W] = latent;
    const x = randn([16, F, H, W], 4);
    const context = randn([512, 4096], 5);
    const t = Tensor.fromTypedArray(new BigInt64Array([500n]), [1]);
    const input = { x: [x], t, context: [context], seqLen: F * (H / 2) * (W / 2) };
    (await model.forward(input)).forEach((o) => o.dispose());
    gpuMemory('cuda', true);
    const seconds: number[] = [];
    for (let r = 0; r < reps; r++) {
      const t0 = performance.now();
      (await model.forward(input)).forEach((o) => o.dispose());
      seconds.push((performance.now() - t0) / 1000);
    }
    const peak = gpuMemory('cuda')!.peak;
    const graphs = options.cudaGraphs ? `, graphs ${JSON.stringify(model.graphStats())}` : '';
    log(`forward ${JSON.stringify(options)} [${latent}]: ${seconds.map((s) => s.toFixed(4)).join(', ')} s, peak ${(peak / GiB).toFixed(2)} GiB${graphs}`);
    return { seconds: median(seconds), peak };
  } finally {
    model.dispose();
  }
}

// Where kernel launches, not the GPU's work, set the pace: a latent of one 64x64 frame, 16
// tokens, where CUDA graphs should pay off (the median of 10 forwards after a warm-up).
async function launchBoundTable(file: string): Promise<string> {
  const latent = [1, 8, 8];
  const runs: [string, ModelLoaderOptions][] = [['sdpa', { attentionMode: 'sdpa' }],
    ['sdpa, compile', { attentionMode: 'sdpa', compile: true }],
    ['sdpa, compile, cudaGraphs', { attentionMode: 'sdpa', compile: true, cudaGraphs: true }]];
  const results: [string, ForwardResult][] = [];
  for (const [name, options] of runs) results.push([name, await timeForward(file, options, 10, latent)]);
  const base = results[0][1].seconds;
  return table([`1.3B DiT forward, bf16, 16 tokens (x [16, ${latent}])`, 'ms per forward', 'time ratio'],
    results.map(([name, r]) => [name, (r.seconds * 1e3).toFixed(1), (r.seconds / base).toFixed(2)]));
}

function reference(file: string): { median: number; peakBytes: number; torch: string } | undefined {
  try {
    const out = execFileSync('python3', ['bench/gpu-reference.py', file, String(FRAMES), String(HEIGHT), String(WIDTH), '3'],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
    return JSON.parse(out.trim().split('\n').pop()!);
  } catch (err) {
    log(`PyTorch reference not run: ${(err as Error).message.split('\n')[0]}`);
    return undefined;
  }
}

async function main(): Promise<void> {
  const info = runtimeInfo();
  if (!info.cuda) throw new Error(`bench/gpu: this addon (backend ${info.backend}) sees no CUDA GPU`);
  console.log(`# GPU benchmark: ${JSON.stringify(info)}, ${TOKENS} tokens${quick ? ' (quick)' : ''}\n`);
  if (!fp8Only) console.log(attentionTable() + '\n');
  if (!fp8Only) console.log(fusedOpsTable() + '\n');

  const bf16 = ensureDitCheckpoint({ storage: 'bf16', blocks: quick ? 4 : undefined, log });
  const modes: [string, ForwardResult][] = [];
  for (const mode of (fp8Only ? ['sdpa'] : ['sdpa', 'flash', 'sageattn']) as AttentionMode[])
    modes.push([mode, await timeForward(bf16, { attentionMode: mode })]);
  // compile: the fused kernels (q/k norm + RoPE, modulation, gated residual, GELU in the
  // matmul), against the eager sdpa row.
  if (!fp8Only) modes.push(['sdpa, compile', await timeForward(bf16, { attentionMode: 'sdpa', compile: true })]);
  // cudaGraphs: the blocks replayed as one CUDA graph (warm-up, capture, replays).
  if (!fp8Only) modes.push(['sdpa, compile, cudaGraphs', await timeForward(bf16, { attentionMode: 'sdpa', compile: true, cudaGraphs: true })]);
  const ref = fp8Only ? undefined : reference(bf16);
  const sdpa = modes[0][1];
  const rows = modes.map(([mode, r]) => [`wan-native, ${mode}`, r.seconds.toFixed(3), (r.peak / GiB).toFixed(2),
    ref ? (r.seconds / ref.median).toFixed(2) : '-']);
  if (ref) rows.push([`PyTorch ${ref.torch} eager, SDPA`, ref.median.toFixed(3), (ref.peakBytes / GiB).toFixed(2), '1.00']);
  console.log(table([`1.3B DiT forward, bf16, ${TOKENS} tokens`, 's per forward', 'peak GiB', 'time / PyTorch'], rows) + '\n');
  if (!fp8Only) console.log(await launchBoundTable(bf16) + '\n');

  const swapRows: (string | number)[][] = [];
  const layers = quick ? 4 : 30;
  for (const blocksToSwap of quick ? [0, 2, 4] : fp8Only ? [0] : [0, 10, 20, 30]) {
    const r = blocksToSwap === 0 ? sdpa : await timeForward(bf16, { blockSwap: { blocksToSwap, prefetchBlocks: 1 } });
    swapRows.push([`bf16, swap ${blocksToSwap} of ${layers}`, r.seconds.toFixed(3), (r.peak / GiB).toFixed(2),
      (r.seconds / sdpa.seconds).toFixed(2), (r.peak / sdpa.peak).toFixed(2)]);
  }
  for (const quantization of ['fp8_e4m3fn', 'fp8_e4m3fn_fast'] as const) {
    const fp8 = await timeForward(bf16, { quantization });
    swapRows.push([`${quantization}, no swap`, fp8.seconds.toFixed(3), (fp8.peak / GiB).toFixed(2),
      (fp8.seconds / sdpa.seconds).toFixed(2), (fp8.peak / sdpa.peak).toFixed(2)]);
  }
  console.log(table(['block swap (prefetch 1, sdpa); fp8', 's per forward', 'peak GiB', 'time ratio', 'peak ratio'], swapRows) + '\n');
  if (!fp8Only) console.log(await vaeTable());
}

async function vaeTable(): Promise<string> {
  const file = ensureVaeCheckpoint({ generator: 'wan-native bench/vae.ts v1 (random f32: U(+-sqrt(3/fan_in)), gammas 1, biases 0)', log });
  const vae = await Vae.load(file, { device: 'cuda' });
  try {
    // forceOffload false: the timed decode finds the weights on the GPU, as the warm-up left them.
    (await vae.decode(randn([16, 1, HEIGHT, WIDTH], 6), { forceOffload: false })).dispose();
    gpuMemory('cuda', true);
    const latent = randn([16, FRAMES, HEIGHT, WIDTH], 7);
    const t0 = performance.now();
    const video = await vae.decode(latent, { forceOffload: false });
    const seconds = (performance.now() - t0) / 1000;
    const peak = gpuMemory('cuda')!.peak;
    log(`VAE decode ${video.shape.join('x')}: ${seconds.toFixed(2)} s, peak ${(peak / GiB).toFixed(2)} GiB`);
    return table([`VAE decode, float32 (TF32 convolutions)`, 'frames', 's', 'frames/s', 'peak GiB'],
      [[`${8 * WIDTH}x${8 * HEIGHT}, latent of ${FRAMES} frames`, video.shape[1], seconds.toFixed(2),
        (video.shape[1] / seconds).toFixed(1), (peak / GiB).toFixed(2)]]);
  } finally {
    vae.dispose();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
