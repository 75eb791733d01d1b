// ClipVisionEncoder: the CLIP vision tower of Wan2.1 I2V / FLF2V (csrc/models/clip_vision), with
// the options of WanVideoWrapper's "WanVideo ClipVision Encode" node (anchors.md b.8).
import type { NativeClipVision, NativeTensor } from '../types/native';
import { bridgeAbort } from './abort';
import { planFiles } from './checkpoint';
import { checkDevice, checkLoadDevice, offloadingAfter, resolveDevice, type Device, type Placement } from './device';
import { checkOptionNames, describeValue, invalidOption, optionNames, WanError, withCallerStack } from './errors';
import { memoryStatsOf, type MemoryStats } from './memory-planner';
import { ImageInput, loadImage } from './image';
import { native } from './native';
import { LongCallOptions, ProgressClock } from './progress';
import { Tensor } from './tensor';

export { loadImage } from './image';
export type { ImageInput } from './image';

export type ClipCrop = 'center' | 'disabled';
export const CLIP_CROPS: readonly ClipCrop[] = ['center', 'disabled'];
export type ClipCombine = 'average' | 'sum' | 'concat' | 'batch';
export const CLIP_COMBINES: readonly ClipCombine[] = ['average', 'sum', 'concat', 'batch'];

export interface ClipVisionOptions extends LongCallOptions {
  /** Heads, when the width is not a known CLIP's (ViT-H/14: 1280 wide, 16 heads). */
  numHeads?: number;
  /** Read the weights into memory at load (default true); false maps them lazily. */
  populate?: boolean;
  /** Where the encoder computes, in float32 (see ModelLoaderOptions.device): 'cpu' (default),
   * 'cuda', 'cuda:N' or 'auto'. Images and embeddings stay CPU tensors. */
  device?: Device;
  /** Where the weights go at load (the wrapper's load_device): 'offload_device' (default, as the
   * wrapper), the CPU, from where the first use brings them to `device`, or 'main_device'. */
  loadDevice?: Placement;
}

/** WanVideoClipVisionEncode's options, camelCased, with its defaults. */
export interface ClipVisionEncodeOptions extends LongCallOptions {
  /** strength_1: multiplier of the first image's embeddings (1.0, 0..10). */
  strength1?: number;
  /** strength_2: multiplier of the second image's embeddings (1.0, 0..10). */
  strength2?: number;
  /**
   * 'center' (default, as the wrapper): what ComfyUI's clip_preprocess does, which the wrapper
   * runs: the short side resized to the model's image size (224) by antialiased bicubic, the
   * centre cut, the pixels rounded to 8 bits. 'disabled': the whole image stretched to 224 x 224
   * by bicubic without antialiasing, exactly what the official Wan2.1 pipeline
   * (CLIPModel.visual) does.
   */
  crop?: ClipCrop;
  /** combine_embeds: how two images combine ('average' default, 'sum', 'concat' -> [1, 514, 1280],
   * 'batch' -> [2, 257, 1280], what FLF2V's first and last frame make). */
  combineEmbeds?: ClipCombine;
  /** image_2: a second image, weighted by strength2 and combined with the first. */
  image2?: Tensor | ImageInput;
  /** negative_image: encoded on its own into negativeClipEmbeds (for the unconditional pass). */
  negativeImage?: Tensor | ImageInput;
  /** Offload the encoder when done (the wrapper's force_offload, default true): see offload(). */
  forceOffload?: boolean;
}

/** The wrapper's WANVIDIMAGE_CLIPEMBEDS: {clip_embeds, negative_clip_embeds}. */
export interface ClipEmbeds {
  clipEmbeds: Tensor;           // [1, 257, 1280] for ViT-H/14 (see combineEmbeds for two images)
  negativeClipEmbeds?: Tensor;  // [1, 257, 1280] when a negativeImage was given
}

export interface ClipVisionConfig {
  imageSize: number; patchSize: number; dim: number; mlpDim: number; numHeads: number;
  numLayers: number;   // blocks in the file; encode runs all but the last (use_31_block)
  tokens: number;      // 1 + (imageSize / patchSize)^2: 257
  layout: 'official' | 'hf-clip' | 'open-clip';  // the file's naming
  device: string;      // where it computes: 'cpu', 'cuda:0', ...
}

