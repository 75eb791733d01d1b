// WanModel: the Wan2.1 diffusion transformer (csrc/models/wan_dit).
import type { NativeTensor, NativeWanModel } from '../types/native';
import { bridgeAbort } from './abort';
import { planFiles } from './checkpoint';
import { checkDevice, checkLoadDevice, resolveDevice, type Device, type Placement } from './device';
import { checkOptionNames, describeValue, finiteIn, invalidOption, optionNames, WanError, withCallerStack } from './errors';
import { memoryStatsOf, planMemory, type MemoryPlan, type MemoryStats } from './memory-planner';
import { native } from './native';
import { LongCallOptions, ProgressClock } from './progress';
import { Tensor } from './tensor';

export type AttentionMode = 'sdpa' | 'flash' | 'sageattn';
export const ATTENTION_MODES: readonly AttentionMode[] = ['sdpa', 'flash', 'sageattn'];
export type BasePrecision = 'fp32' | 'bf16' | 'fp16' | 'fp16_fast';
export const BASE_PRECISIONS: readonly BasePrecision[] = ['fp32', 'bf16', 'fp16', 'fp16_fast'];

export type Quantization = 'disabled' | 'fp8_e4m3fn' | 'fp8_e4m3fn_scaled' | 'fp8_e5m2' | 'fp8_e4m3fn_fast' | 'fp8_e4m3fn_scaled_fast';
export const QUANTIZATIONS: readonly Quantization[] = ['disabled', 'fp8_e4m3fn', 'fp8_e4m3fn_scaled', 'fp8_e5m2', 'fp8_e4m3fn_fast', 'fp8_e4m3fn_scaled_fast'];
/** The forms that store weights (the fp8 matmul forms store what their storage form does). */
export type StoredQuantization = Exclude<Quantization, 'fp8_e4m3fn_fast' | 'fp8_e4m3fn_scaled_fast'>;
/** The fp8 matmul forms (a GPU only) and the storage each multiplies from. */
export const FP8_MATMUL_STORAGE: Readonly<Record<'fp8_e4m3fn_fast' | 'fp8_e4m3fn_scaled_fast', StoredQuantization>> = {
  fp8_e4m3fn_fast: 'fp8_e4m3fn', fp8_e4m3fn_scaled_fast: 'fp8_e4m3fn_scaled',
};

/** The storage a quantization form keeps the weights in. */
export function storedQuantization(q: Quantization): StoredQuantization {
  return q in FP8_MATMUL_STORAGE ? FP8_MATMUL_STORAGE[q as keyof typeof FP8_MATMUL_STORAGE] : q as StoredQuantization;
}

