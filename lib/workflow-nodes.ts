// What each ComfyUI node does, in terms of the library. Values passed between nodes keep the
// library's layouts: IMAGE is a Tensor [3, H, W] or [3, F, H, W] in [-1, 1] (not ComfyUI's
// [F, H, W, 3] in [0, 1]), LATENT a Tensor [16, T, H/8, W/8], and the wrapper's dicts
// (text_embeds, image_embeds, clip embeds, context options, feta args, block swap args, the
// LoRA list) the library's objects.
import { inspectCheckpoint } from './checkpoint';
import { ClipVisionEncoder, type ClipEmbeds } from './clip';
import { emptyEmbeds, imageToVideoEncode, type ImageEmbeds } from './conditioning';
import type { ContextOptions } from './context-windows';
import { resolveDevice, type Device, type Placement } from './device';
import { invalidOption, WanError } from './errors';
import { loadImage } from './image';
import { resizeImage, type ResizeCrop, type ResizeMethod } from './image-resize';
import { native } from './native';
import { roundHalfEven } from './numeric';
import { WanModel, type BlockSwapOptions, type LoraOptions, type Quantization } from './model';
import type { Progress } from './progress';
import type { CacheArgs, EasyCacheArgs, MagCacheArgs, TeaCacheArgs } from './block-cache';
import type { ExperimentalArgs } from './guidance';
import type { FreeInitArgs } from './freeinit';
import { Sampler, type FetaArgs, type LoopArgs, type NagArgs, type SamplerOptions, type SlgArgs } from './sampler';
import type { SchedulerName } from './schedulers';
import { Tensor } from './tensor';
import { TextEncoder, type TextEmbeds } from './text-encoder';
import { Vae, type VaeDecodeOptions } from './vae';
import { videoCombine, type VideoCombineOptions, type VideoFormat } from './video';
import { loadVideo, type LoadVideoFormat } from './video-input';
import type { GraphNode } from './workflow-graph';
import { ATTENTION_MAP, LORA_BLOCK_TOGGLES, slgBlocks } from './workflow-spec';

/** One output of a node: its value, how to free it, and which of the node's inputs it borrows from. */
export interface Produced {
  value: unknown;
  dispose?: () => void;
  /** Input names whose values this output refers to (they stay alive as long as it does). */
  retains?: string[];
}

export interface NodeContext {
  node: GraphNode;
  /** A widget value (defaults applied). */
  value<T>(name: string): T;
  /** The value on a link input, or undefined when it is not connected. */
  input<T>(name: string): T | undefined;
  /** The file a FILE input names, resolved against the model folders. */
  file(name: string): string;
  signal?: AbortSignal;
  onProgress: (p: Progress) => void;
  /** WanVideoDecode: the frames feed one VHS_VideoCombine only, so they may be streamed. */
  streamFrames: boolean;
  /** What VHS_VideoCombine embeds (VHS: prompt and workflow). */
  metadata: Record<string, unknown>;
  outputDir?: string;
  /** Where WanVideoTextEncode's use_disk_cache keeps embeddings. */
  textCacheDir: string;
  /** Where the loaders put their models (RunWorkflowOptions.device, resolved). */
  device: Device;
  /** Records something the run did not do as asked (WorkflowResult.warnings). */
  warn(message: string): void;
}

export type Executor = (ctx: NodeContext) => Promise<Produced[]>;

/** Frames decoded chunk by chunk (Vae.decodeFrames) on their way to VHS_VideoCombine. */
export class FrameStream {
  constructor(readonly frames: AsyncIterable<Tensor>) {}
}

// WanVideoDecode's normalization 'none': the wrapper hands on the VAE's output as it is (about
// [-1, 1], unclamped) where 'default' maps it to [0, 1], and VHS turns [0, 1] into bytes,
// clipping the rest. Frames here are in [-1, 1] (the writer maps (x + 1) / 2), so 'none' is
// 2x - 1 of the unclamped decode: the same bytes, the lower half of the range black.
function unnormalizedVideo(video: Tensor): Tensor {
  const values = video.toTypedArray() as Float32Array, shape = [...video.shape];
  video.dispose();
  for (let i = 0; i < values.length; ++i) values[i] = 2 * values[i] - 1;
  return Tensor.fromTypedArray(values, shape);
}

async function* unnormalizedFrames(frames: AsyncIterable<Tensor>): AsyncGenerator<Tensor> {
  for await (const chunk of frames) yield unnormalizedVideo(chunk);
}

/** WANVIDLORA (WanVideoLoraSelect): the chain's LoRAs, each with its merge_loras. */
type WorkflowLora = LoraOptions & { merge: boolean };

/** SELECTEDBLOCKS (WanVideoLoraBlockEdit): the blocks switched on and the layer filter. */
export interface SelectedBlocks {
  blocks: number[];
  layerFilter: string[];
}

const disposing = (...tensors: (Tensor | undefined)[]) => () => { for (const t of tensors) t?.dispose(); };

// The wrapper rounds frame counts down to 4k + 1 ((num_frames - 1) // 4 * 4 + 1).
const framesOf = (n: number) => Math.floor((n - 1) / 4) * 4 + 1;

// [3, H, W] from an IMAGE: itself, or a copy of a one-frame [3, 1, H, W].
function singleImage(image: Tensor, what: string): { image: Tensor; owned: boolean } {
  const s = image.shape;
  if (s.length === 3) return { image, owned: false };
  if (s.length === 4 && s[1] === 1)
    return { image: Tensor.fromTypedArray(image.toTypedArray() as Float32Array, [s[0], s[2], s[3]]), owned: true };
  throw invalidOption(`${what}: expected one image but received ${s.length === 4 ? `${s[1]} frames` : `a tensor of shape [${s.join(', ')}]`}`);
}

