// The DiT, the VAE and the text encoder on a GPU against the official code's numbers (the
// goldens the CPU tests use), and block swap on a GPU. Runs where the addon was built against a
// CUDA libtorch and sees a GPU; skips itself elsewhere.
import t from 'tap';
import * as path from 'node:path';

import { ClipVisionEncoder, emptyEmbeds, loadSafetensors, planMemory, runtimeInfo, Sampler, saveSafetensors, Tensor, TextEncoder, Vae, WanModel } from '../../lib/index';
import { gpuMemory } from '../../lib/ops';
import type { AttentionMode, WanForwardInput } from '../../lib/index';
import { encodeE4m3fn, goldenDir, maxAbsDiff, randn, tempDir, toNumbers, weightsDir } from '../helpers';

const skip = runtimeInfo().cuda ? false : 'no CUDA GPU';

// fp32 on the GPU: matmuls in float32 (libtorch leaves TF32 off for them), but cuDNN may run
// convolutions in TF32 (10-bit mantissa), so fp32 bounds are 1e-3 where the CPU's are 1e-5.
// bf16 compute: the relative L2 error ||got - ref|| / ||ref||, <= 2e-2 (bf16 operands, METHOD.md).
const FP32_MAX_ABS = 1e-3;
// The VAE's fp32 convolutions run in TF32 on cuDNN's default, as PyTorch's: 1.1e-3 was measured
// on an H200 against the official numbers (encode 2.6e-4 to 8.3e-4, decode 9.2e-4 and 1.1e-3).
const VAE_MAX_ABS = 2e-3;
const BF16_REL_L2 = 2e-2;

function relL2(a: Tensor, b: Tensor): number {
  const x = toNumbers(a.toTypedArray()), y = toNumbers(b.toTypedArray());
  let d = 0, n = 0;
  for (let i = 0; i < x.length; i++) { d += (x[i] - y[i]) ** 2; n += y[i] ** 2; }
  return Math.sqrt(d / n);
}

async function golden(file: string) {
  return (await loadSafetensors(file)).tensors;
}

function t2vCase(g: Map<string, Tensor>, c: string): { input: WanForwardInput; outs: Tensor[] } {
  const batched = g.has(`${c}.x0`);
  const n = batched ? [...g.keys()].filter((k) => k.startsWith(`${c}.x`)).length : 1;
  const pick = (name: string) => (batched ? Array.from({ length: n }, (_, i) => g.get(`${c}.${name}${i}`)!) : [g.get(`${c}.${name}`)!]);
  const seqLen = Number(toNumbers(g.get(`${c}.seq_len`)!.toTypedArray())[0]);
  return { input: { x: pick('x'), t: g.get(`${c}.t`)!, context: pick('context'), seqLen }, outs: pick('out') };
}

const dit = (dtype: string) => path.join(weightsDir, `tiny_t2v_dit.${dtype}.safetensors`);

t.test('DiT on the GPU: every T2V golden case, fp32 and bf16 compute, every attention mode', { skip }, async (t) => {
  const g = await golden(path.join(goldenDir, 'golden_dit_t2v.safetensors'));
  for (const basePrecision of ['fp32', 'bf16'] as const) {
    const model = await WanModel.load(dit('f32'), { numHeads: 2, textLen: 16, device: 'cuda', basePrecision });
    t.match(model.config, { device: 'cuda:0', computeDtype: basePrecision === 'fp32' ? 'f32' : 'bf16' });
    for (const mode of ['sdpa', 'flash', 'sageattn'] as AttentionMode[]) {
      model.attentionMode = mode;
      for (const c of ['a', 'b', 'c', 'd']) {
        const { input, outs } = t2vCase(g, c);
        const got = await model.forward(input);
        got.forEach((o, i) => {
          t.same(o.shape, outs[i].shape);
          if (basePrecision === 'fp32' && mode !== 'sageattn') {
            const err = maxAbsDiff(o, outs[i]);
            t.ok(err <= FP32_MAX_ABS, `fp32 ${mode} case ${c}[${i}]: max abs error ${err.toExponential(2)} <= ${FP32_MAX_ABS}`);
          } else {
            const err = relL2(o, outs[i]);
            t.ok(err <= BF16_REL_L2, `${basePrecision} ${mode} case ${c}[${i}]: relative L2 error ${err.toExponential(2)} <= ${BF16_REL_L2}`);
          }
        });
      }
    }
    model.dispose();
  }
});

