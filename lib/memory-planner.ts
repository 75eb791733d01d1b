// The memory planner (issue 7, item 3): from the tensor shapes and dtypes of the checkpoints and
// the requested video size, the peak memory of each stage of a generation, and the block swap,
// weight storage and VAE tiling that keep it under a budget; or, before anything is loaded, what
// is needed and what would fit. What users complain about most is running out of memory despite
// block swap and guessing how many blocks to swap (anchors.md, "memory summary" row).
//
// Two devices are modelled, because block swap means different things on them:
//  - 'cpu' (where this version computes): every weight stays in RAM in its storage dtype whatever
//    blocksToSwap says; a swapped block is widened to float32 a whole block at a time just before
//    use, the others one weight at a time (csrc/runtime/prefetch.h, ops::Weight). Swapping
//    therefore never lowers the CPU peak (bench/memory.ts: fp8 1597 MiB with no swap, 1694 MiB
//    with 20 swapped blocks), and the planner never swaps there: only fp8 storage saves memory.
//  - 'cuda' (the wrapper's block swap, for a GPU budget): swapped blocks live in CPU memory and
//    come to the GPU prefetchBlocks + 1 at a time, so each swapped block saves its stored size.
// Stages run one after another and free what they loaded (as `wan-native generate` does: the
// text encoder is freed before the DiT loads, the DiT before the VAE decodes), so the peak of a
// generation is the largest stage, not the sum.
import * as fs from 'node:fs';

import { loadCheckpoint } from './checkpoint';
import { checkOptionNames, describeValue, invalidOption, optionNames, WanError } from './errors';
import type { AttentionMode, StoredQuantization } from './model';
import type { Placement } from './device';
import { native } from './native';
import { Vae, type VaeMemoryEstimate, type VaeMemoryEstimateOptions } from './vae';

export type PlanDevice = 'cpu' | 'cuda';
export const PLAN_DEVICES: readonly PlanDevice[] = ['cpu', 'cuda'];

/** One tensor of a checkpoint, as its header (or a manifest in shared/manifests) lists it. */
export interface TensorEntry {
  key: string;
  shape: number[];
  /** 'f32' | 'bf16' | 'f16' | 'f8_e4m3fn' | 'f8_e5m2' | ... (safetensors names such as 'BF16' are accepted). */
  dtype: string;
}

/** A checkpoint to plan for: file path(s) (only headers are read) or its tensor list. */
export type PlanSource = string | string[] | TensorEntry[];

/** What the planner needs of a VAE: a loaded Vae fits. */
export interface VaeEstimator {
  estimateDecodeMemory(options: VaeMemoryEstimateOptions): VaeMemoryEstimate;
}

export interface PlanMemoryOptions {
  /** The DiT checkpoint. */
  dit: PlanSource;
  /** The umT5 text encoder, when its stage should be planned too. */
  textEncoder?: PlanSource;
  /** The CLIP vision encoder (I2V, FLF2V). */
  clipVision?: PlanSource;
  /** The VAE: a file (loaded lazily, only to replay a decode on shapes) or a loaded Vae. */
  vae?: string | string[] | VaeEstimator;
  /** Video size in pixels (multiples of 16) and frames (4k + 1). Default 832 x 480, 81 frames. */
  width?: number;
  height?: number;
  numFrames?: number;
  /** Bytes the generation may use. Default: what the machine has free (MemAvailable on Linux), or
   * on device 'cuda' what GPU 0 has free. */
  maxMemory?: number;
  /** Where the DiT computes (default 'cpu'): 'cuda' plans VRAM, with swapped blocks in CPU memory. */
  device?: PlanDevice;
  /** Attention kernel of the DiT (default 'sdpa', whose score chunks are the largest temporary). */
  attentionMode?: AttentionMode;
  /** Samples per DiT forward (default 1; 2 with batched cfg). */
  batch?: number;
  /** Swapped blocks prepared ahead (default 0). */
  prefetchBlocks?: number;
  /** Fix the weight storage instead of choosing it ('disabled' keeps the file's dtypes). */
  quantization?: StoredQuantization;
  /** Fix blocksToSwap instead of choosing it. */
  blocksToSwap?: number;
}

/** One stage of a generation and the bytes it holds at its peak, by part. */
export interface StagePlan {
  stage: 'text' | 'clip' | 'dit' | 'decode';
  bytes: number;
  parts: Record<string, number>;
}

