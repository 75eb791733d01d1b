// The Wan2.1 DiT against the official code's numbers (shared/golden and test/fixtures/dit,
// made by wan/modules/model.py at 9737cba9 on CPU in float32).
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { loadSafetensors, Tensor, WanModel } from '../../lib/index';
import type { AttentionMode, WanForwardInput } from '../../lib/index';
import { fixturesDir, goldenDir, maxAbsDiff, manifestsDir, tempDir, toNumbers, weightsDir, writeSparseSafetensors } from '../helpers';

const TOLERANCE = 1e-5;  // max abs error against the official fp32 forward (outputs are O(1))


function cosine(a: Tensor, b: Tensor): number {
  const x = toNumbers(a.toTypedArray()), y = toNumbers(b.toTypedArray());
  let xy = 0, xx = 0, yy = 0;
  for (let i = 0; i < x.length; i++) { xy += x[i] * y[i]; xx += x[i] * x[i]; yy += y[i] * y[i]; }
  return xy / Math.sqrt(xx * yy);
}

const seqLenOf = (g: Map<string, Tensor>, k: string) => Number(toNumbers(g.get(k)!.toTypedArray())[0]);

async function golden(file: string) {
  return (await loadSafetensors(file)).tensors;
}

// Inputs of a golden case: single-sample cases name x/context/y, batched ones x0, x1, ...
function caseInput(g: Map<string, Tensor>, c: string, clip?: Tensor): { input: WanForwardInput; outs: Tensor[] } {
  const batched = g.has(`${c}.x0`);
  const n = batched ? [...g.keys()].filter((k) => k.startsWith(`${c}.x`)).length : 1;
  const pick = (name: string) => (batched ? Array.from({ length: n }, (_, i) => g.get(`${c}.${name}${i}`)!) : [g.get(`${c}.${name}`)!]);
  const input: WanForwardInput = { x: pick('x'), t: g.get(`${c}.t`)!, context: pick('context'), seqLen: seqLenOf(g, `${c}.seq_len`) };
  if (g.has(`${c}.y`) || g.has(`${c}.y0`)) { input.y = pick('y'); input.clipFea = clip; }
  return { input, outs: pick('out') };
}

t.test('T2V: every golden case from the F32 and the BF16 file', async (t) => {
  const g = await golden(path.join(goldenDir, 'golden_dit_t2v.safetensors'));
  for (const dtype of ['f32', 'bf16']) {
    const model = await WanModel.load(path.join(weightsDir, `tiny_t2v_dit.${dtype}.safetensors`), { numHeads: 2, textLen: 16 });
    t.match(model.config, { modelType: 't2v', dim: 64, ffnDim: 128, numHeads: 2, numLayers: 2, inDim: 16, outDim: 16,
      textDim: 32, textLen: 16, freqDim: 256, patchSize: [1, 2, 2], computeDtype: 'f32', basePrecision: 'bf16' });
    for (const c of ['a', 'b', 'c', 'd']) {
      const { input, outs } = caseInput(g, c);
      const got = await model.forward(input);
      t.equal(got.length, outs.length);
      got.forEach((o, i) => {
        t.same(o.shape, outs[i].shape, `${dtype} ${c}[${i}] shape`);
        const err = maxAbsDiff(o, outs[i]);
        t.ok(err <= TOLERANCE, `${dtype} case ${c}[${i}]: max abs error ${err.toExponential(2)} <= ${TOLERANCE}`);
      });
    }
    model.dispose();
  }
});

t.test('T2V intermediates match, so a mismatch says where', async (t) => {
  const g = await golden(path.join(goldenDir, 'golden_dit_t2v.safetensors'));
  const model = await WanModel.load(path.join(weightsDir, 'tiny_t2v_dit.f32.safetensors'), { numHeads: 2, textLen: 16 });
  const { intermediates } = await model.trace(caseInput(g, 'a').input);
  const names = [...g.keys()].filter((k) => k.startsWith('im.')).map((k) => k.slice(3));
  t.equal(names.length, 14);
  for (const name of names) {
    const mine = intermediates.get(name);
    t.ok(mine, `${name} is traced`);
    if (!mine) continue;
    t.same(mine.shape, g.get(`im.${name}`)!.shape, `${name} shape`);
    const err = maxAbsDiff(mine, g.get(`im.${name}`)!);
    t.ok(err <= TOLERANCE, `${name}: max abs error ${err.toExponential(2)}`);
  }
});

