// The DiT loads every layout users have and computes the same thing from each: ComfyUI's
// prefixed files, fp16, diffusers names, and Kijai's fp8 and scaled-fp8 files.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { inspectCheckpoint, loadSafetensors, saveSafetensors, Tensor, WanModel } from '../../lib/index';
import type { WanForwardInput } from '../../lib/index';
import { decodeE4m3fn, encodeE4m3fn, goldenDir, maxAbsDiff, tempDir, toDiffusers, toNumbers, weightsDir } from '../helpers';

const dir = tempDir('wan-dit-layouts-');
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));


async function setup() {
  const g = (await loadSafetensors(path.join(goldenDir, 'golden_dit_t2v.safetensors'))).tensors;
  const input: WanForwardInput = { x: [g.get('a.x')!], t: g.get('a.t')!, context: [g.get('a.context')!], seqLen: 18 };
  const weights = (await loadSafetensors(path.join(weightsDir, 'tiny_t2v_dit.f32.safetensors'))).tensors;
  return { input, expected: g.get('a.out')!, weights };
}

async function forwardOf(file: string, input: WanForwardInput): Promise<Tensor> {
  const model = await WanModel.load(file, { numHeads: 2, textLen: 16 });
  const [out] = await model.forward(input);
  model.dispose();
  return out;
}

// Kijai's fp8 files quantise the 2-D weights of the blocks and keep norms, biases,
// modulation and embeddings in their base dtype (WanVideoModelLoader).
const quantised = (name: string, shape: number[]) => name.startsWith('blocks.') && name.endsWith('.weight') && shape.length === 2;

// The file's tensors with each block matrix replaced by what `encode` writes for it into `fp8`
// (codes and scales), and beside them the same tensors dequantised (what `encode` returns).
function quantiseBlocks(weights: Map<string, Tensor>, encode: (name: string, tensor: Tensor, fp8: Map<string, Tensor>) => Float32Array) {
  const fp8 = new Map<string, Tensor>(), dequantised = new Map<string, Tensor>();
  for (const [k, v] of weights) {
    if (quantised(k, v.shape)) {
      dequantised.set(k, Tensor.fromTypedArray(encode(k, v, fp8), v.shape));
    } else {
      fp8.set(k, v);
      dequantised.set(k, v);
    }
  }
  return { fp8, dequantised };
}

t.test('ComfyUI prefix, fp16 storage and diffusers names give the official numbers', async (t) => {
  const { input, expected, weights } = await setup();
  const variants: [string, (name: string) => string, 'f32' | 'f16'][] = [
    ['comfyui-prefixed', (n) => `model.diffusion_model.${n}`, 'f32'],
    ['fp16', (n) => n, 'f16'],
    ['diffusers', toDiffusers, 'f32'],
  ];
  for (const [name, rename, dtype] of variants) {
    const file = path.join(dir, `${name}.safetensors`);
    const out = new Map<string, Tensor>();
    for (const [k, v] of weights) out.set(rename(k), dtype === 'f32' ? v : Tensor.fromTypedArray(v.toTypedArray() as Float32Array, v.shape, dtype));
    await saveSafetensors(file, out);
    const info = await inspectCheckpoint(file);
    t.equal(info.layout, { 'comfyui-prefixed': 'comfyui', fp16: 'official', diffusers: 'diffusers' }[name], `${name}: layout`);
    const err = maxAbsDiff(await forwardOf(file, input), expected);
    t.ok(err <= 1e-5, `${name}: max abs error ${err.toExponential(2)} against the official forward`);
  }
});

t.test('fp8 and scaled fp8 weights compute exactly what their dequantised values give', async (t) => {
  const { input, weights } = await setup();
  for (const scaled of [false, true]) {
    let count = 0, elements = 0;
    const { fp8, dequantised } = quantiseBlocks(weights, (k, v, fp8) => {
      const values = v.toTypedArray() as Float32Array;
      let absmax = 0;
      for (const x of values) absmax = Math.max(absmax, Math.abs(x));
      const scale = scaled ? Math.fround(absmax / 448) : 1;
      const codes = encodeE4m3fn(values.map((x) => x / scale));
      fp8.set(k, Tensor.fromTypedArray(codes, v.shape, 'f8_e4m3fn'));
      if (scaled) fp8.set(k.replace(/\.weight$/, '.scale_weight'), Tensor.fromTypedArray(new Float32Array([scale]), []));
      count++;
      elements += values.length;
      return Float32Array.from(codes, (c) => Math.fround(decodeE4m3fn(c) * scale));
    });
    if (scaled) fp8.set('scaled_fp8', Tensor.fromTypedArray(new Uint8Array(0), [0], 'f8_e4m3fn'));
    const name = scaled ? 'kijai-fp8-scaled' : 'kijai-fp8';
    const fp8File = path.join(dir, `${name}.safetensors`), refFile = path.join(dir, `${name}-dequantised.safetensors`);
    await saveSafetensors(fp8File, fp8);
    await saveSafetensors(refFile, dequantised);
    t.equal(count, 20, 'the 20 block matrices are fp8');
    const info = await inspectCheckpoint(fp8File);
    t.equal(info.quantization, scaled ? 'fp8_e4m3fn_scaled' : 'fp8_e4m3fn');
    t.equal(info.dtypes.f8_e4m3fn, scaled ? 21 : 20);
    const err = maxAbsDiff(await forwardOf(fp8File, input), await forwardOf(refFile, input));
    t.ok(err <= 1e-6, `${name}: max abs difference ${err.toExponential(2)} from the dequantised f32 file`);
    // One byte per value instead of four for those matrices (headers differ by under 4 KiB).
    const saved = fs.statSync(refFile).size - fs.statSync(fp8File).size;
    t.ok(Math.abs(saved - 3 * elements) < 4096, `${name}: ${saved} bytes saved for ${elements} fp8 values`);
  }
});