export interface ModelLoaderOptions extends LongCallOptions {
  /** Where the model computes (WanVideoModelLoader main_device): 'cpu' (default), 'cuda',
   * 'cuda:N', or 'auto' (the first GPU where the addon sees one, else the CPU). On a GPU the
   * weights that are not swapped live there in their storage dtype, and the model computes in
   * basePrecision; inputs and outputs stay CPU tensors. */
  device?: Device;
  /** Where the weights go at load (WanVideoModelLoader load_device): 'offload_device' (default, as
   * the wrapper), the CPU, from where the first forward brings them to `device`, or 'main_device'
   * (a model too large for the GPU then fails at load). See Placement, offload() and
   * SamplerOptions.forceOffload. */
  loadDevice?: Placement;
  /** Weight storage (WanVideoModelLoader quantization, default 'disabled': the file's dtypes).
   * The fp8 forms convert the large linear weights at load (a bf16 file halves in memory);
   * norms, biases, modulation, the time, text and image embeddings, patch embedding and head
   * keep the file's precision, as the wrapper keeps them. On a CPU fp8 is storage, widened per
   * layer.
   * 'fp8_e4m3fn_fast' and 'fp8_e4m3fn_scaled_fast' (fp8 matmuls from e4m3fn storage, scaled per
   * tensor as ComfyUI writes it for the latter) need the model on a GPU of compute capability
   * >= 8.9. */
  quantization?: Quantization;
  /** Compute dtype on a GPU (WanVideoModelLoader base_precision, default 'bf16'; fp16_fast is fp16 here). On a CPU the
   * model computes in fp32 whatever this says (bf16 matmul is ~30x slower there); `config.computeDtype` tells. */
  basePrecision?: BasePrecision;
  /** 'sdpa' (default), 'flash' (tiled, never builds the L x L matrix) or 'sageattn' (int8 Q.K).
   * On a GPU, 'sdpa' and 'flash' are libtorch's SDPA (FlashAttention-2 kernels); 'sageattn' is our
   * own int8 kernel there, correct but many times slower than SDPA (BENCHMARKS.md, GPU). */
  attentionMode?: AttentionMode;
  /** Heads, when the dim is not a release's (releases use head dim 128, so dim / 128). */
  numHeads?: number;
  /** Text tokens contexts are padded to (default 512, as every release). */
  textLen?: number;
  /** Read the weights into memory at load (default true); false maps them lazily. */
  populate?: boolean;
  /** Block swap (WanVideoBlockSwap); also settable later with setBlockSwap(). */
  blockSwap?: BlockSwapOptions;
  /** LoRAs, applied in order (WanVideoLoraSelect). */
  loras?: LoraOptions[];
  /** Merge the LoRAs into the weights at load (default true, the wrapper's merge_loras). false
   * keeps each low-rank pair on a linear layer apart and applies it at every call,
   * y += strength * alpha / rank * (x down^T) up^T: exact on fp8 weights (nothing re-quantized),
   * and needed for per-step strength lists. Other updates (full differences, the patch
   * embedding's convolution) are merged either way. */
  mergeLoras?: boolean;
  /** The wrapper's compile_args (WanVideoTorchCompileSettings), default false: on a GPU, the
   * elementwise chains run as fused kernels: the q and k RMS norms with RoPE as one CUDA kernel
   * each instead of about twenty, each block's two modulations and two gated residuals as one
   * kernel each, and the FFN's GELU inside its first matmul (the same arithmetic, within 1e-5).
   * On the CPU it changes nothing: the norms and RoPE are always fused loops there, and the
   * rest measured under 0.5 % of a block. `config.compiled` tells whether the model runs them. */
  compile?: boolean;
  /** torch.compile's mode 'reduce-overhead' (CUDA graphs), default false: on a GPU, once two
   * forwards in a row have the same shapes, the blocks are captured as one CUDA graph and
   * replayed while the shapes (and unmerged LoRAs' strengths) stay, which saves the launch of
   * each of their kernels: worth it where those are short (small latents). Forwards with block
   * swap, Enhance-A-Video, NAG, a trace, padded samples or sageattn run the blocks as they are, and
   * so does every forward after a capture fails. The captured graph holds its activations'
   * memory until offload() or dispose(). graphStats() tells what happened. */
  cudaGraphs?: boolean;
  /**
   * A memory budget in bytes, or 'auto' for what the machine has free (MemAvailable). Before
   * loading anything, the memory planner (planMemory) finds the least swapping, then fp8
   * storage, that keeps the DiT's forward for `planFor` under it and applies them; quantization
   * and blockSwap given here are kept as given. When nothing fits, the load fails with
   * WAN_OUT_OF_MEMORY naming what is needed, what would fit and the budget. The plan, with a
   * summary like the wrapper's "Block swap memory summary", is `model.memoryPlan`.
   */
  maxMemory?: number | 'auto';
  /** The generation maxMemory plans for; left out, 832 x 480, 81 frames, 1 sample a forward. */
  planFor?: { width?: number; height?: number; numFrames?: number; batch?: number };
}

/** One LoRA (the wrapper's WanVideoLoraSelect + WanVideoLoraBlockEdit). Merged (the default),
 * its updates are added to the weights at load: strength * alpha / rank * (up @ down) per
 * low-rank pair (alpha = rank when the file has none), strength * diff per `.diff` / `.diff_b` /
 * `.diff_m` key; computed in float64, rounded once to float32 and stored in each weight's dtype
 * (fp8 re-encoded with its scale). Unmerged (mergeLoras false), see ModelLoaderOptions.mergeLoras. Keys may use ComfyUI, kohya (`lora_unet_*`), diffusers/finetrainers, PEFT, DiffSynth or
 * LyCORIS names; a key that matches no weight is an error listing every such key (keys of
 * the I2V image branch are dropped on a T2V model, as the wrapper drops them). */
export interface LoraOptions {
  /** The LoRA file: safetensors or .pth, or the shards of one (a list or their `*.index.json`). */
  path: string | string[];
  /** Scale of the update (default 1.0, from -1000 to 1000 as the wrapper); 0 skips the LoRA. A list
   * gives one strength per sampling step (the wrapper's strength list), with mergeLoras false. */
  strength?: number | number[];
  /** Only keys of these block indices apply (keys outside `blocks.N`, such as the head, always
   * do, as the wrapper's block selection). Default: every block. */
  blocks?: number[];
  /** Skip keys whose name, or the official name of the weight they change, contains one of
   * these (the wrapper's layer_filter, e.g. ['ffn', 'cross_attn']); empty strings are ignored. */
  layerFilter?: string[];
}

/** The wrapper's block_swap_args. On a GPU the last blocksToSwap blocks stay in page-locked CPU
 * memory and are copied to the GPU just before use, prefetchBlocks of them ahead on a side stream
 * so that the copies overlap compute. On the CPU weights stay in their storage dtype and a swapped
 * block's "transfer" is its widening to float32, a whole block at a time just before use; with
 * prefetchBlocks > 0, worker threads widen the next blocks while the current one computes. The
 * output is bitwise the same with any setting. */