t.test('I2V: the official forward with CLIP tokens and the y conditioning', async (t) => {
  const g = await golden(path.join(fixturesDir, 'dit', 'golden_dit_i2v.safetensors'));
  const model = await WanModel.load(path.join(weightsDir, 'tiny_i2v_dit.bf16.safetensors'), { numHeads: 2 });
  t.match(model.config, { modelType: 'i2v', inDim: 36, textLen: 512 });
  const clip = g.get('clip_fea')!.toTypedArray() as Float32Array;
  const clipOne = Tensor.fromTypedArray(clip.slice(0, 257 * 1280), [1, 257, 1280]);
  for (const c of ['a', 'b', 'c']) {
    const { input, outs } = caseInput(g, c, c === 'c' ? g.get('clip_fea')! : clipOne);
    const got = await model.forward(input);
    got.forEach((o, i) => {
      const err = maxAbsDiff(o, outs[i]);
      t.ok(err <= TOLERANCE, `i2v case ${c}[${i}]: max abs error ${err.toExponential(2)}`);
    });
  }
  const { intermediates } = await model.trace(caseInput(g, 'a', clipOne).input);
  for (const [mine, theirs] of [['img_emb', 'im.img_emb'], ['block0_cross_attn_out', 'im.block0.cross_attn']]) {
    const err = maxAbsDiff(intermediates.get(mine)!, g.get(theirs)!);
    t.ok(err <= TOLERANCE, `i2v ${mine}: max abs error ${err.toExponential(2)}`);
  }
});

t.test('FLF2V: first and last frame tokens with their position embedding', async (t) => {
  const g = await golden(path.join(fixturesDir, 'dit', 'golden_dit_flf2v.safetensors'));
  const clip = (await golden(path.join(fixturesDir, 'dit', 'golden_dit_i2v.safetensors'))).get('clip_fea')!;
  // The tiny FLF2V model is the tiny I2V one plus img_emb.emb_pos, given as a second shard.
  const model = await WanModel.load([path.join(weightsDir, 'tiny_i2v_dit.f32.safetensors'),
    path.join(fixturesDir, 'dit', 'tiny_flf2v_emb_pos.bf16.safetensors')], { numHeads: 2 });
  t.equal(model.config.modelType, 'flf2v');
  const { input, outs } = caseInput(g, 'a', clip);
  const { outputs, intermediates } = await model.trace(input);
  const err = maxAbsDiff(outputs[0], outs[0]);
  t.ok(err <= TOLERANCE, `flf2v: max abs error ${err.toExponential(2)}`);
  const embErr = maxAbsDiff(intermediates.get('img_emb')!, g.get('im.img_emb')!);
  t.ok(embErr <= TOLERANCE, `flf2v img_emb [1, 514, 64]: max abs error ${embErr.toExponential(2)}`);
  await t.rejects(model.forward({ ...input, clipFea: Tensor.fromTypedArray(new Float32Array(257 * 1280), [1, 257, 1280]) }),
    { code: 'WAN_INVALID_TENSOR', message: /a flf2v model needs clipFea \[2, 257, 1280\] \(first and last frame\), got \[1, 257, 1280\]/ });
});