// [3, F, H, W] from an IMAGE: itself, or a single image as one frame (a copy).
function videoFrames(image: Tensor): { frames: Tensor; owned: boolean } {
  const s = image.shape;
  if (s.length === 3) return { frames: Tensor.fromTypedArray(image.toTypedArray() as Float32Array, [s[0], 1, s[1], s[2]]), owned: true };
  return { frames: image, owned: false };
}

// umT5 from the node's model_name (and the wan-native tokenizer input): a file that brings no
// tokenizer is refused now, before the other models load, rather than at the encode.
async function loadTextEncoder(c: Parameters<Executor>[0], loadDevice: Placement): Promise<TextEncoder> {
  const tokenizer = c.value<string | undefined>('tokenizer');
  const encoder = await TextEncoder.load(c.file('model_name'), {
    tokenizer: tokenizer === undefined ? undefined : c.file('tokenizer'),
    device: c.device, loadDevice, signal: c.signal, onProgress: c.onProgress,
  });
  if (encoder.tokenizerSource === null) {
    encoder.dispose();
    throw new WanError('WAN_BAD_CHECKPOINT', `${c.value<string>('model_name')} carries no tokenizer (no 'spiece_model' tensor) and ` +
      "none lies beside it: give the node's tokenizer input umT5's spiece.model or tokenizer.json, or put one beside the file");
  }
  return encoder;
}

// The node's positive_prompt (several separated by '|', for context windows, each stripped, as
// the wrapper splits them) and negative_prompt, encoded.
function encodePrompts(c: Parameters<Executor>[0], encoder: TextEncoder, forceOffload: boolean): Promise<TextEmbeds> {
  const text = c.value<string>('positive_prompt');
  const positive = text.includes('|') ? text.split('|').map((p) => p.trim()) : [text.trim()];
  return encoder.encode({ positive, negative: c.value('negative_prompt') }, {
    diskCache: c.value<boolean>('use_disk_cache') ? c.textCacheDir : undefined, forceOffload, signal: c.signal, onProgress: c.onProgress,
  });
}

// Black frames ([-1, 1]'s -1) of a shape.
function blackFrames(shape: readonly number[]): Tensor {
  return Tensor.fromTypedArray(new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(-1), [...shape]);
}

// KJNodes' ImageConcanate of two videos [3, F, H, W]: b joined on the `direction` side of a; as
// many frames as the longer, the shorter repeating its last; across the join the larger size,
// the smaller centred on black.
function concatenate(a: Tensor, b: Tensor, direction: 'right' | 'down' | 'left' | 'up'): Tensor {
  const [C, Fa, Ha, Wa] = a.shape, [, Fb, Hb, Wb] = b.shape;
  const across = direction === 'right' || direction === 'left';
  const F = Math.max(Fa, Fb), H = across ? Math.max(Ha, Hb) : Ha + Hb, W = across ? Wa + Wb : Math.max(Wa, Wb);
  const out = new Float32Array(C * F * H * W).fill(-1);
  const place = (t: Tensor, y0: number, x0: number) => {
    const [, Ft, Ht, Wt] = t.shape;
    const data = t.toTypedArray() as Float32Array;
    for (let ch = 0; ch < C; ch++)
      for (let f = 0; f < F; f++) {
        const from = Math.min(f, Ft - 1);
        for (let y = 0; y < Ht; y++) {
          const src = ((ch * Ft + from) * Ht + y) * Wt;
          out.set(data.subarray(src, src + Wt), ((ch * F + f) * H + y0 + y) * W + x0);
        }
      }
  };
  const centred = (size: number, total: number) => Math.floor((total - size) / 2);
  if (direction === 'right') { place(a, centred(Ha, H), 0); place(b, centred(Hb, H), Wa); }
  else if (direction === 'left') { place(b, centred(Hb, H), 0); place(a, centred(Ha, H), Wb); }
  else if (direction === 'down') { place(a, 0, centred(Wa, W)); place(b, Ha, centred(Wb, W)); }
  else { place(b, 0, centred(Wb, W)); place(a, Hb, centred(Wa, W)); }
  return Tensor.fromTypedArray(out, [C, F, H, W]);
}

function disposeTextEmbeds(e: TextEmbeds): void {
  for (const t of [...e.promptEmbeds, ...e.negativePromptEmbeds]) t.dispose();
}

// ComfyUI's frontend replaces %date:FORMAT% in a widget's text when it queues a workflow, so a
// UI-format file still holds it: yyyy, yy and one or two of d, M, h, m, s (two pad to 2 digits).
function frontendDates(text: string, now: Date): string {
  const parts: Record<string, number> = { d: now.getDate(), M: now.getMonth() + 1, h: now.getHours(), m: now.getMinutes(), s: now.getSeconds() };
  return text.replace(/%date:([^%]+)%/g, (_, format: string) => format.replace(/yyyy|yy|([dMhms])\1?/g, (token: string) => {
    if (token === 'yyyy') return String(now.getFullYear());
    if (token === 'yy') return String(now.getFullYear()).slice(-2);
    const value = String(parts[token[0]]);
    return token.length === 2 ? value.padStart(2, '0') : value;
  }));
}

/** A VHS_VideoCombine node's videoCombine options (runWorkflow prepares its output with them
 * before any node runs). */
