// Sampler: the generation loop of the wrapper's WanVideo Sampler, producing the latents the
// official WanT2V.generate / WanI2V.generate produce for the same inputs and seed. The DiT runs
// natively; the loop, guidance and scheduler arithmetic run here on Float32Arrays (a few
// milliseconds per step against seconds to minutes for the model).
import type { ImageEmbeds } from './conditioning';
import {
  contextWindows, ContextOptions, freeNoiseShuffle, promptIndexForWindow, resolveContextOptions,
  ResolvedContextOptions, WindowAccumulator, windowWeights,
} from './context-windows';
import { abortedError } from './abort';
import { offloadingAfter } from './device';
import { type CacheArgs, cacheSettings } from './block-cache';
import { type FreeInitArgs, reinitialize, resolveFreeInitArgs } from './freeinit';
import { combineGuidance, type ExperimentalArgs, type Guidance, resolveExperimentalArgs, temporalScoreRescaling } from './guidance';
import { checkOptionNames, describeValue, finiteIn, integerIn, invalidOption, optionNames, WanError, withCallerStack } from './errors';
import { riflexFrequencies, type BlockCacheCall, type NagCall, type WanModel } from './model';
import { native } from './native';
import { latentPreview, Preview } from './preview';
import { LongCallOptions, Progress } from './progress';
import { createScheduler, schedule as fullSchedule, SCHEDULER_NAMES, SchedulerName, STOCHASTIC_SCHEDULERS } from './schedulers';
import { Tensor } from './tensor';
import type { TextEmbeds } from './text-encoder';

/** The wrapper's WanVideoEnhanceAVideo (feta_args). The gain is the method's: the mean of the
 * cross-frame attention taken over each spatial position's frames, per sample. (The wrapper
 * groups the tokens differently, not by frame, and takes one gain for a batched cfg pair.) */
export interface FetaArgs {
  weight?: number;        // 2.0, 0..100
  startPercent?: number;  // 0.0
  endPercent?: number;    // 1.0
}

const FETA_OPTIONS = optionNames<FetaArgs>()({ weight: true, startPercent: true, endPercent: true });

/** The wrapper's WanVideoLoopArgs (loop_args, Mobius's latent shift): while it applies, each step
 * the model sees the latent rolled along time by a further shiftSkip latent frames (its
 * prediction rolled back), so no frame is the video's edge for long and the end meets the start.
 * Decode the result with `looped: true` (Vae.decodeFrames) for the seamless wrap. */
export interface LoopArgs {
  shiftSkip?: number;     // 6: latent frames further each step (about half the latent frames is typical)
  startPercent?: number;  // 0.0
  endPercent?: number;    // 1.0
}

const LOOP_OPTIONS = optionNames<LoopArgs>()({ shiftSkip: true, startPercent: true, endPercent: true });

/** The wrapper's WanVideoSLG (slg_args): skip layer guidance. While it applies, the unconditional
 * pass runs without these blocks, so guidance pushes away from what they would have added. */
export interface SlgArgs {
  blocks?: number[];      // [10]: the blocks the unconditional pass leaves out, 0-based
  startPercent?: number;  // 0.1
  endPercent?: number;    // 1.0
}
const SLG_OPTIONS = optionNames<SlgArgs>()({ blocks: true, startPercent: true, endPercent: true });

/** The wrapper's WanVideoApplyNAG (NAG, Normalized Attention Guidance): the conditional pass's
 * text cross-attention is pushed away from the NAG prompt's (WanModel.forward's nag), which
 * steers even at cfg 1, where distilled models run without a negative pass. */
export interface NagArgs {
  /** The NAG prompt's embedding [L, textDim]; by default textEmbeds.negativePromptEmbeds[0]. */
  nagPromptEmbeds?: Tensor;
  nagScale?: number;  // 11.0, 0..100
  nagTau?: number;    // 2.5, 0..10
  nagAlpha?: number;  // 0.25, 0..1
}
const NAG_OPTIONS = optionNames<NagArgs>()({ nagPromptEmbeds: true, nagScale: true, nagTau: true, nagAlpha: true });

const CONTEXT_OPTIONS = optionNames<ContextOptions>()({ schedule: true, frames: true, stride: true, overlap: true, freenoise: true, fuse: true });

