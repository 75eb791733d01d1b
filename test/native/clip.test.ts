// The CLIP vision encoder against the official CLIPModel.visual (shared/golden/golden_clip), the
// Hugging Face and open_clip namings of the same weights, image decoding and option validation.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { ClipVisionEncoder, loadImage, loadSafetensors, Tensor } from '../../lib/index';
import {
  buildSafetensors, ELEMENT_SIZE, goldenDir, manifestsDir, maxAbsDiff, readRawSafetensors, SparseEntry, tempDir, toNumbers, weightsDir,
  writeSparseSafetensors,
} from '../helpers';

const TOLERANCE = 1e-5;  // max abs error against the official fp32 numbers
const TINY = { numHeads: 4 };  // the tiny golden's 64-wide tower has 4 heads; not inferable from shapes

const golden = loadSafetensors(path.join(goldenDir, 'golden_clip.safetensors')).then((r) => r.tensors);

function tinyPath(dtype = 'f32'): string {
  return path.join(weightsDir, `tiny_clip.${dtype}.safetensors`);
}

// ---------------------------------------------------------------------------------------------
// Other namings of the tiny weights, written the way those tools lay the tensors out.

type Raw = ReturnType<typeof readRawSafetensors>;
type Entry = { dtype: string; shape: number[]; bytes: Uint8Array };

function entry(raw: Raw, key: string, shape?: number[]): Entry {
  const e = raw.header[key];
  if (!e) throw new Error(`no ${key} in the tiny weights`);
  return { dtype: e.dtype, shape: shape ?? e.shape, bytes: raw.data.subarray(e.data_offsets[0], e.data_offsets[1]) };
}

// Rows [part * n, (part + 1) * n) of a tensor whose first dimension is 3 n (q, k, v of to_qkv).
function third(e: Entry, part: number): Entry {
  const rows = e.shape[0] / 3;
  const rowBytes = (e.bytes.length / e.shape[0]);
  return { dtype: e.dtype, shape: [rows, ...e.shape.slice(1)], bytes: e.bytes.subarray(part * rows * rowBytes, (part + 1) * rows * rowBytes) };
}

// [a, b] -> [b, a] (the HF visual_projection is the transpose of the official head).
function transposed(e: Entry): Entry {
  const [a, b] = e.shape, size = ELEMENT_SIZE[e.dtype];
  const out = new Uint8Array(e.bytes.length);
  for (let i = 0; i < a; i++)
    for (let j = 0; j < b; j++) out.set(e.bytes.subarray((i * b + j) * size, (i * b + j + 1) * size), (j * a + i) * size);
  return { dtype: e.dtype, shape: [b, a], bytes: out };
}

function layerCount(raw: Raw): number {
  let n = 0;
  while (raw.header[`visual.transformer.${n}.norm1.weight`]) n++;
  return n;
}

