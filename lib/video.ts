// videoCombine: frames to a GIF, WebP, MP4, WebM or PNG file, with the options of
// VideoHelperSuite's "Video Combine" node (shared/spec/anchors.md b.15).
//
// Frames are what Vae.decode returns, [3, F, H, W] in [-1, 1], or what Vae.decodeFrames yields,
// chunks [3, f, H, W], so that a long video is encoded as it is decoded and never sits whole in
// memory. Every format but PNG goes through ffmpeg, fed raw RGB24 frames on its stdin. Files
// are written under a temporary name and linked to their final name only when complete; a
// failure or an abort removes what was written.
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';

import { abortedError } from './abort';
import { checkOptionNames, describeValue, invalidOption, optionNames, WanError, withCallerStack } from './errors';
import type { LongCallOptions, Progress } from './progress';
import { Tensor } from './tensor';

export const VIDEO_FORMATS = [
  'image/gif', 'image/webp', 'image/png', 'video/h264-mp4', 'video/h265-mp4', 'video/webm',
] as const;
export type VideoFormat = typeof VIDEO_FORMATS[number];

export interface VideoCombineOptions extends LongCallOptions {
  /** Frames per second (VHS frame_rate): default 8, at least 1. */
  frameRate?: number;
  /**
   * How many times the animation repeats after it has played once (VHS loop_count), 0..100,
   * default 0. GIF and WebP: 0 loops forever, N plays N + 1 times. Videos: 0 plays once, N
   * appends N copies (ffmpeg's loop filter, as VHS does). Not accepted for image/png.
   */
  loopCount?: number;
  /**
   * Start of the file names (VHS filename_prefix), default 'AnimateDiff' as in VHS. May contain
   * subfolders ('wan/run1/clip'); absolute paths and '..' are refused, so that output stays
   * inside the output folder. Files are named `<prefix>_<counter:05>.<ext>`. As in ComfyUI,
   * %year%, %month%, %day%, %hour%, %minute% and %second% become the local date and time
   * ('%year%-%month%-%day%/wan'), and %width% and %height% 0 (VHS gives no size).
   */
  filenamePrefix?: string;
  /** Default 'image/gif', as in VHS. */
  format?: VideoFormat;
  /** Appends the frames in reverse without repeating the ends: F frames become 2F - 2. */
  pingpong?: boolean;
  /** true (default): write under outputDir; false: under tempDir (VHS: ComfyUI's temp folder). */
  saveOutput?: boolean;
  /** Default `<cwd>/output`. */
  outputDir?: string;
  /** Where saveOutput: false writes; default `<os.tmpdir()>/wan-native`. */
  tempDir?: string;
  /** Constant rate factor of the video formats: h264 19 (0..100, as VHS; x264 takes above 51 as 51), h265 22 (0..51), webm 20 (0..63). */
  crf?: number;
  /** Pixel format of the video formats: h264 yuv420p | yuv420p10le, h265 yuv420p10le | yuv420p, webm yuv420p | yuva420p. */
  pixFmt?: string;
  /** WebP only: lossless (default true, as in VHS) or lossy at quality 80. */
  lossless?: boolean;
  /**
   * Embed `metadata` in the output (default true), as VHS does: PNG text chunks, an ffmetadata
   * input to ffmpeg for MP4 and WebM (with `-movflags use_metadata_tags` for MP4). GIF and WebP
   * cannot carry it through ffmpeg, so it goes into `<prefix>_<counter>.png`, the first frame,
   * written beside the animation (VHS writes that PNG for every format).
   */
  saveMetadata?: boolean;
  /**
   * What to embed: each entry becomes one tag or text chunk named by its key, whose value is
   * the JSON of the value (VHS: `prompt` holds the prompt graph, `workflow` the workflow). Keys
   * are 1 to 79 characters of [A-Za-z0-9_.-].
   */
  metadata?: Record<string, unknown>;
  /**
   * The counter of the file names, default 1 + the largest in use (outputCounter()). One output
   * in several formats takes one counter for all (VHS names its files of one save alike); a name
   * that is taken moves the output to the next free counter, as ever.
   */
  counter?: number;
}

export interface VideoCombineResult {
  /** Absolute paths written, the main output last (a metadata PNG comes first, as in VHS). */
  files: string[];
  /** Frames in the output, after pingpong and before loop repeats. */
  frames: number;
  /** Size as encoded: MP4 and WebM round odd sizes up to even by repeating the last row or column. */
  width: number;
  height: number;
}

const DEFAULT_PREFIX = 'AnimateDiff';
const MAX_LOOP_COUNT = 100;
// ffmpeg's loop filter holds at most this many frames (its `size` option).
const MAX_LOOP_FRAMES = 32767;

interface VideoCodec {
  crf: { default: number; max: number };
  pixFmts: readonly string[];  // the first is the default
}

// Per-format settings, after VHS's video_formats/*.json. VHS offers crf 0..100 for each; x264
// takes anything above 51 as 51, where x265 and libvpx fail, so their ranges end at theirs.
const VIDEO_CODECS: Partial<Record<VideoFormat, VideoCodec>> = {
  'video/h264-mp4': { crf: { default: 19, max: 100 }, pixFmts: ['yuv420p', 'yuv420p10le'] },
  'video/h265-mp4': { crf: { default: 22, max: 51 }, pixFmts: ['yuv420p10le', 'yuv420p'] },
  'video/webm': { crf: { default: 20, max: 63 }, pixFmts: ['yuv420p', 'yuva420p'] },
};

