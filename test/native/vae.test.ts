// The Wan2.1 VAE against the official WanVAE's numbers (shared/golden/golden_vae).
import t from 'tap';
import * as path from 'node:path';

import { loadSafetensors, Tensor, Vae } from '../../lib/index';
import { goldenDir, maxAbsDiff, toNumbers, weightsDir } from '../helpers';

const TOLERANCE = 1e-4;  // max abs error against the official fp32 encode / decode

async function setup(dtype = 'f32') {
  const g = (await loadSafetensors(path.join(goldenDir, 'golden_vae.safetensors'))).tensors;
  const vae = await Vae.load(path.join(weightsDir, `tiny_vae.${dtype}.safetensors`));
  return { g, vae };
}

t.test('encode of 1, 5 and 9 frames, from the F32 and the BF16 file', async (t) => {
  for (const dtype of ['f32', 'bf16']) {
    const { g, vae } = await setup(dtype);
    t.same(vae.config, { dim: 8, zDim: 16, device: 'cpu' });
    for (const c of ['v1', 'v5', 'v9']) {
      const z = await vae.encode(g.get(`enc.${c}.video`)!);
      t.same(z.shape, g.get(`enc.${c}.z`)!.shape, `${c} shape`);
      const err = maxAbsDiff(z, g.get(`enc.${c}.z`)!);
      t.ok(err <= TOLERANCE, `${dtype} encode ${c}: max abs error ${err.toExponential(2)} <= ${TOLERANCE}`);
    }
  }
});

t.test('decode, clamped and unclamped', async (t) => {
  const { g, vae } = await setup();
  for (const c of ['z5', 'zr']) {
    const z = g.get(`dec.${c}.z`)!;
    const video = await vae.decode(z);
    t.same(video.shape, g.get(`dec.${c}.video`)!.shape, `${c} shape`);
    const err = maxAbsDiff(video, g.get(`dec.${c}.video`)!);
    t.ok(err <= TOLERANCE, `decode ${c}: max abs error ${err.toExponential(2)}`);
    const raw = await vae.decode(z, { clamp: false });
    const errRaw = maxAbsDiff(raw, g.get(`dec.${c}.video_unclamped`)!);
    t.ok(errRaw <= TOLERANCE, `decode ${c} unclamped: max abs error ${errRaw.toExponential(2)}`);
  }
});

t.test('streaming decode yields the same frames as a whole decode', async (t) => {
  const { g, vae } = await setup();
  const z = g.get('dec.zr.z')!;  // 3 latent frames -> 1 + 4 + 4 video frames
  const whole = toNumbers((await vae.decode(z)).toTypedArray());
  const [, frames, h, w] = [3, 9, 32, 48];
  const counts: number[] = [];
  let offset = 0, mismatches = 0;
  for await (const chunk of vae.decodeFrames(z)) {
    const n = chunk.shape[1];
    counts.push(n);
    const values = toNumbers(chunk.toTypedArray());
    for (let c = 0; c < 3; c++)
      for (let i = 0; i < n * h * w; i++)
        if (values[c * n * h * w + i] !== whole[(c * frames + offset) * h * w + i]) mismatches++;
    offset += n;
  }
  t.same(counts, [1, 4, 4], 'one frame, then four per latent frame');
  t.equal(mismatches, 0, 'bit-identical to the whole decode');
});