export interface DitMemoryPlan {
  numLayers: number;
  tokens: number;
  /** Storage dtype of the quantizable (block linear) weights. */
  storageDtype: string;
  /** Weight bytes in storage: the blocks and everything else (embeddings, head). */
  blockBytes: number[];
  otherBytes: number;
  /** On the device: resident blocks, swapped blocks in flight, the rest. */
  residentBlocks: number;
  swappedBlocks: number;
  residentBytes: number;
  swappedBytes: number;
  inFlightBytes: number;
  activationBytes: number;
  attentionBytes: number;
  /** CPU memory the swapped blocks occupy on 'cuda' (0 on 'cpu', where nothing moves). */
  offloadBytes: number;
}

export interface MemoryPlan {
  fits: boolean;
  device: PlanDevice;
  budget: number;
  /** Peak bytes of the chosen configuration (the largest stage). */
  peak: number;
  blocksToSwap: number;
  prefetchBlocks: number;
  quantization: StoredQuantization;
  vaeTiling: boolean;
  width: number;
  height: number;
  numFrames: number;
  dit: DitMemoryPlan;
  stages: StagePlan[];
  /** The least memory any configuration the planner knows needs, and which. */
  best: { bytes: number; quantization: string; blocksToSwap: number; vaeTiling: boolean };
  /** A summary in the manner of the wrapper's "Block swap memory summary", one item a line. */
  summary: string;
  /** When it does not fit: what it needs, what the best configuration needs, and the budget. */
  message?: string;
}

// ---------------------------------------------------------------------------------------------
// Constants, each measured on this project's CPU build (BENCHMARKS.md) or stated where not.

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

// Node + libtorch before any model is loaded: 263-267 MiB RSS (bench/load.ts), rounded up.
const CPU_PROCESS_BYTES = 300 * MiB;
// What the heap holds beyond the live tensors: freed blocks that glibc keeps for reuse
// (core/cpu_allocator) but a larger request cannot use. A DiT forward's VmHWM growth was 0.99 to
// 1.47 times its live tensors (bench/activations.ts, 1,024 to 32,760 tokens; 1.47 at 8,100).
const CPU_HEAP_SLACK = 1.5;
// The GPU model is not measured here (no GPU on the build machine): PyTorch's caching allocator
// is commonly 10-25% above the live tensors; 1.25 is the cautious end. The CUDA context lives
// outside the budget, which is what cudaMemGetInfo reports free once it exists.
const CUDA_ALLOCATOR_SLACK = 1.25;
// sdpa on the CPU scores 1024 queries at a time (ops/attention.cpp): scores and probabilities
// [H, 1024, L] float32 (BENCHMARKS.md, attention: 96 MiB per 1024 keys at 12 heads).
const SDPA_QUERY_CHUNK = 1024;
// Wan2.1's default generation size (WanVideoEmptyEmbeds: 832 x 480, 81 frames).
const DEFAULT_SIZE = { width: 832, height: 480, numFrames: 81 };

const ELEMENT_BYTES: Record<string, number> = {
  f64: 8, f32: 4, f16: 2, bf16: 2, f8_e4m3fn: 1, f8_e5m2: 1, i64: 8, i32: 4, i16: 2, i8: 1, u8: 1, bool: 1,
};
const SAFETENSORS_DTYPES: Record<string, string> = {
  F64: 'f64', F32: 'f32', F16: 'f16', BF16: 'bf16', F8_E4M3: 'f8_e4m3fn', F8_E5M2: 'f8_e5m2',
  I64: 'i64', I32: 'i32', I16: 'i16', I8: 'i8', U8: 'u8', BOOL: 'bool',
};

function elementBytes(dtype: string): number {
  const d = SAFETENSORS_DTYPES[dtype] ?? dtype;
  const n = ELEMENT_BYTES[d];
  if (n === undefined) throw invalidOption(`Expected a tensor dtype (${Object.keys(ELEMENT_BYTES).join(', ')}) but received ${describeValue(dtype)}`);
  return n;
}

const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

// The wrapper's params_to_keep, as ops::keeps_precision (csrc/ops/quantize.cpp) applies it to
// official names: a weight whose name contains one of these stays in high precision; others of
// 2 or more dimensions become fp8. The planner stays pure TypeScript, so the list is written out
// here too; test/native/quantize.test.ts checks it against the addon's (keptInHighPrecision).
// Repackaged prefixes are stripped first; diffusers names are not mapped here (their head, text
// and image projections would count as fp8: under 1% of a model).
export const KEPT_IN_HIGH_PRECISION: readonly string[] = ['norm', 'head', 'bias', 'time_in', 'vector_in', 'patch_embedding',
  'time_', 'img_emb', 'modulation', 'text_embedding', 'adapter', 'add', 'ref_conv', 'audio_proj'];