t.test('compile on the GPU: the fused kernels agree with the eager ops and the goldens', { skip }, async (t) => {
  // The fused q/k norm + RoPE, modulation and gated residual kernels and the GELU in ffn.0's
  // matmul. Compiled and eager differ in the order the norms sum a row and in where the GELU
  // reads its input (the matmul's float32 sum, not its rounding to the compute dtype): within
  // 1e-5 in fp32. In bf16 they round at different places, so they differ by less than eager
  // differs from the official float32 output (3.1e-3 against 4.8e-3 on an H200), and compiling
  // costs no accuracy: compiled is as close to the official output as eager, within 10%.
  const g = await golden(path.join(goldenDir, 'golden_dit_t2v.safetensors'));
  for (const basePrecision of ['fp32', 'bf16'] as const) {
    const load = (compile: boolean) => WanModel.load(dit('f32'), { numHeads: 2, textLen: 16, device: 'cuda', basePrecision, attentionMode: 'flash', compile });
    const eager = await load(false), compiled = await load(true);
    t.equal(compiled.config.compiled, true, `${basePrecision}: config.compiled`);
    t.equal(eager.config.compiled, false);
    for (const c of ['a', 'b', 'c', 'd']) {
      const { input, outs } = t2vCase(g, c);
      const [want, got] = [await eager.forward(input), await compiled.forward(input)];
      got.forEach((o, i) => {
        if (basePrecision === 'fp32') {
          const err = maxAbsDiff(o, want[i]);
          t.ok(err <= 1e-5, `fp32 case ${c}[${i}]: compiled vs eager max abs ${err.toExponential(2)} <= 1e-5`);
          const golden = maxAbsDiff(o, outs[i]);
          t.ok(golden <= FP32_MAX_ABS, `fp32 case ${c}[${i}]: compiled vs the official ${golden.toExponential(2)} <= ${FP32_MAX_ABS}`);
        } else {
          const err = relL2(o, want[i]), eagerError = relL2(want[i], outs[i]), golden = relL2(o, outs[i]);
          t.ok(err <= eagerError, `bf16 case ${c}[${i}]: compiled vs eager relative L2 ${err.toExponential(2)} <= eager vs the official ${eagerError.toExponential(2)}`);
          t.ok(golden <= 1.1 * eagerError, `bf16 case ${c}[${i}]: compiled vs the official ${golden.toExponential(2)} <= 1.1 x eager's`);
          t.ok(golden <= BF16_REL_L2, `bf16 case ${c}[${i}]: compiled vs the official ${golden.toExponential(2)} <= ${BF16_REL_L2}`);
        }
      });
    }
    eager.dispose();
    compiled.dispose();
  }
});