// As transformers' CLIPVisionModelWithProjection state dict (ComfyUI's clip_vision_h layout).
function hfClipTensors(raw: Raw): Record<string, Entry> {
  const dim = raw.header['visual.cls_embedding'].shape[2];
  const tokens = raw.header['visual.pos_embedding'].shape[1];
  const out: Record<string, Entry> = {
    'vision_model.embeddings.class_embedding': entry(raw, 'visual.cls_embedding', [dim]),
    'vision_model.embeddings.patch_embedding.weight': entry(raw, 'visual.patch_embedding.weight'),
    'vision_model.embeddings.position_embedding.weight': entry(raw, 'visual.pos_embedding', [tokens, dim]),
    'vision_model.embeddings.position_ids': { dtype: 'I64', shape: [1, tokens], bytes: new Uint8Array(new BigInt64Array(tokens).map((_, i) => BigInt(i)).buffer) },
    'vision_model.pre_layrnorm.weight': entry(raw, 'visual.pre_norm.weight'),
    'vision_model.pre_layrnorm.bias': entry(raw, 'visual.pre_norm.bias'),
    'vision_model.post_layernorm.weight': entry(raw, 'visual.post_norm.weight'),
    'vision_model.post_layernorm.bias': entry(raw, 'visual.post_norm.bias'),
    'visual_projection.weight': transposed(entry(raw, 'visual.head')),
  };
  for (let i = 0; i < layerCount(raw); i++) {
    const o = `visual.transformer.${i}.`, h = `vision_model.encoder.layers.${i}.`;
    for (const p of ['weight', 'bias']) {
      out[`${h}layer_norm1.${p}`] = entry(raw, `${o}norm1.${p}`);
      out[`${h}layer_norm2.${p}`] = entry(raw, `${o}norm2.${p}`);
      ['q', 'k', 'v'].forEach((x, part) => { out[`${h}self_attn.${x}_proj.${p}`] = third(entry(raw, `${o}attn.to_qkv.${p}`), part); });
      out[`${h}self_attn.out_proj.${p}`] = entry(raw, `${o}attn.proj.${p}`);
      out[`${h}mlp.fc1.${p}`] = entry(raw, `${o}mlp.0.${p}`);
      out[`${h}mlp.fc2.${p}`] = entry(raw, `${o}mlp.2.${p}`);
    }
  }
  return out;
}

// As open_clip's CLIP state dict (visual tower; a stand-in text tower to be ignored).
function openClipTensors(raw: Raw): Record<string, Entry> {
  const dim = raw.header['visual.cls_embedding'].shape[2];
  const tokens = raw.header['visual.pos_embedding'].shape[1];
  const out: Record<string, Entry> = {
    'visual.class_embedding': entry(raw, 'visual.cls_embedding', [dim]),
    'visual.positional_embedding': entry(raw, 'visual.pos_embedding', [tokens, dim]),
    'visual.conv1.weight': entry(raw, 'visual.patch_embedding.weight'),
    'visual.ln_pre.weight': entry(raw, 'visual.pre_norm.weight'),
    'visual.ln_pre.bias': entry(raw, 'visual.pre_norm.bias'),
    'visual.ln_post.weight': entry(raw, 'visual.post_norm.weight'),
    'visual.ln_post.bias': entry(raw, 'visual.post_norm.bias'),
    'visual.proj': entry(raw, 'visual.head'),
    'logit_scale': entry(raw, 'log_scale'),
    'token_embedding.weight': entry(raw, 'textual.token_embedding.weight'),
  };
  for (let i = 0; i < layerCount(raw); i++) {
    const o = `visual.transformer.${i}.`, r = `visual.transformer.resblocks.${i}.`;
    for (const p of ['weight', 'bias']) {
      out[`${r}ln_1.${p}`] = entry(raw, `${o}norm1.${p}`);
      out[`${r}ln_2.${p}`] = entry(raw, `${o}norm2.${p}`);
      out[`${r}attn.in_proj_${p}`] = entry(raw, `${o}attn.to_qkv.${p}`);
      out[`${r}attn.out_proj.${p}`] = entry(raw, `${o}attn.proj.${p}`);
      out[`${r}mlp.c_fc.${p}`] = entry(raw, `${o}mlp.0.${p}`);
      out[`${r}mlp.c_proj.${p}`] = entry(raw, `${o}mlp.2.${p}`);
    }
  }
  return out;
}

function writeFile(dir: string, name: string, tensors: Record<string, Entry>): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, buildSafetensors(tensors));
  return file;
}

// ---------------------------------------------------------------------------------------------

