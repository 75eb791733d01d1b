// fp8 weight storage chosen at load (ModelLoaderOptions.quantization): the converted model
// equals a model loaded from a file quantised here in JS (an independent encoder), and its
// distance to the bf16 model is measured on the official goldens.
import t from 'tap';
import type { Test as Tap } from 'tap';
import * as path from 'node:path';

import { loadCheckpoint, loadSafetensors, saveSafetensors, Tensor, WanModel } from '../../lib/index';
import type { Quantization, WanForwardInput } from '../../lib/index';
import { KEPT_IN_HIGH_PRECISION } from '../../lib/memory-planner';
import { native } from '../../lib/native';
import { encodeE4m3fn, goldenDir, maxAbsDiff, tempDir, toNumbers, weightsDir } from '../helpers';

const base = path.join(weightsDir, 'tiny_t2v_dit.bf16.safetensors');
const tiny = { numHeads: 2, textLen: 16 };

// The wrapper's params_to_keep (its older and newer lists together): names containing one of
// these stay in high precision. The issue: norms, biases, modulation, embeddings, patch embedding
// and head.
const KEPT = ['norm', 'head', 'bias', 'time_in', 'vector_in', 'patch_embedding', 'time_', 'img_emb', 'modulation',
  'text_embedding', 'adapter', 'add', 'ref_conv', 'audio_proj'];
const quantized = (name: string, shape: number[]) => shape.length >= 2 && !KEPT.some((k) => name.includes(k));

// e5m2 by exhaustive nearest search over its 123 finite positive codes (ties to the even code).
const E5M2_VALUES = Array.from({ length: 124 }, (_, c) => {
  const e = c >> 2, m = c & 3;
  return e === 0 ? (m / 4) * 2 ** -14 : (1 + m / 4) * 2 ** (e - 15);
});
function encodeE5m2(values: Float32Array): Uint8Array {
  return Uint8Array.from(values, (v) => {
    const a = Math.min(Math.abs(v), 57344);
    let best = 0;
    for (let c = 1; c < E5M2_VALUES.length; ++c) {
      const d = Math.abs(E5M2_VALUES[c] - a), bestD = Math.abs(E5M2_VALUES[best] - a);
      if (d < bestD || (d === bestD && (c & 1) === 0)) best = c;
    }
    return best | (v < 0 ? 0x80 : 0);
  });
}

// Writes the base model with its quantizable weights as fp8 codes made in JS.
async function quantizeInJs(t: Tap, q: Exclude<Quantization, 'disabled' | 'fp8_e4m3fn_fast' | 'fp8_e4m3fn_scaled_fast'>, dir: string): Promise<string> {
  const { tensors } = await loadCheckpoint(base);
  const out = new Map<string, Tensor>();
  let count = 0;
  for (const [name, tensor] of tensors) {
    if (!quantized(name, tensor.shape)) { out.set(name, tensor); continue; }
    const values = Float32Array.from(toNumbers(tensor.toTypedArray()));
    let scaled = values;
    if (q === 'fp8_e4m3fn_scaled') {
      const absmax = values.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      const scale = Math.fround(absmax / 448);
      scaled = values.map((v) => Math.fround(v / scale));
      out.set(name.replace(/\.weight$/, '.scale_weight'), Tensor.fromTypedArray(Float32Array.of(scale), []));
    }
    const codes = q === 'fp8_e5m2' ? encodeE5m2(scaled) : encodeE4m3fn(scaled);
    out.set(name, Tensor.fromTypedArray(codes, tensor.shape, q === 'fp8_e5m2' ? 'f8_e5m2' : 'f8_e4m3fn'));
    count++;
  }
  if (q === 'fp8_e4m3fn_scaled') out.set('scaled_fp8', Tensor.fromTypedArray(new Uint8Array(0), [0], 'f8_e4m3fn'));
  t.ok(count >= 17, `${q}: ${count} weights quantized in JS`);
  const file = path.join(dir, `tiny_t2v_dit.${q}.safetensors`);
  await saveSafetensors(file, out);
  return file;
}