export interface BlockSwapOptions {
  /** How many of the last blocks are swapped (20 in the wrapper's node; here default 0, 0..numLayers). */
  blocksToSwap?: number;
  /** Swapped blocks prepared ahead of use (0). */
  prefetchBlocks?: number;
  /** Accepted for the wrapper's workflows; GPU transfers here are always non-blocking copies
   * from page-locked memory on a side stream. No effect on the CPU. */
  useNonBlocking?: boolean;
  /** Off the CPU, keep img_emb / text_embedding on the CPU (false), copied to the GPU for each
   * forward alone (the wrapper's offload_img_emb / offload_txt_emb). Set at load: setBlockSwap
   * cannot change them. No effect on the CPU, which is where they stay anyway. */
  offloadImgEmb?: boolean;
  offloadTxtEmb?: boolean;
}

function checkBlockSwap(o: unknown): Required<Pick<BlockSwapOptions, 'blocksToSwap' | 'prefetchBlocks'>> {
  if (typeof o !== 'object' || o === null || Array.isArray(o))
    throw invalidOption(`Expected an object { blocksToSwap?, prefetchBlocks?, ... } for blockSwap but received ${describeValue(o)}`);
  const b = o as BlockSwapOptions;
  for (const key of ['blocksToSwap', 'prefetchBlocks'] as const) {
    const v = b[key];
    if (v !== undefined && !(Number.isSafeInteger(v) && v >= 0))
      throw invalidOption(`Expected a non-negative integer for blockSwap.${key} but received ${describeValue(v)}`);
  }
  for (const key of ['useNonBlocking', 'offloadImgEmb', 'offloadTxtEmb'] as const) {
    if (b[key] !== undefined && typeof b[key] !== 'boolean')
      throw invalidOption(`Expected a boolean for blockSwap.${key} but received ${describeValue(b[key])}`);
  }
  return { blocksToSwap: b.blocksToSwap ?? 0, prefetchBlocks: b.prefetchBlocks ?? 0 };
}

export interface WanModelConfig {
  modelType: 't2v' | 'i2v' | 'flf2v';
  dim: number; ffnDim: number; freqDim: number; textDim: number; inDim: number; outDim: number;
  numHeads: number; numLayers: number; textLen: number; patchSize: [number, number, number];
  qkNorm: boolean; crossAttnNorm: boolean; eps: number;
  basePrecision: BasePrecision;  // as requested
  device: string;  // where it computes: 'cpu', 'cuda:0', ...
  mergeLoras: boolean;
  computeDtype: 'f32' | 'bf16' | 'f16';  // what the model computes in here
  attentionMode: AttentionMode;
  quantization: Quantization;  // as loaded
  blocksToSwap: number;
  prefetchBlocks: number;
  /** Whether the fused kernels run (compile, on a GPU; a step with Enhance-A-Video runs the
   * eager q/k norms and RoPE, which it reads q and k between). */
  compiled: boolean;
  /** Whether CUDA graphs may replay the blocks (cudaGraphs, on a GPU). */
  cudaGraphs: boolean;
}

/** The official WanModel.forward arguments (wan/modules/model.py). */
export interface WanForwardInput {
  x: Tensor[];           // per sample [inDim - yChannels, F, H, W] noisy latent
  t: Tensor;             // [B] timesteps in [0, 1000] (i64 or float)
  context: Tensor[];     // per sample [L, textDim] text embeddings, L <= textLen
  seqLen: number;        // tokens each sample is padded to: >= F * H/2 * W/2
  clipFea?: Tensor;      // i2v [B, 257, 1280]; flf2v [2B, 257, 1280] (first, last frame per sample)
  y?: Tensor[];          // i2v / flf2v per sample [4 mask + 16 latent channels, F, H, W]
  /** Enhance-A-Video weight (the wrapper's feta_args.weight): scales each self-attention
   * output by a gain from its cross-frame attention. Off when undefined. */
  fetaWeight?: number;
  /** RIFLEx (the wrapper's riflex_freq_index): 0 or undefined is off; k (1 to riflexFrequencies
   * of the config, 22 for Wan2.1) sets RoPE's k-th frame frequency to 0.9 x 2 pi /
   * riflexLatentFrames, so that frames past the 81 the model was trained on do not repeat the first. */
  riflexFreqIndex?: number;
  /** The latent frames RIFLEx spreads that period over: the whole video's (the Sampler gives it
   * for every context window); by default x[0]'s frames. */
  riflexLatentFrames?: number;
  /** Skip layer guidance (the wrapper's slg_args): these blocks (0-based) are left out of this
   * call, the residual stream passing them by. */
  skipBlocks?: number[];
  /** The block cache (the Sampler's cacheArgs sets it): this call may reuse what the blocks added
   * the last time they ran for its stream, when the method estimates that little has changed since. */
  cache?: BlockCacheCall;
  /** The sampling step, counted from 0 at the first step run (the Sampler's startStep), as the
   * wrapper's loop counts: picks each per-step LoRA strength. */
  step?: number;
  /** NAG, Normalized Attention Guidance (the wrapper's WanVideoApplyNAG): every block's text
   * cross-attention also attends to `context` (the NAG prompt's [L, textDim] embedding) and is
   * pushed away from it, before the output projection: Z = scale Z+ - (scale - 1) Z-, its L1
   * norm per token held to at most tau times Z+'s, then alpha Z + (1 - alpha) Z+. For every
   * sample of the call (the Sampler asks it of the conditional pass). */
  nag?: NagCall;
}