t.test('DiT on the GPU: block swap and prefetch give bitwise the output without swap', { skip }, async (t) => {
  const g = await golden(path.join(goldenDir, 'golden_dit_t2v.safetensors'));
  const { input } = t2vCase(g, 'b');
  for (const dtype of ['f32', 'bf16']) {
    const model = await WanModel.load(dit(dtype), { numHeads: 2, textLen: 16, device: 'cuda', basePrecision: 'bf16' });
    const [base] = await model.forward(input);
    for (const [blocksToSwap, prefetchBlocks] of [[1, 0], [2, 0], [2, 1], [2, 2], [0, 0]]) {
      model.setBlockSwap({ blocksToSwap, prefetchBlocks });
      const [out] = await model.forward(input);
      t.equal(maxAbsDiff(out, base), 0, `${dtype} file: swap ${blocksToSwap}, prefetch ${prefetchBlocks}: bitwise equal`);
      t.same(model.memoryStats().swapped.bytes > 0, blocksToSwap > 0, 'memoryStats counts the swapped blocks');
    }
    model.dispose();
  }
  const swapped = await WanModel.load(dit('bf16'), { numHeads: 2, textLen: 16, device: 'cuda', blockSwap: { blocksToSwap: 2, prefetchBlocks: 1 } });
  const plain = await WanModel.load(dit('bf16'), { numHeads: 2, textLen: 16, device: 'cuda' });
  t.equal(maxAbsDiff((await swapped.forward(input))[0], (await plain.forward(input))[0]), 0, 'swap set at load: bitwise equal');
});

t.test('DiT: the GPU (fp32) and the CPU agree', { skip }, async (t) => {
  const g = await golden(path.join(goldenDir, 'golden_dit_t2v.safetensors'));
  const { input } = t2vCase(g, 'c');
  const cpu = await WanModel.load(dit('bf16'), { numHeads: 2, textLen: 16 });
  const gpu = await WanModel.load(dit('bf16'), { numHeads: 2, textLen: 16, device: 'cuda', basePrecision: 'fp32' });
  const err = maxAbsDiff((await gpu.forward(input))[0], (await cpu.forward(input))[0]);
  t.ok(err <= FP32_MAX_ABS, `max abs difference ${err.toExponential(2)} <= ${FP32_MAX_ABS}`);
  // NAG: the guided cross-attention on the GPU as on the CPU (a NAG context of the golden's shape).
  const nag = { context: randn(input.context[0].shape, 9), scale: 4, tau: 1.4, alpha: 0.5 };
  const nagErr = maxAbsDiff((await gpu.forward({ ...input, nag }))[0], (await cpu.forward({ ...input, nag }))[0]);
  t.ok(nagErr <= FP32_MAX_ABS, `NAG: max abs difference ${nagErr.toExponential(2)} <= ${FP32_MAX_ABS}`);
  t.ok(maxAbsDiff((await gpu.forward({ ...input, nag }))[0], (await gpu.forward(input))[0]) > 1e-4, 'NAG changes the GPU output');
});

