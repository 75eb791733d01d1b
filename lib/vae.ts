// Vae: the Wan2.1 causal 3D VAE (csrc/models/wan_vae).
import type { NativeVae } from '../types/native';
import { bridgeAbort, unlessAborted } from './abort';
import { planFiles } from './checkpoint';
import { checkOptionNames, describeValue, invalidOption, optionNames, WanError, withCallerStack } from './errors';
import { memoryStatsOf, type MemoryStats } from './memory-planner';
import { checkDevice, checkForceOffload, checkLoadDevice, offloadingAfter, resolveDevice, type Device, type Placement } from './device';
import { native } from './native';
import { LongCallOptions, ProgressClock } from './progress';
import { Tensor } from './tensor';

export interface VaeOptions extends LongCallOptions {
  /** Read the weights into memory at load (default true). */
  populate?: boolean;
  /** Where the VAE computes, in float32 (see ModelLoaderOptions.device): 'cpu' (default), 'cuda',
   * 'cuda:N' or 'auto'. Videos and latents stay CPU tensors. */
  device?: Device;
  /** Where the weights go at load: 'offload_device' (default), the CPU, from where the first
   * encode or decode brings them to `device`, or 'main_device' (see Placement). */
  loadDevice?: Placement;
}

export interface VaeTileOptions {
  /** Spatial tiling (WanVideo Decode's and Encode's enable_vae_tiling), for sizes that would not
   * fit otherwise: overlapping tiles, each encoded or decoded on its own, blended linearly. */
  tiled?: boolean;
  tileX?: number;        // 272 pixels
  tileY?: number;        // 272
  tileStrideX?: number;  // 144
  tileStrideY?: number;  // 128
}

export interface VaeEncodeOptions extends LongCallOptions, VaeTileOptions {
  /** Offload the VAE when done (default true, as the wrapper's nodes): see offload(). */
  forceOffload?: boolean;
}

export interface VaeDecodeOptions extends VaeEncodeOptions {
  /** Clamp to [-1, 1] as the official decode does (default true). */
  clamp?: boolean;
  /** A latent sampled with loopArgs (the wrapper's looped decode): its first two latent frames are
   * decoded again after the last three, so that the video wraps around; those 8 frames,
   * min-max normalised to [-1, 1], replace the first 5, giving 4T frames (false by default). */
  looped?: boolean;
  /** A latent sampled on imageToVideoEncode's extraEndLatent embeds: its last frame (the end
   * image's alone) is left out, as the wrapper's decode drops the frame it becomes (false). */
  trimEndLatent?: boolean;
}

export type VaeDecodeCall = 'decode' | 'decodeFrames';
const DECODE_CALLS: readonly VaeDecodeCall[] = ['decode', 'decodeFrames'];

export interface VaeMemoryEstimateOptions extends VaeTileOptions {
  /** Latent frames T (default 21, the 81 frames of a Wan2.1 video). */
  frames?: number;
  /** Video height and width in pixels, multiples of 8. */
  height: number;
  width: number;
  /**
   * 'decode' (default): decode(), which holds the whole video at the end; 'decodeFrames': a
   * caller that disposes each chunk before asking for the next.
   */
  call?: VaeDecodeCall;
}

// latent [C, T, h, w] without its last frame.
function withoutLastFrame(latent: Tensor): Tensor {
  const [channels, frames, height, width] = latent.shape;
  const data = latent.toTypedArray() as Float32Array, plane = height * width;
  const out = new Float32Array(channels * (frames - 1) * plane);
  for (let c = 0; c < channels; c++) out.set(data.subarray(c * frames * plane, (c * frames + frames - 1) * plane), c * (frames - 1) * plane);
  return Tensor.fromTypedArray(out, [channels, frames - 1, height, width]);
}

/** Bytes of resident memory at the peak of a decode; the parts add up to `bytes`. */
export interface VaeMemoryEstimate {
  bytes: number;
  breakdown: {
    /** The VAE's weights as stored (resident once loaded with populate). */
    weights: number;
    /** Code and thread buffers a process's first decode maps (a measured constant). */
    runtime: number;
    /** Feature caches at the busiest moment (the last 2 frames of each causal conv, per tile). */
    caches: number;
    /** Other tensors at the busiest moment: activations, the latent, tile sums, conv buffers. */
    activations: number;
    /** The most decoded frames held at once (decode(): the chunks and the whole video, in JS). */
    output: number;
    /** What the heap holds beyond those at its peak: freed blocks glibc keeps for reuse. */
    allocator: number;
  };
  /** The busiest moment: chunk, tile, layer and op. */
  peakAt: string;
}