export interface SamplerProgress extends Progress {
  /** With `preview: true`: the middle frame of the current clean-latent prediction. */
  preview?: Preview;
  /** With cacheArgs: the model calls so far whose transformer blocks the cache skipped. */
  cacheSkipped?: number;
}

export interface SamplerOptions extends Omit<LongCallOptions, 'onProgress'> {
  imageEmbeds: ImageEmbeds;
  textEmbeds: TextEmbeds;
  steps?: number;                 // 30
  cfg?: number | number[];        // 6.0, or one per step run (the last repeats); 1 skips the negative pass
  shift?: number;                 // 5.0
  seed?: number | bigint;         // 0, 0..2^64-1
  scheduler?: SchedulerName;      // 'unipc'
  enhanceHf?: boolean;            // false: the wrapper's enhance_hf (WanVideoScheduler): the steps below half noise replaced by a uniform tail
  sigmas?: number[];              // custom sigmas (steps + 1 falling values; 0 last for a finished video), replacing the schedule, steps and shift
  startStep?: number;             // 0: first step to run (split sampling)
  endStep?: number;               // -1: step to stop before (-1 = the end)
  samples?: Tensor;               // latents to start from (video-to-video, continuation)
  denoiseStrength?: number;       // 1.0: with samples, how much of the schedule to run
  addNoiseToSamples?: boolean;    // false: samples start the run as they are; true (and below denoiseStrength 1): mixed with noise at the first step's sigma
  contextOptions?: ContextOptions;
  fetaArgs?: FetaArgs;
  loopArgs?: LoopArgs;
  slgArgs?: SlgArgs;
  cacheArgs?: CacheArgs;           // TeaCache (the default cacheType), MagCache or EasyCache
  experimentalArgs?: ExperimentalArgs;  // CFG-Zero*, FreSca, TCFG, RAAG, Temporal Score Rescaling
  freeinitArgs?: FreeInitArgs;    // FreeInit: the whole sampling run freeinitNumIters times, each from the last result re-noised
  nagArgs?: NagArgs;              // NAG: the conditional pass's text attention pushed away from a NAG prompt's
  riflexFreqIndex?: number;       // 0 (off): RIFLEx, 1..22 for Wan2.1 (6 typical), for videos past 81 frames
  batchedCfg?: boolean;           // false: run the conditional and unconditional passes as one batch
  preview?: boolean;              // false: add an RGB preview to each progress report
  forceOffload?: boolean;         // true: offload the model when sampling ends (WanModel.offload)
  onProgress?: (p: SamplerProgress) => void;
}

const U64_MAX = (1n << 64n) - 1n;

// The fraction of the steps an option applies in: startPercent..endPercent, checked to be a range.
function percentRange(name: string, o: { startPercent?: number; endPercent?: number }, startDefault: number, what: string):
    { start: number; end: number } {
  const start = finiteIn(`${name}.startPercent`, o.startPercent, startDefault, 0, 1);
  const end = finiteIn(`${name}.endPercent`, o.endPercent, 1, 0, 1);
  if (start > end)
    throw invalidOption(`Expected ${name}.startPercent (${start}) at or below ${name}.endPercent (${end}) ` +
      `but received a range in which ${what} never applies`);
  return { start, end };
}

function positiveInteger(name: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || (value as number) < 1)
    throw invalidOption(`Expected a positive integer for ${name} but received ${describeValue(value)}`);
  return value as number;
}

export function seedOf(value: unknown): bigint {
  if (value === undefined) return 0n;
  const ok = (typeof value === 'bigint' && value >= 0n && value <= U64_MAX) ||
             (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0);
  if (!ok) throw invalidOption(`Expected an integer in 0..2^64-1 for seed but received ${describeValue(value)}`);
  return BigInt(value as number | bigint);
}

function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function checkLatent(name: string, t: unknown, shape: readonly number[]): Tensor {
  if (!(t instanceof Tensor)) throw invalidOption(`Expected a Tensor for ${name} but received ${describeValue(t)}`);
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i]))
    throw invalidOption(`Expected ${name} of shape [${shape.join(', ')}] (imageEmbeds.targetShape) but received [${t.shape.join(', ')}]`);
  return t;
}

