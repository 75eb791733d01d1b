// The sampling loop against the official WanT2V.generate loop on the tiny models
// (test/fixtures/sampling, made by scripts/make-sampling-references.py with the official
// code at 9737cba9 on CPU in float32), plus seeds, guidance, split runs, T2I, Enhance-A-Video,
// progress and cancellation.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { emptyEmbeds, imageToVideoEncode, loadSafetensors, riflexFrequencies, Sampler, saveSafetensors, schedule, cacheVariant, Tensor, TextEncoder, Vae, WanModel } from '../../lib/index';
import type { SamplerProgress, TextEmbeds, VaeEncodeOptions, WanForwardInput } from '../../lib/index';
import { nearestInterpolation } from '../../lib/block-cache';
import { combineGuidance, resolveExperimentalArgs, temporalScoreRescaling } from '../../lib/guidance';
import { native } from '../../lib/native';
import { createScheduler } from '../../lib/schedulers';
import { fixturesDir, maxAbsDiff, officialSigmas, toNumbers, weightsDir } from '../helpers';

// A 1e-6 relative difference per DiT call (our fp32 forward vs the official one) grows over
// the steps (shared/golden README: ~2e-5 after 10 steps); latents here are O(5).
const LATENT_TOLERANCE = 2e-5;
const CONTEXT_TOLERANCE = 1e-5;

const goldenFile = path.join(fixturesDir, 'sampling', 'golden_t2v_sampling.safetensors');

interface Call { solver: string; steps: number; shift: number; guide_scale: number; seed: number; size: [number, number]; frames: number }

async function setup() {
  const { tensors: g, metadata } = await loadSafetensors(goldenFile);
  const calls = JSON.parse(metadata.calls) as Record<string, Call>;
  const model = await WanModel.load(path.join(weightsDir, 'tiny_t2v_dit.f32.safetensors'), { numHeads: 2, textLen: 16 });
  const encoder = await TextEncoder.load(path.join(weightsDir, 'tiny_umt5_enc.f32.safetensors'));
  // The pipeline's contexts: T5 on our fixed ids, each trimmed to its real length.
  const trimmed = async (ids: string, mask: string) => {
    const out = await encoder.encodeTokens(g.get(ids)!, g.get(mask)!);
    const length = toNumbers(g.get(mask)!.toTypedArray()).reduce((a, b) => a + b, 0);
    const rows = (out.toTypedArray() as Float32Array).slice(0, length * 32);
    return Tensor.fromTypedArray(rows, [length, 32]);
  };
  const text: TextEmbeds = { promptEmbeds: [await trimmed('ids_pos', 'mask_pos')], negativePromptEmbeds: [await trimmed('ids_neg', 'mask_neg')] };
  encoder.dispose();
  return { g, calls, model, text };
}

const shared = setup();

// A stand-in for the model that shows each forward's input to `see`, then passes the call on.
function watched(model: WanModel, see: (input: WanForwardInput) => void): WanModel {
  return {
    config: model.config, offload: () => model.offload(), cacheReport: () => model.cacheReport(), clearCache: () => model.clearCache(),
    forward: (input: WanForwardInput, options?: { signal?: AbortSignal }) => { see(input); return model.forward(input, options); },
  } as Pick<WanModel, 'config' | 'offload' | 'forward' | 'cacheReport' | 'clearCache'> as WanModel;
}

// A stand-in for the model that records each forward's x[0] and output[0], in call order.
function recorded(model: WanModel): { recording: WanModel; inputs: Float32Array[]; outputs: Float32Array[] } {
  const inputs: Float32Array[] = [], outputs: Float32Array[] = [];
  const recording = {
    config: model.config, offload: () => model.offload(), cacheReport: () => model.cacheReport(), clearCache: () => model.clearCache(),
    forward: async (input: WanForwardInput, options?: { signal?: AbortSignal }) => {
      inputs.push(Float32Array.from(input.x[0].toTypedArray() as Float32Array));
      const out = await model.forward(input, options);
      outputs.push(Float32Array.from(out[0].toTypedArray() as Float32Array));
      return out;
    },
  } as Pick<WanModel, 'config' | 'offload' | 'forward' | 'cacheReport' | 'clearCache'> as WanModel;
  return { recording, inputs, outputs };
}

t.test('the noise is PyTorch CPU generator noise for the seed', async (t) => {
  // torch.Generator().manual_seed(seed); torch.randn(16, 2, 4, 6, generator=g): elements 0, 1,
  // 2, 100, 767, the float64 sum, then randperm(7) from the same generator (python3-torch 1.13).
  const expected: Array<[bigint, number[], number, number[]]> = [
    [0n, [-1.1258398294448853, -1.152360200881958, -0.2505785822868347, -2.6133224964141846, -0.23261602222919464], 47.871551953896414, [4, 6, 5, 2, 3, 0, 1]],
    [42n, [1.9269152879714966, 1.4872840642929077, 0.9007171988487244, 0.640755295753479, 0.5761587619781494], 27.414545370207634, [5, 0, 1, 3, 4, 6, 2]],
    [(1n << 32n) + 7n, [-0.8201345205307007, 0.39563116431236267, 0.8989084959030151, 0.12744353711605072, 0.08307138830423355], -4.546268500038423, [6, 0, 3, 1, 5, 4, 2]],
    [(1n << 64n) - 1n, [-2.664297580718994, -1.0910485982894897, 0.45144742727279663, -2.3514962196350098, -0.1853148639202118], -14.681012243730947, [4, 0, 3, 5, 1, 6, 2]],
  ];
  for (const [seed, values, sum, perm] of expected) {
    const generator = new (native().NoiseGenerator)(seed);
    const noise = generator.randn([16, 2, 4, 6]).toTypedArray() as Float32Array;
    t.same([0, 1, 2, 100, 767].map((i) => noise[i]), values, `seed ${seed}: the same float32 values`);
    t.ok(Math.abs(noise.reduce((a, b) => a + b, 0) - sum) < 1e-9, `seed ${seed}: the same sum`);
    t.same(Array.from(generator.randperm(7).toTypedArray() as BigInt64Array, Number), perm, `seed ${seed}: randperm continues the stream`);
  }
  const { g } = await shared;
  for (const c of ['unipc', 'dpmpp']) {
    const shape = g.get(`${c}.noise`)!.shape;
    const seed = c === 'unipc' ? 42n : 7n;
    const noise = new (native().NoiseGenerator)(seed).randn(shape);
    t.equal(maxAbsDiff(new Tensor(noise), g.get(`${c}.noise`)!), 0, `${c}: the official initial noise, exactly`);
  }
});

t.test('T2V end to end equals the official generate loop', async (t) => {
  const { g, calls, model, text } = await shared;
  const encoder = await TextEncoder.load(path.join(weightsDir, 'tiny_umt5_enc.f32.safetensors'));
  for (const [ids, mask, name] of [['ids_pos', 'mask_pos', 'context'], ['ids_neg', 'mask_neg', 'context_null']]) {
    const out = await encoder.encodeTokens(g.get(ids)!, g.get(mask)!);
    const ref = g.get(name)!;
    const rows = Tensor.fromTypedArray((out.toTypedArray() as Float32Array).slice(0, ref.shape[0] * 32), ref.shape);
    const err = maxAbsDiff(rows, ref);
    t.ok(err <= CONTEXT_TOLERANCE, `${name}: max abs error ${err.toExponential(2)} <= ${CONTEXT_TOLERANCE}`);
  }
  encoder.dispose();

  const vae = await Vae.load(path.join(weightsDir, 'tiny_vae.f32.safetensors'));
  for (const [c, scheduler] of [['unipc', 'unipc'], ['dpmpp', 'dpm++']] as const) {
    const call = calls[c];
    const steps: number[] = [];
    // The official loop's schedule (generate.py's, not the wrapper's) as custom sigmas.
    const sigmas = officialSigmas(scheduler, { steps: call.steps, shift: call.shift });
    t.same(schedule(scheduler, { steps: call.steps, shift: call.shift, sigmas }).timesteps, toNumbers(g.get(`${c}.timesteps`)!.toTypedArray()),
      `${c}: the official timesteps`);
    const latent = await new Sampler(model).sample({
      imageEmbeds: emptyEmbeds({ width: call.size[0], height: call.size[1], numFrames: call.frames }),
      textEmbeds: text, cfg: call.guide_scale, seed: call.seed, scheduler, sigmas,
      onProgress: (p) => steps.push(p.step),
    });
    t.same(steps, Array.from({ length: call.steps }, (_, i) => i + 1), `${c}: one progress report per step`);
    const err = maxAbsDiff(latent, g.get(`${c}.x0`)!);
    t.ok(err <= LATENT_TOLERANCE, `${c}: final latent max abs error ${err.toExponential(2)} <= ${LATENT_TOLERANCE}`);
    const video = await vae.decode(latent);
    const verr = maxAbsDiff(video, g.get(`${c}.video`)!);
    t.ok(verr <= LATENT_TOLERANCE, `${c}: decoded video max abs error ${verr.toExponential(2)} <= ${LATENT_TOLERANCE}`);
  }
  vae.dispose();
});

