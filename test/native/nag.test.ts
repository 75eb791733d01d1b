// NAG, Normalized Attention Guidance (WanModel.forward's nag, the wrapper's WanVideoApplyNAG), on
// the tiny T2V DiT: each block's text cross-attention, traced towards the context (Z+) and towards
// the NAG context (Z-), combined here by the method's formula and put through the block's output
// projection, must be what the block added; and the cases where NAG can change nothing, change nothing.
import t from 'tap';
import * as path from 'node:path';

import { emptyEmbeds, loadSafetensors, Sampler, Tensor, WanModel } from '../../lib/index';
import { native } from '../../lib/native';
import { createScheduler } from '../../lib/schedulers';
import type { WanForwardInput } from '../../lib/index';
import { maxAbsDiff, randn, weightsDir } from '../helpers';

const file = path.join(weightsDir, 'tiny_t2v_dit.f32.safetensors');
const DIM = 64;

// The method's combination per token over the whole width, in float64: guided = s Z+ - (s - 1)
// Z-; where |guided|_1 / |Z+|_1 > tau (0/0 counting as 10), guided scaled to tau |Z+|_1 / (|guided|_1
// + 1e-7); then alpha guided + (1 - alpha) Z+.
function nagCombine(pos: Float32Array, neg: Float32Array, scale: number, tau: number, alpha: number): { out: Float64Array; clamped: number } {
  const out = new Float64Array(pos.length);
  let clamped = 0;
  for (let token = 0; token < pos.length / DIM; token++) {
    const at = token * DIM;
    const guided = Array.from({ length: DIM }, (_, c) => pos[at + c] * scale - neg[at + c] * (scale - 1));
    const normPos = pos.subarray(at, at + DIM).reduce((a, v) => a + Math.abs(v), 0);
    const normGuided = guided.reduce((a, v) => a + Math.abs(v), 0);
    let ratio = normGuided / normPos;
    if (Number.isNaN(ratio)) ratio = 10;
    const factor = ratio > tau ? (normPos * tau) / (normGuided + 1e-7) : 1;
    if (ratio > tau) clamped++;
    for (let c = 0; c < DIM; c++) out[at + c] = alpha * guided[c] * factor + (1 - alpha) * pos[at + c];
  }
  return { out, clamped };
}

t.test('NAG: the traced cross-attention outputs, combined by the method and projected, are what each block added', async (t) => {
  const model = await WanModel.load(file, { numHeads: 2, textLen: 16 });
  const { tensors } = await loadSafetensors(file);
  const input: WanForwardInput = { x: [randn([16, 2, 4, 4], 1)], t: Tensor.fromTypedArray(Float64Array.of(700), [1]),
    context: [randn([6, 32], 2)], seqLen: 8 };
  const nagContext = randn([9, 32], 3);
  for (const [scale, tau, alpha] of [[11, 2.5, 0.25], [4, 0.6, 0.8], [2, 1.4, 0.5]]) {
    const { intermediates } = await model.trace({ ...input, nag: { context: nagContext, scale, tau, alpha } });
    for (const block of [0, 1]) {
      const pos = intermediates.get(`block${block}_cross_attn_text`)!.toTypedArray() as Float32Array;
      const neg = intermediates.get(`block${block}_cross_attn_nag`)!.toTypedArray() as Float32Array;
      const { out, clamped } = nagCombine(pos, neg, scale, tau, alpha);
      const w = tensors.get(`blocks.${block}.cross_attn.o.weight`)!.toTypedArray() as Float32Array;
      const b = tensors.get(`blocks.${block}.cross_attn.o.bias`)!.toTypedArray() as Float32Array;
      const got = intermediates.get(`block${block}_cross_attn_out`)!.toTypedArray() as Float32Array;
      let worst = 0, largest = 0;
      for (let token = 0; token < out.length / DIM; token++)
        for (let o = 0; o < DIM; o++) {
          let sum = b[o];
          for (let c = 0; c < DIM; c++) sum += w[o * DIM + c] * out[token * DIM + c];
          worst = Math.max(worst, Math.abs(got[token * DIM + o] - sum));
          largest = Math.max(largest, Math.abs(sum));
        }
      t.ok(worst <= 1e-5 * Math.max(1, largest), `scale ${scale}, tau ${tau}, alpha ${alpha}, block ${block}: max abs ${worst.toExponential(2)} ` +
        `(outputs up to ${largest.toFixed(2)}; ${clamped} of ${out.length / DIM} tokens held to tau)`);
      if (tau === 1.4) t.ok(clamped > 0 && clamped < out.length / DIM, 'tau 1.4: some tokens held back, some not (both branches)');
    }
  }
  model.dispose();
});