interface Resolved {
  format: VideoFormat;
  frameRate: number;
  loopCount: number;
  pingpong: boolean;
  folder: string;       // absolute, with the prefix's subfolders
  base: string;         // the prefix's last segment
  crf: number;
  pixFmt: string;
  lossless: boolean;
  metadata: Record<string, string> | undefined;  // JSON-encoded values; undefined: saveMetadata false
  counter: number | undefined;
  signal: AbortSignal | undefined;
  onProgress: ((p: Progress) => void) | undefined;
}

// ---------------------------------------------------------------------------------------------
// Options

function checkBoolean(value: unknown, name: string, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw invalidOption(`Expected a boolean for ${name} but received ${describeValue(value)}`);
  return value;
}

function checkDir(value: unknown, name: string, fallback: string): string {
  if (value === undefined) return fallback;
  if (typeof value !== 'string' || value === '' || value.includes('\0'))
    throw invalidOption(`Expected a folder path for ${name} but received ${describeValue(value)}`);
  return path.resolve(value);
}

const pad2 = (n: number) => String(n).padStart(2, '0');

// ComfyUI's get_save_image_path (which VHS calls) replaces these in the prefix: the date and time
// of day, local, and the image size, which VHS does not give it (so 0).
function prefixVariables(prefix: string, now: Date): string {
  const vars: Record<string, string> = {
    width: '0', height: '0', year: String(now.getFullYear()), month: pad2(now.getMonth() + 1), day: pad2(now.getDate()),
    hour: pad2(now.getHours()), minute: pad2(now.getMinutes()), second: pad2(now.getSeconds()),
  };
  return prefix.replace(/%(width|height|year|month|day|hour|minute|second)%/g, (_, name: string) => vars[name]);
}

// The prefix's folders and file name. Like ComfyUI's get_save_image_path, a prefix that would
// leave the output folder is refused rather than silently rewritten.
function splitPrefix(value: unknown, root: string): { folder: string; base: string } {
  if (value === undefined) value = DEFAULT_PREFIX;
  if (typeof value !== 'string' || value === '' || value.includes('\0'))
    throw invalidOption(`Expected a non-empty string for filenamePrefix but received ${describeValue(value)}`);
  const prefix = prefixVariables(value, new Date());
  const segments = prefix.split('/');
  if (path.isAbsolute(prefix) || segments.includes('..'))
    throw invalidOption(`Expected a filenamePrefix inside the output folder (a relative path without '..') but received ${describeValue(value)}`);
  const base = segments.pop()!;
  if (base === '' || base === '.')
    throw invalidOption(`Expected a filenamePrefix that ends in a file name but received ${describeValue(value)}`);
  const folder = path.resolve(root, ...segments);
  if (folder !== root && !folder.startsWith(root + path.sep))  // unreachable without '..', kept as a guard
    throw invalidOption(`Expected a filenamePrefix inside the output folder but received ${describeValue(value)}`);
  return { folder, base };
}

const METADATA_KEY = /^[A-Za-z0-9_.-]{1,79}$/;

// JSON with every non-ASCII character escaped (as Python's json.dumps does by default), so the
// text fits a PNG tEXt chunk, which is Latin-1, and reads back with JSON.parse.
function asciiJson(value: unknown): string | undefined {
  let json: string | undefined;
  try {
    json = JSON.stringify(value);
  } catch {
    return undefined;
  }
  return json?.replace(/[\u007f-\uffff]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));
}

function checkMetadata(value: unknown): Record<string, string> {
  if (value === undefined) return {};
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw invalidOption(`Expected an object for metadata but received ${describeValue(value)}`);
  const out: Record<string, string> = {};
  for (const [key, v] of Object.entries(value)) {
    if (!METADATA_KEY.test(key))
      throw invalidOption(`Expected metadata keys of 1 to 79 characters A-Z, a-z, 0-9, '_', '.' or '-' but received ${describeValue(key)}`);
    const json = asciiJson(v);
    if (json === undefined)
      throw invalidOption(`Expected a JSON-serialisable value for metadata.${key} but received ${describeValue(v)}`);
    out[key] = json;
  }
  return out;
}

const COMBINE_OPTIONS = optionNames<VideoCombineOptions>()({
  frameRate: true, loopCount: true, filenamePrefix: true, format: true, pingpong: true, saveOutput: true, outputDir: true,
  tempDir: true, crf: true, pixFmt: true, lossless: true, saveMetadata: true, metadata: true, counter: true, signal: true, onProgress: true,
});