t.test('guidance: cfg 1 needs no negative pass; batched cfg equals two passes', async (t) => {
  const { model, text } = await shared;
  const sampler = new Sampler(model);
  const base = { imageEmbeds: emptyEmbeds({ width: 48, height: 32, numFrames: 5 }), steps: 3, seed: 3, scheduler: 'euler' as const };
  const noNegative = await sampler.sample({ ...base, cfg: 1, textEmbeds: { promptEmbeds: text.promptEmbeds, negativePromptEmbeds: [] } });
  const withNegative = await sampler.sample({ ...base, cfg: 1, textEmbeds: text });
  t.equal(maxAbsDiff(noNegative, withNegative), 0, 'cfg 1 ignores the negative prompt');
  await t.rejects(sampler.sample({ ...base, cfg: 5, textEmbeds: { promptEmbeds: text.promptEmbeds, negativePromptEmbeds: [] } }),
    { code: 'WAN_INVALID_OPTION', message: /negativePromptEmbeds for cfg 5/ });
  const twoPasses = await sampler.sample({ ...base, cfg: 5, textEmbeds: text });
  const batched = await sampler.sample({ ...base, cfg: 5, textEmbeds: text, batchedCfg: true });
  const err = maxAbsDiff(twoPasses, batched);
  t.ok(err <= 2e-5, `batched cfg: max abs difference ${err.toExponential(2)} <= 2e-5`);
  const perStep = await sampler.sample({ ...base, cfg: [5, 5, 5], textEmbeds: text });
  t.equal(maxAbsDiff(perStep, twoPasses), 0, 'a cfg list of equal values equals the number');
  const varied = await sampler.sample({ ...base, cfg: [5, 1, 3], textEmbeds: text });
  t.ok(maxAbsDiff(varied, twoPasses) > 1e-3, 'a per-step cfg list changes the result');
  // One value per step run, as the wrapper's cfg[idx]: a short list goes on with its last value,
  // a long one's extra values are not used.
  const padded = await sampler.sample({ ...base, cfg: [5, 1], textEmbeds: text });
  t.equal(maxAbsDiff(padded, await sampler.sample({ ...base, cfg: [5, 1, 1], textEmbeds: text })), 0, 'a short list is padded with its last value');
  t.equal(maxAbsDiff(await sampler.sample({ ...base, cfg: [5, 5, 5, 9], textEmbeds: text }), twoPasses), 0, 'values past the run are not used');
  await t.rejects(sampler.sample({ ...base, cfg: [], textEmbeds: text }), { code: 'WAN_INVALID_OPTION', message: /one per step run/ });
});

t.test('a seed gives the same latents every time; another seed does not', async (t) => {
  const { model, text } = await shared;
  const o = { imageEmbeds: emptyEmbeds({ width: 32, height: 32, numFrames: 5 }), textEmbeds: text, steps: 2, cfg: 4, seed: 11 };
  const a = await new Sampler(model).sample(o);
  const b = await new Sampler(model).sample(o);
  t.equal(maxAbsDiff(a, b), 0, 'identical');
  const c = await new Sampler(model).sample({ ...o, seed: 12 });
  t.ok(maxAbsDiff(a, c) > 0.1, 'seed 12 differs');
});

t.test('split sampling: steps 0-2 then 2-4 from the samples equal one euler run', async (t) => {
  const { model, text } = await shared;
  const sampler = new Sampler(model);
  const o = { imageEmbeds: emptyEmbeds({ width: 32, height: 32, numFrames: 5 }), textEmbeds: text, steps: 4, cfg: 4, seed: 5, scheduler: 'euler' as const };
  const whole = await sampler.sample(o);
  const first = await sampler.sample({ ...o, endStep: 2 });
  const second = await sampler.sample({ ...o, startStep: 2, samples: first });
  t.equal(maxAbsDiff(whole, second), 0, 'bit for bit');
  // denoiseStrength with samples: start from the given latents at a later step.
  const partial = await sampler.sample({ ...o, samples: whole, denoiseStrength: 0.5 });
  t.same(partial.shape, whole.shape);
  t.ok(maxAbsDiff(partial, whole) > 0, 'a partial denoise changes the latents');
  await t.rejects(sampler.sample({ ...o, denoiseStrength: 0.5 }), { code: 'WAN_INVALID_OPTION', message: /samples/ });
  await t.rejects(sampler.sample({ ...o, samples: whole, denoiseStrength: 0.5, startStep: 1 }),
    { code: 'WAN_INVALID_OPTION', message: /Expected startStep 0 with denoiseStrength < 1 \(it sets the start step\) but received 1/ });
  await t.rejects(sampler.sample({ ...o, startStep: 2, samples: Tensor.fromTypedArray(new Float32Array(16), [16, 1, 1, 1]) }),
    { code: 'WAN_INVALID_OPTION', message: /samples of shape \[16, 2, 4, 4\]/ });

  // lcm draws fresh noise at every step: the second part goes on with the first part's stream,
  // as the wrapper hands its generator on with the latent.
  const lcm = { ...o, scheduler: 'lcm' as const };
  const lcmWhole = await sampler.sample(lcm);
  const lcmFirst = await sampler.sample({ ...lcm, endStep: 2 });
  t.equal(maxAbsDiff(await sampler.sample({ ...lcm, startStep: 2, samples: lcmFirst }), lcmWhole), 0, 'lcm: bit for bit, the noise stream continued');

  // Samples without added noise are where sampling starts, from step 0 too: the initial noise
  // of seed 5 given as samples (under another seed) is the run of seed 5.
  const noise = new Tensor(new (native().NoiseGenerator)(5n).randn([16, 2, 4, 4]));
  t.equal(maxAbsDiff(await sampler.sample({ ...o, seed: 9, samples: noise }), whole), 0, 'samples at step 0 are used as they are');
});

t.test('split sampling with unipc: each part is a run of its own steps, as the wrapper cuts the schedule', async (t) => {
  // The wrapper's get_scheduler cuts the schedule to the steps run, and its loop counts them from
  // 0: a part ends with the final-step rule (first order), and the cfg list, Enhance-A-Video's
  // percentages and the context windows count its steps. The same part, run as custom sigmas
  // (that part of the schedule as a whole run of its own), must give the same bits.
  const { model, text } = await shared;
  const sampler = new Sampler(model);
  const o = { imageEmbeds: emptyEmbeds({ width: 32, height: 32, numFrames: 17 }), textEmbeds: text, seed: 5, scheduler: 'unipc' as const };
  const full = schedule('unipc', { steps: 6, shift: 5 });
  const part = (from: number, to: number) => full.sigmas.slice(from, to + 1);
  t.same(schedule('unipc', { steps: 2, shift: 5, sigmas: part(2, 4) }).timesteps, full.timesteps.slice(2, 4), 'the parts\' timesteps are the schedule\'s');
  const extras = { cfg: [7, 2], fetaArgs: { weight: 2, startPercent: 0, endPercent: 0.4 },
    contextOptions: { schedule: 'uniform_standard' as const, frames: 9, overlap: 4, freenoise: false } };
  const first = await sampler.sample({ ...o, steps: 6, shift: 5, endStep: 2 });
  t.equal(maxAbsDiff(first, await sampler.sample({ ...o, sigmas: part(0, 2) })), 0, 'steps 0-2: as a 2-step run ending at sigma 2');
  const middle = await sampler.sample({ ...o, ...extras, steps: 6, shift: 5, startStep: 2, endStep: 4, samples: first });
  const alone = await sampler.sample({ ...o, ...extras, sigmas: part(2, 4), samples: first });
  t.equal(maxAbsDiff(middle, alone), 0, 'steps 2-4 with a cfg list, Enhance-A-Video and context windows: as a run of those steps alone');
  t.ok(maxAbsDiff(middle, await sampler.sample({ ...o, ...extras, cfg: 2, steps: 6, shift: 5, startStep: 2, endStep: 4, samples: first })) > 1e-4,
    'the cfg list\'s first value applies to the first step run');
});

t.test('several prompts need context windows to take them', async (t) => {
  const { text } = await shared;
  const { model } = await shared;
  const o = { imageEmbeds: emptyEmbeds({ width: 32, height: 32, numFrames: 17 }), steps: 2, seed: 5, scheduler: 'euler' as const,
    textEmbeds: { promptEmbeds: [text.promptEmbeds[0], text.negativePromptEmbeds[0]], negativePromptEmbeds: text.negativePromptEmbeds } };
  await t.rejects(new Sampler(model).sample(o), { code: 'WAN_INVALID_OPTION',
    message: /^Expected contextOptions that split the video into windows for 2 prompts \(each window takes the prompt of its section\) but received none$/ });
  await t.rejects(new Sampler(model).sample({ ...o, contextOptions: { frames: 33 } }), { code: 'WAN_INVALID_OPTION',
    message: /but received windows of 33 frames, longer than the whole 17-frame video$/ });
});

t.test('T2I: one frame', async (t) => {
  const { model, text } = await shared;
  const latent = await new Sampler(model).sample({ imageEmbeds: emptyEmbeds({ width: 48, height: 32, numFrames: 1 }), textEmbeds: text, steps: 2, cfg: 3 });
  t.same(latent.shape, [16, 1, 4, 6]);
  t.ok(toNumbers(latent.toTypedArray()).every(Number.isFinite));
});