// x [C, T, H, W] rolled by `by` frames along T (torch.roll): frame f moves to f + by (mod T).
function rollFrames(x: Float32Array, shape: readonly number[], by: number): Float32Array {
  const [channels, frames, height, width] = shape;
  const shift = ((by % frames) + frames) % frames;
  if (shift === 0) return x;
  const plane = height * width;
  const out = new Float32Array(x.length);
  for (let c = 0; c < channels; ++c)
    for (let f = 0; f < frames; ++f)
      out.set(x.subarray((c * frames + f) * plane, (c * frames + f + 1) * plane), (c * frames + (f + shift) % frames) * plane);
  return out;
}

// Copies latent frames `frames` of a [C, T, H, W] array into a [C, frames.length, H, W] one.
function gatherFrames(x: Float32Array, shape: readonly number[], frames: readonly number[]): Float32Array {
  const [channels, total, height, width] = shape;
  const plane = height * width;
  const out = new Float32Array(channels * frames.length * plane);
  for (let c = 0; c < channels; ++c)
    frames.forEach((f, j) => out.set(x.subarray((c * total + f) * plane, (c * total + f + 1) * plane), (c * frames.length + j) * plane));
  return out;
}

interface Pass {
  context: Tensor;       // [L, textDim]
  clipFea?: Tensor;
}

// What one step's model calls share.
interface StepCall {
  step: number;  // steps run before this one (per-step LoRA strengths)
  t: number;
  cfg: number;
  fetaWeight?: number;
  skipUnconditional?: number[];  // skip layer guidance: blocks the unconditional pass leaves out
  nag?: NagCall;                 // NAG, for the conditional pass
  cache?: (window: string, unconditional: boolean) => BlockCacheCall;  // cacheArgs, in its steps
  guidance?: Guidance;  // experimentalArgs
  riflex?: { riflexFreqIndex: number; riflexLatentFrames: number };
  signal?: AbortSignal;
  batched: boolean;
  pass: (promptIndex: number, unconditional: boolean) => Pass;
  numPrompts: number;
}

const SAMPLER_OPTIONS = optionNames<SamplerOptions>()({
  imageEmbeds: true, textEmbeds: true, steps: true, cfg: true, shift: true, seed: true, scheduler: true, enhanceHf: true, sigmas: true,
  startStep: true, endStep: true, samples: true, denoiseStrength: true, addNoiseToSamples: true, contextOptions: true,
  fetaArgs: true, loopArgs: true, slgArgs: true, cacheArgs: true, experimentalArgs: true, freeinitArgs: true, nagArgs: true, riflexFreqIndex: true, batchedCfg: true, preview: true, forceOffload: true, onProgress: true, signal: true,
});

export class Sampler {
  constructor(readonly model: WanModel) {
    if (model === null || typeof model !== 'object' || typeof (model as WanModel).forward !== 'function')
      throw invalidOption(`Expected a WanModel for model but received ${describeValue(model)}`);
  }

  /** Runs the denoising loop; resolves to the final latent [16, T, H/8, W/8] f32. */
  sample(o: SamplerOptions): Promise<Tensor> {
    const caller = new Error();
    return withCallerStack(offloadingAfter(o?.forceOffload, this.model, () => this.run(o)), caller);
  }

