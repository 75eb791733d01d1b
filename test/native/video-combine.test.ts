// videoCombine (VideoHelperSuite's Video Combine) on tiny synthetic videos: every format read
// back with ffprobe, ffmpeg or sharp, names and counters, metadata, streaming, pingpong, errors.
import t from 'tap';
import type * as tap from 'tap';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';

import { outputCounter, prepareOutput, Tensor, videoCombine, VIDEO_FORMATS, WanError } from '../../lib/index';
import type { Progress, VideoCombineOptions, VideoFormat } from '../../lib/index';
import { tempDir } from '../helpers';
import { have } from '../media';

const sharp = require('sharp');

const root = tempDir('wan-video-');
t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
let dirs = 0;
const newDir = () => path.join(root, `d${++dirs}`);

const noFfmpeg = have('ffmpeg') && have('ffprobe') ? false : 'ffmpeg and ffprobe are not installed (apt install ffmpeg)';

// A smooth gradient that moves with the frame, given as exact bytes so that PNG and lossless
// WebP must give them back unchanged: byte b is stored as b / 255 * 2 - 1.
const F = 8, H = 48, W = 64;  // W >= 64: Debian's libx265 3.5 crashes on 10-bit frames 48 wide
const byteAt = (c: number, f: number, y: number, x: number) =>
  c === 0 ? x * 3 + f * 4 : c === 1 ? y * 4 + f * 2 : 128 + f * 8 - x;

function video(frames = F, height = H, width = W): { planar: Float32Array; rgb: Buffer[] } {
  const planar = new Float32Array(3 * frames * height * width);
  const rgb = Array.from({ length: frames }, () => Buffer.alloc(height * width * 3));
  for (let c = 0; c < 3; c++)
    for (let f = 0; f < frames; f++)
      for (let y = 0; y < height; y++)
        for (let x = 0; x < width; x++) {
          const b = byteAt(c, f, y, x) & 255;
          planar[((c * frames + f) * height + y) * width + x] = b / 255 * 2 - 1;
          rgb[f][(y * width + x) * 3 + c] = b;
        }
  return { planar, rgb };
}

const clip = video();
const frames = () => Tensor.fromTypedArray(clip.planar, [3, F, H, W]);

// The same video as Vae.decodeFrames gives it: chunks [3, n, H, W] of 1, then 4, ... frames.
async function* chunks(planar: Float32Array, total: number, sizes: number[], delayMs = 0): AsyncGenerator<Tensor> {
  const plane = H * W;
  let start = 0;
  for (const n of sizes) {
    if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
    const out = new Float32Array(3 * n * plane);
    for (let c = 0; c < 3; c++)
      out.set(planar.subarray((c * total + start) * plane, (c * total + start + n) * plane), c * n * plane);
    start += n;
    yield Tensor.fromTypedArray(out, [3, n, H, W]);
  }
}

interface Probe {
  streams: { codec_name: string; width: number; height: number; pix_fmt: string; r_frame_rate: string; nb_read_frames: string }[];
  format: { tags?: Record<string, string> };
}
function ffprobe(file: string): Probe {
  return JSON.parse(execFileSync('ffprobe', ['-v', 'error', '-count_frames', '-show_entries',
    'stream=codec_name,width,height,pix_fmt,r_frame_rate,nb_read_frames:format_tags', '-of', 'json', file]).toString());
}
// Tags regardless of case (Matroska stores them upper-case).
function tag(p: Probe, key: string): string | undefined {
  const entry = Object.entries(p.format.tags ?? {}).find(([k]) => k.toLowerCase() === key.toLowerCase());
  return entry?.[1];
}
// Decoded RGB24 frames of a video, by ffmpeg.
function decode(file: string, width = W, height = H): Buffer[] {
  const raw = execFileSync('ffmpeg', ['-v', 'error', '-i', file, '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-'], { maxBuffer: 1 << 28 });
  const size = width * height * 3;
  return Array.from({ length: raw.length / size }, (_, i) => raw.subarray(i * size, (i + 1) * size));
}
// Decoded RGB frames of an image (animated or not), by sharp.
async function sharpFrames(file: string): Promise<{ meta: any; frames: Buffer[] }> {
  const meta = await sharp(file, { animated: true }).metadata();
  const { data, info } = await sharp(file, { animated: true }).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  const pageHeight = meta.pageHeight ?? info.height;
  const size = info.width * pageHeight * 3;
  return { meta, frames: Array.from({ length: data.length / size }, (_, i) => data.subarray(i * size, (i + 1) * size)) };
}
// tEXt chunks of a PNG, read with a parser of our own.
function pngText(file: string): Record<string, string> {
  const bytes = fs.readFileSync(file);
  const out: Record<string, string> = {};
  for (let at = 8; at < bytes.length;) {
    const len = bytes.readUInt32BE(at);
    const type = bytes.toString('latin1', at + 4, at + 8);
    if (zlib.crc32(bytes.subarray(at + 4, at + 8 + len)) !== bytes.readUInt32BE(at + 8 + len))
      throw new Error(`${file}: bad CRC in the ${type} chunk`);
    if (type === 'tEXt') {
      const data = bytes.subarray(at + 8, at + 8 + len);
      const zero = data.indexOf(0);
      out[data.toString('latin1', 0, zero)] = data.toString('latin1', zero + 1);
    }
    at += 12 + len;
  }
  return out;
}
// Every file under a folder, recursively.
function listFiles(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile()).map((e) => path.join(e.parentPath ?? (e as any).path, e.name));
}
function diff(a: Buffer, b: Buffer): { mean: number; max: number } {
  let sum = 0, max = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    sum += d;
    if (d > max) max = d;
  }
  return { mean: sum / a.length, max };
}
const EXT: Record<VideoFormat, string> = {
  'image/gif': 'gif', 'image/webp': 'webp', 'image/png': 'png', 'video/h264-mp4': 'mp4', 'video/h265-mp4': 'mp4', 'video/webm': 'webm',
};