t.test('sizes are validated with clear errors', async (t) => {
  t.throws(() => emptyEmbeds({ width: 40, height: 32, numFrames: 5 }), { code: 'WAN_INVALID_OPTION', message: /multiple of 16 for width but received 40/ });
  t.throws(() => emptyEmbeds({ width: 32, height: 32, numFrames: 6 }), { code: 'WAN_INVALID_OPTION', message: /4k\+1 .* numFrames but received 6/ });
  t.same(emptyEmbeds(), { targetShape: [16, 21, 60, 104], seqLen: 32760, numFrames: 81, width: 832, height: 480 }, 'the wrapper defaults');
  const { model, text } = await shared;
  await t.rejects(new Sampler(model).sample({ imageEmbeds: emptyEmbeds({ width: 32, height: 32, numFrames: 1 }), textEmbeds: text, scheduler: 'ddim' as never }),
    { code: 'WAN_INVALID_OPTION', message: /for scheduler but received "ddim"/ });
  await t.rejects(new Sampler(model).sample({ imageEmbeds: emptyEmbeds({ width: 32, height: 32, numFrames: 1 }), textEmbeds: text, seed: -1 }),
    { code: 'WAN_INVALID_OPTION', message: /0\.\.2\^64-1 for seed/ });
});

t.test('Enhance-A-Video equals the reference forward with the gain', async (t) => {
  const { g, calls, model, text } = await shared;
  void calls;
  const input = { x: [g.get('feta.x')!], t: Tensor.fromTypedArray(BigInt64Array.of(700n), [1]), context: [g.get('context')!], seqLen: 18 };
  const [out] = await model.forward({ ...input, fetaWeight: 2 });
  const err = maxAbsDiff(out, g.get('feta.out')!);
  t.ok(err <= 1e-5, `fetaWeight 2: max abs error ${err.toExponential(2)} <= 1e-5`);
  const [plain] = await model.forward(input);
  const [floored] = await model.forward({ ...input, fetaWeight: -100 });
  t.equal(maxAbsDiff(floored, plain), 0, 'a gain floored at 1 leaves the forward unchanged');
  // In the sampler: an empty step range leaves sampling unchanged.
  const o = { imageEmbeds: emptyEmbeds({ width: 32, height: 32, numFrames: 9 }), textEmbeds: text, steps: 2, cfg: 1, scheduler: 'euler' as const };
  const none = await new Sampler(model).sample(o);
  const outside = await new Sampler(model).sample({ ...o, fetaArgs: { weight: 2, startPercent: 0.9, endPercent: 1 } });
  t.equal(maxAbsDiff(none, outside), 0, 'fetaArgs outside the run change nothing');
  const inside = await new Sampler(model).sample({ ...o, fetaArgs: { weight: 2 } });
  t.ok(maxAbsDiff(none, inside) > 1e-3, 'fetaArgs change the result');
  await t.rejects(new Sampler(model).sample({ ...o, fetaArgs: { weight: 2, startPercent: 0.8, endPercent: 0.2 } }), {
    code: 'WAN_INVALID_OPTION',
    message: 'Expected fetaArgs.startPercent (0.8) at or below fetaArgs.endPercent (0.2) but received a range in which Enhance-A-Video never applies',
  });
});

t.test('progress with previews; abort mid-run, then a successful run', async (t) => {
  const { model, text } = await shared;
  const sampler = new Sampler(model);
  const o = { imageEmbeds: emptyEmbeds({ width: 48, height: 32, numFrames: 5 }), textEmbeds: text, steps: 4, cfg: 3 };
  const reports: SamplerProgress[] = [];
  await sampler.sample({ ...o, preview: true, onProgress: (p) => reports.push(p) });
  t.same(reports.map((p) => p.step), [1, 2, 3, 4]);
  t.same(reports.map((p) => p.totalSteps), [4, 4, 4, 4]);
  t.equal(reports[3].fraction, 1);
  t.equal(reports[3].etaMs, 0);
  t.match(reports[0], { stage: 'sample', preview: { width: 6, height: 4, frame: 1 } });
  t.equal(reports[0].preview!.rgb.length, 6 * 4 * 3);

  const controller = new AbortController();
  let seen = 0;
  await t.rejects(sampler.sample({ ...o, signal: controller.signal, onProgress: (p) => { seen = p.step; if (p.step === 2) controller.abort(); } }),
    { code: 'WAN_ABORTED' });
  t.equal(seen, 2, 'stopped right after the step that aborted');
  const after = await sampler.sample(o);
  t.same(after.shape, [16, 2, 4, 6], 'the model stays usable');
});