t.test('attention modes agree with math on the golden case', async (t) => {
  const g = await golden(path.join(goldenDir, 'golden_dit_t2v.safetensors'));
  const model = await WanModel.load(path.join(weightsDir, 'tiny_t2v_dit.f32.safetensors'), { numHeads: 2, textLen: 16 });
  const { input, outs } = caseInput(g, 'b');  // with padding: the masks matter
  const tolerance: Record<AttentionMode, { maxAbs: number; cosine: number }> = {
    sdpa: { maxAbs: 1e-5, cosine: 0.999999 },
    flash: { maxAbs: 1e-5, cosine: 0.999999 },
    sageattn: { maxAbs: 5e-2, cosine: 0.999 },  // int8 Q.K^T
  };
  for (const mode of ['sdpa', 'flash', 'sageattn'] as AttentionMode[]) {
    model.attentionMode = mode;
    t.equal(model.config.attentionMode, mode);
    const [out] = await model.forward(input);
    const err = maxAbsDiff(out, outs[0]), cos = cosine(out, outs[0]);
    t.ok(err <= tolerance[mode].maxAbs, `${mode}: max abs error ${err.toExponential(2)} <= ${tolerance[mode].maxAbs}`);
    t.ok(cos >= tolerance[mode].cosine, `${mode}: cosine similarity ${cos.toFixed(7)} >= ${tolerance[mode].cosine}`);
  }
  t.throws(() => { model.attentionMode = 'xformers' as AttentionMode; },
    { code: 'WAN_INVALID_OPTION', message: 'Expected one of sdpa, flash, sageattn for attentionMode but received "xformers" of type string' });
});

t.test('compile and cudaGraphs: on the CPU they change nothing', async (t) => {
  // (On a GPU they run the fused kernels and replay CUDA graphs: test/gpu/models.test.ts.)
  const g = await golden(path.join(goldenDir, 'golden_dit_t2v.safetensors'));
  const file = path.join(weightsDir, 'tiny_t2v_dit.f32.safetensors');
  const eager = await WanModel.load(file, { numHeads: 2, textLen: 16 });
  const compiled = await WanModel.load(file, { numHeads: 2, textLen: 16, compile: true, cudaGraphs: true });
  t.equal(compiled.config.compiled, false, 'config.compiled: no fused kernels run on the CPU');
  t.equal(compiled.config.cudaGraphs, false, 'config.cudaGraphs: no graphs on the CPU');
  const { input } = caseInput(g, 'a');
  for (let i = 0; i < 3; i++) {  // three forwards of one shape: a GPU would capture at the second
    const [want, got] = [await eager.forward(input), await compiled.forward(input)];
    t.equal(maxAbsDiff(got[0], want[0]), 0, `forward ${i + 1}: bitwise the same output`);
  }
  t.same(compiled.graphStats(), { captures: 0, replays: 0, failure: null }, 'nothing captured or replayed');
  await t.rejects(WanModel.load(file, { numHeads: 2, textLen: 16, compile: 'yes' as never }),
    { code: 'WAN_INVALID_OPTION', message: 'Expected a boolean for compile but received "yes" of type string' });
  await t.rejects(WanModel.load(file, { numHeads: 2, textLen: 16, cudaGraphs: 1 as never }),
    { code: 'WAN_INVALID_OPTION', message: 'Expected a boolean for cudaGraphs but received 1 of type number' });
  eager.dispose();
  compiled.dispose();
});