  private async run(o: SamplerOptions): Promise<Tensor> {
    if (typeof o !== 'object' || o === null) throw invalidOption(`Expected an object for options but received ${describeValue(o)}`);
    checkOptionNames(o, SAMPLER_OPTIONS);
    checkOptionNames(o.fetaArgs, FETA_OPTIONS, 'fetaArgs');
    checkOptionNames(o.slgArgs, SLG_OPTIONS, 'slgArgs');
    checkOptionNames(o.loopArgs, LOOP_OPTIONS, 'loopArgs');
    checkOptionNames(o.contextOptions, CONTEXT_OPTIONS, 'contextOptions');
    checkOptionNames(o.nagArgs, NAG_OPTIONS, 'nagArgs');
    const embeds = o.imageEmbeds;
    if (!embeds || !Array.isArray(embeds.targetShape) || embeds.targetShape.length !== 4)
      throw invalidOption(`Expected imageEmbeds from emptyEmbeds() or imageToVideoEncode() but received ${describeValue(embeds)}`);
    const text = o.textEmbeds;
    if (!text || !Array.isArray(text.promptEmbeds) || text.promptEmbeds.length === 0)
      throw invalidOption(`Expected textEmbeds with at least one prompt (TextEncoder.encode) but received ${describeValue(text)}`);
    const shift = finiteIn('shift', o.shift, 5.0, 0, 1000);
    const seed = seedOf(o.seed);
    const schedulerName = o.scheduler ?? 'unipc';
    if (!SCHEDULER_NAMES.includes(schedulerName))
      throw invalidOption(`Expected one of ${SCHEDULER_NAMES.join(', ')} for scheduler but received ${describeValue(schedulerName)}`);
    const enhanceHf = o.enhanceHf ?? false;
    if (typeof enhanceHf !== 'boolean') throw invalidOption(`Expected a boolean for enhanceHf but received ${describeValue(o.enhanceHf)}`);
    // Custom sigmas define the steps (one fewer than the sigmas), as the wrapper's SIGMAS input;
    // enhanceHf changes their number.
    const transformerDim = this.model.config.dim;  // flowmatch_causvid's timesteps depend on it
    const requestedSteps = Array.isArray(o.sigmas) && o.sigmas.length >= 2 ? o.sigmas.length - 1 : positiveInteger('steps', o.steps, 30);
    const steps = enhanceHf
      ? fullSchedule(schedulerName, { steps: requestedSteps, shift, sigmas: o.sigmas, enhanceHf, transformerDim }).timesteps.length : requestedSteps;
    const denoise = finiteIn('denoiseStrength', o.denoiseStrength, 1.0, 0, 1);
    const cfgOption = o.cfg ?? 6.0;
    if (Array.isArray(cfgOption)) {
      if (cfgOption.length === 0 || !cfgOption.every((v) => typeof v === 'number' && Number.isFinite(v) && v >= 0 && v <= 30))
        throw invalidOption(`Expected a number in 0..30 or an array of them (one per step run) for cfg but received ${describeValue(cfgOption)}`);
    } else {
      finiteIn('cfg', cfgOption, 6.0, 0, 30);
    }
    // A list holds one value per step run (index 0 is startStep's), as the wrapper's cfg[idx]: the
    // last value stands for any step past its end, and values past the run are not used.
    const cfgAt = (run: number): number => (Array.isArray(cfgOption) ? cfgOption[Math.min(run, cfgOption.length - 1)] : cfgOption);
    const feta = o.fetaArgs === undefined ? undefined : {
      weight: finiteIn('fetaArgs.weight', o.fetaArgs.weight, 2.0, 0, 100),
      ...percentRange('fetaArgs', o.fetaArgs, 0, 'Enhance-A-Video'),
    };

    const layers = this.model.config.numLayers;
    const slg = o.slgArgs === undefined ? undefined : {
      blocks: o.slgArgs.blocks ?? [10],
      ...percentRange('slgArgs', o.slgArgs, 0.1, 'skip layer guidance'),
    };
    if (slg && (!Array.isArray(slg.blocks) || slg.blocks.length === 0 ||
                !slg.blocks.every((b) => Number.isSafeInteger(b) && b >= 0 && b < layers)))
      throw invalidOption(`Expected a non-empty array of block indices in 0..${layers - 1} for slgArgs.blocks but received ` +
                          (Array.isArray(slg.blocks) ? `[${slg.blocks.map((b) => describeValue(b)).join(', ')}]` : describeValue(slg.blocks)));
    const cache = o.cacheArgs === undefined ? undefined : cacheSettings(o.cacheArgs, this.model, steps);
    if (cache && o.batchedCfg)
      throw invalidOption(`Expected batchedCfg false with cacheArgs: ${cache.cacheType} keeps the conditional and unconditional ` +
        'predictions apart (the wrapper\'s batched path runs them as one)');
    const guidance = resolveExperimentalArgs(o.experimentalArgs);
    let nag: NagCall | undefined;
    if (o.nagArgs !== undefined) {
      const context = o.nagArgs.nagPromptEmbeds ?? o.textEmbeds?.negativePromptEmbeds?.[0];
      if (!(context instanceof Tensor))
        throw invalidOption(`Expected nagArgs.nagPromptEmbeds (or a negative prompt in textEmbeds) for NAG but received ${describeValue(context)}`);
      nag = { context, scale: finiteIn('nagArgs.nagScale', o.nagArgs.nagScale, 11, 0, 100),
        tau: finiteIn('nagArgs.nagTau', o.nagArgs.nagTau, 2.5, 0, 10), alpha: finiteIn('nagArgs.nagAlpha', o.nagArgs.nagAlpha, 0.25, 0, 1) };
      if (o.batchedCfg)
        throw invalidOption('Expected batchedCfg false with nagArgs: NAG guides the conditional pass alone, which the batched pass runs together with the other');
    }
    const loop = o.loopArgs === undefined ? undefined : {
      skip: integerIn('loopArgs.shiftSkip', o.loopArgs.shiftSkip, 6, 0, 10000),
      ...percentRange('loopArgs', o.loopArgs, 0, 'the loop\'s shift'),
    };
    if (loop && o.contextOptions !== undefined)
      throw invalidOption('loopArgs with contextOptions is not implemented yet in wan-native: leave one out');
    if (loop && embeds.targetShape[1] < 3)
      throw invalidOption(`Expected at least 3 latent frames (9 video frames) for loopArgs, whose looped decode wraps the last three ` +
        `into the first two, but received ${embeds.targetShape[1]}`);
    const riflexFreqIndex = o.riflexFreqIndex ?? 0;
    const frequencies = riflexFrequencies(this.model.config);
    if (!Number.isSafeInteger(riflexFreqIndex) || riflexFreqIndex < 0 || riflexFreqIndex > frequencies)
      throw invalidOption(`Expected an integer in 0..${frequencies} for riflexFreqIndex (0 is off, 6 typical) ` +
                          `but received ${describeValue(o.riflexFreqIndex)}`);

    const modelType = this.model.config.modelType;
    const imageModel = modelType !== 't2v';
    if (imageModel && (embeds.y === undefined || embeds.clipContext === undefined)) {
      const missing = [embeds.y === undefined ? 'y' : '', embeds.clipContext === undefined ? 'clipContext' : ''].filter((m) => m !== '');
      throw invalidOption(`Expected imageEmbeds from imageToVideoEncode() with clipEmbeds for a ${modelType} model ` +
        `(${missing.join(' and ')} ${missing.length === 1 ? 'is' : 'are'} missing)`);
    }
    const clipImages = embeds.clipContext?.shape.length === 3 ? embeds.clipContext.shape[0] : undefined;
    if (modelType === 'i2v' && clipImages !== undefined && clipImages !== 1)
      throw invalidOption(`Expected the CLIP embeddings of 1 image for an i2v model but imageEmbeds.clipContext holds ` +
        `${clipImages} (combineEmbeds 'batch' keeps the images apart, as FLF2V models take them; average, sum or concat combine them)`);
    if (!imageModel && embeds.y !== undefined)
      throw invalidOption('Expected imageEmbeds from emptyEmbeds() for a t2v model, but these carry image conditioning (y)');

    let startStep = o.startStep === undefined ? 0 : o.startStep;
    if (!Number.isSafeInteger(startStep) || startStep < 0 || startStep >= steps)
      throw invalidOption(`Expected an integer in 0..${steps - 1} for startStep but received ${describeValue(o.startStep)}`);
    let endStep = o.endStep === undefined || o.endStep === -1 ? steps : o.endStep;
    if (!Number.isSafeInteger(endStep) || endStep <= startStep || endStep > steps)
      throw invalidOption(`Expected -1 or an integer in ${startStep + 1}..${steps} for endStep but received ${describeValue(o.endStep)}`);
    // Denoise strength (the wrapper's rule): with samples, start late enough that about
    // `denoise` of the schedule remains.
    if (denoise < 1) {
      if (o.samples === undefined) throw invalidOption('Expected samples with denoiseStrength < 1 (there is nothing to denoise from)');
      if (startStep !== 0)
        throw invalidOption(`Expected startStep 0 with denoiseStrength < 1 (it sets the start step) but received ${describeValue(o.startStep)}`);
      startStep = Math.max(0, steps - Math.floor(steps * denoise) - 1);
    }
    // The schedule cut to the steps run, as the wrapper's get_scheduler cuts it: the scheduler
    // counts from the cut, and a multistep one ends with its final-step rule at endStep.
    const scheduled = () => createScheduler(schedulerName, { steps: requestedSteps, shift, sigmas: o.sigmas, startStep, endStep, enhanceHf, transformerDim });
    let schedule = scheduled();
    const runSteps = endStep - startStep;

    const shape = embeds.targetShape;
    const size = numel(shape);
    const freeinit = resolveFreeInitArgs(o.freeinitArgs, shape);
    if (freeinit && (o.samples !== undefined || startStep !== 0 || endStep !== steps))
      throw invalidOption('freeinitArgs with samples, startStep or endStep is not implemented yet in wan-native: FreeInit runs ' +
        'the whole schedule from noise each time');
    const generator = new (native().NoiseGenerator)(seed);
    // The official noise: randn(16, T, H, W) float32 from a CPU generator seeded with seed.
    const noise = generator.randn([...shape]).toTypedArray() as Float32Array;

    const context = resolveContextOptions(o.contextOptions, shape[1]);
    if (context && context.freenoise) freeNoiseShuffle(noise, shape, context, (n: number) => generator.randperm(n).toTypedArray() as BigInt64Array);
    const prompts = text.promptEmbeds;
    if (prompts.length > 1 && !context)
      throw invalidOption(`Expected contextOptions that split the video into windows for ${prompts.length} prompts (each window ` +
        `takes the prompt of its section) but received ${o.contextOptions === undefined ? 'none'
          : `windows of ${o.contextOptions.frames ?? 81} frames, longer than the whole ${(shape[1] - 1) * 4 + 1}-frame video`}`);
    const stepNoise = () => generator.randn([...shape]).toTypedArray() as Float32Array;

    let latent: Float32Array;
    // The wrapper mixes the samples with noise when asked to (add_noise_to_samples) and always
    // below full denoise strength; otherwise they are where sampling starts, as they are.
    if (o.samples !== undefined) {
      const samples = checkLatent('samples', o.samples, shape).toTypedArray() as Float32Array;
      if (denoise === 1 && !o.addNoiseToSamples) {
        latent = Float32Array.from(samples);
        // Continuing a split run: the wrapper hands its generator on with the latent, so that the
        // stochastic schedulers' step noise goes on where the first part left it. The same
        // stream here: the draws steps 0..startStep-1 made with this seed are skipped.
        if (STOCHASTIC_SCHEDULERS.includes(schedulerName)) for (let i = 0; i < startStep; ++i) stepNoise();
      } else {
        const sigma = schedule.timesteps[0] / 1000;
        latent = new Float32Array(size);
        for (let i = 0; i < size; ++i) latent[i] = noise[i] * sigma + (1 - sigma) * samples[i];
      }
    } else {
      latent = noise;
    }

    const negatives = text.negativePromptEmbeds ?? [];
    const passes = (promptIndex: number, unconditional: boolean): Pass => unconditional
      ? { context: negatives[0], clipFea: embeds.negativeClipContext ?? embeds.clipContext }
      : { context: prompts[Math.min(promptIndex, prompts.length - 1)], clipFea: embeds.clipContext };
    for (let i = 0; i < runSteps; ++i) {
      if (cfgAt(i) !== 1 && negatives.length === 0)
        throw invalidOption(`Expected textEmbeds.negativePromptEmbeds for cfg ${cfgAt(i)} (cfg 1 needs none)`);
    }

    // cacheArgs: each prediction its own stream (cond, uncond; each context window its pair, by its
    // frames), its state in the model for this run alone.
    const streams = new Map<string, number>();
    const streamOf = (key: string) => { if (!streams.has(key)) streams.set(key, streams.size); return streams.get(key)!; };
    const cacheEnd = cache ? (cache.endStep === -1 ? runSteps - 1 : cache.endStep) : -1;
    let skippedBefore = 0;  // by the sampling runs before this one (FreeInit)
    const skippedCalls = () => skippedBefore + this.model.cacheReport().reduce((n, r) => n + r.skippedSteps.length, 0);
    if (cache) this.model.clearCache();
    // FreeInit: the sampling runs one after another, each the whole schedule; every step of each
    // is one step of this loop. Otherwise one run.
    const runs = freeinit?.iterations ?? 1;
    const firstStart = freeinit ? Float32Array.from(latent) : latent;
    try {
    // Step i counts the steps run, from 0 at startStep, as the wrapper's loop index does: for the
    // cfg list, the LoRA strengths, Enhance-A-Video's percentages and the context windows' offsets.
    const started = performance.now();
    let loopShift = 0;
    for (let overall = 0; overall < runs * runSteps; ++overall) {
      if (o.signal?.aborted) throw abortedError();
      const i = overall % runSteps;
      if (freeinit && i === 0 && overall > 0) {
        // The next FreeInit run: from the last one's result re-noised (lib/freeinit.ts, its fresh
        // noise drawn from the run's generator where the draws before it stopped), with a new
        // scheduler, the loop's shift and the block caches as a run of its own starts them.
        latent = reinitialize(latent, firstStart, stepNoise(), shape, freeinit.lowPass);
        schedule = scheduled();
        loopShift = 0;
        if (cache) {
          skippedBefore = skippedCalls();
          this.model.clearCache();
        }
      }
      const t = schedule.timesteps[i];
      const fraction = i / runSteps;
      const fetaWeight = feta && shape[1] > 1 && fraction >= feta.start && fraction <= feta.end ? feta.weight : undefined;
      const skipUnconditional = slg && fraction >= slg.start && fraction <= slg.end ? slg.blocks : undefined;
      const call: StepCall = {
        step: i, t, cfg: cfgAt(i), fetaWeight, skipUnconditional, nag, guidance, signal: o.signal, batched: o.batchedCfg === true, pass: passes, numPrompts: prompts.length,
        // Over the whole video's latent frames, in every context window too (the wrapper's L_test).
        riflex: riflexFreqIndex > 0 ? { riflexFreqIndex, riflexLatentFrames: shape[1] } : undefined,
        cache: cache && i >= cache.startStep && i <= cacheEnd
          ? (window, unconditional) => cache.call(streamOf(`${window}/${unconditional ? 'uncond' : 'cond'}`), i, startStep + i, unconditional)
          : undefined,
      };
      // loopArgs: the model sees the latent rolled back by `shifted` frames; its prediction is
      // rolled forward again, so the latent itself never moves.
      const looping = loop !== undefined && fraction >= loop.start && fraction <= loop.end;
      const shifted = looping ? loopShift : 0;
      let prediction = guidance && i < guidance.zeroInitSteps
        ? new Float32Array(size)  // CFG-Zero*'s zero-init: no model call
        : context
          ? await this.windowedPrediction(latent, shape, embeds, context, i, runSteps, call)
          : await this.guidedPrediction(rollFrames(latent, shape, -shifted), shape, embeds.y, embeds.seqLen, 0, call);
      if (looping) {
        prediction = rollFrames(prediction, shape, shifted);
        loopShift = (loopShift + loop.skip) % shape[1];
      }
      if (guidance?.tsr) prediction = temporalScoreRescaling(prediction, latent, t / 1000, guidance.tsr.k, guidance.tsr.sigma);
      const next = schedule.step(prediction, i, latent, stepNoise);

      if (o.onProgress) {
        const elapsedMs = performance.now() - started;
        const done = overall + 1, total = runs * runSteps;
        const report: SamplerProgress = {
          stage: 'sample', step: done, totalSteps: total, fraction: done / total, elapsedMs,
          etaMs: (elapsedMs / done) * (total - done),
        };
        if (cache) report.cacheSkipped = skippedCalls();
        if (o.preview) {
          const sigma = schedule.sigmas[i];  // flow matching: x0 = x_t - sigma * v
          const x0 = new Float32Array(size);
          for (let k = 0; k < size; ++k) x0[k] = latent[k] - sigma * prediction[k];
          report.preview = latentPreview(x0, shape);
        }
        o.onProgress(report);
      }
      latent = next;
    }
    } finally {
      if (cache) this.model.clearCache();  // the residuals are freed with the run (the wrapper clears them too)
    }
    return Tensor.fromTypedArray(latent, [...shape]);
  }