function resolveOptions(o: VideoCombineOptions): Resolved {
  if (typeof o !== 'object' || o === null)
    throw invalidOption(`Expected an options object for videoCombine but received ${describeValue(o)}`);
  checkOptionNames(o, COMBINE_OPTIONS);

  const format = o.format ?? 'image/gif';
  if (!(VIDEO_FORMATS as readonly string[]).includes(format))
    throw invalidOption(`Expected one of ${VIDEO_FORMATS.join(', ')} for format but received ${describeValue(o.format)}`);

  const frameRate = o.frameRate ?? 8;
  if (typeof frameRate !== 'number' || !Number.isFinite(frameRate) || frameRate < 1)
    throw invalidOption(`Expected a number >= 1 for frameRate but received ${describeValue(o.frameRate)}`);

  const loopCount = o.loopCount ?? 0;
  if (!Number.isSafeInteger(loopCount) || loopCount < 0 || loopCount > MAX_LOOP_COUNT)
    throw invalidOption(`Expected an integer between 0 and ${MAX_LOOP_COUNT} for loopCount but received ${describeValue(o.loopCount)}`);
  if (format === 'image/png' && loopCount !== 0)
    throw invalidOption(`Expected loopCount 0 for format image/png (a PNG sequence does not loop) but received ${describeValue(o.loopCount)}`);

  const codec = VIDEO_CODECS[format];
  const videoFormats = Object.keys(VIDEO_CODECS).join(', ');
  let crf = 0, pixFmt = '';
  if (codec) {
    crf = o.crf ?? codec.crf.default;
    if (!Number.isSafeInteger(crf) || crf < 0 || crf > codec.crf.max)
      throw invalidOption(`Expected an integer between 0 and ${codec.crf.max} for crf (${format}) but received ${describeValue(o.crf)}`);
    pixFmt = o.pixFmt ?? codec.pixFmts[0];
    if (!codec.pixFmts.includes(pixFmt))
      throw invalidOption(`Expected one of ${codec.pixFmts.join(', ')} for pixFmt (${format}) but received ${describeValue(o.pixFmt)}`);
  } else {
    if (o.crf !== undefined)
      throw invalidOption(`crf applies to ${videoFormats} only, not to format ${format}`);
    if (o.pixFmt !== undefined)
      throw invalidOption(`pixFmt applies to ${videoFormats} only, not to format ${format}`);
  }
  if (o.lossless !== undefined && format !== 'image/webp')
    throw invalidOption(`lossless applies to image/webp only, not to format ${format}`);
  const lossless = checkBoolean(o.lossless, 'lossless', true);

  const pingpong = checkBoolean(o.pingpong, 'pingpong', false);
  const saveOutput = checkBoolean(o.saveOutput, 'saveOutput', true);
  const saveMetadata = checkBoolean(o.saveMetadata, 'saveMetadata', true);
  const metadata = checkMetadata(o.metadata);
  const root = saveOutput
    ? checkDir(o.outputDir, 'outputDir', path.join(process.cwd(), 'output'))
    : checkDir(o.tempDir, 'tempDir', path.join(os.tmpdir(), 'wan-native'));
  const { folder, base } = splitPrefix(o.filenamePrefix, root);

  if (o.counter !== undefined && !(Number.isSafeInteger(o.counter) && o.counter >= 1))
    throw invalidOption(`Expected a positive integer for counter but received ${describeValue(o.counter)}`);
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal))
    throw invalidOption(`Expected an AbortSignal for signal but received ${describeValue(o.signal)}`);
  if (o.onProgress !== undefined && typeof o.onProgress !== 'function')
    throw invalidOption(`Expected a function for onProgress but received ${describeValue(o.onProgress)}`);

  return {
    format, frameRate, loopCount, pingpong, folder, base, crf, pixFmt, lossless,
    metadata: saveMetadata ? metadata : undefined, counter: o.counter, signal: o.signal, onProgress: o.onProgress,
  };
}

// ---------------------------------------------------------------------------------------------
// ffmpeg: found once, checked once

// Debian 12 ships 5.1, on which every argument below is tested. 4.4 (Ubuntu 22.04) is the
// oldest accepted; older releases are untested.
const MIN_FFMPEG: [number, number] = [4, 4];
const checkedFfmpeg = new Map<string, Promise<void>>();

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/** The ffmpeg videoCombine runs: $WAN_FFMPEG, else `ffmpeg` on PATH, checked with `-version` once per path. */
export async function findFfmpeg(): Promise<string> {
  const forced = process.env.WAN_FFMPEG;
  let bin: string;
  if (forced) {
    bin = path.resolve(forced);
    if (!isExecutable(bin))
      throw new WanError('WAN_NATIVE_LOAD', `ffmpeg is needed to write videos, but WAN_FFMPEG=${forced} is not an executable file ` +
        `(install it with apt install ffmpeg, or point WAN_FFMPEG at an ffmpeg binary)`);
  } else {
    const dirs = (process.env.PATH ?? '').split(path.delimiter).filter(Boolean);
    const found = dirs.map((d) => path.join(d, 'ffmpeg')).find(isExecutable);
    if (!found)
      throw new WanError('WAN_NATIVE_LOAD', `ffmpeg is needed to write videos, but it was not found: WAN_FFMPEG is not set ` +
        `and no ffmpeg is on PATH (${dirs.join(path.delimiter)}). Install it with apt install ffmpeg, or set WAN_FFMPEG to its path`);
    bin = found;
  }
  let check = checkedFfmpeg.get(bin);
  if (!check) {
    check = checkVersion(bin);
    checkedFfmpeg.set(bin, check);
    check.catch(() => checkedFfmpeg.delete(bin));  // a fixed installation is looked at again
  }
  await check;
  return bin;
}