function checkNumber(o: Record<string, unknown>, key: string, min: number, max: number): number | undefined {
  const v = o[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max)
    throw invalidOption(`Expected a number between ${min} and ${max} for ${key} but received ${describeValue(v)}`);
  return v;
}

function checkOneOf<T extends string>(o: Record<string, unknown>, key: string, allowed: readonly T[], fallback: T): T {
  const v = o[key];
  if (v === undefined) return fallback;
  if (!(allowed as readonly unknown[]).includes(v))
    throw invalidOption(`Expected one of ${allowed.join(', ')} for ${key} but received ${describeValue(v)}`);
  return v as T;
}

function checkObject(o: unknown, what: string): Record<string, unknown> {
  if (typeof o !== 'object' || o === null || Array.isArray(o))
    throw invalidOption(`Expected an object for ${what} but received ${describeValue(o)}`);
  return o as Record<string, unknown>;
}

function isImageInput(v: unknown): v is ImageInput {
  return typeof v === 'string' || v instanceof Uint8Array;
}

function checkImageArg(v: unknown, what: string): Tensor | ImageInput {
  if (v instanceof Tensor) {
    const s = v.shape;
    if (!((s.length === 3 && s[0] === 3) || (s.length === 4 && s[0] === 3 && s[1] === 1)) || s.includes(0))
      throw new WanError('WAN_INVALID_TENSOR',
        `Expected a [3, H, W] or [3, 1, H, W] tensor in [-1, 1] for ${what} but received shape [${s.join(', ')}]`);
    if (!['f32', 'f16', 'bf16', 'f64'].includes(v.dtype))
      throw new WanError('WAN_INVALID_TENSOR', `Expected a floating-point tensor for ${what} but received dtype ${v.dtype}`);
    return v;
  }
  if (isImageInput(v)) return v;
  throw invalidOption(`Expected a Tensor, a file path or image bytes for ${what} but received ${describeValue(v)}`);
}

interface EncodePlan {
  images: (Tensor | ImageInput)[];
  negative?: Tensor | ImageInput;
  strengths: number[];
  crop: ClipCrop;
  combineEmbeds: ClipCombine;
}

function planEncode(image: unknown, options: unknown): EncodePlan {
  const o = checkObject(options, 'options');
  const strength1 = checkNumber(o, 'strength1', 0, 10) ?? 1;
  const strength2 = checkNumber(o, 'strength2', 0, 10) ?? 1;
  const crop = checkOneOf(o, 'crop', CLIP_CROPS, 'center');
  const combineEmbeds = checkOneOf(o, 'combineEmbeds', CLIP_COMBINES, 'average');
  const images = [checkImageArg(image, 'image')];
  if (o.image2 !== undefined) images.push(checkImageArg(o.image2, 'image2'));
  const negative = o.negativeImage !== undefined ? checkImageArg(o.negativeImage, 'negativeImage') : undefined;
  return { images, negative, strengths: [strength1, strength2], crop, combineEmbeds };
}

const CLIP_OPTIONS = optionNames<ClipVisionOptions>()({ numHeads: true, populate: true, device: true, loadDevice: true, signal: true, onProgress: true });
const CLIP_ENCODE_OPTIONS = optionNames<ClipVisionEncodeOptions>()({
  strength1: true, strength2: true, crop: true, combineEmbeds: true, image2: true, negativeImage: true, forceOffload: true,
  signal: true, onProgress: true,
});

export class ClipVisionEncoder {
  readonly config: ClipVisionConfig;
  #native: NativeClipVision | undefined;

  private constructor(handle: NativeClipVision) {
    this.#native = handle;
    this.config = handle.config() as ClipVisionConfig;
  }

  /**
   * Loads the vision tower from the official models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth
   * (its text tower is ignored), ComfyUI's clip_vision_h.safetensors (Hugging Face names) or an
   * open_clip state dict; the config is inferred from shapes.
   */
  static load(path: string | string[], options: ClipVisionOptions = {}): Promise<ClipVisionEncoder> {
    const caller = new Error();
    return withCallerStack((async () => {
      const o = checkObject(options, 'options');
      checkOptionNames(o, CLIP_OPTIONS);
      if (o.numHeads !== undefined && !(Number.isSafeInteger(o.numHeads) && (o.numHeads as number) > 0))
        throw invalidOption(`Expected a positive integer for numHeads but received ${describeValue(o.numHeads)}`);
      if (o.populate !== undefined && typeof o.populate !== 'boolean')
        throw invalidOption(`Expected a boolean for populate but received ${describeValue(o.populate)}`);
      if (o.device !== undefined) checkDevice(o.device);
      checkLoadDevice(o.loadDevice);
      const plan = await planFiles(path, 'path');
      const abort = bridgeAbort(options.signal);
      const clock = new ProgressClock('load', 1, options.onProgress);
      try {
        clock.report(0);
        const handle = await native().loadClipVision(plan.files, {
          numHeads: options.numHeads, populate: options.populate ?? true, device: resolveDevice(options.device),
          loadDevice: options.loadDevice ?? 'offload_device',
        }, abort.flag);
        clock.report(1);
        return new ClipVisionEncoder(handle);
      } finally {
        abort.done();
      }
    })(), caller);
  }

