// LoRAs merged at load (WanModel.load(path, { loras })): every key family gives the weights a
// merge computed here in float64 would (W + strength * alpha / rank * up @ down, W + strength *
// diff), rounded to the stored dtype, and the model computes exactly what a checkpoint holding
// those weights computes. Unmerged (mergeLoras false), the pairs apply at run time: the same
// function without the rounding, and with per-step strengths.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { emptyEmbeds, loadCheckpoint, loadSafetensors, Sampler, saveSafetensors, Tensor, WanModel } from '../../lib/index';
import type { ModelLoaderOptions, WanForwardInput } from '../../lib/index';
import { decodeE4m3fn, encodeE4m3fn, fixturesDir, goldenDir, maxAbsDiff, tempDir, weightsDir } from '../helpers';

type LoraOptions = NonNullable<ModelLoaderOptions['loras']>[number];

const dir = tempDir('wan-lora-');
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

const TINY = { numHeads: 2, textLen: 16 };
const RANK = 4;
const base32 = path.join(weightsDir, 'tiny_t2v_dit.f32.safetensors');
const base16 = path.join(weightsDir, 'tiny_t2v_dit.bf16.safetensors');

// mulberry32: the same numbers on every run.
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = random(7);
const values = (n: number, scale: number) => Float32Array.from({ length: n }, () => Math.fround((rand() * 2 - 1) * scale));

// float32 -> bfloat16, round to nearest even (independent of the addon's conversion).
function bf16(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer);
  u[0] = ((u[0] + 0x7fff + ((u[0] >>> 16) & 1)) & 0xffff0000) >>> 0;
  return f[0];
}

// One update of one official weight, as a reference merge sees it.
interface Update { target: string; factor: number; up?: Float32Array; down?: Float32Array; diff?: Float32Array; block?: number }

// A low-rank pair for the weight `module.weight` of shape [out, in] (or a difference).
function pair(module: string, out: number, inp: number, strength: number, alpha?: number): Update {
  const up = values(out * RANK, 0.2), down = values(RANK * inp, 0.2);
  const block = /^blocks\.(\d+)\./.exec(module);
  return { target: `${module}.weight`, factor: (strength * (alpha ?? RANK)) / RANK, up, down, block: block ? Number(block[1]) : undefined };
}
function diff(target: string, n: number, strength: number): Update {
  const block = /^blocks\.(\d+)\./.exec(target);
  return { target, factor: strength, diff: values(n, 0.05), block: block ? Number(block[1]) : undefined };
}

// W + sum of factor * (up @ down | diff) in float64, rounded once to float32 (then by `round`).
// `exact` gives base values that float32 cannot hold (decoded scaled fp8).
function merged(base: Map<string, Tensor>, updates: Update[], round: (x: number) => number = Math.fround,
                exact: Map<string, Float64Array> = new Map()): Map<string, Tensor> {
  const out = new Map(base);
  const targets = [...new Set(updates.map((u) => u.target))];
  for (const target of targets) {
    const w = base.get(target)!;
    const acc = exact.get(target)?.slice() ?? Float64Array.from(w.toTypedArray() as Float32Array);
    for (const u of updates.filter((x) => x.target === target)) {
      if (u.diff) {
        for (let i = 0; i < acc.length; i++) acc[i] += u.factor * u.diff[i];
        continue;
      }
      const rows = w.shape[0], cols = acc.length / rows;
      for (let o = 0; o < rows; o++)
        for (let i = 0; i < cols; i++) {
          let dot = 0;
          for (let k = 0; k < RANK; k++) dot += u.up![o * RANK + k] * u.down![k * cols + i];
          acc[o * cols + i] += u.factor * dot;
        }
    }
    out.set(target, Tensor.fromTypedArray(Float32Array.from(acc, (x) => round(Math.fround(x))), w.shape, w.dtype));
  }
  return out;
}

const f32 = (a: Float32Array, shape: number[]) => Tensor.fromTypedArray(a, shape);

// The file of a LoRA: for each update, its keys in a family's spelling.
type Namer = (module: string) => { down: string; up: string; alpha?: string };
async function loraFile(name: string, updates: Update[], namer: Namer, extra: Record<string, Tensor> = {},
                        alphas: Map<string, number> = new Map()): Promise<string> {
  const tensors: Record<string, Tensor> = { ...extra };
  for (const u of updates) {
    if (!u.up) continue;
    const module = u.target.replace(/\.weight$/, '');
    const keys = namer(module);
    const cols = u.down!.length / RANK;
    tensors[keys.down] = f32(u.down!, [RANK, cols]);
    tensors[keys.up] = f32(u.up, [u.up.length / RANK, RANK]);
    const alpha = alphas.get(u.target);
    if (alpha !== undefined) tensors[keys.alpha ?? `${module}.alpha`] = f32(new Float32Array([alpha]), []);
  }
  const file = path.join(dir, `${name}.safetensors`);
  await saveSafetensors(file, tensors);
  return file;
}