function checkVersion(bin: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(bin, ['-version'], { timeout: 20_000 }, (err, stdout, stderr) => {
      const out = `${stdout}${stderr}`.trim();
      const first = out.split('\n')[0] ?? '';
      if (err) {
        reject(new WanError('WAN_NATIVE_LOAD', `ffmpeg is needed to write videos, but ${bin} -version failed: ` +
          `${(out || err.message).slice(-2000)} (install it with apt install ffmpeg, or set WAN_FFMPEG)`));
        return;
      }
      if (!/^ffmpeg version /.test(first)) {
        reject(new WanError('WAN_NATIVE_LOAD', `ffmpeg is needed to write videos, but ${bin} -version does not print ` +
          `"ffmpeg version ...": ${JSON.stringify(first.slice(0, 200))}`));
        return;
      }
      // "ffmpeg version 5.1.9-0+deb12u1", "ffmpeg version n6.0"; git builds ("N-112233-g...",
      // "2024-01-01-git-...") carry no release number and are accepted.
      const m = /^ffmpeg version n?(\d+)\.(\d+)/.exec(first);
      if (m) {
        const [major, minor] = [Number(m[1]), Number(m[2])];
        if (major < MIN_FFMPEG[0] || (major === MIN_FFMPEG[0] && minor < MIN_FFMPEG[1])) {
          reject(new WanError('WAN_NATIVE_LOAD', `ffmpeg ${MIN_FFMPEG.join('.')} or newer is needed to write videos, but ${bin} is ` +
            `${major}.${minor} ("${first.slice(0, 120)}"); install a newer one (apt install ffmpeg) or set WAN_FFMPEG`));
          return;
        }
      }
      resolve();
    });
  });
}

// The ffmpeg arguments for one format, after VHS's video_formats/*.json. Input: raw RGB24 on
// stdin; `metaFile`: an ffmetadata file to take the global tags from.
function ffmpegArgs(r: Resolved, width: number, height: number, loopFrames: number, metaFile: string | undefined,
                    out: string): string[] {
  const raw = ['-f', 'rawvideo', '-pix_fmt', 'rgb24', '-s', `${width}x${height}`, '-r', String(r.frameRate)];
  const args = ['-hide_banner', '-nostats', '-loglevel', 'error'];
  switch (r.format) {
    case 'image/gif':
      // One palette for the whole animation (palettegen sees every frame, so ffmpeg holds them);
      // no colour reserved for transparency, as the frames are opaque.
      args.push(...raw, '-i', 'pipe:0',
        '-filter_complex', '[0:v]split[a][b];[a]palettegen=reserve_transparent=0[p];[b][p]paletteuse=dither=sierra2_4a',
        // The NETSCAPE loop field counts repeats after the first play; 0 is forever.
        '-loop', String(r.loopCount), '-f', 'gif');
      break;
    case 'image/webp':
      args.push(...raw, '-i', 'pipe:0', '-c:v', 'libwebp_anim', '-pix_fmt', 'bgra',
        ...(r.lossless ? ['-lossless', '1'] : ['-lossless', '0', '-quality', '80']),
        // The ANIM loop field counts plays, 0 forever; loopCount counts repeats as for GIF.
        '-loop', String(r.loopCount === 0 ? 0 : r.loopCount + 1), '-f', 'webp');
      break;
    default: {
      // As VHS: the RGB input is declared full-range with BT.709 primaries and transfer (a white
      // lie about sRGB's transfer, so that players do not shift the colours), and converted to
      // BT.709 YUV by the scale filter.
      args.push('-color_range', 'pc', '-colorspace', 'rgb', '-color_primaries', 'bt709', '-color_trc', 'bt709',
        ...raw, '-i', 'pipe:0');
      if (metaFile) args.push('-f', 'ffmetadata', '-i', metaFile, '-map_metadata', '1');
      args.push('-map', '0:v');
      const filters = [];
      // The loop filter replays the first `size` frames; a stream's length is not known when
      // ffmpeg starts, so it gets the filter's maximum and ffmpeg loops what it received.
      if (r.loopCount > 0) filters.push(`loop=loop=${r.loopCount}:size=${loopFrames}:start=0`);
      filters.push('scale=out_color_matrix=bt709');
      if (r.format === 'video/h264-mp4') args.push('-c:v', 'libx264');
      else if (r.format === 'video/h265-mp4') args.push('-c:v', 'libx265', '-vtag', 'hvc1', '-preset', 'medium', '-x265-params', 'log-level=quiet');
      else args.push('-c:v', 'libvpx-vp9', '-b:v', '0');  // -b:v 0 with -crf: constant quality
      args.push('-pix_fmt', r.pixFmt, '-crf', String(r.crf), '-vf', filters.join(','),
        '-color_range', 'tv', '-colorspace', 'bt709', '-color_primaries', 'bt709', '-color_trc', 'bt709');
      // An ISO time rather than 'now': with use_metadata_tags, MP4 would store the word itself.
      if (r.metadata) args.push('-metadata', `creation_time=${new Date().toISOString()}`);
      if (r.format === 'video/webm') {
        args.push('-f', 'webm');
      } else {
        // use_metadata_tags: MP4 keeps keys other than its few standard ones (prompt, workflow).
        args.push(...(r.metadata ? ['-movflags', 'use_metadata_tags'] : []), '-f', 'mp4');
      }
    }
  }
  args.push('-y', out);
  return args;
}

// ffmetadata text: '=', ';', '#', '\' and newlines are escaped with a backslash.
function ffmetadata(metadata: Record<string, string>): string {
  const esc = (s: string) => s.replace(/[=;#\\\n]/g, (c) => '\\' + c);
  return ';FFMETADATA1\n' + Object.entries(metadata).map(([k, v]) => `${esc(k)}=${esc(v)}\n`).join('');
}

function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(abortedError());
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortedError());
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (v) => { signal.removeEventListener('abort', onAbort); resolve(v); },
      (e) => { signal.removeEventListener('abort', onAbort); reject(e); });
  });
}

interface Exit { code: number | null; signal: NodeJS.Signals | null; error?: Error }

// One ffmpeg run: frames in on stdin (with backpressure), the last lines of stderr kept for
// the error message.
class FfmpegEncoder {
  private readonly proc: ChildProcess;
  private readonly exit: Promise<Exit>;
  private exited = false;
  private stderr = '';