t.test('the official tiny CLIP matches CLIPModel.visual, from the F32 and the BF16 file', async (t) => {
  const g = await golden;
  const video = g.get('video')!;  // [3, 1, 40, 48] in [-1, 1]
  for (const dtype of ['f32', 'bf16']) {
    const clip = await ClipVisionEncoder.load(tinyPath(dtype), TINY);
    t.same(clip.config, { imageSize: 56, patchSize: 14, dim: 64, mlpDim: 256, numHeads: 4, numLayers: 3, tokens: 17, layout: 'official', device: 'cpu' });
    // crop 'disabled' is the official preprocessing: stretch to 56 x 56.
    const { embeds, intermediates } = await clip.trace(video, { crop: 'disabled' });
    const pairs: [string, string][] = [
      ['preprocessed', 'preprocessed'],
      ['patch_embedding_out', 'im.patch_embedding_out'],
      ['block0_out', 'im.block0_out'],
      ['block1_out', 'im.block1_out'],
      ['out', 'out_use_31_block'],
      ['all_blocks', 'out_all_blocks'],
    ];
    for (const [mine, theirs] of pairs) {
      const a = intermediates.get(mine), b = g.get(theirs)!;
      t.ok(a, `${mine} is traced`);
      if (!a) continue;
      t.same(a.shape, b.shape, `${mine} shape`);
      const err = maxAbsDiff(a, b);
      t.ok(err <= TOLERANCE, `${dtype} ${mine} vs ${theirs}: max abs error ${err.toExponential(2)} <= ${TOLERANCE}`);
    }
    t.same(embeds.shape, [1, 17, 64]);
    const { clipEmbeds, negativeClipEmbeds } = await clip.encode(video, { crop: 'disabled' });
    t.equal(negativeClipEmbeds, undefined);
    const err = maxAbsDiff(clipEmbeds, g.get('out_use_31_block')!);
    t.ok(err <= TOLERANCE, `${dtype} encode(): max abs error ${err.toExponential(2)}`);
    // A [3, H, W] image is the same as a one-frame video.
    const image = Tensor.fromTypedArray(video.toTypedArray() as Float32Array, [3, 40, 48]);
    t.equal(maxAbsDiff((await clip.encode(image, { crop: 'disabled' })).clipEmbeds, clipEmbeds), 0, '[3, H, W] == [3, 1, H, W]');
    clip.dispose();
  }
});

