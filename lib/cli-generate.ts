// `wan-native generate`: the wrapper's text-to-video and image-to-video workflow from the command
// line (WanVideoTextEncode -> ClipVisionEncode -> ImageToVideoEncode or EmptyEmbeds -> Sampler
// -> Decode -> VideoCombine), with the nodes' options under their names in kebab case
// (shared/spec/anchors.md b.1-b.15) and the nodes' defaults, except where noted in --help.
//
// Options are parsed by commander; every value is checked before any file is read, then the
// files are checked from their headers (what model each is, whether their widths fit together),
// so that a mistake costs seconds, not a model load. Each stage frees what it no longer needs
// before the next starts, as the wrapper's force_offload does.
import { Command, InvalidArgumentError, Option } from 'commander';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { inspectCheckpoint, loadSafetensors, type CheckpointInfo } from './checkpoint';
import { CLIP_CROPS, ClipVisionEncoder, loadImage, type ClipCrop, type ClipEmbeds } from './clip';
import { emptyEmbeds, imageToVideoEncode, type ImageEmbeds } from './conditioning';
import { isDevice, resolveDevice, type Device } from './device';
import {
  CONTEXT_FUSE_METHODS, CONTEXT_SCHEDULES, latentFramesOf, resolveContextOptions,
  type ContextFuse, type ContextOptions, type ContextSchedule,
} from './context-windows';
import { WanError } from './errors';
import { formatSeconds, StageView } from './cli-view';
import { ATTENTION_MODES, BASE_PRECISIONS, riflexFrequencies, storedQuantization, WanModel, type AttentionMode, type BasePrecision, type ModelLoaderOptions } from './model';
import { planMemory } from './memory-planner';
import { native } from './native';
import type { CacheArgs } from './block-cache';
import type { ExperimentalArgs } from './guidance';
import { Sampler, type LoopArgs, type NagArgs } from './sampler';
import { FREEINIT_METHODS, type FreeInitArgs } from './freeinit';
import { schedule, SCHEDULER_NAMES, type SchedulerName } from './schedulers';
import { Tensor } from './tensor';
import { DEFAULT_NEGATIVE_PROMPT, TextEncoder, type TextEmbeds } from './text-encoder';
import { Vae, type VaeTileOptions } from './vae';
import { outputCounter, prepareOutput, VIDEO_FORMATS, videoCombine, type VideoCombineOptions, type VideoFormat } from './video';
import { loadVideo } from './video-input';

/** A mistake on the command line: exit code 2, the message names the option. */
/** Bad command-line usage (exit code 2), reported as `wan-native <command>: <message>`. */
export class UsageError extends Error {
  constructor(message: string, readonly command = 'generate') {
    super(message);
    this.name = 'UsageError';
  }
}

// WanVideoModelLoader's quantization values (anchors.md b.1). 'disabled' uses the weights in the
// dtype they are stored in (fp8 files included); the library converts to the fp8 storage forms
// in LOADED_QUANTIZATIONS at load; the others are refused.
const QUANTIZATIONS = [
  'disabled', 'fp8_e4m3fn', 'fp8_e4m3fn_fast', 'fp8_e4m3fn_scaled', 'fp8_e4m3fn_scaled_fast',
  'fp8_e5m2', 'fp8_e5m2_fast', 'fp8_e5m2_scaled', 'fp8_e5m2_scaled_fast',
] as const;
type Quantization = typeof QUANTIZATIONS[number];
const LOADED_QUANTIZATIONS: readonly Quantization[] = ['disabled', 'fp8_e4m3fn', 'fp8_e4m3fn_scaled', 'fp8_e5m2'];
// fp8 matmuls, on a GPU only.
const GPU_QUANTIZATIONS: readonly Quantization[] = ['fp8_e4m3fn_fast', 'fp8_e4m3fn_scaled_fast'];
const DEVICES = ['auto', 'cpu', 'cuda'] as const;

// Short names for --format, besides the VideoHelperSuite names.
const FORMAT_ALIASES: Record<string, VideoFormat> = {
  mp4: 'video/h264-mp4', h264: 'video/h264-mp4', 'h264-mp4': 'video/h264-mp4',
  h265: 'video/h265-mp4', hevc: 'video/h265-mp4', 'h265-mp4': 'video/h265-mp4',
  webm: 'video/webm', gif: 'image/gif', webp: 'image/webp', png: 'image/png',
};
const VIDEO_CODEC_FORMATS: readonly VideoFormat[] = ['video/h264-mp4', 'video/h265-mp4', 'video/webm'];

const MAX_SIZE = 8192;
const U64_MAX = (1n << 64n) - 1n;

const GROUPS = {
  models: 'Models:',
  prompt: 'Prompt:',
  image: 'Image to video (I2V, FLF2V):',
  video: 'Video:',
  sampling: 'Sampling:',
  context: 'Context windows (long videos):',
  memory: 'Memory and speed:',
  output: 'Output:',
} as const;

/** One --lora, with the --lora-blocks / --lora-layer-filter given after it (WanModel.load's loras). */
export interface LoraSpec { path: string; strength: number; blocks?: number[]; layerFilter?: string[] }

/** Everything a run uses, defaults filled in; saved in the output's metadata. */
export interface GenerateSettings {
  model: string[];
  t5: string;
  tokenizer?: string;
  vae: string;
  clipVision?: string;
  clipEmbeds?: string;
  attentionMode: AttentionMode;
  basePrecision: BasePrecision;
  /** Where the models compute, resolved ('cpu', 'cuda', 'cuda:N'). */
  device: string;
  quantization: Quantization;
  loras: LoraSpec[];
  /** false: the LoRAs apply at run time (--no-merge-loras). */
  mergeLoras: boolean;
  compile: boolean;
  cudaGraphs: boolean;
  numHeads?: number;
  textLen: number;

  prompt: string;
  negativePrompt: string;
  diskCache?: string;

  image?: string;
  endImage?: string;
  /** Video-to-video: the video redrawn (t2v models), loaded as VHS's Load Video loads it. */
  video?: string;
  videoForceRate: number;
  videoSkipFirstFrames: number;
  videoSelectEveryNth: number;
  denoiseStrength: number;
  clipCrop: ClipCrop;
  noiseAugStrength: number;
  startLatentStrength: number;
  endLatentStrength: number;
  extraEndLatent: boolean;
  augmentEmptyFrames: number;

  width: number;
  height: number;
  numFrames: number;

  steps: number;
  /** The steps of the schedule (steps, unless enhanceHf changes them). */
  scheduledSteps: number;
  enhanceHf: boolean;
  cfg: number | number[];
  shift: number;
  seed: bigint;
  scheduler: SchedulerName;
  sigmas?: number[];
  startStep: number;
  endStep: number;
  batchedCfg: boolean;
  riflexFreqIndex: number;
  feta?: { weight: number; startPercent: number; endPercent: number };
  slg?: { blocks: number[]; startPercent: number; endPercent: number };
  cache?: CacheArgs;
  experimental?: ExperimentalArgs;
  loop?: LoopArgs;
  freeinit?: FreeInitArgs;
  nag?: NagArgs;
  context?: Required<ContextOptions>;

  blocksToSwap: number;
  prefetchBlocks: number;
  /** --max-memory: a budget in GiB, or 'auto' (what the machine has free). */
  maxMemory?: number | 'auto';
  vaeTiling?: Required<Omit<VaeTileOptions, 'tiled'>>;
  threads?: number;

  outputDir: string;
  filenamePrefix: string;
  formats: VideoFormat[];
  frameRate: number;
  loopCount: number;
  pingpong: boolean;
  crf?: number;
  pixFmt?: string;
  lossless?: boolean;
  saveMetadata: boolean;
  quiet: boolean;
}

// ---------------------------------------------------------------------------------------------
// Value parsers: each throws InvalidArgumentError, which commander prints after
// "option '--width <pixels>' argument '40' is invalid."

const INTEGER = /^[-+]?\d+$/;
const DECIMAL = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;

function integer(min: number, max: number, extra?: (n: number) => string | undefined) {
  return (value: string): number => {
    const n = Number(value.trim());
    if (!INTEGER.test(value.trim()) || !Number.isSafeInteger(n))
      throw new InvalidArgumentError(`Expected an integer but received "${value}".`);
    if (n < min || n > max) throw new InvalidArgumentError(`Expected an integer in ${min}..${max} but received ${n}.`);
    const problem = extra?.(n);
    if (problem) throw new InvalidArgumentError(problem);
    return n;
  };
}

function decimal(value: string, what = 'a number'): number {
  const v = value.trim();
  if (!DECIMAL.test(v)) throw new InvalidArgumentError(`Expected ${what} but received "${value}".`);
  return Number(v);
}

function number(min: number, max: number) {
  return (value: string): number => {
    const n = decimal(value);
    if (n < min || n > max) throw new InvalidArgumentError(`Expected a number in ${min}..${max} but received ${n}.`);
    return n;
  };
}

const multipleOf16 = integer(16, MAX_SIZE, (n) => n % 16 === 0 ? undefined
  : `Expected a multiple of 16 (the VAE downsamples 8x and the DiT patches 2x2), such as ${Math.max(16, Math.round(n / 16) * 16)}, but received ${n}.`);

const frameCount = integer(1, 10001, (n) => (n - 1) % 4 === 0 ? undefined
  : `Expected a frame count of the form 4k+1 (1, 5, ..., 81: the VAE compresses 4 frames into one after the first), such as ${Math.max(1, Math.round((n - 1) / 4) * 4 + 1)}, but received ${n}.`);

function numberList(min: number, max: number, what: string) {
  return (value: string): number[] => {
    const parts = value.split(',').map((s) => s.trim());
    if (parts.length === 0 || parts.some((p) => p === ''))
      throw new InvalidArgumentError(`Expected ${what}: numbers separated by commas, but received "${value}".`);
    return parts.map((p) => {
      const n = decimal(p, `${what}: numbers separated by commas,`);
      if (n < min || n > max) throw new InvalidArgumentError(`Expected ${what} in ${min}..${max} but received ${n}.`);
      return n;
    });
  };
}