export interface NagCall {
  context: Tensor;
  scale?: number;  // 11.0, 0..100
  tau?: number;    // 2.5, 0..10
  alpha?: number;  // 0.25, 0..1
}

/** One forward's block cache settings (the wrapper's WanModel.forward with cache_args): all
 * methods skip the transformer blocks, adding again the residual they added at the stream's last
 * computed call; they differ in how they estimate what skipping costs. */
export type BlockCacheCall = TeaCacheCall | MagCacheCall | EasyCacheCall;

interface BlockCacheCallBase {
  /** The prediction this call continues (cond, uncond, each context window's own): its state
   * lives in the model until clearCache(). */
  stream: number;
  /** The step, recorded in cacheReport() when the blocks are skipped. */
  step: number;
  /** The blocks are skipped while the method's accumulated estimate stays below it. */
  threshold: number;
  /** Where the residual waits: 'offload_device' (the CPU) or 'main_device'. */
  cacheDevice: 'main_device' | 'offload_device';
}

/** TeaCache: the estimate is the relative L1 change of the time embedding since the last computed call. */
export interface TeaCacheCall extends BlockCacheCallBase {
  method: 'teacache';
  /** With use_coefficients: the polynomial (highest power first) each relative L1 change of the
   * time embedding goes through before it is accumulated; without, the change of e0 as it is. */
  coefficients?: number[];
  /** 'e' (time embedding) or 'e0' (its 6-way projection): which is compared with coefficients. */
  mode: 'e' | 'e0';
}

/** MagCache: the estimate is |1 - product of the magnitude ratios| summed over the calls skipped in a row. */
export interface MagCacheCall extends BlockCacheCallBase {
  method: 'magcache';
  /** This step's calibrated ratio of the output's magnitude to the previous step's. */
  magnitudeRatio: number;
  /** magcache_K: at most this many calls in a row are skipped. */
  maxSkips: number;
}

/** EasyCache: the estimate is k times the relative change of the blocks' input, summed since the
 * last computed call (k: how much the output changed per input change between the last two). */
export interface EasyCacheCall extends BlockCacheCallBase {
  method: 'easycache';
}

/** How many of RoPE's frequencies turn with the frame position, for a head dim: riflexFreqIndex
 * runs from 1 to this (22 for Wan2.1's 128). The official split of the head's pairs c = D/2 gives
 * frames c - 2 floor(c/3). */
export function riflexFrequencies(config: Pick<WanModelConfig, 'dim' | 'numHeads'>): number {
  const pairs = config.dim / config.numHeads / 2;
  return pairs - 2 * Math.floor(pairs / 3);
}

const CACHE_CALL_FIELDS: Record<BlockCacheCall['method'], string[]> = {
  teacache: ['coefficients', 'mode'], magcache: ['magnitudeRatio', 'maxSkips'], easycache: [],
};

function checkCacheCall(c: BlockCacheCall): void {
  const expected = '{ method: teacache | magcache | easycache, stream, step, threshold, cacheDevice, ' +
    'and coefficients? and mode (teacache) or magnitudeRatio and maxSkips (magcache) }';
  const ok = typeof c === 'object' && c !== null && Object.hasOwn(CACHE_CALL_FIELDS, c.method) &&
    Number.isSafeInteger(c.stream) && c.stream >= 0 && Number.isSafeInteger(c.step) && Number.isFinite(c.threshold) &&
    ['main_device', 'offload_device'].includes(c.cacheDevice) &&
    (c.method !== 'teacache' || (['e', 'e0'].includes(c.mode) &&
      (c.coefficients === undefined || (Array.isArray(c.coefficients) && c.coefficients.every(Number.isFinite))))) &&
    (c.method !== 'magcache' || (Number.isFinite(c.magnitudeRatio) && Number.isSafeInteger(c.maxSkips) && c.maxSkips >= 0));
  if (!ok) throw invalidOption(`Expected ${expected} for cache but received ${describeValue(c)}`);
  checkOptionNames(c, ['method', 'stream', 'step', 'threshold', 'cacheDevice', ...CACHE_CALL_FIELDS[c.method]], 'cache');
}

const LOADER_OPTIONS = optionNames<ModelLoaderOptions>()({
  device: true, loadDevice: true, quantization: true, basePrecision: true, attentionMode: true, numHeads: true, textLen: true,
  populate: true, blockSwap: true, loras: true, mergeLoras: true, compile: true, cudaGraphs: true, maxMemory: true, planFor: true,
  signal: true, onProgress: true,
});
const BLOCK_SWAP_OPTIONS = optionNames<BlockSwapOptions>()({
  blocksToSwap: true, prefetchBlocks: true, useNonBlocking: true, offloadImgEmb: true, offloadTxtEmb: true,
});
const LORA_OPTIONS = optionNames<LoraOptions>()({ path: true, strength: true, blocks: true, layerFilter: true });
const FORWARD_INPUTS = optionNames<WanForwardInput>()({
  x: true, t: true, context: true, seqLen: true, clipFea: true, y: true, fetaWeight: true, riflexFreqIndex: true, nag: true,
  riflexLatentFrames: true, skipBlocks: true, cache: true, step: true,
});