t.test('RIFLEx, skipped blocks and the block caches on the GPU give what they give on the CPU, cudaGraphs or not', { skip }, async (t) => {
  // fp32 on both: each option's output against the CPU's (FP32_MAX_ABS, cuDNN's TF32 patch
  // embedding); each block cache's second identical call, which skips the blocks, against its first.
  const g = await golden(path.join(goldenDir, 'golden_dit_t2v.safetensors'));
  const { input } = t2vCase(g, 'a');
  const [, F, H, W] = input.x[0].shape;
  const base = { x: [input.x[0]], context: [input.context[0]], seqLen: F * (H / 2) * (W / 2), t: Tensor.fromTypedArray(new Float32Array([700]), [1]) };
  const cpu = await WanModel.load(dit('f32'), { numHeads: 2, textLen: 16 });
  for (const cudaGraphs of [false, true]) {
    const gpu = await WanModel.load(dit('f32'), { numHeads: 2, textLen: 16, device: 'cuda', basePrecision: 'fp32', compile: cudaGraphs, cudaGraphs });
    const options: [string, Partial<WanForwardInput>][] = [['RIFLEx 2 over 9 frames', { riflexFreqIndex: 2, riflexLatentFrames: 9 }], ['block 0 skipped', { skipBlocks: [0] }]];
    for (const [what, extra] of options) {
      const want = (await cpu.forward({ ...base, ...extra }))[0];
      for (let i = 0; i < 3; i++) {  // with cudaGraphs: warm-up, capture, replay
        const err = maxAbsDiff((await gpu.forward({ ...base, ...extra }))[0], want);
        t.ok(err <= FP32_MAX_ABS, `cudaGraphs ${cudaGraphs}, ${what}, call ${i + 1}: max abs ${err.toExponential(2)} <= ${FP32_MAX_ABS}`);
      }
    }
    for (const cacheDevice of ['offload_device', 'main_device'] as const) {
      // Each block cache's second identical call skips (TeaCache: no change of e0; MagCache: a
      // ratio of 1), its residual kept on either device.
      const calls = {
        teacache: (step: number) => ({ method: 'teacache' as const, stream: 0, step, threshold: 0.5, mode: 'e0' as const, cacheDevice }),
        magcache: (step: number) => ({ method: 'magcache' as const, stream: 0, step, threshold: 0.02, magnitudeRatio: 1, maxSkips: 4, cacheDevice }),
      };
      for (const [method, call] of Object.entries(calls)) {
        gpu.clearCache();
        const [computed] = await gpu.forward({ ...base, cache: call(0) });
        const [reused] = await gpu.forward({ ...base, cache: call(1) });
        t.same(gpu.cacheReport(), [{ stream: 0, skippedSteps: [1] }], `cudaGraphs ${cudaGraphs}, ${method}, ${cacheDevice}: the second call skipped`);
        const err = maxAbsDiff(reused, computed);
        t.ok(err <= 1e-5, `cudaGraphs ${cudaGraphs}, ${method}, ${cacheDevice}: the residual gives the blocks' output back, max abs ${err.toExponential(2)}`);
      }
    }
    gpu.clearCache();
    gpu.dispose();
  }
  cpu.dispose();
});

t.test('VAE on the GPU: encode and decode against the official numbers', { skip }, async (t) => {
  const g = await golden(path.join(goldenDir, 'golden_vae.safetensors'));
  const vae = await Vae.load(path.join(weightsDir, 'tiny_vae.f32.safetensors'), { device: 'cuda' });
  t.equal(vae.config.device, 'cuda:0');
  for (const c of ['v1', 'v5', 'v9']) {
    const z = await vae.encode(g.get(`enc.${c}.video`)!);
    const err = maxAbsDiff(z, g.get(`enc.${c}.z`)!);
    t.ok(err <= VAE_MAX_ABS, `encode ${c}: max abs error ${err.toExponential(2)} <= ${VAE_MAX_ABS}`);
  }
  for (const c of ['z5', 'zr']) {
    const video = await vae.decode(g.get(`dec.${c}.z`)!, { clamp: false });
    const err = maxAbsDiff(video, g.get(`dec.${c}.video_unclamped`)!);
    t.ok(err <= VAE_MAX_ABS, `decode ${c}: max abs error ${err.toExponential(2)} <= ${VAE_MAX_ABS}`);
  }
  const tiled = await vae.decode(g.get('dec.zr.z')!, { clamp: false, tiled: true, tileX: 32, tileY: 32, tileStrideX: 16, tileStrideY: 16 });
  const cpuVae = await Vae.load(path.join(weightsDir, 'tiny_vae.f32.safetensors'));
  const cpuTiled = await cpuVae.decode(g.get('dec.zr.z')!, { clamp: false, tiled: true, tileX: 32, tileY: 32, tileStrideX: 16, tileStrideY: 16 });
  const err = maxAbsDiff(tiled, cpuTiled);
  t.ok(err <= VAE_MAX_ABS, `tiled decode: GPU and CPU within ${err.toExponential(2)} <= ${VAE_MAX_ABS}`);
  // The tiled encode: tiles of the video encoded alone and blended, on the GPU as on the CPU.
  const tiling = { tiled: true, tileX: 32, tileY: 32, tileStrideX: 16, tileStrideY: 16 };
  const video = g.get('enc.v5.video')!;  // 64 x 48: 3 x 2 tiles of 32 every 16
  const encErr = maxAbsDiff(await vae.encode(video, tiling), await cpuVae.encode(video, tiling));
  t.ok(encErr <= VAE_MAX_ABS, `tiled encode: GPU and CPU within ${encErr.toExponential(2)} <= ${VAE_MAX_ABS}`);
  cpuVae.dispose();
});