t.test('configs are inferred from the shapes of every real DiT checkpoint', async (t) => {
  const dir = tempDir('wan-dit-config-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const manifests = fs.readdirSync(manifestsDir).filter((f) => /_dit\.json$/.test(f));
  t.equal(manifests.length, 5);
  for (const name of manifests) {
    const m = JSON.parse(fs.readFileSync(path.join(manifestsDir, name), 'utf8'));
    const file = writeSparseSafetensors(path.join(dir, name.replace('.json', '.safetensors')), m.tensors);
    const model = await WanModel.load(file, { populate: false });  // maps, reads no data
    const c = m.config;
    t.match(model.config, { modelType: c.model_type, dim: c.dim, ffnDim: c.ffn_dim, freqDim: c.freq_dim, textDim: c.text_dim,
      inDim: c.in_dim, outDim: c.out_dim, numHeads: c.num_heads, numLayers: c.num_layers, textLen: c.text_len,
      patchSize: c.patch_size, qkNorm: c.qk_norm, crossAttnNorm: c.cross_attn_norm, eps: c.eps }, name);
    model.dispose();
    fs.rmSync(file);
  }
});

t.test('a load reports every missing and unexpected key at once', async (t) => {
  const dir = tempDir('wan-dit-keys-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const m = JSON.parse(fs.readFileSync(path.join(manifestsDir, 'wan2.1_t2v_1.3B_dit.json'), 'utf8'));
  const entries = m.tensors.filter((e: { key: string }) => e.key !== 'blocks.3.ffn.0.bias' && e.key !== 'head.modulation');
  entries.push({ key: 'blocks.0.extra.weight', shape: [4] }, { key: 'lora_unet.x', shape: [2] });
  const file = writeSparseSafetensors(path.join(dir, 'broken.safetensors'), entries);
  await t.rejects(WanModel.load(file, { populate: false }), {
    code: 'WAN_BAD_CHECKPOINT',
    message: `${file}: not a Wan2.1 DiT of the inferred configuration: 2 missing [blocks.3.ffn.0.bias, head.modulation]; ` +
      '2 unexpected [blocks.0.extra.weight, lora_unet.x]',
  });
  // Shards: the error names every file, since a key may come from any of them (here a VAE
  // given as the second shard brings the unexpected ones).
  const dit = path.join(weightsDir, 'tiny_t2v_dit.f32.safetensors'), vae = path.join(weightsDir, 'tiny_vae.f32.safetensors');
  await t.rejects(WanModel.load([dit, vae], { numHeads: 2 }), {
    code: 'WAN_BAD_CHECKPOINT', message: new RegExp(`^${dit.replace(/[.\\/]/g, '\\$&')} and ${vae.replace(/[.\\/]/g, '\\$&')}: ` +
      'not a Wan2\\.1 DiT of the inferred configuration: \\d+ unexpected \\[conv1\\.'),
  });
  await t.rejects(WanModel.load(path.join(weightsDir, 'tiny_t2v_dit.f32.safetensors')),
    { code: 'WAN_INVALID_OPTION', message: /numHeads cannot be inferred for dim 64 \(releases use head dim 128\); pass numHeads/ });
  await t.rejects(WanModel.load(path.join(weightsDir, 'tiny_vae.f32.safetensors')),
    { code: 'WAN_BAD_CHECKPOINT', message: /not a Wan2\.1 DiT: no tensor 'patch_embedding\.weight'/ });
  await t.rejects(WanModel.load(path.join(weightsDir, 'tiny_t2v_dit.f32.safetensors'), { attentionMode: 'flash_attn_3' as AttentionMode }),
    { code: 'WAN_INVALID_OPTION', message: 'Expected one of sdpa, flash, sageattn for attentionMode but received "flash_attn_3" of type string' });
});

t.test('bad forward inputs are clear errors', async (t) => {
  const model = await WanModel.load(path.join(weightsDir, 'tiny_t2v_dit.f32.safetensors'), { numHeads: 2, textLen: 16 });
  const x = Tensor.fromTypedArray(new Float32Array(16 * 3 * 4 * 6), [16, 3, 4, 6]);
  const tt = Tensor.fromTypedArray(new BigInt64Array([500n]), [1]);
  const ctx = Tensor.fromTypedArray(new Float32Array(7 * 32), [7, 32]);
  await t.rejects(model.forward({ x: [x], t: tt, context: [ctx], seqLen: 10 }),
    { code: 'WAN_INVALID_TENSOR', message: 'forward: seqLen 10 is shorter than the 18 tokens of the largest sample' });
  await t.rejects(model.forward({ x: [x], t: tt, context: [Tensor.fromTypedArray(new Float32Array(20 * 32), [20, 32])], seqLen: 18 }),
    { code: 'WAN_INVALID_TENSOR', message: 'forward: context[0] must be [L <= 16, 32], got [20, 32]' });
  await t.rejects(model.forward({ x: [Tensor.fromTypedArray(new Float32Array(8 * 3 * 4 * 6), [8, 3, 4, 6])], t: tt, context: [ctx], seqLen: 18 }),
    { code: 'WAN_INVALID_TENSOR', message: 'forward: x[0] (with y) has 8 channels, the model takes 16' });
  await t.rejects(model.forward({ x: [x], t: tt, context: [], seqLen: 18 }), { code: 'WAN_INVALID_OPTION' });
  model.dispose();
  await t.rejects(model.forward({ x: [x], t: tt, context: [ctx], seqLen: 18 }), { code: 'WAN_INVALID_OPTION', message: 'the WanModel has been disposed' });
});