  /** The bytes of the weights this model holds, by storage dtype (all resident), and where they are. */
  memoryStats(): MemoryStats {
    return memoryStatsOf(this.handle().memoryStats());
  }

  /** Returns the weights to the CPU after the calls already made; the next encode brings them back (see Placement). */
  offload(): Promise<void> {
    const caller = new Error();
    return withCallerStack((async () => this.handle().offload())(), caller);
  }

  private handle(): NativeClipVision {
    if (!this.#native) throw new WanError('WAN_INVALID_OPTION', 'the ClipVisionEncoder has been disposed');
    return this.#native;
  }

  /**
   * Encodes an image (a [3, H, W] or [3, 1, H, W] tensor in [-1, 1], or a PNG / JPEG / WebP path
   * or bytes) into CLIP context tokens: the hidden states after all blocks but the last,
   * [1, 257, 1280] for ViT-H/14, as WanVideoClipVisionEncode returns them.
   */
  async encode(image: Tensor | ImageInput, options: ClipVisionEncodeOptions = {}): Promise<ClipEmbeds> {
    const caller = new Error();
    return withCallerStack((async () => {
      checkOptionNames(options, CLIP_ENCODE_OPTIONS);
      const plan = planEncode(image, options);
      const steps = plan.negative === undefined ? 1 : 2;
      const clock = new ProgressClock('clip', steps, options.onProgress);
      return offloadingAfter(options.forceOffload, this, async () => {
        clock.report(0);
        const clipEmbeds = (await this.run(plan.images, plan, false, options.signal)).embeds;
        clock.report(1);
        if (plan.negative === undefined) return { clipEmbeds };
        const negativeClipEmbeds = (await this.run([plan.negative], { ...plan, strengths: [1] }, false, options.signal)).embeds;
        clock.report(2);
        return { clipEmbeds, negativeClipEmbeds };
      });
    })(), caller);
  }

  /** encode() of the images that also returns named intermediates (preprocessed, patch_embedding_out,
   * block{i}_out, out, all_blocks): for debugging and tests. */
  trace(image: Tensor | ImageInput, options: Omit<ClipVisionEncodeOptions, 'negativeImage'> = {}):
    Promise<{ embeds: Tensor; intermediates: Map<string, Tensor> }> {
    const caller = new Error();
    return withCallerStack((async () => {
      const plan = planEncode(image, options);
      return this.run(plan.images, plan, true, options.signal);
    })(), caller);
  }

  private async run(images: (Tensor | ImageInput)[], plan: EncodePlan, trace: boolean, signal?: AbortSignal) {
    const handle = this.handle();
    const owned: Tensor[] = [];  // tensors decoded here, freed when done
    const abort = bridgeAbort(signal);
    try {
      const tensors: NativeTensor[] = [];
      for (const [i, img] of images.entries()) {
        let t: Tensor;
        if (img instanceof Tensor) {
          t = img;
        } else {
          t = await loadImage(img);
          owned.push(t);
        }
        tensors.push(Tensor.handle(t, i === 0 ? 'image' : 'image2'));
      }
      const result = await handle.encode(tensors, {
        crop: plan.crop, strengths: plan.strengths, combineEmbeds: plan.combineEmbeds, trace,
      }, abort.flag);
      return {
        embeds: new Tensor(result.embeds),
        intermediates: new Map(Object.entries(result.trace ?? {}).map(([k, h]) => [k, new Tensor(h)])),
      };
    } finally {
      abort.done();
      for (const t of owned) t.dispose();
    }
  }

  dispose(): void {
    this.#native?.dispose();
    this.#native = undefined;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
  }
}