function cfgValue(value: string): number | number[] {
  const list = numberList(0, 30, 'cfg values')(value);
  return list.length === 1 ? list[0] : list;
}

function seedValue(value: string): bigint {
  const v = value.trim();
  if (!/^\d+$/.test(v)) throw new InvalidArgumentError(`Expected an integer in 0..2^64-1 but received "${value}".`);
  const n = BigInt(v);
  if (n > U64_MAX) throw new InvalidArgumentError(`Expected an integer in 0..2^64-1 (18446744073709551615) but received ${v}.`);
  return n;
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

function formatList(value: string, previous: VideoFormat[] | undefined): VideoFormat[] {
  const out = [...(previous ?? [])];
  for (const raw of value.split(',').map((s) => s.trim())) {
    const f = (VIDEO_FORMATS as readonly string[]).includes(raw) ? raw as VideoFormat : FORMAT_ALIASES[raw];
    if (!f) throw new InvalidArgumentError(`Expected one of ${VIDEO_FORMATS.join(', ')} ` +
      `(or ${Object.keys(FORMAT_ALIASES).join(', ')}), or several separated by commas, but received "${raw}".`);
    if (!out.includes(f)) out.push(f);
  }
  return out;
}

// `file:strength` (the strength after the last colon; 1.0 when there is none), as WanVideoLoraSelect.
function loraValue(value: string, previous: LoraSpec[] | undefined): LoraSpec[] {
  const colon = value.lastIndexOf(':');
  let file = value, strength = 1;
  if (colon >= 0) {
    file = value.slice(0, colon);
    const s = value.slice(colon + 1).trim();
    if (!DECIMAL.test(s))
      throw new InvalidArgumentError(`Expected <file>:<strength> with a number strength in -1000..1000 but the strength is "${s}".`);
    strength = Number(s);
    if (strength < -1000 || strength > 1000)
      throw new InvalidArgumentError(`Expected a strength in -1000..1000 but received ${strength}.`);
  }
  if (file === '') throw new InvalidArgumentError('Expected <file>:<strength> but the file is empty.');
  return [...(previous ?? []), { path: file, strength }];
}

// `0-9,20,30-39`: block indices and inclusive ranges (WanVideoLoraBlockEdit's toggles as a list),
// below 48 (the most blocks a Wan model has, as --blocks-to-swap).
function blockList(value: string): number[] {
  const out = new Set<number>();
  for (const part of value.split(',').map((s) => s.trim())) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    const [from, to] = m ? [Number(m[1]), Number(m[2] ?? m[1])] : [NaN, NaN];
    if (!m || to < from)
      throw new InvalidArgumentError(`Expected block indices and ranges separated by commas, such as 0-9,20, but received "${value}".`);
    if (to > 47) throw new InvalidArgumentError(`Expected block indices in 0..47 but received ${to}.`);
    for (let b = from; b <= to; b++) out.add(b);
  }
  return [...out].sort((a, b) => a - b);
}

// ---------------------------------------------------------------------------------------------
// The command

interface OptionSpec {
  default?: unknown;
  defaultText?: string;
  parse?: (value: string, previous: any) => unknown;
  choices?: readonly string[];
  mandatory?: boolean;
  hidden?: boolean;
}

function option(group: string, flags: string, description: string, spec: OptionSpec = {}): Option {
  // commander shows a default only when there is a value; "off" and "all cores" go in the text.
  const text = spec.default === undefined && spec.defaultText ? `${description} (default: ${spec.defaultText})` : description;
  const o = new Option(flags, text).helpGroup(group);
  if (spec.choices) o.choices(spec.choices);
  if (spec.parse) o.argParser(spec.parse);
  if (spec.default !== undefined) o.default(spec.default, spec.defaultText);
  if (spec.mandatory) o.makeOptionMandatory();
  if (spec.hidden) o.hideHelp();
  return o;
}

const NOT_YET = '(not available yet in this version)';