t.test('Text encoder on the GPU against the official numbers', { skip }, async (t) => {
  const g = await golden(path.join(goldenDir, 'golden_t5.safetensors'));
  for (const dtype of ['f32', 'bf16']) {
    const enc = await TextEncoder.load(path.join(weightsDir, `tiny_umt5_enc.${dtype}.safetensors`), { device: 'cuda' });
    t.equal(enc.config.device, 'cuda:0');
    for (const c of ['a', 'b']) {
      const out = await enc.encodeTokens(g.get(`${c}.ids`)!, g.get(`${c}.mask`)!);
      const err = maxAbsDiff(out, g.get(`${c}.out`)!);
      t.ok(err <= FP32_MAX_ABS, `${dtype} case ${c}: max abs error ${err.toExponential(2)} <= ${FP32_MAX_ABS}`);
    }
  }
});

t.test('cudaGraphs on the GPU: the replayed blocks give what running them gives', { skip }, async (t) => {
  // The same kernels in the same order, captured once and replayed with new inputs copied in:
  // expected bit for bit, held to 1e-6. One unpadded sample (padding runs the blocks as they are).
  const g = await golden(path.join(goldenDir, 'golden_dit_t2v.safetensors'));
  const { input } = t2vCase(g, 'a');
  const [, F, H, W] = input.x[0].shape;
  const base = { x: [input.x[0]], context: [input.context[0]], seqLen: F * (H / 2) * (W / 2) };
  const steps = [999, 999, 700, 400].map((v) => ({ ...base, t: Tensor.fromTypedArray(new Float32Array([v]), [1]) }));
  for (const basePrecision of ['fp32', 'bf16'] as const) {
    const load = (cudaGraphs: boolean) => WanModel.load(dit('f32'), { numHeads: 2, textLen: 16, device: 'cuda', basePrecision, attentionMode: 'sdpa', compile: true, cudaGraphs });
    const plain = await load(false), graphed = await load(true);
    t.equal(graphed.config.cudaGraphs, true, `${basePrecision}: config.cudaGraphs`);
    t.equal(plain.config.cudaGraphs, false);
    for (const [i, step] of steps.entries()) {
      const [want] = await plain.forward(step);
      const [got] = await graphed.forward(step);
      const err = maxAbsDiff(got, want);
      t.ok(err <= 1e-6, `${basePrecision} forward ${i + 1}: graphed vs plain max abs ${err.toExponential(2)} <= 1e-6`);
    }
    t.same(graphed.graphStats(), { captures: 1, replays: 3, failure: null },
      `${basePrecision}: forward 1 warms up, forward 2 captures and replays, 3 and 4 replay`);
    // offload() releases the graph (it reads the placed weights): the next forwards warm up and capture anew.
    await graphed.offload();
    for (const step of steps.slice(0, 2)) await graphed.forward(step);
    t.same(graphed.graphStats(), { captures: 2, replays: 4, failure: null }, `${basePrecision}: after offload, a new capture`);
    plain.dispose();
    graphed.dispose();
  }
});