function goldenCase(g: Map<string, Tensor>, c: string): { input: WanForwardInput; out: Tensor } {
  const seqLen = Number(toNumbers(g.get(`${c}.seq_len`)!.toTypedArray())[0]);
  return { input: { x: [g.get(`${c}.x`)!], t: g.get(`${c}.t`)!, context: [g.get(`${c}.context`)!], seqLen }, out: g.get(`${c}.out`)! };
}

t.test('quantizing at load equals a file quantized in JS; distance to the bf16 model', async (t) => {
  const dir = tempDir();
  const g = (await loadSafetensors(path.join(goldenDir, 'golden_dit_t2v.safetensors'))).tensors;
  const cases = ['a', 'b', 'c'].map((c) => goldenCase(g, c));
  for (const q of ['fp8_e4m3fn', 'fp8_e4m3fn_scaled', 'fp8_e5m2'] as const) {
    const atLoad = await WanModel.load(base, { ...tiny, quantization: q });
    t.equal(atLoad.config.quantization, q);
    const fromFile = await WanModel.load(await quantizeInJs(t, q, dir), tiny);
    let worst = 0;
    for (const [i, { input, out }] of cases.entries()) {
      const [a] = await atLoad.forward(input);
      const [b] = await fromFile.forward(input);
      t.equal(maxAbsDiff(a, b), 0, `${q} case ${'abc'[i]}: identical to the JS-quantized file`);
      worst = Math.max(worst, maxAbsDiff(a, out));
    }
    // The goldens are the bf16 model's outputs (to 2.3e-6); outputs are O(1).
    t.comment(`${q}: max abs error against the bf16 model on golden cases a-c: ${worst.toExponential(2)}`);
    const bound = q === 'fp8_e5m2' ? 0.5 : 0.25;
    t.ok(worst > 1e-4 && worst < bound, `${q}: error against bf16 ${worst.toExponential(2)} (expected above 1e-4, below ${bound})`);
    atLoad.dispose();
    fromFile.dispose();
  }
});

t.test("the addon's list of what stays in high precision is the wrapper's, and the planner's", async (t) => {
  t.same(native().keptInHighPrecision, KEPT);
  t.same(KEPT_IN_HIGH_PRECISION, KEPT);
});

t.test('a file already in the requested form is kept; options are validated', async (t) => {
  const dir = tempDir();
  const file = await quantizeInJs(t, 'fp8_e4m3fn', dir);
  const g = (await loadSafetensors(path.join(goldenDir, 'golden_dit_t2v.safetensors'))).tensors;
  const { input } = goldenCase(g, 'a');
  const [kept] = await (await WanModel.load(file, { ...tiny, quantization: 'fp8_e4m3fn' })).forward(input);
  const [plain] = await (await WanModel.load(file, tiny)).forward(input);
  t.equal(maxAbsDiff(kept, plain), 0, 'fp8_e4m3fn of an e4m3fn file changes nothing');
  await t.rejects(WanModel.load(base, { ...tiny, quantization: 'int8' as never }),
    { code: 'WAN_INVALID_OPTION', message: /Expected one of disabled, fp8_e4m3fn, .* for quantization but received "int8"/ });
  await t.rejects(WanModel.load(base, { ...tiny, quantization: 'fp8_e4m3fn_fast' }),
    { code: 'WAN_INVALID_OPTION', message: /fp8_e4m3fn_fast.*GPU.*use 'fp8_e4m3fn' \(fp8 storage/ });
  await t.rejects(WanModel.load(base, { ...tiny, quantization: 'fp8_e4m3fn_scaled_fast' }),
    { code: 'WAN_INVALID_OPTION', message: /fp8_e4m3fn_scaled_fast.*GPU.*use 'fp8_e4m3fn_scaled' \(fp8 storage/ });
});