t.test('tiled decode: each tile is decoded on its own and blended where tiles overlap', async (t) => {
  const { g, vae } = await setup();
  const z = g.get('dec.zr.z')!;  // [16, 3, 4, 6] -> [3, 9, 32, 48]
  const whole = await vae.decode(z);
  // Tiles of 24 x 32 pixels (3 x 4 latent) every 8 x 16: tiles start at latent rows 0, 1
  // and columns 0, 2, so pixel rows 0-7 x columns 0-15 belong to the first tile alone.
  const tiled = await vae.decode(z, { tiled: true, tileX: 32, tileY: 24, tileStrideX: 16, tileStrideY: 8 });
  t.same(tiled.shape, whole.shape);
  const zv = z.toTypedArray() as Float32Array;
  const crop = new Float32Array(16 * 3 * 3 * 4);
  for (let c = 0; c < 16 * 3; c++)
    for (let y = 0; y < 3; y++)
      for (let x = 0; x < 4; x++) crop[(c * 3 + y) * 4 + x] = zv[(c * 4 + y) * 6 + x];
  const first = toNumbers((await vae.decode(Tensor.fromTypedArray(crop, [16, 3, 3, 4]))).toTypedArray());  // [3, 9, 24, 32]
  const tv = toNumbers(tiled.toTypedArray());
  // The same arithmetic, though not always the same vector paths (the tile is a view of the
  // latent): up to 1.3e-6 apart on one AMD EPYC, bit for bit on another.
  let mismatches = 0;
  for (let cf = 0; cf < 3 * 9; cf++)
    for (let y = 0; y < 8; y++)
      for (let x = 0; x < 16; x++)
        if (Math.abs(tv[(cf * 32 + y) * 48 + x] - first[(cf * 24 + y) * 32 + x]) > 1e-5) mismatches++;
  t.equal(mismatches, 0, "where only the first tile reaches, the output is that tile's own decode (within 1e-5)");
  // The VAE's middle attention sees a whole tile, not the whole frame, so tiles differ from
  // the untiled decode everywhere; with these random tiny weights and 3 x 4 latent tiles the
  // difference is large (measured: max 0.67, mean 0.08), with real weights and the default
  // 34 x 34 latent tiles it is what the wrapper's tiled decode also shows.
  const err = maxAbsDiff(tiled, whole);
  t.ok(err > 0 && err < 1, `tiled vs untiled on tiny random weights: max abs difference ${err.toExponential(2)}`);
  const single = await vae.decode(z, { tiled: true });  // default tiles exceed this latent: one tile
  t.equal(maxAbsDiff(single, whole), 0, 'one tile covering everything is the untiled decode');
  await t.rejects(vae.decode(z, { tiled: true, tileX: 30 }), { code: 'WAN_INVALID_OPTION', message: 'Expected a positive multiple of 8 for tileX but received 30 of type number' });
  await t.rejects(vae.decode(z, { tileX: 32 }), { code: 'WAN_INVALID_OPTION', message: 'tileX was given but tiled is not true' });
  await t.rejects(vae.decode(z, { tiled: true, tileX: 32, tileStrideX: 40 }),
    { code: 'WAN_INVALID_OPTION', message: 'Expected tileStrideX below tileX, so that tiles overlap and blend, but received tileX 32, tileStrideX 40' });
  // Tiles that only touch leave seams (WanVideo Decode refuses them too).
  await t.rejects(vae.decode(z, { tiled: true, tileY: 32, tileStrideY: 32 }),
    { code: 'WAN_INVALID_OPTION', message: 'Expected tileStrideY below tileY, so that tiles overlap and blend, but received tileY 32, tileStrideY 32' });
});

t.test('looped decode: the first two latent frames decoded after the last three replace the first 5 frames', async (t) => {
  const { vae } = await setup();
  const [c, T, h, w] = [16, 4, 4, 6];
  const data = new Float32Array(c * T * h * w).map((_, i) => Math.sin(i * 0.37) * 0.8);
  const latent = Tensor.fromTypedArray(data, [c, T, h, w]);
  const looped = await vae.decode(latent, { looped: true });
  t.same(looped.shape, [3, 4 * T, 8 * h, 8 * w], '4T frames: a period of 4 frames per latent frame');
  const whole = await vae.decode(latent);  // [3, 13, 32, 48]
  // The wrap: latent frames 1, 2, 3, 0, 1 as one clip, min-max normalised over it to [-1, 1].
  const order = [1, 2, 3, 0, 1], plane = h * w;
  const clipData = new Float32Array(c * 5 * plane);
  for (let ch = 0; ch < c; ch++) order.forEach((f, j) => clipData.set(data.subarray((ch * T + f) * plane, (ch * T + f + 1) * plane), (ch * 5 + j) * plane));
  const clip = toNumbers((await vae.decode(Tensor.fromTypedArray(clipData, [c, 5, h, w]), { clamp: false })).toTypedArray());
  const min = Math.min(...clip), max = Math.max(...clip);
  const lv = toNumbers(looped.toTypedArray()), wv = toNumbers(whole.toTypedArray());
  const pixels = 32 * 48;
  let wrapErr = 0, restErr = 0;
  for (let ch = 0; ch < 3; ch++) {
    for (let f = 0; f < 8; f++)
      for (let p = 0; p < pixels; p++)
        wrapErr = Math.max(wrapErr, Math.abs(lv[(ch * 16 + f) * pixels + p] - ((clip[(ch * 17 + 9 + f) * pixels + p] - min) / (max - min) * 2 - 1)));
    for (let f = 8; f < 16; f++)
      for (let p = 0; p < pixels; p++)
        restErr = Math.max(restErr, Math.abs(lv[(ch * 16 + f) * pixels + p] - wv[(ch * 13 + f - 3) * pixels + p]));
  }
  t.ok(wrapErr <= 1e-5, `frames 0..7: the wrap clip's frames 9..16, min-max normalised (max abs ${wrapErr.toExponential(2)})`);
  t.equal(restErr, 0, 'frames 8..15: the plain decode\'s frames 5..12, bit for bit');
  await t.rejects(vae.decode(Tensor.fromTypedArray(data.subarray(0, c * 2 * plane), [c, 2, h, w]), { looped: true }),
    { code: 'WAN_INVALID_OPTION', message: /Expected a latent of at least 3 frames with looped but received 2/ });
  vae.dispose();
});