function checkOptions(o: ModelLoaderOptions): void {
  if (typeof o !== 'object' || o === null) throw invalidOption(`Expected an object for options but received ${describeValue(o)}`);
  checkOptionNames(o, LOADER_OPTIONS);
  if (typeof o.blockSwap === 'object' && o.blockSwap !== null) checkOptionNames(o.blockSwap, BLOCK_SWAP_OPTIONS, 'blockSwap');
  if (Array.isArray(o.loras))
    for (const [i, l] of o.loras.entries()) if (typeof l === 'object' && l !== null) checkOptionNames(l, LORA_OPTIONS, `loras[${i}]`);
  if (o.attentionMode !== undefined && !ATTENTION_MODES.includes(o.attentionMode))
    throw invalidOption(`Expected one of ${ATTENTION_MODES.join(', ')} for attentionMode but received ${describeValue(o.attentionMode)}`);
  if (o.quantization !== undefined && !QUANTIZATIONS.includes(o.quantization))
    throw invalidOption(`Expected one of ${QUANTIZATIONS.join(', ')} for quantization but received ${describeValue(o.quantization)}`);
  if (o.device !== undefined) checkDevice(o.device);
  checkLoadDevice(o.loadDevice);
  if (o.basePrecision !== undefined && !BASE_PRECISIONS.includes(o.basePrecision))
    throw invalidOption(`Expected one of ${BASE_PRECISIONS.join(', ')} for basePrecision but received ${describeValue(o.basePrecision)}`);
  for (const key of ['numHeads', 'textLen'] as const) {
    const v = o[key];
    if (v !== undefined && !(Number.isSafeInteger(v) && v > 0))
      throw invalidOption(`Expected a positive integer for ${key} but received ${describeValue(v)}`);
  }
  if (o.populate !== undefined && typeof o.populate !== 'boolean')
    throw invalidOption(`Expected a boolean for populate but received ${describeValue(o.populate)}`);
  if (o.blockSwap !== undefined) checkBlockSwap(o.blockSwap);
  if (o.mergeLoras !== undefined && typeof o.mergeLoras !== 'boolean')
    throw invalidOption(`Expected a boolean for mergeLoras but received ${describeValue(o.mergeLoras)}`);
  if (o.compile !== undefined && typeof o.compile !== 'boolean')
    throw invalidOption(`Expected a boolean for compile but received ${describeValue(o.compile)}`);
  if (o.cudaGraphs !== undefined && typeof o.cudaGraphs !== 'boolean')
    throw invalidOption(`Expected a boolean for cudaGraphs but received ${describeValue(o.cudaGraphs)}`);
  if (o.loras !== undefined) checkLoras(o.loras, o.mergeLoras ?? true);
  if (o.maxMemory !== undefined && o.maxMemory !== 'auto' && !(typeof o.maxMemory === 'number' && Number.isFinite(o.maxMemory) && o.maxMemory > 0))
    throw invalidOption(`Expected a positive number of bytes or 'auto' for maxMemory but received ${describeValue(o.maxMemory)}`);
  if (o.planFor !== undefined) {
    if (o.maxMemory === undefined) throw invalidOption('planFor was given but maxMemory was not (planFor is the generation maxMemory plans for)');
    if (typeof o.planFor !== 'object' || o.planFor === null || Array.isArray(o.planFor))
      throw invalidOption(`Expected an object { width?, height?, numFrames?, batch? } for planFor but received ${describeValue(o.planFor)}`);
  }
}

function checkLoras(loras: unknown, merge: boolean): void {
  if (!Array.isArray(loras))
    throw invalidOption(`Expected an array of { path, strength?, blocks?, layerFilter? } for loras but received ${describeValue(loras)}`);
  loras.forEach((l: unknown, i) => {
    const what = `loras[${i}]`;
    if (typeof l !== 'object' || l === null || Array.isArray(l))
      throw invalidOption(`Expected an object { path, strength?, blocks?, layerFilter? } for ${what} but received ${describeValue(l)}`);
    const { strength, blocks, layerFilter } = l as LoraOptions;
    const inRange = (v: unknown) => typeof v === 'number' && v >= -1000 && v <= 1000;
    if (Array.isArray(strength)) {
      if (merge)
        throw invalidOption(`${what}.strength is a per-step list, which needs unmerged LoRAs: give mergeLoras: false (or one strength)`);
      if (strength.length === 0 || !strength.every(inRange))
        throw invalidOption(`Expected a non-empty list of numbers from -1000 to 1000 for ${what}.strength but received ${describeValue(strength)}`);
    } else if (strength !== undefined && !inRange(strength)) {
      throw invalidOption(`Expected a number from -1000 to 1000 for ${what}.strength but received ${describeValue(strength)}`);
    }
    if (blocks !== undefined && !(Array.isArray(blocks) && blocks.length > 0 && blocks.every((b) => Number.isSafeInteger(b) && b >= 0)))
      throw invalidOption(`Expected a non-empty array of block indices (integers >= 0) for ${what}.blocks but received ${describeValue(blocks)}`);
    if (layerFilter !== undefined && !(Array.isArray(layerFilter) && layerFilter.every((f) => typeof f === 'string')))
      throw invalidOption(`Expected an array of strings for ${what}.layerFilter but received ${describeValue(layerFilter)}`);
  });
}

