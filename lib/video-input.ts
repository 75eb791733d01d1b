// Videos into tensors, as VideoHelperSuite's Load Video node (VHS_LoadVideo) loads them: the
// frames decoded (here by ffmpeg, 8-bit RGB, as VHS's OpenCV reader gives them), resampled to a
// forced frame rate by VHS's own rule, the first frames skipped, every nth kept, capped; then
// sized to a multiple of the format's step by a centre crop and Pillow's LANCZOS, and cut to the
// format's frame count (4n + 1 for Wan). [3, T, H, W] float32 in [-1, 1], what Vae.encode takes.
import { execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { abortedError } from './abort';
import { checkOptionNames, describeValue, finiteIn, integerIn, invalidOption, optionNames, WanError, withCallerStack } from './errors';
import { centreCrop } from './image-resize';
import { resizeLanczos } from './lanczos';
import { Tensor } from './tensor';
import { findFfmpeg } from './video';

/** VHS's load formats: the size step (dim[0]) and the frame count rule div*n + mod (frames). */
export const LOAD_VIDEO_FORMATS = {
  None: { step: 1 },
  AnimateDiff: { step: 8 },
  Mochi: { step: 16, frames: [6, 1] },
  LTXV: { step: 32, frames: [8, 1] },
  Hunyuan: { step: 16, frames: [4, 1] },
  Cosmos: { step: 16, frames: [8, 1] },
  Wan: { step: 8, frames: [4, 1] },
} as const satisfies Record<string, { step: number; frames?: readonly [number, number] }>;
export type LoadVideoFormat = keyof typeof LOAD_VIDEO_FORMATS;

/** VHS_LoadVideo's options, its names and defaults (but for `format`, 'Wan' here). */
export interface LoadVideoOptions {
  forceRate?: number;        // 0 (the file's rate), 0..60: frames resampled to this rate first, by repeating or dropping frames
  customWidth?: number;      // 0 (the file's width; with customHeight alone, the aspect kept), 0..8192
  customHeight?: number;     // 0, 0..8192
  frameLoadCap?: number;     // 0 (all): at most this many frames
  skipFirstFrames?: number;  // 0: frames (at the forced rate) left out at the start
  selectEveryNth?: number;   // 1: of the frames after the skipped ones, the first of every n
  format?: LoadVideoFormat;  // 'Wan': sizes a multiple of 8, 4n + 1 frames (VHS's default is 'AnimateDiff': a multiple of 8, any count)
  signal?: AbortSignal;
}

const LOAD_VIDEO_OPTIONS = optionNames<LoadVideoOptions>()({
  forceRate: true, customWidth: true, customHeight: true, frameLoadCap: true, skipFirstFrames: true, selectEveryNth: true,
  format: true, signal: true,
});

export interface LoadedVideo {
  /** [3, T, H, W] float32 in [-1, 1]. */
  frames: Tensor;
  /** The frames' rate: the forced rate (or the file's) divided by selectEveryNth. */
  frameRate: number;
  source: { width: number; height: number; frameRate: number };
}

// VHS's target_size: one side given keeps the aspect; both rounded half up to a multiple of step.
function targetSize(width: number, height: number, customWidth: number, customHeight: number, step: number): [number, number] {
  let w = width, h = height;
  if (customWidth === 0 && customHeight !== 0) { w = width * (customHeight / height); h = customHeight; }
  else if (customWidth !== 0 && customHeight === 0) { h = height * (customWidth / width); w = customWidth; }
  else if (customWidth !== 0) { w = customWidth; h = customHeight; }
  return [Math.trunc(w / step + 0.5) * step, Math.trunc(h / step + 0.5) * step];
}

// ComfyUI's common_upscale(..., 'lanczos', 'center') on 8-bit frames: the centre crop to the new
// aspect, then Pillow's LANCZOS. Interleaved RGB bytes in, planar [3, H, W] bytes out.
function cropAndResize(rgb: Buffer, height: number, width: number, outHeight: number, outWidth: number): Uint8Array {
  const { x, y } = centreCrop(width, height, outWidth, outHeight);
  const h = height - 2 * y, w = width - 2 * x;
  const planar = new Uint8Array(3 * h * w);
  for (let c = 0; c < 3; c++)
    for (let r = 0; r < h; r++)
      for (let q = 0; q < w; q++) planar[(c * h + r) * w + q] = rgb[((r + y) * width + (q + x)) * 3 + c];
  return h === outHeight && w === outWidth ? planar : resizeLanczos(planar, 3, h, w, outHeight, outWidth);
}

// ffprobe beside the ffmpeg that is used, else on PATH.
function findFfprobe(ffmpeg: string): string {
  const beside = path.join(path.dirname(ffmpeg), 'ffprobe');
  if (fs.existsSync(beside)) return beside;
  const found = (process.env.PATH ?? '').split(path.delimiter).filter(Boolean).map((d) => path.join(d, 'ffprobe')).find((f) => fs.existsSync(f));
  if (!found) throw new WanError('WAN_NATIVE_LOAD', `ffprobe is needed to read videos, but it is neither beside ${ffmpeg} nor on PATH (apt install ffmpeg)`);
  return found;
}

function probe(ffprobe: string, file: string): Promise<{ width: number; height: number; frameRate: number }> {
  return new Promise((resolve, reject) => {
    execFile(ffprobe, ['-v', 'error', '-select_streams', 'v:0', '-show_entries', 'stream=width,height,r_frame_rate', '-of', 'json', file],
      { timeout: 60_000 }, (err, stdout, stderr) => {
        const stream = (() => { try { return JSON.parse(stdout).streams?.[0]; } catch { return undefined; } })();
        const [num, den] = String(stream?.r_frame_rate ?? '').split('/').map(Number);
        if (err || !stream || !(stream.width > 0) || !(stream.height > 0) || !(num > 0) || !(den > 0)) {
          reject(invalidOption(`Expected a video file but ${file} has no video stream ffprobe can read` +
            `${stderr.trim() ? `: ${stderr.trim().split('\n').slice(-1)[0]}` : ''}`));
          return;
        }
        resolve({ width: stream.width, height: stream.height, frameRate: num / den });
      });
  });
}

/**
 * Loads a video file's frames as VideoHelperSuite's Load Video does (see LoadVideoOptions):
 * [3, T, H, W] float32 in [-1, 1]. Needs ffmpeg and ffprobe.
 */
export function loadVideo(file: string, options: LoadVideoOptions = {}): Promise<LoadedVideo> {
  const caller = new Error();
  return withCallerStack(load(file, options), caller);
}

async function load(file: string, o: LoadVideoOptions): Promise<LoadedVideo> {
  if (typeof file !== 'string' || file === '') throw invalidOption(`Expected a video file path but received ${describeValue(file)}`);
  if (typeof o !== 'object' || o === null) throw invalidOption(`Expected an object for options but received ${describeValue(o)}`);
  checkOptionNames(o, LOAD_VIDEO_OPTIONS);
  const forceRate = finiteIn('forceRate', o.forceRate, 0, 0, 60);
  const customWidth = integerIn('customWidth', o.customWidth, 0, 0, 8192);
  const customHeight = integerIn('customHeight', o.customHeight, 0, 0, 8192);
  const cap = integerIn('frameLoadCap', o.frameLoadCap, 0, 0, Number.MAX_SAFE_INTEGER);
  const skip = integerIn('skipFirstFrames', o.skipFirstFrames, 0, 0, Number.MAX_SAFE_INTEGER);
  const nth = integerIn('selectEveryNth', o.selectEveryNth, 1, 1, Number.MAX_SAFE_INTEGER);
  const formatName = o.format ?? 'Wan';
  if (!Object.hasOwn(LOAD_VIDEO_FORMATS, formatName))
    throw invalidOption(`Expected one of ${Object.keys(LOAD_VIDEO_FORMATS).join(', ')} for format but received ${describeValue(o.format)}`);
  const format: { step: number; frames?: readonly [number, number] } = LOAD_VIDEO_FORMATS[formatName];
  if (!fs.existsSync(file)) throw new WanError('WAN_IO', `video file not found: ${file}`);

  const ffmpeg = await findFfmpeg();
  const source = await probe(findFfprobe(ffmpeg), file);
  const { width, height } = source;
  const [outWidth, outHeight] = targetSize(width, height, customWidth, customHeight, format.step);
  if (outWidth < 1 || outHeight < 1)
    throw invalidOption(`Expected a size of at least 1 x 1 but ${file} at customWidth ${customWidth}, customHeight ${customHeight} comes to ${outWidth} x ${outHeight}`);

  const proc = spawn(ffmpeg, ['-v', 'error', '-nostdin', '-i', file, '-an', '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-'],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-4000); });
  const exited = new Promise<number | null>((resolve) => proc.on('close', (code) => resolve(code)));
  const spawnFailed = new Promise<never>((_, reject) => proc.on('error', (err) => reject(new WanError('WAN_IO', `ffmpeg could not be started: ${err.message}`))));
  spawnFailed.catch(() => undefined);

  // The source frames, one Buffer each, in order.
  const frameBytes = width * height * 3;
  async function* sourceFrames(): AsyncGenerator<Buffer> {
    let pending: Buffer[] = [], length = 0;
    for await (const chunk of proc.stdout as AsyncIterable<Buffer>) {
      pending.push(chunk);
      length += chunk.length;
      while (length >= frameBytes) {
        const all = Buffer.concat(pending);
        yield all.subarray(0, frameBytes);
        pending = [all.subarray(frameBytes)];
        length -= frameBytes;
      }
    }
  }

  // VHS's frame loop: the time of the frame in hand grows by 1/fps per source frame read; a
  // frame is emitted (again, where the forced rate is higher) while that time reaches the next
  // 1/forceRate; skip, nth and cap count the emitted frames.
  const planes: Uint8Array[] = [];
  const base = 1 / source.frameRate, target = forceRate === 0 ? base : 1 / forceRate;
  const frames = sourceFrames();
  try {
    let current = (await frames.next()).value as Buffer | undefined;
    let time = target, emitted = 0, evaluated = -1;
    while (current !== undefined) {
      if (o.signal?.aborted) throw abortedError();
      if (time < target) {
        const next = await frames.next();
        if (next.done) break;
        current = next.value;
        time += base;
      }
      if (time < target) continue;
      time -= target;
      emitted += 1;
      if (emitted <= skip) continue;
      evaluated += 1;
      if (evaluated % nth !== 0) continue;
      planes.push(cropAndResize(current, height, width, outHeight, outWidth));
      if (cap > 0 && planes.length >= cap) break;
    }
  } finally {
    await frames.return(undefined);
    proc.kill('SIGKILL');
  }
  const code = await Promise.race([exited, spawnFailed]);
  if (planes.length === 0)
    throw invalidOption(`Expected frames in ${file} but none were loaded` + (code ? ` (ffmpeg exited with ${code}: ${stderr.trim().split('\n').slice(-1)[0]})` : '') +
      (skip > 0 ? ` (skipFirstFrames ${skip})` : ''));

  // The format's frame count: div*n + mod, cut down to it.
  let count = planes.length;
  if (format.frames) {
    const [div, mod] = format.frames;
    if (count % div !== mod) count = Math.trunc((count - mod) / div) * div + mod;
    if (count < 1) throw invalidOption(`Expected at least ${mod} frame(s) for format ${formatName} (${div}n + ${mod}) but ${planes.length} were loaded from ${file}`);
  }
  const plane = outHeight * outWidth;
  const data = new Float32Array(3 * count * plane);
  const f32 = Math.fround;
  const unit = Float32Array.from({ length: 256 }, (_, b) => f32(f32(f32(b / 255) * 2) - 1));  // bytes / 255, then * 2 - 1, as the wrapper encodes
  for (let t = 0; t < count; t++)
    for (let c = 0; c < 3; c++) {
      const from = planes[t].subarray(c * plane, (c + 1) * plane), at = (c * count + t) * plane;
      for (let i = 0; i < plane; i++) data[at + i] = unit[from[i]];
    }
  return {
    frames: Tensor.fromTypedArray(data, [3, count, outHeight, outWidth]),
    frameRate: (forceRate === 0 ? source.frameRate : forceRate) / nth,
    source,
  };
}