  constructor(private readonly bin: string, args: string[], private readonly what: string) {
    this.proc = spawn(bin, args, { stdio: ['pipe', 'ignore', 'pipe'] });
    this.proc.stderr!.setEncoding('utf8');
    this.proc.stderr!.on('data', (s: string) => { this.stderr = (this.stderr + s).slice(-8000); });
    // EPIPE when ffmpeg quits early: what went wrong is in its exit status and stderr.
    this.proc.stdin!.on('error', () => {});
    this.exit = new Promise<Exit>((resolve) => {
      this.proc.once('error', (error) => resolve({ code: null, signal: null, error }));
      this.proc.once('close', (code, signal) => resolve({ code, signal }));
    });
    void this.exit.then(() => { this.exited = true; });
  }

  async write(frame: Buffer, signal: AbortSignal | undefined): Promise<void> {
    if (this.exited) throw this.failure(await this.exit);
    if (!this.proc.stdin!.write(frame)) {
      await abortable(Promise.race([once(this.proc.stdin!, 'drain').then(() => undefined, () => undefined), this.exit]), signal);
      if (this.exited) throw this.failure(await this.exit);
    }
  }

  async finish(signal: AbortSignal | undefined): Promise<void> {
    this.proc.stdin!.end();
    const exit = await abortable(this.exit, signal);
    if (exit.error || exit.code !== 0) throw this.failure(exit);
  }

  async kill(): Promise<void> {
    if (!this.exited) this.proc.kill('SIGKILL');
    await this.exit;
  }

  private failure(exit: Exit): WanError {
    const how = exit.error ? `could not be started (${exit.error.message})`
      : exit.signal ? `was killed by ${exit.signal}` : `exited with code ${exit.code}`;
    const message = this.stderr.trim() || '(ffmpeg printed nothing)';
    return new WanError('WAN_IO', `ffmpeg (${this.bin}) ${how} while writing ${this.what}: ${message}`);
  }
}

// ---------------------------------------------------------------------------------------------
// PNG: encoded by sharp, with tEXt chunks spliced in after IHDR

interface SharpPipeline {
  png(options: { compressionLevel: number }): SharpPipeline;
  toBuffer(): Promise<Buffer>;
}
type SharpFactory = (input: Buffer, options: { raw: { width: number; height: number; channels: 3 } }) => SharpPipeline;
let sharpModule: SharpFactory | undefined;

function sharp(): SharpFactory {
  if (!sharpModule) {
    try {
      sharpModule = require('sharp') as SharpFactory;
    } catch (err) {
      throw new WanError('WAN_NATIVE_LOAD', `writing PNG needs the 'sharp' package, which could not be loaded: ` +
        `${(err as Error).message.split('\n')[0]} (npm install sharp)`);
    }
  }
  return sharpModule;
}

function pngChunk(type: string, data: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, 'latin1');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(zlib.crc32(data, zlib.crc32(head.subarray(4))) >>> 0, 0);
  return Buffer.concat([head, data, crc]);
}

// `text`: keyword -> ASCII text. PNG: 8-byte signature, then IHDR (8 + 13 + 4 bytes).
async function encodePng(rgb: Buffer, width: number, height: number, text: Record<string, string> | undefined): Promise<Buffer> {
  const png = await sharp()(rgb, { raw: { width, height, channels: 3 } }).png({ compressionLevel: 4 }).toBuffer();
  if (!text || Object.keys(text).length === 0) return png;
  const chunks = Object.entries(text).map(([k, v]) => pngChunk('tEXt', Buffer.from(`${k}\0${v}`, 'latin1')));
  return Buffer.concat([png.subarray(0, 33), ...chunks, png.subarray(33)]);
}