async function rejectsWith(t: tap.Test, p: Promise<unknown>, code: string, message: string | RegExp) {
  try {
    await p;
    t.fail(`expected a ${code} error`);
  } catch (err) {
    t.ok(err instanceof WanError, 'a WanError');
    t.equal((err as WanError).code, code);
    if (typeof message === 'string') t.equal((err as Error).message, message);
    else t.match((err as Error).message, message);
  }
}

t.test('every format writes a readable file of the right size, frame count and rate', { skip: noFfmpeg }, async (t) => {
  const outputDir = newDir();
  const input = frames();
  const expected: Record<VideoFormat, { codec?: string; pixFmt?: string }> = {
    'image/gif': {}, 'image/webp': {}, 'image/png': {},
    'video/h264-mp4': { codec: 'h264', pixFmt: 'yuv420p' },
    'video/h265-mp4': { codec: 'hevc', pixFmt: 'yuv420p10le' },  // VHS's default for h265
    'video/webm': { codec: 'vp9', pixFmt: 'yuv420p' },
  };
  for (const format of VIDEO_FORMATS) {
    const r = await videoCombine(input, { format, frameRate: 16, filenamePrefix: 'all', outputDir, saveMetadata: false });
    t.same([r.frames, r.width, r.height], [F, W, H], `${format}: result`);
    const main = r.files[r.files.length - 1];
    t.ok(path.isAbsolute(main) && fs.existsSync(main), `${format}: ${main} exists`);
    if (format === 'image/png') {
      t.equal(r.files.length, F, 'png: one file per frame');
      t.match(path.basename(r.files[0]), /^all_\d{5}_0001\.png$/);
      t.match(path.basename(main), /^all_\d{5}_0008\.png$/);
      for (const f of r.files) {
        const m = await sharp(f).metadata();
        t.same([m.format, m.width, m.height, m.channels], ['png', W, H, 3], `${path.basename(f)}: ${W}x${H} RGB`);
      }
    } else if (format === 'image/gif' || format === 'image/webp') {
      t.match(path.basename(main), new RegExp(`^all_\\d{5}\\.${EXT[format]}$`));
      const m = await sharp(main, { animated: true }).metadata();
      t.same([m.format, m.pages, m.width, m.pageHeight, m.loop], [EXT[format], F, W, H, 0], `${format}: ${F} pages of ${W}x${H}, looping forever`);
      const mean = m.delay.reduce((a: number, b: number) => a + b, 0) / m.delay.length;
      t.ok(Math.abs(mean - 1000 / 16) <= 5, `${format}: frame delays ${m.delay} ms average 62.5 (16 fps)`);
    } else {
      t.match(path.basename(main), new RegExp(`^all_\\d{5}\\.${EXT[format]}$`));
      const p = ffprobe(main);
      const s = p.streams[0];
      t.same([s.codec_name, s.pix_fmt, s.width, s.height, s.r_frame_rate, Number(s.nb_read_frames)],
        [expected[format].codec, expected[format].pixFmt, W, H, '16/1', F], `${format}: ffprobe`);
    }
  }
  t.notOk(input.disposed, 'the input tensor is not disposed');
});

t.test('PNG and lossless WebP give the bytes back exactly; videos and GIF within a tolerance', { skip: noFfmpeg }, async (t) => {
  const outputDir = newDir();
  // one frame: `<prefix>_00001.png`
  const one = video(1);
  const r1 = await videoCombine(Tensor.fromTypedArray(one.planar, [3, 1, H, W]), { format: 'image/png', outputDir, filenamePrefix: 'one' });
  t.same(r1.files.map((f) => path.basename(f)), ['one_00001.png']);
  const { data } = await sharp(r1.files[0]).raw().toBuffer({ resolveWithObject: true });
  t.ok(data.equals(one.rgb[0]), 'single PNG: exact');

  const seq = await videoCombine(frames(), { format: 'image/png', outputDir, filenamePrefix: 'seq' });
  for (let f = 0; f < F; f++) {
    const { data: d } = await sharp(seq.files[f]).raw().toBuffer({ resolveWithObject: true });
    t.ok(d.equals(clip.rgb[f]), `PNG sequence frame ${f}: exact`);
  }

  const webp = await videoCombine(frames(), { format: 'image/webp', outputDir, filenamePrefix: 'webp' });
  const w = await sharpFrames(webp.files[webp.files.length - 1]);
  t.equal(w.frames.length, F);
  t.ok(w.frames.every((fr, i) => fr.equals(clip.rgb[i])), 'lossless WebP: exact');

  const lossy = await videoCombine(frames(), { format: 'image/webp', lossless: false, outputDir, filenamePrefix: 'lossy' });
  const l = await sharpFrames(lossy.files[0]);
  const dl = diff(Buffer.concat(l.frames), Buffer.concat(clip.rgb));
  t.ok(l.frames.length === F && dl.mean <= 3, `lossy WebP: ${l.frames.length} frames, mean abs error ${dl.mean.toFixed(2)} <= 3`);

  // The colour handling (full-range RGB in, BT.709 limited-range YUV out) must not shift the
  // levels: a wrong range or matrix moves the mean by 10 or more.
  for (const [format, extra, meanTol, maxTol] of [
    ['video/h264-mp4', {}, 3, 16], ['video/h264-mp4', { pixFmt: 'yuv420p10le' }, 3, 16],
    ['video/h265-mp4', {}, 3, 16], ['video/webm', {}, 3, 16], ['image/gif', {}, 10, 64],
  ] as [VideoFormat, VideoCombineOptions, number, number][]) {
    const r = await videoCombine(frames(), { format, ...extra, outputDir, filenamePrefix: 'tol', saveMetadata: false });
    const got = decode(r.files[r.files.length - 1]);
    t.equal(got.length, F, `${format} ${JSON.stringify(extra)}: ${F} frames`);
    const d = diff(Buffer.concat(got), Buffer.concat(clip.rgb));
    t.ok(d.mean <= meanTol && d.max <= maxTol,
      `${format} ${JSON.stringify(extra)}: mean abs error ${d.mean.toFixed(2)} <= ${meanTol}, max ${d.max} <= ${maxTol}`);
  }
});