export function generateCommand(): Command {
  // --lora-blocks and --lora-layer-filter change the --lora given before them: commander parses
  // options in the order they are typed, so the last LoraSpec parsed so far is theirs.
  const lastLora = (flag: string, key: 'blocks' | 'layerFilter'): LoraSpec => {
    const loras = cmd.getOptionValue('lora') as LoraSpec[] | undefined;
    const last = loras?.[loras.length - 1];
    if (!last) throw new InvalidArgumentError(`${flag} applies to the --lora given before it, and there is none.`);
    if (last[key] !== undefined) throw new InvalidArgumentError(`${flag} is given twice for --lora ${last.path}.`);
    return last;
  };
  const g = GROUPS;
  const cmd = new Command('generate')
    .description('Make a video from a text prompt (text-to-video), or from a first frame and a prompt ' +
      '(image-to-video; first and last frame with an FLF2V model).')
    .usage('--model <file> --t5 <file> --vae <file> --prompt <text> [options]')
    .helpOption('-h, --help', 'show this help')
    .allowExcessArguments(false)
    .configureHelp({ commandUsage: (c) => `wan-native generate ${c.usage()}` });

  const options: Option[] = [
    option(g.models, '--model <file>', 'the diffusion transformer (DiT): official, ComfyUI, Kijai or diffusers files, ' +
      'bf16, fp16 or fp8; repeat for shards, or give their .index.json', { parse: collect, mandatory: true }),
    option(g.models, '--t5 <file>', 'the umT5-XXL text encoder', { mandatory: true }),
    option(g.models, '--tokenizer <file>', "umT5's spiece.model or tokenizer.json",
      { defaultText: "the T5 file's own, or one beside it" }),
    option(g.models, '--vae <file>', 'the Wan2.1 VAE', { mandatory: true }),
    option(g.models, '--clip-vision <file>', 'the CLIP vision model (clip_vision_h, open-clip ViT-H/14): I2V and FLF2V models need it'),
    option(g.models, '--clip-embeds <file>', 'CLIP embeddings computed before (safetensors with a clip_embeds tensor ' +
      '[1, 257, 1280], optionally negative_clip_embeds) instead of --clip-vision'),
    option(g.models, '--device <name>', "where the models compute: auto (the GPU when this build sees one), cpu, cuda or cuda:N",
      { default: 'auto', parse: (v) => {
      if (!isDevice(v)) throw new InvalidArgumentError(`Expected one of ${DEVICES.join(', ')} or cuda:N.`);
      return v;
    } }),
    option(g.models, '--attention-mode <mode>', 'attention kernel; flash is tiled (never builds the L x L matrix; on a GPU, ' +
      "libtorch's flash SDPA), sageattn computes Q.K in int8", { choices: ATTENTION_MODES, default: 'sdpa' }),
    option(g.models, '--base-precision <dtype>', 'compute dtype on a GPU (a CPU always computes in fp32)',
      { choices: BASE_PRECISIONS, default: 'bf16' }),
    option(g.models, '--quantization <mode>', "weight storage; 'disabled' uses the weights as stored, fp8 files included; " +
      `${LOADED_QUANTIZATIONS.slice(1).join(', ')} convert the large linear weights to fp8 at load (widened per layer on the CPU); ` +
      `${GPU_QUANTIZATIONS.join(' and ')} also multiply in fp8 (a GPU of compute capability >= 8.9); the fp8_e5m2 _fast forms and ` +
      `fp8_e5m2_scaled ${NOT_YET}`,
      { choices: QUANTIZATIONS, default: 'disabled' }),
    option(g.models, '--lora <file[:strength]>', 'merge a LoRA into the model at load, at a strength (1.0, -1000..1000; 0 skips it); ' +
      'repeatable, merged in order; safetensors or .pth in any common key layout', { parse: loraValue }),
    option(g.models, '--no-merge-loras', 'apply the LoRAs at every step instead of merging them into the weights at load ' +
      '(exact on fp8 weights, where merging re-quantizes)'),
    option(g.models, '--lora-blocks <list>', 'only the given transformer blocks of the --lora before it take its update, ' +
      'e.g. 0-9,20 (keys outside the blocks, such as the head, always do)', { parse: (v) => { lastLora('--lora-blocks', 'blocks').blocks = blockList(v); return true; } }),
    option(g.models, '--lora-layer-filter <list>', "skip the layers of the --lora before it whose names contain one of these, e.g. ffn,cross_attn",
      { parse: (v) => {
        const filters = v.split(',').map((f) => f.trim()).filter((f) => f !== '');
        if (filters.length === 0) throw new InvalidArgumentError(`Expected layer names separated by commas but received "${v}".`);
        lastLora('--lora-layer-filter', 'layerFilter').layerFilter = filters;
        return true;
      } }),
    option(g.models, '--compile', 'run the q/k norms with RoPE, the modulations, the gated residuals and the GELU as fused ' +
      'kernels on a GPU (the wrapper\'s torch.compile; it changes nothing on the CPU)'),
    option(g.models, '--cuda-graphs', 'replay the DiT blocks as a CUDA graph while the shapes stay the same (torch.compile\'s ' +
      'reduce-overhead; a GPU only, without block swap)'),
    option(g.models, '--num-heads <n>', "attention heads of the DiT, for models that are not a release's",
      { parse: integer(1, 1024), defaultText: 'dim / 128, as in every release' }),
    option(g.models, '--text-len <n>', 'text tokens a prompt is padded or cut to (text encoder and DiT)',
      { parse: integer(2, 4096), default: 512 }),

    option(g.prompt, '--prompt <text>', "what the video shows; prompts separated by '|' go to successive context windows; " +
      "(text:weight) scales a prompt's embedding, as in the wrapper",
      { mandatory: true }),
    option(g.prompt, '--negative-prompt <text>', 'what to steer away from (used when cfg is not 1)',
      { default: DEFAULT_NEGATIVE_PROMPT, defaultText: "Wan2.1's official negative prompt (Chinese)" }),
    option(g.prompt, '--disk-cache <dir>', 'keep text encodings in this folder and reuse them (use_disk_cache)'),

    option(g.image, '--image <file>', 'the first frame (PNG, JPEG or WebP); needs an I2V or FLF2V model'),
    option(g.image, '--end-image <file>', 'the last frame (FLF2V models; with an I2V model it conditions the last latent)'),
    option(g.image, '--clip-crop <mode>', "how CLIP sees the image: 'disabled' stretches it to 224x224 as the official " +
      "pipeline does, 'center' cuts the centre as the wrapper's default", { choices: CLIP_CROPS, default: 'disabled' }),
    option(g.image, '--noise-aug-strength <x>', 'noise added to the images before encoding', { parse: number(0, 10), default: 0 }),
    option(g.image, '--start-latent-strength <x>', 'multiplier of the first latent frame', { parse: number(0, 10), default: 1 }),
    option(g.image, '--extra-end-latent', 'with --end-image and an I2V model that is not FLF2V: encode the end image as a latent ' +
      'frame of its own after the video\'s (the wrapper\'s fun_or_fl2v_model false), which the decode leaves out'),
    option(g.image, '--augment-empty-frames <k>', 'move the latent frames no image fixes (1 + k) times as far from the first ' +
      '(0.15 is a reported good value)', { parse: number(0, 10), default: 0 }),
    option(g.image, '--end-latent-strength <x>', 'multiplier of the last latent frame (the end image, or the blank frames at the end)', { parse: number(0, 10), default: 1 }),

    option(g.video, '--width <pixels>', 'a multiple of 16', { parse: multipleOf16, default: 832 }),
    option(g.video, '--height <pixels>', 'a multiple of 16', { parse: multipleOf16, default: 480 }),
    option(g.video, '--num-frames <n>', 'frames, of the form 4k+1 (81 = 5 s at 16 fps)', { parse: frameCount, default: 81 }),
    option(g.video, '--video <file>', 'video-to-video (a t2v model): this video, cut to --width x --height from its centre and ' +
      'to at most --num-frames frames (4k+1), redrawn from --denoise-strength of the way to noise'),
    option(g.video, '--video-force-rate <fps>', 'the video\'s frames resampled to this rate first (0: its own; 16 is Wan\'s)',
      { parse: number(0, 60), default: 0 }),
    option(g.video, '--video-skip-first-frames <n>', 'frames of the video (at the forced rate) left out at the start', { parse: integer(0, 1e9), default: 0 }),
    option(g.video, '--video-select-every-nth <n>', 'of the video\'s frames after those, the first of every n', { parse: integer(1, 1e9), default: 1 }),
    option(g.video, '--denoise-strength <x>', 'with --video: how much of the schedule is run from the video noised to its start ' +
      '(1 would ignore the video)', { parse: number(0, 1), default: 1 }),

    option(g.sampling, '--steps <n>', 'denoising steps', { parse: integer(1, 10000), default: 30 }),
    option(g.sampling, '--cfg <x>', 'classifier-free guidance scale 0..30, or one per step separated by commas; 1 skips the negative pass',
      { parse: cfgValue, default: 6 }),
    option(g.sampling, '--shift <x>', 'timestep shift of the flow-matching schedule', { parse: number(0, 1000), default: 5 }),
    option(g.sampling, '--seed <n>', 'noise seed, 0..2^64-1', { parse: seedValue, default: 0n, defaultText: '0' }),
    option(g.sampling, '--scheduler <name>', 'sampler', { choices: SCHEDULER_NAMES, default: 'unipc' }),
    option(g.sampling, '--sigmas <list>', 'custom sigmas in [0, 1] separated by commas (steps + 1 falling values, the ' +
      'last 0 for a finished video); replaces the schedule and --shift, and sets --steps', { parse: numberList(0, 1, 'sigmas') }),
    option(g.sampling, '--enhance-hf', 'the wrapper\'s enhance_hf: keep the steps above half noise and finish with a uniform ' +
      'tail of 3 to 15 steps (20% of them), which changes the number of steps'),
    option(g.sampling, '--start-step <n>', 'first step to run', { parse: integer(0, 10000), default: 0 }),
    option(g.sampling, '--end-step <n>', 'step to stop before; -1 runs to the end', { parse: integer(-1, 10000), default: -1 }),
    option(g.sampling, '--batched-cfg', 'run the positive and negative passes as one batch (faster on a GPU, more memory)'),
    option(g.sampling, '--feta-weight <x>', 'Enhance-A-Video weight, 0..100 (2.0 is typical)', { parse: number(0, 100), defaultText: 'off' }),
    option(g.sampling, '--feta-start-percent <x>', 'Enhance-A-Video from this fraction of the steps', { parse: number(0, 1), default: 0 }),
    option(g.sampling, '--feta-end-percent <x>', 'Enhance-A-Video until this fraction of the steps', { parse: number(0, 1), default: 1 }),
    option(g.sampling, '--slg-blocks <list>', 'skip layer guidance: the transformer blocks the negative pass leaves out, ' +
      'e.g. 9,10 (the wrapper\'s WanVideo SLG; 10 is its default)', { parse: blockList, defaultText: 'off' }),
    option(g.sampling, '--slg-start-percent <x>', 'skip layer guidance from this fraction of the steps', { parse: number(0, 1), default: 0.1 }),
    option(g.sampling, '--slg-end-percent <x>', 'skip layer guidance until this fraction of the steps', { parse: number(0, 1), default: 1 }),
    option(g.sampling, '--teacache <threshold>', 'TeaCache: skip the transformer blocks of a step, reusing what they added ' +
      'before, while the time embedding has changed less than this (rel_l1_thresh 0..1: 1.3B 0.05-0.08, others 0.15-0.30)',
      { parse: number(0, 1), defaultText: 'off' }),
    option(g.sampling, '--teacache-start-step <n>', 'TeaCache from this step run', { parse: integer(0, 9999), default: 1 }),
    option(g.sampling, '--teacache-end-step <n>', 'TeaCache until this step run; -1 to the end', { parse: integer(-1, 9999), default: -1 }),
    option(g.sampling, '--teacache-mode <mode>', 'what TeaCache compares: e (the time embedding) or e0 (its modulation)', { choices: ['e', 'e0'], default: 'e' }),
    option(g.sampling, '--teacache-coefficients <model>', 'whose rescaling polynomial TeaCache uses (none: the change as it is); ' +
      'by default the model\'s, as the wrapper picks it', { choices: ['1_3B', '14B', 'i2v_480', 'i2v_720', 'none'], defaultText: 'the model\'s' }),
    option(g.sampling, '--magcache <threshold>', 'MagCache: skip the transformer blocks of a step, reusing what they added ' +
      'before, while the error the model\'s calibrated magnitude ratios predict stays below this (magcache_thresh 0..0.3)',
      { parse: number(0, 0.3), defaultText: 'off' }),
    option(g.sampling, '--magcache-k <n>', 'MagCache skips at most this many steps in a row', { parse: integer(0, 6), default: 4 }),
    option(g.sampling, '--magcache-start-step <n>', 'MagCache from this step run', { parse: integer(0, 9999), default: 1 }),
    option(g.sampling, '--magcache-end-step <n>', 'MagCache until this step run; -1 to the end', { parse: integer(-1, 9999), default: -1 }),
    option(g.sampling, '--easycache <threshold>', 'EasyCache: skip the transformer blocks of a step, reusing what they added ' +
      'before, while the output change predicted from the input\'s stays below this (easycache_thresh 0..1)',
      { parse: number(0, 1), defaultText: 'off' }),
    option(g.sampling, '--easycache-start-step <n>', 'EasyCache from this step run', { parse: integer(0, 9999), default: 10 }),
    option(g.sampling, '--easycache-end-step <n>', 'EasyCache until this step run; -1 to the end', { parse: integer(-1, 9999), default: -1 }),
    option(g.sampling, '--loop-shift-skip <n>', 'a looping video (the wrapper\'s WanVideo Loop Args): each step the model sees the ' +
      'latent rolled this many latent frames further (about half of them is typical), and the decode wraps the end into the start',
      { parse: integer(0, 10000), defaultText: 'off' }),
    option(g.sampling, '--loop-start-percent <x>', 'the loop\'s rolling from this fraction of the steps', { parse: number(0, 1), default: 0 }),
    option(g.sampling, '--loop-end-percent <x>', 'the loop\'s rolling until this fraction of the steps', { parse: number(0, 1), default: 1 }),
    option(g.sampling, '--cfg-zero-star', 'CFG-Zero*: scale the negative prediction by its projection on the positive one before guidance'),
    option(g.sampling, '--use-zero-init', 'with --cfg-zero-star: the first steps (0..--zero-star-steps) predict zero, without running the model'),
    option(g.sampling, '--zero-star-steps <n>', 'the last step --use-zero-init zeroes', { parse: integer(0, 10000), default: 0 }),
    option(g.sampling, '--fresca', 'FreSca: scale the guidance term\'s low spatial frequencies by --fresca-scale-low, the rest by --fresca-scale-high'),
    option(g.sampling, '--fresca-scale-low <x>', 'FreSca\'s factor for the low frequencies', { parse: number(0, 10), default: 1 }),
    option(g.sampling, '--fresca-scale-high <x>', 'FreSca\'s factor for the high frequencies', { parse: number(0, 10), default: 1.25 }),
    option(g.sampling, '--fresca-freq-cutoff <n>', 'FreSca\'s low band: this many latent frequency bins each side of the centre',
      { parse: integer(0, 10000), default: 20 }),
    option(g.sampling, '--tcfg', 'TCFG: drop the negative prediction\'s tangential part (per latent channel) before guidance'),
    option(g.sampling, '--raag-alpha <x>', 'RAAG: lower each step\'s cfg where the predictions disagree, 1 + (cfg - 1) exp(-alpha ratio); ' +
      '1 is typical', { parse: number(0, 10), defaultText: 'off' }),
    option(g.sampling, '--tsr', 'Temporal Score Rescaling: scale the predicted noise towards --tsr-k as the noise level falls'),
    option(g.sampling, '--tsr-k <x>', 'TSR\'s sampling temperature (below 1: sharper)', { parse: number(0, 100), default: 0.95 }),
    option(g.sampling, '--tsr-sigma <x>', 'how early TSR steers (0..1)', { parse: number(0, 1), default: 1 }),
    option(g.sampling, '--nag-scale <x>', 'NAG (the wrapper\'s WanVideo Apply NAG): the positive pass\'s text attention pushed away ' +
      'from the negative prompt\'s by this scale (0..100; 11 is the wrapper\'s default), which steers at cfg 1 too',
      { parse: number(0, 100), defaultText: 'off' }),
    option(g.sampling, '--nag-tau <x>', 'NAG: the guided attention\'s norm held to at most this times the plain one\'s', { parse: number(0, 10), default: 2.5 }),
    option(g.sampling, '--nag-alpha <x>', 'NAG: the share of the guided attention in the blend', { parse: number(0, 1), default: 0.25 }),
    option(g.sampling, '--freeinit <runs>', 'FreeInit: sample this many times (2..10), each run after the first from the last ' +
      'result re-noised, its low frequencies kept (the wrapper\'s WanVideo Free Init Args; each run costs a whole sampling)',
      { parse: integer(2, 10), defaultText: 'off' }),
    option(g.sampling, '--freeinit-method <name>', 'FreeInit\'s low-pass filter', { choices: FREEINIT_METHODS, default: 'ideal' }),
    option(g.sampling, '--freeinit-n <n>', 'the butterworth filter\'s order', { parse: integer(1, 10), default: 4 }),
    option(g.sampling, '--freeinit-d-s <x>', 'FreeInit\'s spatial cutoff (0: the next start all fresh noise)', { parse: number(0, 10), default: 1 }),
    option(g.sampling, '--freeinit-d-t <x>', 'FreeInit\'s temporal cutoff', { parse: number(0, 10), default: 1 }),
    option(g.sampling, '--riflex-freq-index <n>', 'RIFLEx: the RoPE frame frequency stretched over the video, so that frames ' +
      'past the 81 the model was trained on do not repeat the first; 0 off, 6 is typical (1..22 for Wan2.1)',
      { parse: integer(0, 1000), default: 0 }),

    option(g.context, '--context-frames <n>', 'frames per window (pixel frames); giving it turns context windows on',
      { parse: integer(2, 1000), defaultText: 'off' }),
    option(g.context, '--context-schedule <name>', 'how windows are placed', { choices: CONTEXT_SCHEDULES, default: 'uniform_standard' }),
    option(g.context, '--context-stride <n>', 'window stride, pixel frames (uniform schedules)', { parse: integer(4, 100), default: 4 }),
    option(g.context, '--context-overlap <n>', 'frames neighbouring windows share', { parse: integer(4, 100), default: 16 }),
    option(g.context, '--no-freenoise', 'do not shuffle the noise per window (FreeNoise is on by default)'),
    option(g.context, '--fuse-method <name>', "how overlapping windows blend: 'linear' ramps at the edges, 'pyramid' peaks mid-window",
      { choices: CONTEXT_FUSE_METHODS, default: 'linear' }),

    option(g.memory, '--blocks-to-swap <n>', 'the last n transformer blocks keep their stored weights and are made ready a block ' +
      'at a time just before use (on the CPU: widened from bf16/fp8 to fp32; on a GPU: moved from CPU memory); the output is the same',
      { parse: integer(0, 48), default: 0 }),
    option(g.memory, '--prefetch-blocks <n>', 'swapped blocks prepared ahead, on worker threads, while the current one computes (with --blocks-to-swap; 1 is usually enough)',
      { parse: integer(0, 40), default: 0 }),
    option(g.memory, '--max-memory <GB>', "memory budget in GiB (or 'auto': what the machine has free); before loading anything, " +
      'the planner picks the weight storage (fp8 only when needed), block swap and VAE tiling that fit, prints a memory summary, ' +
      'or stops saying what is needed and what would fit; --quantization and --blocks-to-swap given are kept',
      { parse: (v: string) => (v === 'auto' ? 'auto' : number(0.1, 1e6)(v)), defaultText: 'off' }),
    option(g.memory, '--vae-tiling', 'decode (and encode a --video) in spatial tiles, for sizes that do not fit otherwise'),
    option(g.memory, '--tile-x <pixels>', 'tile width (with --vae-tiling), a multiple of 8', { parse: integer(8, MAX_SIZE), default: 272 }),
    option(g.memory, '--tile-y <pixels>', 'tile height (with --vae-tiling), a multiple of 8', { parse: integer(8, MAX_SIZE), default: 272 }),
    option(g.memory, '--tile-stride-x <pixels>', 'horizontal tile stride (with --vae-tiling), a multiple of 8', { parse: integer(8, MAX_SIZE), default: 144 }),
    option(g.memory, '--tile-stride-y <pixels>', 'vertical tile stride (with --vae-tiling), a multiple of 8', { parse: integer(8, MAX_SIZE), default: 128 }),
    option(g.memory, '--threads <n>', 'CPU threads libtorch uses', { parse: integer(1, 4096), defaultText: 'all cores' }),

    option(g.output, '--output-dir <dir>', 'where files are written', { default: 'output', defaultText: './output' }),
    option(g.output, '--filename-prefix <prefix>', 'start of the file names, may hold subfolders: <prefix>_00001.mp4', { default: 'wan' }),
    option(g.output, '--format <formats>', `one or several separated by commas (or repeated): ${VIDEO_FORMATS.join(', ')}; ` +
      'short names mp4, h265, webm, gif, webp, png (one file per frame)', { parse: formatList, defaultText: 'video/h264-mp4' }),
    option(g.output, '--frame-rate <fps>', 'frames per second (Wan2.1 is trained on 16)', { parse: number(1, 1000), default: 16 }),
    option(g.output, '--loop-count <n>', 'GIF and WebP: repeats after the first play, 0 forever; videos: extra copies',
      { parse: integer(0, 100), default: 0 }),
    option(g.output, '--pingpong', 'append the frames backwards, for a seamless loop'),
    option(g.output, '--crf <n>', 'constant rate factor of video formats', { parse: integer(0, 100), defaultText: 'h264 19, h265 22, webm 20' }),
    option(g.output, '--pix-fmt <name>', 'pixel format of video formats: yuv420p, yuv420p10le (h264, h265), yuva420p (webm)',
      { defaultText: 'yuv420p; h265 yuv420p10le' }),
    option(g.output, '--no-lossless', 'WebP: lossy at quality 80 instead of lossless'),
    option(g.output, '--no-save-metadata', 'do not embed the prompt and settings in the output'),
    option(g.output, '-q, --quiet', 'print only the written paths (and errors)'),
  ];
  for (const o of options) cmd.addOption(o);

  cmd.addHelpText('after', `
Files are checked from their headers before anything is loaded. Each model is freed as soon
as its stage is done (text encoder, CLIP, then the DiT before decoding). Ctrl-C stops cleanly
and writes nothing; a second Ctrl-C quits at once. Exit codes: 0 done, 1 failed, 2 bad
options, 130 stopped.

Examples:
  wan-native generate --model wan2.1_t2v_1.3B_bf16.safetensors --t5 umt5-xxl-enc-bf16.safetensors \\
    --vae wan_2.1_vae.safetensors --prompt "a cat walks on the beach at sunset" --format mp4,gif
  wan-native generate --model wan2.1_i2v_480p_14B_bf16.safetensors --t5 umt5-xxl-enc-bf16.safetensors \\
    --vae wan_2.1_vae.safetensors --clip-vision clip_vision_h.safetensors --image first.png \\
    --prompt "the camera pans slowly to the right" --steps 20 --seed 42`);
  return cmd;
}