t.test('an abort during the last chunk of an encode rejects with WAN_ABORTED rather than resolving', async (t) => {
  // One frame is one chunk: the engine finishes it (about a second at 512x512 here) and only then
  // could see the abort.
  const vae = await Vae.load(path.join(weightsDir, 'tiny_vae.f32.safetensors'));
  const video = Tensor.fromTypedArray(new Float32Array(3 * 512 * 512), [3, 1, 512, 512]);
  const controller = new AbortController();
  setTimeout(() => controller.abort(), 50);
  await t.rejects(vae.encode(video, { signal: controller.signal }), { code: 'WAN_ABORTED' });
  const latent = await vae.encode(video);
  t.same(latent.shape, [16, 1, 64, 64], 'and the next call runs');
  vae.dispose();
});

t.test('bad shapes are clear errors', async (t) => {
  const { vae } = await setup();
  await t.rejects(vae.encode(Tensor.fromTypedArray(new Float32Array(3 * 2 * 16 * 16), [3, 2, 16, 16])),
    { code: 'WAN_INVALID_TENSOR', message: 'Vae.encode: video must be [3, F, H, W] with F = 4k + 1 and H, W multiples of 8, got [3, 2, 16, 16]' });
  await t.rejects(vae.encode(Tensor.fromTypedArray(new Float32Array(3 * 12 * 16), [3, 1, 12, 16])),
    { code: 'WAN_INVALID_TENSOR', message: /got \[3, 1, 12, 16\]/ });
  await t.rejects(vae.decode(Tensor.fromTypedArray(new Float32Array(8 * 4), [8, 1, 2, 2])),
    { code: 'WAN_INVALID_TENSOR', message: 'Vae.decode: latent must be [16, T, h, w], got [8, 1, 2, 2]' });
  await t.rejects(Vae.load(path.join(weightsDir, 'tiny_t2v_dit.f32.safetensors')),
    { code: 'WAN_BAD_CHECKPOINT', message: /not a Wan2\.1 VAE: no 'encoder\.conv1\.weight'/ });
});

t.test('estimateDecodeMemory: what it counts, and its options', async (t) => {
  const { vae } = await setup();
  const size = { frames: 3, height: 32, width: 48 };  // the latent of dec.zr: [16, 3, 4, 6]
  const stream = vae.estimateDecodeMemory({ ...size, call: 'decodeFrames' });
  const whole = vae.estimateDecodeMemory(size);
  for (const e of [stream, whole])
    t.equal(Object.values(e.breakdown).reduce((a, b) => a + b, 0), e.bytes, 'the parts add up to the estimate');
  const video = 4 * 3 * 9 * 32 * 48;  // [3, 9, 32, 48] f32
  t.equal(stream.breakdown.output, 4 * 3 * 4 * 32 * 48, 'decodeFrames() holds one chunk of 4 frames at a time');
  t.equal(whole.breakdown.output, 2 * video, 'decode() ends holding the chunks and the assembled video');
  t.equal(whole.breakdown.weights, stream.breakdown.weights);
  t.ok(stream.breakdown.caches > 0 && stream.breakdown.activations > 0, 'caches and activations are counted');
  t.match(stream.peakAt, /^chunk \d+, decoder\./, `the peak is located: ${stream.peakAt}`);
  const longer = vae.estimateDecodeMemory({ ...size, frames: 21, call: 'decodeFrames' });
  t.ok(longer.bytes <= stream.bytes * 1.1, 'streaming memory does not grow with the number of frames');
  const tiled = vae.estimateDecodeMemory({ ...size, call: 'decodeFrames', tiled: true, tileX: 32, tileY: 24, tileStrideX: 16, tileStrideY: 8 });
  t.ok(tiled.breakdown.caches > stream.breakdown.caches, 'each tile keeps its own feature caches');
  t.match(tiled.peakAt, /tile \d+/);

  const bad = (o: unknown, message: string | RegExp) =>
    t.throws(() => vae.estimateDecodeMemory(o as never), { code: 'WAN_INVALID_OPTION', message });
  bad(undefined, 'Expected an options object for estimateDecodeMemory but received undefined');
  bad({ height: 30, width: 48 }, 'Expected a positive multiple of 8 for height but received 30 of type number');
  bad({ height: 32 }, 'Expected a positive multiple of 8 for width but received undefined');
  bad({ ...size, frames: 0 }, 'Expected a positive integer for frames but received 0 of type number');
  bad({ ...size, call: 'encode' }, 'Expected one of decode, decodeFrames for call but received "encode" of type string');
  bad({ ...size, tileX: 32 }, 'tileX was given but tiled is not true');
  bad({ ...size, tiled: true, tileX: 32, tileStrideX: 40 },
    'Expected tileStrideX below tileX, so that tiles overlap and blend, but received tileX 32, tileStrideX 40');
  vae.dispose();
  t.throws(() => vae.estimateDecodeMemory(size), { code: 'WAN_INVALID_OPTION', message: 'the Vae has been disposed' });
});
