// Images into tensors: PNG, JPEG and WebP files or bytes, decoded with sharp into [3, H, W]
// float32 in [-1, 1], the layout the CLIP encoder and the VAE take.
import * as fs from 'node:fs';

import { describeValue, invalidOption, WanError, withCallerStack } from './errors';
import { Tensor } from './tensor';

/** A path to a PNG, JPEG or WebP file, or the bytes of one. */
export type ImageInput = string | Buffer | Uint8Array;

export const IMAGE_FORMATS = ['png', 'jpeg', 'webp'] as const;

// The part of sharp's API used here. sharp is loaded on first use, so that importing the
// package does not load libvips, and typed locally so that compiling does not need it.
interface SharpPipeline {
  metadata(): Promise<{ format?: string; width?: number; height?: number }>;
  rotate(): SharpPipeline;  // with no angle: apply the EXIF orientation
  removeAlpha(): SharpPipeline;
  toColourspace(space: string): SharpPipeline;
  raw(options?: { depth?: string }): SharpPipeline;
  toBuffer(options: { resolveWithObject: true }):
    Promise<{ data: Buffer; info: { width: number; height: number; channels: number } }>;
}
type SharpFactory = (input: string | Buffer, options?: { failOn?: string }) => SharpPipeline;

let sharpModule: SharpFactory | undefined;

function sharp(): SharpFactory {
  if (!sharpModule) {
    try {
      sharpModule = require('sharp') as SharpFactory;
    } catch (err) {
      throw new WanError('WAN_NATIVE_LOAD', `decoding images needs the 'sharp' package, which could not be loaded: ` +
        `${(err as Error).message.split('\n')[0]} (npm install sharp)`);
    }
  }
  return sharpModule;
}

// byte -> [-1, 1] in float32 steps, as the official pipeline does it
// (TF.to_tensor(img).sub_(0.5).div_(0.5): v / 255, then - 0.5, then / 0.5, each rounded to f32).
const BYTE_TO_UNIT = Float32Array.from({ length: 256 }, (_, v) => Math.fround(Math.fround(Math.fround(v / 255) - 0.5) / 0.5));

/**
 * Decodes a PNG, JPEG or WebP image (a file path or its bytes) into a [3, H, W] f32 tensor in
 * [-1, 1], RGB, with the EXIF orientation applied and any alpha channel dropped (as ComfyUI's
 * LoadImage: exif_transpose, convert('RGB')); greyscale images become three equal channels.
 */
export function loadImage(input: ImageInput): Promise<Tensor> {
  const caller = new Error();
  return withCallerStack((async () => {
    let source: string | Buffer;
    if (typeof input === 'string') {
      if (!fs.existsSync(input)) throw new WanError('WAN_IO', `image file not found: ${input}`);
      source = input;
    } else if (input instanceof Uint8Array) {
      source = Buffer.isBuffer(input) ? input : Buffer.from(input.buffer, input.byteOffset, input.byteLength);
    } else {
      throw invalidOption(`Expected a file path, a Buffer or a Uint8Array for image but received ${describeValue(input)}`);
    }
    const what = typeof input === 'string' ? input : 'the image bytes';
    let decoded: { data: Buffer; info: { width: number; height: number; channels: number } };
    try {
      const pipeline = sharp()(source, { failOn: 'error' });
      const { format } = await pipeline.metadata();
      if (!format || !(IMAGE_FORMATS as readonly string[]).includes(format))
        throw invalidOption(`Expected one of ${IMAGE_FORMATS.join(', ')} images but ${what} is ${format ?? 'of an unknown format'}`);
      decoded = await pipeline.rotate().removeAlpha().toColourspace('srgb').raw({ depth: 'uchar' })
        .toBuffer({ resolveWithObject: true });
    } catch (err) {
      if (err instanceof WanError) throw err;
      throw invalidOption(`Expected a PNG, JPEG or WebP image but ${what} could not be decoded: ${(err as Error).message}`);
    }
    const { data, info } = decoded;
    const { width, height, channels } = info;
    if (channels !== 3 && channels !== 1)
      throw new WanError('WAN_INTERNAL', `decoding ${what} gave ${channels} channels where 3 were expected`);
    // Interleaved HWC bytes -> planar CHW floats.
    const plane = width * height;
    const out = new Float32Array(3 * plane);
    for (let i = 0; i < plane; i++) {
      for (let c = 0; c < 3; c++) out[c * plane + i] = BYTE_TO_UNIT[data[i * channels + (channels === 3 ? c : 0)]];
    }
    return Tensor.fromTypedArray(out, [3, height, width]);
  })(), caller);
}
