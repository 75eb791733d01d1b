// What the sampler is conditioned on besides text: the latent shape of the video to make
// (WanVideoEmptyEmbeds) and, for I2V / FLF2V, the encoded start/end images with their frame
// mask and CLIP embeddings (WanVideoImageToVideoEncode, computed as the official
// wan/image2video.py and wan/first_last_frame2video.py compute them).
import type { ClipEmbeds } from './clip';
import { checkOptionNames, describeValue, invalidOption, optionNames, withCallerStack } from './errors';
import { ImageInput, loadImage } from './image';
import { resizeLanczos } from './lanczos';
import { native } from './native';
import { seedOf } from './sampler';
import { LongCallOptions } from './progress';
import { Tensor } from './tensor';
import type { Vae, VaeTileOptions } from './vae';

// The Wan2.1 VAE compresses 4x in time and 8x in space; the DiT patches 2x2.
const VAE_STRIDE_T = 4;
const VAE_STRIDE_S = 8;
const PATCH_AREA = 4;
const LATENT_CHANNELS = 16;

/** The wrapper's WANVIDIMAGE_EMBEDS. */
export interface ImageEmbeds {
  /** Latent [16, (F-1)/4+1, H/8, W/8]. */
  targetShape: [number, number, number, number];
  /** Tokens after patching: T * H/16 * W/16. */
  seqLen: number;
  /** The video size it was made for (emptyEmbeds and imageToVideoEncode set them; the Sampler
   *  reads targetShape, so embeds made by hand as API.md shows them may leave them out). */
  numFrames?: number;
  width?: number;
  height?: number;
  /** I2V / FLF2V conditioning [20, T, H/8, W/8]: 4 frame-mask channels, then the 16 latent channels. */
  y?: Tensor;
  /** [1, 257, 1280] (FLF2V: [2, 257, 1280], first and last frame). */
  clipContext?: Tensor;
  /** CLIP embeddings of a negative image, used by the unconditional pass when given. */
  negativeClipContext?: Tensor;
  /** imageToVideoEncode with flf2v false: the last latent frame is the end image's alone, one
   * more than numFrames needs; decode the sampled latent with `trimEndLatent: true`. */
  extraEndLatent?: boolean;
}

export interface VideoSize {
  /** Pixels, a multiple of 16 (832). */
  width?: number;
  /** Pixels, a multiple of 16 (480). */
  height?: number;
  /** 4k+1 frames (81). */
  numFrames?: number;
}

function checkSize(o: VideoSize): { width: number; height: number; numFrames: number } {
  const width = o.width ?? 832, height = o.height ?? 480, numFrames = o.numFrames ?? 81;
  for (const [name, value] of [['width', width], ['height', height]] as const) {
    if (!Number.isSafeInteger(value) || value < 16 || value % 16 !== 0)
      throw invalidOption(`Expected a positive multiple of 16 for ${name} but received ${describeValue(value)}`);
  }
  if (!Number.isSafeInteger(numFrames) || numFrames < 1 || (numFrames - 1) % 4 !== 0)
    throw invalidOption(`Expected a frame count of the form 4k+1 (1, 5, ..., 81) for numFrames but received ${describeValue(numFrames)}`);
  return { width, height, numFrames };
}

function latentShape(width: number, height: number, numFrames: number): [number, number, number, number] {
  return [LATENT_CHANNELS, (numFrames - 1) / VAE_STRIDE_T + 1, height / VAE_STRIDE_S, width / VAE_STRIDE_S];
}

/** WanVideoEmptyEmbeds: the latent shape of a text-to-video (or, with numFrames 1, text-to-image) run. */
const SIZE_OPTIONS = optionNames<VideoSize>()({ width: true, height: true, numFrames: true });
const I2V_OPTIONS = optionNames<ImageToVideoEncodeOptions>()({
  vae: true, startImage: true, endImage: true, clipEmbeds: true, noiseAugStrength: true, startLatentStrength: true,
  endLatentStrength: true, augmentEmptyFrames: true, emptyFramePadImage: true, flf2v: true, seed: true, forceOffload: true, resize: true, width: true, height: true, numFrames: true, signal: true, onProgress: true,
  tiledVae: true,
});

export function emptyEmbeds(o: VideoSize = {}): ImageEmbeds {
  if (typeof o !== 'object' || o === null) throw invalidOption(`Expected an object for options but received ${describeValue(o)}`);
  checkOptionNames(o, SIZE_OPTIONS);
  const { width, height, numFrames } = checkSize(o);
  const targetShape = latentShape(width, height, numFrames);
  return { targetShape, seqLen: (targetShape[1] * targetShape[2] * targetShape[3]) / PATCH_AREA, numFrames, width, height };
}

