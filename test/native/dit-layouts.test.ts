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
    const fp8 = new Map<string, Tensor>(), dequantised = new Map<string, Tensor>();
    let count = 0, elements = 0;
    for (const [k, v] of weights) {
      if (!quantised(k, v.shape)) {
        fp8.set(k, v);
        dequantised.set(k, v);
        continue;
      }
      const values = v.toTypedArray() as Float32Array;
      let absmax = 0;
      for (const x of values) absmax = Math.max(absmax, Math.abs(x));
      const scale = scaled ? Math.fround(absmax / 448) : 1;
      const codes = encodeE4m3fn(values.map((x) => x / scale));
      fp8.set(k, Tensor.fromTypedArray(codes, v.shape, 'f8_e4m3fn'));
      if (scaled) fp8.set(k.replace(/\.weight$/, '.scale_weight'), Tensor.fromTypedArray(new Float32Array([scale]), []));
      dequantised.set(k, Tensor.fromTypedArray(Float32Array.from(codes, (c) => Math.fround(decodeE4m3fn(c) * scale)), v.shape));
      count++;
      elements += values.length;
    }
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
