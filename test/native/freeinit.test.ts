// FreeInit (lib/freeinit.ts): its low-pass filters and noise reinitialisation against numpy
// (scripts/make-freeinit-references.py), and the Sampler's runs: each after the first starts
// from the last one's result re-noised, and goes on as a plain run from there would.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { emptyEmbeds, Sampler, Tensor, TextEncoder, WanModel } from '../../lib/index';
import type { TextEmbeds, WanForwardInput } from '../../lib/index';
import { lowPassFilter, reinitialize, resolveFreeInitArgs, type FreeInitMethod } from '../../lib/freeinit';
import { native } from '../../lib/native';
import { fixturesDir, maxAbsDiff, weightsDir } from '../helpers';

interface References {
  shape: number[];
  filters: { method: FreeInitMethod; n: number; dS: number; dT: number; mask: number[] }[];
  result: number[]; start: number[]; fresh: number[]; reinitialized: number[]; reinitializedWith: number;
}
const ref = JSON.parse(fs.readFileSync(path.join(fixturesDir, 'freeinit', 'references.json'), 'utf8')) as References;

function maxError(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let err = got.length === want.length ? 0 : Infinity;
  for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(got[i] - want[i]));
  return err;
}

t.test('the low-pass filters are the method\'s, value for value', async (t) => {
  // Both sides work in float64 and store float32; exp and pow may differ in their last double
  // bit between JavaScript and Python, so within one float32 step of 1 (6e-8).
  for (const f of ref.filters) {
    const err = maxError(lowPassFilter(f.method, ref.shape.slice(1), f.n, f.dS, f.dT), f.mask);
    t.ok(err <= 6e-8, `${f.method} n ${f.n}, dS ${f.dS}, dT ${f.dT}: max abs ${err.toExponential(2)} (mean ${(f.mask.reduce((a, b) => a + b, 0) / f.mask.length).toFixed(3)})`);
  }
});

t.test('reinitialisation: the diffused result\'s low frequencies and fresh noise\'s high ones, as numpy\'s FFT gives them', async (t) => {
  const mask = Float32Array.from(ref.filters[ref.reinitializedWith].mask);
  const got = reinitialize(Float32Array.from(ref.result), Float32Array.from(ref.start), Float32Array.from(ref.fresh), ref.shape, mask);
  const err = maxError(got, ref.reinitialized);
  t.ok(err <= 2e-6, `against numpy's float64 FFT: max abs ${err.toExponential(2)} <= 2e-6 (values of order 1)`);
  // An all-pass filter keeps the diffused latent; an all-stop one gives the fresh noise.
  const ones = new Float32Array(mask.length).fill(1), zeros = new Float32Array(mask.length);
  const diffused = ref.result.map((r, i) => 0.001 * r + 0.999 * ref.start[i]);
  t.ok(maxError(reinitialize(Float32Array.from(ref.result), Float32Array.from(ref.start), Float32Array.from(ref.fresh), ref.shape, ones), diffused) <= 1e-6,
    'all frequencies kept: 0.001 result + 0.999 start');
  t.ok(maxError(reinitialize(Float32Array.from(ref.result), Float32Array.from(ref.start), Float32Array.from(ref.fresh), ref.shape, zeros), ref.fresh) <= 1e-6,
    'none kept: the fresh noise');
});

t.test('freeinitArgs are checked', async (t) => {
  const shape = [16, 2, 4, 4];
  t.equal(resolveFreeInitArgs(undefined, shape), undefined);
  const defaults = resolveFreeInitArgs({}, shape)!;
  t.equal(defaults.iterations, 3, 'freeinitNumIters 3 by default');
  t.same(defaults.lowPass, lowPassFilter('ideal', [2, 4, 4], 4, 1, 1), 'the ideal filter at cutoffs 1 by default');
  t.throws(() => resolveFreeInitArgs({ freeinitMethod: 'none' as FreeInitMethod }, shape),
    { code: 'WAN_INVALID_OPTION', message: /Expected one of butterworth, ideal, gaussian for freeinitArgs\.freeinitMethod but received "none"/ });
  t.throws(() => resolveFreeInitArgs({ freeinitNumIters: 11 }, shape),
    { code: 'WAN_INVALID_OPTION', message: /Expected an integer in 1\.\.10 for freeinitArgs\.freeinitNumIters but received 11/ });
  t.throws(() => resolveFreeInitArgs({ freeinitDS: -1 }, shape), { message: /freeinitArgs\.freeinitDS/ });
  t.throws(() => resolveFreeInitArgs({ freeinit_d_s: 0.5 } as never, shape), { code: 'WAN_INVALID_OPTION', message: /freeinit_d_s/ });
});