const TILE_DEFAULTS = { tileX: 272, tileY: 272, tileStrideX: 144, tileStrideY: 128 };

function checkTensor(t: unknown, what: string, rank: number): Tensor {
  if (!(t instanceof Tensor)) throw new WanError('WAN_INVALID_TENSOR', `${what} is not a Tensor (received ${describeValue(t)})`);
  if (t.shape.length !== rank)
    throw new WanError('WAN_INVALID_TENSOR', `Expected a ${rank}-D tensor for ${what} but received shape [${t.shape.join(', ')}]`);
  return t;
}

function tilingOf(o: VaeTileOptions) {
  if (!o.tiled) {
    for (const k of Object.keys(TILE_DEFAULTS) as (keyof typeof TILE_DEFAULTS)[])
      if (o[k] !== undefined) throw invalidOption(`${k} was given but tiled is not true`);
    return undefined;
  }
  const tiling = { ...TILE_DEFAULTS };
  for (const k of Object.keys(TILE_DEFAULTS) as (keyof typeof TILE_DEFAULTS)[]) {
    const v = o[k];
    if (v === undefined) continue;
    if (!Number.isSafeInteger(v) || v <= 0 || v % 8 !== 0)
      throw invalidOption(`Expected a positive multiple of 8 for ${k} but received ${describeValue(v)}`);
    tiling[k] = v;
  }
  // Tiles that only touch have no band to blend across, and their borders show as seams.
  for (const [tile, stride] of [['tileX', 'tileStrideX'], ['tileY', 'tileStrideY']] as const)
    if (tiling[stride] >= tiling[tile])
      throw invalidOption(`Expected ${stride} below ${tile}, so that tiles overlap and blend, but received ${tile} ${tiling[tile]}, ` +
        `${stride} ${tiling[stride]}`);
  return tiling;
}

const VAE_OPTIONS = optionNames<VaeOptions>()({ populate: true, device: true, loadDevice: true, signal: true, onProgress: true });
const ENCODE_OPTIONS = optionNames<VaeEncodeOptions>()({
  forceOffload: true, signal: true, onProgress: true, tiled: true, tileX: true, tileY: true, tileStrideX: true, tileStrideY: true,
});
const DECODE_OPTIONS = optionNames<VaeDecodeOptions>()({
  clamp: true, looped: true, trimEndLatent: true, forceOffload: true, signal: true, onProgress: true, tiled: true, tileX: true, tileY: true, tileStrideX: true, tileStrideY: true,
});

export class Vae {
  readonly config: { dim: number; zDim: number; device: string };
  #native: NativeVae | undefined;

  private constructor(handle: NativeVae) {
    this.#native = handle;
    this.config = handle.config();
  }

  /** Loads the official Wan2.1_VAE.pth, ComfyUI's wan_2.1_vae.safetensors or Kijai's bf16 file. */
  static load(path: string | string[], options: VaeOptions = {}): Promise<Vae> {
    const caller = new Error();
    return withCallerStack((async () => {
      checkOptionNames(options, VAE_OPTIONS);
      if (options.populate !== undefined && typeof options.populate !== 'boolean')
        throw invalidOption(`Expected a boolean for populate but received ${describeValue(options.populate)}`);
      if (options.device !== undefined) checkDevice(options.device);
      checkLoadDevice(options.loadDevice);
      const plan = await planFiles(path, 'path');
      const abort = bridgeAbort(options.signal);
      try {
        return new Vae(await native().loadVae(plan.files, {
          populate: options.populate ?? true, device: resolveDevice(options.device), loadDevice: options.loadDevice ?? 'offload_device',
        }, abort.flag));
      } finally {
        abort.done();
      }
    })(), caller);
  }

  /** The bytes of the weights this model holds, by storage dtype (all resident), and where they are. */
  memoryStats(): MemoryStats {
    return memoryStatsOf(this.handle().memoryStats());
  }

  /** Returns the weights to the CPU after the calls already made; the next use brings them back (see Placement). */
  offload(): Promise<void> {
    const caller = new Error();
    return withCallerStack((async () => this.handle().offload())(), caller);
  }

