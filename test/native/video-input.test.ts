// loadVideo (lib/video-input.ts) against what VideoHelperSuite's Load Video gives: which frames
// a forced rate, skip, every-nth and cap keep (VHS's frame loop worked through by hand: 30 -> 16
// fps keeps 0, 2, 4, ..., 14, 16, 17, 19, ...; 16 -> 24 repeats 2 and 4), the centre crop and
// Pillow LANCZOS resize, the format's frame count, and the bytes of a lossless file exactly.
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { loadVideo } from '../../lib/video-input';
import { resizeLanczos } from '../../lib/lanczos';

const have = (bin: string) => spawnSync(bin, ['-version']).status === 0;
const skip = have('ffmpeg') && have('ffprobe') ? false : 'ffmpeg and ffprobe are needed (apt install ffmpeg)';
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wan-video-input-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

// Frame k of a lossless RGB video: every pixel's red is k (its index), green a horizontal ramp,
// blue a vertical one, so a loaded frame tells which source frame it was and where it was cut.
function pixel(k: number, x: number, y: number): [number, number, number] {
  return [k, (x * 7) % 256, (y * 11) % 256];
}
function makeVideo(name: string, frames: number, width: number, height: number, rate: number): string {
  const raw = Buffer.alloc(frames * width * height * 3);
  for (let k = 0; k < frames; k++)
    for (let y = 0; y < height; y++)
      for (let x = 0; x < width; x++) raw.set(pixel(k, x, y), ((k * height + y) * width + x) * 3);
  const file = path.join(dir, name);
  execFileSync('ffmpeg', ['-v', 'error', '-y', '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-s', `${width}x${height}`, '-r', String(rate),
    '-i', '-', '-c:v', 'ffv1', '-pix_fmt', 'gbrp', file], { input: raw });
  return file;
}
// The source index of each loaded frame (its red, back from [-1, 1]).
function indices(data: Float32Array, shape: readonly number[]): number[] {
  const [, T, H, W] = shape;
  return Array.from({ length: T }, (_, k) => Math.round(((data[k * H * W] + 1) / 2) * 255));
}

t.test('the frames a forced rate, skip, every nth and cap keep are VHS\'s', { skip }, async (t) => {
  const file = makeVideo('thirty.mkv', 30, 16, 8, 30);
  const all = await loadVideo(file, { format: 'None' });
  t.same(all.frames.shape, [3, 30, 8, 16], 'format None: every frame, the size as it is');
  t.same(indices(all.frames.toTypedArray() as Float32Array, all.frames.shape), Array.from({ length: 30 }, (_, k) => k));
  t.same(all.source, { width: 16, height: 8, frameRate: 30 });
  const forced = await loadVideo(file, { format: 'None', forceRate: 16 });
  t.same(indices(forced.frames.toTypedArray() as Float32Array, forced.frames.shape), [0, 2, 4, 6, 8, 10, 12, 14, 16, 17, 19, 21, 23, 25, 27, 29],
    '30 to 16 fps: VHS\'s frames');
  t.equal(forced.frameRate, 16);
  const picked = await loadVideo(file, { format: 'None', forceRate: 16, skipFirstFrames: 3, selectEveryNth: 2, frameLoadCap: 4 });
  t.same(indices(picked.frames.toTypedArray() as Float32Array, picked.frames.shape), [6, 10, 14, 17],
    'then 3 skipped, every 2nd kept, 4 at most (counted at 16 fps)');
  t.equal(picked.frameRate, 8);
  const slow = makeVideo('sixteen.mkv', 6, 16, 8, 16);
  const doubled = await loadVideo(slow, { format: 'None', forceRate: 24 });
  t.same(indices(doubled.frames.toTypedArray() as Float32Array, doubled.frames.shape), [0, 1, 2, 2, 3, 4, 4, 5],
    '16 to 24 fps: frames repeated, as VHS repeats them');
  const wan = await loadVideo(file, { forceRate: 16 });
  t.same(wan.frames.shape[1], 13, 'format Wan (the default): 16 frames cut to 13, the largest 4n + 1');
});

t.test('the bytes of a lossless file exactly; a new size by the centre crop and Pillow\'s LANCZOS', { skip }, async (t) => {
  const file = makeVideo('ramp.mkv', 5, 40, 24, 8);
  const same = await loadVideo(file);
  t.same(same.frames.shape, [3, 5, 24, 40], '40 x 24 is a multiple of 8: kept');
  const data = same.frames.toTypedArray() as Float32Array;
  let exact = true;
  for (let k = 0; k < 5 && exact; k++)
    for (let y = 0; y < 24; y++)
      for (let x = 0; x < 40; x++)
        for (let c = 0; c < 3; c++) {
          const want = Math.fround(Math.fround(Math.fround(pixel(k, x, y)[c] / 255) * 2) - 1);
          if (data[((c * 5 + k) * 24 + y) * 40 + x] !== want) exact = false;
        }
  t.ok(exact, 'every value: byte / 255 * 2 - 1 in float32');

  // 40 x 24 to 16 x 16: centre crop to 24 x 24 (8 columns off each side), then LANCZOS.
  const square = await loadVideo(file, { customWidth: 16, customHeight: 16 });
  t.same(square.frames.shape, [3, 5, 16, 16]);
  const cropped = new Uint8Array(3 * 24 * 24);
  for (let c = 0; c < 3; c++) for (let y = 0; y < 24; y++) for (let x = 0; x < 24; x++) cropped[(c * 24 + y) * 24 + x] = pixel(2, x + 8, y)[c];
  const want = resizeLanczos(cropped, 3, 24, 24, 16, 16);
  const got = square.frames.toTypedArray() as Float32Array;
  let worst = 0;
  for (let c = 0; c < 3; c++)
    for (let i = 0; i < 256; i++) worst = Math.max(worst, Math.abs(got[(c * 5 + 2) * 256 + i] - (want[c * 256 + i] / 255 * 2 - 1)));
  t.ok(worst <= 1e-6, `frame 2: the centre 24 x 24 resized by Pillow's LANCZOS (max abs ${worst.toExponential(2)})`);

  const wide = await loadVideo(file, { customWidth: 21 });
  t.same(wide.frames.shape.slice(2), [16, 24], 'customWidth alone: the aspect kept, each side rounded to a multiple of 8 (21 x 12.6 -> 24 x 16)');
});

t.test('bad input is named', { skip }, async (t) => {
  await t.rejects(loadVideo(path.join(dir, 'missing.mp4')), { code: 'WAN_IO', message: /video file not found: .*missing\.mp4/ });
  const text = path.join(dir, 'notes.mp4');
  fs.writeFileSync(text, 'not a video');
  await t.rejects(loadVideo(text), { code: 'WAN_INVALID_OPTION', message: /Expected a video file but .*notes\.mp4 has no video stream/ });
  const file = makeVideo('short.mkv', 3, 16, 8, 8);
  await t.rejects(loadVideo(file, { skipFirstFrames: 5 }), { message: /Expected frames in .*short\.mkv but none were loaded \(skipFirstFrames 5\)/ });
  await t.rejects(loadVideo(file, { selectEveryNth: 0 }), { message: /Expected an integer in 1\.\.\d+ for selectEveryNth but received 0/ });
  await t.rejects(loadVideo(file, { format: 'SVD' as never }), { message: /Expected one of None, AnimateDiff, .* for format but received "SVD"/ });
  await t.rejects(loadVideo(file, { rate: 8 } as never), { message: /rate/ });
});