const comfy: Namer = (m) => ({ down: `diffusion_model.${m}.lora_A.weight`, up: `diffusion_model.${m}.lora_B.weight`, alpha: `diffusion_model.${m}.alpha` });
const kohya: Namer = (m) => {
  const u = `lora_unet_${m.replace(/\./g, '_')}`;
  return { down: `${u}.lora_down.weight`, up: `${u}.lora_up.weight`, alpha: `${u}.alpha` };
};
const DIFFUSERS: [RegExp, string][] = [
  [/self_attn\.q$/, 'attn1.to_q'], [/self_attn\.k$/, 'attn1.to_k'], [/self_attn\.v$/, 'attn1.to_v'], [/self_attn\.o$/, 'attn1.to_out.0'],
  [/cross_attn\.q$/, 'attn2.to_q'], [/cross_attn\.k$/, 'attn2.to_k'], [/cross_attn\.v$/, 'attn2.to_v'], [/cross_attn\.o$/, 'attn2.to_out.0'],
  [/cross_attn\.k_img$/, 'attn2.add_k_proj'], [/ffn\.0$/, 'ffn.net.0.proj'], [/ffn\.2$/, 'ffn.net.2'], [/^head\.head$/, 'proj_out'],
];
const toDiffusersModule = (m: string) => DIFFUSERS.reduce((s, [re, to]) => s.replace(re, to), m);
const diffusers: Namer = (m) => ({ down: `transformer.${toDiffusersModule(m)}.lora_A.weight`, up: `transformer.${toDiffusersModule(m)}.lora_B.weight` });

async function golden() {
  const g = (await loadSafetensors(path.join(goldenDir, 'golden_dit_t2v.safetensors'))).tensors;
  const input: WanForwardInput = { x: [g.get('a.x')!], t: g.get('a.t')!, context: [g.get('a.context')!], seqLen: 18 };
  return input;
}

async function forwardOf(file: string, input: WanForwardInput, options: ModelLoaderOptions = {}): Promise<Tensor> {
  const model = await WanModel.load(file, { ...TINY, ...options });
  const [out] = await model.forward(input);
  model.dispose();
  return out;
}

async function save(name: string, weights: Map<string, Tensor>): Promise<string> {
  const file = path.join(dir, `${name}.safetensors`);
  await saveSafetensors(file, weights);
  return file;
}

// Several linears of both blocks, the head (outside the blocks) and differences.
function plan(strength: number) {
  const updates = [
    pair('blocks.0.self_attn.q', 64, 64, strength, 8), pair('blocks.1.self_attn.q', 64, 64, strength, 8),
    pair('blocks.0.cross_attn.v', 64, 64, strength, 2), pair('blocks.1.cross_attn.v', 64, 64, strength, 2),
    pair('blocks.0.ffn.0', 128, 64, strength, 4), pair('blocks.1.ffn.0', 128, 64, strength, 16),
    pair('head.head', 64, 64, strength, 1),
  ];
  const alphas = new Map([[updates[0].target, 8], [updates[1].target, 8], [updates[2].target, 2], [updates[3].target, 2],
    [updates[4].target, 4], [updates[5].target, 16], [updates[6].target, 1]]);
  return { updates, alphas };
}

t.test('three key families, bias/modulation/norm differences: the forward of a JS-merged checkpoint', async (t) => {
  const input = await golden();
  const base = (await loadCheckpoint(base32)).tensors;
  const baseOut = await forwardOf(base32, input);
  const s = 0.8;

  // ComfyUI names with alpha, plus .diff_b (a bias), .diff_m (modulation) and .diff (a norm weight).
  const c = plan(s);
  const diffs = [diff('blocks.0.ffn.2.bias', 64, s), diff('blocks.1.modulation', 6 * 64, s), diff('blocks.1.norm3.weight', 64, s)];
  const comfyFile = await loraFile('comfy', c.updates, comfy, {
    'diffusion_model.blocks.0.ffn.2.diff_b': f32(diffs[0].diff!, [64]),
    'diffusion_model.blocks.1.diff_m': f32(diffs[1].diff!, [1, 6, 64]),
    'diffusion_model.blocks.1.norm3.diff': f32(diffs[2].diff!, [64]),
  }, c.alphas);
  // kohya (lora_unet_*, lora_down/lora_up, .alpha).
  const k = plan(s);
  const kohyaFile = await loraFile('kohya', k.updates, kohya, {}, k.alphas);
  // diffusers (transformer., attn1/attn2/to_out.0/ffn.net, no alpha: scale 1); norm2 there is the official norm3.
  const d = plan(s).updates.map((u) => ({ ...u, factor: s }));
  const dNorm = diff('blocks.0.norm3.bias', 64, s);
  const diffusersFile = await loraFile('diffusers', d, diffusers, { 'transformer.blocks.0.norm2.diff_b': f32(dNorm.diff!, [64]) });

  const cases: [string, string, Update[]][] = [
    ['comfyui', comfyFile, [...c.updates, ...diffs]],
    ['kohya', kohyaFile, k.updates],
    ['diffusers', diffusersFile, [...d, dNorm]],
  ];
  for (const [name, file, updates] of cases) {
    const expectedFile = await save(`${name}-merged`, merged(base, updates));
    const got = await forwardOf(base32, input, { loras: [{ path: file, strength: s }] });
    const want = await forwardOf(expectedFile, input);
    const err = maxAbsDiff(got, want);
    t.ok(err <= 1e-6, `${name}: max abs difference ${err.toExponential(2)} from the merged checkpoint`);
    t.ok(maxAbsDiff(got, baseOut) > 1e-2, `${name}: the LoRA changes the output (${maxAbsDiff(got, baseOut).toExponential(2)})`);
  }

  // Two LoRAs add; a negative strength subtracts.
  const both = await save('two-merged', merged(base, [...c.updates, ...diffs, ...k.updates.map((u) => ({ ...u, factor: (u.factor / s) * -1.5 }))]));
  const got = await forwardOf(base32, input, { loras: [{ path: comfyFile, strength: s }, { path: kohyaFile, strength: -1.5 }] });
  const err = maxAbsDiff(got, await forwardOf(both, input));
  t.ok(err <= 1e-6, `two LoRAs: max abs difference ${err.toExponential(2)}`);
});