// VHS writes CreationTime as the local time, "YYYY-MM-DD HH:MM:SS".
function localTime(): string {
  const d = new Date();
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

// ---------------------------------------------------------------------------------------------
// Frames: [3, F, H, W] in [-1, 1] -> interleaved RGB24 bytes, one frame at a time

const FLOAT_DTYPES = ['f32', 'f16', 'bf16', 'f64'];

function checkFrames(t: Tensor, what: string): void {
  Tensor.handle(t, what);
  if (t.shape.length !== 4 || t.shape[0] !== 3 || t.shape.slice(1).some((n) => n < 1))
    throw new WanError('WAN_INVALID_TENSOR', `videoCombine: expected ${what} of shape [3, F, H, W] (F, H, W >= 1) ` +
      `but received [${t.shape.join(', ')}]`);
  if (!FLOAT_DTYPES.includes(t.dtype))
    throw new WanError('WAN_INVALID_TENSOR', `videoCombine: expected a floating-point ${what} (${FLOAT_DTYPES.join(', ')}) ` +
      `in [-1, 1] but received ${t.dtype}`);
}

// Frame f of planar [3, F, H, W] data -> outH x outW RGB24; rows and columns beyond H, W repeat
// the last one (VHS pads to even sizes by replication). byte = round((x + 1) / 2 * 255), clamped.
function toRgb(data: ArrayLike<number>, frames: number, f: number, height: number, width: number,
               outH: number, outW: number): Buffer {
  const out = Buffer.allocUnsafe(outH * outW * 3);
  const plane = height * width;
  for (let c = 0; c < 3; c++) {
    const base = (c * frames + f) * plane;
    for (let y = 0; y < outH; y++) {
      const row = base + Math.min(y, height - 1) * width;
      let o = y * outW * 3 + c;
      for (let x = 0; x < outW; x++, o += 3) {
        const v = Math.round((data[row + (x < width ? x : width - 1)] + 1) / 2 * 255);
        out[o] = v > 255 ? 255 : v >= 0 ? v : 0;  // NaN -> 0
      }
    }
  }
  return out;
}

interface Geometry { height: number; width: number; outH: number; outW: number }

function geometry(r: Resolved, height: number, width: number): Geometry {
  // yuv420 subsamples chroma 2x2, so the video formats need even sizes.
  const even = VIDEO_CODECS[r.format] !== undefined;
  return { height, width, outH: even ? height + (height % 2) : height, outW: even ? width + (width % 2) : width };
}

// The frames as RGB24 in output order, pingpong included. A tensor is read once and its frames
// converted one by one. A stream is converted chunk by chunk; each chunk is disposed once
// converted, so memory holds one chunk. Pingpong replays a stream backwards: its frames are kept,
// as RGB24 (a quarter of the f32 size), in a spool file in `workDir`, not in memory.
async function* framesOf(input: Tensor | AsyncIterable<Tensor>, r: Resolved, workDir: () => string,
                         onGeometry: (g: Geometry) => void): AsyncGenerator<Buffer> {
  if (input instanceof Tensor) {
    checkFrames(input, 'frames');
    const [, F, H, W] = input.shape;
    const g = geometry(r, H, W);
    onGeometry(g);
    const data = input.toTypedArray() as Float32Array | Float64Array;
    const order = pingpongOrder(F, r.pingpong);
    for (const f of order) yield toRgb(data, F, f, H, W, g.outH, g.outW);
    return;
  }
  let g: Geometry | undefined;
  let spool: fs.promises.FileHandle | undefined;
  let count = 0;
  const iterator = input[Symbol.asyncIterator]();
  let pending = false;
  try {
    for (;;) {
      pending = true;
      const next = await abortable(iterator.next(), r.signal);
      pending = false;
      if (next.done) break;
      const chunk = next.value;
      checkFrames(chunk, 'each chunk of frames');
      const [, f, H, W] = chunk.shape;
      if (!g) {
        g = geometry(r, H, W);
        onGeometry(g);
        if (r.pingpong) spool = await fs.promises.open(path.join(workDir(), 'pingpong.rgb'), 'w+');
      } else if (H !== g.height || W !== g.width) {
        throw new WanError('WAN_INVALID_TENSOR', `videoCombine: expected every chunk of frames to be ${g.height}x${g.width} ` +
          `(H x W, from the first chunk) but received [${chunk.shape.join(', ')}]`);
      }
      const data = chunk.toTypedArray() as Float32Array | Float64Array;
      chunk.dispose();
      for (let i = 0; i < f; i++) {
        const rgb = toRgb(data, f, i, H, W, g.outH, g.outW);
        if (spool) await spool.write(rgb, 0, rgb.length, count * rgb.length);
        count++;
        yield rgb;
      }
    }
    if (!g) throw new WanError('WAN_INVALID_TENSOR', 'videoCombine: the frames stream ended without yielding a frame');
    if (spool) {
      const size = g.outH * g.outW * 3;
      for (const i of pingpongOrder(count, true).slice(count)) {
        const rgb = Buffer.allocUnsafe(size);
        await spool.read(rgb, 0, size, i * size);
        yield rgb;
      }
    }
  } finally {
    await spool?.close();
    // End the producer (Vae.decodeFrames releases its decoder). A next() still pending when the
    // signal fired cannot be waited for: return() queues behind it.
    if (pending) void iterator.return?.()?.catch(() => {});
    else await iterator.return?.().catch(() => {});
  }
}

// Frame indices: 0..F-1, then with pingpong F-2 down to 1 (VHS to_pingpong: the ends are not repeated).
function pingpongOrder(frames: number, pingpong: boolean): number[] {
  const order = Array.from({ length: frames }, (_, i) => i);
  if (pingpong) for (let i = frames - 2; i > 0; i--) order.push(i);
  return order;
}

// ---------------------------------------------------------------------------------------------
// Names: `<base>_<counter:05>...`, counter = 1 + the largest in use, never overwriting

const pad5 = (n: number) => String(n).padStart(5, '0');

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

// A temporary file left by a process that is gone (killed before it could clean up): its writer
// no longer runs here and it has not changed for an hour (a write in progress, even a slow
// stream, touches its file far more often; another machine's process on a shared folder would
// look gone, and the hour keeps its file safe).
const TEMP_NAME = /\.tmp-(\d+)-[a-z0-9]+$/;
const STALE_MS = 60 * 60 * 1000;
function isStaleTemp(folder: string, name: string): boolean {
  const m = TEMP_NAME.exec(name);
  if (!m) return false;
  const pid = Number(m[1]);
  if (pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return false;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') return false;
  }
  const stat = fs.statSync(path.join(folder, name), { throwIfNoEntry: false });
  return stat !== undefined && Date.now() - stat.mtimeMs > STALE_MS;
}

// 1 + the largest counter of `<base>_<digits>` followed by the end or a non-digit, among the
// names in `folder` (files of any format, sequences `<base>_00001_0001.png` and the temporary
// files of writes in progress, which so reserve their counter). Stale temporary files are
// removed on the way, freeing theirs.
function nextCounter(folder: string, base: string): number {
  const re = new RegExp(`^${escapeRegExp(base)}_(\\d+)(?:\\D|$)`);
  let max = 0;
  for (const name of fs.readdirSync(folder)) {
    const m = re.exec(name);
    if (!m) continue;
    if (isStaleTemp(folder, name)) {
      fs.rmSync(path.join(folder, name), { force: true });
      continue;
    }
    max = Math.max(max, Number(m[1]));
  }
  return max + 1;
}

// Links each temporary file to its final name at `counter`, or at the next free counter if any
// name is taken: all names of one output share a counter, and an existing file is never
// replaced (link fails with EEXIST where rename would overwrite). Then removes the temporary names.
function commit(folder: string, base: string, counter: number,
                files: { tmp: string; name: (counter: number) => string }[]): string[] {
  for (let attempt = 0; attempt < 1000; attempt++) {
    const linked: string[] = [];
    let taken = false;
    for (const f of files) {
      const final = path.join(folder, f.name(counter));
      try {
        linkNoReplace(f.tmp, final);
        linked.push(final);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
          for (const l of linked) fs.rmSync(l, { force: true });
          throw new WanError('WAN_IO', `could not create ${final}: ${(err as Error).message}`);
        }
        taken = true;
        break;
      }
    }
    if (!taken) {
      for (const f of files) fs.rmSync(f.tmp, { force: true });
      return linked;
    }
    for (const l of linked) fs.rmSync(l, { force: true });
    counter = Math.max(counter + 1, nextCounter(folder, base));
  }
  throw new WanError('WAN_IO', `could not find a free counter for ${path.join(folder, base)}_NNNNN after 1000 attempts`);
}