// ---------------------------------------------------------------------------------------------
// From parsed options to settings

/** Library option names in messages -> the flags users typed. */
const FLAG_OF: Record<string, string> = {
  'contextOptions.frames': '--context-frames', 'contextOptions.stride': '--context-stride',
  'contextOptions.overlap': '--context-overlap', 'contextOptions.schedule': '--context-schedule',
  'contextOptions.fuse': '--fuse-method', steps: '--steps', shift: '--shift', sigmas: '--sigmas', scheduler: '--scheduler',
  crf: '--crf', pixFmt: '--pix-fmt', loopCount: '--loop-count', frameRate: '--frame-rate', lossless: '--no-lossless',
  filenamePrefix: '--filename-prefix', outputDir: '--output-dir', format: '--format',
};

function asUsage(err: unknown): never {
  if (err instanceof WanError && err.code === 'WAN_INVALID_OPTION') {
    const message = err.message
      .replace(/\bcontextOptions\.\w+/g, (name) => FLAG_OF[name] ?? name)
      .replace(/\b(for|with) ([a-z][A-Za-z]*)\b/g, (all, word, name) => (FLAG_OF[name] ? `${word} ${FLAG_OF[name]}` : all))
      .replace(/ of type \w+/g, '');
    throw new UsageError(message);
  }
  throw err;
}