t.test('bf16 storage: merged weights are the bf16 rounding of the float32 merge', async (t) => {
  const input = await golden();
  const base = (await loadCheckpoint(base16)).tensors;
  const { updates, alphas } = plan(1.25);
  const file = await loraFile('comfy-bf16', updates, comfy, {}, alphas);
  const expected = merged(base, updates, bf16);
  t.equal(expected.get('blocks.0.self_attn.q.weight')!.dtype, 'bf16');
  const expectedFile = await save('bf16-merged', expected);
  const got = await forwardOf(base16, input, { loras: [{ path: file, strength: 1.25 }] });
  t.equal(maxAbsDiff(got, await forwardOf(expectedFile, input)), 0, 'bit-identical to the bf16 merged checkpoint');
  t.ok(maxAbsDiff(got, await forwardOf(base16, input)) > 1e-2, 'and different from the base model');
});

t.test('fp8 and scaled fp8 storage: decoded, merged, re-encoded with the scale grown where the merge outgrows it', async (t) => {
  const input = await golden();
  const source = (await loadCheckpoint(base32)).tensors;
  const { updates, alphas } = plan(0.9);
  const file = await loraFile('comfy-fp8', updates, comfy, {}, alphas);
  for (const scaled of [false, true]) {
    // Kijai's layout: the 2-D block weights in e4m3fn (and a per-tensor scale when scaled).
    const fp8 = new Map<string, Tensor>(), expected = new Map<string, Tensor>();
    const decoded = new Map<string, Float64Array>();
    const scales = new Map<string, number>();
    for (const [k, v] of source) {
      fp8.set(k, v);
      if (!(k.startsWith('blocks.') && k.endsWith('.weight') && v.shape.length === 2)) continue;
      const x = v.toTypedArray() as Float32Array;
      const scale = scaled ? Math.fround(x.reduce((m, y) => Math.max(m, Math.abs(y)), 0) / 448) : 1;
      const codes = encodeE4m3fn(x.map((y) => y / scale));
      scales.set(k, scale);
      fp8.set(k, Tensor.fromTypedArray(codes, v.shape, 'f8_e4m3fn'));
      if (scaled) fp8.set(k.replace(/\.weight$/, '.scale_weight'), f32(new Float32Array([scale]), []));
      decoded.set(k, Float64Array.from(codes, (c) => decodeE4m3fn(c) * scale));  // exact in float64: 4 bits x 24 bits
    }
    if (scaled) fp8.set('scaled_fp8', Tensor.fromTypedArray(new Uint8Array(0), [0], 'f8_e4m3fn'));
    // The reference: the float64 merge of the decoded values, float32, divided by the scale, e4m3fn.
    // Where the merged values outgrow 448 x the scale, the scale becomes their largest magnitude
    // / 448 (keeping it would saturate them), and the file gets that scale.
    const m = merged(source, updates, Math.fround, decoded);
    let grown = 0;
    for (const [k, v] of fp8) {
      const touched = scales.has(k) && updates.some((u) => u.target === k);
      if (!touched) {
        if (!expected.has(k)) expected.set(k, scales.has(k) || k.endsWith('.scale_weight') ? v : m.get(k) ?? v);
        continue;
      }
      const values = m.get(k)!.toTypedArray() as Float32Array;
      const amax = values.reduce((a, y) => Math.max(a, Math.abs(y)), 0);
      let scale = scales.get(k)!;
      if (amax > Math.fround(scale * 448)) {
        t.ok(scaled, `${k}: only a scaled weight outgrows its range here`);
        scale = Math.max(scale, Math.fround(amax / 448));
        grown++;
      }
      expected.set(k, Tensor.fromTypedArray(encodeE4m3fn(values.map((y) => Math.fround(y / scale))), v.shape, 'f8_e4m3fn'));
      if (scaled) expected.set(k.replace(/\.weight$/, '.scale_weight'), f32(new Float32Array([scale]), []));
    }
    if (scaled) t.ok(grown > 0, `scaled: ${grown} merged weights outgrow their scale`);
    const name = scaled ? 'fp8-scaled' : 'fp8';
    const baseFile = await save(`${name}-base`, fp8), expectedFile = await save(`${name}-merged`, expected);
    const got = await forwardOf(baseFile, input, { loras: [{ path: file, strength: 0.9 }] });
    t.equal(maxAbsDiff(got, await forwardOf(expectedFile, input)), 0, `${name}: bit-identical to the re-encoded checkpoint`);
    t.ok(maxAbsDiff(got, await forwardOf(baseFile, input)) > 1e-2, `${name}: the LoRA changes the output`);
  }
});

