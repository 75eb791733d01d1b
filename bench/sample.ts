// Sampling benchmark (`node dist/bench/sample.js`, after `npx tsc -p tsconfig.json`): where
// the time of a generation goes (text encoding, DiT steps, VAE decode, writing the video).
//
// 1. A whole T2V generation with the tiny random models of shared/golden/weights (umT5 on fixed
//    token ids, DiT dim 64 x 2 blocks, VAE dim 8) at 832x480, 17 frames, 20 unipc steps, cfg 6,
//    then videoCombine to h264 mp4: seconds per stage. This times the pipeline's own overhead
//    (scheduler arithmetic, copies, conditioning) around models that cost little.
// 2. The real dimensions (random weights synthesised by bench/synthesize.ts into WAN_BENCH_DIR,
//    reused when present): umT5-XXL with scaled fp8 storage encoding the positive and the
//    negative prompt (512 tokens each, the pipeline's padding), ONE sampler step of the 1.3B
//    T2V DiT with bf16 storage (cfg 6: a conditional and an unconditional forward) at 832x480,
//    5 frames (2 latent frames, 3,120 tokens), and the Wan2.1 VAE (f32) decoding those 2 latent
//    frames to 5 frames of 832x480. Load times are reported apart.
// Both parts print the fp32 matmul rate measured in the same run (addon gemmRate) so that runs
// on different machines compare.
//
// Environment: WAN_SHARED_DIR, WAN_BENCH_DIR, WAN_SAMPLE_BENCH=quick (part 1 only).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { emptyEmbeds, runtimeInfo, Sampler, Tensor, TextEncoder, Vae, videoCombine, WanModel } from '../lib/index';
import type { TextEmbeds } from '../lib/index';
import { native } from '../lib/native';
import { ensureDitCheckpoint, ensureUmt5Checkpoint, ensureVaeCheckpoint } from './synthesize';

const repoRoot = path.resolve(__dirname, '..', '..');
const sharedDir = process.env.WAN_SHARED_DIR ?? path.resolve(repoRoot, '..', 'shared');
const weights = path.join(sharedDir, 'golden', 'weights');

const f1 = (x: number) => x.toFixed(1);
const f2 = (x: number) => x.toFixed(2);

async function timed<T>(rows: [string, number, string][], label: string, note: string, fn: () => Promise<T>): Promise<T> {
  const start = performance.now();
  const value = await fn();
  rows.push([label, (performance.now() - start) / 1000, note]);
  return value;
}

function printRows(title: string, rows: [string, number, string][]): void {
  console.log(`\n${title}`);
  const total = rows.filter(([label]) => !label.startsWith('load')).reduce((a, [, s]) => a + s, 0);
  for (const [label, s, note] of rows) {
    const share = label.startsWith('load') ? '' : `${f1((100 * s) / total).padStart(5)} %`;
    console.log(`  ${label.padEnd(22)} ${f2(s).padStart(9)} s ${share.padStart(8)}  ${note}`);
  }
  console.log(`  ${'total (without loads)'.padEnd(22)} ${f2(total).padStart(9)} s`);
}

function matmulRate(): number {
  const [m, k, n] = [1024, 1536, 8960];
  const best = Math.min(...native().gemmRate(m, k, n, 5));
  return (2 * m * k * n) / best / 1e9;
}

// Fixed token ids padded to textLen, as the pipeline pads every prompt (pad id 0, '</s>' = 1).
function tokens(lengths: number[], textLen: number, vocab: number): { ids: Tensor; mask: Tensor } {
  const ids = new BigInt64Array(lengths.length * textLen), mask = new BigInt64Array(lengths.length * textLen);
  lengths.forEach((n, b) => {
    for (let i = 0; i < n; ++i) {
      ids[b * textLen + i] = BigInt(i === n - 1 ? 1 : 2 + ((i * 7919 + b * 104729) % (vocab - 2)));
      mask[b * textLen + i] = 1n;
    }
  });
  return { ids: Tensor.fromTypedArray(ids, [lengths.length, textLen]), mask: Tensor.fromTypedArray(mask, [lengths.length, textLen]) };
}

async function encodeText(encoder: TextEncoder, lengths: number[], textLen: number, vocab: number): Promise<TextEmbeds> {
  const { ids, mask } = tokens(lengths, textLen, vocab);
  const out = await encoder.encodeTokens(ids, mask);
  const dim = out.shape[2];
  const data = out.toTypedArray() as Float32Array;
  const rows = (b: number) => Tensor.fromTypedArray(data.slice(b * textLen * dim, (b * textLen + lengths[b]) * dim), [lengths[b], dim]);
  return { promptEmbeds: [rows(0)], negativePromptEmbeds: [rows(1)] };
}