export function settingsFrom(cmd: Command): GenerateSettings {
  const o = cmd.opts();
  const given = (key: string) => cmd.getOptionValueSource(key) === 'cli';
  const flag = (key: string) => '--' + key.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());

  // Cross-option rules first; what is not implemented is refused after every value was checked.
  if (given('extraEndLatent') && !o.endImage) throw new UsageError('--extra-end-latent needs --end-image');
  for (const key of ['endImage', 'clipCrop', 'noiseAugStrength', 'startLatentStrength', 'endLatentStrength', 'augmentEmptyFrames']) {
    if (given(key) && !o.image) throw new UsageError(`${flag(key)} needs --image (it applies to image-to-video)`);
  }
  if (o.clipVision && o.clipEmbeds) throw new UsageError('--clip-vision and --clip-embeds exclude each other: give one');
  for (const key of ['videoForceRate', 'videoSkipFirstFrames', 'videoSelectEveryNth', 'denoiseStrength'])
    if (given(key) && !o.video) throw new UsageError(`${flag(key)} needs --video (it applies to video-to-video)`);
  if (o.video && o.image) throw new UsageError('--video and --image exclude each other: video-to-video takes a t2v model and no image');
  if (o.video && o.denoiseStrength === 1)
    throw new UsageError('--video needs --denoise-strength below 1 (how much of the video to redraw: 1 would start from noise and ignore it)');
  if (o.video && o.freeinit !== undefined) throw new UsageError('--freeinit with --video: FreeInit runs the whole schedule from noise; leave one out');
  if ((o.clipVision || o.clipEmbeds) && !o.image)
    throw new UsageError(`${o.clipVision ? '--clip-vision' : '--clip-embeds'} needs --image (CLIP sees the first frame)`);
  for (const key of ['contextSchedule', 'contextStride', 'contextOverlap', 'freenoise', 'fuseMethod']) {
    if (given(key) && o.contextFrames === undefined)
      throw new UsageError(`${key === 'freenoise' ? '--no-freenoise' : flag(key)} needs --context-frames (which turns context windows on)`);
  }
  for (const key of ['fetaStartPercent', 'fetaEndPercent']) {
    if (given(key) && o.fetaWeight === undefined) throw new UsageError(`${flag(key)} needs --feta-weight (which turns Enhance-A-Video on)`);
  }
  const caches = { teacache: 'TeaCache', magcache: 'MagCache', easycache: 'EasyCache' } as const;
  const cachesOn = Object.keys(caches).filter((k) => o[k] !== undefined);
  if (cachesOn.length > 1) throw new UsageError(`${cachesOn.map((k) => flag(k)).join(' and ')}: one cache at a time; leave all but one out`);
  for (const [on, name] of Object.entries(caches)) {
    for (const key of Object.keys(o).filter((k) => k.startsWith(on) && k !== on)) {
      if (given(key) && o[on] === undefined) throw new UsageError(`${flag(key)} needs --${on} (which turns ${name} on)`);
    }
    if (o[on] !== undefined && o.batchedCfg)
      throw new UsageError(`--batched-cfg and --${on}: ${name} keeps the positive and negative passes apart; leave one out`);
  }
  if (o.loopShiftSkip !== undefined && o.numFrames < 9)
    throw new UsageError(`--loop-shift-skip needs --num-frames 9 or more (the looped decode wraps the last 3 latent frames into the first 2) but received ${o.numFrames}`);
  const needs: [string, string][] = [['loopStartPercent', 'loopShiftSkip'], ['loopEndPercent', 'loopShiftSkip'], ['useZeroInit', 'cfgZeroStar'], ['zeroStarSteps', 'useZeroInit'], ['frescaScaleLow', 'fresca'],
    ['frescaScaleHigh', 'fresca'], ['frescaFreqCutoff', 'fresca'], ['tsrK', 'tsr'], ['tsrSigma', 'tsr'], ['freeinitMethod', 'freeinit'],
    ['freeinitN', 'freeinit'], ['freeinitDS', 'freeinit'], ['freeinitDT', 'freeinit'], ['nagTau', 'nagScale'], ['nagAlpha', 'nagScale']];
  for (const [key, on] of needs) if (given(key) && o[on] === undefined) throw new UsageError(`${flag(key)} needs ${flag(on)}`);
  if (o.nagScale !== undefined && o.batchedCfg)
    throw new UsageError('--batched-cfg and --nag-scale: NAG guides the positive pass alone, which the batched pass runs with the negative; leave one out');
  if (o.freeinit !== undefined && (o.startStep !== 0 || o.endStep !== -1))
    throw new UsageError('--freeinit with --start-step or --end-step: FreeInit runs the whole schedule each time; leave one out');
  for (const key of ['slgStartPercent', 'slgEndPercent']) {
    if (given(key) && o.slgBlocks === undefined) throw new UsageError(`${flag(key)} needs --slg-blocks (which turns skip layer guidance on)`);
  }
  if (o.slgBlocks !== undefined && o.slgStartPercent > o.slgEndPercent)
    throw new UsageError(`--slg-start-percent (${o.slgStartPercent}) is after --slg-end-percent (${o.slgEndPercent}): skip layer guidance would never apply`);
  if (o.fetaWeight !== undefined && o.fetaStartPercent > o.fetaEndPercent)
    throw new UsageError(`--feta-start-percent (${o.fetaStartPercent}) is after --feta-end-percent (${o.fetaEndPercent}): Enhance-A-Video would never apply`);
  if (given('clipCrop') && o.clipEmbeds)
    throw new UsageError('--clip-crop applies to --clip-vision, which encodes the image; --clip-embeds are encoded already');
  for (const key of ['tileX', 'tileY', 'tileStrideX', 'tileStrideY']) {
    if (given(key) && !o.vaeTiling) throw new UsageError(`${flag(key)} needs --vae-tiling`);
    if (o[key] % 8 !== 0) throw new UsageError(`${flag(key)}: expected a multiple of 8 but received ${o[key]}`);
  }
  if (given('prefetchBlocks') && o.prefetchBlocks > 0 && o.blocksToSwap === 0)
    throw new UsageError('--prefetch-blocks needs --blocks-to-swap (it prepares swapped blocks ahead of their use)');
  if (o.vaeTiling) {
    if (o.tileStrideX >= o.tileX) throw new UsageError(`--tile-stride-x (${o.tileStrideX}) must be smaller than --tile-x (${o.tileX}) for tiles to overlap`);
    if (o.tileStrideY >= o.tileY) throw new UsageError(`--tile-stride-y (${o.tileStrideY}) must be smaller than --tile-y (${o.tileY}) for tiles to overlap`);
  }

  // Steps: --sigmas sets them.
  let steps: number = o.steps;
  if (o.sigmas) {
    if (given('steps') && o.steps !== o.sigmas.length - 1)
      throw new UsageError(`--steps ${o.steps} does not match --sigmas, which gives ${o.sigmas.length - 1} steps (one fewer than sigmas); leave --steps out`);
    steps = o.sigmas.length - 1;
  }
  const requestedSteps = steps;
  try {
    // --enhance-hf changes the number of steps that --start-step and --end-step count.
    steps = schedule(o.scheduler, { steps, shift: o.shift, sigmas: o.sigmas, enhanceHf: o.enhanceHf === true }).fullSigmas.length - 1;
  } catch (err) {
    asUsage(err);
  }
  if (o.startStep >= steps) throw new UsageError(`--start-step: expected an integer in 0..${steps - 1} but received ${o.startStep}`);
  if (o.endStep !== -1 && (o.endStep <= o.startStep || o.endStep > steps))
    throw new UsageError(`--end-step: expected -1 or an integer in ${o.startStep + 1}..${steps} but received ${o.endStep}`);
  // One value per step run (the library pads a shorter list with its last value, as the wrapper
  // does; here a count that fits no run is more likely a mistake).
  const runSteps = (o.endStep === -1 ? steps : o.endStep) - o.startStep;
  if (Array.isArray(o.cfg) && o.cfg.length !== runSteps)
    throw new UsageError(`--cfg: expected one value or ${runSteps} (one per step run) but received ${o.cfg.length}`);

  let context: Required<ContextOptions> | undefined;
  let windowed = false;
  if (o.contextFrames !== undefined) {
    context = {
      frames: o.contextFrames, schedule: o.contextSchedule as ContextSchedule, stride: o.contextStride,
      overlap: o.contextOverlap, freenoise: o.freenoise as boolean, fuse: o.fuseMethod as ContextFuse,
    };
    try {
      windowed = resolveContextOptions(context, latentFramesOf(o.numFrames)) !== null;
    } catch (err) {
      asUsage(err);
    }
  }

  const promptCount = (o.prompt as string).split('|').length;
  if (promptCount > 1 && !windowed)
    throw new UsageError(`--prompt holds ${promptCount} prompts separated by '|', which go to successive context windows: ` +
      (context ? `windows of --context-frames ${o.contextFrames} are longer than the ${o.numFrames}-frame video, which is sampled in one piece`
        : 'give --context-frames too (or leave the | out)'));

  const formats: VideoFormat[] = o.format ?? ['video/h264-mp4'];
  const videoFormats = formats.filter((f) => VIDEO_CODEC_FORMATS.includes(f));
  for (const key of ['crf', 'pixFmt']) {
    if (o[key] !== undefined && videoFormats.length === 0)
      throw new UsageError(`${flag(key)} applies to the video formats (${VIDEO_CODEC_FORMATS.join(', ')}) but --format is ${formats.join(',')}`);
  }
  if (given('mergeLoras') && (o.lora ?? []).length === 0)
    throw new UsageError('--no-merge-loras applies to the --lora files, and none is given');
  if (given('lossless') && !formats.includes('image/webp'))
    throw new UsageError(`--no-lossless applies to image/webp but --format is ${formats.join(',')}`);

  const s: GenerateSettings = {
    model: o.model, t5: o.t5, tokenizer: o.tokenizer, vae: o.vae, clipVision: o.clipVision, clipEmbeds: o.clipEmbeds,
    attentionMode: o.attentionMode, basePrecision: o.basePrecision, device: resolveDevice(o.device), quantization: o.quantization,
    loras: o.lora ?? [], mergeLoras: o.mergeLoras !== false, compile: o.compile === true, cudaGraphs: o.cudaGraphs === true, numHeads: o.numHeads, textLen: o.textLen,
    prompt: o.prompt, negativePrompt: o.negativePrompt, diskCache: o.diskCache,
    image: o.image, endImage: o.endImage, clipCrop: o.clipCrop, noiseAugStrength: o.noiseAugStrength,
    video: o.video, videoForceRate: o.videoForceRate, videoSkipFirstFrames: o.videoSkipFirstFrames,
    videoSelectEveryNth: o.videoSelectEveryNth, denoiseStrength: o.denoiseStrength,
    startLatentStrength: o.startLatentStrength, endLatentStrength: o.endLatentStrength,
    extraEndLatent: o.extraEndLatent === true, augmentEmptyFrames: o.augmentEmptyFrames,
    width: o.width, height: o.height, numFrames: o.numFrames,
    steps: requestedSteps, scheduledSteps: steps, cfg: o.cfg, shift: o.shift, seed: o.seed, scheduler: o.scheduler, sigmas: o.sigmas,
    enhanceHf: o.enhanceHf === true,
    startStep: o.startStep, endStep: o.endStep, batchedCfg: o.batchedCfg === true, riflexFreqIndex: o.riflexFreqIndex,
    feta: o.fetaWeight === undefined ? undefined
      : { weight: o.fetaWeight, startPercent: o.fetaStartPercent, endPercent: o.fetaEndPercent },
    cache: o.teacache !== undefined ? {
      relL1Thresh: o.teacache, startStep: o.teacacheStartStep, endStep: o.teacacheEndStep, mode: o.teacacheMode,
      ...(o.teacacheCoefficients === 'none' ? { useCoefficients: false }
        : o.teacacheCoefficients !== undefined ? { coefficients: o.teacacheCoefficients } : {}),
    } : o.magcache !== undefined ? {
      cacheType: 'MagCache', magcacheThresh: o.magcache, magcacheK: o.magcacheK, startStep: o.magcacheStartStep, endStep: o.magcacheEndStep,
    } : o.easycache !== undefined ? {
      cacheType: 'EasyCache', easycacheThresh: o.easycache, startStep: o.easycacheStartStep, endStep: o.easycacheEndStep,
    } : undefined,
    experimental: o.cfgZeroStar || o.fresca || o.tcfg || o.raagAlpha !== undefined || o.tsr ? {
      cfgZeroStar: o.cfgZeroStar === true, useZeroInit: o.useZeroInit === true, zeroStarSteps: o.zeroStarSteps,
      useFresca: o.fresca === true, frescaScaleLow: o.frescaScaleLow, frescaScaleHigh: o.frescaScaleHigh, frescaFreqCutoff: o.frescaFreqCutoff,
      useTcfg: o.tcfg === true, raagAlpha: o.raagAlpha, temporalScoreRescaling: o.tsr === true, tsrK: o.tsrK, tsrSigma: o.tsrSigma,
    } : undefined,
    loop: o.loopShiftSkip === undefined ? undefined
      : { shiftSkip: o.loopShiftSkip, startPercent: o.loopStartPercent, endPercent: o.loopEndPercent },
    nag: o.nagScale === undefined ? undefined : { nagScale: o.nagScale, nagTau: o.nagTau, nagAlpha: o.nagAlpha },
    freeinit: o.freeinit === undefined ? undefined : {
      freeinitNumIters: o.freeinit, freeinitMethod: o.freeinitMethod, freeinitN: o.freeinitN, freeinitDS: o.freeinitDS, freeinitDT: o.freeinitDT,
    },
    slg: o.slgBlocks === undefined ? undefined
      : { blocks: o.slgBlocks, startPercent: o.slgStartPercent, endPercent: o.slgEndPercent },
    context,
    blocksToSwap: o.blocksToSwap, prefetchBlocks: o.prefetchBlocks, maxMemory: o.maxMemory,
    vaeTiling: o.vaeTiling ? { tileX: o.tileX, tileY: o.tileY, tileStrideX: o.tileStrideX, tileStrideY: o.tileStrideY } : undefined,
    threads: o.threads,
    outputDir: path.resolve(o.outputDir), filenamePrefix: o.filenamePrefix, formats, frameRate: o.frameRate,
    loopCount: o.loopCount, pingpong: o.pingpong === true, crf: o.crf, pixFmt: o.pixFmt,
    lossless: given('lossless') ? o.lossless : undefined, saveMetadata: o.saveMetadata !== false, quiet: o.quiet === true,
  };

  // Parsed and valid, but not implemented: refused rather than ignored.
  const notYet = (what: string, why: string) =>
    new UsageError(`${what} is not available yet in this version of wan-native (${why}); leave it out`);
  if (s.device !== 'cpu' && !native().runtimeInfo().cuda)
    throw new UsageError(`--device ${o.device}: ${native().runtimeInfo().backend === 'cpu' ? 'this build of wan-native is CPU-only'
      : 'no CUDA GPU is visible to this process'}; use --device cpu or auto`);
  if (GPU_QUANTIZATIONS.includes(s.quantization) && s.device === 'cpu')
    throw new UsageError(`--quantization ${s.quantization} runs fp8 matmuls on a GPU (compute capability >= 8.9), and the model ` +
      `computes on the CPU (--device ${o.device}), where fp8 is storage: use one of ${LOADED_QUANTIZATIONS.join(', ')}`);
  if (!LOADED_QUANTIZATIONS.includes(s.quantization) && !GPU_QUANTIZATIONS.includes(s.quantization)) {
    const why = s.quantization.endsWith('_fast')
      ? `of the fp8 matmul forms only ${GPU_QUANTIZATIONS.join(' and ')} are implemented`
      : 'scaled fp8_e5m2 storage is not implemented';
    throw notYet(`--quantization ${s.quantization}`, `${why}: use one of ${[...LOADED_QUANTIZATIONS, ...GPU_QUANTIZATIONS].join(', ')}`);
  }
  return s;
}