t.test('every key family names the same weights', async (t) => {
  const input = await golden();
  const base = (await loadCheckpoint(base32)).tensors;
  const updates = [pair('blocks.0.self_attn.q', 64, 64, 1), pair('blocks.1.ffn.0', 128, 64, 1), pair('blocks.1.cross_attn.o', 64, 64, 1),
    pair('blocks.0.self_attn.o', 64, 64, 1)];
  const want = await forwardOf(await save('families-merged', merged(base, updates)), input);
  const underscored = (prefix: string, sep = '_') => (m: string) => {
    const u = `${prefix}${m.replace(/\./g, sep === '_' ? '_' : sep)}`;
    return { down: `${u}.lora_down.weight`, up: `${u}.lora_up.weight` };
  };
  const families: [string, Namer][] = [
    ['ComfyUI diffusion_model.', comfy],
    ['model.diffusion_model.', (m) => ({ down: `model.diffusion_model.${m}.lora_A.weight`, up: `model.diffusion_model.${m}.lora_B.weight` })],
    ['bare official', (m) => ({ down: `${m}.lora_A.weight`, up: `${m}.lora_B.weight` })],
    ['DiffSynth pipe.dit.', (m) => ({ down: `pipe.dit.${m}.lora_A.weight`, up: `pipe.dit.${m}.lora_B.weight` })],
    ['PEFT .default.', (m) => ({ down: `base_model.model.${m}.lora_A.default.weight`, up: `base_model.model.${m}.lora_B.default.weight` })],
    ['kohya lora_unet_', kohya],
    ['VideoX-Fun lora_unet__', underscored('lora_unet__')],
    ['VideoX-Fun, bare lora_down/lora_up', (m) => {
      const u = `lora_unet__${m.replace(/\./g, '_')}`;
      return { down: `${u}.lora_down`, up: `${u}.lora_up` };
    }],
    ['LyCORIS lycoris_', underscored('lycoris_')],
    ['lora_unet_ with dotted leaves (WVW #869)', (m) => {
      const [, b, rest] = /^blocks\.(\d+)\.(.*)$/.exec(m)!;
      return { down: `lora_unet_blocks_${b}.${rest}.lora_down.weight`, up: `lora_unet_blocks_${b}.${rest}.lora_up.weight` };
    }],
    ['diffusers transformer.', diffusers],
    ['diffusers, bare lora_A/lora_B', (m) => ({ down: `${toDiffusersModule(m)}.lora_A`, up: `${toDiffusersModule(m)}.lora_B` })],
    ['diffusers underscored (lycoris_)', (m) => underscored('lycoris_')(toDiffusersModule(m))],
    ['official attention, diffusers leaves', (m) => {
      const n = m.replace(/(self_attn|cross_attn)\.([qkv])$/, '$1.to_$2').replace(/(self_attn|cross_attn)\.o$/, '$1.to_out.0');
      return { down: `diffusion_model.${n}.lora_A.weight`, up: `diffusion_model.${n}.lora_B.weight` };
    }],
  ];
  for (const [name, namer] of families) {
    const file = await loraFile(`family-${name.replace(/[^a-z0-9]+/gi, '-')}`, updates, namer);
    const got = await forwardOf(base32, input, { loras: [{ path: file }] });
    const err = maxAbsDiff(got, want);
    t.ok(err <= 1e-6, `${name}: max abs difference ${err.toExponential(2)}`);
  }
});

t.test("PEFT rank-stabilised LoRAs get the wrapper's alpha = rank^2 // sqrt(rank)", async (t) => {
  const input = await golden();
  const base = (await loadCheckpoint(base32)).tensors;
  // compensate_rs_lora_format: detected by this key; alpha 16 // 2 = 8 for rank 4, scale 2.
  const updates = [pair('blocks.0.cross_attn.k', 64, 64, 1, 8), pair('blocks.1.self_attn.v', 64, 64, 1, 8)];
  const peft = (m: string) => ({ down: `base_model.model.${m}.lora_A.weight`, up: `base_model.model.${m}.lora_B.weight`, alpha: `base_model.model.${m}.alpha` });
  const file = await loraFile('rslora', updates, peft);
  const want = await forwardOf(await save('rslora-merged', merged(base, updates)), input);
  const err = maxAbsDiff(await forwardOf(base32, input, { loras: [{ path: file }] }), want);
  t.ok(err <= 1e-6, `max abs difference ${err.toExponential(2)}`);
  // The wrapper writes its alpha over any stored one.
  const withAlpha = await loraFile('rslora-alpha', updates, peft, {}, new Map(updates.map((u) => [u.target, 1])));
  const errAlpha = maxAbsDiff(await forwardOf(base32, input, { loras: [{ path: withAlpha }] }), want);
  t.ok(errAlpha <= 1e-6, `stored alpha 1 replaced by 8: max abs difference ${errAlpha.toExponential(2)}`);
});

t.test('diffusers LoRAs may change condition_embedder.time_proj (time_projection.1)', async (t) => {
  const input = await golden();
  const base = (await loadCheckpoint(base32)).tensors;
  const updates = [pair('time_projection.1', 384, 64, 1), pair('blocks.0.self_attn.q', 64, 64, 1)];
  const module = (m: string) => (m === 'time_projection.1' ? 'condition_embedder.time_proj' : toDiffusersModule(m));
  const want = await forwardOf(await save('time-proj-merged', merged(base, updates)), input);
  const namers: [string, Namer][] = [
    ['transformer.', (m) => ({ down: `transformer.${module(m)}.lora_A.weight`, up: `transformer.${module(m)}.lora_B.weight` })],
    ['lycoris_', (m) => ({ down: `lycoris_${module(m).replace(/\./g, '_')}.lora_down.weight`, up: `lycoris_${module(m).replace(/\./g, '_')}.lora_up.weight` })],
  ];
  for (const [name, namer] of namers) {
    const err = maxAbsDiff(await forwardOf(base32, input, { loras: [{ path: await loraFile(`time-proj-${name}`, updates, namer) }] }), want);
    t.ok(err <= 1e-6, `${name}: max abs difference ${err.toExponential(2)}`);
  }
});