// The LoRAs as the addon takes them: files planned, strength 0 left out (never opened, as the
// wrapper skips them). `schedules` holds each one's strength or per-step list, `indices` its
// place in the caller's list.
async function planLoras(loras: LoraOptions[] | undefined) {
  const native: { files: string[]; strength: number; blocks?: number[]; layerFilter?: string[]; perStep: boolean }[] = [];
  const schedules: (number | number[])[] = [], indices: number[] = [];
  for (const [i, l] of (loras ?? []).entries()) {
    const { files } = await planFiles(l.path, `loras[${i}].path`);
    const strength = l.strength ?? 1;
    if (strength === 0) continue;
    const perStep = Array.isArray(strength);
    native.push({ files, strength: perStep ? strength[0] : strength, blocks: l.blocks, layerFilter: l.layerFilter, perStep });
    schedules.push(strength);
    indices.push(i);
  }
  return { native, schedules, indices };
}

function handles(list: unknown, what: string): NativeTensor[] {
  if (!Array.isArray(list) || list.length === 0)
    throw invalidOption(`Expected a non-empty array of Tensors for ${what} but received ${describeValue(list)}`);
  return list.map((t, i) => Tensor.handle(t, `${what}[${i}]`));
}

export class WanModel {
  readonly config: WanModelConfig;
  /** The memory plan the load applied, when it was given maxMemory. */
  readonly memoryPlan?: MemoryPlan;
  #native: NativeWanModel | undefined;
  // Unmerged LoRAs (mergeLoras false): each one's strength or per-step list, and its index in the
  // loras option, for messages.
  #loraSchedules: (number | number[])[] = [];
  #loraIndices: number[] = [];
  #embeddingOffloads = { offloadTxtEmb: false, offloadImgEmb: false };

  /** The checkpoint files it was loaded from (the wrapper picks TeaCache's coefficients by name). */
  readonly files: readonly string[];

  private constructor(handle: NativeWanModel, files: readonly string[], basePrecision: BasePrecision, mergeLoras: boolean, memoryPlan?: MemoryPlan) {
    this.#native = handle;
    this.files = Object.freeze([...files]);
    this.config = { ...(handle.config() as Omit<WanModelConfig, 'basePrecision' | 'mergeLoras'>), basePrecision, mergeLoras };
    if (memoryPlan) this.memoryPlan = memoryPlan;
  }

  /** Loads a DiT checkpoint: official, ComfyUI, Kijai (bf16/fp16/fp8/scaled fp8) or diffusers
   * layout, single file, shards or their `*.index.json`; the config is inferred from shapes. */
  static load(path: string | string[], options: ModelLoaderOptions = {}): Promise<WanModel> {
    const caller = new Error();
    return withCallerStack((async () => {
      checkOptions(options);
      const device = resolveDevice(options.device);
      if (options.quantization !== undefined && options.quantization in FP8_MATMUL_STORAGE && device === 'cpu')
        throw invalidOption(`quantization '${options.quantization}' runs fp8 matmuls on a GPU (compute capability >= 8.9), and this model ` +
                            `computes on the CPU (device 'cpu'); use '${storedQuantization(options.quantization)}' (fp8 storage, widened per layer)`);
      const plan = await planFiles(path, 'path');
      const loras = await planLoras(options.loras);
      const mergeLoras = options.mergeLoras ?? true;
      let quantization = options.quantization ?? 'disabled';
      let blockSwap = options.blockSwap ? checkBlockSwap(options.blockSwap) : undefined;
      let memoryPlan: MemoryPlan | undefined;
      if (options.maxMemory !== undefined) {
        // Planned from the headers before any weight is read (the files are only mapped).
        memoryPlan = await planMemory({
          dit: plan.files, ...options.planFor, maxMemory: options.maxMemory === 'auto' ? undefined : options.maxMemory,
          device: device === 'cpu' ? 'cpu' : 'cuda', attentionMode: options.attentionMode ?? 'sdpa',
          // the fp8 matmul forms store what their storage forms store
          quantization: options.quantization === undefined ? undefined : storedQuantization(options.quantization),
          blocksToSwap: blockSwap?.blocksToSwap, prefetchBlocks: blockSwap?.prefetchBlocks,
        });
        if (!memoryPlan.fits) throw new WanError('WAN_OUT_OF_MEMORY', `maxMemory: ${memoryPlan.message}`);
        if (storedQuantization(quantization) !== memoryPlan.quantization) quantization = memoryPlan.quantization;
        blockSwap = { blocksToSwap: memoryPlan.blocksToSwap, prefetchBlocks: memoryPlan.prefetchBlocks };
      }
      const embeddingOffloads = {
        offloadTxtEmb: options.blockSwap?.offloadTxtEmb ?? false, offloadImgEmb: options.blockSwap?.offloadImgEmb ?? false,
      };
      const abort = bridgeAbort(options.signal);
      const clock = new ProgressClock('load', 1, options.onProgress);
      try {
        clock.report(0);
        const handle = await native().loadWanModel(plan.files, {
          numHeads: options.numHeads, textLen: options.textLen,
          attentionMode: options.attentionMode ?? 'sdpa', quantization,
          device, basePrecision: options.basePrecision ?? 'bf16', loadDevice: options.loadDevice ?? 'offload_device',
          ...(blockSwap ?? {}),
          ...embeddingOffloads,
          populate: options.populate ?? true, loras: loras.native, mergeLoras, compile: options.compile ?? false,
          cudaGraphs: options.cudaGraphs ?? false,
        }, abort.flag);
        clock.report(1);
        const model = new WanModel(handle, plan.files, options.basePrecision ?? 'bf16', mergeLoras, memoryPlan);
        model.#embeddingOffloads = embeddingOffloads;
        if (!mergeLoras) {
          model.#loraSchedules = loras.schedules;
          model.#loraIndices = loras.indices;
        }
        return model;
      } finally {
        abort.done();
      }
    })(), caller);
  }