t.test('values map to bytes as round((x + 1) / 2 * 255), clamped', async (t) => {
  const values = [-1, 1, 0, -2, 2, NaN, 0.5, -0.999];
  const planar = new Float32Array(3 * values.length);
  values.forEach((v, i) => { planar[i] = v; planar[values.length + i] = v; planar[2 * values.length + i] = v; });
  const r = await videoCombine(Tensor.fromTypedArray(planar, [3, 1, 1, values.length]),
    { format: 'image/png', outputDir: newDir(), saveMetadata: false });
  const { data } = await sharp(r.files[0]).raw().toBuffer({ resolveWithObject: true });
  const want = values.map((v) => (Number.isNaN(v) ? 0 : Math.min(255, Math.max(0, Math.round((Math.fround(v) + 1) / 2 * 255)))));
  t.same(Array.from({ length: values.length }, (_, i) => data[i * 3]), want);
});

t.test('odd sizes are padded to even for the video formats, by repeating the last row and column', { skip: noFfmpeg }, async (t) => {
  const h = 33, w = 35;
  const planar = new Float32Array(3 * 2 * h * w).fill(0.2);
  const r = await videoCombine(Tensor.fromTypedArray(planar, [3, 2, h, w]), { format: 'video/h264-mp4', outputDir: newDir() });
  t.same([r.width, r.height], [36, 34]);
  const s = ffprobe(r.files[0]).streams[0];
  t.same([s.width, s.height, Number(s.nb_read_frames)], [36, 34, 2]);
  const gif = await videoCombine(Tensor.fromTypedArray(planar, [3, 2, h, w]), { format: 'image/gif', outputDir: newDir() });
  t.same([gif.width, gif.height], [w, h], 'GIF keeps the odd size');
});

t.test('loopCount: GIF and WebP loop fields, videos repeated', { skip: noFfmpeg }, async (t) => {
  const outputDir = newDir();
  const gif = await videoCombine(frames(), { format: 'image/gif', loopCount: 2, outputDir });
  const bytes = fs.readFileSync(gif.files[0]);
  const at = bytes.indexOf('NETSCAPE2.0');
  t.ok(at > 0, 'GIF has a NETSCAPE loop extension');
  t.equal(bytes.readUInt16LE(at + 13), 2, 'NETSCAPE loop field: 2 repeats');
  t.equal((await sharp(gif.files[0], { animated: true }).metadata()).loop, 3, 'sharp reads 3 plays');

  const webp = await videoCombine(frames(), { format: 'image/webp', loopCount: 2, outputDir });
  t.equal((await sharp(webp.files[0], { animated: true }).metadata()).loop, 3, 'WebP loop field: 3 plays');
  const forever = await videoCombine(frames(), { format: 'image/webp', outputDir });
  t.equal((await sharp(forever.files[0], { animated: true }).metadata()).loop, 0, 'WebP loopCount 0: forever');

  const mp4 = await videoCombine(frames(), { format: 'video/h264-mp4', loopCount: 2, outputDir });
  t.equal(Number(ffprobe(mp4.files[0]).streams[0].nb_read_frames), 3 * F, 'mp4 loopCount 2: 3 copies');
  const streamed = await videoCombine(chunks(clip.planar, F, [1, 4, 3]), { format: 'video/webm', loopCount: 1, outputDir });
  const got = decode(streamed.files[0]);
  t.equal(got.length, 2 * F, 'streamed webm loopCount 1: 2 copies');
  // Re-encoded, so close to the input rather than equal to the first copy.
  const d = diff(Buffer.concat(got.slice(F)), Buffer.concat(clip.rgb));
  t.ok(d.mean <= 3, `the second copy replays frames 0..7: mean abs error ${d.mean.toFixed(2)}`);
});