t.test('strength 0, blocks and layerFilter', async (t) => {
  const input = await golden();
  const base = (await loadCheckpoint(base32)).tensors;
  const baseOut = await forwardOf(base32, input);
  const { updates, alphas } = plan(1);
  const bias = diff('blocks.0.ffn.2.bias', 64, 1);
  const file = await loraFile('select', updates, comfy, { 'diffusion_model.blocks.0.ffn.2.diff_b': f32(bias.diff!, [64]) }, alphas);
  const all = [...updates, bias];

  t.equal(maxAbsDiff(await forwardOf(base32, input, { loras: [{ path: file, strength: 0 }] }), baseOut), 0, 'strength 0: the base model, bit for bit');
  t.equal(maxAbsDiff(await forwardOf(base32, input, { loras: [{ path: path.join(dir, 'absent.safetensors'), strength: 0 }] }), baseOut), 0,
    'strength 0: the file is not even opened (as the wrapper skips it)');

  const cases: [string, LoraOptions, Update[]][] = [
    ['blocks [1]', { path: file, blocks: [1] }, all.filter((u) => u.block === undefined || u.block === 1)],
    ['blocks [0]', { path: file, blocks: [0] }, all.filter((u) => u.block === undefined || u.block === 0)],
    ["layerFilter ['ffn']", { path: file, layerFilter: ['ffn'] }, all.filter((u) => !u.target.includes('ffn'))],
    ["layerFilter ['cross_attn', 'head', '']", { path: file, layerFilter: ['cross_attn', 'head', ''] },
      all.filter((u) => !u.target.includes('cross_attn') && !u.target.startsWith('head'))],
    ["layerFilter on the file's names ['diffusion_model.blocks.0.']", { path: file, layerFilter: ['diffusion_model.blocks.0.'] },
      all.filter((u) => u.block !== 0)],
  ];
  for (const [name, lora, kept] of cases) {
    const want = kept.length === 0 ? baseOut : await forwardOf(await save(`select-${name.replace(/[^a-z0-9]+/gi, '-')}`, merged(base, kept)), input);
    const err = maxAbsDiff(await forwardOf(base32, input, { loras: [lora] }), want);
    t.ok(err <= 1e-6, `${name}: ${kept.length} of ${all.length} updates, max abs difference ${err.toExponential(2)}`);
  }
  const only1 = merged(base, all.filter((u) => u.block === 1));
  t.same(only1.get('blocks.0.self_attn.q.weight')!.toTypedArray(), base.get('blocks.0.self_attn.q.weight')!.toTypedArray(), 'block 0 untouched in the reference');
});

t.test('a sharded LoRA; LoRAs merge before quantization at load', async (t) => {
  const input = await golden();
  const base = (await loadCheckpoint(base32)).tensors;
  const { updates, alphas } = plan(1);
  const whole = (await loadCheckpoint(await loraFile('to-shard', updates, comfy, {}, alphas))).tensors;
  const keys = [...whole.keys()];
  const shards = [0, 1].map((i) => path.join(dir, `shard-${i}.safetensors`));
  await saveSafetensors(shards[0], Object.fromEntries(keys.slice(0, 9).map((k) => [k, whole.get(k)!])));
  await saveSafetensors(shards[1], Object.fromEntries(keys.slice(9).map((k) => [k, whole.get(k)!])));
  const mergedFile = await save('shard-merged', merged(base, updates));
  const err = maxAbsDiff(await forwardOf(base32, input, { loras: [{ path: shards }] }), await forwardOf(mergedFile, input));
  t.ok(err <= 1e-6, `two shards: max abs difference ${err.toExponential(2)}`);
  // The wrapper quantizes the merged weights; so do we (the scale comes from the merged values).
  for (const quantization of ['fp8_e4m3fn', 'fp8_e4m3fn_scaled'] as const) {
    const got = await forwardOf(base32, input, { loras: [{ path: shards }], quantization });
    t.equal(maxAbsDiff(got, await forwardOf(mergedFile, input, { quantization })), 0, `${quantization}: the quantized merged checkpoint, bit for bit`);
  }
});

t.test('image-branch keys: dropped on a T2V model (as the wrapper), merged into an I2V model', async (t) => {
  const input = await golden();
  const base = (await loadCheckpoint(base32)).tensors;
  const updates = [pair('blocks.0.self_attn.q', 64, 64, 1)];
  const img = pair('blocks.0.cross_attn.k_img', 64, 64, 1);
  const file = await loraFile('i2v-lora', [...updates, img], comfy);
  const err = maxAbsDiff(await forwardOf(base32, input, { loras: [{ path: file }] }), await forwardOf(await save('i2v-lora-t2v', merged(base, updates)), input));
  t.ok(err <= 1e-6, `T2V: the k_img pair is dropped, the rest merged (${err.toExponential(2)})`);

  const i2v = path.join(weightsDir, 'tiny_i2v_dit.f32.safetensors');
  const g = (await loadSafetensors(path.join(fixturesDir, 'dit', 'golden_dit_i2v.safetensors'))).tensors;
  const clip = g.get('clip_fea')!.toTypedArray() as Float32Array;
  const i2vInput: WanForwardInput = { x: [g.get('a.x')!], t: g.get('a.t')!, context: [g.get('a.context')!], y: [g.get('a.y')!],
    clipFea: f32(clip.slice(0, 257 * 1280), [1, 257, 1280]), seqLen: Number((g.get('a.seq_len')!.toTypedArray() as ArrayLike<number | bigint>)[0]) };
  const i2vBase = (await loadCheckpoint(i2v)).tensors;
  const model = await WanModel.load(i2v, { numHeads: 2, loras: [{ path: file }] });
  const [got] = await model.forward(i2vInput);
  model.dispose();
  const ref = await WanModel.load(await save('i2v-merged', merged(i2vBase, [...updates, img])), { numHeads: 2 });
  const [want] = await ref.forward(i2vInput);
  ref.dispose();
  const e = maxAbsDiff(got, want);
  t.ok(e <= 1e-6, `I2V: the k_img pair is merged (${e.toExponential(2)})`);
});