t.test('I2V and FLF2V conditioning and an I2V run equal the official code', async (t) => {
  const { g, text } = await shared;
  const vae = await Vae.load(path.join(weightsDir, 'tiny_vae.f32.safetensors'));
  const size = { width: 48, height: 32, numFrames: 5 };
  // resize 'bicubic': the official image2video.py's interpolate (the wrapper's Lanczos is the default).
  const official = { ...size, resize: 'bicubic' as const };
  const clip = new Tensor(new (native().NoiseGenerator)(11n).randn([1, 257, 1280]));
  const i2v = await imageToVideoEncode({ vae, ...official, startImage: g.get('i2v.image')!, clipEmbeds: { clipEmbeds: clip } });
  t.same(i2v.targetShape, [16, 2, 4, 6]);
  t.equal(i2v.seqLen, 12);
  let err = maxAbsDiff(i2v.y!, g.get('i2v.y')!);
  t.ok(err <= 1e-5, `I2V y: max abs error ${err.toExponential(2)} <= 1e-5`);
  const flf = await imageToVideoEncode({ vae, ...official, startImage: g.get('i2v.image')!, endImage: g.get('i2v.end_image')! });
  err = maxAbsDiff(flf.y!, g.get('flf2v.y')!);
  t.ok(err <= 1e-5, `FLF2V y: max abs error ${err.toExponential(2)} <= 1e-5`);

  const model = await WanModel.load(path.join(weightsDir, 'tiny_i2v_dit.f32.safetensors'), { numHeads: 2 });
  const latent = await new Sampler(model).sample({ imageEmbeds: i2v, textEmbeds: text, cfg: 5, seed: 42, sigmas: officialSigmas('unipc', { steps: 3, shift: 5 }) });
  err = maxAbsDiff(latent, g.get('i2v.x0')!);
  t.ok(err <= LATENT_TOLERANCE, `I2V run: final latent max abs error ${err.toExponential(2)} <= ${LATENT_TOLERANCE}`);
  await t.rejects(new Sampler(model).sample({ imageEmbeds: emptyEmbeds(size), textEmbeds: text }),
    { code: 'WAN_INVALID_OPTION', message: /imageToVideoEncode\(\) with clipEmbeds for a i2v model \(y and clipContext are missing\)/ });
  await t.rejects(new Sampler(model).sample({ imageEmbeds: { ...i2v, clipContext: undefined }, textEmbeds: text }),
    { code: 'WAN_INVALID_OPTION', message: /for a i2v model \(clipContext is missing\)/ });
  const two = Tensor.fromTypedArray(new Float32Array(2 * 257 * 1280), [2, 257, 1280]);
  await t.rejects(new Sampler(model).sample({ imageEmbeds: { ...i2v, clipContext: two }, textEmbeds: text }), {
    code: 'WAN_INVALID_OPTION',
    message: /^Expected the CLIP embeddings of 1 image for an i2v model but imageEmbeds\.clipContext holds 2 \(combineEmbeds 'batch'/,
  });

  // Latent strengths scale the first and last latent frames of the 16 latent channels.
  const strong = await imageToVideoEncode({ vae, ...official, startImage: g.get('i2v.image')!, endImage: g.get('i2v.end_image')!,
    startLatentStrength: 0.5, endLatentStrength: 2 });
  const a = strong.y!.toTypedArray() as Float32Array, b = flf.y!.toTypedArray() as Float32Array;
  const plane = 24;
  t.equal(a[(4 * 2 + 0) * plane + 3], b[(4 * 2 + 0) * plane + 3] * 0.5, 'start frame x0.5');
  t.equal(a[(4 * 2 + 1) * plane + 3], b[(4 * 2 + 1) * plane + 3] * 2, 'end frame x2');
  t.equal(a[0], 1, 'the mask is untouched');
  // Without an end image the last latent frame (the encoded blank frames) is scaled too, as the
  // wrapper's y[:, -1:] *= end_latent_strength.
  const startOnly = await imageToVideoEncode({ vae, ...official, startImage: g.get('i2v.image')!, endLatentStrength: 2 });
  const c = startOnly.y!.toTypedArray() as Float32Array, d = i2v.y!.toTypedArray() as Float32Array;
  const frames = startOnly.y!.shape[1];
  const last = (4 * frames + frames - 1) * plane + 3;
  t.ok(d[last] !== 0, 'the blank frames encode to something');
  t.equal(c[last], d[last] * 2, 'start image only: the last latent frame x2');
  await t.rejects(imageToVideoEncode({ vae, ...official, startImage: g.get('i2v.image')!, noiseAugStrength: -1 }),
    { code: 'WAN_INVALID_OPTION', message: /0\.\.10 for noiseAugStrength but received -1/ });
  const noisy = await imageToVideoEncode({ vae, ...official, startImage: g.get('i2v.image')!, noiseAugStrength: 0.1 });
  t.ok(maxAbsDiff(noisy.y!, i2v.y!) > 1e-3, 'noise augmentation changes the encoded image');
  model.dispose();
  vae.dispose();
});

t.test('an end image alone, and start and end with flf2v false (the end image an extra latent frame)', async (t) => {
  const { g, text } = await shared;
  const vae = await Vae.load(path.join(weightsDir, 'tiny_vae.f32.safetensors'));
  const size = { width: 48, height: 32, numFrames: 9, resize: 'bicubic' as const };  // 3 latent frames of 4 x 6
  const [start, end] = [g.get('i2v.image')!, g.get('i2v.end_image')!];
  const plane = 24, L = 3;
  // The conditioning video as the wrapper builds it, encoded here by hand: image(s) and zeros.
  const encode = async (frames: (Tensor | undefined)[], options: VaeEncodeOptions = { forceOffload: false }) => {
    const [h, w] = [32, 48], n = frames.length;
    const video = new Float32Array(3 * n * h * w);
    for (const [f, image] of frames.entries()) {
      if (!image) continue;
      const data = new Tensor(native().resizeBicubic(Tensor.handle(image, 'image'), h, w)).toTypedArray() as Float32Array;
      for (let c = 0; c < 3; c++) video.set(data.subarray(c * h * w, (c + 1) * h * w), (c * n + f) * h * w);
    }
    return (await vae.encode(Tensor.fromTypedArray(video, [3, n, h, w]), options)).toTypedArray() as Float32Array;
  };
  const channel = (y: Float32Array, frames: number, c: number, t: number) => y.subarray((c * frames + t) * plane, (c * frames + t + 1) * plane);
  const maskOf = (y: Float32Array, frames: number) =>
    Array.from({ length: frames }, (_, t) => [0, 1, 2, 3].map((j) => channel(y, frames, j, t)[0]).join(''));
  const latentErr = (y: Float32Array, frames: number, want: Float32Array, wantFrames: number, from: number, count: number, at = 0) => {
    let err = 0;
    for (let c = 0; c < 16; c++)
      for (let t = 0; t < count; t++) {
        const a = channel(y, frames, 4 + c, at + t), b = channel(want, wantFrames, c, from + t);
        for (let i = 0; i < plane; i++) err = Math.max(err, Math.abs(a[i] - b[i]));
      }
    return err;
  };

  // End image alone: the video ends on it, the mask marks pixel frame 8 only (0001 on the last latent).
  const endOnly = await imageToVideoEncode({ vae, ...size, endImage: end, forceOffload: false });
  const ye = endOnly.y!.toTypedArray() as Float32Array;
  t.same(endOnly.targetShape, [16, L, 4, 6]);
  t.same(maskOf(ye, L), ['0000', '0000', '0001'], 'end image alone: the mask of pixel frame 8');
  const wantEnd = await encode([...Array(8).fill(undefined), end]);
  t.ok(latentErr(ye, L, wantEnd, L, 0, L) <= 1e-6, 'and the latent of zeros then the end image');

  // Start and end with flf2v false: the video's 3 latent frames of [start, zeros], then the end
  // image encoded alone as a 4th; the mask all ones on the first and the extra one.
  const extra = await imageToVideoEncode({ vae, ...size, startImage: start, endImage: end, flf2v: false, forceOffload: false });
  const yx = extra.y!.toTypedArray() as Float32Array;
  t.same(extra.targetShape, [16, L + 1, 4, 6], 'one latent frame more');
  t.equal(extra.seqLen, (L + 1) * plane / 4);
  t.equal(extra.extraEndLatent, true);
  t.same(maskOf(yx, L + 1), ['1111', '0000', '0000', '1111'], 'the mask: the start frame and the extra end frame');
  const wantVideo = await encode([start, ...Array(8).fill(undefined)]);
  const wantAlone = await encode([end]);
  t.ok(latentErr(yx, L + 1, wantVideo, L, 0, L) <= 1e-6, 'latent frames 0..2: [start, zeros] encoded');
  t.ok(latentErr(yx, L + 1, wantAlone, 1, 0, 1, L) <= 1e-6, 'latent frame 3: the end image encoded alone');

  // A run on it, decoded without the extra frame: numFrames frames, the same as decoding the first 3.
  const model = await WanModel.load(path.join(weightsDir, 'tiny_i2v_dit.f32.safetensors'), { numHeads: 2 });
  const clip = new Tensor(new (native().NoiseGenerator)(11n).randn([1, 257, 1280]));
  const latent = await new Sampler(model).sample({ imageEmbeds: { ...extra, clipContext: clip }, textEmbeds: text, steps: 2, cfg: 1, seed: 1 });
  t.same(latent.shape, [16, L + 1, 4, 6]);
  const video = await vae.decode(latent, { trimEndLatent: true, forceOffload: false });
  t.same(video.shape, [3, 9, 32, 48], 'trimEndLatent: 9 frames');
  const data = latent.toTypedArray() as Float32Array;
  const firstThree = new Float32Array(16 * L * plane);
  for (let c = 0; c < 16; c++) firstThree.set(data.subarray(c * (L + 1) * plane, (c * (L + 1) + L) * plane), c * L * plane);
  t.equal(maxAbsDiff(video, await vae.decode(Tensor.fromTypedArray(firstThree, [16, L, 4, 6]), { forceOffload: false })), 0,
    'the decode of latent frames 0..2, bit for bit');
  await t.rejects(imageToVideoEncode({ vae, ...size }), { code: 'WAN_INVALID_OPTION', message: /Expected an image for startImage \(or endImage\) but received neither/ });

  // tiledVae (the wrapper's tiled_vae): the same video encoded in tiles of half the frame every
  // quarter (48 x 32: 24 x 16 every 8 x 8), the extra end latent too.
  const tiled = await imageToVideoEncode({ vae, ...size, startImage: start, endImage: end, flf2v: false, forceOffload: false, tiledVae: true });
  const tiling = { tiled: true, tileX: 24, tileY: 16, tileStrideX: 8, tileStrideY: 8, forceOffload: false };
  const yt = tiled.y!.toTypedArray() as Float32Array;
  const tiledVideo = await encode([start, ...Array(8).fill(undefined)], tiling);
  t.ok(latentErr(yt, L + 1, tiledVideo, L, 0, L) <= 1e-6, 'tiledVae: latent frames 0..2, the tiled encode of [start, zeros]');
  t.ok(latentErr(yt, L + 1, await encode([end], tiling), 1, 0, 1, L) <= 1e-6, 'tiledVae: the end image\'s latent, encoded in tiles alone');
  t.ok(latentErr(yt, L + 1, wantVideo, L, 0, L) > 1e-4, 'which is not the untiled encode');

  // augmentEmptyFrames k: the frames whose mask channel 0 is 0 move (1 + k) times as far from
  // the first latent frame: with start and end images (flf2v) frames 1 and 2, the end image's
  // (0001) included, as the wrapper's test counts it.
  const plain = await imageToVideoEncode({ vae, ...size, startImage: start, endImage: end, startLatentStrength: 0.8, forceOffload: false });
  const pushed = await imageToVideoEncode({ vae, ...size, startImage: start, endImage: end, startLatentStrength: 0.8, augmentEmptyFrames: 0.5, forceOffload: false });
  const [yp, ya] = [plain.y!.toTypedArray() as Float32Array, pushed.y!.toTypedArray() as Float32Array];
  let augErr = 0;
  for (let c = 0; c < 16; c++)
    for (let t2 = 0; t2 < L; t2++) {
      const a = channel(ya, L, 4 + c, t2), p0 = channel(yp, L, 4 + c, 0), pt = channel(yp, L, 4 + c, t2);
      for (let i = 0; i < plane; i++) augErr = Math.max(augErr, Math.abs(a[i] - (t2 === 0 ? pt[i] : p0[i] + (pt[i] - p0[i]) * 1.5)));
    }
  t.ok(augErr <= 1e-6, `augmentEmptyFrames 0.5: frames 1 and 2 at y0 + 1.5 (y - y0), frame 0 kept (max abs ${augErr.toExponential(2)})`);
  t.same(maskOf(ya, L), maskOf(yp, L), 'the mask untouched');

  // emptyFramePadImage: the frames no image fixes hold it instead of mid-gray.
  const padded = await imageToVideoEncode({ vae, ...size, startImage: start, emptyFramePadImage: end, forceOffload: false });
  const wantPadded = await encode([start, ...Array(8).fill(end)]);
  const yq = padded.y!.toTypedArray() as Float32Array;
  t.ok(latentErr(yq, L, wantPadded, L, 0, L) <= 1e-6, 'emptyFramePadImage: the latent of [start, pad x 8]');
  t.same(maskOf(yq, L), ['1111', '0000', '0000'], 'and the mask of the start image alone');
  model.dispose();
  vae.dispose();
});

t.test('I2V images of another size: Lanczos by default, as the wrapper; bicubic as the official code', async (t) => {
  const { g } = await shared;
  const vae = await Vae.load(path.join(weightsDir, 'tiny_vae.f32.safetensors'));
  const size = { width: 48, height: 32, numFrames: 5 };
  const image = g.get('i2v.image')!;
  t.not(image.shape.slice(1).join('x'), '32x48', `the image (${image.shape.slice(1).join('x')}) is resized`);
  const byDefault = await imageToVideoEncode({ vae, ...size, startImage: image });
  const lanczos = await imageToVideoEncode({ vae, ...size, startImage: image, resize: 'lanczos' });
  const bicubic = await imageToVideoEncode({ vae, ...size, startImage: image, resize: 'bicubic' });
  t.equal(maxAbsDiff(byDefault.y!, lanczos.y!), 0, 'the default is Lanczos');
  t.ok(maxAbsDiff(lanczos.y!, bicubic.y!) > 1e-3, 'which is not bicubic');
  // An image of the target size is used as it is, whichever way was asked.
  const exact = Tensor.fromTypedArray(Float32Array.from({ length: 3 * 32 * 48 }, (_, i) => Math.fround(Math.round(127.5 + 120 * Math.sin(i)) / 127.5 - 1)), [3, 32, 48]);
  const a = await imageToVideoEncode({ vae, ...size, startImage: exact, resize: 'lanczos' });
  const b = await imageToVideoEncode({ vae, ...size, startImage: exact, resize: 'bicubic' });
  t.equal(maxAbsDiff(a.y!, b.y!), 0, 'the target size: no resize either way');
  await t.rejects(imageToVideoEncode({ vae, ...size, startImage: image, resize: 'nearest' as never }),
    { code: 'WAN_INVALID_OPTION', message: 'Expected one of lanczos, bicubic for resize but received "nearest" of type string' });
  vae.dispose();
});

t.test('context windows', async (t) => {
  const { model, text } = await shared;
  const sampler = new Sampler(model);
  // 33 frames = 9 latent frames of 4 x 4 (36 tokens).
  const o = { imageEmbeds: emptyEmbeds({ width: 32, height: 32, numFrames: 33 }), textEmbeds: text, steps: 3, cfg: 4, seed: 21, scheduler: 'euler' as const };
  const plain = await sampler.sample(o);

  for (const schedule of ['uniform_standard', 'uniform_looped', 'static_standard'] as const) {
    const one = await sampler.sample({ ...o, contextOptions: { schedule, frames: 33, overlap: 16 } });
    t.equal(maxAbsDiff(one, plain), 0, `${schedule}: one window covering the video equals sampling without windows`);
  }

  // Windows of 5 latent frames overlapping by 2: every frame covered (no NaN from an empty
  // weight sum), and the joins as smooth as the rest of the video.
  for (const fuse of ['linear', 'pyramid'] as const) {
    const windowed = await sampler.sample({ ...o, contextOptions: { schedule: 'static_standard', frames: 17, overlap: 8, fuse, freenoise: false } });
    const x = windowed.toTypedArray() as Float32Array;
    t.ok(x.every(Number.isFinite), `${fuse}: every frame was predicted`);
    t.ok(maxAbsDiff(windowed, plain) > 1e-3, `${fuse}: windows change the result`);
    // Mean absolute change between neighbouring latent frames, at each of the 8 frame pairs.
    const plane = 16, frames = 9;
    const step = Array.from({ length: frames - 1 }, (_, f) => {
      let sum = 0;
      for (let c = 0; c < 16; ++c) for (let p = 0; p < plane; ++p) sum += Math.abs(x[(c * frames + f + 1) * plane + p] - x[(c * frames + f) * plane + p]);
      return sum / (16 * plane);
    });
    const ratio = Math.max(...step) / Math.min(...step);
    t.comment(`${fuse}: frame-to-frame mean change ${step.map((s) => s.toFixed(3)).join(' ')}`);
    t.ok(ratio < 2, `${fuse}: no frame pair changes more than 2x the calmest one (ratio ${ratio.toFixed(2)})`);
  }

  // Prompts separated by '|' map to successive windows.
  const [p0] = text.promptEmbeds, [n0] = text.negativePromptEmbeds;
  const windows = { schedule: 'static_standard' as const, frames: 17, overlap: 8, freenoise: false };
  const single = await sampler.sample({ ...o, contextOptions: windows });
  const same = await sampler.sample({ ...o, textEmbeds: { promptEmbeds: [p0, p0], negativePromptEmbeds: [n0] }, contextOptions: windows });
  t.equal(maxAbsDiff(same, single), 0, 'two identical prompts equal one');
  const two = await sampler.sample({ ...o, textEmbeds: { promptEmbeds: [p0, n0], negativePromptEmbeds: [n0] }, contextOptions: windows });
  const a = two.toTypedArray() as Float32Array, b = single.toTypedArray() as Float32Array;
  const frameDiff = (f: number) => { let m = 0; for (let c = 0; c < 16; ++c) for (let p = 0; p < 16; ++p) m = Math.max(m, Math.abs(a[(c * 9 + f) * 16 + p] - b[(c * 9 + f) * 16 + p])); return m; };
  t.ok(frameDiff(8) > 1e-3, 'the second prompt steers the last window');

  await t.rejects(sampler.sample({ ...o, contextOptions: { frames: 17, overlap: 20 } }), { code: 'WAN_INVALID_OPTION', message: /contextOptions.overlap/ });
});

t.test('RIFLEx: every call, windows included, stretches the frequency over the whole video', async (t) => {
  const { model, text } = await shared;
  t.equal(riflexFrequencies(model.config), 6, 'head dim 32: 6 of its 16 pairs turn with the frame');
  // The model's calls, seen by a stand-in that passes them on.
  const seen: [number | undefined, number | undefined][] = [];
  const spy = watched(model, (input) => seen.push([input.riflexFreqIndex, input.riflexLatentFrames]));
  const o = { imageEmbeds: emptyEmbeds({ width: 32, height: 32, numFrames: 33 }), textEmbeds: text, steps: 3, cfg: 4, seed: 21, scheduler: 'euler' as const };
  const plain = await new Sampler(model).sample(o);
  const stretched = await new Sampler(spy).sample({ ...o, riflexFreqIndex: 2 });
  t.ok(maxAbsDiff(stretched, plain) > 1e-3, `it changes the video (max abs ${maxAbsDiff(stretched, plain).toExponential(2)})`);
  t.same(new Set(seen.map(String)), new Set(['2,9']), `each of the ${seen.length} calls: index 2 over the 9 latent frames`);
  seen.length = 0;
  const windows = { schedule: 'static_standard' as const, frames: 17, overlap: 8, freenoise: false };
  await new Sampler(spy).sample({ ...o, riflexFreqIndex: 2, contextOptions: windows });
  t.same(new Set(seen.map(String)), new Set(['2,9']), `windows of 5 latent frames: each of the ${seen.length} calls still spans 9`);
  // The given latent frames are what the angles follow: the same call over its own 9 frames.
  const x = await new Sampler(model).sample({ ...o, steps: 1, riflexFreqIndex: 2 });
  const forward = (extra: object) => model.forward({ x: [x], t: Tensor.fromTypedArray(Float64Array.of(500), [1]), context: [text.promptEmbeds[0]], seqLen: 36, ...extra });
  const [byDefault] = await forward({ riflexFreqIndex: 2 });
  const [given] = await forward({ riflexFreqIndex: 2, riflexLatentFrames: 9 });
  const [longer] = await forward({ riflexFreqIndex: 2, riflexLatentFrames: 40 });
  t.equal(maxAbsDiff(byDefault, given), 0, 'by default over x\'s own frames');
  t.ok(maxAbsDiff(longer, given) > 1e-4, 'another length, other angles');
  // One frame sits at position 0, where no frequency turns anything.
  const image = { ...o, imageEmbeds: emptyEmbeds({ width: 32, height: 32, numFrames: 1 }) };
  t.equal(maxAbsDiff(await new Sampler(model).sample({ ...image, riflexFreqIndex: 3 }), await new Sampler(model).sample(image)), 0,
    'a single frame is unchanged');
  await t.rejects(new Sampler(model).sample({ ...o, riflexFreqIndex: 7 }),
    { code: 'WAN_INVALID_OPTION', message: /Expected an integer in 0\.\.6 for riflexFreqIndex \(0 is off, 6 typical\) but received 7/ });
  await t.rejects(forward({ riflexFreqIndex: 1.5 }), { code: 'WAN_INVALID_OPTION', message: /riflexFreqIndex/ });
});

t.test('skip layer guidance: the unconditional pass leaves the blocks out while it applies', async (t) => {
  const { model, text } = await shared;
  // A forward without block 0 is the forward of the model made of block 1 alone.
  const { tensors } = await loadSafetensors(path.join(weightsDir, 'tiny_t2v_dit.f32.safetensors'));
  const alone: Record<string, Tensor> = {};
  for (const [k, v] of tensors) if (!k.startsWith('blocks.0.')) alone[k.replace(/^blocks\.1\./, 'blocks.0.')] = v;
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'wan-slg-')), 'one-block.safetensors');
  t.teardown(() => fs.rmSync(path.dirname(file), { recursive: true, force: true }));
  await saveSafetensors(file, alone);
  const oneBlock = await WanModel.load(file, { numHeads: 2, textLen: 16 });
  t.equal(oneBlock.config.numLayers, 1);
  const x = new Tensor(new (native().NoiseGenerator)(3n).randn([16, 2, 4, 4]));
  const input = { x: [x], t: Tensor.fromTypedArray(Float64Array.of(700), [1]), context: [text.promptEmbeds[0]], seqLen: 8 };
  const [skipped] = await model.forward({ ...input, skipBlocks: [0] });
  const [reference] = await oneBlock.forward(input);
  t.equal(maxAbsDiff(skipped, reference), 0, 'skipBlocks [0]: bit for bit the model of block 1 alone');
  oneBlock.dispose();
  await t.rejects(model.forward({ ...input, skipBlocks: [2] }), { code: 'WAN_INVALID_OPTION', message: /block indices in 0\.\.1 for skipBlocks/ });

  // The sampler: from startPercent to endPercent of the steps run, the unconditional calls only.
  const seen: (number[] | undefined)[] = [];
  const spy = watched(model, (input) => seen.push(input.skipBlocks));
  const o = { imageEmbeds: emptyEmbeds({ width: 32, height: 32, numFrames: 5 }), textEmbeds: text, steps: 4, cfg: 4, seed: 1, scheduler: 'euler' as const };
  const guided = await new Sampler(spy).sample({ ...o, slgArgs: { blocks: [1], startPercent: 0.5, endPercent: 1 } });
  t.same(seen, [undefined, undefined, undefined, undefined, undefined, [1], undefined, [1]], 'steps 0.5 and 0.75: the second call of each');
  t.ok(maxAbsDiff(guided, await new Sampler(model).sample(o)) > 1e-4, 'and it changes the result');
  seen.length = 0;
  const batched = await new Sampler(spy).sample({ ...o, batchedCfg: true, slgArgs: { blocks: [1], startPercent: 0.5 } });
  t.same(seen.length, 2 + 4, 'batched cfg: one call for each step without it, two apart for each step with it');
  t.equal(maxAbsDiff(batched, guided) <= 2e-5, true, `and the same result as unbatched (${maxAbsDiff(batched, guided).toExponential(2)})`);
  await t.rejects(new Sampler(model).sample({ ...o, slgArgs: { blocks: [2] } }),
    { code: 'WAN_INVALID_OPTION', message: /Expected a non-empty array of block indices in 0\.\.1 for slgArgs\.blocks but received \[2 of type number\]/ });
  await t.rejects(new Sampler(model).sample({ ...o, slgArgs: { blocks: [0], startPercent: 0.8, endPercent: 0.2 } }),
    { code: 'WAN_INVALID_OPTION', message: /slgArgs\.startPercent \(0\.8\) at or below slgArgs\.endPercent/ });
});