const PREFIXES = ['model.diffusion_model.', 'diffusion_model.', 'model.'];

function officialName(key: string): string {
  for (const p of PREFIXES) if (key.startsWith(p)) return key.slice(p.length);
  return key;
}

function quantizes(key: string, shape: number[]): boolean {
  const name = officialName(key);
  return shape.length >= 2 && !KEPT_IN_HIGH_PRECISION.some((k) => name.includes(k)) && !name.endsWith('scale_weight');
}

const BLOCK = /(?:^|\.)blocks\.(\d+)\./;

// ---------------------------------------------------------------------------------------------
// Reading the sources

async function tensorsOf(source: PlanSource, what: string): Promise<TensorEntry[]> {
  if (Array.isArray(source) && source.length > 0 && typeof source[0] === 'object') {
    for (const [i, t] of (source as TensorEntry[]).entries()) {
      if (typeof t !== 'object' || t === null || typeof t.key !== 'string' || !Array.isArray(t.shape) || typeof t.dtype !== 'string')
        throw invalidOption(`Expected { key, shape, dtype } for ${what}[${i}] but received ${describeValue(t)}`);
      elementBytes(t.dtype);
    }
    return source as TensorEntry[];
  }
  if (typeof source !== 'string' && !(Array.isArray(source) && source.every((s) => typeof s === 'string')))
    throw invalidOption(`Expected a file path, a list of paths or a list of { key, shape, dtype } for ${what} but received ${describeValue(source)}`);
  // Mapped without reading (populate: false takes milliseconds): only the headers are needed.
  const { tensors } = await loadCheckpoint(source as string | string[], { populate: false });
  const out: TensorEntry[] = [];
  for (const [key, t] of tensors) {
    out.push({ key, shape: t.shape, dtype: t.dtype });
    t.dispose();
  }
  return out;
}

/**
 * The tensors of a manifest in shared/manifests (`{ tensors: [{ key, shape }] }`, no dtypes),
 * every one given `dtype`: how a real checkpoint stored in that dtype would look.
 */
export function tensorsFromManifest(file: string, dtype: string): TensorEntry[] {
  elementBytes(dtype);
  const parsed = JSON.parse(fs.readFileSync(file, 'utf8')) as { tensors?: { key: string; shape: number[] }[] };
  if (!Array.isArray(parsed.tensors)) throw new WanError('WAN_BAD_CHECKPOINT', `${file}: expected a "tensors" list of { key, shape }`);
  return parsed.tensors.map((t) => ({ key: t.key, shape: t.shape, dtype }));
}

/** Bytes GPU 0 has free for new tensors: what the driver reports free, plus what libtorch's
 * allocator holds without using it. */
function freeGpuMemory(): number {
  const m = native().gpuMemory('cuda', false);
  if (!m) throw invalidOption("device 'cuda': this build of wan-native is CPU-only, so there is no GPU memory to plan against; give maxMemory");
  return m.free + m.reserved - m.allocated;
}

/** Bytes the machine has free for a new allocation: MemAvailable (Linux), else os.freemem(). */
export function freeMemory(): number {
  try {
    const m = /^MemAvailable:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
    if (m) return Number(m[1]) * 1024;
  } catch {
    // not Linux
  }
  return require('node:os').freemem();
}

// ---------------------------------------------------------------------------------------------
// The DiT's costs

interface DitShape {
  dim: number; ffnDim: number; numHeads: number; numLayers: number; textDim: number; inDim: number; imageInput: boolean;
}

function ditShape(tensors: TensorEntry[]): DitShape {
  const find = (suffix: string) => tensors.find((t) => officialName(t.key) === suffix || t.key.endsWith('.' + suffix));
  const ffn = find('blocks.0.ffn.0.weight') ?? find('blocks.0.ffn.net.0.proj.weight');
  const patch = find('patch_embedding.weight');
  const text = find('text_embedding.0.weight') ?? find('condition_embedder.text_embedder.linear_1.weight');
  if (!ffn || !patch)
    throw new WanError('WAN_BAD_CHECKPOINT', 'dit: not a Wan2.1 DiT (no blocks.0.ffn.0.weight or patch_embedding.weight among its tensors)');
  let numLayers = 0;
  for (const t of tensors) {
    const m = BLOCK.exec(t.key);
    if (m) numLayers = Math.max(numLayers, Number(m[1]) + 1);
  }
  const dim = patch.shape[0];
  return {
    dim, ffnDim: ffn.shape[0], numHeads: Math.max(1, Math.round(dim / 128)), numLayers,
    textDim: text ? text.shape[1] : 4096, inDim: patch.shape[1],
    imageInput: tensors.some((t) => /(?:^|\.)(img_emb|image_embedder)\./.test(t.key)),
  };
}