t.test('unmerged (mergeLoras false): applied at run time, as the merged weights compute', async (t) => {
  const input = await golden();
  const s = 0.8;
  const c = plan(s);
  const diffs = [diff('blocks.0.ffn.2.bias', 64, s), diff('blocks.1.modulation', 6 * 64, s)];
  const file = await loraFile('comfy-unmerged', c.updates, comfy, {
    'diffusion_model.blocks.0.ffn.2.diff_b': f32(diffs[0].diff!, [64]),
    'diffusion_model.blocks.1.diff_m': f32(diffs[1].diff!, [1, 6, 64]),
  }, c.alphas);
  // float32 weights: the reference is the float32 merge (differences are merged either way).
  const base = (await loadCheckpoint(base32)).tensors;
  const want = await forwardOf(await save('unmerged-reference', merged(base, [...c.updates, ...diffs])), input);
  const unmerged = await WanModel.load(base32, { ...TINY, loras: [{ path: file, strength: s }], mergeLoras: false });
  t.equal(unmerged.config.mergeLoras, false);
  const [got] = await unmerged.forward(input);
  const err = maxAbsDiff(got, want);
  t.ok(err <= 1e-5, `f32 weights: max abs difference ${err.toExponential(2)} from the merged checkpoint (<= 1e-5)`);
  t.ok(maxAbsDiff(got, await forwardOf(base32, input)) > 1e-2, 'the LoRA changes the output');
  // The adapters are counted with the weights; block swap moves them with their block.
  const plain = await WanModel.load(base32, TINY);
  const adapterBytes = 4 * c.updates.reduce((n, u) => n + u.up!.length + u.down!.length, 0);
  t.equal(unmerged.memoryStats().resident.bytes - plain.memoryStats().resident.bytes, adapterBytes,
    `memoryStats counts the adapters (${adapterBytes} bytes)`);
  for (const [blocksToSwap, prefetchBlocks] of [[1, 0], [2, 1]]) {
    unmerged.setBlockSwap({ blocksToSwap, prefetchBlocks });
    t.equal(maxAbsDiff((await unmerged.forward(input))[0], got), 0, `swap ${blocksToSwap}, prefetch ${prefetchBlocks}: bitwise equal`);
  }
  unmerged.dispose();
  plain.dispose();

  // bf16 weights: merged ones are rounded to bf16 after the merge, unmerged ones keep the update
  // exact, so only unmerged is the float32 reference (bf16 weights + the float32 update).
  const pairs = await loraFile('comfy-unmerged-pairs', c.updates, comfy, {}, c.alphas);
  const asF32 = new Map([...(await loadCheckpoint(base16)).tensors].map(([k, v]) =>
    [k, Tensor.fromTypedArray(Float32Array.from(v.toTypedArray() as Float32Array), v.shape, 'f32')]));
  const reference = await forwardOf(await save('unmerged-bf16-reference', merged(asF32, c.updates)), input);
  const runTime = await forwardOf(base16, input, { loras: [{ path: pairs, strength: s }], mergeLoras: false });
  const atLoad = await forwardOf(base16, input, { loras: [{ path: pairs, strength: s }] });
  const errRunTime = maxAbsDiff(runTime, reference), errAtLoad = maxAbsDiff(atLoad, reference);
  t.ok(errRunTime <= 1e-5, `bf16 weights, unmerged: ${errRunTime.toExponential(2)} from bf16 + the exact update (<= 1e-5)`);
  t.ok(errAtLoad > 10 * errRunTime, `merged into bf16: ${errAtLoad.toExponential(2)}, the rounding of the merged weights`);
});