t.test('names: the counter follows the largest in use and never overwrites', async (t) => {
  const outputDir = newDir();
  const a = await videoCombine(frames(), { format: 'image/png', filenamePrefix: 'c', outputDir, saveMetadata: false });
  t.equal(path.basename(a.files[0]), 'c_00001_0001.png');
  const b = await videoCombine(Tensor.fromTypedArray(clip.planar.subarray(0, 3 * H * W), [3, 1, H, W]),
    { format: 'image/png', filenamePrefix: 'c', outputDir });
  t.same(b.files.map((f) => path.basename(f)), ['c_00002.png']);
  // Other formats and other prefixes count or not as VHS's matcher would.
  fs.writeFileSync(path.join(outputDir, 'c_00041.webm'), 'not ours');
  fs.writeFileSync(path.join(outputDir, 'c_00099x.txt'), 'not ours');  // digits then a non-digit: counts
  fs.writeFileSync(path.join(outputDir, 'cc_00500.png'), 'another prefix');
  fs.writeFileSync(path.join(outputDir, 'c_x_00700.png'), 'another prefix');
  const c = await videoCombine(Tensor.fromTypedArray(clip.planar.subarray(0, 3 * H * W), [3, 1, H, W]),
    { format: 'image/png', filenamePrefix: 'c', outputDir });
  t.same(c.files.map((f) => path.basename(f)), ['c_00100.png']);
  t.equal(fs.readFileSync(path.join(outputDir, 'c_00041.webm'), 'utf8'), 'not ours', 'existing files untouched');

  // Concurrent writers with one prefix: each gets its own counter, no file is replaced.
  const many = await Promise.all(Array.from({ length: 6 }, () =>
    videoCombine(frames(), { format: 'image/png', filenamePrefix: 'race', outputDir, saveMetadata: false })));
  const counters = many.map((r) => path.basename(r.files[0]).slice(5, 10)).sort();
  t.same(counters, ['00001', '00002', '00003', '00004', '00005', '00006'], 'six writers, six counters');
  t.equal(listFiles(outputDir).filter((f) => path.basename(f).startsWith('race_')).length, 6 * F, 'all frames of all six');
  t.same(listFiles(outputDir).filter((f) => f.includes('.tmp-')), [], 'no temporary files left');
});

t.test('a temporary file its killed writer left behind frees its counter after an hour', async (t) => {
  const outputDir = newDir();
  fs.mkdirSync(outputDir);
  const gone = 4194303;  // above Linux's default pid_max (4194304 at most): no such process
  const old = (name: string) => { const f = path.join(outputDir, name); fs.writeFileSync(f, 'half'); fs.utimesSync(f, new Date(Date.now() - 2 * 3600e3), new Date(Date.now() - 2 * 3600e3)); return f; };
  const stale = old(`k_00007.mp4.tmp-${gone}-abc123`);
  const mine = old(`k_00004.mp4.tmp-${process.pid}-def456`);
  const recent = path.join(outputDir, `k_00003.mp4.tmp-${gone}-0a1b2c`);
  fs.writeFileSync(recent, 'being written');
  const r = await videoCombine(frames(), { format: 'image/png', filenamePrefix: 'k', outputDir, saveMetadata: false });
  t.match(path.basename(r.files[0]), /^k_00005_0001\.png$/, 'the counter after the live and recent ones, not after the stale one');
  t.notOk(fs.existsSync(stale), 'the stale temporary file is removed');
  t.ok(fs.existsSync(mine) && fs.existsSync(recent), 'this process\'s and a recent one are kept');
});

t.test('a prefix may name subfolders, never outside the output folder', async (t) => {
  const outputDir = newDir();
  const r = await videoCombine(frames(), { format: 'image/png', filenamePrefix: 'wan/run 1/clip', outputDir });
  t.equal(path.dirname(r.files[0]), path.join(outputDir, 'wan', 'run 1'));
  t.match(path.basename(r.files[0]), /^clip_00001_0001\.png$/);
  for (const bad of ['../x', '/abs/x', 'a/../../x', 'a/..', '..']) {
    await rejectsWith(t, videoCombine(frames(), { format: 'image/png', filenamePrefix: bad, outputDir }), 'WAN_INVALID_OPTION',
      `Expected a filenamePrefix inside the output folder (a relative path without '..') but received "${bad}" of type string`);
  }
  await rejectsWith(t, videoCombine(frames(), { format: 'image/png', filenamePrefix: 'dir/', outputDir }), 'WAN_INVALID_OPTION',
    'Expected a filenamePrefix that ends in a file name but received "dir/" of type string');
  t.same(listFiles(path.dirname(outputDir)).filter((f) => path.basename(f) === 'x_00001_0001.png'), [], 'nothing escaped');
});

t.test('the prefix\'s date and size variables are replaced, as ComfyUI replaces them', async (t) => {
  const outputDir = newDir();
  const before = new Date();
  const r = await videoCombine(frames(), { format: 'image/png', filenamePrefix: '%year%-%month%-%day%/v_%width%x%height%_%hour%', outputDir });
  const two = (n: number) => String(n).padStart(2, '0');
  const day = `${before.getFullYear()}-${two(before.getMonth() + 1)}-${two(before.getDate())}`;
  t.equal(path.dirname(r.files[0]), path.join(outputDir, day), 'the local date as the folder');
  t.match(path.basename(r.files[0]), new RegExp(`^v_0x0_${two(before.getHours())}_00001_0001\\.png$`), 'the size 0, as VHS gives none');
});

t.test('counter: one for the files of one output in several formats; outputCounter says which is next', { skip: noFfmpeg }, async (t) => {
  const outputDir = newDir();
  t.equal(outputCounter({ outputDir, filenamePrefix: 'm' }), 1, 'no folder yet: 1');
  await videoCombine(frames(), { format: 'image/gif', outputDir, filenamePrefix: 'm', saveMetadata: false });
  const counter = outputCounter({ outputDir, filenamePrefix: 'm' });
  t.equal(counter, 2);
  const names: string[] = [];
  for (const format of ['video/h264-mp4', 'image/webp'] as VideoFormat[])
    names.push(...(await videoCombine(frames(), { format, outputDir, filenamePrefix: 'm', counter, saveMetadata: false })).files.map((f) => path.basename(f)));
  t.same(names, ['m_00002.mp4', 'm_00002.webp'], 'both formats under counter 2');
  // crf up to 100 for h264, as VHS offers it (x264 takes it as 51).
  const loose = await videoCombine(frames(), { format: 'video/h264-mp4', outputDir, filenamePrefix: 'loose', crf: 100, saveMetadata: false });
  t.equal(Number(ffprobe(loose.files[0]).streams[0].nb_read_frames), F, 'crf 100: a readable MP4 of every frame');
  // A name that is taken moves the output on, as ever: nothing is replaced.
  const again = await videoCombine(frames(), { format: 'video/h264-mp4', outputDir, filenamePrefix: 'm', counter: 2, saveMetadata: false });
  t.same(again.files.map((f) => path.basename(f)), ['m_00003.mp4']);
  await rejectsWith(t, videoCombine(frames(), { outputDir, counter: 0 }), 'WAN_INVALID_OPTION', 'Expected a positive integer for counter but received 0 of type number');
});