export function videoCombineOptions(node: GraphNode, outputDir: string | undefined, metadata: Record<string, unknown>): VideoCombineOptions {
  const v = node.values;
  const prefix = typeof v.filename_prefix === 'string' ? frontendDates(v.filename_prefix, new Date()) : v.filename_prefix as string;
  const options: VideoCombineOptions = {
    frameRate: v.frame_rate as number, loopCount: v.loop_count as number, filenamePrefix: prefix,
    format: v.format as VideoFormat, pingpong: v.pingpong as boolean, saveOutput: v.save_output as boolean,
    saveMetadata: v.save_metadata as boolean, outputDir, metadata,
  };
  if (v.crf !== undefined) options.crf = v.crf as number;
  if (v.pix_fmt !== undefined) options.pixFmt = v.pix_fmt as string;
  if (v.lossless !== undefined) options.lossless = v.lossless as boolean;
  return options;
}

// A node that passes its widgets on as a library options object: option name -> widget name.
// WanVideoSchedulerv2's schedule (the wrapper's scheduler object, as the options that make it).
interface WorkflowSchedule {
  scheduler: SchedulerName;
  steps: number;
  shift: number;
  startStep: number;
  endStep: number;
  enhanceHf: boolean;
}

// WanVideoSamplerExtraArgs: the options WanVideoSamplerv2 takes besides the schedule.
interface SamplerExtraArgs {
  riflexFreqIndex?: number;
  ropeFunction?: string;
  fetaArgs?: FetaArgs;
  contextOptions?: ContextOptions;
  cacheArgs?: CacheArgs;
  slgArgs?: SlgArgs;
  experimentalArgs?: ExperimentalArgs;
  loopArgs?: LoopArgs;
}

// Latents sampled with loop_args (the wrapper marks its samples dict `looped`): WanVideoDecode
// decodes them looped. Latents sampled on extraEndLatent embeds (the wrapper's `end_image`
// flag): WanVideoDecode leaves their last frame out.
const LOOPED = new WeakSet<Tensor>();
// Text embeds that came through WanVideoApplyNAG (the wrapper adds nag_prompt_embeds and
// nag_params to the embeds dict): the sampler nodes run with these nagArgs.
const NAG_ARGS = new WeakMap<TextEmbeds, NagArgs>();
const EXTRA_END_LATENT = new WeakSet<Tensor>();

// The sampler nodes' run: the model, conditioning, cfg, seed, samples and progress from the node,
// the rest given.
async function sample(c: Parameters<Executor>[0], options: Omit<SamplerOptions, 'imageEmbeds' | 'textEmbeds'>,
                      ropeFunction: string): ReturnType<Executor> {
  const embeds = c.input<ImageEmbeds>('image_embeds')!;
  const context = options.contextOptions;
  if (context?.frames !== undefined && embeds.numFrames !== undefined && context.frames > embeds.numFrames)
    c.warn(`context_options: a window of ${context.frames} frames covers the whole ${embeds.numFrames}-frame video, which is sampled in one piece`);
  if (ropeFunction !== 'comfy')
    c.warn(`rope_function '${ropeFunction}': the wrapper's choices compute the same rotary embedding, which runs here one way`);
  const textEmbeds = c.input<TextEmbeds>('text_embeds')!;
  const latent = await new Sampler(c.input<WanModel>('model')!).sample({
    ...options, nagArgs: NAG_ARGS.get(textEmbeds),
    imageEmbeds: embeds, textEmbeds,
    cfg: c.value('cfg'), seed: c.value('seed'), samples: c.input<Tensor>('samples'),
    addNoiseToSamples: c.value('add_noise_to_samples'), forceOffload: c.value('force_offload'),
    signal: c.signal, onProgress: c.onProgress,
  });
  if (options.loopArgs) LOOPED.add(latent);
  if (embeds.extraEndLatent) EXTRA_END_LATENT.add(latent);
  return [{ value: latent, dispose: () => latent.dispose() }, { value: undefined }];
}

// A node that gathers widgets into an options object (`fixed`: options every such node sets).
function optionsNode<T>(widgets: Partial<Record<keyof T & string, string>>, fixed: Partial<T> = {}): Executor {
  return async (c) => [{
    value: { ...fixed, ...Object.fromEntries(Object.entries(widgets).map(([option, widget]) => [option, c.value(widget as string)])) } as T,
  }];
}