  private handle(): NativeVae {
    if (!this.#native) throw new WanError('WAN_INVALID_OPTION', 'the Vae has been disposed');
    return this.#native;
  }

  /** video [3, F, H, W] in [-1, 1] (F = 4k + 1; H, W multiples of 8) -> normalised latent [16, (F-1)/4+1, H/8, W/8]. */
  encode(video: Tensor, options: VaeEncodeOptions = {}): Promise<Tensor> {
    const caller = new Error();
    return withCallerStack((async () => {
      checkOptionNames(options, ENCODE_OPTIONS);
      checkTensor(video, 'video', 4);
      const tiling = tilingOf(options);
      const abort = bridgeAbort(options.signal);
      try {
        return await offloadingAfter(options.forceOffload, this,
          async () => unlessAborted(options.signal, new Tensor(await this.handle().encode(Tensor.handle(video, 'video'), abort.flag, tiling))));
      } finally {
        abort.done();
      }
    })(), caller);
  }

  /**
   * Decodes chunk by chunk: yields [3, n, H, W] frames (n = 1, then 4 per latent frame), so a
   * writer can encode a long video without holding all of it. Memory is bounded by one chunk.
   */
  async *decodeFrames(latent: Tensor, options: VaeDecodeOptions = {}): AsyncGenerator<Tensor> {
    checkOptionNames(options, DECODE_OPTIONS);
    checkTensor(latent, 'latent', 4);
    checkForceOffload(options.forceOffload);
    const trim = options.trimEndLatent ?? false;
    if (typeof trim !== 'boolean') throw invalidOption(`Expected a boolean for trimEndLatent but received ${describeValue(options.trimEndLatent)}`);
    if (trim) {
      if (latent.shape[1] < 2)
        throw invalidOption(`Expected a latent of at least 2 frames with trimEndLatent but received ${latent.shape[1]} (shape [${latent.shape.join(', ')}])`);
      latent = withoutLastFrame(latent);
    }
    const tiling = tilingOf(options);
    const looped = options.looped ?? false;
    if (typeof looped !== 'boolean') throw invalidOption(`Expected a boolean for looped but received ${describeValue(options.looped)}`);
    if (looped && latent.shape[1] < 3)
      throw invalidOption(`Expected a latent of at least 3 frames with looped but received ${latent.shape[1]} (shape [${latent.shape.join(', ')}])`);
    const abort = bridgeAbort(options.signal);
    try {
      // Looped: the wrap first (its frames replace the first 5, the decode of latent frames 0 and 1).
      let skip = 0;
      if (looped) {
        yield await this.wrapFrames(latent, tiling, abort.flag);
        skip = 5;
      }
      const decoder = await this.handle().decoder(Tensor.handle(latent, 'latent'), tiling);
      const clock = new ProgressClock('decode', latent.shape[1], options.onProgress);
      for (let step = 1; ; step++) {
        const frames = await decoder.next(options.clamp ?? true, abort.flag);
        if (!frames) return;
        clock.report(step);
        const chunk = new Tensor(frames);
        if (skip > 0) {  // the decoder yields 1 frame, then 4: latent frames 0 and 1 are whole chunks
          skip -= chunk.shape[1];
          chunk.dispose();
          continue;
        }
        yield chunk;
      }
    } finally {
      abort.done();
      // When the last frame is out, or the caller stops early (the wrapper's decode node offloads).
      if ((options.forceOffload ?? true) && this.#native) await this.offload();
    }
  }

  // The looped decode's wrap (the wrapper's WanVideoDecode with a looped latent): latent frames
  // T-3..T-1 then 0 and 1 decoded as one clip of 17 frames, min-max normalised over the clip to
  // [-1, 1]; its frames 9..16 (what latent frames 0 and 1 become after the video's end) as
  // [3, 8, H, W].
  private async wrapFrames(latent: Tensor, tiling: ReturnType<typeof tilingOf>, abortFlag: Int32Array | undefined): Promise<Tensor> {
    const [channels, frames, height, width] = latent.shape;
    const order = [frames - 3, frames - 2, frames - 1, 0, 1];
    const data = latent.toTypedArray() as Float32Array;
    const plane = height * width;
    const clip = new Float32Array(channels * order.length * plane);
    for (let c = 0; c < channels; c++)
      order.forEach((f, j) => clip.set(data.subarray((c * frames + f) * plane, (c * frames + f + 1) * plane), (c * order.length + j) * plane));
    const decoder = await this.handle().decoder(Tensor.handle(Tensor.fromTypedArray(clip, [channels, order.length, height, width]), 'latent'), tiling);
    const chunks: Float32Array[] = [];
    for (;;) {
      const chunk = await decoder.next(false, abortFlag);
      if (!chunk) break;
      const t = new Tensor(chunk);
      chunks.push(t.toTypedArray() as Float32Array);
      t.dispose();
    }
    let min = Infinity, max = -Infinity;
    for (const c of chunks) for (const v of c) { if (v < min) min = v; if (v > max) max = v; }
    const scale = max > min ? 2 / (max - min) : 0;
    // Chunks are [3, n, H, W] (1 frame, then 4 each): keep frames 9..16 of the clip's 17.
    const pixels = (chunks[0].length / 3);
    const out = new Float32Array(3 * 8 * pixels);
    let frame = 0;
    for (const c of chunks) {
      const n = c.length / (3 * pixels);
      for (let k = 0; k < n; k++, frame++) {
        if (frame < 9) continue;
        for (let ch = 0; ch < 3; ch++) {
          const from = (ch * n + k) * pixels, to = (ch * 8 + frame - 9) * pixels;
          for (let p = 0; p < pixels; p++) out[to + p] = (c[from + p] - min) * scale - 1;
        }
      }
    }
    return Tensor.fromTypedArray(out, [3, 8, height * 8, width * 8]);
  }

  /**
   * Estimates the peak resident memory of a decode of `frames` latent frames into
   * height x width video, before decoding, from a replay of the decoder on shapes
   * (csrc/models/wan_vae.cpp, DecodePlanner). test/native/vae-memory.test.ts holds it to
   * within 25% of the VmHWM a fresh process measures.
   */
  estimateDecodeMemory(options: VaeMemoryEstimateOptions): VaeMemoryEstimate {
    if (typeof options !== 'object' || options === null)
      throw invalidOption(`Expected an options object for estimateDecodeMemory but received ${describeValue(options)}`);
    const frames = options.frames ?? 21;
    if (!Number.isSafeInteger(frames) || frames < 1)
      throw invalidOption(`Expected a positive integer for frames but received ${describeValue(options.frames)}`);
    for (const k of ['height', 'width'] as const) {
      const v = options[k];
      if (!Number.isSafeInteger(v) || v <= 0 || v % 8 !== 0)
        throw invalidOption(`Expected a positive multiple of 8 for ${k} but received ${describeValue(v)}`);
    }
    const call = options.call ?? 'decode';
    if (!DECODE_CALLS.includes(call))
      throw invalidOption(`Expected one of ${DECODE_CALLS.join(', ')} for call but received ${describeValue(options.call)}`);
    const tiling = tilingOf(options);
    // Synchronous (a replay on shapes takes milliseconds), so a native error already carries
    // the caller's stack.
    return this.handle().estimateDecodeMemory({
      frames, height: options.height, width: options.width, ...(tiling ? { tiling } : {}), whole: call === 'decode',
    });
  }

  /** Decodes a whole latent [16, T, h, w] to video [3, 4(T-1)+1, 8h, 8w], clamped to [-1, 1]. */
  decode(latent: Tensor, options: VaeDecodeOptions = {}): Promise<Tensor> {
    const caller = new Error();
    return withCallerStack((async () => {
      const chunks: Float32Array[] = [];
      let frames = 0, height = 0, width = 0;
      for await (const chunk of this.decodeFrames(latent, options)) {
        [, , height, width] = chunk.shape;
        frames += chunk.shape[1];
        chunks.push(chunk.toTypedArray() as Float32Array);
        chunk.dispose();
      }
      // Chunks are [3, n, H, W]; the video is [3, F, H, W]: interleave per channel.
      const plane = height * width;
      const out = new Float32Array(3 * frames * plane);
      let offset = 0;
      for (const c of chunks) {
        const n = c.length / (3 * plane);
        for (let ch = 0; ch < 3; ch++) out.set(c.subarray(ch * n * plane, (ch + 1) * n * plane), (ch * frames + offset) * plane);
        offset += n;
      }
      return Tensor.fromTypedArray(out, [3, frames, height, width]);
    })(), caller);
  }

  dispose(): void {
    this.#native?.dispose();
    this.#native = undefined;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
  }
}