t.test('prepareOutput: the options, ffmpeg and a folder that takes files, checked before any frame; nothing left', async (t) => {
  const outputDir = newDir();
  await prepareOutput({ format: 'image/png', outputDir, filenamePrefix: 'deep/er/p' });
  t.notOk(fs.existsSync(outputDir), 'the folders it made to try are gone again');
  fs.mkdirSync(outputDir);
  fs.writeFileSync(path.join(outputDir, 'keep.txt'), 'mine');
  await prepareOutput({ format: 'image/png', outputDir, filenamePrefix: 'p' });
  t.same(fs.readdirSync(outputDir), ['keep.txt'], 'an existing folder keeps what it had, and only that');
  const aFile = path.join(outputDir, 'keep.txt');
  await rejectsWith(t, prepareOutput({ format: 'image/png', outputDir: path.join(aFile, 'sub') }), 'WAN_IO',
    /^could not create the output folder .*keep\.txt\/sub: ENOTDIR/);
  await rejectsWith(t, prepareOutput({ format: 'image/png', outputDir, filenamePrefix: '../x' }), 'WAN_INVALID_OPTION',
    /Expected a filenamePrefix inside the output folder/);
  const saved = process.env.WAN_FFMPEG;
  t.teardown(() => { if (saved === undefined) delete process.env.WAN_FFMPEG; else process.env.WAN_FFMPEG = saved; });
  process.env.WAN_FFMPEG = '/nonexistent/ffmpeg';
  await rejectsWith(t, prepareOutput({ format: 'video/h264-mp4', outputDir }), 'WAN_NATIVE_LOAD', /ffmpeg is needed to write videos/);
});

t.test('a file system refusal while writing is WAN_IO, naming the output', { skip: noFfmpeg }, async (t) => {
  // The metadata of an MP4 goes through a temporary folder: one that cannot be made.
  const outputDir = newDir();
  const saved = process.env.TMPDIR;
  t.teardown(() => { if (saved === undefined) delete process.env.TMPDIR; else process.env.TMPDIR = saved; });
  process.env.TMPDIR = path.join(outputDir, 'no', 'such', 'folder');
  await rejectsWith(t, videoCombine(frames(), { format: 'video/h264-mp4', outputDir, filenamePrefix: 'io', metadata: { prompt: 'x' } }), 'WAN_IO',
    /^could not write .*io_00001\.mp4: ENOENT: no such file or directory, mkdtemp/);
  process.env.TMPDIR = saved;
  t.same(listFiles(outputDir), [], 'nothing left');
});

t.test('saveOutput: false writes to the temporary folder', async (t) => {
  const tempDirectory = newDir();
  const outputDir = newDir();
  const r = await videoCombine(frames(), { format: 'image/png', saveOutput: false, tempDir: tempDirectory, outputDir, filenamePrefix: 'tmp/p' });
  t.equal(path.dirname(r.files[0]), path.join(tempDirectory, 'tmp'));
  t.notOk(fs.existsSync(outputDir), 'the output folder is not touched');
});