t.test('fp8_e4m3fn_fast and fp8_e4m3fn_scaled_fast: fp8 matmuls on the GPU, against the bf16 model and fp8 storage', { skip }, async (t) => {
  const g = await golden(path.join(goldenDir, 'golden_dit_t2v.safetensors'));
  const load = (quantization: 'fp8_e4m3fn' | 'fp8_e4m3fn_scaled' | 'fp8_e4m3fn_fast' | 'fp8_e4m3fn_scaled_fast') =>
    WanModel.load(dit('bf16'), { numHeads: 2, textLen: 16, device: 'cuda', basePrecision: 'bf16', quantization });
  for (const [form, storage] of [['fp8_e4m3fn_fast', 'fp8_e4m3fn'], ['fp8_e4m3fn_scaled_fast', 'fp8_e4m3fn_scaled']] as const) {
    const fast = await load(form), stored = await load(storage);
    t.equal(fast.config.quantization, form);
    let worst = 0, worstRel = 0, fromStorage = 0;
    for (const c of ['a', 'b', 'c']) {
      const { input, outs } = t2vCase(g, c);
      const [a] = await fast.forward(input);
      const [b] = await stored.forward(input);
      worst = Math.max(worst, maxAbsDiff(a, outs[0]));
      worstRel = Math.max(worstRel, relL2(a, outs[0]));
      fromStorage = Math.max(fromStorage, maxAbsDiff(a, b));
    }
    // fp8_e4m3fn storage alone is 8.3e-2 from the bf16 model (test/native/quantize.test.ts, bound
    // 0.25); quantising the activations too adds about as much again (one scale per tensor: 0.150
    // max abs, 3.4e-2 relative L2 on an H200; sm_90 now scales each row).
    t.ok(worst < 0.25, `${form}: max abs error against the bf16 model ${worst.toExponential(2)} < 0.25`);
    t.ok(worstRel < 0.1, `${form}: relative L2 error against the bf16 model ${worstRel.toExponential(2)} < 0.1`);
    t.ok(fromStorage > 1e-4, `${form}: differs from ${storage} storage with bf16 matmuls (${fromStorage.toExponential(2)}): the fp8 path ran`);
    fast.dispose();
    stored.dispose();
  }
  await t.rejects(WanModel.load(dit('bf16'), { numHeads: 2, textLen: 16, quantization: 'fp8_e4m3fn_fast' }),
    { code: 'WAN_INVALID_OPTION', message: /fp8_e4m3fn_fast.*GPU.*computes on the CPU/ });
  // A scaled-fp8 file whose `scaled_fp8` marker has 2 elements: its producer disabled fp8 matmuls
  // (ComfyUI), so the fast form is refused, naming the file; storage alone loads.
  const tensors = (await loadSafetensors(dit('f32'))).tensors;
  const marked = new Map<string, Tensor>();
  for (const [k, v] of tensors) {
    if (!(k.startsWith('blocks.') && k.endsWith('.weight') && v.shape.length === 2)) { marked.set(k, v); continue; }
    const x = toNumbers(v.toTypedArray());
    const scale = Math.fround(x.reduce((m, y) => Math.max(m, Math.abs(y)), 0) / 448);
    marked.set(k, Tensor.fromTypedArray(encodeE4m3fn(Float32Array.from(x, (y) => y / scale)), v.shape, 'f8_e4m3fn'));
    marked.set(k.replace(/\.weight$/, '.scale_weight'), Tensor.fromTypedArray(new Float32Array([scale]), []));
  }
  marked.set('scaled_fp8', Tensor.fromTypedArray(new Uint8Array(2), [2], 'f8_e4m3fn'));
  const markedFile = path.join(tempDir(), 'no-fp8-matmul.safetensors');
  await saveSafetensors(markedFile, marked);
  const onGpu = { numHeads: 2, textLen: 16, device: 'cuda', basePrecision: 'bf16' } as const;
  await t.rejects(WanModel.load(markedFile, { ...onGpu, quantization: 'fp8_e4m3fn_scaled_fast' }), {
    code: 'WAN_INVALID_OPTION',
    message: `quantization 'fp8_e4m3fn_scaled_fast': ${markedFile} says its fp8 weights must not be multiplied in fp8 ` +
      "(its scaled_fp8 marker has 2 elements, which ComfyUI reads as fp8 matmuls disabled); use 'fp8_e4m3fn_scaled' (fp8 storage)",
  });
  (await WanModel.load(markedFile, { ...onGpu, quantization: 'fp8_e4m3fn_scaled' })).dispose();
});