t.test('scales per output row and ComfyUI comfy_quant fp8 layers compute what their dequantised values give', async (t) => {
  const { input, weights } = await setup();
  // per-row: SDCPP's `.weight_scale` of [out]; comfy_quant: ComfyUI's mixed-precision format, an
  // fp8 weight with its JSON config, one `weight_scale` and a static `input_scale` (unused here:
  // fp8 matmuls scale the activations per call).
  for (const form of ['per-row', 'comfy_quant'] as const) {
    const { fp8, dequantised } = quantiseBlocks(weights, (k, v, fp8) => {
      const values = v.toTypedArray() as Float32Array;
      const [rows, cols] = v.shape;
      const scaleIndex = (i: number) => (form === 'per-row' ? Math.floor(i / cols) : 0);
      const scales = new Float32Array(form === 'per-row' ? rows : 1);
      values.forEach((x, i) => { scales[scaleIndex(i)] = Math.max(scales[scaleIndex(i)], Math.abs(x)); });
      scales.forEach((s, i) => { scales[i] = Math.fround(s / 448); });
      const codes = encodeE4m3fn(values.map((x, i) => x / scales[scaleIndex(i)]));
      const layer = k.replace(/\.weight$/, '');
      fp8.set(k, Tensor.fromTypedArray(codes, v.shape, 'f8_e4m3fn'));
      fp8.set(`${layer}.weight_scale`, Tensor.fromTypedArray(scales, form === 'per-row' ? [rows] : []));
      if (form === 'comfy_quant') {
        const config = new TextEncoder().encode(JSON.stringify({ format: 'float8_e4m3fn' }));
        fp8.set(`${layer}.comfy_quant`, Tensor.fromTypedArray(config, [config.length], 'u8'));
        fp8.set(`${layer}.input_scale`, Tensor.fromTypedArray(new Float32Array([0.01]), []));
      }
      return Float32Array.from(codes, (c, i) => Math.fround(decodeE4m3fn(c) * scales[scaleIndex(i)]));
    });
    const fp8File = path.join(dir, `${form}.safetensors`), refFile = path.join(dir, `${form}-dequantised.safetensors`);
    await saveSafetensors(fp8File, fp8);
    await saveSafetensors(refFile, dequantised);
    const err = maxAbsDiff(await forwardOf(fp8File, input), await forwardOf(refFile, input));
    t.ok(err <= 1e-6, `${form}: max abs difference ${err.toExponential(2)} from the dequantised f32 file`);
  }

  // Other comfy_quant formats are refused by name, as is a scale that fits the weight neither way.
  const nvfp4 = new Map(weights);
  const config = new TextEncoder().encode(JSON.stringify({ format: 'nvfp4' }));
  nvfp4.set('blocks.0.self_attn.q.weight', Tensor.fromTypedArray(new Uint8Array(64 * 32), [64, 32], 'u8'));
  nvfp4.set('blocks.0.self_attn.q.weight_scale', Tensor.fromTypedArray(new Uint8Array(64 * 4), [64, 4], 'f8_e4m3fn'));
  nvfp4.set('blocks.0.self_attn.q.weight_scale_2', Tensor.fromTypedArray(new Float32Array([1]), []));
  nvfp4.set('blocks.0.self_attn.q.comfy_quant', Tensor.fromTypedArray(config, [config.length], 'u8'));
  const nvfp4File = path.join(dir, 'nvfp4.safetensors');
  await saveSafetensors(nvfp4File, nvfp4);
  await t.rejects(forwardOf(nvfp4File, input), {
    code: 'WAN_BAD_CHECKPOINT',
    message: `${nvfp4File}: layer 'blocks.0.self_attn.q' is in ComfyUI's quantized format 'nvfp4' (its .comfy_quant ` +
      "config), which wan-native does not read; of that format it reads the fp8 layers with one scale per tensor " +
      '(float8_e4m3fn, float8_e5m2)',
  });
  const odd = new Map(weights);
  odd.set('blocks.0.ffn.0.scale_weight', Tensor.fromTypedArray(new Float32Array(64).fill(1), [64]));
  const oddFile = path.join(dir, 'odd-scale.safetensors');
  await saveSafetensors(oddFile, odd);
  await t.rejects(forwardOf(oddFile, input), {
    code: 'WAN_BAD_CHECKPOINT',
    message: `${oddFile}: tensor 'blocks.0.ffn.0.scale_weight' [64] must be one scale for its weight or one per output ` +
      'row (128) of the weight [128, 64]',
  });
});