t.test('options are validated with messages that name them', async (t) => {
  const outputDir = newDir();
  const cases: [VideoCombineOptions, string][] = [
    [{ format: 'video/avi' as VideoFormat },
      'Expected one of image/gif, image/webp, image/png, video/h264-mp4, video/h265-mp4, video/webm for format but received "video/avi" of type string'],
    [{ frameRate: 0 }, 'Expected a number >= 1 for frameRate but received 0 of type number'],
    [{ frameRate: '8' as unknown as number }, 'Expected a number >= 1 for frameRate but received "8" of type string'],
    [{ loopCount: 101 }, 'Expected an integer between 0 and 100 for loopCount but received 101 of type number'],
    [{ loopCount: 1.5 }, 'Expected an integer between 0 and 100 for loopCount but received 1.5 of type number'],
    [{ format: 'image/png', loopCount: 1 }, 'Expected loopCount 0 for format image/png (a PNG sequence does not loop) but received 1 of type number'],
    [{ format: 'video/h264-mp4', crf: 101 }, 'Expected an integer between 0 and 100 for crf (video/h264-mp4) but received 101 of type number'],
    [{ format: 'video/h265-mp4', crf: 52 }, 'Expected an integer between 0 and 51 for crf (video/h265-mp4) but received 52 of type number'],
    [{ format: 'video/webm', crf: -1 }, 'Expected an integer between 0 and 63 for crf (video/webm) but received -1 of type number'],
    [{ format: 'video/h265-mp4', pixFmt: 'yuv444p' }, 'Expected one of yuv420p10le, yuv420p for pixFmt (video/h265-mp4) but received "yuv444p" of type string'],
    [{ format: 'image/gif', crf: 10 }, 'crf applies to video/h264-mp4, video/h265-mp4, video/webm only, not to format image/gif'],
    [{ format: 'image/webp', pixFmt: 'yuv420p' }, 'pixFmt applies to video/h264-mp4, video/h265-mp4, video/webm only, not to format image/webp'],
    [{ format: 'video/webm', lossless: true }, 'lossless applies to image/webp only, not to format video/webm'],
    [{ pingpong: 1 as unknown as boolean }, 'Expected a boolean for pingpong but received 1 of type number'],
    [{ saveMetadata: 'yes' as unknown as boolean }, 'Expected a boolean for saveMetadata but received "yes" of type string'],
    [{ filenamePrefix: '' }, 'Expected a non-empty string for filenamePrefix but received "" of type string'],
    [{ outputDir: 3 as unknown as string }, 'Expected a folder path for outputDir but received 3 of type number'],
    [{ metadata: 'a prompt' as unknown as Record<string, unknown> }, 'Expected an object for metadata but received "a prompt" of type string'],
    [{ metadata: { 'has space': 1 } }, `Expected metadata keys of 1 to 79 characters A-Z, a-z, 0-9, '_', '.' or '-' but received "has space" of type string`],
    [{ metadata: { seed: 10n } }, 'Expected a JSON-serialisable value for metadata.seed but received 10 of type bigint'],
    [{ signal: {} as AbortSignal }, 'Expected an AbortSignal for signal but received an object of type Object'],
  ];
  for (const [o, message] of cases) await rejectsWith(t, videoCombine(frames(), { outputDir, ...o }), 'WAN_INVALID_OPTION', message);
  await rejectsWith(t, videoCombine([] as unknown as Tensor, { outputDir }), 'WAN_INVALID_OPTION',
    'Expected a Tensor [3, F, H, W] or an async iterable of Tensors for frames but received an array of length 0');
  await rejectsWith(t, videoCombine(Tensor.fromTypedArray(new Float32Array(4 * 2 * 2), [4, 1, 2, 2]), { outputDir, format: 'image/png' }),
    'WAN_INVALID_TENSOR', 'videoCombine: expected frames of shape [3, F, H, W] (F, H, W >= 1) but received [4, 1, 2, 2]');
  await rejectsWith(t, videoCombine(Tensor.fromTypedArray(new Int32Array(12), [3, 1, 2, 2]), { outputDir, format: 'image/png' }),
    'WAN_INVALID_TENSOR', 'videoCombine: expected a floating-point frames (f32, f16, bf16, f64) in [-1, 1] but received i32');
  await rejectsWith(t, videoCombine((async function* () {})(), { outputDir, format: 'image/png' }),
    'WAN_INVALID_TENSOR', 'videoCombine: the frames stream ended without yielding a frame');
  async function* mixed() {
    yield Tensor.fromTypedArray(new Float32Array(3 * H * W), [3, 1, H, W]);
    yield Tensor.fromTypedArray(new Float32Array(3 * 8 * 8), [3, 1, 8, 8]);
  }
  await rejectsWith(t, videoCombine(mixed(), { outputDir, format: 'image/png' }), 'WAN_INVALID_TENSOR',
    `videoCombine: expected every chunk of frames to be ${H}x${W} (H x W, from the first chunk) but received [3, 1, 8, 8]`);
  t.same(listFiles(outputDir), [], 'no file from a refused call');
});

t.test('a stream gives the same output as the tensor, and its chunks are disposed', { skip: noFfmpeg }, async (t) => {
  const outputDir = newDir();
  const whole = await videoCombine(frames(), { format: 'image/png', filenamePrefix: 'whole', outputDir, saveMetadata: false });
  const seen: Tensor[] = [];
  async function* watched() {
    for await (const c of chunks(clip.planar, F, [1, 4, 3])) { seen.push(c); yield c; }
  }
  const streamed = await videoCombine(watched(), { format: 'image/png', filenamePrefix: 'streamed', outputDir, saveMetadata: false });
  t.equal(streamed.files.length, F);
  t.ok(streamed.files.every((f, i) => fs.readFileSync(f).equals(fs.readFileSync(whole.files[i]))), 'PNG: the same bytes');
  t.ok(seen.length === 3 && seen.every((c) => c.disposed), 'each chunk disposed once written');

  for (const format of ['video/h264-mp4', 'image/gif'] as VideoFormat[]) {
    const a = await videoCombine(frames(), { format, filenamePrefix: 'a', outputDir, saveMetadata: false });
    const b = await videoCombine(chunks(clip.planar, F, [1, 4, 3]), { format, filenamePrefix: 'b', outputDir, saveMetadata: false });
    const da = decode(a.files[0]), db = decode(b.files[0]);
    t.equal(db.length, F);
    t.ok(Buffer.concat(da).equals(Buffer.concat(db)), `${format}: the same decoded frames`);
  }
});