t.test('sampling to video on the GPU (fp32) matches the CPU', { skip }, async (t) => {
  const g = await golden(path.join(goldenDir, 'golden_dit_t2v.safetensors'));
  const textEmbeds = { promptEmbeds: [g.get('a.context')!], negativePromptEmbeds: [g.get('b.context')!] };
  const run = async (device: 'cpu' | 'cuda') => {
    const model = await WanModel.load(dit('f32'), { numHeads: 2, textLen: 16, device, basePrecision: 'fp32' });
    const latent = await new Sampler(model).sample({
      imageEmbeds: emptyEmbeds({ width: 48, height: 32, numFrames: 9 }), textEmbeds, steps: 4, cfg: 5, shift: 5, seed: 7, scheduler: 'unipc',
    });
    model.dispose();
    const vae = await Vae.load(path.join(weightsDir, 'tiny_vae.f32.safetensors'), { device });
    const video = await vae.decode(latent);
    vae.dispose();
    return { latent, video };
  };
  const cpu = await run('cpu'), gpu = await run('cuda');
  t.same(gpu.video.shape, [3, 9, 32, 48]);
  const latentErr = maxAbsDiff(gpu.latent, cpu.latent), videoErr = maxAbsDiff(gpu.video, cpu.video);
  t.ok(latentErr <= FP32_MAX_ABS, `latent after 4 UniPC steps: GPU and CPU within ${latentErr.toExponential(2)} <= ${FP32_MAX_ABS}`);
  t.ok(videoErr <= VAE_MAX_ABS, `decoded video: GPU and CPU within ${videoErr.toExponential(2)} <= ${VAE_MAX_ABS}`);
});

t.test("planMemory on 'cuda' budgets the GPU's free memory", { skip }, async (t) => {
  const plan = await planMemory({ dit: dit('bf16'), device: 'cuda', width: 16, height: 16, numFrames: 1 });
  const m = gpuMemory('cuda')!;
  t.ok(plan.budget > 2 ** 30 && plan.budget <= m.total, `budget ${(plan.budget / 2 ** 30).toFixed(1)} GiB of ${(m.total / 2 ** 30).toFixed(1)} GiB`);
  t.ok(plan.fits, 'the tiny model fits');
});

t.test('CLIP vision on the GPU against the official numbers', { skip }, async (t) => {
  const g = await golden(path.join(goldenDir, 'golden_clip.safetensors'));
  const clip = await ClipVisionEncoder.load(path.join(weightsDir, 'tiny_clip.f32.safetensors'), { numHeads: 4, device: 'cuda' });
  t.equal(clip.config.device, 'cuda:0');
  const { clipEmbeds } = await clip.encode(g.get('video')!, { crop: 'disabled' });
  const err = maxAbsDiff(clipEmbeds, g.get('out_use_31_block')!);
  t.ok(err <= VAE_MAX_ABS, `max abs error ${err.toExponential(2)} <= ${VAE_MAX_ABS} (a TF32 patch convolution)`);
});

