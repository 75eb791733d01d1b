// Shared by the tests that write or read media and run the whole pipeline: external tools
// (ffmpeg, ffprobe, spm_train), reading videos and PNGs back, and the tokenizer the tiny umT5
// lacks.
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import type { Tensor } from '../lib/index';

// eslint-disable-next-line @typescript-eslint/no-var-requires
const sharp = require('sharp');

/** Whether `bin -version` runs (ffmpeg, ffprobe). */
export function have(bin: string): boolean {
  try {
    execFileSync(bin, ['-version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export function ffprobe(file: string): { streams: { width: number; height: number; nb_read_frames: string }[]; format: { tags?: Record<string, string> } } {
  return JSON.parse(execFileSync('ffprobe', ['-v', 'error', '-count_frames', '-show_entries',
    'stream=width,height,nb_read_frames:format_tags', '-of', 'json', file], { encoding: 'utf8' }));
}

/** A video file's frames as RGB24 bytes, as ffmpeg decodes them. */
export function decodeVideo(file: string): Buffer {
  return execFileSync('ffmpeg', ['-v', 'error', '-i', file, '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-'], { maxBuffer: 1 << 26 });
}

/** Decoded frames [3, F, H, W] in [-1, 1] as the RGB24 bytes videoCombine writes: round((x + 1) / 2 * 255). */
export function frameBytes(video: Tensor): Buffer[] {
  const [, F, H, W] = video.shape;
  const data = video.toTypedArray() as Float32Array;
  return Array.from({ length: F }, (_, f) => {
    const out = Buffer.alloc(H * W * 3);
    for (let c = 0; c < 3; c++)
      for (let i = 0; i < H * W; i++) out[i * 3 + c] = Math.min(255, Math.max(0, Math.round((data[(c * F + f) * H * W + i] + 1) / 2 * 255)));
    return out;
  });
}

export async function pngBytes(file: string): Promise<Buffer> {
  return (await sharp(file).raw().toBuffer({ resolveWithObject: true })).data;
}

/** Every file below `dir`, relative to it, sorted. */
export function listFiles(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath ?? (e as unknown as { path: string }).path, e.name))).sort();
}

/**
 * The tiny umT5 has no tokenizer: trains one into `dir`/spiece.model with Debian's spm_train
 * (T5 conventions: pad 0, eos 1, unk 2; vocab 40 <= the tiny model's 256). False without spm_train.
 */
export function trainTinyTokenizer(dir: string): boolean {
  fs.mkdirSync(dir, { recursive: true });
  const words = ['a', 'cat', 'walks', 'on', 'the', 'beach', 'at', 'sunset', 'camera', 'pans', 'slowly', 'over', 'waves', 'city', 'night', 'neon', 'rain'];
  const lines = Array.from({ length: 600 }, (_, i) => Array.from({ length: 8 }, (_, j) => words[(i * 7 + j * 3) % words.length]).join(' '));
  fs.writeFileSync(path.join(dir, 'corpus.txt'), lines.join('\n'));
  const r = spawnSync('spm_train', [`--input=${path.join(dir, 'corpus.txt')}`, `--model_prefix=${path.join(dir, 'spiece')}`,
    '--vocab_size=40', '--model_type=unigram', '--character_coverage=1.0', '--pad_id=0', '--eos_id=1', '--unk_id=2', '--bos_id=-1'], { encoding: 'utf8' });
  return r.status === 0;
}