export interface ImageToVideoEncodeOptions extends VideoSize, LongCallOptions {
  /** Encodes the conditioning video. */
  vae: Vae;
  /** The first frame: a [3, H, W] tensor in [-1, 1] or an image file / its bytes. */
  startImage?: Tensor | ImageInput;
  /** The last frame (FLF2V models; with I2V models see flf2v). Without startImage the video ends
   * on it and nothing fixes its start. */
  endImage?: Tensor | ImageInput;
  /** With both images, how the end image is encoded (the wrapper's fun_or_fl2v_model): true
   * (default), the last of numFrames frames, as the official FLF2V model expects; false, an extra
   * latent frame of its own after the video's (for I2V models that are not FLF2V), which the
   * decode drops (ImageEmbeds.extraEndLatent). */
  flf2v?: boolean;
  /** CLIP embeddings of the start image (FLF2V: of both images, combineEmbeds 'batch'). */
  clipEmbeds?: ClipEmbeds;
  /** Gaussian noise of this standard deviation added to the images before encoding (0, 0..10). */
  noiseAugStrength?: number;
  /** Multiplier of the first latent frame (1, 0..10). */
  startLatentStrength?: number;
  /** Multiplier of the last latent frame, an end image's or the encoded blank frames' (1, 0..10). */
  endLatentStrength?: number;
  /** The wrapper's augment_empty_frames (0, 0..10): each latent frame whose mask (channel 0) is
   * empty moves (1 + k) times as far from the first latent frame, so the model is pushed to
   * change more there (0.15 is a reported good value; larger values garble). */
  augmentEmptyFrames?: number;
  /** The wrapper's empty_frame_pad_image: this image (resized as the others) fills the frames no
   * image fixes, instead of mid-gray (as the SVI LoRAs expect). */
  emptyFramePadImage?: Tensor | ImageInput;
  /** Seed of the noise augmentation (0). */
  seed?: number | bigint;
  /** The wrapper's tiled_vae: the frames encoded in tiles of half the frame every quarter frame
   * (its tiled encode's size when given none; here multiples of 8), blended (Vae.encode tiled). */
  tiledVae?: boolean;
  /** Offload the VAE when the encode is done (true, as the wrapper): see Vae.offload(). */
  forceOffload?: boolean;
  /** How an image of another size is resized to width x height: 'lanczos' (default, as the
   * wrapper: Pillow's LANCZOS on the 8-bit image, through ComfyUI's common_upscale) or 'bicubic'
   * (torch's interpolate without antialiasing, as the official image2video.py). */
  resize?: ImageResize;
}

export type ImageResize = 'lanczos' | 'bicubic';
const IMAGE_RESIZES: readonly ImageResize[] = ['lanczos', 'bicubic'];

// An image [3, H, W] in [-1, 1] at width x height, resized as `how` says when its size differs.
function resized(image: Tensor, name: string, height: number, width: number, how: ImageResize): Float32Array {
  const [, h, w] = image.shape;
  if (h === height && w === width) return Float32Array.from(image.toTypedArray() as ArrayLike<number>);
  if (how === 'bicubic') return new Tensor(native().resizeBicubic(Tensor.handle(image, name), height, width)).toTypedArray() as Float32Array;
  // ComfyUI's lanczos(): its IMAGE (x + 1) / 2 to bytes as numpy does it in float32 (255 * v,
  // clipped, truncated), Pillow's resize, bytes back / 255; then the wrapper's * 2 - 1.
  const f32 = Math.fround;
  const bytes = Uint8Array.from(image.toTypedArray() as ArrayLike<number>,
    (x) => Math.trunc(Math.min(255, Math.max(0, f32(255 * f32(f32(x + 1) / 2))))));
  return Float32Array.from(resizeLanczos(bytes, 3, h, w, height, width), (b) => f32(f32(f32(b / 255) * 2) - 1));
}

// The wrapper's tiled encode without tile sizes: tiles of half the frame every quarter, here
// floored to multiples of 8; a side under 32 pixels is one tile.
function halfFrameTiles(width: number, height: number): VaeTileOptions {
  const side = (n: number) => {
    const tile = Math.floor(n / 16) * 8, stride = Math.floor(tile / 16) * 8;
    return tile >= 16 ? [tile, stride] : [n + 8, n];  // one tile: larger than the side
  };
  const [[tileX, tileStrideX], [tileY, tileStrideY]] = [side(width), side(height)];
  return { tiled: true, tileX, tileY, tileStrideX, tileStrideY };
}

