// `wan-native generate` run as a user runs it (a child process of dist/lib/cli.js) on the tiny
// models of shared/golden/weights: T2V and I2V runs, determinism, LoRAs and block swap, option
// errors, --help and Ctrl-C.
import t, { Test } from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { saveSafetensors, Tensor } from '../../lib/index';
import { generateCommand } from '../../lib/cli-generate';
import { goldenDir, repoRoot, tempDir, weightsDir } from '../helpers';

const cli = path.join(repoRoot, 'dist', 'lib', 'cli.js');
const dir = tempDir('wan-cli-generate-');
const w = (name: string) => path.join(weightsDir, name);

// The tiny umT5 has no tokenizer: one trained here with Debian's spm_train, as in
// text-encoder.test.ts (T5 conventions: pad 0, eos 1, unk 2; vocab 40 <= the model's 256).
function trainTokenizer(): string {
  const corpus = path.join(dir, 'corpus.txt');
  const words = ['a', 'cat', 'walks', 'on', 'the', 'beach', 'at', 'sunset', 'camera', 'pans', 'slowly', 'over', 'waves', 'city', 'night', 'neon', 'rain'];
  const lines = Array.from({ length: 600 }, (_, i) => Array.from({ length: 8 }, (_, j) => words[(i * 7 + j * 3) % words.length]).join(' '));
  fs.writeFileSync(corpus, lines.join('\n'));
  const r = spawnSync('spm_train', [`--input=${corpus}`, `--model_prefix=${path.join(dir, 'spiece')}`, '--vocab_size=40',
    '--model_type=unigram', '--character_coverage=1.0', '--pad_id=0', '--eos_id=1', '--unk_id=2', '--bos_id=-1'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`spm_train (Debian package sentencepiece) failed or is missing: ${r.error?.message ?? r.stderr}`);
  return path.join(dir, 'spiece.model');
}
const tokenizer = trainTokenizer();

// The tiny T2V DiT: head dim 32 and text_len 16, which its weights do not record.
const T2V = ['--model', w('tiny_t2v_dit.f32.safetensors'), '--num-heads', '2', '--text-len', '16',
  '--t5', w('tiny_umt5_enc.f32.safetensors'), '--tokenizer', tokenizer, '--vae', w('tiny_vae.f32.safetensors')];
const I2V = ['--model', w('tiny_i2v_dit.f32.safetensors'), '--num-heads', '2',
  '--t5', w('tiny_umt5_enc.f32.safetensors'), '--tokenizer', tokenizer, '--vae', w('tiny_vae.f32.safetensors')];
const SMALL = ['--width', '48', '--height', '32', '--num-frames', '5', '--steps', '2'];

function run(...args: string[]) {
  const r = spawnSync(process.execPath, [cli, ...args], { cwd: repoRoot, encoding: 'utf8', timeout: 120_000 });
  if (r.error) throw r.error;
  return r;
}

// A generate run (args, then --output-dir <dir>/name) that must succeed: its stderr and the
// bytes of the files it wrote, by name.
function framesOf(t: Test, name: string, ...args: string[]): { stderr: string; files: Buffer[] } {
  const out = outDir(name);
  const r = run(...args, '--output-dir', out);
  t.equal(r.status, 0, r.stderr);
  return { stderr: r.stderr, files: fs.existsSync(out) ? fs.readdirSync(out).sort().map((f) => fs.readFileSync(path.join(out, f))) : [] };
}

function outDir(name: string): string {
  return path.join(dir, name);
}

function listing(folder: string): string[] {
  return fs.existsSync(folder) ? fs.readdirSync(folder).sort() : [];
}

function probe(file: string): { frames: number; width: number; height: number; tags: Record<string, string> } {
  const r = spawnSync('ffprobe', ['-v', 'error', '-count_frames', '-select_streams', 'v:0', '-show_entries',
    'stream=nb_read_frames,width,height:format_tags', '-of', 'json', file], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ffprobe ${file}: ${r.stderr}`);
  const j = JSON.parse(r.stdout);
  const s = j.streams[0];
  return { frames: Number(s.nb_read_frames), width: s.width, height: s.height, tags: j.format?.tags ?? {} };
}

t.test('T2V: an mp4 and a gif of the requested size and length, stage times, the paths on stdout', async (t) => {
  const out = outDir('t2v');
  const r = run('generate', ...T2V, ...SMALL, '--prompt', 'a cat walks on the beach', '--seed', '42',
    '--format', 'mp4,gif', '--output-dir', out);
  t.equal(r.status, 0, r.stderr);
  const files = r.stdout.trim().split('\n');
  t.equal(files.length, 3, `the mp4, then the gif's metadata PNG and the gif: ${r.stdout}`);
  t.match(files[0], /t2v\/wan_\d{5}\.mp4$/);
  t.match(files[2], /t2v\/wan_\d{5}\.gif$/);
  for (const f of files) t.ok(fs.existsSync(f) && fs.statSync(f).size > 0, `${f} exists`);
  t.same(listing(out), files.map((f) => path.basename(f)).sort(), 'nothing else in the folder');

  const mp4 = probe(files[0]);
  t.same([mp4.frames, mp4.width, mp4.height], [5, 48, 32], 'mp4: 5 frames of 48x32');
  const gif = probe(files[2]);
  t.same([gif.frames, gif.width, gif.height], [5, 48, 32], 'gif: 5 frames of 48x32');

  // The prompt and every setting ride along, so that the run can be repeated.
  t.equal(JSON.parse(mp4.tags.prompt), 'a cat walks on the beach');
  const settings = JSON.parse(mp4.tags.settings);
  t.match(settings, { task: 't2v', width: 48, height: 32, numFrames: 5, steps: 2, seed: 42, scheduler: 'unipc', cfg: 6, shift: 5 });
  t.same(JSON.parse(mp4.tags.command).slice(0, 2), ['wan-native', 'generate']);

  // Progress: stderr is no terminal here, so one plain line per step; then the time per stage.
  t.match(r.stderr, /^sampling: step 1\/2 {2}[\d.]+ (it\/s|s\/it) {2}ETA \d+:\d\d$/m);
  t.match(r.stderr, /^sampling: step 2\/2 /m);
  t.match(r.stderr, /^time per stage:$/m);
  for (const stage of ['text', 'load', 'sampling', 'decode', 'write', 'total'])
    t.match(r.stderr, new RegExp(`^  ${stage} +[\\d.]+ s`, 'm'), `time of ${stage}`);
  t.match(r.stderr, /^ {2}sampling +[\d.]+ s {2}\([\d.]+ s\/step\)$/m, 'sampling in s/step');
  t.notMatch(r.stderr, /^ {2}clip /m, 'no CLIP stage for T2V');
});

t.test('--teacache: the summary says how many model calls TeaCache skipped', async (t) => {
  const out = outDir('teacache');
  const r = run('generate', ...T2V, '--width', '48', '--height', '32', '--num-frames', '5', '--steps', '4', '--prompt', 'a cat',
    '--format', 'png', '--no-save-metadata', '--output-dir', out, '--teacache', '1', '--teacache-coefficients', 'none', '--teacache-start-step', '0');
  t.equal(r.status, 0, r.stderr);
  // The tiny model's time embedding changes by 0.8 to 1.1 a step: every other step is skipped, both passes.
  t.match(r.stderr, /^ {2}sampling +[\d.]+ s {2}\([\d.]+ s\/step, TeaCache skipped [1-9]\d* model calls?\)$/m);
});

t.test('--magcache and --easycache: the summary says how many model calls the cache skipped', async (t) => {
  const common = ['generate', ...T2V, '--width', '48', '--height', '32', '--num-frames', '5', '--steps', '8', '--prompt', 'a cat',
    '--format', 'png', '--no-save-metadata'];
  const mag = run(...common, '--output-dir', outDir('magcache'), '--magcache', '0.1', '--magcache-k', '2');
  t.equal(mag.status, 0, mag.stderr);
  // The 14B ratios resampled to 8 steps skip calls from step 2 at 0.1 (test/native/sampler.test.ts has the rule).
  t.match(mag.stderr, /^ {2}sampling +[\d.]+ s {2}\([\d.]+ s\/step, MagCache skipped [1-9]\d* model calls?\)$/m);
  const easy = run(...common, '--output-dir', outDir('easycache'), '--easycache', '0.5', '--easycache-start-step', '0');
  t.equal(easy.status, 0, easy.stderr);
  t.match(easy.stderr, /^ {2}sampling +[\d.]+ s {2}\([\d.]+ s\/step, EasyCache skipped [1-9]\d* model calls?\)$/m);
});

t.test('the experimental guidance flags reach the sampler', async (t) => {
  const common = ['generate', ...T2V, '--width', '48', '--height', '32', '--num-frames', '5', '--steps', '3', '--prompt', 'a cat',
    '--format', 'png', '--no-save-metadata', '--seed', '5'];
  const frames = (name: string, ...extra: string[]) => framesOf(t, name, ...common, ...extra);
  const plain = frames('guidance-plain').files;
  const guided = frames('guidance-all', '--cfg-zero-star', '--use-zero-init', '--fresca', '--fresca-freq-cutoff', '2', '--tcfg',
    '--raag-alpha', '1', '--tsr', '--tsr-k', '0.9').files;
  t.equal(guided.length, plain.length, 'as many frames');
  t.ok(guided.some((f, i) => !f.equals(plain[i])), 'other frames than plain cfg');
});

t.test('--freeinit: the whole schedule sampled again from the last result re-noised', async (t) => {
  const common = ['generate', ...T2V, '--width', '48', '--height', '32', '--num-frames', '5', '--steps', '2', '--prompt', 'a cat',
    '--format', 'png', '--no-save-metadata', '--seed', '3'];
  const frames = (name: string, ...extra: string[]) => framesOf(t, name, ...common, ...extra);
  const plain = frames('freeinit-plain');
  const again = frames('freeinit', '--freeinit', '2', '--freeinit-method', 'gaussian', '--freeinit-d-s', '0.5');
  t.match(again.stderr, /^sampling: 4 steps of unipc, 2 latent frames, in 2 FreeInit runs/m, 'the header counts the steps of both runs');
  t.equal(again.files.length, plain.files.length, 'as many frames');
  t.ok(again.files.some((f, i) => !f.equals(plain.files[i])), 'other frames than one run');
});

t.test('--video: video-to-video from the video\'s latent, noised to the step --denoise-strength leaves', async (t) => {
  // Two lossless 9-frame clips: one of ramps, one of its negative.
  const clip = (name: string, invert: boolean) => {
    const [W, H, F] = [64, 40, 12], raw = Buffer.alloc(W * H * 3 * F);
    for (let i = 0; i < raw.length; i++) { const v = (i * 37 + Math.floor(i / (W * H * 3)) * 11) % 256; raw[i] = invert ? 255 - v : v; }
    const file = path.join(dir, name);
    const r = spawnSync('ffmpeg', ['-v', 'error', '-y', '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-s', `${W}x${H}`, '-r', '16', '-i', '-',
      '-c:v', 'ffv1', '-pix_fmt', 'gbrp', file], { input: raw });
    t.equal(r.status, 0, String(r.stderr));
    return file;
  };
  const [a, b] = [clip('a.mkv', false), clip('b.mkv', true)];
  const common = ['generate', ...T2V, '--width', '48', '--height', '32', '--num-frames', '13', '--steps', '4', '--prompt', 'a cat',
    '--format', 'png', '--no-save-metadata', '--seed', '2'];
  const frames = (name: string, ...extra: string[]) => framesOf(t, name, ...common, ...extra);
  const first = frames('v2v-a', '--video', a, '--denoise-strength', '0.5');
  t.match(first.stderr, /^note: --video gives 9 frames \(4k\+1\) of the 13 asked for: 9 are made$/m, 'the 12 frames of the clip cut to 9');
  t.match(first.stderr, /^sampling: 3 steps of unipc, 3 latent frames/m, 'denoise 0.5 of 4 steps: steps 1 to 3 run');
  t.match(first.stderr, /^encode: encoding the video's 9 frames with tiny_vae\.f32\.safetensors/m);
  t.equal(first.files.length, 9);
  const again = frames('v2v-a2', '--video', a, '--denoise-strength', '0.5');
  t.ok(again.files.every((f, i) => f.equals(first.files[i])), 'the same video and seed: the same frames');
  const other = frames('v2v-b', '--video', b, '--denoise-strength', '0.5');
  t.ok(other.files.some((f, i) => !f.equals(first.files[i])), 'another video: other frames');
  const noisier = frames('v2v-a-noisier', '--video', a, '--denoise-strength', '0.9');
  t.ok(noisier.files.some((f, i) => !f.equals(first.files[i])), 'another denoise strength: other frames');
  const tiled = frames('v2v-a-tiled', '--video', a, '--denoise-strength', '0.5', '--vae-tiling', '--tile-x', '32', '--tile-stride-x', '16');
  t.ok(tiled.files.some((f, i) => !f.equals(first.files[i])), '--vae-tiling with --video runs (encode and decode in tiles), giving other frames');
});

t.test('--nag-scale: NAG from the negative prompt, at cfg 1 too', async (t) => {
  const common = ['generate', ...T2V, '--width', '48', '--height', '32', '--num-frames', '5', '--steps', '2', '--prompt', 'a cat',
    '--negative-prompt', 'rain at night', '--cfg', '1', '--format', 'png', '--no-save-metadata', '--seed', '4'];
  const frames = (name: string, ...extra: string[]) => framesOf(t, name, ...common, ...extra);
  const plain = frames('nag-plain').files, guided = frames('nag', '--nag-scale', '4', '--nag-tau', '1.4', '--nag-alpha', '0.5').files;
  t.equal(guided.length, plain.length);
  t.ok(guided.some((f, i) => !f.equals(plain[i])), 'cfg 1 with NAG: other frames than cfg 1 alone');
});

t.test('--loop-shift-skip: a looping video of 4 frames per latent frame', async (t) => {
  const out = outDir('loop');
  const r = run('generate', ...T2V, '--width', '48', '--height', '32', '--num-frames', '13', '--steps', '2', '--prompt', 'a cat',
    '--format', 'png', '--no-save-metadata', '--output-dir', out, '--loop-shift-skip', '2');
  t.equal(r.status, 0, r.stderr);
  t.equal(fs.readdirSync(out).length, 16, '13 frames asked, 4 latent frames: 16 frames that wrap around');
});

t.test('the same seed gives the same frames; another seed other frames', async (t) => {
  const frames = (name: string, seed: string) => {
    const out = outDir(name);
    const r = run('generate', ...T2V, ...SMALL, '--prompt', 'neon city at night', '--seed', seed,
      '--format', 'png', '--no-save-metadata', '--output-dir', out, '--quiet');
    t.equal(r.status, 0, r.stderr);
    t.equal(r.stderr, '', '--quiet prints nothing but the paths');
    const files = r.stdout.trim().split('\n');
    t.equal(files.length, 5, 'one PNG per frame');
    return files.map((f) => fs.readFileSync(f));
  };
  const a = frames('seed-a', '7'), b = frames('seed-b', '7'), c = frames('seed-c', '8');
  t.ok(a.every((png, i) => png.equals(b[i])), 'seed 7 twice: byte-identical PNGs');
  t.notOk(a.every((png, i) => png.equals(c[i])), 'seed 8: different frames');
});

// PNG frames of a short T2V run (no metadata: the bytes are the pixels alone).
function pngFrames(name: string, ...extra: string[]): Buffer[] {
  const r = run('generate', ...T2V, ...SMALL, '--prompt', 'a cat walks on the beach', '--seed', '3',
    '--format', 'png', '--no-save-metadata', '--output-dir', outDir(name), '--quiet', ...extra);
  if (r.status !== 0) throw new Error(`generate ${extra.join(' ')}: exit ${r.status}: ${r.stderr}`);
  const files = r.stdout.trim().split('\n');
  if (files.length !== 5) throw new Error(`expected 5 frames but received ${r.stdout}`);
  return files.map((f) => fs.readFileSync(f));
}
const same = (a: Buffer[], b: Buffer[]) => a.length === b.length && a.every((png, i) => png.equals(b[i]));

t.test('--lora: merged at load (or not); strength 0, other blocks or filtered layers change nothing', async (t) => {
  // A rank-4 LoRA (ComfyUI keys) for the tiny DiT (dim 64, ffn 128): block 0's self-attention q
  // and block 1's ffn.0, with updates large enough to show in 8-bit frames.
  const rank = 4;
  let seed = 11;
  const values = (n: number) => Float32Array.from({ length: n }, () => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return (seed / 2147483648 - 0.5) * 0.6;
  });
  const tensors: Record<string, Tensor> = {};
  for (const [module, out, inp] of [['blocks.0.self_attn.q', 64, 64], ['blocks.1.ffn.0', 128, 64]] as const) {
    tensors[`diffusion_model.${module}.lora_A.weight`] = Tensor.fromTypedArray(values(rank * inp), [rank, inp]);
    tensors[`diffusion_model.${module}.lora_B.weight`] = Tensor.fromTypedArray(values(out * rank), [out, rank]);
  }
  const lora = path.join(dir, 'tiny_lora.safetensors');
  await saveSafetensors(lora, tensors);

  const plain = pngFrames('lora-none');
  const merged = pngFrames('lora-1', '--lora', `${lora}:1`);
  t.notOk(same(plain, merged), 'strength 1: other frames');
  t.ok(same(pngFrames('lora-0', '--lora', `${lora}:0`), plain), 'strength 0: byte-identical frames (the LoRA is skipped)');
  t.ok(same(pngFrames('lora-default', '--lora', lora), merged), 'no strength: 1.0');
  t.ok(same(pngFrames('lora-blocks', '--lora', lora, '--lora-blocks', '0-1'), merged), '--lora-blocks 0-1: every block, the same');
  t.notOk(same(pngFrames('lora-block0', '--lora', lora, '--lora-blocks', '0'), merged), '--lora-blocks 0: block 1 left out');
  // Unmerged, the model's output is within ~1e-6 of the merged one (lora.test.ts), which can move
  // a pixel by a level, so only that the LoRA applied is checked here.
  t.notOk(same(pngFrames('lora-unmerged', '--lora', lora, '--no-merge-loras'), plain), '--no-merge-loras: the LoRA applies');
  t.ok(same(pngFrames('lora-filtered', '--lora', lora, '--lora-layer-filter', 'self_attn, ffn'), plain),
    '--lora-layer-filter self_attn,ffn: every key skipped, byte-identical to no LoRA');

  // The settings in the metadata name the LoRA; a LoRA whose keys fit no weight names --lora.
  const out = outDir('lora-meta');
  const r = run('generate', ...T2V, ...SMALL, '--prompt', 'a cat', '--lora', `${lora}:0.5`, '--lora-blocks', '0',
    '--format', 'mp4', '--output-dir', out);
  t.equal(r.status, 0, r.stderr);
  t.match(r.stderr, /tiny_lora\.safetensors at 0\.5/, 'the load stage names the LoRA');
  t.same(JSON.parse(probe(r.stdout.trim()).tags.settings).loras, [{ path: lora, strength: 0.5, blocks: [0] }]);
  const wrong = path.join(dir, 'wrong_lora.safetensors');
  await saveSafetensors(wrong, { 'diffusion_model.blocks.0.self_attn.nope.lora_A.weight': Tensor.fromTypedArray(values(rank * 64), [rank, 64]),
    'diffusion_model.blocks.0.self_attn.nope.lora_B.weight': Tensor.fromTypedArray(values(64 * rank), [64, rank]) });
  const bad = run('generate', ...T2V, ...SMALL, '--prompt', 'a cat', '--lora', wrong, '--output-dir', outDir('lora-wrong'));
  t.equal(bad.status, 1);
  t.match(bad.stderr, /^wan-native: --lora: .*wrong_lora\.safetensors: .*blocks\.0\.self_attn\.nope/m, bad.stderr);
  t.same(listing(outDir('lora-wrong')), []);
});

t.test('--blocks-to-swap with --prefetch-blocks: byte-identical frames', async (t) => {
  const plain = pngFrames('swap-none');
  t.ok(same(pngFrames('swap-2-1', '--blocks-to-swap', '2', '--prefetch-blocks', '1'), plain), 'swap 2, prefetch 1');
  t.ok(same(pngFrames('swap-1', '--blocks-to-swap', '1', '--quantization', 'fp8_e4m3fn'), pngFrames('fp8', '--quantization', 'fp8_e4m3fn')),
    'swap 1 of an fp8-stored model: the frames of the same model unswapped');
});

t.test('I2V', async (t) => {
  const sharp = require('sharp');
  const [width, height] = [64, 48];
  const rgb = Buffer.alloc(width * height * 3);
  for (let i = 0; i < width * height; i++) rgb.set([(i % width) * 4, Math.floor(i / width) * 5, 128], i * 3);
  const image = path.join(dir, 'first.png');
  await sharp(rgb, { raw: { width, height, channels: 3 } }).png().toFile(image);

  t.test('the tiny CLIP cannot condition the tiny I2V DiT: refused from the headers, naming both widths', async (t) => {
    // tiny_clip is 64 wide and makes [1, 17, 64] tokens; every Wan2.1 I2V DiT (the tiny one
    // too: img_emb = MLPProj(1280, dim)) takes ViT-H/14's 1280-wide ones. So the CLI checks the
    // widths in the headers before loading anything, and a full I2V run goes through
    // --clip-embeds below.
    const out = outDir('i2v-tiny-clip');
    const r = run('generate', ...I2V, ...SMALL, '--prompt', 'a cat', '--image', image,
      '--clip-vision', w('tiny_clip.f32.safetensors'), '--output-dir', out);
    t.equal(r.status, 2, r.stderr);
    t.match(r.stderr, /^wan-native generate: --clip-vision: .*tiny_clip\.f32\.safetensors gives 64-wide embeddings but the model takes 1280 \(image_dim\)/);
    t.equal(r.stdout, '');
    t.same(listing(out), []);
  });

  // CLIP tokens as the DiT takes them ([1, 257, 1280]), made up: the file --clip-embeds reads.
  const clip = path.join(dir, 'clip_embeds.safetensors');
  const data = Float32Array.from({ length: 257 * 1280 }, (_, i) => Math.sin(i * 0.37));
  await saveSafetensors(clip, { clip_embeds: Tensor.fromTypedArray(data, [1, 257, 1280]) });

  t.test('a full I2V run with CLIP embeddings given as a file', async (t) => {
    const out = outDir('i2v');
    const r = run('generate', ...I2V, ...SMALL, '--prompt', 'a cat', '--image', image, '--clip-embeds', clip,
      '--format', 'mp4', '--output-dir', out);
    t.equal(r.status, 0, r.stderr);
    const files = r.stdout.trim().split('\n');
    t.equal(files.length, 1);
    const mp4 = probe(files[0]);
    t.same([mp4.frames, mp4.width, mp4.height], [5, 48, 32]);
    t.match(JSON.parse(mp4.tags.settings), { task: 'i2v', image, clipEmbeds: clip, clipCrop: 'disabled' });
    for (const stage of ['text', 'clip', 'encode', 'load', 'sampling', 'decode', 'write'])
      t.match(r.stderr, new RegExp(`^  ${stage} +[\\d.]+ s`, 'm'), `time of ${stage}`);
  });

  t.test('--extra-end-latent: the end image as a latent frame of its own, left out of the video', async (t) => {
    const out = outDir('i2v-extra-end');
    const r = run('generate', ...I2V, ...SMALL, '--prompt', 'a cat', '--image', image, '--end-image', image, '--clip-embeds', clip,
      '--extra-end-latent', '--augment-empty-frames', '0.15', '--format', 'mp4', '--output-dir', out);
    t.equal(r.status, 0, r.stderr);
    const mp4 = probe(r.stdout.trim().split('\n')[0]);
    t.same([mp4.frames, mp4.width, mp4.height], [5, 48, 32], '5 frames, as asked: the extra latent frame is not decoded');
    const bad = run('generate', ...I2V, ...SMALL, '--prompt', 'a cat', '--image', image, '--clip-embeds', clip, '--extra-end-latent',
      '--output-dir', outDir('i2v-extra-no-end'));
    t.equal(bad.status, 2);
    t.match(bad.stderr, /^wan-native generate: --extra-end-latent needs --end-image$/m);
  });

  t.test('I2V and T2V models refuse what does not fit them', async (t) => {
    let r = run('generate', ...I2V, ...SMALL, '--prompt', 'a cat', '--output-dir', outDir('i2v-no-image'));
    t.equal(r.status, 2);
    t.match(r.stderr, /--image: the model is an i2v model, which needs a first frame/);
    r = run('generate', ...I2V, ...SMALL, '--prompt', 'a cat', '--image', image, '--output-dir', outDir('i2v-no-clip'));
    t.equal(r.status, 2);
    t.match(r.stderr, /--clip-vision: an i2v model needs CLIP embeddings of the image/);
    r = run('generate', ...I2V, ...SMALL, '--prompt', 'a cat', '--image', tokenizer, '--clip-embeds', clip, '--output-dir', outDir('i2v-not-image'));
    t.equal(r.status, 2);
    t.match(r.stderr, /^wan-native generate: --image: Expected a PNG, JPEG or WebP image but .*spiece\.model could not be decoded/);
    r = run('generate', ...I2V, ...SMALL, '--prompt', 'a cat', '--video', tokenizer, '--denoise-strength', '0.5', '--output-dir', outDir('i2v-video'));
    t.equal(r.status, 2);
    t.match(r.stderr, /^wan-native generate: --video: video-to-video takes a text-to-video \(t2v\) model, but the model is an i2v model$/m);
    r = run('generate', ...T2V, ...SMALL, '--prompt', 'a cat', '--video', tokenizer, '--denoise-strength', '0.5', '--output-dir', outDir('t2v-not-video'));
    t.equal(r.status, 2);
    t.match(r.stderr, /^wan-native generate: --video: Expected a video file but .*spiece\.model has no video stream/m);
    const flf = path.join(dir, 'clip_embeds_2.safetensors');
    await saveSafetensors(flf, { clip_embeds: Tensor.fromTypedArray(new Float32Array(2 * 257 * 1280), [2, 257, 1280]) });
    r = run('generate', ...I2V, ...SMALL, '--prompt', 'a cat', '--image', image, '--clip-embeds', flf, '--output-dir', outDir('i2v-clip-2'));
    t.equal(r.status, 2);
    t.match(r.stderr, /--clip-embeds: expected clip_embeds of shape \[1, 257, 1280\] for an i2v model but .* holds \[2, 257, 1280\]/);
    r = run('generate', ...T2V, ...SMALL, '--prompt', 'a cat', '--image', image, '--output-dir', outDir('t2v-image'));
    t.equal(r.status, 2);
    t.match(r.stderr, /--image: the model is a text-to-video \(t2v\) model/);
    r = run('generate', ...T2V, ...SMALL, '--prompt', 'a cat', '--clip-crop', 'center', '--output-dir', outDir('t2v-crop'));
    t.equal(r.status, 2);
    t.match(r.stderr, /--clip-crop needs --image/);
    r = run('generate', ...I2V, ...SMALL, '--prompt', 'a cat', '--image', image, '--clip-embeds', clip, '--clip-crop', 'center',
      '--output-dir', outDir('i2v-embeds-crop'));
    t.equal(r.status, 2);
    t.match(r.stderr, /--clip-crop applies to --clip-vision, which encodes the image; --clip-embeds are encoded already/);
  });
  t.end();
});

t.test('bad options exit 2 with a message naming the option, before anything is loaded', async (t) => {
  const aFile = path.join(dir, 'a-file');
  fs.writeFileSync(aFile, 'not a folder');
  const cases: [string[], RegExp][] = [
    [['--width', '40'], /option '--width <pixels>' argument '40' is invalid\. Expected a multiple of 16 .*such as 48/],
    [['--height', 'tall'], /option '--height <pixels>' argument 'tall' is invalid\. Expected an integer/],
    [['--num-frames', '6'], /option '--num-frames <n>' argument '6' is invalid\. Expected a frame count of the form 4k\+1/],
    [['--scheduler', 'ddim'], /option '--scheduler <name>' argument 'ddim' is invalid\. Allowed choices are unipc, unipc\/beta, dpm\+\+/],
    [['--lora', 'x:abc'], /option '--lora <file\[:strength\]>' argument 'x:abc' is invalid\. .*the strength is "abc"/],
    [['--lora', 'style.safetensors:0.8'], /^wan-native generate: --lora: no such file: style\.safetensors$/m],
    [['--lora-blocks', '0-1'], /option '--lora-blocks <list>' argument '0-1' is invalid\. --lora-blocks applies to the --lora given before it, and there is none/],
    [['--lora', 'style.safetensors', '--lora-blocks', '3-1'], /argument '3-1' is invalid\. Expected block indices and ranges separated by commas, such as 0-9,20/],
    [['--lora', 'style.safetensors', '--lora-blocks', '40-48'], /argument '40-48' is invalid\. Expected block indices in 0\.\.47 but received 48/],
    [['--lora', 'style.safetensors', '--lora-layer-filter', 'ffn', '--lora-layer-filter', 'q'], /--lora-layer-filter is given twice for --lora style\.safetensors/],
    [['--lora', w('tiny_t2v_dit.f32.safetensors'), '--lora-blocks', '0,2-3'], /^wan-native generate: --lora-blocks: the model has 2 transformer blocks \(0\.\.1\) but block 2 is selected for --lora /m],
    [['--quantization', 'fp8_e4m3fn_fast'], /--quantization fp8_e4m3fn_fast runs fp8 matmuls on a GPU .*computes on the CPU \(--device auto\).*: use one of disabled, fp8_e4m3fn, fp8_e4m3fn_scaled, fp8_e5m2/],
    [['--quantization', 'fp8_e4m3fn_scaled_fast'], /--quantization fp8_e4m3fn_scaled_fast runs fp8 matmuls on a GPU .*computes on the CPU/],
    [['--quantization', 'fp8_e5m2_fast'], /--quantization fp8_e5m2_fast is not available yet .*only fp8_e4m3fn_fast and fp8_e4m3fn_scaled_fast are implemented/],
    [['--no-merge-loras'], /^wan-native generate: --no-merge-loras applies to the --lora files, and none is given$/m],
    [['--device', 'gpu'], /option '--device <name>' argument 'gpu' is invalid\. Expected one of auto, cpu, cuda or cuda:N/],
    [['--device', 'cuda'], /^wan-native generate: --device cuda: this build of wan-native is CPU-only; use --device cpu or auto$/m],
    [['--quantization', 'fp8_e5m2_scaled'], /--quantization fp8_e5m2_scaled is not available yet .*scaled fp8_e5m2 storage is not implemented/],
    [['--quantization', 'int4'], /option '--quantization <mode>' argument 'int4' is invalid/],
    [['--blocks-to-swap', '5'], /^wan-native generate: --blocks-to-swap: the model has 2 transformer blocks, so expected 0\.\.2 but received 5$/m],
    [['--blocks-to-swap', '49'], /option '--blocks-to-swap <n>' argument '49' is invalid\. Expected an integer in 0\.\.48/],
    [['--prefetch-blocks', '1'], /--prefetch-blocks needs --blocks-to-swap/],
    [['--prefetch-blocks', '41'], /option '--prefetch-blocks <n>' argument '41' is invalid\. Expected an integer in 0\.\.40/],
    [['--teacache-mode', 'e0'], /^wan-native generate: --teacache-mode needs --teacache \(which turns TeaCache on\)$/m],
    [['--teacache', '0.2', '--batched-cfg'], /^wan-native generate: --batched-cfg and --teacache: TeaCache keeps the positive and negative passes apart/m],
    [['--magcache-k', '2'], /^wan-native generate: --magcache-k needs --magcache \(which turns MagCache on\)$/m],
    [['--easycache-start-step', '2'], /^wan-native generate: --easycache-start-step needs --easycache \(which turns EasyCache on\)$/m],
    [['--teacache', '0.2', '--magcache', '0.02'], /^wan-native generate: --teacache and --magcache: one cache at a time; leave all but one out$/m],
    [['--magcache', '0.5'], /option '--magcache <threshold>' argument '0\.5' is invalid\. Expected a number in 0\.\.0\.3/],
    [['--use-zero-init'], /^wan-native generate: --use-zero-init needs --cfg-zero-star$/m],
    [['--loop-end-percent', '0.5'], /^wan-native generate: --loop-end-percent needs --loop-shift-skip$/m],
    [['--loop-shift-skip', '2', '--num-frames', '5'], /^wan-native generate: --loop-shift-skip needs --num-frames 9 or more .* but received 5$/m],
    [['--tsr-k', '0.9'], /^wan-native generate: --tsr-k needs --tsr$/m],
    [['--freeinit-d-s', '0.5'], /^wan-native generate: --freeinit-d-s needs --freeinit$/m],
    [['--nag-tau', '2'], /^wan-native generate: --nag-tau needs --nag-scale$/m],
    [['--nag-scale', '5', '--batched-cfg'], /^wan-native generate: --batched-cfg and --nag-scale: NAG guides the positive pass alone/m],
    [['--denoise-strength', '0.5'], /^wan-native generate: --denoise-strength needs --video \(it applies to video-to-video\)$/m],
    [['--video', 'clip.mp4'], /^wan-native generate: --video needs --denoise-strength below 1/m],
    [['--video', 'missing.mp4', '--denoise-strength', '0.5'], /^wan-native generate: --video: no such file: missing\.mp4$/m],
    [['--freeinit', '1'], /option '--freeinit <runs>' argument '1' is invalid\. Expected an integer in 2\.\.10/],
    [['--freeinit', '2', '--freeinit-method', 'none'], /option '--freeinit-method <name>' argument 'none' is invalid/],
    [['--freeinit', '2', '--end-step', '1'], /^wan-native generate: --freeinit with --start-step or --end-step: FreeInit runs the whole schedule each time/m],
    [['--fresca-freq-cutoff', '8'], /^wan-native generate: --fresca-freq-cutoff needs --fresca$/m],
    [['--raag-alpha', '11'], /option '--raag-alpha <x>' argument '11' is invalid\. Expected a number in 0\.\.10/],
    [['--slg-start-percent', '0.2'], /^wan-native generate: --slg-start-percent needs --slg-blocks \(which turns skip layer guidance on\)$/m],
    [['--slg-blocks', '0,5'], /^wan-native generate: --slg-blocks: the model has 2 transformer blocks \(0\.\.1\) but block 5 is given$/m],
    [['--riflex-freq-index', '7'], /^wan-native generate: --riflex-freq-index: the model's RoPE turns 6 frequencies with the frame, so expected 0\.\.6 but received 7$/m],
    [['--seed', '-1'], /option '--seed <n>' argument '-1' is invalid/],
    [['--cfg', '5,4,3'], /--cfg: expected one value or 2 \(one per step run\) but received 3/],
    [['--cfg', '5,4', '--start-step', '1'], /--cfg: expected one value or 1 \(one per step run\) but received 2/],
    [['--steps', '3', '--scheduler', 'flowmatch_distill'], /Expected 4 for --steps with --scheduler flowmatch_distill/],
    [['--context-overlap', '8'], /--context-overlap needs --context-frames/],
    [['--context-frames', '5', '--context-overlap', '8'], /--context-overlap .* to be smaller than --context-frames/],
    [['--tile-x', '64'], /--tile-x needs --vae-tiling/],
    [['--format', 'avi'], /option '--format <formats>' argument 'avi' is invalid/],
    [['--format', 'gif', '--crf', '20'], /--crf applies to the video formats/],
    [['--pix-fmt', 'rgb24'], /Expected one of yuv420p, yuv420p10le for --pix-fmt \(video\/h264-mp4\)/],
    [['--prompt', 'a|b'], /--prompt holds 2 prompts separated by '\|'.*--context-frames/],
    [['--prompt', 'a|b', '--context-frames', '33'], /--prompt holds 2 prompts .*: windows of --context-frames 33 are longer than the 5-frame video, which is sampled in one piece/],
    [['--t5', path.join(dir, 'missing.safetensors')], /--t5: no such file: .*missing\.safetensors/],
    [['--vae', w('tiny_clip.f32.safetensors')], /--vae: .*tiny_clip\.f32\.safetensors is a clip-vision checkpoint, not a Wan VAE/],
    [['--vae', path.join(goldenDir, 'golden_vae.safetensors')],
      /--vae: .*golden_vae\.safetensors is not a Wan VAE: it has none of the keys of a Wan DiT, Wan VAE, umT5 or CLIP vision model/],
    [['--model', w('tiny_vae.f32.safetensors')], /--model: .*tiny_vae\.f32\.safetensors is a wan-vae checkpoint, not a shard of a Wan diffusion model/],
    [['--lora', w('tiny_t2v_dit.f32.safetensors')], /--lora: .*tiny_t2v_dit\.f32\.safetensors is a wan-dit checkpoint, not a LoRA/],
    [['--num-heads', '3'], /--num-heads: 3 does not divide the model's width 64 into heads of an even size/],
    [['--output-dir', aFile], /--output-dir: .*a-file is a file, not a folder/],
    [['--output-dir', path.join(aFile, 'sub')], /^wan-native generate: --output-dir: could not create the output folder .*a-file\/sub: ENOTDIR/m],
    [['--feta-weight', '2', '--feta-start-percent', '0.8', '--feta-end-percent', '0.2'],
      /--feta-start-percent \(0\.8\) is after --feta-end-percent \(0\.2\): Enhance-A-Video would never apply/],
    [['--frobnicate'], /unknown option '--frobnicate'/],
  ];
  for (const [extra, message] of cases) {
    const out = outDir(`bad-${extra.join('_').replace(/[^\w.-]/g, '')}`);
    const r = run('generate', ...T2V, ...SMALL, '--prompt', 'a cat', '--output-dir', out, ...extra);
    t.equal(r.status, 2, `${extra.join(' ')}: exit 2`);
    t.match(r.stderr, /^wan-native generate: /, `${extra.join(' ')}: one message`);
    t.match(r.stderr, message, `${extra.join(' ')}: ${r.stderr.trim().split('\n')[0]}`);
    t.equal(r.stdout, '');
    t.same(listing(out), [], 'nothing written');
  }
  const missing = run('generate', '--prompt', 'a cat');
  t.equal(missing.status, 2);
  t.match(missing.stderr, /required option '--model <file>' not specified/);
});

t.test('--help lists every option with its default, in groups', async (t) => {
  const r = run('generate', '--help');
  t.equal(r.status, 0);
  t.equal(r.stderr, '');
  t.match(r.stdout, /^Usage: wan-native generate --model <file> --t5 <file> --vae <file> --prompt <text> \[options\]/);
  const groups = ['Models:', 'Prompt:', 'Image to video (I2V, FLF2V):', 'Video:', 'Sampling:', 'Context windows (long videos):',
    'Memory and speed:', 'Output:'];
  let last = -1;
  for (const g of groups) {
    const at = r.stdout.indexOf(`\n${g}\n`);
    t.ok(at > last, `group ${g}, in order`);
    last = at;
  }
  for (const o of generateCommand().options) t.ok(r.stdout.includes(o.flags), `lists ${o.flags}`);
  // Descriptions wrap to the terminal's width (80 columns here): compare with spaces collapsed.
  const flat = r.stdout.replace(/\s+/g, ' ');
  for (const d of ['--width <pixels> a multiple of 16 (default: 832)', '--steps <n> denoising steps (default: 30)',
    '--num-frames <n> frames, of the form 4k+1 (81 = 5 s at 16 fps) (default: 81)', 'default: "unipc")',
    '(default: video/h264-mp4)', 'Enhance-A-Video weight, 0..100 (2.0 is typical) (default: off)',
    "(default: Wan2.1's official negative prompt (Chinese))", '--frame-rate <fps> frames per second (Wan2.1 is trained on 16) (default: 16)'])
    t.ok(flat.includes(d), `shows ${d}`);
  t.match(flat, /--blocks-to-swap <n> the last n transformer blocks .* the output is the same \(default: 0\)/);
  t.match(flat, /--prefetch-blocks <n> swapped blocks prepared ahead, .* \(default: 0\)/);
  for (const flag of ['--lora <file[:strength]>', '--lora-blocks <list>', '--lora-layer-filter <list>', '--blocks-to-swap <n>', '--prefetch-blocks <n>']) {
    const at = flat.indexOf(` ${flag} `);
    const next = flat.indexOf(' --', at + flag.length + 2);
    t.notMatch(flat.slice(at, next), /not available yet/, `${flag} is available`);
  }

  const viaHelp = run('help', 'generate');
  t.equal(viaHelp.status, 0);
  t.equal(viaHelp.stdout, r.stdout, 'wan-native help generate: the same text');
  const version = run('--version');
  t.equal(version.status, 0);
  t.equal(version.stdout, `${JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')).version}\n`);
});

t.test('Ctrl-C stops the run cleanly: exit 130, "stopping", no file', async (t) => {
  const out = outDir('interrupted');
  const child = spawn(process.execPath, [cli, 'generate', ...T2V, '--width', '48', '--height', '32', '--num-frames', '5',
    '--steps', '5000', '--prompt', 'a cat', '--output-dir', out], { cwd: repoRoot });
  let stderr = '', stdout = '';
  let signalled = false;
  child.stdout.on('data', (d) => { stdout += d; });
  child.stderr.on('data', (d) => {
    stderr += d;
    if (!signalled && /^sampling: step 1\/5000 /m.test(stderr)) {
      signalled = true;
      child.kill('SIGINT');
    }
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
    child.on('close', (c, s) => resolve([c, s])));
  clearTimeout(timer);
  t.ok(signalled, 'the run reached its first step');
  t.equal(signal, null, 'exited on its own');
  t.equal(code, 130, stderr.slice(-500));
  t.match(stderr, /wan-native: stopping\.\.\./);
  t.match(stderr, /stopped; nothing was written/);
  t.notMatch(stderr, /sampling: step 5000\/5000/, 'stopped long before the end');
  t.equal(stdout, '');
  t.same(listing(out), [], 'no file in the output folder');
});

t.test('a second Ctrl-C quits at once, ended by SIGINT itself (no exit-time destructors racing the engine)', async (t) => {
  // In the decode, where each latent frame takes seconds at 512x512 (2.8 s on 2 cores): the
  // first stop waits for the frame in progress, so the second Ctrl-C comes while a worker thread
  // is inside libtorch, the case that crashed.
  const out = outDir('quit');
  const child = spawn(process.execPath, [cli, 'generate', ...T2V, '--width', '512', '--height', '512', '--num-frames', '9',
    '--steps', '1', '--prompt', 'a cat', '--output-dir', out], { cwd: repoRoot });
  let stderr = '', signals = 0;
  child.stderr.on('data', (d) => {
    stderr += d;
    if (signals === 0 && /^decode: latent frame 1\/3 /m.test(stderr)) {
      signals = 1;
      child.kill('SIGINT');
    } else if (signals === 1 && /stopping\.\.\./.test(stderr)) {
      signals = 2;
      child.kill('SIGINT');
    }
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
    child.on('close', (c, s) => resolve([c, s])));
  clearTimeout(timer);
  t.equal(signals, 2, 'both signals sent');
  // A shell reports this as exit status 130; process.exit(130) instead ran static destructors
  // while a worker thread was still in libtorch, and crashed about half the time in decode.
  t.same([code, signal], [null, 'SIGINT'], stderr.slice(-500));
  t.match(stderr, /wan-native: stopped at once/);
});

t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