  // One guided prediction on a latent (or a window of it):
  // uncond + cfg * (cond - uncond), with the negative pass skipped at cfg 1.
  private async guidedPrediction(latent: Float32Array, shape: readonly number[], y: Tensor | undefined, seqLen: number,
                                 promptIndex: number, call: StepCall, window = 'video'): Promise<Float32Array> {
    const positive = call.pass(promptIndex, false), negative = call.pass(promptIndex, true);
    const x = Tensor.fromTypedArray(latent, [...shape]);
    const t1 = Float64Array.of(call.t);
    const base = { seqLen, fetaWeight: call.fetaWeight, step: call.step, ...call.riflex };
    const withImage = (p: Pass) => (y ? { clipFea: p.clipFea } : {});
    const take = (tensors: Tensor[]) => tensors.map((u) => { const a = u.toTypedArray() as Float32Array; u.dispose(); return a; });
    let cond: Float32Array, uncond: Float32Array | undefined;
    try {
      const cached = (unconditional: boolean) => (call.cache ? { cache: call.cache(window, unconditional) } : {});
      const nag = call.nag ? { nag: call.nag } : {};  // the conditional pass alone
      if (call.cfg === 1) {
        [cond] = take(await this.model.forward({ ...base, x: [x], t: Tensor.fromTypedArray(t1, [1]), context: [positive.context],
          ...withImage(positive), y: y ? [y] : undefined, ...cached(false), ...nag }, { signal: call.signal }));
      } else if (call.batched && positive.clipFea === negative.clipFea && !call.skipUnconditional) {
        // (Skip layer guidance runs the two passes apart: they run different blocks.)
        [cond, uncond] = take(await this.model.forward({ ...base, x: [x, x], t: Tensor.fromTypedArray(Float64Array.of(call.t, call.t), [2]),
          context: [positive.context, negative.context],
          ...(y ? { clipFea: batchClip(positive.clipFea!) } : {}), y: y ? [y, y] : undefined }, { signal: call.signal }));
      } else {
        [cond] = take(await this.model.forward({ ...base, x: [x], t: Tensor.fromTypedArray(t1, [1]), context: [positive.context],
          ...withImage(positive), y: y ? [y] : undefined, ...cached(false), ...nag }, { signal: call.signal }));
        [uncond] = take(await this.model.forward({ ...base, x: [x], t: Tensor.fromTypedArray(t1, [1]), context: [negative.context],
          ...withImage(negative), y: y ? [y] : undefined, skipBlocks: call.skipUnconditional, ...cached(true) }, { signal: call.signal }));
      }
    } catch (err) {
      if (err instanceof WanError && err.code === 'WAN_ABORTED') throw abortedError();
      throw err;
    }
    return combineGuidance(cond, uncond, call.cfg, shape, call.guidance);
  }