// Weight bytes of every block and of the rest, with the block linear weights stored as `q`
// asks ('disabled': as the file has them); the storage dtype those weights end up in.
function ditWeights(tensors: TensorEntry[], numLayers: number, q: PlanMemoryOptions['quantization']) {
  const blocks = new Array<number>(numLayers).fill(0);
  const blocks32 = new Array<number>(numLayers).fill(0);  // the same, widened to float32
  let other = 0, largest32 = 0;
  const stored = new Map<string, number>();
  for (const t of tensors) {
    const n = numel(t.shape);
    const fileDtype = SAFETENSORS_DTYPES[t.dtype] ?? t.dtype;
    let bytes = n * elementBytes(fileDtype);
    let dtype = fileDtype;
    if (q && q !== 'disabled' && quantizes(t.key, t.shape)) {
      dtype = q === 'fp8_e5m2' ? 'f8_e5m2' : 'f8_e4m3fn';
      bytes = n + (q === 'fp8_e4m3fn_scaled' ? 4 : 0);  // one byte a value (+ a float32 scale)
    }
    if (quantizes(t.key, t.shape)) stored.set(dtype, (stored.get(dtype) ?? 0) + n);
    // A weight already float32 is used as stored; any other is widened when used.
    const widened = dtype === 'f32' ? 0 : n * 4;
    const m = BLOCK.exec(t.key);
    if (m && Number(m[1]) < numLayers) {
      blocks[Number(m[1])] += bytes;
      blocks32[Number(m[1])] += widened;
    } else {
      other += bytes;
    }
    if (m) largest32 = Math.max(largest32, widened);
  }
  const storageDtype = [...stored.entries()].sort((a, b) => b[1] - a[1])[0]?.[0] ?? 'f32';
  return { blocks, blocks32, other, largest32, storageDtype };
}

const latentFrames = (numFrames: number) => Math.floor((numFrames - 1) / 4) + 1;

// Tokens of one sample: latent frames x (H/8/2) x (W/8/2) (VAE stride 8, patch 1 x 2 x 2).
export function tokenCount(width: number, height: number, numFrames: number): number {
  return latentFrames(numFrames) * Math.floor(height / 16) * Math.floor(width / 16);
}

/**
 * The live tensors of one DiT block at its largest moment, in bytes per element of one
 * [B, L, dim] tensor (block_forward in csrc/models/wan_dit.cpp drops each intermediate after its
 * last use), r = ffnDim / dim:
 *  - self-attention at RoPE: the residual, q and k in float32 and v, and RoPE's output (CPU: all
 *    float32, 5 x 4 = 20; GPU: v in bf16, and the composite RoPE's two float32 halves beside
 *    their stack, 4 + 4 + 4 + 2 + 2 + 2 + 4 = 22);
 *  - the FFN: the residual and the modulated input in float32, its bf16 copy for ffn.0 (GPU),
 *    and ffn.0's output, r wide in the compute dtype: CPU 8 + 4r, GPU 8 + 2 + 2r.
 * On the CPU test/native/memory-stats.test.ts checks it against the allocator's count.
 */
export function ditActivationBytesPerElement(dim: number, ffnDim: number, device: PlanDevice): number {
  const r = ffnDim / dim;
  return device === 'cpu' ? Math.max(20, 8 + 4 * r) : Math.max(22, 10 + 2 * r);
}

interface DitCost { bytes: number; parts: Record<string, number>; plan: DitMemoryPlan }