async function tinyGeneration(): Promise<void> {
  const rows: [string, number, string][] = [];
  const steps = 20;
  const size = { width: 832, height: 480, numFrames: 17 };
  const encoder = await timed(rows, 'load text encoder', 'tiny umT5', () => TextEncoder.load(path.join(weights, 'tiny_umt5_enc.f32.safetensors')));
  const text = await timed(rows, 'text', '2 prompts', () => encodeText(encoder, [12, 40], 512, 256));
  encoder.dispose();
  const model = await timed(rows, 'load DiT', 'tiny t2v', () => WanModel.load(path.join(weights, 'tiny_t2v_dit.f32.safetensors'), { numHeads: 2, textLen: 16 }));
  // The tiny DiT takes 16 text tokens: keep the first 16 rows.
  const cut = (t: Tensor) => Tensor.fromTypedArray((t.toTypedArray() as Float32Array).slice(0, Math.min(16, t.shape[0]) * 32), [Math.min(16, t.shape[0]), 32]);
  const embeds = emptyEmbeds(size);
  const latent = await timed(rows, 'sampling', `${steps} unipc steps, cfg 6, ${embeds.seqLen} tokens`, () =>
    new Sampler(model).sample({ imageEmbeds: embeds, textEmbeds: { promptEmbeds: text.promptEmbeds.map(cut), negativePromptEmbeds: text.negativePromptEmbeds.map(cut) }, steps, cfg: 6, seed: 1 }));
  rows[rows.length - 1][2] += ` (${f2(rows[rows.length - 1][1] / steps)} s/step)`;
  // The same sampling with TeaCache skipping what it may at relL1Thresh 1 without coefficients (the
  // tiny model's random time embedding moves by about 0.9 a step: about every other step skips).
  // Apart from the stages' total: what the cache buys against the run above.
  let skipped = 0;
  const cachedStart = performance.now();
  (await new Sampler(model).sample({ imageEmbeds: embeds, textEmbeds: { promptEmbeds: text.promptEmbeds.map(cut), negativePromptEmbeds: text.negativePromptEmbeds.map(cut) },
    steps, cfg: 6, seed: 1, cacheArgs: { relL1Thresh: 1, useCoefficients: false }, onProgress: (p) => { skipped = p.cacheSkipped ?? 0; } })).dispose();
  const cachedSeconds = (performance.now() - cachedStart) / 1000;
  const plainSeconds = rows[rows.length - 1][1];
  model.dispose();
  const vae = await timed(rows, 'load VAE', 'tiny', () => Vae.load(path.join(weights, 'tiny_vae.f32.safetensors')));
  const video = await timed(rows, 'VAE decode', `${size.numFrames} frames`, () => vae.decode(latent));
  vae.dispose();
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'wan-bench-sample-'));
  await timed(rows, 'write video', 'h264 mp4 via ffmpeg', () => videoCombine(video, { format: 'video/h264-mp4', outputDir: out, frameRate: 16 }));
  fs.rmSync(out, { recursive: true, force: true });
  printRows(`1. Tiny models, whole T2V generation at ${size.width}x${size.height}, ${size.numFrames} frames:`, rows);
  console.log(`  sampling with TeaCache ${f2(cachedSeconds).padStart(9)} s           relL1Thresh 1, no coefficients: ` +
    `${skipped} of ${2 * steps} model calls skipped, ${f2(plainSeconds / cachedSeconds)}x the speed ` +
    `(${f2((2 * steps) / (2 * steps - skipped))}x fewer calls computed)`);
}

async function realDimensions(): Promise<void> {
  const rows: [string, number, string][] = [];
  const log = (m: string) => console.log(`  (${m})`);
  const umt5 = ensureUmt5Checkpoint({ storage: 'fp8', log }).file;
  const dit = ensureDitCheckpoint({ storage: 'bf16', log });
  const vaeFile = ensureVaeCheckpoint({ generator: 'wan-native bench/vae.ts v1 (random f32: U(+-sqrt(3/fan_in)), gammas 1, biases 0)', log });

  const encoder = await timed(rows, 'load text encoder', 'umT5-XXL, scaled fp8 (6.7 GB)', () => TextEncoder.load(umt5));
  const text = await timed(rows, 'text', 'positive + negative, 512 tokens each', () => encodeText(encoder, [60, 120], 512, 256384));
  encoder.dispose();

  const model = await timed(rows, 'load DiT', '1.3B T2V, bf16 storage (2.8 GB)', () => WanModel.load(dit, { attentionMode: 'flash' }));
  const embeds = emptyEmbeds({ width: 832, height: 480, numFrames: 5 });
  const latent = await timed(rows, 'one sampler step', `cfg 6 (2 forwards), ${embeds.seqLen} tokens, flash attention`, () =>
    new Sampler(model).sample({ imageEmbeds: embeds, textEmbeds: text, steps: 1, cfg: 6, seed: 1 }));
  model.dispose();

  const vae = await timed(rows, 'load VAE', 'Wan2.1 VAE, f32', () => Vae.load(vaeFile));
  await timed(rows, 'VAE decode', '2 latent frames -> 5 frames of 832x480', () => vae.decode(latent));
  vae.dispose();
  printRows('2. Real dimensions (random weights): text, one DiT step, VAE decode:', rows);
}

async function main(): Promise<void> {
  const info = runtimeInfo();
  console.log(`wan-native sampling benchmark: ${info.backend}, libtorch ${info.torchVersion}, ${info.threads} threads, ${os.cpus().length} cores`);
  console.log(`fp32 matmul rate (gemmRate [1024, 1536] x [1536, 8960], best of 5): ${f1(matmulRate())} GFLOP/s`);
  await tinyGeneration();
  if (process.env.WAN_SAMPLE_BENCH !== 'quick') await realDimensions();
  console.log(`\nfp32 matmul rate at the end: ${f1(matmulRate())} GFLOP/s`);
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