  // Context windows: each window of latent frames is predicted on its own (with the prompt of
  // its section when prompts are separated by '|') and the predictions are averaged with
  // the fuse weights (the wrapper's WanVideo Context Options).
  private async windowedPrediction(latent: Float32Array, shape: readonly number[], embeds: ImageEmbeds,
                                   context: ResolvedContextOptions, step: number, steps: number, call: StepCall):
                                   Promise<Float32Array> {
    const [, frames, height, width] = shape;
    const accumulator = new WindowAccumulator([shape[0], frames, height, width]);
    const yAll = embeds.y ? (embeds.y.toTypedArray() as Float32Array) : undefined;
    for (const window of contextWindows(step, steps, frames, context)) {
      const windowShape = [shape[0], window.length, height, width];
      const part = gatherFrames(latent, shape, window);
      let y: Tensor | undefined;
      if (yAll) {
        // Every window keeps the start image's conditioning frame first (the wrapper does the same).
        const yShape = [embeds.y!.shape[0], frames, height, width];
        const yPart = gatherFrames(yAll, yShape, window);
        const first = gatherFrames(yAll, yShape, [0]);
        const plane = height * width;
        for (let c = 0; c < yShape[0]; ++c) yPart.set(first.subarray(c * plane, (c + 1) * plane), c * window.length * plane);
        y = Tensor.fromTypedArray(yPart, [yShape[0], window.length, height, width]);
      }
      const promptIndex = promptIndexForWindow(window, frames, call.numPrompts);
      const seqLen = (window.length * height * width) / 4;
      const prediction = await this.guidedPrediction(part, windowShape, y, seqLen, promptIndex, call,
        `window ${[...window].sort((a, b) => a - b).join(',')}`);  // as the wrapper's WindowTracker: by its frames
      accumulator.add(window, prediction, windowWeights(window, frames, context));
    }
    return accumulator.result();
  }
}

// The batched pass gives each sample its own image tokens: [1, N, 1280] -> [2, N, 1280].
function batchClip(clip: Tensor): Tensor {
  const data = clip.toTypedArray() as Float32Array;
  const doubled = new Float32Array(data.length * 2);
  doubled.set(data);
  doubled.set(data, data.length);
  return Tensor.fromTypedArray(doubled, [clip.shape[0] * 2, ...clip.shape.slice(1)]);
}