t.test('TeaCache: a call skips the blocks, adding their last residual, while the time embedding has changed little', async (t) => {
  const { model, text } = await shared;
  const context = text.promptEmbeds[0];
  const x = new Tensor(new (native().NoiseGenerator)(4n).randn([16, 2, 4, 4]));
  const at = (v: number) => Tensor.fromTypedArray(Float64Array.of(v), [1]);
  const tea = (step: number) => ({ method: 'teacache' as const, stream: 7, step, threshold: 0.5, mode: 'e0' as const, cacheDevice: 'offload_device' as const });
  model.clearCache();
  // The same call twice: the second skips the blocks, and the residual gives back what they made.
  const [computed] = await model.forward({ x: [x], t: at(600), context: [context], seqLen: 8, cache: tea(0) });
  const [reused] = await model.forward({ x: [x], t: at(600), context: [context], seqLen: 8, cache: tea(1) });
  t.same(model.cacheReport(), [{ stream: 7, skippedSteps: [1] }], 'the second call skipped');
  const err = maxAbsDiff(reused, computed);
  t.ok(err <= 1e-5, `x + (blocks(x) - x) against blocks(x): max abs ${err.toExponential(2)} <= 1e-5`);
  model.clearCache();
  t.same(model.cacheReport(), [], 'cleared');

  // The decisions over a run, against the rule written out here on the time embeddings the model
  // reports (trace): from the first step in range, which computes, the relative L1 change of e
  // (or e0) against the last computed step's, through the polynomial if any, accumulated in
  // float32; below the threshold the step is skipped, otherwise computed and the sum reset.
  // (The tiny model's random time embedding changes by 0.83 to 1.09 a step.)
  const o = { imageEmbeds: emptyEmbeds({ width: 32, height: 32, numFrames: 5 }), textEmbeds: text, steps: 12, cfg: 1, seed: 2, scheduler: 'euler' as const };
  const timesteps = schedule('euler', { steps: 12, shift: 5 }).timesteps;
  const embeddings: Record<'e' | 'e0', Float32Array[]> = { e: [], e0: [] };
  for (const tv of timesteps) {
    const { intermediates } = await model.trace({ x: [x], t: Tensor.fromTypedArray(Float64Array.of(tv), [1]), context: [context], seqLen: 8 });
    embeddings.e.push(intermediates.get('time_embedding_out_e')!.toTypedArray() as Float32Array);
    embeddings.e0.push(intermediates.get('time_projection_out')!.toTypedArray() as Float32Array);
  }
  const rule = (startStep: number, threshold: number, mode: 'e' | 'e0', coefficients?: number[]) => {
    const skipped: number[] = [];
    let previous: Float32Array | undefined, accumulated = 0;
    for (let i = startStep; i < timesteps.length; i++) {
      const e = embeddings[mode][i];
      if (!previous) { previous = e; continue; }
      let diff = 0, norm = 0;
      for (let k = 0; k < e.length; k++) { diff += Math.abs(e[k] - previous[k]); norm += Math.abs(previous[k]); }
      const change = diff / norm;
      accumulated = Math.fround(accumulated + Math.fround(coefficients ? coefficients.reduce((p, c) => p * change + c, 0) : change));
      if (accumulated < Math.fround(threshold)) skipped.push(i);
      else { accumulated = 0; previous = e; }
    }
    return skipped;
  };
  const full = await new Sampler(model).sample(o);
  const cases: [string, object, number[]][] = [
    ['without coefficients (e0), threshold 1', { relL1Thresh: 1, useCoefficients: false }, rule(1, 1, 'e0')],
    ['i2v_720 coefficients of e, from step 3', { startStep: 3, coefficients: 'i2v_720' },
     rule(3, 0.3, 'e', [-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683])],
  ];
  for (const [what, cacheArgs, expected] of cases) {
    const counts: number[] = [];
    const cached = await new Sampler(model).sample({ ...o, cacheArgs, onProgress: (p) => counts.push(p.cacheSkipped!) });
    const skipped = counts.flatMap((n, i) => (n > (counts[i - 1] ?? 0) ? [i] : []));
    t.same(skipped, expected, `${what}: skipped steps ${skipped.join(', ')} of 12, as the rule gives`);
    t.ok(expected.length > 0, `${what}: some skipped`);
    t.ok(maxAbsDiff(cached, full) > 0, `${what}: not the full run`);
    t.same(model.cacheReport(), [], `${what}: the run frees its residuals`);
  }

  // Nothing skipped below threshold 0 without coefficients: the full run, bit for bit.
  t.equal(maxAbsDiff(await new Sampler(model).sample({ ...o, cacheArgs: { relL1Thresh: 0, useCoefficients: false } }), full), 0,
    'threshold 0: never skips, exactly the run without TeaCache');

  // Each prediction its own stream: cond and uncond, and each context window its pair.
  const streams = new Set<number>();
  const spy = watched(model, (input) => { if (input.cache) streams.add(input.cache.stream); });
  await new Sampler(spy).sample({ ...o, imageEmbeds: emptyEmbeds({ width: 32, height: 32, numFrames: 17 }), cfg: 4, steps: 3,
    cacheArgs: { startStep: 0 }, contextOptions: { schedule: 'static_standard', frames: 9, overlap: 4, freenoise: false } });
  t.same([...streams].sort(), [0, 1, 2, 3], 'two windows, two predictions each: four streams');
  t.equal(cacheVariant(model), '14B', 'a t2v model that is not 1.3B wide: the 14B coefficients, as the wrapper picks');
  await t.rejects(new Sampler(model).sample({ ...o, cfg: 4, batchedCfg: true, cacheArgs: {} }), { code: 'WAN_INVALID_OPTION', message: /batchedCfg false with cacheArgs/ });
  await t.rejects(new Sampler(model).sample({ ...o, cacheArgs: { mode: 'x' as never } }), { code: 'WAN_INVALID_OPTION', message: /Expected e or e0 for cacheArgs\.mode/ });
});