t.test('pingpong: frames then reversed frames without the ends, 2F - 2', { skip: noFfmpeg }, async (t) => {
  const outputDir = newDir();
  const order = [0, 1, 2, 3, 4, 5, 6, 7, 6, 5, 4, 3, 2, 1];
  const whole = await videoCombine(frames(), { format: 'image/png', pingpong: true, filenamePrefix: 'pp', outputDir, saveMetadata: false });
  t.equal(whole.frames, 2 * F - 2);
  for (let i = 0; i < order.length; i++) {
    const { data } = await sharp(whole.files[i]).raw().toBuffer({ resolveWithObject: true });
    t.ok(data.equals(clip.rgb[order[i]]), `output frame ${i} is input frame ${order[i]}`);
  }
  const streamed = await videoCombine(chunks(clip.planar, F, [1, 4, 3]), { format: 'image/png', pingpong: true, filenamePrefix: 'pps', outputDir, saveMetadata: false });
  t.ok(streamed.files.length === order.length &&
    streamed.files.every((f, i) => fs.readFileSync(f).equals(fs.readFileSync(whole.files[i]))), 'streamed pingpong: the same PNGs');

  const mp4 = await videoCombine(chunks(clip.planar, F, [1, 4, 3]), { format: 'video/h264-mp4', pingpong: true, outputDir });
  t.equal(Number(ffprobe(mp4.files[0]).streams[0].nb_read_frames), 2 * F - 2, 'streamed mp4: 14 frames');
  const webp = await videoCombine(frames(), { format: 'image/webp', pingpong: true, outputDir, saveMetadata: false });
  const w = await sharpFrames(webp.files[0]);
  t.ok(w.frames.length === order.length && w.frames.every((fr, i) => fr.equals(clip.rgb[order[i]])), 'WebP pingpong: exact frames in order');
  for (const n of [1, 2]) {
    const short = video(n);
    const r = await videoCombine(Tensor.fromTypedArray(short.planar, [3, n, H, W]), { format: 'image/png', pingpong: true, outputDir, filenamePrefix: `n${n}` });
    t.equal(r.frames, n, `${n} frame(s): nothing to add`);
  }
});

t.test('saveMetadata puts the metadata in the file, as VHS does', { skip: noFfmpeg }, async (t) => {
  const outputDir = newDir();
  const prompt = { '3': { class_type: 'WanVideoSampler', inputs: { seed: 42, text: 'a cat; #1 = "best" \\ ü\nnew line' } } };
  const metadata = { prompt, workflow: { nodes: [] }, settings: { steps: 30, cfg: 6 } };
  for (const format of ['video/h264-mp4', 'video/h265-mp4', 'video/webm'] as VideoFormat[]) {
    const r = await videoCombine(frames(), { format, metadata, outputDir });
    t.equal(r.files.length, 1, `${format}: one file`);
    const p = ffprobe(r.files[0]);
    t.same(JSON.parse(tag(p, 'prompt')!), prompt, `${format}: prompt tag`);
    t.same(JSON.parse(tag(p, 'workflow')!), metadata.workflow, `${format}: workflow tag`);
    t.same(JSON.parse(tag(p, 'settings')!), metadata.settings, `${format}: settings tag`);
    t.match(tag(p, 'creation_time'), /^\d{4}-\d\d-\d\dT/, `${format}: creation_time`);
    const off = await videoCombine(frames(), { format, metadata, saveMetadata: false, outputDir });
    t.equal(tag(ffprobe(off.files[0]), 'prompt'), undefined, `${format}: saveMetadata false: no prompt`);
  }
  const png = await videoCombine(frames(), { format: 'image/png', metadata, outputDir, filenamePrefix: 'meta' });
  for (const f of [png.files[0], png.files[F - 1]]) {
    const text = pngText(f);
    t.same(JSON.parse(text.prompt), prompt, `${path.basename(f)}: prompt chunk`);
    t.same(JSON.parse(text.settings), metadata.settings, `${path.basename(f)}: settings chunk`);
    t.match(text.CreationTime, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);
    t.notOk(/[^\x00-\x7f]/.test(text.prompt), 'ASCII only (non-ASCII escaped as \\u, as json.dumps does)');
  }
  for (const format of ['image/gif', 'image/webp'] as VideoFormat[]) {
    const r = await videoCombine(frames(), { format, metadata, outputDir, filenamePrefix: 'anim' });
    t.equal(r.files.length, 2, `${format}: a metadata PNG beside the animation`);
    const [first, main] = r.files;
    t.equal(path.basename(first), path.basename(main).replace(/\.\w+$/, '.png'), `${format}: same counter`);
    t.same(JSON.parse(pngText(first).prompt), prompt);
    const { data } = await sharp(first).raw().toBuffer({ resolveWithObject: true });
    t.ok(data.equals(clip.rgb[0]), `${format}: the PNG is the first frame`);
    const off = await videoCombine(frames(), { format, metadata, saveMetadata: false, outputDir, filenamePrefix: 'anim' });
    t.equal(off.files.length, 1, `${format}: saveMetadata false: the animation only`);
  }
});

t.test('onProgress counts the frames written', { skip: noFfmpeg }, async (t) => {
  const seen: Progress[] = [];
  await videoCombine(frames(), { format: 'video/webm', pingpong: true, outputDir: newDir(), onProgress: (p) => seen.push(p) });
  t.equal(seen.length, 2 * F - 2);
  t.same(seen.map((p) => p.step), Array.from({ length: 2 * F - 2 }, (_, i) => i + 1));
  t.same([seen[seen.length - 1].totalSteps, seen[seen.length - 1].fraction, seen[0].stage], [2 * F - 2, 1, 'videoCombine']);
});