t.test('the Sampler with freeinitArgs: each run after the first starts from the last result re-noised', async (t) => {
  const model = await WanModel.load(path.join(weightsDir, 'tiny_t2v_dit.f32.safetensors'), { numHeads: 2, textLen: 16 });
  const encoder = await TextEncoder.load(path.join(weightsDir, 'tiny_umt5_enc.f32.safetensors'));
  const ids = Tensor.fromTypedArray(new BigInt64Array([5n, 9n, 3n, 1n]), [1, 4]);
  const context = await encoder.encodeTokens(ids, Tensor.fromTypedArray(new BigInt64Array([1n, 1n, 1n, 1n]), [1, 4]));
  encoder.dispose();
  const text: TextEmbeds = { promptEmbeds: [Tensor.fromTypedArray((context.toTypedArray() as Float32Array).slice(0, 4 * 32), [4, 32])], negativePromptEmbeds: [] };
  const inputs: Float32Array[] = [];
  const recording = {
    config: model.config, offload: () => model.offload(), cacheReport: () => model.cacheReport(), clearCache: () => model.clearCache(),
    forward: (input: WanForwardInput, options?: { signal?: AbortSignal }) => {
      inputs.push(Float32Array.from(input.x[0].toTypedArray() as Float32Array));
      return model.forward(input, options);
    },
  } as Pick<WanModel, 'config' | 'offload' | 'forward' | 'cacheReport' | 'clearCache'> as WanModel;

  const imageEmbeds = emptyEmbeds({ width: 32, height: 32, numFrames: 9 });
  const shape = imageEmbeds.targetShape;
  const o = { imageEmbeds, textEmbeds: text, steps: 3, cfg: 1, shift: 5, seed: 21, scheduler: 'euler' as const };
  const freeinitArgs = { freeinitNumIters: 2, freeinitMethod: 'butterworth' as const, freeinitDS: 0.5, freeinitDT: 0.5 };
  const totals: number[] = [];
  const twice = await new Sampler(recording).sample({ ...o, freeinitArgs, onProgress: (p) => totals.push(p.step, p.totalSteps) });
  t.equal(inputs.length, 6, 'two runs of three steps: six model calls');
  t.same(totals, [1, 6, 2, 6, 3, 6, 4, 6, 5, 6, 6, 6], 'progress counts the steps of both runs');

  // By hand: the first run is a plain run; the second starts from its result, diffused on the
  // first run's noise (the seed's first draw) and mixed with the generator's next draw.
  const first = (await new Sampler(model).sample(o)).toTypedArray() as Float32Array;
  const generator = new (native().NoiseGenerator)(BigInt(o.seed));
  const noise = generator.randn([...shape]).toTypedArray() as Float32Array;
  const fresh = generator.randn([...shape]).toTypedArray() as Float32Array;
  const start = reinitialize(first, noise, fresh, shape, resolveFreeInitArgs(freeinitArgs, shape)!.lowPass);
  t.equal(maxError(inputs[0], noise), 0, 'the first run starts from the seed\'s noise');
  t.equal(maxError(inputs[3], start), 0,
    'the second run starts from the first result re-noised: 0.001 result + 0.999 noise, low frequencies, and fresh noise\'s high ones');
  const plain = await new Sampler(model).sample({ ...o, samples: Tensor.fromTypedArray(start, [...shape]) });
  t.equal(maxAbsDiff(twice, plain), 0, 'its result: a plain run from that start, bit for bit');

  const once = await new Sampler(model).sample({ ...o, freeinitArgs: { freeinitNumIters: 1 } });
  t.equal(maxError(once.toTypedArray() as Float32Array, first), 0, 'freeinitNumIters 1: the plain run');
  await t.rejects(new Sampler(model).sample({ ...o, freeinitArgs, samples: Tensor.fromTypedArray(start, [...shape]) }),
    { code: 'WAN_INVALID_OPTION', message: /freeinitArgs with samples, startStep or endStep is not implemented yet/ });
  await t.rejects(new Sampler(model).sample({ ...o, freeinitArgs, endStep: 2 }), { code: 'WAN_INVALID_OPTION', message: /FreeInit runs the whole schedule/ });

  // With a block cache: each run starts it afresh (as a plain run), and the progress counts the
  // calls skipped over all runs.
  const cacheArgs = { relL1Thresh: 1, useCoefficients: false, startStep: 0 };
  const longer = { ...o, steps: 6 };
  const plainCounts: number[] = [], counts: number[] = [];
  await new Sampler(model).sample({ ...longer, cacheArgs, onProgress: (p) => plainCounts.push(p.cacheSkipped!) });
  await new Sampler(model).sample({ ...longer, cacheArgs, freeinitArgs, onProgress: (p) => counts.push(p.cacheSkipped!) });
  t.ok(plainCounts[5] > 0, `the plain cached run skips ${plainCounts[5]} calls`);
  t.same(counts.slice(0, 6), plainCounts, 'the first FreeInit run skips as the plain run does');
  t.ok(counts.every((n, i) => i === 0 || n >= counts[i - 1]) && counts[11] > counts[5],
    `the count goes on over the second run (${counts[5]} then ${counts[11]})`);
  t.same(model.cacheReport(), [], 'the runs free their residuals');
  model.dispose();
});