export const EXECUTORS: Record<string, Executor> = {
  async WanVideoModelLoader(c) {
    const file = c.file('model');
    let blockSwap = c.input<BlockSwapOptions>('block_swap_args');
    if (blockSwap?.blocksToSwap) {
      // As the wrapper, which clamps blocks_to_swap to the model's blocks: a workflow made for
      // the 40 blocks of a 14B model swaps all 30 of a 1.3B one. The headers tell how many; when
      // they cannot, WanModel.load checks the count itself.
      const layers = (await inspectCheckpoint(file).catch(() => undefined))?.config.num_layers;
      if (layers !== undefined && blockSwap.blocksToSwap > layers) blockSwap = { ...blockSwap, blocksToSwap: layers };
    }
    const chain = c.input<WorkflowLora[]>('lora') ?? [];  // one merge_loras (checked when the workflow was read)
    // torch.compile's counterparts: inductor's fusion -> compile (our fused kernels); CUDA graphs
    // (backend 'cudagraphs', or the modes that use them) -> cudaGraphs.
    const compileArgs = c.input<{ backend: string; mode: string }>('compile_args');
    const compile = compileArgs !== undefined && compileArgs.backend !== 'cudagraphs';
    const cudaGraphs = compileArgs !== undefined &&
      (compileArgs.backend === 'cudagraphs' || compileArgs.mode === 'reduce-overhead' || compileArgs.mode === 'max-autotune');
    if (compileArgs !== undefined) {
      const what = [compile ? "the DiT's norms, RoPE, modulations, gated residuals and GELU run as fused kernels" : '',
        cudaGraphs ? 'its blocks replay as a CUDA graph' : ''].filter((w) => w !== '').join(' and ');
      c.warn(resolveDevice(c.device) === 'cpu'
        ? 'compile_args: on the CPU the RMS norms and RoPE always run as fused loops, so nothing changes'
        : `compile_args: ${what}; torch.compile's dynamo settings have no counterpart here`);
    }
    if (c.value('rms_norm_function') !== 'default')
      c.warn(`rms_norm_function '${c.value('rms_norm_function')}': both of the wrapper's choices compute the same RMS norm, which runs here one way`);
    const model = await WanModel.load(file, {
      device: c.device, loadDevice: c.value('load_device'),
      basePrecision: c.value('base_precision'),
      quantization: c.value<Quantization>('quantization'),
      attentionMode: ATTENTION_MAP[c.value<string>('attention_mode')],
      numHeads: c.value('num_heads'),
      textLen: c.value('text_len'),
      loras: chain.map(({ merge: _, ...lora }) => lora),
      mergeLoras: chain.every((l) => l.merge),
      blockSwap, compile, cudaGraphs,
      signal: c.signal, onProgress: c.onProgress,
    });
    return [{ value: model, dispose: () => model.dispose() }];
  },

  async WanVideoBlockSwap(c) {
    if (c.value('block_swap_debug')) c.warn('block_swap_debug: the wrapper\'s swap timing log has no counterpart here (memoryStats() says what is where)');
    const args: BlockSwapOptions = {
      blocksToSwap: c.value('blocks_to_swap'), prefetchBlocks: c.value('prefetch_blocks'),
      useNonBlocking: c.value('use_non_blocking'), offloadImgEmb: c.value('offload_img_emb'), offloadTxtEmb: c.value('offload_txt_emb'),
    };
    return [{ value: args }];
  },

  async WanVideoTorchCompileSettings(c) {
    // What a loader does with them is its own (WanVideoModelLoader: compile; the VAE: nothing).
    return [{ value: { backend: c.value('backend'), mode: c.value('mode') } }];
  },

  async WanVideoLoraSelect(c) {
    // The list grows along the prev_lora chain, the first selected first (merged in that order).
    const previous = c.input<WorkflowLora[]>('prev_lora') ?? [];
    // As the wrapper: the strength rounded to 4 decimals; 0 skips the LoRA (its file is not even looked up).
    const strength = Number(c.value<number>('strength').toFixed(4));
    if (strength === 0) return [{ value: previous }];
    const selected = c.input<SelectedBlocks>('blocks');
    const lora: WorkflowLora = { path: c.file('lora'), strength, merge: c.value<boolean>('merge_loras') };
    // The wrapper filters only when some block is switched on: with none, the whole LoRA applies
    // and layer_filter is ignored too (`if l["blocks"]:` in its loader).
    if (selected && selected.blocks.length > 0) Object.assign(lora, { blocks: selected.blocks, layerFilter: selected.layerFilter });
    return [{ value: [...previous, lora] }];
  },

  async WanVideoLoraBlockEdit(c) {
    const blocks = Array.from({ length: LORA_BLOCK_TOGGLES }, (_, i) => i).filter((i) => c.value<boolean>(`blocks.${i}.`));
    // Comma-separated, each stripped, empty ones dropped (WanModel.load ignores them; so does the wrapper).
    const layerFilter = c.value<string>('layer_filter').split(',').map((f) => f.trim()).filter((f) => f !== '');
    const selected: SelectedBlocks = { blocks, layerFilter };
    return [{ value: selected }];
  },

  async LoadWanVideoT5TextEncoder(c) {
    const encoder = await loadTextEncoder(c, c.value('load_device'));
    return [{ value: encoder, dispose: () => encoder.dispose() }];
  },

  async WanVideoVAELoader(c) {
    if (c.input('compile_args') !== undefined) c.warn('compile_args: the VAE is not compiled here (the results are the same)');
    const vae = await Vae.load(c.file('model_name'), { device: c.device, signal: c.signal, onProgress: c.onProgress });
    return [{ value: vae, dispose: () => vae.dispose() }];
  },

  async LoadWanVideoClipTextEncoder(c) {
    const clip = await ClipVisionEncoder.load(c.file('model_name'), {
      numHeads: c.value('num_heads'), device: c.device, loadDevice: c.value('load_device'), signal: c.signal, onProgress: c.onProgress,
    });
    return [{ value: clip, dispose: () => clip.dispose() }];
  },

  async CLIPVisionLoader(c) {
    const clip = await ClipVisionEncoder.load(c.file('clip_name'), {
      numHeads: c.value('num_heads'), device: c.device, signal: c.signal, onProgress: c.onProgress,
    });
    return [{ value: clip, dispose: () => clip.dispose() }];
  },

  async WanVideoTextEncode(c) {
    // model_to_offload: the DiT leaves the GPU first, when it is loaded already (the run loads it
    // after this node where it can, and then there is nothing to offload).
    await c.input<WanModel>('model_to_offload')?.offload();
    const embeds = await encodePrompts(c, c.input<TextEncoder>('t5')!, c.value('force_offload'));
    return [{ value: embeds, dispose: () => disposeTextEmbeds(embeds) }];
  },

  // The wrapper's WanVideo TextEncodeSingle: one prompt as it is (no '|' split, no weights) and
  // no negative, for the positive slot or WanVideoApplyNAG's NAG prompt.
  async WanVideoTextEncodeSingle(c) {
    await c.input<WanModel>('model_to_offload')?.offload();
    const { promptEmbeds, negativePromptEmbeds } = await c.input<TextEncoder>('t5')!.encode({ positive: c.value<string>('prompt'), negative: '' }, {
      promptWeights: false, diskCache: c.value<boolean>('use_disk_cache') ? c.textCacheDir : undefined,
      forceOffload: c.value('force_offload'), signal: c.signal, onProgress: c.onProgress,
    });
    for (const t of negativePromptEmbeds) t.dispose();  // encode's negative, not this node's
    const value: TextEmbeds = { promptEmbeds, negativePromptEmbeds: [] };
    return [{ value, dispose: () => disposeTextEmbeds(value) }];
  },

  // The wrapper's WanVideo TextEncode Cached: the text encoder loaded to the main device, the
  // prompts encoded as WanVideoTextEncode encodes them, the encoder freed. Its second output is
  // the negative prompt alone as a prompt (a copy), for WanVideoApplyNAG; the third the prompt.
  async WanVideoTextEncodeCached(c) {
    const encoder = await loadTextEncoder(c, 'main_device');
    try {
      const embeds = await encodePrompts(c, encoder, false);
      const negative: TextEmbeds = { promptEmbeds: embeds.negativePromptEmbeds.map((t) => Tensor.fromTypedArray(t.toTypedArray(), t.shape, t.dtype)),
        negativePromptEmbeds: [] };
      return [{ value: embeds, dispose: () => disposeTextEmbeds(embeds) }, { value: negative, dispose: () => disposeTextEmbeds(negative) },
        { value: c.value<string>('positive_prompt') }];
    } finally {
      encoder.dispose();
    }
  },

  // The wrapper's WanVideoApplyNAG: the embeds as they are, with the NAG prompt (the first prompt
  // of nag_text_embeds) and its settings attached for the sampler (NAG_ARGS). inplace changes only
  // the order of the wrapper's operations.
  async WanVideoApplyNAG(c) {
    const original = c.input<TextEmbeds>('original_text_embeds')!, nag = c.input<TextEmbeds>('nag_text_embeds')!;
    const embeds: TextEmbeds = { ...original };
    NAG_ARGS.set(embeds, { nagPromptEmbeds: nag.promptEmbeds[0], nagScale: c.value('nag_scale'), nagTau: c.value('nag_tau'), nagAlpha: c.value('nag_alpha') });
    return [{ value: embeds, retains: ['original_text_embeds', 'nag_text_embeds'] }];
  },

  async WanVideoClipVisionEncode(c) {
    const owned: Tensor[] = [];
    const image = (name: string): Tensor | undefined => {
      const t = c.input<Tensor>(name);
      if (t === undefined) return undefined;
      const single = singleImage(t, `input ${name}`);
      if (single.owned) owned.push(single.image);
      return single.image;
    };
    try {
      const embeds = await c.input<ClipVisionEncoder>('clip_vision')!.encode(image('image_1')!, {
        strength1: c.value('strength_1'), strength2: c.value('strength_2'), crop: c.value('crop'),
        combineEmbeds: c.value('combine_embeds'), image2: image('image_2'), negativeImage: image('negative_image'),
        forceOffload: c.value('force_offload'), signal: c.signal, onProgress: c.onProgress,
      });
      return [{ value: embeds, dispose: disposing(embeds.clipEmbeds, embeds.negativeClipEmbeds) }];
    } finally {
      for (const t of owned) t.dispose();
    }
  },

  async WanVideoImageToVideoEncode(c) {
    const width = c.value<number>('width'), height = c.value<number>('height'), numFrames = framesOf(c.value('num_frames'));
    const start = c.input<Tensor>('start_image'), end = c.input<Tensor>('end_image'), pad = c.input<Tensor>('empty_frame_pad_image');
    // Without images the wrapper returns WanVideoEmptyEmbeds' output.
    if (!start && !end) return [{ value: emptyEmbeds({ width, height, numFrames }) }];
    const owned: Tensor[] = [];
    const image = (t: Tensor | undefined, name: string) => {
      if (!t) return undefined;
      const single = singleImage(t, `input ${name}`);
      if (single.owned) owned.push(single.image);
      return single.image;
    };
    try {
      const clip = c.input<ClipEmbeds>('clip_embeds');
      const embeds = await imageToVideoEncode({
        vae: c.input<Vae>('vae')!, width, height, numFrames,
        startImage: image(start, 'start_image'), endImage: image(end, 'end_image'), clipEmbeds: clip,
        flf2v: c.value('fun_or_fl2v_model'), augmentEmptyFrames: c.value('augment_empty_frames'), tiledVae: c.value('tiled_vae'),
        emptyFramePadImage: image(pad, 'empty_frame_pad_image'),
        noiseAugStrength: c.value('noise_aug_strength'), startLatentStrength: c.value('start_latent_strength'),
        endLatentStrength: c.value('end_latent_strength'), forceOffload: c.value('force_offload'),
        signal: c.signal, onProgress: c.onProgress,
      });
      // clipContext is the CLIP node's tensor, borrowed: that node's output stays alive with this one.
      return [{ value: embeds, dispose: disposing(embeds.y), retains: clip ? ['clip_embeds'] : [] }];
    } finally {
      for (const t of owned) t.dispose();
    }
  },

  async WanVideoEmptyEmbeds(c) {
    return [{ value: emptyEmbeds({ width: c.value('width'), height: c.value('height'), numFrames: framesOf(c.value('num_frames')) }) }];
  },

  WanVideoContextOptions: optionsNode<ContextOptions>({
    schedule: 'context_schedule', frames: 'context_frames', stride: 'context_stride', overlap: 'context_overlap',
    freenoise: 'freenoise', fuse: 'fuse_method',
  }),
  WanVideoEnhanceAVideo: optionsNode<FetaArgs>({ weight: 'weight', startPercent: 'start_percent', endPercent: 'end_percent' }),
  WanVideoTeaCache: optionsNode<TeaCacheArgs>({
    relL1Thresh: 'rel_l1_thresh', startStep: 'start_step', endStep: 'end_step', cacheDevice: 'cache_device',
    useCoefficients: 'use_coefficients', mode: 'mode',
  }),
  WanVideoMagCache: optionsNode<MagCacheArgs>({
    magcacheThresh: 'magcache_thresh', magcacheK: 'magcache_K', startStep: 'start_step', endStep: 'end_step', cacheDevice: 'cache_device',
  }, { cacheType: 'MagCache' }),
  WanVideoEasyCache: optionsNode<EasyCacheArgs>({
    easycacheThresh: 'easycache_thresh', startStep: 'start_step', endStep: 'end_step', cacheDevice: 'cache_device',
  }, { cacheType: 'EasyCache' }),

  WanVideoExperimentalArgs: optionsNode<ExperimentalArgs>({
    videoAttentionSplitSteps: 'video_attention_split_steps', cfgZeroStar: 'cfg_zero_star', useZeroInit: 'use_zero_init',
    zeroStarSteps: 'zero_star_steps', useFresca: 'use_fresca', frescaScaleLow: 'fresca_scale_low', frescaScaleHigh: 'fresca_scale_high',
    frescaFreqCutoff: 'fresca_freq_cutoff', useTcfg: 'use_tcfg', raagAlpha: 'raag_alpha', bidirectionalSampling: 'bidirectional_sampling',
    temporalScoreRescaling: 'temporal_score_rescaling', tsrK: 'tsr_k', tsrSigma: 'tsr_sigma',
  }),

  WanVideoLoopArgs: optionsNode<LoopArgs>({ shiftSkip: 'shift_skip', startPercent: 'start_percent', endPercent: 'end_percent' }),

  // The cutoffs apply here, where the wrapper's sampler reads them under other keys and so keeps 1.0.
  WanVideoFreeInitArgs: optionsNode<FreeInitArgs>({
    freeinitNumIters: 'freeinit_num_iters', freeinitMethod: 'freeinit_method', freeinitN: 'freeinit_n',
    freeinitDS: 'freeinit_d_s', freeinitDT: 'freeinit_d_t',
  }),

  async WanVideoSLG(c) {
    const slg: SlgArgs = { blocks: slgBlocks(c.value('blocks')), startPercent: c.value('start_percent'), endPercent: c.value('end_percent') };
    return [{ value: slg }];
  },

  async WanVideoSampler(c) {
    return sample(c, {
      steps: c.value('steps'), shift: c.value('shift'), scheduler: c.value<SchedulerName>('scheduler'),
      startStep: c.value('start_step'), endStep: c.value('end_step'), denoiseStrength: c.value('denoise_strength'),
      batchedCfg: c.value('batched_cfg'), riflexFreqIndex: c.value('riflex_freq_index'),
      contextOptions: c.input<ContextOptions>('context_options'), fetaArgs: c.input<FetaArgs>('feta_args'),
      slgArgs: c.input<SlgArgs>('slg_args'), cacheArgs: c.input<CacheArgs>('cache_args'),
      experimentalArgs: c.input<ExperimentalArgs>('experimental_args'), loopArgs: c.input<LoopArgs>('loop_args'),
      freeinitArgs: c.input<FreeInitArgs>('freeinit_args'),
    }, c.value('rope_function'));
  },

  async WanVideoSchedulerv2(c) {
    const schedule: WorkflowSchedule = {
      scheduler: c.value<SchedulerName>('scheduler'), steps: c.value('steps'), shift: c.value('shift'),
      startStep: c.value('start_step'), endStep: c.value('end_step'), enhanceHf: c.value('enhance_hf'),
    };
    return [{ value: schedule }];
  },

  async WanVideoSamplerExtraArgs(c) {
    const extra: SamplerExtraArgs = {
      riflexFreqIndex: c.value('riflex_freq_index'), ropeFunction: c.value('rope_function'),
      fetaArgs: c.input<FetaArgs>('feta_args'), contextOptions: c.input<ContextOptions>('context_options'),
      cacheArgs: c.input<CacheArgs>('cache_args'), slgArgs: c.input<SlgArgs>('slg_args'),
      experimentalArgs: c.input<ExperimentalArgs>('experimental_args'), loopArgs: c.input<LoopArgs>('loop_args'),
    };
    return [{ value: extra }];
  },

  async WanVideoSamplerv2(c) {
    const schedule = c.input<WorkflowSchedule>('scheduler')!;
    const extra = c.input<SamplerExtraArgs>('extra_args');
    return sample(c, {
      ...schedule, riflexFreqIndex: extra?.riflexFreqIndex, contextOptions: extra?.contextOptions, fetaArgs: extra?.fetaArgs,
      slgArgs: extra?.slgArgs, cacheArgs: extra?.cacheArgs, experimentalArgs: extra?.experimentalArgs, loopArgs: extra?.loopArgs,
    }, extra?.ropeFunction ?? 'comfy');
  },

  async WanVideoDecode(c) {
    const vae = c.input<Vae>('vae')!, latent = c.input<Tensor>('samples')!;
    const unnormalized = c.value('normalization') === 'none';
    const options: VaeDecodeOptions = {
      clamp: !unnormalized, looped: LOOPED.has(latent), trimEndLatent: EXTRA_END_LATENT.has(latent),
      ...(c.value('enable_vae_tiling') ? {
        tiled: true, tileX: c.value('tile_x'), tileY: c.value('tile_y'),
        tileStrideX: c.value('tile_stride_x'), tileStrideY: c.value('tile_stride_y'),
      } : {}),
      signal: c.signal, onProgress: c.onProgress,
    };
    if (c.streamFrames) {
      // Decoded as Video Combine writes: memory holds one chunk, not the video. The stream
      // reads the VAE and the latent until then, so both stay alive with it.
      const frames = vae.decodeFrames(latent, options);
      return [{ value: new FrameStream(unnormalized ? unnormalizedFrames(frames) : frames), retains: ['vae', 'samples'] }];
    }
    let video = await vae.decode(latent, options);
    if (unnormalized) video = unnormalizedVideo(video);
    const decoded = video;
    return [{ value: decoded, dispose: () => decoded.dispose() }];
  },

  async VHS_VideoCombine(c) {
    const images = c.input<Tensor | FrameStream>('images')!;
    let owned: Tensor | undefined;
    let frames: Tensor | AsyncIterable<Tensor>;
    if (images instanceof FrameStream) {
      frames = images.frames;
    } else {
      const v = videoFrames(images);
      frames = v.frames;
      if (v.owned) owned = v.frames;
    }
    try {
      const result = await videoCombine(frames, { ...videoCombineOptions(c.node, c.outputDir, c.metadata), signal: c.signal, onProgress: c.onProgress });
      return [{ value: { files: result.files } }];
    } finally {
      owned?.dispose();
    }
  },

  async VHS_LoadVideo(c) {
    const { frames } = await loadVideo(c.file('video'), {
      forceRate: c.value('force_rate'), customWidth: c.value('custom_width'), customHeight: c.value('custom_height'),
      frameLoadCap: c.value('frame_load_cap'), skipFirstFrames: c.value('skip_first_frames'),
      selectEveryNth: c.value('select_every_nth'), format: c.value<LoadVideoFormat>('format'), signal: c.signal,
    });
    return [{ value: frames, dispose: () => frames.dispose() }, { value: frames.shape[1] }, { value: undefined }, { value: undefined }];
  },

  // The wrapper's WanVideoEncode: sizes not a multiple of 16 stretched down to one (LANCZOS), frames
  // past 4k + 1 dropped, noise added (as the wrapper adds it to the [0, 1] image: twice the strength
  // here in [-1, 1]; the wrapper's noise is unseeded, here seed 0's), encoded (in tiles with
  // enable_vae_tiling), times latent_strength.
  async WanVideoEncode(c) {
    const vae = c.input<Vae>('vae')!;
    const source = videoFrames(c.input<Tensor>('image')!);
    const owned: Tensor[] = source.owned ? [source.frames] : [];
    try {
      let frames = source.frames;
      const [C, F, H, W] = frames.shape;
      if (W % 16 !== 0 || H % 16 !== 0) {
        const [w, h] = [W - (W % 16), H - (H % 16)];
        c.warn(`image: ${W} x ${H} is not a multiple of 16: resized to ${w} x ${h} (stretched, LANCZOS), as the wrapper does`);
        frames = resizeImage(frames, w, h, 'lanczos', 'disabled');
        owned.push(frames);
      }
      const kept = framesOf(F);
      const [h, w] = frames.shape.slice(2);
      const data = (frames.toTypedArray() as Float32Array).slice();
      const plane = h * w;
      let pixels = data;
      if (kept < F) {
        c.warn(`image: ${F} frames: the VAE encodes the first ${kept} (4k + 1), as the wrapper's`);
        pixels = new Float32Array(C * kept * plane);
        for (let ch = 0; ch < C; ch++) pixels.set(data.subarray(ch * F * plane, (ch * F + kept) * plane), ch * kept * plane);
      }
      const strength = c.value<number>('noise_aug_strength');
      if (strength > 0) {
        const noise = new (native().NoiseGenerator)(0n).randn([C, kept, h, w]).toTypedArray() as Float32Array;
        for (let i = 0; i < pixels.length; i++) pixels[i] += 2 * strength * noise[i];
      }
      const video = Tensor.fromTypedArray(pixels, [C, kept, h, w]);
      owned.push(video);
      // Tiles as WanVideo Decode's: tile_x across (the wrapper's tiled encode takes it for the height).
      const tiling = c.value<boolean>('enable_vae_tiling') ? { tiled: true, tileX: c.value<number>('tile_x'), tileY: c.value<number>('tile_y'),
        tileStrideX: c.value<number>('tile_stride_x'), tileStrideY: c.value<number>('tile_stride_y') } : {};
      let latent = await vae.encode(video, { signal: c.signal, ...tiling });
      const scale = c.value<number>('latent_strength');
      if (scale !== 1) {
        const scaled = Tensor.fromTypedArray((latent.toTypedArray() as Float32Array).map((v) => v * scale), latent.shape);
        latent.dispose();
        latent = scaled;
      }
      return [{ value: latent, dispose: () => latent.dispose() }];
    } finally {
      for (const t of owned) t.dispose();
    }
  },

  // KJNodes' Resize Image (ImageResizeKJ): the size from get_image_size, or kept in proportion, or
  // a 0 side the image's own; floored to divisible_by; then common_upscale with the crop.
  async ImageResizeKJ(c) {
    const image = c.input<Tensor>('image')!;
    const [H, W] = image.shape.slice(-2);
    let width = c.value<number>('width'), height = c.value<number>('height');
    const sizeOf = c.input<Tensor>('get_image_size');
    if (sizeOf) {
      [height, width] = sizeOf.shape.slice(-2);
    } else if (c.value<boolean>('keep_proportion') && (width !== 0 || height !== 0)) {
      if (width === 0) width = roundHalfEven((W * height) / H);
      else if (height === 0) height = roundHalfEven((H * width) / W);
      else {
        const r = Math.min(width / W, height / H);
        [width, height] = [roundHalfEven(W * r), roundHalfEven(H * r)];
      }
    }
    if (width === 0) width = W;
    if (height === 0) height = H;
    const d = c.value<number>('divisible_by');
    if (d > 1 && !sizeOf) [width, height] = [width - (width % d), height - (height % d)];
    const resized = resizeImage(image, width, height, c.value<ResizeMethod>('upscale_method'), c.value<ResizeCrop>('crop'));
    return [{ value: resized, dispose: () => resized.dispose() }, { value: width }, { value: height }];
  },

  // KJNodes' Resize Image v2 (ImageResizeKJv2): 'stretch' to the size (a 0 side the image's own),
  // 'resize' and 'total_pixels' keeping the aspect, 'crop' cutting to the size's aspect at
  // crop_position first; floored to divisible_by; then common_upscale without a crop.
  async ImageResizeKJv2(c) {
    const image = c.input<Tensor>('image')!;
    const [H, W] = image.shape.slice(-2);
    let width = c.value<number>('width'), height = c.value<number>('height');
    const mode = c.value<string>('keep_proportion'), position = c.value<string>('crop_position');
    if (mode === 'total_pixels') {
      const pixels = width * height, aspect = W / H;
      [width, height] = [Math.trunc(Math.sqrt(pixels * aspect)), Math.trunc(Math.sqrt(pixels / aspect))];
    } else if (mode === 'resize') {
      if (width === 0 && height === 0) [width, height] = [W, H];
      else if (width === 0) width = roundHalfEven(W * (height / H));
      else if (height === 0) height = roundHalfEven(H * (width / W));
      else {
        const r = Math.min(width / W, height / H);
        [width, height] = [roundHalfEven(W * r), roundHalfEven(H * r)];
      }
    } else {
      if (width === 0) width = W;
      if (height === 0) height = H;
    }
    const d = c.value<number>('divisible_by');
    if (d > 1) [width, height] = [width - (width % d), height - (height % d)];
    let crop: ResizeCrop = 'disabled';
    if (mode === 'crop') {
      const wider = W / H > width / height;
      const [cw, ch] = wider ? [roundHalfEven(H * (width / height)), H] : [W, roundHalfEven(W / (width / height))];
      const x = position === 'left' ? 0 : position === 'right' ? W - cw : Math.floor((W - cw) / 2);
      const y = position === 'top' ? 0 : position === 'bottom' ? H - ch : Math.floor((H - ch) / 2);
      crop = { x, y, width: cw, height: ch };
    }
    const resized = resizeImage(image, width, height, c.value<ResizeMethod>('upscale_method'), crop);
    return [{ value: resized, dispose: () => resized.dispose() }, { value: width }, { value: height }, { value: undefined }];
  },

  // KJNodes' Image Concatenate Multi: image_2 ... image_<inputcount> joined to the right of
  // (below, left of, above) what came before, each as ImageConcanate joins two: the shorter video
  // repeating its last frame, the smaller side centred on black; a missing input is black of
  // image_1's size. match_image_size resizes an input whose size differs (KJNodes: antialiased
  // bicubic), which is refused as not implemented yet.
  async ImageConcatMulti(c) {
    const direction = c.value<'right' | 'down' | 'left' | 'up'>('direction');
    const first = videoFrames(c.input<Tensor>('image_1')!);
    let result = first.frames;
    const owned = first.owned ? [result] : [];
    try {
      for (let k = 2; k <= c.value<number>('inputcount'); k++) {
        const linked = c.input<Tensor>(`image_${k}`);
        const next = linked ? videoFrames(linked) : { frames: blackFrames(first.frames.shape), owned: true };
        if (next.owned) owned.push(next.frames);
        const [h1, w1] = first.frames.shape.slice(2), [h2, w2] = next.frames.shape.slice(2);
        const across = direction === 'right' || direction === 'left';
        if (c.value<boolean>('match_image_size') && (across ? h2 !== h1 : w2 !== w1))
          throw invalidOption(`image_${k}: ${w2} x ${h2} would be resized to image_1's ${across ? 'height' : 'width'} (match_image_size), ` +
            'which is not available yet in wan-native (KJNodes resizes with antialiased bicubic): give images of matching size');
        result = concatenate(result, next.frames, direction);
        owned.push(result);
      }
      const out = result;
      return [{ value: out, dispose: () => out.dispose() }];
    } finally {
      for (const t of owned) if (t !== result) t.dispose();
    }
  },

  async LoadImage(c) {
    const image = await loadImage(c.file('image'));
    return [{ value: image, dispose: () => image.dispose() }, { value: undefined }];
  },
};