t.test('MagCache: calls are skipped while the error the calibrated magnitude ratios predict stays small', async (t) => {
  const { model, text } = await shared;
  // MagCache's nearest_interp, numpy's rounding (halves to even): indices written out by hand.
  const indices = Array.from({ length: 50 }, (_, i) => i);
  t.same(nearestInterpolation(indices, 12), [0, 4, 9, 13, 18, 22, 27, 31, 36, 40, 45, 49], '50 calibrated steps to 12');
  t.same(nearestInterpolation([0, 1, 2], 5), [0, 0, 1, 2, 2], 'halves round to even (0.5 -> 0, 1.5 -> 2)');
  t.same(nearestInterpolation([0, 1, 2], 1), [2], 'one step: the last');

  // Forward: a ratio of 1 predicts no error, so the second call skips and the residual gives the
  // blocks' output back.
  const context = text.promptEmbeds[0];
  const x = new Tensor(new (native().NoiseGenerator)(4n).randn([16, 2, 4, 4]));
  const t600 = Tensor.fromTypedArray(Float64Array.of(600), [1]);
  const mag = (step: number) => ({ method: 'magcache' as const, stream: 3, step, threshold: 0.02, magnitudeRatio: 1, maxSkips: 4, cacheDevice: 'offload_device' as const });
  const [computed] = await model.forward({ x: [x], t: t600, context: [context], seqLen: 8, cache: mag(0) });
  const [reused] = await model.forward({ x: [x], t: t600, context: [context], seqLen: 8, cache: mag(1) });
  t.same(model.cacheReport(), [{ stream: 3, skippedSteps: [1] }], 'the second call skipped');
  t.ok(maxAbsDiff(reused, computed) <= 1e-5, `x + (blocks(x) - x) against blocks(x): max abs ${maxAbsDiff(reused, computed).toExponential(2)}`);
  model.clearCache();

  // A run: the 14B table (this t2v model is not 1.3B wide) resampled to 12 steps, conditional and
  // unconditional apart (the entries numpy's nearest_interp picks, written out).
  const cond = [1.0, 0.99779, 0.99434, 0.99516, 0.99428, 0.99313, 0.99138, 0.98772, 0.98177, 0.97184, 0.93964, 0.86111];
  const uncond = [1.0, 0.99771, 0.99431, 0.99517, 0.99426, 0.99311, 0.99135, 0.9877, 0.98173, 0.97183, 0.93961, 0.86189];
  // The rule: the first call in range computes; then the ratios multiply, |1 - product| adds up
  // over the calls skipped in a row, and a call is skipped while that stays below the threshold
  // and at most K in a row; a computed call starts again.
  const rule = (ratios: number[], startStep: number, threshold: number, k: number) => {
    const skipped: number[] = [];
    let ratio = 1, error = 0, skips = 0;
    for (let i = startStep + 1; i < ratios.length; i++) {
      ratio *= ratios[i]; error += Math.abs(1 - ratio); skips += 1;
      if (error < threshold && skips <= k) skipped.push(i);
      else { ratio = 1; error = 0; skips = 0; }
    }
    return skipped;
  };
  t.same(rule(cond, 1, 0.02, 4), [2, 3, 5, 7], 'the rule, worked by hand: 0.00566, 0.01613 skip; 0.03226 computes; ...');
  const o = { imageEmbeds: emptyEmbeds({ width: 32, height: 32, numFrames: 5 }), textEmbeds: text, steps: 12, cfg: 4, seed: 2, scheduler: 'euler' as const };
  const full = await new Sampler(model).sample(o);
  const cases: [string, object, number[], number[]][] = [
    ['defaults (0.02, K 4, from step 1)', {}, rule(cond, 1, 0.02, 4), rule(uncond, 1, 0.02, 4)],
    ['threshold 0.1, K 2, from step 3', { magcacheThresh: 0.1, magcacheK: 2, startStep: 3 }, rule(cond, 3, 0.1, 2), rule(uncond, 3, 0.1, 2)],
  ];
  for (const [what, args, expectCond, expectUncond] of cases) {
    const calls: { unconditional: boolean; ratio?: number }[] = [];
    const spy = watched(model, (input) => calls.push({ unconditional: input.context[0] !== context, ratio: (input.cache as { magnitudeRatio?: number })?.magnitudeRatio }));
    const counts: number[] = [];
    const cached = await new Sampler(spy).sample({ ...o, cacheArgs: { cacheType: 'MagCache', ...args }, onProgress: (p) => counts.push(p.cacheSkipped!) });
    const perStep = counts.map((n, i) => n - (counts[i - 1] ?? 0));
    const expected = cond.map((_, i) => Number(expectCond.includes(i)) + Number(expectUncond.includes(i)));
    t.same(perStep, expected, `${what}: calls skipped per step ${perStep.join(' ')}, as the rule gives`);
    const ratios = calls.filter((c) => c.ratio !== undefined);
    t.same(ratios.filter((c) => !c.unconditional).map((c) => c.ratio), cond.slice(-ratios.length / 2), `${what}: the conditional ratios`);
    t.same(ratios.filter((c) => c.unconditional).map((c) => c.ratio), uncond.slice(-ratios.length / 2), `${what}: the unconditional ratios`);
    t.ok(maxAbsDiff(cached, full) > 0, `${what}: not the full run`);
    t.same(model.cacheReport(), [], `${what}: the run frees its residuals`);
  }
  // A split run reads the ratios at its steps' places in the whole schedule.
  const seen: number[] = [];
  await new Sampler(watched(model, (input) => { if (input.cache && input.context[0] === context) seen.push((input.cache as { magnitudeRatio: number }).magnitudeRatio); }))
    .sample({ ...o, startStep: 6, cacheArgs: { cacheType: 'MagCache', startStep: 2 } });
  t.same(seen, cond.slice(8), 'startStep 6, cache from its step 2: the ratios of steps 8 to 11');
  t.equal(maxAbsDiff(await new Sampler(model).sample({ ...o, cacheArgs: { cacheType: 'MagCache', magcacheK: 0 } }), full), 0,
    'K 0: never skips, exactly the run without the cache');
  await t.rejects(new Sampler(model).sample({ ...o, cacheArgs: { cacheType: 'MagCache', magcacheK: 7 } }),
    { code: 'WAN_INVALID_OPTION', message: /Expected an integer in 0\.\.6 for cacheArgs\.magcacheK but received 7/ });
  await t.rejects(new Sampler(model).sample({ ...o, cacheArgs: { cacheType: 'MagCache', relL1Thresh: 0.1 } as never }),
    { code: 'WAN_INVALID_OPTION', message: /Expected cacheArgs among cacheType, magcacheThresh, .* but received 'relL1Thresh'/ });
  await t.rejects(new Sampler(model).sample({ ...o, cacheArgs: { cacheType: 'FirstBlockCache' } as never }),
    { code: 'WAN_INVALID_OPTION', message: /Expected one of TeaCache, MagCache, EasyCache for cacheArgs\.cacheType/ });
});