t.test('unmerged LoRAs on the GPU compute what they do on the CPU, swapped or not', { skip }, async (t) => {
  const g = await golden(path.join(goldenDir, 'golden_dit_t2v.safetensors'));
  const { input } = t2vCase(g, 'a');
  // Rank 4 on a block's linear layer and on the head (outside the blocks), ComfyUI key names.
  const tensors: Record<string, Tensor> = {};
  [['blocks.1.self_attn.q', 64, 64], ['head.head', 64, 64]].forEach(([m, out, inp], i) => {
    tensors[`diffusion_model.${m}.lora_A.weight`] = randn([4, inp as number], 20 + i);
    tensors[`diffusion_model.${m}.lora_B.weight`] = randn([out as number, 4], 30 + i);
  });
  const file = path.join(tempDir('wan-gpu-lora-'), 'lora.safetensors');
  await saveSafetensors(file, tensors);
  const loras = [{ path: file, strength: [0.3, -0.2] }];
  const load = (device: 'cpu' | 'cuda', blocksToSwap = 0) => WanModel.load(dit('f32'), {
    numHeads: 2, textLen: 16, device, basePrecision: 'fp32', loras, mergeLoras: false, blockSwap: { blocksToSwap, prefetchBlocks: 1 },
  });
  const cpu = await load('cpu'), gpu = await load('cuda'), swapped = await load('cuda', 2);
  for (const step of [0, 1]) {
    const [want] = await cpu.forward({ ...input, step });
    const [got] = await gpu.forward({ ...input, step });
    const err = maxAbsDiff(got, want);
    t.ok(err <= FP32_MAX_ABS, `step ${step}: GPU and CPU within ${err.toExponential(2)} <= ${FP32_MAX_ABS}`);
    t.equal(maxAbsDiff((await swapped.forward({ ...input, step }))[0], got), 0, `step ${step}: 2 blocks swapped, bitwise equal`);
  }
});

t.test('placement on the GPU: weights come with the first use and leave with offload(); outputs stay', { skip }, async (t) => {
  const g = await golden(path.join(goldenDir, 'golden_dit_t2v.safetensors'));
  const { input } = t2vCase(g, 'a');
  const allocated = () => gpuMemory('cuda')!.allocated;
  const base = allocated();
  const options = { numHeads: 2, textLen: 16, device: 'cuda', basePrecision: 'fp32' } as const;
  const model = await WanModel.load(dit('f32'), options);
  const weights = model.memoryStats().weights;
  t.ok(allocated() - base < weights / 4, `loaded to the offload device: ${allocated() - base} bytes on the GPU, the weights are ${weights}`);
  const [first] = await model.forward(input);
  t.ok(allocated() - base >= weights, `after a forward: ${allocated() - base} bytes on the GPU >= ${weights}`);
  await model.offload();
  t.ok(allocated() - base < weights / 4, `after offload(): ${allocated() - base} bytes on the GPU`);
  t.equal(maxAbsDiff((await model.forward(input))[0], first), 0, 'brought back: bitwise the same output');
  model.dispose();

  // Block swap's offload_txt_emb: text_embedding stays on the CPU, the output does not change.
  const resident = await WanModel.load(dit('f32'), { ...options, loadDevice: 'main_device' });
  const residentBytes = allocated() - base;
  const [want] = await resident.forward(input);
  resident.dispose();
  const keeping = await WanModel.load(dit('f32'), { ...options, loadDevice: 'main_device', blockSwap: { offloadTxtEmb: true } });
  t.ok(allocated() - base < residentBytes, `offloadTxtEmb: ${allocated() - base} bytes resident < ${residentBytes}`);
  t.equal(maxAbsDiff((await keeping.forward(input))[0], want), 0, 'offloadTxtEmb: bitwise the same output');
  keeping.dispose();

  const encoder = await TextEncoder.load(path.join(weightsDir, 'tiny_umt5_enc.f32.safetensors'), { device: 'cuda', loadDevice: 'main_device' });
  const encoderBytes = encoder.memoryStats().weights;
  t.ok(allocated() - base >= encoderBytes, 'the text encoder loaded to the main device');
  const ids = Tensor.fromTypedArray(new BigInt64Array([5n, 9n, 1n, 0n]), [1, 4], 'i64');
  const mask = Tensor.fromTypedArray(new BigInt64Array([1n, 1n, 1n, 0n]), [1, 4], 'i64');
  const before = await encoder.encodeTokens(ids, mask);
  await encoder.offload();
  t.ok(allocated() - base < encoderBytes / 4, `text encoder offloaded: ${allocated() - base} bytes on the GPU`);
  t.equal(maxAbsDiff(await encoder.encodeTokens(ids, mask), before), 0, 'text encoder brought back: the same output');
  encoder.dispose();
});