// What writing the output needs, checked before anything is loaded: the output options, ffmpeg
// for the video formats, and an output folder that takes new files (prepareOutput).
async function checkOutput(s: GenerateSettings): Promise<void> {
  if (fs.existsSync(s.outputDir) && !fs.statSync(s.outputDir).isDirectory())
    throw new UsageError(`--output-dir: ${s.outputDir} is a file, not a folder`);
  for (const format of s.formats) {
    try {
      await prepareOutput({ ...combineOptions(s, format), metadata: {} });
    } catch (err) {
      if (err instanceof WanError && err.code === 'WAN_IO') throw new UsageError(`--output-dir: ${err.message}`);
      if (err instanceof WanError && err.code === 'WAN_INVALID_OPTION') asUsage(err);
      throw err;
    }
  }
}

function combineOptions(s: GenerateSettings, format: VideoFormat): VideoCombineOptions {
  const video = VIDEO_CODEC_FORMATS.includes(format);
  return {
    format, frameRate: s.frameRate, loopCount: s.loopCount, pingpong: s.pingpong, outputDir: s.outputDir,
    filenamePrefix: s.filenamePrefix, saveMetadata: s.saveMetadata,
    ...(video && s.crf !== undefined ? { crf: s.crf } : {}),
    ...(video && s.pixFmt !== undefined ? { pixFmt: s.pixFmt } : {}),
    ...(format === 'image/webp' && s.lossless !== undefined ? { lossless: s.lossless } : {}),
  };
}

// ---------------------------------------------------------------------------------------------
// Files, from their headers

type Task = 't2v' | 'i2v' | 'flf2v';

interface Plan { task: Task; startImage?: Tensor; endImage?: Tensor; video?: Tensor }

// --video, loaded as VHS's Load Video loads it at the output size: centre crop and LANCZOS to
// --width x --height, at most --num-frames frames, cut to 4k+1 ('Wan' format).
async function decodeVideo(s: GenerateSettings): Promise<Tensor> {
  try {
    const { frames } = await loadVideo(s.video!, { customWidth: s.width, customHeight: s.height, frameLoadCap: s.numFrames,
      forceRate: s.videoForceRate, skipFirstFrames: s.videoSkipFirstFrames, selectEveryNth: s.videoSelectEveryNth, format: 'Wan' });
    return frames;
  } catch (err) {
    if (err instanceof WanError && err.code === 'WAN_INVALID_OPTION') throw new UsageError(`--video: ${err.message}`);
    throw err;
  }
}

// Images are decoded now (they are small), so that a file that is no image is a usage error.
async function decodeImage(file: string, flagName: string): Promise<Tensor> {
  try {
    return await loadImage(file);
  } catch (err) {
    if (err instanceof WanError && err.code === 'WAN_INVALID_OPTION') throw new UsageError(`${flagName}: ${err.message}`);
    throw err;
  }
}

function mustExist(file: string, flagName: string): void {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(file);
  } catch {
    throw new UsageError(`${flagName}: no such file: ${file}`);
  }
  if (!stat.isFile()) throw new UsageError(`${flagName}: not a file: ${file}`);
}

async function inspectAs(file: string | string[], flagName: string, family: CheckpointInfo['family'], what: string): Promise<CheckpointInfo> {
  let info: CheckpointInfo;
  try {
    info = await inspectCheckpoint(file);
  } catch (err) {
    if (err instanceof WanError) throw new WanError(err.code, `${flagName}: ${err.message}`);
    throw err;
  }
  const name = Array.isArray(file) ? file[0] : file;
  // The families are told apart by the keys their loaders need, so one inspect cannot name
  // cannot load either: refused now rather than after the stages before it have run.
  if (info.family === 'unknown')
    throw new UsageError(`${flagName}: ${name} is not ${what}: it has none of the keys of a Wan DiT, Wan VAE, umT5 or ` +
      `CLIP vision model (wan-native inspect says what it holds)`);
  if (info.family !== family) throw new UsageError(`${flagName}: ${name} is a ${info.family} checkpoint, not ${what}`);
  return info;
}

// Each shard of a sharded --model on its own: a shard of another model's files (a VAE given
// twice to --model) would otherwise pass, the set as a whole looking like a DiT.
async function checkShards(files: string[]): Promise<void> {
  for (const file of files) {
    const info = await inspectCheckpoint(file);
    if (info.family !== 'wan-dit' && info.family !== 'unknown')
      throw new UsageError(`--model: ${file} is a ${info.family} checkpoint, not a shard of a Wan diffusion model (DiT)`);
  }
}