t.test('EasyCache: calls are skipped while the output change predicted from the input change stays small', async (t) => {
  const { model, text } = await shared;
  const context = text.promptEmbeds[0];
  const generator = new (native().NoiseGenerator)(5n);
  const base = generator.randn([16, 2, 4, 4]).toTypedArray() as Float32Array;
  const drift = generator.randn([16, 2, 4, 4]).toTypedArray() as Float32Array;
  // Ten calls on inputs that drift a little, at falling timesteps (8 tokens, no padding).
  const inputs = Array.from({ length: 10 }, (_, i) => ({
    x: Tensor.fromTypedArray(base.map((v, k) => v + 0.01 * i * i * drift[k]), [16, 2, 4, 4]),
    t: Tensor.fromTypedArray(Float64Array.of(700 - 15 * i), [1]),
  }));
  // What the blocks take and give for each (traced without the cache).
  const traced: { h: Float32Array; o: Float32Array }[] = [];
  for (const { x, t: tv } of inputs) {
    const { intermediates } = await model.trace({ x: [x], t: tv, context: [context], seqLen: 8 });
    traced.push({ h: intermediates.get('patch_embedding_out')!.toTypedArray() as Float32Array, o: intermediates.get('blocks_out')!.toTypedArray() as Float32Array });
  }
  const meanAbs = (a: Float32Array, b?: Float32Array) => a.reduce((s, v, k) => s + Math.abs(v - (b ? b[k] : 0)), 0) / a.length;
  // The rule: k = mean|o - o'| / mean|h - h'| between the last two computed calls (unknown until
  // there are two: computed); error += k mean|h - h_prev| / mean|o_last computed|, skipped while
  // below the threshold, computed and reset otherwise.
  const rule = (threshold: number) => {
    const skipped: number[] = [];
    let k = 0, error = 0, last = traced[0], previous = traced[0].h;
    for (let i = 1; i < traced.length; i++) {
      const { h, o } = traced[i];
      let reuse = false;
      if (k > 0) {
        error += (k * meanAbs(h, previous)) / meanAbs(last.o);
        if (error < threshold) reuse = true; else error = 0;
      }
      if (reuse) skipped.push(i);
      else { k = meanAbs(o, last.o) / meanAbs(h, last.h); last = traced[i]; }
      previous = h;
    }
    return skipped;
  };
  for (const threshold of [0.3, 0.5]) {  // (the tiny random model's output follows t closely: k is 2 to 35)
    const expected = rule(threshold);
    const outputs: Tensor[] = [];
    for (const [i, { x, t: tv }] of inputs.entries())
      outputs.push((await model.forward({ x: [x], t: tv, context: [context], seqLen: 8,
        cache: { method: 'easycache', stream: 0, step: i, threshold, cacheDevice: 'offload_device' } }))[0]);
    const skipped = model.cacheReport()[0].skippedSteps;
    model.clearCache();
    t.same(skipped, expected, `threshold ${threshold}: skipped calls ${skipped.join(', ')} of 10, as the rule gives`);
    t.ok(expected.length > 0 && expected.length < 8, `threshold ${threshold}: some skipped, some computed`);
  }

  // A run, and its options.
  const o = { imageEmbeds: emptyEmbeds({ width: 32, height: 32, numFrames: 5 }), textEmbeds: text, steps: 12, cfg: 1, seed: 2, scheduler: 'euler' as const };
  const full = await new Sampler(model).sample(o);
  const counts: number[] = [];
  const calls: number[] = [];
  const spy = watched(model, (input) => { if (input.cache) calls.push(input.cache.step); });
  const cached = await new Sampler(spy).sample({ ...o, cacheArgs: { cacheType: 'EasyCache', easycacheThresh: 0.5 }, onProgress: (p) => counts.push(p.cacheSkipped!) });
  t.same(calls, [10, 11], 'from step 10 by default (as the wrapper)');
  t.equal(counts.at(-1), 0, 'two calls in range are both computed (k is not known before)');
  t.equal(maxAbsDiff(cached, full), 0, 'so the run is the full one, bit for bit');
  const early = await new Sampler(model).sample({ ...o, cacheArgs: { cacheType: 'EasyCache', easycacheThresh: 0.5, startStep: 0 }, onProgress: (p) => counts.push(p.cacheSkipped!) });
  t.ok(counts.at(-1)! > 0 && maxAbsDiff(early, full) > 0, `from step 0 at 0.5: ${counts.at(-1)} of 12 calls skipped`);
  await t.rejects(new Sampler(model).sample({ ...o, cacheArgs: { cacheType: 'EasyCache', easycacheThresh: 2 } }),
    { code: 'WAN_INVALID_OPTION', message: /Expected a number in 0\.\.1 for cacheArgs\.easycacheThresh but received 2/ });
});