t.test('per-step strengths: each call takes its step\'s strength; the Sampler passes the step', async (t) => {
  const input = await golden();
  const { updates, alphas } = plan(1);
  const file = await loraFile('comfy-per-step', updates, comfy, {}, alphas);
  const perStep = await WanModel.load(base32, { ...TINY, loras: [{ path: file, strength: [0.8, 0, -0.5] }], mergeLoras: false });
  const at = async (strength: number) => forwardOf(base32, input, { loras: [{ path: file, strength }], mergeLoras: false });
  t.equal(maxAbsDiff((await perStep.forward({ ...input, step: 0 }))[0], await at(0.8)), 0, 'step 0: strength 0.8, bitwise');
  t.equal(maxAbsDiff((await perStep.forward({ ...input, step: 1 }))[0], await forwardOf(base32, input)), 0,
    'step 1: strength 0, the model without the LoRA, bitwise');
  t.equal(maxAbsDiff((await perStep.forward({ ...input, step: 2 }))[0], await at(-0.5)), 0, 'step 2: strength -0.5, bitwise');
  const zeroFirst = await WanModel.load(base32, { ...TINY, loras: [{ path: file, strength: [0, 0.8] }], mergeLoras: false });
  t.equal(maxAbsDiff((await zeroFirst.forward({ ...input, step: 1 }))[0], await at(0.8)), 0, 'a list that starts at 0: step 1, bitwise');
  await t.rejects(perStep.forward(input), { code: 'WAN_INVALID_OPTION',
    message: 'loras[0].strength is a per-step list: give the step of this call (input.step; the Sampler does)' });
  await t.rejects(perStep.forward({ ...input, step: 3 }), { code: 'WAN_INVALID_OPTION',
    message: 'loras[0].strength has 3 values, one per step, but step 3 was asked (steps count from 0)' });

  // Through the Sampler: a constant list samples what the constant does.
  const text = { promptEmbeds: [input.context[0]], negativePromptEmbeds: [] };
  const sample = (model: WanModel) => new Sampler(model).sample({
    imageEmbeds: emptyEmbeds({ width: 48, height: 32, numFrames: 5 }), textEmbeds: text, steps: 3, cfg: 1, seed: 5, scheduler: 'euler' });
  const constant = await WanModel.load(base32, { ...TINY, loras: [{ path: file, strength: 0.7 }], mergeLoras: false });
  const listed = await WanModel.load(base32, { ...TINY, loras: [{ path: file, strength: [0.7, 0.7, 0.7] }], mergeLoras: false });
  t.equal(maxAbsDiff(await sample(listed), await sample(constant)), 0, 'strength [0.7, 0.7, 0.7] samples what 0.7 does');
  const varying = await WanModel.load(base32, { ...TINY, loras: [{ path: file, strength: [0.7, 0, 0.7] }], mergeLoras: false });
  t.ok(maxAbsDiff(await sample(varying), await sample(constant)) > 1e-4, 'strength [0.7, 0, 0.7] samples something else');

  // Differences cannot follow a list: the load says which keys.
  const withDiff = await loraFile('comfy-per-step-diff', updates, comfy,
    { 'diffusion_model.blocks.0.ffn.2.diff_b': f32(values(64, 0.05), [64]) }, alphas);
  await t.rejects(WanModel.load(base32, { ...TINY, loras: [{ path: withDiff, strength: [1, 0.5] }], mergeLoras: false }), {
    code: 'WAN_INVALID_OPTION',
    message: "a LoRA with a per-step strength list can only change linear layers, at run time, but it changes " +
      "'blocks.0.ffn.2.bias' (a full difference, LoRA 0): give that LoRA one strength",
  });
  await t.rejects(WanModel.load(base32, { ...TINY, loras: [{ path: file, strength: [] }], mergeLoras: false }),
    { code: 'WAN_INVALID_OPTION', message: /Expected a non-empty list of numbers from -1000 to 1000 for loras\[0\]\.strength/ });
  await t.rejects(WanModel.load(base32, { ...TINY, mergeLoras: 'no' as never }),
    { code: 'WAN_INVALID_OPTION', message: 'Expected a boolean for mergeLoras but received "no" of type string' });
});