async function preflight(s: GenerateSettings): Promise<Plan> {
  for (const f of s.model) mustExist(f, '--model');
  mustExist(s.t5, '--t5');
  mustExist(s.vae, '--vae');
  for (const l of s.loras) mustExist(l.path, '--lora');
  for (const [file, name] of [[s.tokenizer, '--tokenizer'], [s.clipVision, '--clip-vision'], [s.clipEmbeds, '--clip-embeds'],
    [s.image, '--image'], [s.endImage, '--end-image'], [s.video, '--video']] as const) if (file !== undefined) mustExist(file, name);

  if (s.model.length > 1) await checkShards(s.model);
  const dit = await inspectAs(s.model.length === 1 ? s.model[0] : s.model, '--model', 'wan-dit', 'a Wan diffusion model (DiT)');
  const t5 = await inspectAs(s.t5, '--t5', 'umt5', 'a umT5 text encoder');
  await inspectAs(s.vae, '--vae', 'wan-vae', 'a Wan VAE');
  const task = dit.task || 't2v';
  const dim = dit.config.dim;
  if (s.numHeads !== undefined && dim !== undefined && (dim % s.numHeads !== 0 || (dim / s.numHeads) % 2 !== 0))
    throw new UsageError(`--num-heads: ${s.numHeads} does not divide the model's width ${dim} into heads of an even size`);
  if (s.riflexFreqIndex > 0 && dim !== undefined) {
    const frequencies = riflexFrequencies({ dim, numHeads: s.numHeads ?? Math.max(1, Math.floor(dim / 128)) });
    if (s.riflexFreqIndex > frequencies)
      throw new UsageError(`--riflex-freq-index: the model's RoPE turns ${frequencies} frequencies with the frame, so expected ` +
        `0..${frequencies} but received ${s.riflexFreqIndex}`);
  }
  if (!['t2v', 'i2v', 'flf2v'].includes(task))
    throw new UsageError(`--model: a ${task} model cannot generate on its own (t2v, i2v and flf2v models can)`);
  const layers = dit.config.num_layers;
  if (layers !== undefined && s.blocksToSwap > layers)
    throw new UsageError(`--blocks-to-swap: the model has ${layers} transformer blocks, so expected 0..${layers} but received ${s.blocksToSwap}`);
  const slgBeyond = layers === undefined ? undefined : s.slg?.blocks.find((b) => b >= layers);
  if (slgBeyond !== undefined)
    throw new UsageError(`--slg-blocks: the model has ${layers} transformer blocks (0..${layers! - 1}) but block ${slgBeyond} is given`);
  for (const l of s.loras) {
    const beyond = layers === undefined ? undefined : l.blocks?.find((b) => b >= layers);
    if (beyond !== undefined)
      throw new UsageError(`--lora-blocks: the model has ${layers} transformer blocks (0..${layers! - 1}) but block ${beyond} is selected for --lora ${l.path}`);
  }
  for (const l of s.loras) {
    // A LoRA file has no model's key pattern; a whole model given as a LoRA does.
    const lora = await inspectCheckpoint(l.path);
    if (lora.family !== 'unknown') throw new UsageError(`--lora: ${l.path} is a ${lora.family} checkpoint, not a LoRA`);
  }
  const textDim = dit.config.text_dim, t5Dim = t5.config.dim;
  if (textDim !== undefined && t5Dim !== undefined && textDim !== t5Dim)
    throw new UsageError(`--t5: the text encoder gives ${t5Dim}-wide embeddings but the model takes ${textDim} (text_dim)`);

  if (task === 't2v') {
    if (s.image) throw new UsageError('--image: the model is a text-to-video (t2v) model; image-to-video needs an I2V or FLF2V model');
  } else {
    if (s.video) throw new UsageError(`--video: video-to-video takes a text-to-video (t2v) model, but the model is an ${task} model`);
    if (!s.image) throw new UsageError(`--image: the model is an ${task} model, which needs a first frame (--image)`);
    if (task === 'flf2v' && !s.endImage) throw new UsageError('--end-image: the model is an FLF2V model, which needs a last frame');
    if (!s.clipVision && !s.clipEmbeds)
      throw new UsageError(`--clip-vision: an ${task} model needs CLIP embeddings of the image (--clip-vision, or --clip-embeds)`);
    const imageDim = dit.config.image_dim;
    if (s.clipVision) {
      const clip = await inspectAs(s.clipVision, '--clip-vision', 'clip-vision', 'a CLIP vision model');
      const visionDim = clip.config.vision_dim;
      if (imageDim !== undefined && visionDim !== undefined && visionDim !== imageDim)
        throw new UsageError(`--clip-vision: ${s.clipVision} gives ${visionDim}-wide embeddings but the model takes ${imageDim} ` +
          `(image_dim); Wan2.1 I2V and FLF2V models take those of CLIP ViT-H/14 (clip_vision_h)`);
    }
  }
  if (task === 't2v') return { task, video: s.video ? await decodeVideo(s) : undefined };
  const startImage = await decodeImage(s.image!, '--image');
  const endImage = s.endImage ? await decodeImage(s.endImage, '--end-image').catch((err) => { startImage.dispose(); throw err; }) : undefined;
  return { task: task as Task, startImage, endImage };
}

// A load error that is about a --lora file (the library names the file) or --blocks-to-swap
// (a layout whose headers did not say how many blocks it has) says which option it is about.
function loadError(err: unknown, s: GenerateSettings): unknown {
  if (!(err instanceof WanError)) return err;
  if (/^blocksToSwap: /.test(err.message)) return new UsageError(err.message.replace(/^blocksToSwap/, '--blocks-to-swap'));
  if (s.loras.some((l) => err.message.includes(l.path))) {
    const wrapped = new WanError(err.code, `--lora: ${err.message}`);
    wrapped.stack = err.stack;
    return wrapped;
  }
  return err;
}

// ---------------------------------------------------------------------------------------------
// The run

export interface RunContext {
  argv: string[];
  version: string;
  signal: AbortSignal;
  view: StageView;
  /** Receives each written path (stdout). */
  output: (line: string) => void;
  /** Filled with the files written so far, complete ones only (for a message when stopped). */
  written: string[];
}

function jsonSafe(s: GenerateSettings, task: Task): Record<string, unknown> {
  const { quiet: _quiet, ...rest } = s;
  const seed = Number.isSafeInteger(Number(s.seed)) ? Number(s.seed) : s.seed.toString();
  return { task, ...rest, seed };
}

async function loadClipEmbeds(file: string, task: Task): Promise<ClipEmbeds> {
  const { tensors } = await loadSafetensors(file);
  const clip = tensors.get('clip_embeds');
  if (!clip) {
    for (const t of tensors.values()) t.dispose();
    const names = [...tensors.keys()];
    const listed = names.length > 40 ? `${names.slice(0, 40).join(', ')}, ... (${names.length - 40} more)` : names.join(', ');
    throw new UsageError(`--clip-embeds: ${file} has no tensor named clip_embeds (it has ${listed || 'none'})`);
  }
  const negative = tensors.get('negative_clip_embeds');
  for (const [k, t] of tensors) if (k !== 'clip_embeds' && k !== 'negative_clip_embeds') t.dispose();
  // One image per sample; FLF2V models take the first and the last frame's.
  const images = task === 'flf2v' ? 2 : 1;
  for (const [name, t] of [['clip_embeds', clip], ['negative_clip_embeds', negative]] as const) {
    if (t && (t.shape.length !== 3 || t.shape[0] !== images || t.shape[2] !== 1280)) {
      clip.dispose();
      negative?.dispose();
      throw new UsageError(`--clip-embeds: expected ${name} of shape [${images}, 257, 1280] for an ${task} model but ${file} holds [${t.shape.join(', ')}]`);
    }
  }
  return { clipEmbeds: clip, negativeClipEmbeds: negative };
}