t.test('experimentalArgs: the guidance variants combine the step\'s predictions, TSR rescales the result', async (t) => {
  const { model, text } = await shared;
  // One Euler step: latent = x + (sigma1 - sigma0) v, so the run's v is read back from its
  // result and checked against the predictions the model made (recorded), combined by
  // lib/guidance.ts (checked against numpy in guidance.test.ts).
  const { recording, inputs, outputs } = recorded(model);
  const imageEmbeds = emptyEmbeds({ width: 32, height: 32, numFrames: 5 });
  const shape = imageEmbeds.targetShape;
  const o = { imageEmbeds, textEmbeds: text, steps: 1, cfg: 4, seed: 3, scheduler: 'euler' as const };
  const { sigmas, timesteps } = schedule('euler', { steps: 1, shift: 5 });
  const args = { cfgZeroStar: true, useTcfg: true, raagAlpha: 1, useFresca: true, frescaFreqCutoff: 1, temporalScoreRescaling: true, tsrK: 0.8 };
  const cases: [string, object][] = [['none', {}], ['all but zero-init', args], ['FreSca at cfg 1', { useFresca: true, frescaFreqCutoff: 1 }]];
  for (const [what, experimentalArgs] of cases) {
    outputs.length = 0; inputs.length = 0;
    const cfg = what.includes('cfg 1') ? 1 : 4;
    const latent = toNumbers((await new Sampler(recording).sample({ ...o, cfg, experimentalArgs })).toTypedArray());
    const x = inputs[0];
    const v = latent.map((l, i) => (l - x[i]) / (sigmas[1] - sigmas[0]));
    const g = resolveExperimentalArgs(experimentalArgs);
    let want = combineGuidance(outputs[0], outputs[1], cfg, shape, g);
    if (g?.tsr) want = temporalScoreRescaling(want, x, timesteps[0] / 1000, g.tsr.k, g.tsr.sigma);
    let err = 0;
    want.forEach((w, i) => { err = Math.max(err, Math.abs(w - v[i])); });
    t.ok(err <= 1e-5, `${what}: the step's velocity, max abs ${err.toExponential(2)}`);
    if (what !== 'none') {
      const plain = outputs[1] ? outputs[1].map((u, i) => u + cfg * (outputs[0][i] - u)) : outputs[0];
      t.ok(plain.some((p, i) => Math.abs(p - want[i]) > 1e-3), `${what}: not plain cfg`);
    }
  }
  // Zero-init: the first zeroStarSteps + 1 steps predict zero without calling the model.
  outputs.length = 0;
  const zeroed = await new Sampler(recording).sample({ ...o, steps: 3, experimentalArgs: { cfgZeroStar: true, useZeroInit: true, zeroStarSteps: 1 } });
  t.equal(outputs.length, 2, 'zero-init over steps 0 and 1: the model runs for step 2 alone (both passes)');
  t.ok(toNumbers(zeroed.toTypedArray()).every(Number.isFinite));
  await t.rejects(new Sampler(model).sample({ ...o, experimentalArgs: { bidirectionalSampling: true } }),
    { code: 'WAN_INVALID_OPTION', message: /bidirectionalSampling is not implemented yet/ });
});

t.test('loopArgs: the model sees the latent rolled a further shiftSkip frames each step, its prediction rolled back', async (t) => {
  const { model, text } = await shared;
  const { recording, inputs, outputs } = recorded(model);
  const imageEmbeds = emptyEmbeds({ width: 32, height: 32, numFrames: 13 });  // 4 latent frames
  const [C, T, H, W] = imageEmbeds.targetShape, plane = H * W;
  // torch.roll along T: frame f to f + by.
  const roll = (x: Float32Array, by: number) => {
    const out = new Float32Array(x.length);
    for (let c = 0; c < C; c++)
      for (let f = 0; f < T; f++) out.set(x.subarray((c * T + f) * plane, (c * T + f + 1) * plane), (c * T + (((f + by) % T) + T) % T) * plane);
    return out;
  };
  const steps = 3;
  const { sigmas } = schedule('euler', { steps, shift: 5 });
  const final = toNumbers((await new Sampler(recording).sample({ imageEmbeds, textEmbeds: text, steps, cfg: 1, seed: 4, scheduler: 'euler',
    loopArgs: { shiftSkip: 3 } })).toTypedArray());
  // Euler by hand on the recorded predictions: step k sees roll(latent, -3k mod 4), its
  // prediction is rolled back by +3k.
  let latent = inputs[0];
  let err = 0;
  for (let k = 0; k < steps; k++) {
    const seen = roll(latent, -3 * k);
    inputs[k].forEach((v, i) => { err = Math.max(err, Math.abs(v - seen[i])); });
    const v = roll(outputs[k], 3 * k);
    latent = latent.map((x, i) => x + (sigmas[k + 1] - sigmas[k]) * v[i]);
  }
  t.ok(err <= 1e-5, `the model's input at steps 0, 1, 2: the latent rolled back by 0, 3 and 2 (6 mod 4) frames (max abs ${err.toExponential(2)})`);
  let finalErr = 0;
  latent.forEach((x, i) => { finalErr = Math.max(finalErr, Math.abs(x - final[i])); });
  t.ok(finalErr <= 1e-5, `the run's result: Euler on the predictions rolled forward again (max abs ${finalErr.toExponential(2)})`);
  await t.rejects(new Sampler(model).sample({ imageEmbeds, textEmbeds: text, steps, cfg: 1, loopArgs: {},
    contextOptions: { frames: 9, overlap: 4 } }), { code: 'WAN_INVALID_OPTION', message: /loopArgs with contextOptions is not implemented yet/ });
  await t.rejects(new Sampler(model).sample({ imageEmbeds, textEmbeds: text, steps, cfg: 1, loopArgs: { shiftSkip: 1.5 } }),
    { code: 'WAN_INVALID_OPTION', message: /Expected an integer in 0\.\.10000 for loopArgs\.shiftSkip but received 1\.5/ });
  await t.rejects(new Sampler(model).sample({ imageEmbeds, textEmbeds: text, steps, cfg: 1, loopArgs: { startPercent: 0.6, endPercent: 0.2 } }),
    { code: 'WAN_INVALID_OPTION', message: /loopArgs\.startPercent \(0\.6\) at or below loopArgs\.endPercent/ });
});

t.test('res_multistep and flowmatch_causvid in the Sampler: their steps applied to the model\'s predictions', async (t) => {
  const { model, text } = await shared;
  const imageEmbeds = emptyEmbeds({ width: 32, height: 32, numFrames: 5 });
  for (const [scheduler, steps] of [['res_multistep', 5], ['flowmatch_causvid', 4]] as const) {
    const { recording, inputs, outputs } = recorded(model);
    const final = (await new Sampler(recording).sample({ imageEmbeds, textEmbeds: text, steps, cfg: 1, shift: 5, seed: 9, scheduler })).toTypedArray() as Float32Array;
    // The tiny model is 32 wide: flowmatch_causvid takes the 1.3B's 4 timesteps, not the 14B's.
    const s = createScheduler(scheduler, { steps, shift: 5, transformerDim: model.config.dim });
    t.equal(inputs.length, steps, `${scheduler}: one model call per step`);
    let latent = inputs[0];
    let err = 0;
    for (let k = 0; k < steps; k++) {
      inputs[k].forEach((v, i) => { err = Math.max(err, Math.abs(v - latent[i])); });
      latent = s.step(outputs[k], k, latent);
    }
    final.forEach((v, i) => { err = Math.max(err, Math.abs(v - latent[i])); });
    t.equal(err, 0, `${scheduler}: each step's input and the result are the scheduler's steps on the recorded predictions, bit for bit`);
  }
  t.same(schedule('flowmatch_causvid', { steps: 4, shift: 5, transformerDim: model.config.dim }).timesteps, [1000, 750, 500, 250]);
});

t.test('custom sigmas set the steps', async (t) => {
  const { model, text } = await shared;
  const reports: number[] = [];
  const o = { imageEmbeds: emptyEmbeds({ width: 32, height: 32, numFrames: 1 }), textEmbeds: text, cfg: 1, scheduler: 'euler' as const };
  const custom = await new Sampler(model).sample({ ...o, sigmas: [1, 0.6, 0.2, 0], onProgress: (p) => reports.push(p.totalSteps) });
  t.same(reports, [3, 3, 3], 'three steps from four sigmas');
  t.ok(toNumbers(custom.toTypedArray()).every(Number.isFinite));
});