function ditCost(shape: DitShape, weights: ReturnType<typeof ditWeights>, o: Required<Pick<PlanMemoryOptions,
  'width' | 'height' | 'numFrames' | 'device' | 'attentionMode' | 'batch' | 'prefetchBlocks'>>, swap: number): DitCost {
  const { dim, ffnDim, numHeads, numLayers, textDim } = shape;
  const cpu = o.device === 'cpu';
  const tokens = tokenCount(o.width, o.height, o.numFrames);
  const first = numLayers - swap;  // blocks first.. are swapped (the last ones, as the wrapper)
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  const residentBlockBytes = sum(weights.blocks.slice(0, first));
  const swappedBlockBytes = sum(weights.blocks.slice(first));
  const maxBlock = (xs: number[]) => Math.max(0, ...xs.slice(first));
  const inFlightBlocks = swap > 0 ? Math.min(o.prefetchBlocks, swap) + 1 : 0;

  let onDevice: number, inFlight: number, offload: number;
  if (cpu) {
    // Every stored weight stays in RAM. In flight: a resident block widens one weight at a time
    // (the largest), a swapped block all of its weights, prefetchBlocks more ahead; the
    // prefetcher starts when the forward does, so with prefetch its blocks overlap the resident
    // ones' widening.
    onDevice = weights.other + residentBlockBytes + swappedBlockBytes;
    const widenedBlock = maxBlock(weights.blocks32);
    inFlight = swap === 0 ? weights.largest32
      : o.prefetchBlocks > 0 ? Math.max(weights.largest32, widenedBlock) + Math.min(o.prefetchBlocks, swap) * widenedBlock
        : Math.max(first > 0 ? weights.largest32 : 0, widenedBlock);
    offload = 0;
  } else {
    // GPU: the resident blocks and the rest stay; swapped blocks come as stored, prefetchBlocks + 1
    // at a time, and live in CPU memory. fp8 weights are widened to bf16 one at a time.
    onDevice = weights.other + residentBlockBytes;
    inFlight = inFlightBlocks * maxBlock(weights.blocks) + (weights.storageDtype.startsWith('f8') ? weights.largest32 / 2 : 0);
    offload = swappedBlockBytes;
  }

  const live = ditActivationBytesPerElement(dim, ffnDim, o.device) * o.batch * tokens * dim;
  const activations = live * (cpu ? CPU_HEAP_SLACK : CUDA_ALLOCATOR_SLACK);
  // Attention's own temporaries. CPU sdpa: scores and probabilities of a 1024-query chunk;
  // flash: tiles of about 0.5 MiB a thread (nothing that grows); sageattn: K as int16 pairs.
  // GPU kernels (flash / memory-efficient sdpa) keep nothing quadratic.
  let attention = 0;
  if (cpu && o.attentionMode === 'sdpa') attention = 2 * numHeads * Math.min(SDPA_QUERY_CHUNK, tokens) * tokens * 4 * o.batch;
  else if (cpu && o.attentionMode === 'sageattn') attention = tokens * dim * 2 * o.batch;
  // The text context before and after text_embedding [B, 512, text_dim | dim], and the
  // sampler's latents (noise, latent, prediction, cfg outputs: 8 of [16, T, H/8, W/8] float32).
  const context = 2 * o.batch * 512 * (textDim + dim) * 4;
  const latents = 8 * 16 * latentFrames(o.numFrames) * (o.height / 8) * (o.width / 8) * 4;
  const process = cpu ? CPU_PROCESS_BYTES : 0;
  const parts = {
    weights: onDevice, inFlight, activations: Math.round(activations), attention, context: context + latents, process,
  };
  const bytes = Object.values(parts).reduce((a, b) => a + b, 0);
  return {
    bytes, parts,
    plan: {
      numLayers, tokens, storageDtype: weights.storageDtype, blockBytes: weights.blocks, otherBytes: weights.other,
      residentBlocks: first, swappedBlocks: swap, residentBytes: weights.other + residentBlockBytes,
      swappedBytes: swappedBlockBytes, inFlightBytes: inFlight, activationBytes: Math.round(activations),
      attentionBytes: attention, offloadBytes: offload,
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The encoders

// umT5 encodes 512 tokens (the positive and the negative prompt): small next to its weights; the
// largest moment is the FFN (gate and fc1 outputs, dim_ffn wide) beside a few [512, dim] tensors.
function encoderStage(stage: 'text' | 'clip', tensors: TensorEntry[], device: PlanDevice, tokens: number, samples: number): StagePlan {
  const weights = tensors.reduce((a, t) => a + numel(t.shape) * elementBytes(t.dtype), 0);
  let dim = 0, ffn = 0;
  for (const t of tensors) {
    if (t.shape.length !== 2) continue;
    if (/(^|\.)(ffn\.fc1|mlp\.0|mlp\.c_fc|fc1)\.weight$/.test(t.key)) ffn = Math.max(ffn, t.shape[0]);
    if (/(^|\.)(q|to_q|attn\.q)\.weight$/.test(t.key)) dim = Math.max(dim, t.shape[0]);
  }
  if (dim === 0) dim = Math.max(0, ...tensors.filter((t) => t.shape.length === 2).map((t) => t.shape[1]));
  const activations = Math.round(samples * tokens * (6 * dim + 3 * ffn) * 4 * (device === 'cpu' ? CPU_HEAP_SLACK : CUDA_ALLOCATOR_SLACK));
  const parts = { weights, activations, process: device === 'cpu' ? CPU_PROCESS_BYTES : 0 };
  return { stage, bytes: parts.weights + parts.activations + parts.process, parts };
}

// ---------------------------------------------------------------------------------------------
// Formatting

export function formatBytes(bytes: number): string {
  return bytes >= GiB ? `${(bytes / GiB).toFixed(2)} GiB` : `${(bytes / MiB).toFixed(0)} MiB`;
}

function describeConfig(c: { quantization: string; blocksToSwap: number; vaeTiling?: boolean }): string {
  const parts = [c.quantization === 'disabled' ? 'the file\'s dtypes' : c.quantization, `${c.blocksToSwap} swapped blocks`];
  if (c.vaeTiling) parts.push('VAE tiling');
  return parts.join(', ');
}

function summaryOf(plan: Omit<MemoryPlan, 'summary' | 'message'>): string {
  const d = plan.dit;
  const perBlock = d.blockBytes.length ? d.blockBytes[0] : 0;
  const lines = [
    `Memory plan (${plan.device}) for ${plan.width}x${plan.height}, ${plan.numFrames} frames (${d.tokens} tokens): ` +
      `budget ${formatBytes(plan.budget)}, peak ${formatBytes(plan.peak)}${plan.fits ? '' : ' - DOES NOT FIT'}`,
    `  DiT weights: ${d.storageDtype} blocks of ${formatBytes(perBlock)}; ${d.residentBlocks} resident, ${d.swappedBlocks} swapped ` +
      `(blocksToSwap ${plan.blocksToSwap}, prefetchBlocks ${plan.prefetchBlocks}, quantization ${plan.quantization})`,
    `  resident: ${formatBytes(d.residentBytes)} (blocks and embeddings); swapped: ${formatBytes(d.swappedBytes)}` +
      (plan.device === 'cpu' ? ' (kept in RAM in storage dtype, widened to float32 when used)' : ` (in CPU memory: ${formatBytes(d.offloadBytes)})`),
    `  in flight: ${formatBytes(d.inFlightBytes)}; activations: ${formatBytes(d.activationBytes)}; attention: ${formatBytes(d.attentionBytes)}`,
  ];
  for (const s of plan.stages) {
    const parts = Object.entries(s.parts).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${formatBytes(v)}`).join(', ');
    lines.push(`  stage ${s.stage}: ${formatBytes(s.bytes)} (${parts})`);
  }
  if (plan.vaeTiling) lines.push('  VAE decode: tiled');
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------
// The planner

function checkPositiveInteger(v: unknown, what: string, min = 1): void {
  if (!(Number.isSafeInteger(v) && (v as number) >= min))
    throw invalidOption(`Expected an integer >= ${min} for ${what} but received ${describeValue(v)}`);
}

/**
 * Plans a generation's memory before anything is loaded: the DiT's blocksToSwap and weight
 * storage, and whether the VAE decode needs tiling, for the least memory that fits `maxMemory`.
 * Prefers no swapping, then the least swapping that fits (on 'cuda'; swapping never saves memory
 * on the CPU), then fp8 storage with the least swapping. When nothing fits, `fits` is false and
 * `message` says what is needed, what the best configuration needs and the budget.
 */
const PLAN_OPTIONS = optionNames<PlanMemoryOptions>()({
  dit: true, textEncoder: true, clipVision: true, vae: true, width: true, height: true, numFrames: true, maxMemory: true,
  device: true, attentionMode: true, batch: true, prefetchBlocks: true, quantization: true, blocksToSwap: true,
});

export async function planMemory(options: PlanMemoryOptions): Promise<MemoryPlan> {
  if (typeof options !== 'object' || options === null)
    throw invalidOption(`Expected an options object for planMemory but received ${describeValue(options)}`);
  checkOptionNames(options, PLAN_OPTIONS);
  const o = {
    width: options.width ?? DEFAULT_SIZE.width, height: options.height ?? DEFAULT_SIZE.height,
    numFrames: options.numFrames ?? DEFAULT_SIZE.numFrames, device: options.device ?? 'cpu',
    attentionMode: options.attentionMode ?? 'sdpa', batch: options.batch ?? 1, prefetchBlocks: options.prefetchBlocks ?? 0,
  } as const;
  for (const k of ['width', 'height'] as const) {
    if (!(Number.isSafeInteger(o[k]) && o[k] > 0 && o[k] % 16 === 0))
      throw invalidOption(`Expected a positive multiple of 16 for ${k} but received ${describeValue(o[k])}`);
  }
  if (!(Number.isSafeInteger(o.numFrames) && o.numFrames >= 1 && (o.numFrames - 1) % 4 === 0))
    throw invalidOption(`Expected 4k + 1 frames (1, 5, ..., 81) for numFrames but received ${describeValue(o.numFrames)}`);
  if (!PLAN_DEVICES.includes(o.device))
    throw invalidOption(`Expected one of ${PLAN_DEVICES.join(', ')} for device but received ${describeValue(o.device)}`);
  checkPositiveInteger(o.batch, 'batch');
  checkPositiveInteger(o.prefetchBlocks, 'prefetchBlocks', 0);
  const budget = options.maxMemory ?? (o.device === 'cuda' ? freeGpuMemory() : freeMemory());
  if (!(typeof budget === 'number' && Number.isFinite(budget) && budget > 0))
    throw invalidOption(`Expected a positive number of bytes for maxMemory but received ${describeValue(options.maxMemory)}`);

  const dit = await tensorsOf(options.dit, 'dit');
  const shape = ditShape(dit);
  if (options.blocksToSwap !== undefined) {
    checkPositiveInteger(options.blocksToSwap, 'blocksToSwap', 0);
    if (options.blocksToSwap > shape.numLayers)
      throw invalidOption(`Expected 0..${shape.numLayers} (the model's blocks) for blocksToSwap but received ${options.blocksToSwap}`);
  }

  // Stages other than the DiT's do not depend on the DiT's choices.
  const fixed: StagePlan[] = [];
  if (options.textEncoder !== undefined)
    fixed.push(encoderStage('text', await tensorsOf(options.textEncoder, 'textEncoder'), o.device, 512, 2));
  if (options.clipVision !== undefined)
    fixed.push(encoderStage('clip', await tensorsOf(options.clipVision, 'clipVision'), o.device, 257, 2));
  // The decode: the VAE's own replay of its decoder on shapes (Vae.estimateDecodeMemory), untiled
  // and tiled; tiling is chosen only when the untiled decode does not fit and the tiled one
  // needs less (each tile keeps its own caches, so on the CPU tiling often needs more).
  let decode: { untiled: number; tiled: number; weights: number } | undefined;
  if (options.vae !== undefined) decode = await decodeCosts(options.vae, o);
  const decodeStage = (tiled: boolean): StagePlan | undefined => {
    if (!decode) return undefined;
    const process = o.device === 'cpu' ? CPU_PROCESS_BYTES : 0;
    const peak = tiled ? decode.tiled : decode.untiled;
    return { stage: 'decode', bytes: peak + process, parts: { weights: decode.weights, decode: peak - decode.weights, process } };
  };
  const vaeTiling = decode !== undefined && decodeStage(false)!.bytes > budget && decode.tiled < decode.untiled;

  // I2V and FLF2V keep the VAE that encoded the image loaded while sampling (wan-native generate).
  const vaeDuringSampling = shape.imageInput && decode ? decode.weights : 0;

  const storages: StoredQuantization[] =
    options.quantization !== undefined ? [options.quantization] : ['disabled', 'fp8_e4m3fn'];
  const swaps = options.blocksToSwap !== undefined ? [options.blocksToSwap]
    : o.device === 'cpu' ? [0]  // swapping never lowers the CPU peak (see the top of this file)
      : Array.from({ length: shape.numLayers + 1 }, (_, i) => i);

  type Candidate = { quantization: StoredQuantization; blocksToSwap: number; cost: DitCost; stages: StagePlan[]; peak: number };
  const evaluate = (quantization: Candidate['quantization'], blocksToSwap: number, tiled: boolean): Candidate => {
    const cost = ditCost(shape, ditWeights(dit, shape.numLayers, quantization), o, blocksToSwap);
    const ditParts = vaeDuringSampling ? { ...cost.parts, vae: vaeDuringSampling } : cost.parts;
    const ditStage: StagePlan = { stage: 'dit', bytes: cost.bytes + vaeDuringSampling, parts: ditParts };
    const stages = [...fixed, ditStage, ...(decode ? [decodeStage(tiled)!] : [])];
    return { quantization, blocksToSwap, cost, stages, peak: Math.max(...stages.map((s) => s.bytes)) };
  };

  let chosen: Candidate | undefined;
  let first: Candidate | undefined;
  let best: Candidate | undefined;
  for (const q of storages) {
    for (const s of swaps) {
      const c = evaluate(q, s, vaeTiling);
      first ??= c;
      if (!best || c.peak < best.peak) best = c;
      if (!chosen && c.peak <= budget) chosen = c;
    }
  }
  const fits = chosen !== undefined;
  const pick = chosen ?? first!;
  const base: Omit<MemoryPlan, 'summary' | 'message'> = {
    fits, device: o.device, budget, peak: pick.peak, blocksToSwap: pick.blocksToSwap, prefetchBlocks: o.prefetchBlocks,
    quantization: pick.quantization, vaeTiling, width: o.width, height: o.height, numFrames: o.numFrames,
    dit: pick.cost.plan, stages: pick.stages,
    best: { bytes: best!.peak, quantization: best!.quantization, blocksToSwap: best!.blocksToSwap, vaeTiling },
  };
  const plan: MemoryPlan = { ...base, summary: summaryOf(base) };
  if (!fits) {
    const largest = (c: Candidate) => c.stages.reduce((a, b) => (b.bytes > a.bytes ? b : a));
    const same = best!.quantization === first!.quantization && best!.blocksToSwap === first!.blocksToSwap;
    const hints: string[] = [];
    if (largest(best!).stage === 'dit' && o.device === 'cpu' && o.attentionMode === 'sdpa' && best!.cost.parts.attention > 0) {
      const flash = ditCost(shape, ditWeights(dit, shape.numLayers, best!.quantization), { ...o, attentionMode: 'flash' }, best!.blocksToSwap);
      hints.push(`attentionMode 'flash' would save ${formatBytes(best!.cost.parts.attention - flash.parts.attention)}`);
    }
    const top = largest(best!);
    plan.message =
      `${o.width}x${o.height}, ${o.numFrames} frames needs ${formatBytes(first!.peak)} on the ${o.device} ` +
      `(${describeConfig({ ...first!, vaeTiling })}; largest stage: ${largest(first!).stage}); ` +
      (same ? `no storage or block swap of the DiT needs less (largest stage: ${top.stage}, ${formatBytes(top.bytes)})`
        : `with ${describeConfig({ ...best!, vaeTiling })} ${formatBytes(best!.peak)} (largest stage: ${top.stage})`) +
      `; the budget (maxMemory) is ${formatBytes(budget)}` + (hints.length ? `; ${hints.join('; ')}` : '');
  }
  return plan;
}

async function decodeCosts(vae: NonNullable<PlanMemoryOptions['vae']>, o: { width: number; height: number; numFrames: number }) {
  let estimator: VaeEstimator;
  let dispose: (() => void) | undefined;
  if (typeof vae === 'object' && !Array.isArray(vae) && typeof (vae as VaeEstimator).estimateDecodeMemory === 'function') {
    estimator = vae as VaeEstimator;
  } else if (typeof vae === 'string' || (Array.isArray(vae) && vae.every((v) => typeof v === 'string'))) {
    // Mapped, not read: the estimate replays the decoder on shapes (milliseconds).
    const loaded = await Vae.load(vae, { populate: false });
    estimator = loaded;
    dispose = () => loaded.dispose();
  } else {
    throw invalidOption(`Expected a VAE file path or a loaded Vae for vae but received ${describeValue(vae)}`);
  }
  try {
    // decodeFrames: the frames go to the writer chunk by chunk (wan-native generate, one format).
    const q = { frames: latentFrames(o.numFrames), height: o.height, width: o.width, call: 'decodeFrames' as const };
    const untiled = estimator.estimateDecodeMemory(q);
    const tiled = estimator.estimateDecodeMemory({ ...q, tiled: true });
    return { untiled: untiled.bytes, tiled: tiled.bytes, weights: untiled.breakdown.weights };
  } finally {
    dispose?.();
  }
}

// ---------------------------------------------------------------------------------------------
// What a loaded model holds (memoryStats() of WanModel, TextEncoder, ClipVisionEncoder, Vae)

export interface HeldBytes {
  bytes: number;
  tensors: number;
  /** Bytes by storage dtype: 'f32', 'bf16', 'f16', 'f8_e4m3fn', 'f8_e5m2'. */
  byDtype: Record<string, number>;
}

/**
 * The bytes of the parameters a loaded model references, as stored (after quantization and
 * LoRA merges). `swapped` holds the DiT's last blocksToSwap blocks (kept in storage dtype and
 * widened when used on the CPU); `resident` everything else. Temporary tensors of a forward
 * are not counted: planMemory models those.
 */
export interface MemoryStats {
  weights: number;
  resident: HeldBytes;
  swapped: HeldBytes;
  /** Where the weights are now: on the device the model computes on, or offloaded to the CPU
   * (see Placement; a model computing on the CPU only changes this state). */
  placement: Placement;
}

export function memoryStatsOf(s: { resident: HeldBytes; swapped: HeldBytes; placement: Placement }): MemoryStats {
  return { weights: s.resident.bytes + s.swapped.bytes, resident: s.resident, swapped: s.swapped, placement: s.placement };
}
