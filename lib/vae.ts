// Vae: the Wan2.1 causal 3D VAE (csrc/models/wan_vae).
import type { NativeVae } from '../types/native';
import { bridgeAbort } from './abort';
import { planFiles } from './checkpoint';
import { describeValue, invalidOption, WanError, withCallerStack } from './errors';
import { native } from './native';
import { LongCallOptions, ProgressClock } from './progress';
import { Tensor } from './tensor';

export interface VaeOptions extends LongCallOptions {
  /** Read the weights into memory at load (default true). */
  populate?: boolean;
}

export interface VaeDecodeOptions extends LongCallOptions {
  /** Spatial tiling (WanVideo Decode's enable_vae_tiling), for sizes that would not fit otherwise. */
  tiled?: boolean;
  tileX?: number;        // 272 pixels
  tileY?: number;        // 272
  tileStrideX?: number;  // 144
  tileStrideY?: number;  // 128
  /** Clamp to [-1, 1] as the official decode does (default true). */
  clamp?: boolean;
}

const TILE_DEFAULTS = { tileX: 272, tileY: 272, tileStrideX: 144, tileStrideY: 128 };

function checkTensor(t: unknown, what: string, rank: number): Tensor {
  if (!(t instanceof Tensor)) throw new WanError('WAN_INVALID_TENSOR', `${what} is not a Tensor (received ${describeValue(t)})`);
  if (t.shape.length !== rank)
    throw new WanError('WAN_INVALID_TENSOR', `Expected a ${rank}-D tensor for ${what} but received shape [${t.shape.join(', ')}]`);
  return t;
}

function tilingOf(o: VaeDecodeOptions) {
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
  return tiling;
}

export class Vae {
  readonly config: { dim: number; zDim: number };
  #native: NativeVae | undefined;

  private constructor(handle: NativeVae) {
    this.#native = handle;
    this.config = handle.config();
  }

  /** Loads the official Wan2.1_VAE.pth, ComfyUI's wan_2.1_vae.safetensors or Kijai's bf16 file. */
  static load(path: string | string[], options: VaeOptions = {}): Promise<Vae> {
    const caller = new Error();
    return withCallerStack((async () => {
      if (options.populate !== undefined && typeof options.populate !== 'boolean')
        throw invalidOption(`Expected a boolean for populate but received ${describeValue(options.populate)}`);
      const plan = await planFiles(path, 'path');
      const abort = bridgeAbort(options.signal);
      try {
        return new Vae(await native().loadVae(plan.files, { populate: options.populate ?? true }, abort.flag));
      } finally {
        abort.done();
      }
    })(), caller);
  }

  private handle(): NativeVae {
    if (!this.#native) throw new WanError('WAN_INVALID_OPTION', 'the Vae has been disposed');
    return this.#native;
  }

  /** video [3, F, H, W] in [-1, 1] (F = 4k + 1; H, W multiples of 8) -> normalised latent [16, (F-1)/4+1, H/8, W/8]. */
  encode(video: Tensor, options: LongCallOptions = {}): Promise<Tensor> {
    const caller = new Error();
    return withCallerStack((async () => {
      checkTensor(video, 'video', 4);
      const abort = bridgeAbort(options.signal);
      try {
        return new Tensor(await this.handle().encode(Tensor.handle(video, 'video'), abort.flag));
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
    checkTensor(latent, 'latent', 4);
    const tiling = tilingOf(options);
    const decoder = await this.handle().decoder(Tensor.handle(latent, 'latent'), tiling);
    const clock = new ProgressClock('decode', latent.shape[1], options.onProgress);
    const abort = bridgeAbort(options.signal);
    try {
      for (let step = 1; ; step++) {
        const frames = await decoder.next(options.clamp ?? true, abort.flag);
        if (!frames) return;
        clock.report(step);
        yield new Tensor(frames);
      }
    } finally {
      abort.done();
    }
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