t.test('Hugging Face (clip_vision_h) and open_clip namings give the same outputs', async (t) => {
  const g = await golden;
  const video = g.get('video')!;
  const dir = tempDir('wan-clip-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const official = await ClipVisionEncoder.load(tinyPath(), TINY);
  const reference = await official.trace(video, { crop: 'disabled' });
  for (const dtype of ['f32', 'bf16']) {
    const raw = readRawSafetensors(tinyPath(dtype));
    for (const [layout, tensors] of [['hf-clip', hfClipTensors(raw)], ['open-clip', openClipTensors(raw)]] as const) {
      const file = writeFile(dir, `${layout}.${dtype}.safetensors`, tensors);
      const clip = await ClipVisionEncoder.load(file, TINY);
      t.equal(clip.config.layout, layout);
      t.equal(clip.config.numLayers, 3);
      const { embeds, intermediates } = await clip.trace(video, { crop: 'disabled' });
      t.equal(maxAbsDiff(embeds, reference.embeds), 0, `${layout} ${dtype}: identical output`);
      t.equal(maxAbsDiff(intermediates.get('all_blocks')!, reference.intermediates.get('all_blocks')!), 0,
        `${layout} ${dtype}: identical last block`);
      clip.dispose();
    }
  }

  // An incomplete q/k/v triple is reported with every missing and unexpected key at once.
  const broken = hfClipTensors(readRawSafetensors(tinyPath()));
  delete broken['vision_model.encoder.layers.1.self_attn.k_proj.weight'];
  const file = writeFile(dir, 'broken.safetensors', broken);
  await t.rejects(ClipVisionEncoder.load(file, TINY), {
    code: 'WAN_BAD_CHECKPOINT',
    message: /1 missing \[visual\.transformer\.1\.attn\.to_qkv\.weight\].*2 unexpected \[vision_model\.encoder\.layers\.1\.self_attn\.q_proj\.weight, vision_model\.encoder\.layers\.1\.self_attn\.v_proj\.weight\]/,
  });
});

t.test('the real ViT-H/14 shapes: official .pth names and ComfyUI clip_vision_h names', async (t) => {
  const dir = tempDir('wan-clip-full-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const m = JSON.parse(fs.readFileSync(path.join(manifestsDir, 'clip_xlm_roberta_vit_h_14.json'), 'utf8'));
  const expected = { imageSize: 224, patchSize: 14, dim: 1280, mlpDim: 5120, numHeads: 16, numLayers: 32, tokens: 257 };
  // Official: the whole XLMRobertaCLIP state dict (text tower and log_scale included, ignored).
  const official = writeSparseSafetensors(path.join(dir, 'official.safetensors'), m.tensors);
  const a = await ClipVisionEncoder.load(official, { populate: false });  // maps, reads no data
  t.same(a.config, { ...expected, layout: 'official', device: 'cpu' });
  a.dispose();
  // Hugging Face CLIPVisionModelWithProjection names and shapes, as in clip_vision_h.safetensors.
  const shapes = new Map<string, number[]>(m.tensors.map((e: SparseEntry) => [e.key, e.shape]));
  const hf: SparseEntry[] = [
    { key: 'vision_model.embeddings.class_embedding', shape: [1280] },
    { key: 'vision_model.embeddings.patch_embedding.weight', shape: shapes.get('visual.patch_embedding.weight')! },
    { key: 'vision_model.embeddings.position_embedding.weight', shape: [257, 1280] },
    { key: 'vision_model.pre_layrnorm.weight', shape: [1280] }, { key: 'vision_model.pre_layrnorm.bias', shape: [1280] },
    { key: 'vision_model.post_layernorm.weight', shape: [1280] }, { key: 'vision_model.post_layernorm.bias', shape: [1280] },
    { key: 'visual_projection.weight', shape: [1024, 1280] },
  ];
  for (let i = 0; i < 32; i++) {
    const h = `vision_model.encoder.layers.${i}.`;
    for (const [name, out, inp] of [['self_attn.q_proj', 1280, 1280], ['self_attn.k_proj', 1280, 1280], ['self_attn.v_proj', 1280, 1280],
      ['self_attn.out_proj', 1280, 1280], ['mlp.fc1', 5120, 1280], ['mlp.fc2', 1280, 5120]] as const)
      hf.push({ key: `${h}${name}.weight`, shape: [out, inp] }, { key: `${h}${name}.bias`, shape: [out] });
    for (const n of ['layer_norm1', 'layer_norm2']) hf.push({ key: `${h}${n}.weight`, shape: [1280] }, { key: `${h}${n}.bias`, shape: [1280] });
  }
  const comfy = writeSparseSafetensors(path.join(dir, 'clip_vision_h.safetensors'), hf, { format: 'pt' });
  const b = await ClipVisionEncoder.load(comfy, { populate: false });
  t.same(b.config, { ...expected, layout: 'hf-clip', device: 'cpu' });
  b.dispose();
});

t.test('load errors name what is wrong', async (t) => {
  await t.rejects(ClipVisionEncoder.load(tinyPath()), {
    code: 'WAN_INVALID_OPTION', message: /numHeads cannot be inferred for a CLIP vision width of 64.*pass numHeads/,
  });
  await t.rejects(ClipVisionEncoder.load(path.join(weightsDir, 'tiny_vae.f32.safetensors')), {
    code: 'WAN_BAD_CHECKPOINT', message: /not a CLIP vision encoder: no tensor 'visual\.patch_embedding\.weight'/,
  });
  await t.rejects(ClipVisionEncoder.load(tinyPath(), { numHeads: 0 }), {
    code: 'WAN_INVALID_OPTION', message: 'Expected a positive integer for numHeads but received 0 of type number',
  });
  await t.rejects(ClipVisionEncoder.load(tinyPath(), { numHeads: 5 }), {
    code: 'WAN_INVALID_OPTION', message: /numHeads: 5 does not divide the width 64/,
  });
});

t.test('two images: strengths and the four ways of combining them; a negative image', async (t) => {
  const g = await golden;
  const clip = await ClipVisionEncoder.load(tinyPath(), TINY);
  const first = g.get('video')!;
  const values = first.toTypedArray() as Float32Array;
  const second = Tensor.fromTypedArray(values.map((v) => -0.5 * v), [3, 1, 40, 48]);
  const e1 = toNumbers((await clip.encode(first, { crop: 'disabled' })).clipEmbeds.toTypedArray());
  const e2 = toNumbers((await clip.encode(second, { crop: 'disabled' })).clipEmbeds.toTypedArray());
  const s1 = 0.75, s2 = 2;
  const base = { crop: 'disabled' as const, image2: second, strength1: s1, strength2: s2 };
  const close = (a: Tensor, expected: number[], what: string) => {
    const got = toNumbers(a.toTypedArray());
    let err = got.length === expected.length ? 0 : Infinity;
    for (let i = 0; i < got.length; i++) err = Math.max(err, Math.abs(got[i] - expected[i]));
    // Two images run as one batch, which moves the matmuls' rounding slightly (about 3e-6 here).
    t.ok(err <= 1e-5, `${what}: max abs error ${err.toExponential(2)} <= 1e-5`);
  };
  const average = (await clip.encode(first, { ...base, combineEmbeds: 'average' })).clipEmbeds;
  t.same(average.shape, [1, 17, 64]);
  close(average, e1.map((v, i) => (s1 * v + s2 * e2[i]) / 2), 'average');
  const sum = (await clip.encode(first, { ...base, combineEmbeds: 'sum' })).clipEmbeds;
  close(sum, e1.map((v, i) => s1 * v + s2 * e2[i]), 'sum');
  const concat = (await clip.encode(first, { ...base, combineEmbeds: 'concat' })).clipEmbeds;
  t.same(concat.shape, [1, 34, 64]);
  close(concat, [...e1.map((v) => s1 * v), ...e2.map((v) => s2 * v)], 'concat');
  const batch = (await clip.encode(first, { ...base, combineEmbeds: 'batch' })).clipEmbeds;
  t.same(batch.shape, [2, 17, 64]);
  close(batch, [...e1.map((v) => s1 * v), ...e2.map((v) => s2 * v)], 'batch');
  // Default combine is average; one image ignores strength2 and the combine mode.
  close((await clip.encode(first, { crop: 'disabled', image2: second })).clipEmbeds, e1.map((v, i) => (v + e2[i]) / 2), 'default average');
  close((await clip.encode(first, { crop: 'disabled', strength1: 0.5, strength2: 3, combineEmbeds: 'concat' })).clipEmbeds,
    e1.map((v) => 0.5 * v), 'one image, strength1');

  const withNegative = await clip.encode(first, { crop: 'disabled', strength1: 2, negativeImage: second });
  close(withNegative.clipEmbeds, e1.map((v) => 2 * v), 'positive with a negative image');
  t.ok(withNegative.negativeClipEmbeds);
  close(withNegative.negativeClipEmbeds!, e2, 'negative image, unweighted');
});

// torch's F.interpolate(mode='bicubic', antialias=True) in float64, one axis of a [C, H, W]
// array at a time (width, then height): for each output pixel the cubic (a = -0.5) over the
// source pixels within 2 x max(scale, 1) of its centre, stretched by the scale when shrinking,
// the weights normalised to sum 1 (aten UpSampleKernel _compute_indices_weights_aa, as PIL).
function resizeAntialiased(x: Float64Array, [C, H, W]: number[], outH: number, outW: number): Float64Array {
  const cubic = (d: number) => {
    const a = -0.5, u = Math.abs(d);
    return u < 1 ? ((a + 2) * u - (a + 3)) * u * u + 1 : u < 2 ? (((u - 5) * u + 8) * u - 4) * a : 0;
  };
  const axis = (src: Float64Array, n: number, out: number, stride: number, count: number, outer: number, within: number) => {
    const scale = n / out, support = 2 * Math.max(scale, 1), invScale = scale > 1 ? 1 / scale : 1;
    const dst = new Float64Array(src.length / n * out);
    for (let i = 0; i < out; i++) {
      const centre = scale * (i + 0.5);
      const lo = Math.max(Math.trunc(centre - support + 0.5), 0), hi = Math.min(Math.trunc(centre + support + 0.5), n);
      const w = Array.from({ length: hi - lo }, (_, j) => cubic((j + lo - centre + 0.5) * invScale));
      const total = w.reduce((p, q) => p + q, 0);
      for (let o = 0; o < outer; o++) for (let k = 0; k < within; k++) {
        let v = 0;
        for (let j = lo; j < hi; j++) v += src[o * n * stride + j * stride + k] * w[j - lo] / total;
        dst[o * out * stride + i * stride + k] = v;
      }
    }
    return dst;
  };
  const wide = axis(x, W, outW, 1, 0, C * H, 1);       // rows of W -> outW
  return axis(wide, H, outH, outW, 0, C, outW);        // columns of H -> outH
}

t.test('crop: center is ComfyUI\'s clip_preprocess (antialiased, cut, 8 bits); disabled stretches', async (t) => {
  const clip = await ClipVisionEncoder.load(tinyPath(), TINY);
  // Images of bytes, enlarged (40 x 70 -> 56 x 98) and reduced (120 x 200 -> 56 x 93, where the
  // antialiasing filter widens): the middle 56 columns, rounded to 8 bits, against the float64
  // reference. Rounding can tip a value that lies within float32's error of a half step: a few
  // pixels may be one step (1/255) apart, no more.
  const mean = [0.48145466, 0.4578275, 0.40821073], std = [0.26862954, 0.26130258, 0.27577711];
  for (const [h, w, wide] of [[40, 70, 98], [120, 200, 93]]) {
    const bytes = Float64Array.from({ length: 3 * h * w }, (_, i) => Math.round(127.5 + 120 * Math.sin(i * 0.37) * Math.cos(i * 0.011)));
    const image = Tensor.fromTypedArray(Float32Array.from(bytes, (b) => b / 255 * 2 - 1), [3, h, w]);
    const got = toNumbers((await clip.trace(image, { crop: 'center' })).intermediates.get('preprocessed')!.toTypedArray());
    const resized = resizeAntialiased(Float64Array.from(bytes, (b) => b / 255), [3, h, w], 56, wide);
    const left = Math.trunc((wide - 56) / 2);
    let apart = 0, worst = 0;
    for (let c = 0; c < 3; c++) for (let y = 0; y < 56; y++) for (let x = 0; x < 56; x++) {
      const v = Math.round(Math.min(Math.max(resized[(c * 56 + y) * wide + x + left] * 255, 0), 255)) / 255;
      const err = Math.abs(got[(c * 56 + y) * 56 + x] - (v - mean[c]) / std[c]);
      worst = Math.max(worst, err);
      if (err > 1e-5) apart++;
    }
    t.ok(worst <= 1 / 255 / std[1] + 1e-5, `${h} x ${w}: at most one 8-bit step apart (max abs ${worst.toExponential(2)})`);
    t.ok(apart <= 10, `${h} x ${w}: ${apart} of ${3 * 56 * 56} values a step apart, the rest within 1e-5`);
  }
  // A wide image, dark at its left and right eighths and white between: the centre crop of the
  // 56 x 112 resize sees source columns 10-30 only (white), the stretch sees the dark bands too.
  const h = 20, w = 40;
  const wide = new Float32Array(3 * h * w);
  for (let c = 0; c < 3; c++) for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) wide[(c * h + y) * w + x] = x >= 5 && x < 35 ? 1 : -1;
  const image = Tensor.fromTypedArray(wide, [3, h, w]);
  const centre = toNumbers((await clip.trace(image, { crop: 'center' })).intermediates.get('preprocessed')!.toTypedArray());
  const stretched = toNumbers((await clip.trace(image, { crop: 'disabled' })).intermediates.get('preprocessed')!.toTypedArray());
  const white = (0 + 1 - 0.48145466) / 0.26862954;  // channel 0 of +1 after normalisation
  const atColumn = (px: number[], x: number) => px[28 * 56 + x];  // channel 0, row 28
  t.ok(Math.abs(atColumn(centre, 2) - white) < 1e-4 && Math.abs(atColumn(centre, 53) - white) < 1e-4, 'centre crop: white edge to edge');
  t.ok(atColumn(stretched, 2) < 0 && atColumn(stretched, 53) < 0, 'stretch: dark bands at both sides');
  t.ok(Math.abs(atColumn(stretched, 28) - white) < 1e-4, 'stretch: white middle');
});

t.test('images: PNG, WebP and JPEG files or bytes decode to [3, H, W] in [-1, 1]', async (t) => {
  const sharp = require('sharp');
  const dir = tempDir('wan-image-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const width = 7, height = 5;
  const rgba = new Uint8Array(width * height * 4);
  for (let i = 0; i < width * height; i++) {
    rgba[4 * i] = (i * 37) % 256;
    rgba[4 * i + 1] = (i * 91 + 13) % 256;
    rgba[4 * i + 2] = i === 0 ? 255 : (i * 53 + 200) % 256;
    rgba[4 * i + 3] = 1 + ((i * 17) % 255);  // alpha is dropped, not composited (never 0: lossless WebP may rewrite fully transparent pixels)
  }
  const expected: number[] = [];
  for (let c = 0; c < 3; c++) for (let i = 0; i < width * height; i++) expected.push(Math.fround(rgba[4 * i + c] / 127.5 - 1));
  const raw = { raw: { width, height, channels: 4 } };
  const png: Buffer = await sharp(Buffer.from(rgba), raw).png().toBuffer();
  const webp: Buffer = await sharp(Buffer.from(rgba), raw).webp({ lossless: true }).toBuffer();
  const pngFile = path.join(dir, 'image.png');
  fs.writeFileSync(pngFile, png);
  for (const [what, input] of [['PNG bytes', png], ['PNG file', pngFile], ['lossless WebP', webp], ['Uint8Array', new Uint8Array(png)]] as const) {
    const img = await loadImage(input);
    t.same(img.shape, [3, height, width], `${what}: shape`);
    t.equal(img.dtype, 'f32');
    const got = toNumbers(img.toTypedArray());
    let err = 0;
    for (let i = 0; i < got.length; i++) err = Math.max(err, Math.abs(got[i] - expected[i]));
    t.ok(err <= 1e-6, `${what}: max abs error ${err.toExponential(2)} <= 1e-6`);
    t.equal(got[2 * width * height], 1, `${what}: 255 is exactly 1`);
  }
  // JPEG is lossy: a flat grey image stays (nearly) flat.
  const jpeg: Buffer = await sharp({ create: { width: 16, height: 8, channels: 3, background: { r: 128, g: 128, b: 128 } } }).jpeg().toBuffer();
  const grey = toNumbers((await loadImage(jpeg)).toTypedArray());
  t.equal(grey.length, 3 * 16 * 8);
  t.ok(grey.every((v) => Math.abs(v - (128 / 127.5 - 1)) < 0.02), 'JPEG grey decodes to about 0');
  // Greyscale becomes three equal channels.
  const mono: Buffer = await sharp(Buffer.from([0, 64, 128, 255]), { raw: { width: 2, height: 2, channels: 1 } }).png().toBuffer();
  const m = await loadImage(mono);
  t.same(m.shape, [3, 2, 2]);
  const mv = toNumbers(m.toTypedArray());
  t.same(mv.slice(0, 4), mv.slice(4, 8));
  t.same(mv.slice(0, 4), mv.slice(8, 12));
  t.equal(mv[0], -1);

  // The encoder takes a path or bytes as well as a tensor.
  const clip = await ClipVisionEncoder.load(tinyPath(), TINY);
  const fromTensor = (await clip.encode(await loadImage(png))).clipEmbeds;
  t.equal(maxAbsDiff((await clip.encode(pngFile)).clipEmbeds, fromTensor), 0, 'encode(path) == encode(loadImage(path))');
  t.equal(maxAbsDiff((await clip.encode(png)).clipEmbeds, fromTensor), 0, 'encode(bytes)');

  await t.rejects(loadImage(path.join(dir, 'missing.png')), { code: 'WAN_IO', message: /image file not found: .*missing\.png/ });
  await t.rejects(loadImage(Buffer.from('not an image')), { code: 'WAN_INVALID_OPTION', message: /could not be decoded/ });
  const gif: Buffer = await sharp(Buffer.from(rgba), raw).gif().toBuffer();
  await t.rejects(loadImage(gif), { code: 'WAN_INVALID_OPTION', message: 'Expected one of png, jpeg, webp images but the image bytes is gif' });
  await t.rejects(loadImage(42 as never), {
    code: 'WAN_INVALID_OPTION', message: 'Expected a file path, a Buffer or a Uint8Array for image but received 42 of type number',
  });
});

t.test('options are validated with messages naming the option', async (t) => {
  const g = await golden;
  const clip = await ClipVisionEncoder.load(tinyPath(), TINY);
  const video = g.get('video')!;
  const cases: [object, RegExp | string][] = [
    [{ crop: 'left' }, 'Expected one of center, disabled for crop but received "left" of type string'],
    [{ combineEmbeds: 'max' }, 'Expected one of average, sum, concat, batch for combineEmbeds but received "max" of type string'],
    [{ strength1: 11 }, 'Expected a number between 0 and 10 for strength1 but received 11 of type number'],
    [{ strength2: -0.5 }, 'Expected a number between 0 and 10 for strength2 but received -0.5 of type number'],
    [{ strength1: '1' }, 'Expected a number between 0 and 10 for strength1 but received "1" of type string'],
    [{ image2: 7 }, 'Expected a Tensor, a file path or image bytes for image2 but received 7 of type number'],
  ];
  for (const [options, message] of cases)
    await t.rejects(clip.encode(video, options as never), { code: 'WAN_INVALID_OPTION', message });
  await t.rejects(clip.encode(video, null as never), { code: 'WAN_INVALID_OPTION', message: 'Expected an object for options but received null' });
  const flat = Tensor.fromTypedArray(new Float32Array(3 * 4 * 4), [3, 2, 2, 4]);
  await t.rejects(clip.encode(flat), {
    code: 'WAN_INVALID_TENSOR', message: 'Expected a [3, H, W] or [3, 1, H, W] tensor in [-1, 1] for image but received shape [3, 2, 2, 4]',
  });
  const ints = Tensor.fromTypedArray(new Int32Array(3 * 4), [3, 2, 2]);
  await t.rejects(clip.encode(ints), { code: 'WAN_INVALID_TENSOR', message: 'Expected a floating-point tensor for image but received dtype i32' });

  const controller = new AbortController();
  controller.abort();
  await t.rejects(clip.encode(video, { signal: controller.signal }), { code: 'WAN_ABORTED' });

  clip.dispose();
  await t.rejects(clip.encode(video), { code: 'WAN_INVALID_OPTION', message: 'the ClipVisionEncoder has been disposed' });
});

t.test('progress and asyncDispose', async (t) => {
  const g = await golden;
  const stages: string[] = [];
  {
    await using clip = await ClipVisionEncoder.load(tinyPath(), { ...TINY, onProgress: (p) => stages.push(`${p.stage}:${p.step}`) });
    await clip.encode(g.get('video')!, { negativeImage: g.get('video')!, onProgress: (p) => stages.push(`${p.stage}:${p.step}/${p.totalSteps}`) });
  }
  t.same(stages, ['load:0', 'load:1', 'clip:0/2', 'clip:1/2', 'clip:2/2']);
});