t.test('ffmpeg missing, too old or failing: clear errors, no files', async (t) => {
  const outputDir = newDir();
  const saved = { ffmpeg: process.env.WAN_FFMPEG, path: process.env.PATH };
  t.teardown(() => {
    if (saved.ffmpeg === undefined) delete process.env.WAN_FFMPEG; else process.env.WAN_FFMPEG = saved.ffmpeg;
    process.env.PATH = saved.path;
  });
  const bin = newDir();
  fs.mkdirSync(bin);
  const script = (name: string, body: string) => {
    const file = path.join(bin, name);
    fs.writeFileSync(file, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
    return file;
  };

  process.env.WAN_FFMPEG = '/nonexistent/ffmpeg';
  await rejectsWith(t, videoCombine(frames(), { format: 'video/h264-mp4', outputDir }), 'WAN_NATIVE_LOAD',
    'ffmpeg is needed to write videos, but WAN_FFMPEG=/nonexistent/ffmpeg is not an executable file ' +
    '(install it with apt install ffmpeg, or point WAN_FFMPEG at an ffmpeg binary)');
  const png = await videoCombine(frames(), { format: 'image/png', outputDir, filenamePrefix: 'nf' });
  t.equal(png.files.length, F, 'image/png does not need ffmpeg');
  fs.rmSync(outputDir, { recursive: true });

  delete process.env.WAN_FFMPEG;
  process.env.PATH = bin;
  await rejectsWith(t, videoCombine(frames(), { format: 'image/gif', outputDir }), 'WAN_NATIVE_LOAD',
    `ffmpeg is needed to write videos, but it was not found: WAN_FFMPEG is not set and no ffmpeg is on PATH (${bin}). ` +
    'Install it with apt install ffmpeg, or set WAN_FFMPEG to its path');
  process.env.PATH = saved.path;

  process.env.WAN_FFMPEG = script('old-ffmpeg', 'echo "ffmpeg version 3.4.11 Copyright (c) 2000-2022 the FFmpeg developers"');
  await rejectsWith(t, videoCombine(frames(), { format: 'video/webm', outputDir }), 'WAN_NATIVE_LOAD',
    /^ffmpeg 4\.4 or newer is needed to write videos, but .*old-ffmpeg is 3\.4 \("ffmpeg version 3\.4\.11 .*apt install ffmpeg/);
  process.env.WAN_FFMPEG = script('not-ffmpeg', 'echo "hello"');
  await rejectsWith(t, videoCombine(frames(), { format: 'video/webm', outputDir }), 'WAN_NATIVE_LOAD',
    /does not print "ffmpeg version \.\.\.": "hello"/);

  // Passes the version check, then fails as ffmpeg does when an encoder is missing; or is killed.
  process.env.WAN_FFMPEG = script('failing-ffmpeg', [
    'if [ "$1" = "-version" ]; then echo "ffmpeg version 6.1.1"; exit 0; fi',
    'head -c 100 >/dev/null',
    'echo "Unknown encoder \'libx264\'" >&2',
    'exit 1'].join('\n'));
  await rejectsWith(t, videoCombine(frames(), { format: 'video/h264-mp4', outputDir }), 'WAN_IO',
    /^ffmpeg \(.*failing-ffmpeg\) exited with code 1 while writing .*_00001\.mp4 \(video\/h264-mp4\): Unknown encoder 'libx264'$/);
  process.env.WAN_FFMPEG = script('crashing-ffmpeg', [
    'if [ "$1" = "-version" ]; then echo "ffmpeg version N-113000-g0123456"; exit 0; fi',
    'echo "corrupted size vs. prev_size" >&2',
    'kill -ABRT $$'].join('\n'));
  await rejectsWith(t, videoCombine(chunks(clip.planar, F, [1, 4, 3]), { format: 'image/webp', outputDir }), 'WAN_IO',
    /was killed by SIGABRT while writing .*\(image\/webp\): corrupted size vs\. prev_size$/);
  t.same(listFiles(outputDir), [], 'no files after any of these');
});

t.test('an error from the stream is passed on, and nothing is left', { skip: noFfmpeg }, async (t) => {
  for (const format of ['video/webm', 'image/png'] as VideoFormat[]) {
    const outputDir = newDir();
    async function* broken() {
      yield* chunks(clip.planar, F, [1, 4]);
      throw new Error('decoder failed');
    }
    await t.rejects(videoCombine(broken(), { format, pingpong: true, outputDir }), { message: 'decoder failed' });
    t.same(listFiles(outputDir), [], `${format}: no files`);
  }
});

t.test('an abort kills ffmpeg and leaves no files', { skip: noFfmpeg }, async (t) => {
  for (const format of ['video/h264-mp4', 'image/png', 'image/gif'] as VideoFormat[]) {
    for (const pingpong of [false, true]) {
      const outputDir = newDir();
      const controller = new AbortController();
      let yielded = 0;
      async function* slow() {
        for await (const c of chunks(clip.planar, F, [1, 1, 1, 1, 1, 1, 1, 1], 20)) {
          if (++yielded === 4) setTimeout(() => controller.abort(), 5);
          yield c;
        }
      }
      await rejectsWith(t, videoCombine(slow(), { format, pingpong, outputDir, signal: controller.signal, metadata: { prompt: 'p' } }),
        'WAN_ABORTED', 'the operation was aborted');
      t.ok(yielded < F, `${format}${pingpong ? ' pingpong' : ''}: aborted after ${yielded} of ${F} chunks`);
      t.same(listFiles(outputDir), [], `${format}${pingpong ? ' pingpong' : ''}: no files`);
    }
  }
  const outputDir = newDir();
  await rejectsWith(t, videoCombine(frames(), { format: 'image/gif', outputDir, signal: AbortSignal.abort() }),
    'WAN_ABORTED', 'the operation was aborted');
  t.same(listFiles(outputDir), [], 'an already aborted signal writes nothing');
  t.same(fs.readdirSync(require('node:os').tmpdir()).filter((n: string) => n.startsWith('wan-video-') &&
    fs.existsSync(path.join(require('node:os').tmpdir(), n, 'pingpong.rgb'))), [], 'no pingpong spool left');
});