function checkStrength(name: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value > 10)
    throw invalidOption(`Expected a number in 0..10 for ${name} but received ${describeValue(value)}`);
  return value;
}

async function imageTensor(image: Tensor | ImageInput, name: string): Promise<Tensor> {
  const t = image instanceof Tensor ? image : await loadImage(image);
  const s = t.shape;
  if (s.length !== 3 || s[0] !== 3)
    throw invalidOption(`Expected an image [3, H, W] in [-1, 1] for ${name} but received a tensor of shape [${s.join(', ')}]`);
  return t;
}

/**
 * WanVideoImageToVideoEncode: the I2V / FLF2V conditioning. The images are resized to
 * width x height where their size differs (`resize`: Lanczos as the wrapper by default), put at the first
 * (and last) of numFrames frames with mid-gray (zero) frames between, VAE-encoded, and stacked
 * under a 4-channel mask that is 1 on the given frames: y = [mask 4, latent 16] x [T, H/8, W/8].
 */
export function imageToVideoEncode(o: ImageToVideoEncodeOptions): Promise<ImageEmbeds> {
  const caller = new Error();
  return withCallerStack((async () => {
    if (typeof o !== 'object' || o === null) throw invalidOption(`Expected an object for options but received ${describeValue(o)}`);
    checkOptionNames(o, I2V_OPTIONS);
    if (o.vae === undefined || typeof (o.vae as Vae).encode !== 'function')
      throw invalidOption(`Expected a Vae for vae but received ${describeValue(o.vae)}`);
    if (o.startImage === undefined && o.endImage === undefined)
      throw invalidOption('Expected an image for startImage (or endImage) but received neither');
    const { width, height, numFrames } = checkSize(o);
    const noiseAug = checkStrength('noiseAugStrength', o.noiseAugStrength, 0);
    const startStrength = checkStrength('startLatentStrength', o.startLatentStrength, 1);
    const endStrength = checkStrength('endLatentStrength', o.endLatentStrength, 1);
    const augment = checkStrength('augmentEmptyFrames', o.augmentEmptyFrames, 0);
    const hasStart = o.startImage !== undefined, hasEnd = o.endImage !== undefined;
    if (hasEnd && numFrames < 5) throw invalidOption(`Expected numFrames >= 5 with an endImage but received ${numFrames}`);
    const flf2v = o.flf2v ?? true;
    if (typeof flf2v !== 'boolean') throw invalidOption(`Expected a boolean for flf2v but received ${describeValue(o.flf2v)}`);
    // The wrapper's extra-latent path: only with both images (an end image alone is always the last frame).
    const extraEndLatent = hasStart && hasEnd && !flf2v;
    const seed = seedOf(o.seed);
    const resize = o.resize ?? 'lanczos';
    if (!IMAGE_RESIZES.includes(resize))
      throw invalidOption(`Expected one of ${IMAGE_RESIZES.join(', ')} for resize but received ${describeValue(o.resize)}`);

    // The conditioning video [3, F, H, W]: the resized image(s), zeros (mid-gray) between. With
    // extraEndLatent the end image is a video of its own, encoded after (the wrapper encodes
    // start, gray and end frames with a causal cache cleared before the last: the same numbers).
    const plane3 = height * width;
    const video = new Float32Array(3 * numFrames * plane3);
    const endVideo = extraEndLatent ? new Float32Array(3 * plane3) : undefined;
    if (o.emptyFramePadImage !== undefined) {
      // Every frame first; the given images then replace theirs (noise augmentation never reaches the pad).
      const pad = resized(await imageTensor(o.emptyFramePadImage, 'emptyFramePadImage'), 'emptyFramePadImage', height, width, resize);
      for (let c = 0; c < 3; ++c)
        for (let f = 0; f < numFrames; ++f) video.set(pad.subarray(c * plane3, (c + 1) * plane3), (c * numFrames + f) * plane3);
    }
    const images: [Tensor, 'startImage' | 'endImage'][] = [];
    if (hasStart) images.push([await imageTensor(o.startImage!, 'startImage'), 'startImage']);
    if (hasEnd) images.push([await imageTensor(o.endImage!, 'endImage'), 'endImage']);
    const generator = noiseAug > 0 ? new (native().NoiseGenerator)(seed) : undefined;
    for (const [image, name] of images) {
      const pixels = resized(image, name, height, width, resize);
      if (generator) {
        // The wrapper's add_noise_to_reference_video: noise everywhere but on pure black (-1).
        const noise = generator.randn([3, height, width]).toTypedArray() as Float32Array;
        for (let i = 0; i < pixels.length; ++i) if (pixels[i] !== -1) pixels[i] += noise[i] * noiseAug;
      }
      if (name === 'endImage' && endVideo) { endVideo.set(pixels); continue; }
      const frame = name === 'startImage' ? 0 : numFrames - 1;
      for (let c = 0; c < 3; ++c) video.set(pixels.subarray(c * plane3, (c + 1) * plane3), (c * numFrames + frame) * plane3);
    }

    const encodeOptions = { signal: o.signal, onProgress: o.onProgress, forceOffload: endVideo ? false : o.forceOffload,
      ...(o.tiledVae ? halfFrameTiles(width, height) : {}) };
    const latent = (await o.vae.encode(Tensor.fromTypedArray(video, [3, numFrames, height, width]), encodeOptions)).toTypedArray() as Float32Array;
    const endLatent = endVideo
      ? (await o.vae.encode(Tensor.fromTypedArray(endVideo, [3, 1, height, width]), { ...encodeOptions, forceOffload: o.forceOffload }))
        .toTypedArray() as Float32Array
      : undefined;
    const [, videoFrames, latH, latW] = latentShape(width, height, numFrames);
    const frames = videoFrames + (extraEndLatent ? 1 : 0);
    const plane = latH * latW;

    // y = [mask, latent]. Mask channel j of latent frame t covers pixel frame 4t - 3 + j (the
    // first latent frame holds frame 0 four times): 1 where an image was given. The extra end
    // latent frame is all given.
    const y = new Float32Array(20 * frames * plane);
    const given = (pixelFrame: number) => (hasStart && pixelFrame <= 0) || (hasEnd && !extraEndLatent && pixelFrame === numFrames - 1);
    for (let j = 0; j < 4; ++j) {
      for (let t = 0; t < videoFrames; ++t)
        if (given(4 * t - 3 + j)) y.fill(1, (j * frames + t) * plane, (j * frames + t + 1) * plane);
      if (extraEndLatent) y.fill(1, (j * frames + videoFrames) * plane, (j * frames + videoFrames + 1) * plane);
    }
    for (let c = 0; c < LATENT_CHANNELS; ++c) {
      y.set(latent.subarray(c * videoFrames * plane, (c + 1) * videoFrames * plane), (4 + c) * frames * plane);
      if (endLatent) y.set(endLatent.subarray(c * plane, (c + 1) * plane), ((4 + c) * frames + videoFrames) * plane);
    }
    for (let c = 0; c < LATENT_CHANNELS; ++c) {
      const channel = (4 + c) * frames * plane;
      if (startStrength !== 1) for (let i = 0; i < plane; ++i) y[channel + i] *= startStrength;
      // The last latent frame whether or not it holds an end image (the wrapper's
      // y[:, -1:] *= end_latent_strength): without one it is the encoded blank frames.
      if (endStrength !== 1)
        for (let i = 0; i < plane; ++i) y[channel + (frames - 1) * plane + i] *= endStrength;
    }

    // augment_empty_frames, after the strengths: y0 + (y - y0)(1 + k) on the frames whose mask
    // channel 0 is below 0.5 (the wrapper's test: an end image's latent frame, marked 0001,
    // counts as empty too).
    if (augment > 0) {
      for (let t = 1; t < frames; ++t) {
        if (y[t * plane] >= 0.5) continue;  // the mask is one value per frame here
        for (let c = 0; c < LATENT_CHANNELS; ++c) {
          const channel = (4 + c) * frames * plane;
          for (let i = 0; i < plane; ++i) y[channel + t * plane + i] = y[channel + i] + (y[channel + t * plane + i] - y[channel + i]) * (1 + augment);
        }
      }
    }

    const targetShape: [number, number, number, number] = [LATENT_CHANNELS, frames, latH, latW];
    return {
      targetShape, seqLen: (frames * plane) / PATCH_AREA, numFrames, width, height,
      y: Tensor.fromTypedArray(y, [20, frames, latH, latW]),
      clipContext: o.clipEmbeds?.clipEmbeds,
      negativeClipContext: o.clipEmbeds?.negativeClipEmbeds,
      ...(extraEndLatent ? { extraEndLatent } : {}),
    };
  })(), caller);
}