t.test('errors name the file, the keys and the shapes', async (t) => {
  const good = pair('blocks.0.self_attn.q', 64, 64, 1);
  const unmatchedFile = await loraFile('unmatched', [good], comfy, {
    'diffusion_model.blocks.0.self_attn.x.lora_A.weight': f32(values(RANK * 64, 1), [RANK, 64]),
    'diffusion_model.blocks.0.self_attn.x.lora_B.weight': f32(values(64 * RANK, 1), [64, RANK]),
    'lora_unet_blocks_7_ffn_0.lora_down.weight': f32(values(RANK * 64, 1), [RANK, 64]),
    'lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight': f32(values(RANK * 8, 1), [RANK, 8]),
  });
  const err = await WanModel.load(base32, { ...TINY, loras: [{ path: unmatchedFile }] }).then(() => null, (e) => e);
  t.equal(err?.code, 'WAN_BAD_CHECKPOINT');
  t.match(err?.message, unmatchedFile);
  t.match(err?.message, /4 LoRA keys match no weight of the model: \[/);
  for (const key of ['diffusion_model.blocks.0.self_attn.x.lora_A.weight', 'diffusion_model.blocks.0.self_attn.x.lora_B.weight',
    'lora_unet_blocks_7_ffn_0.lora_down.weight', 'lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight'])
    t.ok(err?.message.includes(key), `lists ${key}`);
  t.notOk(err?.message.includes('self_attn.q.lora'), 'and not the keys that match');
  // layerFilter is how a user skips them.
  const input = await golden();
  await t.resolves(forwardOf(base32, input, { loras: [{ path: unmatchedFile, layerFilter: ['self_attn.x', 'blocks_7', 'lora_te'] }] }));

  const shapeFile = await loraFile('shape', [], comfy, {
    'diffusion_model.blocks.0.self_attn.q.lora_A.weight': f32(values(RANK * 32, 1), [RANK, 32]),
    'diffusion_model.blocks.0.self_attn.q.lora_B.weight': f32(values(64 * RANK, 1), [64, RANK]),
    'diffusion_model.blocks.1.ffn.2.diff_b': f32(values(32, 1), [32]),
    'diffusion_model.patch_embedding.lora_A.weight': f32(values(RANK * 32 * 4, 1), [RANK, 32, 1, 2, 2]),
    'diffusion_model.patch_embedding.lora_B.weight': f32(values(64 * RANK, 1), [64, RANK, 1, 1, 1]),
  });
  await t.rejects(WanModel.load(base32, { ...TINY, loras: [{ path: shapeFile }] }), {
    code: 'WAN_BAD_CHECKPOINT',
    message: `${shapeFile}: LoRA: keys 'diffusion_model.blocks.0.self_attn.q.lora_B.weight' [64, 4] and ` +
      "'diffusion_model.blocks.0.self_attn.q.lora_A.weight' [4, 32] do not fit 'blocks.0.self_attn.q.weight' of shape [64, 64]; " +
      "key 'diffusion_model.blocks.1.ffn.2.diff_b' [32] does not fit 'blocks.1.ffn.2.bias' of shape [64]; " +
      "keys 'diffusion_model.patch_embedding.lora_B.weight' [64, 4, 1, 1, 1] and 'diffusion_model.patch_embedding.lora_A.weight' " +
      '[4, 32, 1, 2, 2] do not fit \'patch_embedding.weight\' of shape [64, 16, 1, 2, 2] (a Control-LoRA widens patch_embedding ' +
      'to 32 input channels, which is not supported)',
  });

  const twiceFile = await loraFile('twice', [good], comfy, {
    'lora_unet_blocks_0_self_attn_q.lora_down.weight': f32(values(RANK * 64, 1), [RANK, 64]),
    'lora_unet_blocks_0_self_attn_q.lora_up.weight': f32(values(64 * RANK, 1), [64, RANK]),
  });
  await t.rejects(WanModel.load(base32, { ...TINY, loras: [{ path: twiceFile }] }), {
    code: 'WAN_BAD_CHECKPOINT',
    message: /keys 'lora_unet_blocks_0_self_attn_q\.lora_down\.weight' and 'diffusion_model\.blocks\.0\.self_attn\.q\.lora_A\.weight' both give the lora_A \(down\) of 'blocks\.0\.self_attn\.q\.weight'/,
  });

  const kindsFile = await loraFile('kinds', [], comfy, {
    'diffusion_model.blocks.0.self_attn.q.hada_w1_a': f32(values(64 * RANK, 1), [64, RANK]),
    'diffusion_model.blocks.0.self_attn.k.lora_A.weight': f32(values(RANK * 64, 1), [RANK, 64]),
  });
  await t.rejects(WanModel.load(base32, { ...TINY, loras: [{ path: kindsFile }] }), {
    code: 'WAN_BAD_CHECKPOINT',
    message: /key 'diffusion_model\.blocks\.0\.self_attn\.q\.hada_w1_a' is LoHa \(hada_\*\), which is not supported.*key 'diffusion_model\.blocks\.0\.self_attn\.k\.lora_A\.weight' \(lora_A \(down\) of 'blocks\.0\.self_attn\.k\.weight'\) has no lora_B \(up\) beside it/,
  });

  // A whole model given as a LoRA is said to be one, not listed key by key.
  await t.rejects(WanModel.load(base32, { ...TINY, loras: [{ path: base32 }] }), {
    code: 'WAN_BAD_CHECKPOINT',
    message: new RegExp(`^${base32.replace(/[.\\/]/g, '\\$&')}: not a LoRA: none of its \\d+ keys is a LoRA part \\(\\.lora_A/\\.lora_B, ` +
      '\\.lora_down/\\.lora_up, \\.alpha, \\.diff, \\.diff_b, \\.diff_m\\); it holds \\[[^,\\]]+, [^,\\]]+, [^,\\]]+, \\.\\.\\.\\]$'),
  });

  const missing = path.join(dir, 'missing.safetensors');
  await t.rejects(WanModel.load(base32, { ...TINY, loras: [{ path: missing }] }), { code: 'WAN_IO', message: new RegExp(missing.replace(/[.\\/]/g, '\\$&')) });

  const bad: [unknown, RegExp][] = [
    [{ path: unmatchedFile, strength: 5000 }, /^Expected a number from -1000 to 1000 for loras\[0\]\.strength but received 5000 of type number$/],
    [{ path: unmatchedFile, strength: NaN }, /for loras\[0\]\.strength but received NaN of type number/],
    [{ path: unmatchedFile, strength: '1' }, /for loras\[0\]\.strength but received "1" of type string/],
    [{ path: unmatchedFile, strength: [1, 0.5] }, /loras\[0\]\.strength is a per-step list, which needs unmerged LoRAs: give mergeLoras: false/],
    [{ path: unmatchedFile, blocks: [] }, /^Expected a non-empty array of block indices \(integers >= 0\) for loras\[0\]\.blocks but received an array of length 0$/],
    [{ path: unmatchedFile, blocks: [0, -1] }, /for loras\[0\]\.blocks/],
    [{ path: unmatchedFile, blocks: [1.5] }, /for loras\[0\]\.blocks/],
    [{ path: unmatchedFile, layerFilter: 'ffn' }, /^Expected an array of strings for loras\[0\]\.layerFilter but received "ffn" of type string$/],
    [{ path: 42 }, /^Expected a file path or a non-empty array of file paths for loras\[0\]\.path but received 42 of type number$/],
    ['x.safetensors', /^Expected an object \{ path, strength\?, blocks\?, layerFilter\? \} for loras\[0\] but received "x.safetensors" of type string$/],
  ];
  for (const [lora, message] of bad)
    await t.rejects(WanModel.load(base32, { ...TINY, loras: [lora as LoraOptions] }), { code: 'WAN_INVALID_OPTION', message });
  await t.rejects(WanModel.load(base32, { ...TINY, loras: {} as never }), {
    code: 'WAN_INVALID_OPTION', message: /^Expected an array of \{ path, strength\?, blocks\?, layerFilter\? \} for loras but received an object of type Object$/,
  });
});