function linkNoReplace(from: string, to: string): void {
  try {
    fs.linkSync(from, to);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // File systems without hard links (some FUSE and FAT mounts): check, then rename; a race
    // between the two is possible there, and only there.
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'ENOSYS') throw err;
    if (fs.existsSync(to)) throw Object.assign(new Error(`${to} exists`), { code: 'EEXIST' });
    fs.renameSync(from, to);
  }
}

function tempName(folder: string, name: string): string {
  return path.join(folder, `${name}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 10)}`);
}

// ---------------------------------------------------------------------------------------------

/**
 * Writes frames as an animation, a video or PNG files, as VideoHelperSuite's Video Combine.
 *
 * `frames`: a [3, F, H, W] tensor in [-1, 1] (Vae.decode), or an async iterable of [3, f, H, W]
 * chunks (Vae.decodeFrames), written as they come; chunks of a stream are disposed once written,
 * the tensor is not. Bytes are round((x + 1) / 2 * 255), clamped to 0..255.
 *
 * Output: `<prefix>_<counter:05>.<ext>`, the counter one more than the largest of the prefix's
 * files in the folder. image/png writes one frame as `<prefix>_00001.png` and several as
 * `<prefix>_00001_0001.png`, `<prefix>_00001_0002.png`, ... Files appear complete or not at all.
 * `onProgress` reports each frame written, with totalSteps 0 while a stream's length is unknown.
 */
export function videoCombine(frames: Tensor | AsyncIterable<Tensor>, o: VideoCombineOptions = {}): Promise<VideoCombineResult> {
  const caller = new Error();
  return withCallerStack(combine(frames, o), caller);
}

function makeFolder(folder: string): void {
  try {
    fs.mkdirSync(folder, { recursive: true });
  } catch (err) {
    throw new WanError('WAN_IO', `could not create the output folder ${folder}: ${(err as Error).message}`);
  }
}

/**
 * What videoCombine with these options would fail on once the frames have come, checked before
 * any are made: the options, ffmpeg for the video formats, and that the output folder (with the
 * prefix's subfolders, created here) takes a new file. For a caller about to spend minutes or
 * hours generating the frames.
 */
export async function prepareOutput(o: VideoCombineOptions = {}): Promise<void> {
  const r = resolveOptions(o);
  if (r.format !== 'image/png') await findFfmpeg();
  let created: string | undefined;
  try {
    created = fs.mkdirSync(r.folder, { recursive: true });
  } catch (err) {
    throw new WanError('WAN_IO', `could not create the output folder ${r.folder}: ${(err as Error).message}`);
  }
  const probe = tempName(r.folder, `${r.base}.probe`);
  try {
    fs.closeSync(fs.openSync(probe, 'wx'));
  } catch (err) {
    throw new WanError('WAN_IO', `could not write in the output folder ${r.folder}: ${(err as Error).message}`);
  } finally {
    fs.rmSync(probe, { force: true });
    // The folders made here go again (videoCombine makes them when it writes): a run that stops
    // before then leaves nothing behind. Only empty ones: rmdir refuses the others.
    for (let dir = r.folder; created !== undefined; dir = path.dirname(dir)) {
      try { fs.rmdirSync(dir); } catch { break; }
      if (dir === created) break;
    }
  }
}

/** The counter videoCombine would name the next output of these options by: 1 + the largest of
 * the prefix's files in its folder (1 where the folder does not exist yet). */
export function outputCounter(o: VideoCombineOptions = {}): number {
  const r = resolveOptions(o);
  return fs.statSync(r.folder, { throwIfNoEntry: false })?.isDirectory() ? nextCounter(r.folder, r.base) : 1;
}