/** Runs the pipeline; resolves to the written paths. Aborting `ctx.signal` stops it at the next check. */
export async function runGenerate(s: GenerateSettings, ctx: RunContext): Promise<string[]> {
  const { view, signal } = ctx;
  await checkOutput(s);
  const plan = await preflight(s);
  const videoFrames = plan.video?.shape[1];
  if (videoFrames !== undefined && videoFrames < s.numFrames) {
    view.note(`note: --video gives ${videoFrames} frames (4k+1) of the ${s.numFrames} asked for: ${videoFrames} are made`);
    s.numFrames = videoFrames;
  }
  if (s.threads !== undefined) native().setThreads(s.threads);
  if (s.maxMemory !== undefined) {
    // The memory plan, from the files' headers, before anything is loaded (lib/memory-planner.ts).
    const memory = await planMemory({
      dit: s.model.length === 1 ? s.model[0] : s.model, textEncoder: s.t5, vae: s.vae,
      ...(plan.task !== 't2v' && s.clipVision ? { clipVision: s.clipVision } : {}),
      width: s.width, height: s.height, numFrames: s.numFrames, attentionMode: s.attentionMode,
      maxMemory: s.maxMemory === 'auto' ? undefined : s.maxMemory * 2 ** 30, batch: s.batchedCfg ? 2 : 1,
      prefetchBlocks: s.prefetchBlocks,
      device: s.device === 'cpu' ? 'cpu' : 'cuda',
      ...(s.quantization !== 'disabled' ? { quantization: storedQuantization(s.quantization as NonNullable<ModelLoaderOptions['quantization']>) } : {}),
      ...(s.blocksToSwap > 0 ? { blocksToSwap: s.blocksToSwap } : {}),
    });
    if (!memory.fits) {
      plan.startImage?.dispose();
      plan.endImage?.dispose();
      plan.video?.dispose();
      throw new WanError('WAN_OUT_OF_MEMORY', `--max-memory: ${memory.message}`);
    }
    if (!s.quiet) view.note(memory.summary);
    s.quantization = memory.quantization;
    s.blocksToSwap = memory.blocksToSwap;
    if (memory.vaeTiling && !s.vaeTiling) s.vaeTiling = { tileX: 272, tileY: 272, tileStrideX: 144, tileStrideY: 128 };
  }
  const started = performance.now();
  const prompts = s.prompt.split('|').map((p) => p.trim());
  const base = (f: string) => path.basename(f);
  const seed = s.seed;
  const latentFrames = latentFramesOf(s.numFrames);
  view.note(`wan-native generate: ${plan.task} ${s.width}x${s.height}, ${s.numFrames} frames, ${s.steps} steps ` +
    `(${s.scheduler}, cfg ${Array.isArray(s.cfg) ? 'per step' : s.cfg}, ${s.sigmas ? 'custom sigmas' : `shift ${s.shift}`}, seed ${seed})`);
  if (s.context && s.context.frames > s.numFrames)
    view.note(`note: a context window of ${s.context.frames} frames covers the whole ${s.numFrames}-frame video: sampled in one piece`);

  const owned: { dispose(): void }[] = [];
  const keep = <T extends { dispose(): void }>(x: T): T => { owned.push(x); return x; };
  const startImage = plan.startImage && keep(plan.startImage), endImage = plan.endImage && keep(plan.endImage);
  if (plan.video) keep(plan.video);
  const free = (x: { dispose(): void } | undefined) => {
    if (!x) return;
    x.dispose();
    const i = owned.indexOf(x);
    if (i >= 0) owned.splice(i, 1);
  };
  // Every FreeInit run is the whole schedule again.
  // A denoise strength below 1 starts late (the Sampler's rule, as the wrapper's).
  const firstStep = s.denoiseStrength < 1 ? Math.max(0, s.scheduledSteps - Math.floor(s.scheduledSteps * s.denoiseStrength) - 1) : s.startStep;
  const sampleSteps = ((s.endStep === -1 ? s.scheduledSteps : s.endStep) - firstStep) * (s.freeinit?.freeinitNumIters ?? 1);
  const extra: Partial<Record<'sampling', string>> = {};
  try {
    // Text: umT5 encodes the prompts and the negative prompt, then is freed.
    view.begin('text', `encoding ${prompts.length} prompt${prompts.length > 1 ? 's' : ''} with ${base(s.t5)}`);
    const encoder = keep(await TextEncoder.load(s.t5, { tokenizer: s.tokenizer, textLen: s.textLen, device: s.device as Device, signal }));
    const text: TextEmbeds = await encoder.encode({ positive: prompts.length > 1 ? prompts : prompts[0], negative: s.negativePrompt },
      { diskCache: s.diskCache, signal });
    free(encoder);
    for (const t of [...text.promptEmbeds, ...text.negativePromptEmbeds]) keep(t);
    view.end();

    // CLIP: the first frame (and the last, for FLF2V) into image tokens; the encoder is freed.
    let clipEmbeds: ClipEmbeds | undefined;
    if (plan.task !== 't2v') {
      if (s.clipEmbeds) {
        view.begin('clip', `reading ${base(s.clipEmbeds)}`);
        clipEmbeds = await loadClipEmbeds(s.clipEmbeds, plan.task);
      } else {
        view.begin('clip', `encoding the ${plan.task === 'flf2v' ? 'first and last frames' : 'first frame'} with ${base(s.clipVision!)}`);
        const clip = keep(await ClipVisionEncoder.load(s.clipVision!, { device: s.device as Device, signal }));
        clipEmbeds = await clip.encode(startImage!, {
          crop: s.clipCrop, signal,
          ...(plan.task === 'flf2v' ? { image2: endImage, combineEmbeds: 'batch' as const } : {}),
        });
        free(clip);
      }
      keep(clipEmbeds.clipEmbeds);
      if (clipEmbeds.negativeClipEmbeds) keep(clipEmbeds.negativeClipEmbeds);
      view.end();
    }

    // Encode: the latent shape (T2V) or the VAE-encoded first/last frames under their mask (I2V).
    let vae: Vae | undefined;
    let embeds: ImageEmbeds;
    let samples: Tensor | undefined;
    if (plan.task === 't2v') {
      embeds = emptyEmbeds({ width: s.width, height: s.height, numFrames: s.numFrames });
      if (plan.video) {
        // Video-to-video: the video's latent, which sampling noises to its start step.
        view.begin('encode', `encoding the video's ${s.numFrames} frames with ${base(s.vae)}`);
        vae = keep(await Vae.load(s.vae, { device: s.device as Device, signal }));
        samples = keep(await vae.encode(plan.video, { signal, forceOffload: false, ...(s.vaeTiling ? { tiled: true, ...s.vaeTiling } : {}) }));
        free(plan.video);
        view.end();
      }
    } else {
      view.begin('encode', `encoding the image${endImage ? 's' : ''} with ${base(s.vae)}`);
      vae = keep(await Vae.load(s.vae, { device: s.device as Device, signal }));
      embeds = await imageToVideoEncode({
        vae, width: s.width, height: s.height, numFrames: s.numFrames, startImage: startImage!, endImage,
        clipEmbeds, noiseAugStrength: s.noiseAugStrength, startLatentStrength: s.startLatentStrength,
        endLatentStrength: s.endLatentStrength, flf2v: !s.extraEndLatent, augmentEmptyFrames: s.augmentEmptyFrames, seed, signal,
      });
      if (embeds.y) keep(embeds.y);
      free(startImage);
      free(endImage);
      view.end();
    }

    // Load and sample; the model is freed before decoding.
    const loras = s.loras.filter((l) => l.strength !== 0);
    view.begin('load', `${s.model.map(base).join(' + ')}` +
      (loras.length ? `, merging ${loras.map((l) => `${base(l.path)} at ${l.strength}`).join(', ')}` : ''));
    const model = keep(await WanModel.load(s.model.length === 1 ? s.model[0] : s.model, {
      attentionMode: s.attentionMode, basePrecision: s.basePrecision, device: s.device as Device, numHeads: s.numHeads, textLen: s.textLen, signal,
      quantization: s.quantization as ModelLoaderOptions['quantization'],
      loras: s.loras.map((l) => ({ path: l.path, strength: l.strength, blocks: l.blocks, layerFilter: l.layerFilter })),
      mergeLoras: s.mergeLoras, compile: s.compile, cudaGraphs: s.cudaGraphs,
      blockSwap: s.blocksToSwap > 0 ? { blocksToSwap: s.blocksToSwap, prefetchBlocks: s.prefetchBlocks } : undefined,
    }).catch((err) => { throw loadError(err, s); }));
    if (model.config.modelType !== plan.task) {
      // Shards can hold what the first file does not (FLF2V's second image position table).
      throw new UsageError(`--model: the loaded model is ${model.config.modelType}, not ${plan.task} as its headers said`);
    }
    view.end();

    let cacheSkipped: number | undefined;
    view.begin('sampling', `${sampleSteps} step${sampleSteps > 1 ? 's' : ''} of ${s.scheduler}, ${latentFrames} latent frame${latentFrames > 1 ? 's' : ''}` +
      (s.context ? `, context windows of ${s.context.frames} frames` : '') +
      (s.freeinit ? `, in ${s.freeinit.freeinitNumIters} FreeInit runs` : ''));
    const latent = keep(await new Sampler(model).sample({
      imageEmbeds: embeds, textEmbeds: text, samples, denoiseStrength: s.denoiseStrength,
      steps: s.steps, enhanceHf: s.enhanceHf, cfg: s.cfg, shift: s.shift, seed, scheduler: s.scheduler,
      sigmas: s.sigmas, startStep: s.startStep, endStep: s.endStep, batchedCfg: s.batchedCfg,
      contextOptions: s.context, fetaArgs: s.feta, slgArgs: s.slg, cacheArgs: s.cache, experimentalArgs: s.experimental, loopArgs: s.loop, freeinitArgs: s.freeinit, nagArgs: s.nag, riflexFreqIndex: s.riflexFreqIndex, signal,
      onProgress: (p) => { cacheSkipped = p.cacheSkipped; view.progress(p, 'steps'); },
    }));
    // The denoiser and its conditioning are done with: freed before the VAE decodes.
    free(model);
    for (const x of [...text.promptEmbeds, ...text.negativePromptEmbeds, embeds.y, clipEmbeds?.clipEmbeds, clipEmbeds?.negativeClipEmbeds, samples]) free(x);
    // Model calls: one per step, two where cfg is not 1 (a context window's count as one each).
    view.end((seconds) => (extra.sampling = `${(seconds / sampleSteps).toFixed(2)} s/step` +
      (cacheSkipped !== undefined ? `, ${s.cache?.cacheType ?? 'TeaCache'} skipped ${cacheSkipped} model call${cacheSkipped === 1 ? '' : 's'}` : '')));

    // Decode and write. One format: frames are encoded as they are decoded, never all in memory;
    // several: the video is decoded once and written in each format.
    vae ??= keep(await Vae.load(s.vae, { device: s.device as Device, signal }));
    const metadata = s.saveMetadata ? {
      prompt: s.prompt, negative_prompt: s.negativePrompt,
      settings: { version: ctx.version, ...jsonSafe(s, plan.task) },
      command: ['wan-native', ...ctx.argv],
    } : undefined;
    const tiling = s.vaeTiling ? { tiled: true, ...s.vaeTiling } : {};
    const files = ctx.written;
    if (s.formats.length === 1) {
      view.begin('decode', `${latentFrames} latent frame${latentFrames > 1 ? 's' : ''} with ${base(s.vae)}, written as ${s.formats[0]} as they come`);
      const writeStart = performance.now();
      let decodeMs = 0;
      const timed = async function* (source: AsyncGenerator<Tensor>): AsyncGenerator<Tensor> {
        try {
          for (;;) {
            const t0 = performance.now();
            const next = await source.next();
            decodeMs += performance.now() - t0;
            if (next.done) return;
            yield next.value;
          }
        } finally {
          await source.return(undefined);
        }
      };
      const result = await videoCombine(timed(vae.decodeFrames(latent, { ...tiling, looped: s.loop !== undefined,
        trimEndLatent: embeds.extraEndLatent === true, signal,
        onProgress: (p) => view.progress(p, 'latent frames') })), { ...combineOptions(s, s.formats[0]), metadata, signal });
      files.push(...result.files);
      // Decoding and writing interleave: decode is the time spent waiting for frames, write the rest.
      const total = (performance.now() - writeStart) / 1000, decode = decodeMs / 1000, write = Math.max(0, total - decode);
      view.close();
      view.record('decode', decode);
      view.record('write', write);
      view.note(`decode: done in ${formatSeconds(decode)}; write: ${result.frames} frames in ${formatSeconds(write)}`);
    } else {
      view.begin('decode', `${latentFrames} latent frame${latentFrames > 1 ? 's' : ''} with ${base(s.vae)}`);
      const video = keep(await vae.decode(latent, { ...tiling, looped: s.loop !== undefined, trimEndLatent: embeds.extraEndLatent === true, signal,
        onProgress: (p) => view.progress(p, 'latent frames') }));
      free(vae);
      view.end();
      view.begin('write', s.formats.join(', '));
      // One counter for the run's files, as VHS names the files of one save.
      const counter = Math.max(...s.formats.map((format) => outputCounter(combineOptions(s, format))));
      for (const format of s.formats) {
        const result = await videoCombine(video, { ...combineOptions(s, format), metadata, counter, signal });
        files.push(...result.files);
      }
      view.end();
    }
    view.note(view.summary(extra, (performance.now() - started) / 1000));
    for (const f of files) ctx.output(f);
    return files;
  } finally {
    view.stopBar();
    for (const x of owned.reverse()) x.dispose();
  }
}