t.test('NAG changes nothing where it cannot: scale 1, or the NAG context the context itself', async (t) => {
  const model = await WanModel.load(file, { numHeads: 2, textLen: 16 });
  const input: WanForwardInput = { x: [randn([16, 2, 4, 4], 4)], t: Tensor.fromTypedArray(Float64Array.of(400), [1]),
    context: [randn([6, 32], 5)], seqLen: 8 };
  const [plain] = await model.forward(input);
  const [unit] = await model.forward({ ...input, nag: { context: randn([9, 32], 6), scale: 1 } });
  t.ok(maxAbsDiff(unit, plain) <= 1e-6, `scale 1: the plain forward (max abs ${maxAbsDiff(unit, plain).toExponential(2)})`);
  const [self] = await model.forward({ ...input, nag: { context: input.context[0], scale: 11 } });
  t.ok(maxAbsDiff(self, plain) <= 1e-6, `the context as its own NAG context: the plain forward (max abs ${maxAbsDiff(self, plain).toExponential(2)})`);
  const [guided] = await model.forward({ ...input, nag: { context: randn([9, 32], 6) } });
  t.ok(maxAbsDiff(guided, plain) > 1e-3, 'another NAG context at the default scale 11: another output');
  await t.rejects(model.forward({ ...input, nag: { context: randn([9, 32], 6), tau: 11 } }),
    { code: 'WAN_INVALID_OPTION', message: /Expected a number in 0\.\.10 for nag\.tau but received 11/ });
  await t.rejects(model.forward({ ...input, nag: { context: randn([9, 7], 6) } }), { message: /nag\.context must be \[L <= 16, 32\], got \[9, 7\]/ });
  model.dispose();
});

t.test('the Sampler with nagArgs: NAG on the conditional pass alone, at cfg 1 too', async (t) => {
  const model = await WanModel.load(file, { numHeads: 2, textLen: 16 });
  const positive = randn([6, 32], 7), negative = randn([9, 32], 8);
  const calls: { nag: boolean; context: number }[] = [];
  const watching = {
    config: model.config, offload: () => model.offload(), cacheReport: () => model.cacheReport(), clearCache: () => model.clearCache(),
    forward: (input: WanForwardInput, options?: { signal?: AbortSignal }) => {
      calls.push({ nag: input.nag !== undefined, context: input.context[0].shape[0] });
      return model.forward(input, options);
    },
  } as Pick<WanModel, 'config' | 'offload' | 'forward' | 'cacheReport' | 'clearCache'> as WanModel;
  const imageEmbeds = emptyEmbeds({ width: 32, height: 32, numFrames: 5 });
  const o = { imageEmbeds, textEmbeds: { promptEmbeds: [positive], negativePromptEmbeds: [negative] }, steps: 2, shift: 5, seed: 3,
    scheduler: 'euler' as const, nagArgs: { nagScale: 4, nagTau: 1.4, nagAlpha: 0.5 } };
  await new Sampler(watching).sample({ ...o, cfg: 3 });
  t.same(calls, [{ nag: true, context: 6 }, { nag: false, context: 9 }, { nag: true, context: 6 }, { nag: false, context: 9 }],
    'cfg 3: the conditional pass with NAG, the unconditional without');

  // cfg 1: Euler on the model's NAG-guided predictions by hand, the negative prompt as NAG's (the default).
  const result = (await new Sampler(model).sample({ ...o, cfg: 1 })).toTypedArray() as Float32Array;
  const s = createScheduler('euler', { steps: 2, shift: 5 });
  let x = new (native().NoiseGenerator)(3n).randn([16, 2, 4, 4]).toTypedArray() as Float32Array;
  for (let i = 0; i < 2; i++) {
    const [v] = await model.forward({ x: [Tensor.fromTypedArray(x, [16, 2, 4, 4])], t: Tensor.fromTypedArray(Float64Array.of(s.timesteps[i]), [1]),
      context: [positive], seqLen: imageEmbeds.seqLen, nag: { context: negative, scale: 4, tau: 1.4, alpha: 0.5 } });
    x = s.step(v.toTypedArray() as Float32Array, i, x);
  }
  t.equal(maxAbsDiff(Tensor.fromTypedArray(result, [16, 2, 4, 4]), Tensor.fromTypedArray(x, [16, 2, 4, 4])), 0,
    'cfg 1: Euler on forward(nag: the negative prompt) by hand, bit for bit');
  const plain = await new Sampler(model).sample({ ...o, cfg: 1, nagArgs: undefined });
  t.ok(maxAbsDiff(plain, Tensor.fromTypedArray(result, [16, 2, 4, 4])) > 1e-4, 'which is not the run without NAG');
  await t.rejects(new Sampler(model).sample({ ...o, cfg: 3, batchedCfg: true }), { code: 'WAN_INVALID_OPTION', message: /batchedCfg false with nagArgs/ });
  await t.rejects(new Sampler(model).sample({ ...o, textEmbeds: { promptEmbeds: [positive], negativePromptEmbeds: [] }, cfg: 1 }),
    { message: /Expected nagArgs\.nagPromptEmbeds \(or a negative prompt in textEmbeds\) for NAG/ });
  model.dispose();
});