async function combine(input: Tensor | AsyncIterable<Tensor>, o: VideoCombineOptions): Promise<VideoCombineResult> {
  const r = resolveOptions(o);
  if (!(input instanceof Tensor) && typeof (input as AsyncIterable<Tensor> | null)?.[Symbol.asyncIterator] !== 'function')
    throw invalidOption(`Expected a Tensor [3, F, H, W] or an async iterable of Tensors for frames but received ${describeValue(input)}`);
  if (r.signal?.aborted) throw abortedError();
  const bin = r.format === 'image/png' ? '' : await findFfmpeg();
  makeFolder(r.folder);

  const counter = r.counter ?? nextCounter(r.folder, r.base);
  const ext = r.format === 'image/gif' ? 'gif' : r.format === 'image/webp' ? 'webp'
    : r.format === 'image/png' ? 'png' : r.format === 'video/webm' ? 'webm' : 'mp4';
  const start = performance.now();
  const temps: { tmp: string; name: (c: number) => string }[] = [];
  let workDir: string | undefined;
  const work = () => (workDir ??= fs.mkdtempSync(path.join(os.tmpdir(), 'wan-video-')));
  let encoder: FfmpegEncoder | undefined;
  let geom: Geometry | undefined;
  let written = 0;
  // Frames to write, when known (a tensor); 0 for a stream, whose length shows only at its end.
  const total = input instanceof Tensor && input.shape.length === 4
    ? input.shape[1] + (r.pingpong ? Math.max(input.shape[1] - 2, 0) : 0) : 0;
  const report = () => {
    if (!r.onProgress) return;
    const elapsedMs = performance.now() - start;
    const fraction = total > 0 ? written / total : 0;
    r.onProgress({ stage: 'videoCombine', step: written, totalSteps: total, fraction, elapsedMs,
      etaMs: fraction > 0 ? (elapsedMs / fraction) * (1 - fraction) : 0 });
  };

  try {
    let first: Buffer | undefined;
    const text = r.metadata && { ...r.metadata, CreationTime: r.metadata.CreationTime ?? localTime() };
    for await (const rgb of framesOf(input, r, work, (g) => { geom = g; })) {
      if (r.signal?.aborted) throw abortedError();
      const g = geom!;
      if (r.format === 'image/png') {
        // Every PNG of a sequence carries the metadata, so any frame can be dropped on ComfyUI.
        const index = written + 1;
        const png = await abortable(encodePng(rgb, g.outW, g.outH, text), r.signal);
        const tmp = tempName(r.folder, `${r.base}_${pad5(counter)}_${String(index).padStart(4, '0')}.png`);
        temps.push({ tmp, name: (c) => `${r.base}_${pad5(c)}_${String(index).padStart(4, '0')}.png` });
        await fs.promises.writeFile(tmp, png, { flag: 'wx' });
      } else {
        if (!encoder) {
          first = rgb;
          if (r.loopCount > 0 && VIDEO_CODECS[r.format] && total > MAX_LOOP_FRAMES)
            throw invalidOption(`loopCount needs ${MAX_LOOP_FRAMES} frames or fewer (ffmpeg's loop filter) but the video has ${total}`);
          let metaFile: string | undefined;
          if (r.metadata && VIDEO_CODECS[r.format] && Object.keys(r.metadata).length > 0) {
            metaFile = path.join(work(), 'metadata.txt');
            fs.writeFileSync(metaFile, ffmetadata(r.metadata));
          }
          const tmp = tempName(r.folder, `${r.base}_${pad5(counter)}.${ext}`);
          temps.push({ tmp, name: (c) => `${r.base}_${pad5(c)}.${ext}` });
          encoder = new FfmpegEncoder(bin, ffmpegArgs(r, g.outW, g.outH, total || MAX_LOOP_FRAMES, metaFile, tmp),
            `${path.join(r.folder, r.base)}_${pad5(counter)}.${ext} (${r.format})`);
        }
        if (r.loopCount > 0 && VIDEO_CODECS[r.format] && written >= MAX_LOOP_FRAMES)
          throw invalidOption(`loopCount needs ${MAX_LOOP_FRAMES} frames or fewer (ffmpeg's loop filter) but the stream has more`);
        await encoder.write(rgb, r.signal);
      }
      written++;
      report();
    }
    if (r.signal?.aborted) throw abortedError();

    if (r.format === 'image/png') {
      // A single frame is `<prefix>_00001.png`, not a one-file sequence.
      if (temps.length === 1) temps[0].name = (c) => `${r.base}_${pad5(c)}.png`;
    } else {
      await encoder!.finish(r.signal);
      // GIF and WebP cannot carry the metadata: the first frame, as a PNG, does (VHS).
      if (text && r.metadata && Object.keys(r.metadata).length > 0 && !VIDEO_CODECS[r.format]) {
        const png = await abortable(encodePng(first!, geom!.outW, geom!.outH, text), r.signal);
        const tmp = tempName(r.folder, `${r.base}_${pad5(counter)}.png`);
        temps.unshift({ tmp, name: (c) => `${r.base}_${pad5(c)}.png` });
        await fs.promises.writeFile(tmp, png, { flag: 'wx' });
      }
    }
    if (r.signal?.aborted) throw abortedError();
    const files = commit(r.folder, r.base, counter, temps);
    return { files, frames: written, width: geom!.outW, height: geom!.outH };
  } catch (err) {
    await encoder?.kill();
    for (const t of temps) fs.rmSync(t.tmp, { force: true });
    // A file system's refusal (EACCES, ENOSPC, ...) of a temporary or spooled file, named by the
    // output it was for.
    if (!(err instanceof WanError) && typeof (err as NodeJS.ErrnoException).syscall === 'string')
      throw new WanError('WAN_IO', `could not write ${path.join(r.folder, r.base)}_${pad5(counter)}.${ext}: ${(err as Error).message}`);
    throw err;
  } finally {
    if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
  }
}