  private handle(): NativeWanModel {
    if (!this.#native) throw new WanError('WAN_INVALID_OPTION', 'the WanModel has been disposed');
    return this.#native;
  }

  /** Changes block swap for the next forward calls (see BlockSwapOptions; the embedding offloads
   * stay as loaded). */
  setBlockSwap(o: BlockSwapOptions): void {
    const { blocksToSwap, prefetchBlocks } = checkBlockSwap(o);
    for (const key of ['offloadTxtEmb', 'offloadImgEmb'] as const) {
      if (o[key] !== undefined && o[key] !== this.#embeddingOffloads[key])
        throw invalidOption(`blockSwap.${key} is set at load (it was ${this.#embeddingOffloads[key]}); setBlockSwap changes blocksToSwap and prefetchBlocks only`);
    }
    this.handle().setBlockSwap(blocksToSwap, prefetchBlocks);
    Object.assign(this.config, { blocksToSwap, prefetchBlocks });
  }

  /** The bytes of the weights the model holds, by storage dtype; `swapped` is the last blocksToSwap blocks. */
  memoryStats(): MemoryStats {
    return memoryStatsOf(this.handle().memoryStats());
  }

  /** What cudaGraphs did so far: graphs captured, forwards that replayed one, and why a capture
   * failed (null if none has), after which every forward runs the blocks as they are. */
  /** The block cache: the steps each stream skipped since clearCache() (the wrapper's cache report). */
  cacheReport(): { stream: number; skippedSteps: number[] }[] {
    return this.handle().cacheReport();
  }

  /** The block cache: forgets every stream, freeing the residuals they hold. */
  clearCache(): void {
    this.handle().clearCache();
  }

  graphStats(): { captures: number; replays: number; failure: string | null } {
    return this.handle().graphStats();
  }

  /** Returns the weights to the CPU (the wrapper's force_offload), after the forwards already
   * called: the GPU copies are dropped and the next forward brings them back (see Placement). */
  offload(): Promise<void> {
    const caller = new Error();
    return withCallerStack((async () => this.handle().offload())(), caller);
  }

  get attentionMode(): AttentionMode {
    return this.config.attentionMode;
  }

  set attentionMode(mode: AttentionMode) {
    if (!ATTENTION_MODES.includes(mode))
      throw invalidOption(`Expected one of ${ATTENTION_MODES.join(', ')} for attentionMode but received ${describeValue(mode)}`);
    this.handle().setAttentionMode(mode);
    (this.config as { attentionMode: AttentionMode }).attentionMode = mode;
  }

  /** One denoiser call, exactly like the official WanModel.forward: per sample [outDim, F, H, W] f32. */
  async forward(input: WanForwardInput, options: { signal?: AbortSignal } = {}): Promise<Tensor[]> {
    checkOptionNames(options, ['signal']);
    return (await this.run(input, false, options.signal)).outputs;
  }

  /** forward() that also returns named intermediates of sample 0 (for debugging and tests). */
  trace(input: WanForwardInput, options: { signal?: AbortSignal } = {}): Promise<{ outputs: Tensor[]; intermediates: Map<string, Tensor> }> {
    return this.run(input, true, options.signal);
  }

  private run(input: WanForwardInput, trace: boolean, signal?: AbortSignal) {
    const caller = new Error();
    return withCallerStack((async () => {
      if (typeof input !== 'object' || input === null) throw invalidOption(`Expected an object for input but received ${describeValue(input)}`);
      checkOptionNames(input, FORWARD_INPUTS, 'input');
      const x = handles(input.x, 'x');
      const context = handles(input.context, 'context');
      if (context.length !== x.length)
        throw invalidOption(`Expected one context per sample (${x.length}) but received ${context.length}`);
      if (!Number.isSafeInteger(input.seqLen) || input.seqLen <= 0)
        throw invalidOption(`Expected a positive integer for seqLen but received ${describeValue(input.seqLen)}`);
      const image = this.config.modelType !== 't2v';
      if (image && (input.clipFea === undefined || input.y === undefined))
        throw invalidOption(`Expected clipFea and y for a ${this.config.modelType} model`);
      if (input.fetaWeight !== undefined && !(typeof input.fetaWeight === 'number' && Number.isFinite(input.fetaWeight)))
        throw invalidOption(`Expected a finite number for fetaWeight but received ${describeValue(input.fetaWeight)}`);
      if (input.step !== undefined && !(Number.isSafeInteger(input.step) && input.step >= 0))
        throw invalidOption(`Expected a non-negative integer for step but received ${describeValue(input.step)}`);
      if (input.cache !== undefined) checkCacheCall(input.cache);
      const nag = input.nag === undefined ? undefined : {
        context: Tensor.handle(input.nag.context, 'nag.context'),
        scale: finiteIn('nag.scale', input.nag.scale, 11, 0, 100),
        tau: finiteIn('nag.tau', input.nag.tau, 2.5, 0, 10),
        alpha: finiteIn('nag.alpha', input.nag.alpha, 0.25, 0, 1),
      };
      const skipBlocks = input.skipBlocks ?? [];
      if (!Array.isArray(skipBlocks) || !skipBlocks.every((b) => Number.isSafeInteger(b) && b >= 0 && b < this.config.numLayers))
        throw invalidOption(`Expected an array of block indices in 0..${this.config.numLayers - 1} for skipBlocks but received ` +
                            describeValue(input.skipBlocks));
      const riflexFreqIndex = input.riflexFreqIndex ?? 0;
      const frequencies = riflexFrequencies(this.config);
      if (!Number.isSafeInteger(riflexFreqIndex) || riflexFreqIndex < 0 || riflexFreqIndex > frequencies)
        throw invalidOption(`Expected an integer in 0..${frequencies} for riflexFreqIndex (the frame frequencies of this model's RoPE) ` +
                            `but received ${describeValue(input.riflexFreqIndex)}`);
      const riflexLatentFrames = input.riflexLatentFrames ?? input.x[0].shape[1];
      if (riflexFreqIndex > 0 && !(Number.isSafeInteger(riflexLatentFrames) && riflexLatentFrames! >= 1))
        throw invalidOption(`Expected a positive integer for riflexLatentFrames but received ${describeValue(input.riflexLatentFrames)}`);
      const loraStrengths = this.loraStrengthsAt(input.step);
      const args = {
        x, context, seqLen: input.seqLen, t: Tensor.handle(input.t, 't'),
        clipFea: image ? Tensor.handle(input.clipFea!, 'clipFea') : undefined,
        y: image ? handles(input.y, 'y') : undefined,
        fetaWeight: input.fetaWeight,
        ...(riflexFreqIndex > 0 ? { riflexFreqIndex, riflexLatentFrames } : {}),
        ...(skipBlocks.length > 0 ? { skipBlocks } : {}),
        ...(input.cache ? { cache: input.cache } : {}),
        ...(loraStrengths ? { loraStrengths } : {}),
        ...(nag ? { nag } : {}),
      };
      const abort = bridgeAbort(signal);
      try {
        const result = await this.handle().forward(args, trace, abort.flag);
        return {
          outputs: result.outputs.map((h) => new Tensor(h)),
          intermediates: new Map(Object.entries(result.trace ?? {}).map(([k, h]) => [k, new Tensor(h)])),
        };
      } finally {
        abort.done();
      }
    })(), caller);
  }

  // Each unmerged LoRA's strength at `step` (undefined when there is no per-step list).
  private loraStrengthsAt(step: number | undefined): number[] | undefined {
    if (!this.#loraSchedules.some(Array.isArray)) return undefined;
    return this.#loraSchedules.map((s, k) => {
      if (!Array.isArray(s)) return s;
      const what = `loras[${this.#loraIndices[k]}].strength`;
      if (step === undefined)
        throw invalidOption(`${what} is a per-step list: give the step of this call (input.step; the Sampler does)`);
      if (step >= s.length)
        throw invalidOption(`${what} has ${s.length} values, one per step, but step ${step} was asked (steps count from 0)`);
      return s[step];
    });
  }

  dispose(): void {
    this.#native?.dispose();
    this.#native = undefined;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
  }
}
