// ComfyUI workflows run natively (lib/workflow.ts) on the tiny models of shared/golden/weights:
// an API-format T2V workflow (test/fixtures/workflows/t2v.api.json) and the same in UI format
// (t2v.ui.json), checked against the same pipeline called through the library, plus the order
// nodes run and free their values in, LoRAs and block swap, validation messages, model lookup
// and cancellation.
import t from 'tap';
import type * as tap from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { ClipVisionEncoder, emptyEmbeds, imageToVideoEncode, Sampler, saveSafetensors, Tensor, TextEncoder, Vae, videoCombine, WanModel } from '../../lib/index';
import type { ClipEmbeds, ContextOptions, FetaArgs, ImageEmbeds, ModelLoaderOptions, SlgArgs, CacheArgs, ExperimentalArgs, LoopArgs, FreeInitArgs, NagArgs } from '../../lib/index';
import { native } from '../../lib/native';
import { parseWorkflow, runWorkflow } from '../../lib/workflow';
import type { RunWorkflowOptions } from '../../lib/workflow';
import { EXECUTORS, NodeContext } from '../../lib/workflow-nodes';
import { fixturesDir, maxAbsDiff, repoRoot, tempDir, weightsDir } from '../helpers';
import { decodeVideo, ffprobe, frameBytes, have, listFiles, pngBytes, trainTinyTokenizer } from '../media';
import { loadVideo } from '../../lib/video-input';
import { resizeImage, type ResizeCrop, type ResizeMethod } from '../../lib/image-resize';

const sharp = require('sharp');

const root = tempDir('wan-workflow-');
t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
let outputs = 0;
const newOutputDir = () => path.join(root, `out${++outputs}`);

const apiFile = path.join(fixturesDir, 'workflows', 't2v.api.json');
const uiFile = path.join(fixturesDir, 'workflows', 't2v.ui.json');
const api = () => JSON.parse(fs.readFileSync(apiFile, 'utf8'));
const ui = () => JSON.parse(fs.readFileSync(uiFile, 'utf8'));

// The tiny umT5 has no tokenizer: one is trained here with Debian's spm_train, as
// test/native/text-encoder.test.ts does (T5 conventions: pad 0, eos 1, unk 2; vocab <= 256).
// The workflows name it "spiece.model", found in this folder, given as a model folder.
const tokenizerDir = path.join(root, 'tokenizer');
const trainTokenizer = () => trainTinyTokenizer(tokenizerDir);
const haveTokenizer = trainTokenizer();
const modelDirs = [weightsDir, tokenizerDir];

const skip = !haveTokenizer ? 'spm_train (Debian package sentencepiece) is needed: scripts/setup.sh installs it'
  : !(have('ffmpeg') && have('ffprobe')) ? 'ffmpeg and ffprobe are needed (apt install ffmpeg)' : false;






// The fixture's pipeline called through the library.
interface Direct {
  width: number; height: number; numFrames: number; contextOptions?: ContextOptions; fetaArgs?: FetaArgs; riflexFreqIndex?: number;
  slgArgs?: SlgArgs; cacheArgs?: CacheArgs; experimentalArgs?: ExperimentalArgs; loopArgs?: LoopArgs; freeinitArgs?: FreeInitArgs;
  steps?: number; enhanceHf?: boolean; samples?: Tensor; denoiseStrength?: number; nagArgs?: NagArgs;
  loras?: ModelLoaderOptions['loras']; blockSwap?: ModelLoaderOptions['blockSwap'];
}
async function direct(o: Direct): Promise<Tensor> {
  const encoder = await TextEncoder.load(path.join(weightsDir, 'tiny_umt5_enc.f32.safetensors'), { tokenizer: path.join(tokenizerDir, 'spiece.model') });
  const textEmbeds = await encoder.encode({ positive: ['a cat walks on the beach at sunset'], negative: 'rain at night' });
  encoder.dispose();
  const model = await WanModel.load(path.join(weightsDir, 'tiny_t2v_dit.f32.safetensors'),
    { numHeads: 2, textLen: 16, basePrecision: 'fp32', attentionMode: 'sdpa', loras: o.loras, blockSwap: o.blockSwap });
  const latent = await new Sampler(model).sample({
    imageEmbeds: emptyEmbeds({ width: o.width, height: o.height, numFrames: o.numFrames }), textEmbeds,
    steps: o.steps ?? 3, enhanceHf: o.enhanceHf, cfg: 5, shift: 5, seed: 42, scheduler: 'unipc', contextOptions: o.contextOptions, fetaArgs: o.fetaArgs,
    riflexFreqIndex: o.riflexFreqIndex, slgArgs: o.slgArgs, cacheArgs: o.cacheArgs, experimentalArgs: o.experimentalArgs,
    loopArgs: o.loopArgs, freeinitArgs: o.freeinitArgs, samples: o.samples, denoiseStrength: o.denoiseStrength, nagArgs: o.nagArgs,
  });
  model.dispose();
  const vae = await Vae.load(path.join(weightsDir, 'tiny_vae.f32.safetensors'));
  const video = await vae.decode(latent, { looped: o.loopArgs !== undefined });
  vae.dispose();
  return video;
}
let directRun: Promise<Tensor> | undefined;
const directT2v = () => (directRun ??= direct({ width: 64, height: 64, numFrames: 5 }));

// Calls fn with the dispose() of the model classes recording into `events`.
async function spyDisposals<T>(events: string[], fn: () => Promise<T>): Promise<T> {
  const classes = { TextEncoder, WanModel, Vae } as Record<string, { prototype: { dispose(): void } }>;
  const saved = Object.entries(classes).map(([name, cls]) => [name, cls, cls.prototype.dispose] as const);
  for (const [name, cls, original] of saved) {
    cls.prototype.dispose = function (this: unknown) {
      events.push(`dispose ${name}`);
      return original.call(this);
    };
  }
  try {
    return await fn();
  } finally {
    for (const [, cls, original] of saved) cls.prototype.dispose = original;
  }
}

async function rejectsWith(t: tap.Test, p: Promise<unknown>, code: string, message: RegExp) {
  await t.rejects(p, { code, message }, `${code} ${message}`);
}

t.test('an API-format T2V workflow runs: the nodes that lead to the output, in order, each value freed once read', { skip }, async (t) => {
  const workflow = api();
  // An unconnected loader whose file does not exist: not run, so not an error.
  workflow['11'] = { class_type: 'WanVideoVAELoader', inputs: { model_name: 'no-such-vae.safetensors', precision: 'bf16' } };
  const outputDir = newOutputDir();
  const events: string[] = [];
  const progress = new Map<string, number>();
  const result = await spyDisposals(events, () => runWorkflow(workflow, {
    modelDirs, outputDir,
    onNodeStart: (id, classType) => events.push(`start ${id} ${classType}`),
    onProgress: (e) => progress.set(e.nodeId, (progress.get(e.nodeId) ?? 0) + 1),
  }));

  t.same(events, [
    'start 1 LoadWanVideoT5TextEncoder', 'start 2 WanVideoTextEncode', 'dispose TextEncoder',
    'start 5 WanVideoEmptyEmbeds', 'start 3 WanVideoBlockSwap', 'start 4 WanVideoModelLoader', 'start 6 WanVideoSampler', 'dispose WanModel',
    'start 7 WanVideoVAELoader', 'start 8 WanVideoDecode', 'start 9 VHS_VideoCombine', 'dispose Vae',
  ], 'the text encoder is freed before the model loads, the model before the VAE loads; nodes 10 and 11 do not run');
  t.same(Object.keys(result.timings).sort(), ['1', '2', '3', '4', '5', '6', '7', '8', '9']);
  t.ok(Object.values(result.timings).every((ms) => ms >= 0), 'a time for each node that ran');
  t.equal(progress.get('6'), 3, 'the sampler reports its 3 steps');
  t.ok((progress.get('8') ?? 0) >= 2, 'the decode, streamed into Video Combine, reports under its own node');
  t.ok((progress.get('9') ?? 0) >= 5, 'Video Combine reports each frame');

  t.same(Object.keys(result.outputs), ['9']);
  const files = result.outputs['9'].files!;
  t.same(files, [path.join(outputDir, 'wan', 't2v_00001.mp4')], 'filename_prefix with a subfolder, under outputDir');
  t.same(listFiles(outputDir), [path.join('wan', 't2v_00001.mp4')], 'and nothing else');
  const probe = ffprobe(files[0]);
  t.same([probe.streams[0].width, probe.streams[0].height, Number(probe.streams[0].nb_read_frames)], [64, 64, 5], 'ffprobe: 5 frames of 64x64');
  t.same(JSON.parse(probe.format.tags!.prompt), workflow, 'the workflow is embedded as VHS does (prompt)');

  // The same pipeline through the library, written with the same options: the same frames.
  const video = await directT2v();
  const same = await videoCombine(video, { format: 'video/h264-mp4', frameRate: 8, crf: 19, pixFmt: 'yuv420p',
    outputDir: newOutputDir(), filenamePrefix: 'direct' });
  t.ok(decodeVideo(files[0]).equals(decodeVideo(same.files[0])), 'identical decoded frames to the library pipeline');
});

t.test('load_device and force_offload act as in the wrapper', { skip }, async (t) => {
  // Where each model is after its load, and each offload() call, in order.
  async function placements(workflow: object): Promise<string[]> {
    const events: string[] = [];
    const classes = { TextEncoder, WanModel, Vae } as unknown as Record<string, {
      load(...args: unknown[]): Promise<{ memoryStats(): { placement: string } }>;
      prototype: { offload(): Promise<void> };
    }>;
    const saved = Object.entries(classes).map(([name, cls]) => [name, cls, cls.load, cls.prototype.offload] as const);
    for (const [name, cls, load, offload] of saved) {
      cls.load = async (...args: unknown[]) => {
        const model = await load.apply(cls, args);
        events.push(`load ${name} to ${model.memoryStats().placement}`);
        return model;
      };
      cls.prototype.offload = function (this: unknown) {
        events.push(`offload ${name}`);
        return offload.call(this);
      };
    }
    try {
      await runWorkflow(workflow, { modelDirs, outputDir: newOutputDir() });
    } finally {
      for (const [, cls, load, offload] of saved) Object.assign(cls, { load }).prototype.offload = offload;
    }
    return events;
  }
  t.same(await placements(api()), [
    'load TextEncoder to offload_device', 'offload TextEncoder', 'load WanModel to offload_device', 'offload WanModel',
    'load Vae to offload_device', 'offload Vae',
  ], 'the fixture (the wrapper\'s defaults): loaded to the offload device, each offloaded after its node');
  const kept = api();
  for (const id of ['1', '4']) kept[id].inputs.load_device = 'main_device';
  for (const id of ['2', '6']) kept[id].inputs.force_offload = false;
  t.same(await placements(kept), ['load TextEncoder to main_device', 'load WanModel to main_device', 'load Vae to offload_device', 'offload Vae'],
    'load_device main_device and force_offload false: loaded to the main device and kept (WanVideoDecode always offloads)');
});

t.test('decoded frames equal the library pipeline exactly (PNG output)', { skip }, async (t) => {
  const workflow = api();
  asPngFrames(workflow);
  const outputDir = newOutputDir();
  const result = await runWorkflow(workflow, { modelDirs, outputDir });
  const files = result.outputs['9'].files!;
  t.same(files.map((f) => path.basename(f)), [1, 2, 3, 4, 5].map((i) => `t2v_00001_000${i}.png`));
  const expected = frameBytes(await directT2v());
  for (const [i, file] of files.entries()) t.ok((await pngBytes(file)).equals(expected[i]), `frame ${i}: the library's bytes`);
});

t.test('the UI format of the same workflow gives the same graph and the same frames', { skip }, async (t) => {
  const fromUi = parseWorkflow(ui()), fromApi = parseWorkflow(api());
  t.equal(fromUi.format, 'ui');
  t.equal(fromApi.format, 'api');
  t.same(fromUi.order, fromApi.order, 'the same nodes run, in the same order');
  for (const id of fromApi.order) {
    const a = fromApi.nodes.get(id)!, u = fromUi.nodes.get(id)!;
    t.same([u.classType, u.values, u.links], [a.classType, a.values, a.links], `node ${id}: the same values and links`);
  }
  t.same(fromUi.nodes.get('8')!.links.samples, { node: '6', slot: 0 }, 'through the Reroute');
  t.equal(fromUi.nodes.get('6')!.values.seed, 42, 'the seed from widgets_values, skipping "control after generate" and the PrimitiveNode');

  const outputDir = newOutputDir();
  const result = await runWorkflow(uiFile, { modelDirs, outputDir });
  const file = result.outputs['9'].files![0];
  const reference = await videoCombine(await directT2v(), { format: 'video/h264-mp4', frameRate: 8, outputDir: newOutputDir() });
  t.ok(decodeVideo(file).equals(decodeVideo(reference.files[0])), 'identical decoded frames');
  const tags = ffprobe(file).format.tags!;
  t.same(JSON.parse(tags.workflow), ui(), 'VHS metadata: workflow is the UI workflow');
  t.same(Object.keys(JSON.parse(tags.prompt)).sort(), ['1', '10', '2', '3', '4', '5', '6', '7', '8', '9'], 'and prompt its API form');
});

t.test('context options, Enhance-A-Video, skip layer guidance, TeaCache and RIFLEx reach the sampler', { skip }, async (t) => {
  const workflow = api();
  workflow['5'].inputs.num_frames = 9;
  workflow['12'] = { class_type: 'WanVideoContextOptions', inputs: {
    context_schedule: 'static_standard', context_frames: 5, context_stride: 4, context_overlap: 4, freenoise: true, verbose: false, fuse_method: 'pyramid' } };
  workflow['13'] = { class_type: 'WanVideoEnhanceAVideo', inputs: { weight: 2, start_percent: 0, end_percent: 1 } };
  workflow['6'].inputs.context_options = ['12', 0];
  workflow['6'].inputs.feta_args = ['13', 0];
  workflow['6'].inputs.riflex_freq_index = 4;
  workflow['14'] = { class_type: 'WanVideoSLG', inputs: { blocks: ' 1', start_percent: 0.3, end_percent: 1 } };
  workflow['6'].inputs.slg_args = ['14', 0];
  workflow['15'] = { class_type: 'WanVideoTeaCache', inputs: { rel_l1_thresh: 1, start_step: 0, end_step: -1, cache_device: 'offload_device', use_coefficients: false } };
  workflow['6'].inputs.cache_args = ['15', 0];
  Object.assign(workflow['9'].inputs, { format: 'image/png', save_metadata: false });
  for (const k of ['pix_fmt', 'crf', 'trim_to_audio']) delete workflow['9'].inputs[k];
  const result = await runWorkflow(workflow, { modelDirs, outputDir: newOutputDir() });
  const expected = frameBytes(await direct({ width: 64, height: 64, numFrames: 9,
    contextOptions: { schedule: 'static_standard', frames: 5, stride: 4, overlap: 4, freenoise: true, fuse: 'pyramid' },
    fetaArgs: { weight: 2, startPercent: 0, endPercent: 1 }, riflexFreqIndex: 4, slgArgs: { blocks: [1], startPercent: 0.3, endPercent: 1 },
    cacheArgs: { relL1Thresh: 1, startStep: 0, endStep: -1, cacheDevice: 'offload_device', useCoefficients: false } }));
  const files = result.outputs['9'].files!;
  t.equal(files.length, 9);
  let same = true;
  for (const [i, file] of files.entries()) same &&= (await pngBytes(file)).equals(expected[i]);
  t.ok(same, 'the frames of the library run with the same contextOptions, fetaArgs, slgArgs, cacheArgs and riflexFreqIndex');
  // Settings that could never work are refused by their own node when the workflow is read.
  const stuck = structuredClone(workflow);
  Object.assign(stuck['12'].inputs, { context_frames: 9, context_overlap: 12 });
  t.throws(() => parseWorkflow(stuck), { message: /^node 12 \(WanVideoContextOptions\): context_overlap \(12\) must be smaller than context_frames \(9\) in latent frames \(3 against 3\)/ });
  const never = structuredClone(workflow);
  Object.assign(never['13'].inputs, { start_percent: 0.8, end_percent: 0.5 });
  t.throws(() => parseWorkflow(never), { message: /^node 13 \(WanVideoEnhanceAVideo\): start_percent \(0\.8\) is after end_percent \(0\.5\)/ });
  // MagCache and EasyCache nodes give the sampler their cacheArgs, checked when the workflow is read.
  const magcache = structuredClone(workflow);
  magcache['15'] = { class_type: 'WanVideoMagCache', inputs: { magcache_thresh: 0.1, magcache_K: 2, start_step: 0, end_step: -1, cache_device: 'offload_device' } };
  // (and WanVideoExperimentalArgs its experimentalArgs)
  magcache['16'] = { class_type: 'WanVideoExperimentalArgs', inputs: { video_attention_split_steps: '', cfg_zero_star: true, use_zero_init: false,
    zero_star_steps: 0, use_fresca: true, fresca_scale_low: 1, fresca_scale_high: 1.25, fresca_freq_cutoff: 2, use_tcfg: false, raag_alpha: 1,
    bidirectional_sampling: false, temporal_score_rescaling: true, tsr_k: 0.95, tsr_sigma: 1 } };
  magcache['6'].inputs.experimental_args = ['16', 0];
  const magResult = await runWorkflow(magcache, { modelDirs, outputDir: newOutputDir() });
  const magExpected = frameBytes(await direct({ width: 64, height: 64, numFrames: 9,
    contextOptions: { schedule: 'static_standard', frames: 5, stride: 4, overlap: 4, freenoise: true, fuse: 'pyramid' },
    fetaArgs: { weight: 2, startPercent: 0, endPercent: 1 }, riflexFreqIndex: 4, slgArgs: { blocks: [1], startPercent: 0.3, endPercent: 1 },
    cacheArgs: { cacheType: 'MagCache', magcacheThresh: 0.1, magcacheK: 2, startStep: 0, endStep: -1, cacheDevice: 'offload_device' },
    experimentalArgs: { cfgZeroStar: true, useFresca: true, frescaFreqCutoff: 2, raagAlpha: 1, temporalScoreRescaling: true } }));
  let magSame = true;
  for (const [i, file] of magResult.outputs['9'].files!.entries()) magSame &&= (await pngBytes(file)).equals(magExpected[i]);
  t.ok(magSame, 'WanVideoMagCache and WanVideoExperimentalArgs: the frames of the library run with their cacheArgs and experimentalArgs');
  const bidirectional = structuredClone(magcache);
  bidirectional['16'].inputs.bidirectional_sampling = true;
  t.throws(() => parseWorkflow(bidirectional), { message: /^node 16 \(WanVideoExperimentalArgs\) input bidirectional_sampling: bidirectional_sampling is not implemented yet in wan-native: set it to false/ });
  t.ok(!magExpected.every((f, i) => f.equals(expected[i])), 'which differ from TeaCache\'s');
  const easy = structuredClone(workflow);
  easy['15'] = { class_type: 'WanVideoEasyCache', inputs: { easycache_thresh: 0.015, start_step: 10, end_step: -1, cache_device: 'main_device' } };
  t.doesNotThrow(() => parseWorkflow(easy), 'WanVideoEasyCache with the wrapper\'s defaults');
  easy['15'].inputs.easycache_thresh = 1.5;
  t.throws(() => parseWorkflow(easy), { message: /^node 15 \(WanVideoEasyCache\) input easycache_thresh: / });
  const still = structuredClone(workflow);
  still['6'].inputs.shift = 0;
  t.throws(() => parseWorkflow(still), { message: /^node 6 \(WanVideoSampler\) input shift: expected a shift above 0/ });
});

t.test('WanVideoSamplerv2 with WanVideoSchedulerv2 and WanVideoSamplerExtraArgs runs what WanVideoSampler runs', { skip }, async (t) => {
  const v1 = api();
  v1['6'].inputs.start_step = 1;
  v1['12'] = { class_type: 'WanVideoEnhanceAVideo', inputs: { weight: 2, start_percent: 0, end_percent: 1 } };
  v1['6'].inputs.feta_args = ['12', 0];
  Object.assign(v1['9'].inputs, { format: 'image/png', save_metadata: false });
  for (const k of ['pix_fmt', 'crf', 'trim_to_audio']) delete v1['9'].inputs[k];
  const v2 = structuredClone(v1);
  const { model, image_embeds, text_embeds, cfg, seed, force_offload, scheduler, steps, shift, start_step, end_step } = v1['6'].inputs;
  v2['20'] = { class_type: 'WanVideoSchedulerv2', inputs: { scheduler, steps, shift, start_step, end_step } };
  v2['21'] = { class_type: 'WanVideoSamplerExtraArgs', inputs: { riflex_freq_index: 0, rope_function: 'comfy', feta_args: ['12', 0] } };
  v2['6'] = { class_type: 'WanVideoSamplerv2', inputs: { model, image_embeds, text_embeds, cfg, seed, force_offload,
    scheduler: ['20', 0], extra_args: ['21', 0] } };
  const files = async (w: object) => (await runWorkflow(w, { modelDirs, outputDir: newOutputDir() })).outputs['9'].files!;
  const [one, two] = [await files(v1), await files(v2)];
  t.equal(two.length, one.length);
  let same = one.length > 0;
  for (const [i, file] of two.entries()) same &&= (await pngBytes(file)).equals(await pngBytes(one[i]));
  t.ok(same, `the same ${one.length} frames as WanVideoSampler with the same schedule (from step 1) and feta_args`);
  // enhance_hf: the schedule's low-noise steps replaced by a uniform tail, as the library's enhanceHf.
  const hf = structuredClone(v2);
  Object.assign(hf['20'].inputs, { enhance_hf: true, start_step: 0, steps: 6 });
  delete hf['12']; delete hf['21'];
  delete hf['6'].inputs.extra_args;
  const hfFiles = await files(hf);
  const hfExpected = frameBytes(await direct({ width: 64, height: 64, numFrames: 5, steps: 6, enhanceHf: true }));
  let hfSame = hfFiles.length === hfExpected.length;
  for (const [i, file] of hfFiles.entries()) hfSame &&= (await pngBytes(file)).equals(hfExpected[i]);
  t.ok(hfSame, 'enhance_hf: the frames of the library run with enhanceHf');
});

t.test('WanVideoLoopArgs: the sampler rolls the latent, and WanVideoDecode decodes the result looped', { skip }, async (t) => {
  const workflow = api();
  workflow['5'].inputs.num_frames = 13;  // 4 latent frames
  workflow['12'] = { class_type: 'WanVideoLoopArgs', inputs: { shift_skip: 2, start_percent: 0, end_percent: 1 } };
  workflow['6'].inputs.loop_args = ['12', 0];
  Object.assign(workflow['9'].inputs, { format: 'image/png', save_metadata: false });
  for (const k of ['pix_fmt', 'crf', 'trim_to_audio']) delete workflow['9'].inputs[k];
  const files = (await runWorkflow(workflow, { modelDirs, outputDir: newOutputDir() })).outputs['9'].files!;
  t.equal(files.length, 16, '4 frames per latent frame: 16');
  const expected = frameBytes(await direct({ width: 64, height: 64, numFrames: 13, loopArgs: { shiftSkip: 2, startPercent: 0, endPercent: 1 } }));
  let same = true;
  for (const [i, file] of files.entries()) same &&= (await pngBytes(file)).equals(expected[i]);
  t.ok(same, 'the frames of the library run: Sampler with loopArgs, Vae.decode with looped');
});

t.test('WanVideoFreeInitArgs: the sampler runs FreeInit, its cutoffs applied', { skip }, async (t) => {
  const workflow = api();
  workflow['12'] = { class_type: 'WanVideoFreeInitArgs',
    inputs: { freeinit_num_iters: 2, freeinit_method: 'butterworth', freeinit_n: 2, freeinit_d_s: 0.5, freeinit_d_t: 0.25 } };
  workflow['6'].inputs.freeinit_args = ['12', 0];
  Object.assign(workflow['9'].inputs, { format: 'image/png', save_metadata: false });
  for (const k of ['pix_fmt', 'crf', 'trim_to_audio']) delete workflow['9'].inputs[k];
  const files = (await runWorkflow(workflow, { modelDirs, outputDir: newOutputDir() })).outputs['9'].files!;
  const expected = frameBytes(await direct({ width: 64, height: 64, numFrames: 5,
    freeinitArgs: { freeinitNumIters: 2, freeinitMethod: 'butterworth', freeinitN: 2, freeinitDS: 0.5, freeinitDT: 0.25 } }));
  let same = files.length === expected.length;
  for (const [i, file] of files.entries()) same &&= (await pngBytes(file)).equals(expected[i]);
  t.ok(same, 'the frames of the library run with those freeinitArgs');
  const plain = frameBytes(await directT2v());
  t.ok(expected.some((frame, i) => !frame.equals(plain[i])), 'which are not the frames of one run');
  workflow['12'].inputs.freeinit_method = 'none';
  await rejectsWith(t, runWorkflow(workflow, { modelDirs, outputDir: newOutputDir() }), 'WAN_INVALID_OPTION',
    /^node 12 \(WanVideoFreeInitArgs\) input freeinit_method: 'none' is no filter .*disconnect freeinit_args/);
});

t.test('video-to-video: VHS_LoadVideo, ImageResizeKJ and WanVideoEncode feed the sampler, their sizes and count linked into the empty embeds', { skip }, async (t) => {
  // A lossless 10-frame 80 x 48 clip of ramps.
  const clipDir = path.join(root, 'clips');
  fs.mkdirSync(clipDir, { recursive: true });
  const [W, H, F] = [80, 48, 10], raw = Buffer.alloc(W * H * 3 * F);
  for (let i = 0; i < raw.length; i++) raw[i] = (i * 29 + Math.floor(i / (W * H * 3)) * 13) % 256;
  execFileSync('ffmpeg', ['-v', 'error', '-y', '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-s', `${W}x${H}`, '-r', '16', '-i', '-',
    '-c:v', 'ffv1', '-pix_fmt', 'gbrp', path.join(clipDir, 'clip.mkv')], { input: raw });
  const workflow = api();
  workflow['20'] = { class_type: 'VHS_LoadVideo', inputs: { video: 'clip.mkv', force_rate: 0, custom_width: 0, custom_height: 0,
    frame_load_cap: 0, skip_first_frames: 0, select_every_nth: 1, format: 'Wan' } };
  workflow['21'] = { class_type: 'ImageResizeKJ', inputs: { image: ['20', 0], width: 96, height: 64, upscale_method: 'lanczos',
    keep_proportion: false, divisible_by: 16, crop: 'center' } };
  workflow['22'] = { class_type: 'WanVideoEncode', inputs: { vae: ['7', 0], image: ['21', 0], enable_vae_tiling: false,
    tile_x: 272, tile_y: 272, tile_stride_x: 144, tile_stride_y: 128, noise_aug_strength: 0, latent_strength: 1 } };
  Object.assign(workflow['5'].inputs, { width: ['21', 1], height: ['21', 2], num_frames: ['20', 1] });
  Object.assign(workflow['6'].inputs, { samples: ['22', 0], denoise_strength: 0.5 });
  Object.assign(workflow['9'].inputs, { format: 'image/png', save_metadata: false });
  for (const k of ['pix_fmt', 'crf', 'trim_to_audio']) delete workflow['9'].inputs[k];
  const files = (await runWorkflow(workflow, { modelDirs: [...modelDirs, clipDir], outputDir: newOutputDir() })).outputs['9'].files!;
  t.equal(files.length, 9, 'the clip\'s 10 frames cut to 9 by the Wan format, linked into num_frames');

  // The library: the same frames, resized as ComfyUI's common_upscale, encoded, sampled from 0.5.
  const { frames } = await loadVideo(path.join(clipDir, 'clip.mkv'));
  const resized = resizeImage(frames, 96, 64, 'lanczos', 'center');
  const vae = await Vae.load(path.join(weightsDir, 'tiny_vae.f32.safetensors'));
  const samples = await vae.encode(resized);
  vae.dispose();
  const expected = frameBytes(await direct({ width: 96, height: 64, numFrames: 9, samples, denoiseStrength: 0.5 }));
  let same = files.length === expected.length;
  for (const [i, file] of files.entries()) same &&= (await pngBytes(file)).equals(expected[i]);
  t.ok(same, 'the frames of the library run: loadVideo, resizeImage, Vae.encode, Sampler with samples and denoiseStrength 0.5');

  // enable_vae_tiling: the encode in tiles, as Vae.encode's (two 64 px columns 32 px apart).
  Object.assign(workflow['22'].inputs, { enable_vae_tiling: true, tile_x: 64, tile_y: 64, tile_stride_x: 32, tile_stride_y: 32 });
  const tiledFiles = (await runWorkflow(workflow, { modelDirs: [...modelDirs, clipDir], outputDir: newOutputDir() })).outputs['9'].files!;
  const vae2 = await Vae.load(path.join(weightsDir, 'tiny_vae.f32.safetensors'));
  const tiledSamples = await vae2.encode(resized, { tiled: true, tileX: 64, tileY: 64, tileStrideX: 32, tileStrideY: 32 });
  vae2.dispose();
  const tiledExpected = frameBytes(await direct({ width: 96, height: 64, numFrames: 9, samples: tiledSamples, denoiseStrength: 0.5 }));
  let tiledSame = tiledFiles.length === tiledExpected.length;
  for (const [i, file] of tiledFiles.entries()) tiledSame &&= (await pngBytes(file)).equals(tiledExpected[i]);
  t.ok(tiledSame, 'enable_vae_tiling: the frames of the library run with the tiled encode');
  t.ok(maxAbsDiff(tiledSamples, samples) > 0, 'which is not the untiled encode');

  // A linked value is checked when the node runs, as the widget's own would have been.
  workflow['5'].inputs.width = ['20', 1];
  await rejectsWith(t, runWorkflow(workflow, { modelDirs: [...modelDirs, clipDir], outputDir: newOutputDir() }), 'WAN_INVALID_OPTION',
    /^node 5 \(WanVideoEmptyEmbeds\) input width \(from node 20\): expected .* but received 9/);
  workflow['5'].inputs.width = ['20', 2];
  await rejectsWith(t, runWorkflow(workflow, { modelDirs: [...modelDirs, clipDir], outputDir: newOutputDir() }), 'WAN_INVALID_OPTION',
    /^node 5 \(WanVideoEmptyEmbeds\) input width: expected an INT but output 2 of node 20 \(VHS_LoadVideo\) is an AUDIO$/);
  workflow['5'].inputs.width = ['2', 0];
  await rejectsWith(t, runWorkflow(workflow, { modelDirs: [...modelDirs, clipDir], outputDir: newOutputDir() }), 'WAN_INVALID_OPTION',
    /input width: expected an INT but output 0 of node 2 \(WanVideoTextEncode\) is a WANVIDEOTEXTEMBEDS/);
});

t.test('ImageResizeKJ and ImageResizeKJv2: the sizes and crops KJNodes computes, resized as common_upscale', { skip }, async (t) => {
  const clipDir = path.join(root, 'resize-clips');
  fs.mkdirSync(clipDir, { recursive: true });
  const [W, H, F] = [80, 48, 5], raw = Buffer.alloc(W * H * 3 * F);
  for (let i = 0; i < raw.length; i++) raw[i] = (i * 53 + Math.floor(i / 240) * 7) % 256;
  execFileSync('ffmpeg', ['-v', 'error', '-y', '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-s', `${W}x${H}`, '-r', '16', '-i', '-',
    '-c:v', 'ffv1', '-pix_fmt', 'gbrp', path.join(clipDir, 'ramp.mkv')], { input: raw });
  const { frames } = await loadVideo(path.join(clipDir, 'ramp.mkv'));
  const cases: [string, Record<string, unknown>, [number, number], ResizeCrop][] = [
    // v2 'crop' at the right: the 48 x 48 square at x = 80 - 48.
    ['ImageResizeKJv2', { width: 48, height: 48, upscale_method: 'lanczos', keep_proportion: 'crop', pad_color: '0, 0, 0',
      crop_position: 'right', divisible_by: 16 }, [48, 48], { x: 32, y: 0, width: 48, height: 48 }],
    // v2 'resize' into 40 x 40: the aspect kept, 40 x 24.
    ['ImageResizeKJv2', { width: 40, height: 40, upscale_method: 'bicubic', keep_proportion: 'resize', pad_color: '0, 0, 0',
      crop_position: 'center', divisible_by: 8 }, [40, 24], 'disabled'],
    // v2 'total_pixels' of 32 x 32 at 5:3: int(sqrt(1024 * 5/3)) x int(sqrt(1024 / (5/3))) = 41 x 24, floored to 40 x 24.
    ['ImageResizeKJv2', { width: 32, height: 32, upscale_method: 'lanczos', keep_proportion: 'total_pixels', pad_color: '0, 0, 0',
      crop_position: 'center', divisible_by: 8 }, [40, 24], 'disabled'],
    // v1 with keep_proportion and a height of 0: round(48 * 56/80) = round(33.6) = 34; 56 x 34 floored to 48 x 32.
    ['ImageResizeKJ', { width: 56, height: 0, upscale_method: 'lanczos', keep_proportion: true, divisible_by: 16 }, [48, 32], 'disabled'],
    // v1's centre crop (common_upscale 'center').
    ['ImageResizeKJ', { width: 32, height: 32, upscale_method: 'lanczos', keep_proportion: false, divisible_by: 2, crop: 'center' }, [32, 32], 'center'],
  ];
  for (const [classType, inputs, [w, h], crop] of cases) {
    const workflow = {
      1: { class_type: 'VHS_LoadVideo', inputs: { video: 'ramp.mkv', force_rate: 0, custom_width: 0, custom_height: 0, frame_load_cap: 0,
        skip_first_frames: 0, select_every_nth: 1, format: 'Wan' } },
      2: { class_type: classType, inputs: { image: ['1', 0], ...inputs } },
      3: { class_type: 'VHS_VideoCombine', inputs: { images: ['2', 0], frame_rate: 8, loop_count: 0, filename_prefix: 'r',
        format: 'image/png', pingpong: false, save_output: true, save_metadata: false } },
    };
    const files = (await runWorkflow(workflow, { modelDirs: [clipDir], outputDir: newOutputDir() })).outputs['3'].files!;
    const expected = frameBytes(resizeImage(frames, w, h, inputs.upscale_method as ResizeMethod, crop));
    let same = files.length === expected.length;
    for (const [i, file] of files.entries()) same &&= (await pngBytes(file)).equals(expected[i]);
    t.ok(same, `${classType} ${JSON.stringify(inputs)}: ${w} x ${h}, ${typeof crop === 'string' ? crop : `cut at (${crop.x}, ${crop.y})`}`);
  }
  const pad = { 1: { class_type: 'LoadImage', inputs: { image: 'x.png' } },
    2: { class_type: 'ImageResizeKJv2', inputs: { image: ['1', 0], width: 64, height: 64, upscale_method: 'lanczos', keep_proportion: 'pad',
      pad_color: '0, 0, 0', crop_position: 'center', divisible_by: 2 } },
    3: { class_type: 'VHS_VideoCombine', inputs: { images: ['2', 0], frame_rate: 8, loop_count: 0, filename_prefix: 'r', format: 'image/png',
      pingpong: false, save_output: true, save_metadata: false } } };
  t.throws(() => parseWorkflow(pad), { code: 'WAN_INVALID_OPTION', message: /node 2 \(ImageResizeKJv2\) input keep_proportion: "pad" is not available yet in wan-native \(available: stretch, resize, crop, total_pixels\)/ });
});

t.test('WanVideoTextEncodeCached loads, encodes and frees the text encoder; WanVideoApplyNAG and WanVideoTextEncodeSingle', { skip }, async (t) => {
  const workflow = api();
  const { positive_prompt, negative_prompt } = workflow['2'].inputs;
  delete workflow['1'];
  workflow['2'] = { class_type: 'WanVideoTextEncodeCached', inputs: { model_name: 'tiny_umt5_enc.f32.safetensors', precision: 'bf16',
    positive_prompt, negative_prompt, quantization: 'disabled', use_disk_cache: false, device: 'gpu', tokenizer: 'spiece.model' } };
  Object.assign(workflow['9'].inputs, { format: 'image/png', save_metadata: false });
  for (const k of ['pix_fmt', 'crf', 'trim_to_audio']) delete workflow['9'].inputs[k];
  const events: string[] = [];
  const files = (await spyDisposals(events, () => runWorkflow(workflow, { modelDirs, outputDir: newOutputDir() }))).outputs['9'].files!;
  const expected = frameBytes(await directT2v());
  let same = files.length === expected.length;
  for (const [i, file] of files.entries()) same &&= (await pngBytes(file)).equals(expected[i]);
  t.ok(same, 'the frames of the loader + TextEncode workflow (the library run)');
  t.equal(events[0], 'dispose TextEncoder', 'the text encoder is freed by the node, before anything else');
  // Its third output, the prompt, is a STRING; an output node's widgets take no link.
  workflow['9'].inputs.filename_prefix = ['2', 2];
  t.throws(() => parseWorkflow(workflow), { code: 'WAN_INVALID_OPTION',
    message: /^node 9 \(VHS_VideoCombine\) input filename_prefix: a link \(to node 2\) is not available yet in wan-native here/ });
  workflow['9'].inputs.filename_prefix = 'wan';

  // NAG: its second output (the negative prompt as a prompt) as WanVideoApplyNAG's NAG prompt.
  workflow['13'] = { class_type: 'WanVideoApplyNAG', inputs: { original_text_embeds: ['2', 0], nag_text_embeds: ['2', 1],
    nag_scale: 4, nag_tau: 1.4, nag_alpha: 0.5, inplace: true } };
  workflow['6'].inputs.text_embeds = ['13', 0];
  const nagFiles = (await runWorkflow(workflow, { modelDirs, outputDir: newOutputDir() })).outputs['9'].files!;
  const nagExpected = frameBytes(await direct({ width: 64, height: 64, numFrames: 5, nagArgs: { nagScale: 4, nagTau: 1.4, nagAlpha: 0.5 } }));
  let nagSame = nagFiles.length === nagExpected.length;
  for (const [i, file] of nagFiles.entries()) nagSame &&= (await pngBytes(file)).equals(nagExpected[i]);
  t.ok(nagSame, 'WanVideoApplyNAG: the frames of the library run with nagArgs (the negative prompt as the NAG prompt)');
  t.ok(nagExpected.some((f, i) => !f.equals(expected[i])), 'which are not the frames without NAG');

  // WanVideoTextEncodeSingle as the NAG prompt's encoder: the same embedding, so the same frames.
  workflow['1'] = { class_type: 'LoadWanVideoT5TextEncoder', inputs: { model_name: 'tiny_umt5_enc.f32.safetensors', precision: 'bf16',
    load_device: 'offload_device', quantization: 'disabled', tokenizer: 'spiece.model' } };
  workflow['14'] = { class_type: 'WanVideoTextEncodeSingle', inputs: { prompt: negative_prompt, t5: ['1', 0], force_offload: true,
    use_disk_cache: false, device: 'gpu' } };
  workflow['13'].inputs.nag_text_embeds = ['14', 0];
  const singleFiles = (await runWorkflow(workflow, { modelDirs, outputDir: newOutputDir() })).outputs['9'].files!;
  let singleSame = singleFiles.length === nagExpected.length;
  for (const [i, file] of singleFiles.entries()) singleSame &&= (await pngBytes(file)).equals(nagExpected[i]);
  t.ok(singleSame, 'WanVideoTextEncodeSingle of the negative prompt as the NAG prompt: the same frames');
});

t.test('ImageConcatMulti: videos side by side as KJNodes joins them', { skip }, async (t) => {
  const clipDir = path.join(root, 'concat-clips');
  fs.mkdirSync(clipDir, { recursive: true });
  const clip = (name: string, W: number, H: number, F: number, seed: number) => {
    const raw = Buffer.alloc(W * H * 3 * F);
    for (let i = 0; i < raw.length; i++) raw[i] = (i * seed + 17) % 251;
    execFileSync('ffmpeg', ['-v', 'error', '-y', '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-s', `${W}x${H}`, '-r', '8', '-i', '-',
      '-c:v', 'ffv1', '-pix_fmt', 'gbrp', path.join(clipDir, name)], { input: raw });
    return raw;
  };
  const a = clip('a.mkv', 32, 16, 5, 7), b = clip('b.mkv', 16, 8, 3, 13);
  const load = (video: string) => ({ class_type: 'VHS_LoadVideo', inputs: { video, force_rate: 0, custom_width: 0, custom_height: 0,
    frame_load_cap: 0, skip_first_frames: 0, select_every_nth: 1, format: 'None' } });
  const workflow = { 1: load('a.mkv'), 2: load('b.mkv'),
    3: { class_type: 'ImageConcatMulti', inputs: { inputcount: 3, image_1: ['1', 0], image_2: ['2', 0], direction: 'right', match_image_size: false } },
    4: { class_type: 'VHS_VideoCombine', inputs: { images: ['3', 0], frame_rate: 8, loop_count: 0, filename_prefix: 'c', format: 'image/png',
      pingpong: false, save_output: true, save_metadata: false } } };
  const files = (await runWorkflow(workflow, { modelDirs: [clipDir], outputDir: newOutputDir() })).outputs['4'].files!;
  t.equal(files.length, 5, 'as many frames as the longer input');
  // Each output frame: a (32 x 16) at x 0, b (16 x 8) at x 32 centred (y 4), its last frame
  // repeated; image_3 unlinked: black of a's size at x 48. 80 x 16 in all.
  let same = true;
  for (const [f, file] of files.entries()) {
    const png = await pngBytes(file);
    if (png.length !== 80 * 16 * 3) { same = false; break; }
    for (let y = 0; y < 16; y++)
      for (let x = 0; x < 80; x++)
        for (let ch = 0; ch < 3; ch++) {
          let want = 0;
          if (x < 32) want = a[((f * 16 + y) * 32 + x) * 3 + ch];
          else if (x < 48 && y >= 4 && y < 12) want = b[((Math.min(f, 2) * 8 + y - 4) * 16 + x - 32) * 3 + ch];
          if (png[(y * 80 + x) * 3 + ch] !== want) same = false;
        }
  }
  t.ok(same, 'every pixel of every frame where KJNodes puts it');
  Object.assign(workflow[3].inputs, { inputcount: 2, match_image_size: true });
  await rejectsWith(t, runWorkflow(workflow, { modelDirs: [clipDir], outputDir: newOutputDir() }), 'WAN_INVALID_OPTION',
    /^node 3 \(ImageConcatMulti\): image_2: 16 x 8 would be resized to image_1's height \(match_image_size\), which is not available yet/);
});

t.test('LoadImage reads from the input folders', { skip }, async (t) => {
  const inputDir = path.join(root, 'input');
  fs.mkdirSync(path.join(inputDir, 'stills'), { recursive: true });
  const rgb = Buffer.alloc(16 * 8 * 3);
  for (let i = 0; i < rgb.length; i++) rgb[i] = (i * 37) % 256;
  await sharp(rgb, { raw: { width: 16, height: 8, channels: 3 } }).png().toFile(path.join(inputDir, 'stills', 'frame.png'));
  const workflow = {
    1: { class_type: 'LoadImage', inputs: { image: 'frame.png [input]' } },
    2: { class_type: 'VHS_VideoCombine', inputs: { images: ['1', 0], frame_rate: 8, loop_count: 0, filename_prefix: 'still',
      format: 'image/png', pingpong: false, save_output: true, save_metadata: false } },
  };
  const result = await runWorkflow(workflow, { modelDirs: { input: [inputDir] }, outputDir: newOutputDir() });
  const files = result.outputs['2'].files!;
  t.same(files.map((f) => path.basename(f)), ['still_00001.png']);
  t.ok((await pngBytes(files[0])).equals(rgb), 'the image, found by its name below the input folder, written back unchanged');
});

t.test('a text encoder without a tokenizer is refused by its loader, before the other models load', async (t) => {
  const started: string[] = [];
  const w = api();
  delete w['1'].inputs.tokenizer;  // the tiny umT5 carries none, and none lies beside it
  await rejectsWith(t, runWorkflow(w, { modelDirs, outputDir: newOutputDir(), onNodeStart: (id) => started.push(id) }), 'WAN_BAD_CHECKPOINT',
    /^node 1 \(LoadWanVideoT5TextEncoder\): tiny_umt5_enc\.f32\.safetensors carries no tokenizer .*give the node's tokenizer input umT5's spiece\.model/);
  t.same(started, ['1'], 'only the loader ran');
});

t.test('validation errors name the node and the input, and nothing runs', async (t) => {
  const started: string[] = [];
  const o: RunWorkflowOptions = { modelDirs, outputDir: newOutputDir(), onNodeStart: (id) => started.push(id) };
  const patched = (patch: (w: any) => void) => { const w = api(); patch(w); return w; };

  await rejectsWith(t, runWorkflow(patched((w) => { w['11'] = { class_type: 'WanVideoVACEEncode', inputs: {} }; }), o),
    'WAN_INVALID_OPTION', /^node 11 \(WanVideoVACEEncode\): unknown node type "WanVideoVACEEncode" \(wan-native runs WanVideoModelLoader, /);
  await rejectsWith(t, runWorkflow(patched((w) => { w['6'].inputs.samples = ['8', 0]; }), o),
    'WAN_INVALID_OPTION', /^the workflow has a cycle: node 6 \(WanVideoSampler\) -> node 8 \(WanVideoDecode\) -> node 6 \(WanVideoSampler\)$/);
  await rejectsWith(t, runWorkflow(patched((w) => { w['6'].inputs.model = ['99', 0]; }), o),
    'WAN_INVALID_OPTION', /^node 6 \(WanVideoSampler\) input model: links to node 99, which does not exist$/);
  await rejectsWith(t, runWorkflow(patched((w) => { w['6'].inputs.model = ['5', 0]; }), o),
    'WAN_INVALID_OPTION', /^node 6 \(WanVideoSampler\) input model: expected a WANVIDEOMODEL but output 0 of node 5 \(WanVideoEmptyEmbeds\) is a WANVIDIMAGE_EMBEDS$/);
  await rejectsWith(t, runWorkflow(patched((w) => { w['6'].inputs.model = ['4', 1]; }), o),
    'WAN_INVALID_OPTION', /input model: links to output 1 of node 4 \(WanVideoModelLoader\), which has 1 output/);
  await rejectsWith(t, runWorkflow(patched((w) => { w['8'].inputs.samples = ['6', 1]; }), o),
    'WAN_INVALID_OPTION', /node 8 \(WanVideoDecode\) input samples: denoised_samples .* is not available yet/);
  await rejectsWith(t, runWorkflow(patched((w) => { w['6'].inputs.steps = 0; }), o),
    'WAN_INVALID_OPTION', /^node 6 \(WanVideoSampler\) input steps: expected an integer between 1 and 10000 but received 0 of type number$/);
  await rejectsWith(t, runWorkflow(patched((w) => { w['6'].inputs.cfg = 31; }), o),
    'WAN_INVALID_OPTION', /^node 6 \(WanVideoSampler\) input cfg: expected a number between 0 and 30 but received 31 of type number$/);
  await rejectsWith(t, runWorkflow(patched((w) => { w['6'].inputs.seed = '42'; }), o),
    'WAN_INVALID_OPTION', /^node 6 \(WanVideoSampler\) input seed: expected an integer \(or a BigInt\) but received "42" of type string$/);
  await rejectsWith(t, runWorkflow(patched((w) => { w['6'].inputs.scheduler = 'deis'; }), o),
    'WAN_INVALID_OPTION', /^node 6 \(WanVideoSampler\) input scheduler: "deis" is not available yet in wan-native \(available: unipc, unipc\/beta, dpm\+\+, /);
  await rejectsWith(t, runWorkflow(patched((w) => { w['6'].inputs.scheduler = 'ddim'; }), o),
    'WAN_INVALID_OPTION', /input scheduler: expected one of unipc, unipc\/beta, .* but received "ddim" of type string$/);
  await rejectsWith(t, runWorkflow(patched((w) => { delete w['6'].inputs.steps; }), o),
    'WAN_INVALID_OPTION', /^node 6 \(WanVideoSampler\): missing required input steps$/);
  await rejectsWith(t, runWorkflow(patched((w) => { delete w['6'].inputs.image_embeds; }), o),
    'WAN_INVALID_OPTION', /^node 6 \(WanVideoSampler\): missing required input image_embeds$/);
  await rejectsWith(t, runWorkflow(patched((w) => { w['6'].inputs.stepz = 3; }), o),
    'WAN_INVALID_OPTION', /^node 6 \(WanVideoSampler\): unknown input stepz \(the node's inputs: model, image_embeds, steps, /);
  await rejectsWith(t, runWorkflow(patched((w) => { w['6'].inputs.steps = ['5', 0]; }), o),
    'WAN_INVALID_OPTION', /input steps: expected an INT but output 0 of node 5 \(WanVideoEmptyEmbeds\) is a WANVIDIMAGE_EMBEDS/);
  await rejectsWith(t, runWorkflow(patched((w) => { w['6'].inputs.model = 'model.safetensors'; }), o),
    'WAN_INVALID_OPTION', /input model: expected a link \[node id, output index\] to a WANVIDEOMODEL output but received "model.safetensors"/);
  await rejectsWith(t, runWorkflow(patched((w) => { delete w['9']; }), o),
    'WAN_INVALID_OPTION', /^the workflow has no output node \(VHS_VideoCombine\): nothing would be made$/);
  await rejectsWith(t, runWorkflow(patched((w) => { delete w['6'].inputs.text_embeds; }), o),
    'WAN_INVALID_OPTION', /^node 6 \(WanVideoSampler\): text_embeds is not connected/);

  // What the library cannot do yet: refused by name, unless the value is the no-op one.
  await rejectsWith(t, runWorkflow(patched((w) => { w['4'].inputs.quantization = 'fp8_e5m2_scaled'; }), o),
    'WAN_INVALID_OPTION', /^node 4 \(WanVideoModelLoader\) input quantization: "fp8_e5m2_scaled" is not available yet in wan-native \(available: disabled, fp8_e4m3fn, /);
  await rejectsWith(t, runWorkflow(patched((w) => { w['1'].inputs.quantization = 'fp8_e4m3fn'; }), o),
    'WAN_INVALID_OPTION', /^node 1 \(LoadWanVideoT5TextEncoder\) input quantization: quantization 'fp8_e4m3fn' is not available yet/);
  await rejectsWith(t, runWorkflow(patched((w) => { w['4'].inputs.attention_mode = 'sageattn_3'; }), o),
    'WAN_INVALID_OPTION', /input attention_mode: "sageattn_3" is not available yet in wan-native \(available: sdpa, flash_attn_2, flash_attn_3, sageattn\)/);
  await rejectsWith(t, runWorkflow(patched((w) => { w['3'].inputs.vace_blocks_to_swap = 5; }), o),
    'WAN_INVALID_OPTION', /^node 3 \(WanVideoBlockSwap\) input vace_blocks_to_swap: VACE block swap \(vace_blocks_to_swap\) needs a VACE model, .*: set it to 0$/);
  await rejectsWith(t, runWorkflow(patched((w) => {
    w['11'] = { class_type: 'WanVideoLoraSelect', inputs: { lora: 'lightx2v.safetensors', strength: 1 } };
    w['12'] = { class_type: 'WanVideoLoraSelect', inputs: { lora: 'style.safetensors', strength: 0.5, merge_loras: false, prev_lora: ['11', 0] } };
    w['4'].inputs.lora = ['12', 0];
  }), o), 'WAN_INVALID_OPTION', /^node 4 \(WanVideoModelLoader\) input lora: its LoRAs mix merge_loras true \(node 11 \(WanVideoLoraSelect\)\) and false \(node 12 \(WanVideoLoraSelect\)\), and wan-native merges all of one model's LoRAs or none: give them the same merge_loras$/);
  // A per-step strength list: as a literal (ComfyUI would refuse it too) or on a link (no node here makes one).
  await rejectsWith(t, runWorkflow(patched((w) => {
    w['11'] = { class_type: 'WanVideoLoraSelect', inputs: { lora: 'lightx2v.safetensors', strength: [1, 0.9, 0.8] } };
    w['4'].inputs.lora = ['11', 0];
  }), o), 'WAN_INVALID_OPTION', /^node 11 \(WanVideoLoraSelect\) input strength: expected a number but received /);
  await rejectsWith(t, runWorkflow(patched((w) => {
    w['11'] = { class_type: 'WanVideoLoraSelect', inputs: { lora: 'lightx2v.safetensors', strength: ['5', 0] } };
    w['4'].inputs.lora = ['11', 0];
  }), o), 'WAN_INVALID_OPTION', /^node 11 \(WanVideoLoraSelect\) input strength: expected a FLOAT but output 0 of node 5 \(WanVideoEmptyEmbeds\) is a WANVIDIMAGE_EMBEDS/);
  await rejectsWith(t, runWorkflow(patched((w) => {
    w['11'] = { class_type: 'WanVideoLoraSelect', inputs: { lora: 'lightx2v.safetensors', strength: 1001 } };
    w['4'].inputs.lora = ['11', 0];
  }), o), 'WAN_INVALID_OPTION', /^node 11 \(WanVideoLoraSelect\) input strength: expected a number between -1000 and 1000 but received 1001/);
  await rejectsWith(t, runWorkflow(patched((w) => {
    w['11'] = { class_type: 'WanVideoLoraBlockEdit', inputs: { 'blocks.0.': 'yes' } };
    w['12'] = { class_type: 'WanVideoLoraSelect', inputs: { lora: 'lightx2v.safetensors', strength: 1, blocks: ['11', 0] } };
    w['4'].inputs.lora = ['12', 0];
  }), o), 'WAN_INVALID_OPTION', /^node 11 \(WanVideoLoraBlockEdit\) input blocks\.0\.: expected a boolean but received "yes"/);
  await rejectsWith(t, runWorkflow(patched((w) => { w['9'].inputs.format = 'video/ProRes'; }), o),
    'WAN_INVALID_OPTION', /^node 9 \(VHS_VideoCombine\) input format: "video\/ProRes" is not available yet in wan-native \(available: image\/gif, /);
  await rejectsWith(t, runWorkflow(patched((w) => { w['9'].inputs.pix_fmt = 'yuv444p'; }), o),
    'WAN_INVALID_OPTION', /^node 9 \(VHS_VideoCombine\): expected one of yuv420p, yuv420p10le for pix_fmt \(video\/h264-mp4\) but received "yuv444p"$/);
  await rejectsWith(t, runWorkflow(patched((w) => { w['9'].inputs.format = 'image/gif'; }), o),
    'WAN_INVALID_OPTION', /^node 9 \(VHS_VideoCombine\): pix_fmt applies to video\/h264-mp4, video\/h265-mp4, video\/webm only, not to format image\/gif$/);
  await rejectsWith(t, runWorkflow(patched((w) => {
    w['11'] = { class_type: 'WanVideoSLG', inputs: { blocks: '9, ten', start_percent: 0.1, end_percent: 1 } };
    w['6'].inputs.slg_args = ['11', 0];
  }), o), 'WAN_INVALID_OPTION', /^node 11 \(WanVideoSLG\): blocks: expected block numbers separated by commas, such as "9,10", but received "9, ten"$/);
  // What the output needs is checked before the first node runs, not after the sampler.
  await rejectsWith(t, runWorkflow(patched((w) => { w['9'].inputs.filename_prefix = '../wan'; }), o),
    'WAN_INVALID_OPTION', /^node 9 \(VHS_VideoCombine\): Expected a filenamePrefix inside the output folder/);
  const aFile = path.join(o.outputDir!, 'a-file');
  fs.mkdirSync(o.outputDir!, { recursive: true });
  fs.writeFileSync(aFile, '');
  await rejectsWith(t, runWorkflow(api(), { ...o, outputDir: aFile }),
    'WAN_IO', /^node 9 \(VHS_VideoCombine\): could not create the output folder .*a-file\/wan: ENOTDIR/);
  const ffmpeg = process.env.WAN_FFMPEG;
  process.env.WAN_FFMPEG = '/nonexistent/ffmpeg';
  try {
    await rejectsWith(t, runWorkflow(api(), o), 'WAN_NATIVE_LOAD', /^node 9 \(VHS_VideoCombine\): ffmpeg is needed to write videos/);
  } finally {
    if (ffmpeg === undefined) delete process.env.WAN_FFMPEG; else process.env.WAN_FFMPEG = ffmpeg;
  }
  t.same(started, [], 'no node ran');
});

t.test('a LoRA at strength 0 and block swap at 0 are no-ops: the workflow is accepted', async (t) => {
  const w = api();
  w['11'] = { class_type: 'WanVideoLoraSelect', inputs: { lora: 'not-even-there.safetensors', strength: 0 } };
  w['4'].inputs.lora = ['11', 0];
  const graph = parseWorkflow(w);
  t.ok(graph.order.includes('11'), 'the LoRA node is part of the run');
  t.ok(graph.order.indexOf('11') < graph.order.indexOf('4'), 'before the model loader');
});

// A rank-4 LoRA for the tiny DiT (dim 64, ffn 128) with ComfyUI keys: block 0's self-attention
// q and block 1's ffn.0, large enough to show in 8-bit frames. In a loras folder, one level down.
const lorasDir = path.join(root, 'loras');
async function writeLora(name: string, seed: number): Promise<string> {
  const rank = 4;
  let state = seed;
  const values = (n: number) => Float32Array.from({ length: n }, () => {
    state = (state * 1103515245 + 12345) % 2147483648;
    return (state / 2147483648 - 0.5) * 0.6;
  });
  const tensors: Record<string, Tensor> = {};
  for (const [module, out, inp] of [['blocks.0.self_attn.q', 64, 64], ['blocks.1.ffn.0', 128, 64]] as const) {
    tensors[`diffusion_model.${module}.lora_A.weight`] = Tensor.fromTypedArray(values(rank * inp), [rank, inp]);
    tensors[`diffusion_model.${module}.lora_B.weight`] = Tensor.fromTypedArray(values(out * rank), [out, rank]);
  }
  const file = path.join(lorasDir, 'wan', name);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  await saveSafetensors(file, tensors);
  return file;
}
const perKind = () => ({ diffusion_models: [weightsDir], text_encoders: [weightsDir, tokenizerDir], vae: [weightsDir], loras: [lorasDir] });

// The fixture as PNG frames, without metadata, patched; the frames' pixels.
async function pngRun(patch: (w: any) => void, o: RunWorkflowOptions = {}): Promise<Buffer[]> {
  const w = api();
  Object.assign(w['9'].inputs, { format: 'image/png', save_metadata: false });
  for (const k of ['pix_fmt', 'crf', 'trim_to_audio']) delete w['9'].inputs[k];
  patch(w);
  const result = await runWorkflow(w, { modelDirs: perKind(), outputDir: newOutputDir(), ...o });
  return Promise.all(result.outputs['9'].files!.map(pngBytes));
}
const sameFrames = (a: Buffer[], b: Buffer[]) => a.length === b.length && a.every((f, i) => f.equals(b[i]));

t.test('a LoRA (strength 0.7) and block swap (1 block, prefetch 1): the frames of the library with the same loras and blockSwap', { skip }, async (t) => {
  const file = await writeLora('style.safetensors', 11);
  const frames = await pngRun((w) => {
    w['11'] = { class_type: 'WanVideoLoraSelect', inputs: { lora: 'style.safetensors', strength: 0.7, low_mem_load: false, merge_loras: true } };
    w['4'].inputs.lora = ['11', 0];
    Object.assign(w['3'].inputs, { blocks_to_swap: 1, prefetch_blocks: 1, offload_img_emb: true, use_non_blocking: true });
  });
  const expected = frameBytes(await direct({ width: 64, height: 64, numFrames: 5,
    loras: [{ path: file, strength: 0.7 }], blockSwap: { blocksToSwap: 1, prefetchBlocks: 1 } }));
  t.equal(frames.length, 5);
  t.ok(sameFrames(frames, expected), 'identical frames');
  t.notOk(sameFrames(frames, frameBytes(await directT2v())), 'and not those without the LoRA');
});

t.test('chained LoraSelect nodes: merged in chain order, with the block selection; blocks_to_swap clamped to the model', { skip }, async (t) => {
  const first = await writeLora('first.safetensors', 21), second = await writeLora('second.safetensors', 37);
  const seen: { loras: unknown; blockSwap: unknown; config: unknown }[] = [];
  const load = WanModel.load;
  WanModel.load = async (file, options) => {
    const model = await load(file, options);
    seen.push({ loras: options?.loras, blockSwap: options?.blockSwap, config: { blocksToSwap: model.config.blocksToSwap, prefetchBlocks: model.config.prefetchBlocks } });
    return model;
  };
  const blockEdit = { ...Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`blocks.${i}.`, i !== 1])), layer_filter: 'ffn, ' };
  let frames: Buffer[];
  try {
    frames = await pngRun((w) => {
      w['11'] = { class_type: 'WanVideoLoraSelect', inputs: { lora: 'wan/first.safetensors', strength: 0.5 } };
      w['12'] = { class_type: 'WanVideoLoraBlockEdit', inputs: blockEdit };
      w['13'] = { class_type: 'WanVideoLoraSelect', inputs: { lora: 'second.safetensors', strength: -0.30004, prev_lora: ['11', 0], blocks: ['12', 0] } };
      w['14'] = { class_type: 'WanVideoLoraSelect', inputs: { lora: 'not-even-there.safetensors', strength: 0, prev_lora: ['13', 0] } };
      w['4'].inputs.lora = ['14', 0];
      Object.assign(w['3'].inputs, { blocks_to_swap: 20, prefetch_blocks: 1 });
    });
  } finally {
    WanModel.load = load;
  }
  const loras = [
    { path: first, strength: 0.5 },
    // strength rounded to 4 decimals, as the wrapper; every block but 1; the filter's empty entry dropped.
    { path: second, strength: -0.3, blocks: [0, ...Array.from({ length: 38 }, (_, i) => i + 2)], layerFilter: ['ffn'] },
  ];
  t.same(seen.map((s) => s.loras), [loras], 'the chain in order; the strength-0 LoRA skipped (its file never looked up)');
  t.same(seen.map((s) => s.config), [{ blocksToSwap: 2, prefetchBlocks: 1 }], 'blocks_to_swap 20 swaps the 2 blocks the tiny model has');
  const expected = frameBytes(await direct({ width: 64, height: 64, numFrames: 5, loras, blockSwap: { blocksToSwap: 2, prefetchBlocks: 1 } }));
  t.ok(sameFrames(frames, expected), 'identical frames to the library with those loras');
  // The second LoRA touches block 0's q (kept) and block 1's ffn.0 (block 1 off, and ffn filtered): first alone
  // would differ, since second's block 0 update applies.
  t.notOk(sameFrames(frames, frameBytes(await direct({ width: 64, height: 64, numFrames: 5, loras: [loras[0]] }))), 'the second LoRA counts');
});

t.test('seeds: BigInt up to 2^64-1; a JSON number past 2^53 is refused; model_to_offload orders nothing', async (t) => {
  const w = api();
  w['6'].inputs.seed = (1n << 64n) - 1n;
  t.equal(parseWorkflow(w).nodes.get('6')!.values.seed, (1n << 64n) - 1n);
  w['6'].inputs.seed = 1n << 64n;
  t.throws(() => parseWorkflow(w), { message: /input seed: expected an integer between 0 and 2\^64-1 but received 18446744073709551616/ });
  w['6'].inputs.seed = 2 ** 60;
  t.throws(() => parseWorkflow(w), { message: /input seed: 1152921504606847000 is above 2\^53-1, where JSON numbers lose digits; pass the workflow as an object with a BigInt seed$/ });
  const offload = api();
  offload['2'].inputs.model_to_offload = ['4', 0];
  t.same(parseWorkflow(offload).order, parseWorkflow(api()).order, 'the model is not loaded before the text encoder for it');
  offload['2'].inputs.model_to_offload = ['5', 0];
  t.throws(() => parseWorkflow(offload), { message: /node 2 \(WanVideoTextEncode\) input model_to_offload: expected a WANVIDEOMODEL but output 0 of node 5/ });
});

t.test('an I2V workflow: validated, and each model loaded just before its first use', async (t) => {
  const w = {
    1: { class_type: 'LoadImage', inputs: { image: 'start.png' } },
    2: { class_type: 'CLIPVisionLoader', inputs: { clip_name: 'clip_vision_h.safetensors' } },
    3: { class_type: 'WanVideoClipVisionEncode', inputs: { clip_vision: ['2', 0], image_1: ['1', 0], strength_1: 1, strength_2: 1,
      crop: 'center', combine_embeds: 'average', force_offload: true } },
    4: { class_type: 'WanVideoVAELoader', inputs: { model_name: 'wan_2.1_vae.safetensors' } },
    5: { class_type: 'WanVideoImageToVideoEncode', inputs: { width: 832, height: 480, num_frames: 81, noise_aug_strength: 0,
      start_latent_strength: 1, end_latent_strength: 1, force_offload: true, vae: ['4', 0], clip_embeds: ['3', 0], start_image: ['1', 0] } },
    6: { class_type: 'LoadWanVideoT5TextEncoder', inputs: { model_name: 'umt5-xxl-enc-bf16.safetensors', precision: 'bf16' } },
    7: { class_type: 'WanVideoTextEncode', inputs: { positive_prompt: 'a cat', negative_prompt: '', t5: ['6', 0] } },
    8: { class_type: 'WanVideoModelLoader', inputs: { model: 'wan2.1_i2v_480p_14B_bf16.safetensors', base_precision: 'bf16',
      quantization: 'disabled', load_device: 'offload_device' } },
    9: { class_type: 'WanVideoSampler', inputs: { model: ['8', 0], image_embeds: ['5', 0], text_embeds: ['7', 0], steps: 30, cfg: 6,
      shift: 5, seed: 0, force_offload: true, scheduler: 'unipc', riflex_freq_index: 0 } },
    10: { class_type: 'WanVideoDecode', inputs: { vae: ['4', 0], samples: ['9', 0], enable_vae_tiling: false, tile_x: 272, tile_y: 272,
      tile_stride_x: 144, tile_stride_y: 128 } },
    11: { class_type: 'VHS_VideoCombine', inputs: { images: ['10', 0], frame_rate: 16, loop_count: 0, filename_prefix: 'i2v',
      format: 'video/h264-mp4', pingpong: false, save_output: true } },
  };
  t.same(parseWorkflow(w).order, ['1', '2', '3', '4', '5', '6', '7', '8', '9', '10', '11']);
  const noVae: any = structuredClone(w);
  delete noVae[5].inputs.vae;
  t.throws(() => parseWorkflow(noVae), { message: /^node 5 \(WanVideoImageToVideoEncode\): vae is not connected: encoding start_image \/ end_image needs one$/ });
  const flf: any = structuredClone(w);
  Object.assign(flf[5].inputs, { end_image: ['1', 0], fun_or_fl2v_model: false });
  t.doesNotThrow(() => parseWorkflow(flf), 'start and end images with fun_or_fl2v_model false: the end image as an extra latent frame');
  const tiled: any = structuredClone(w);
  Object.assign(tiled[10].inputs, { enable_vae_tiling: true, tile_x: 128, tile_stride_x: 144 });
  t.throws(() => parseWorkflow(tiled), { message: /^node 10 \(WanVideoDecode\): tile_x \(128\) must be larger than tile_stride_x \(144\)$/ });
  // Values inside the node's min/max that the model cannot take are refused when the workflow is
  // read, by the node that holds them, not by a later one after the models have loaded.
  const odd: any = structuredClone(w);
  Object.assign(odd[10].inputs, { enable_vae_tiling: true, tile_x: 44, tile_stride_x: 36 });
  t.throws(() => parseWorkflow(odd), { message: /^node 10 \(WanVideoDecode\): tile_x \(44\) must be a multiple of 8/ });
  const narrow: any = structuredClone(w);
  narrow[5].inputs.width = 72;
  t.throws(() => parseWorkflow(narrow), { message: /^node 5 \(WanVideoImageToVideoEncode\) input width: expected a multiple of 16 .* but received 72$/ });
});

t.test('the I2V nodes compute what the library computes', async (t) => {
  const vae = await Vae.load(path.join(weightsDir, 'tiny_vae.f32.safetensors'));
  const clip = await ClipVisionEncoder.load(path.join(weightsDir, 'tiny_clip.f32.safetensors'), { numHeads: 4 });
  const noise = new Tensor(new (native().NoiseGenerator)(5n).randn([3, 1, 40, 48])).toTypedArray() as Float32Array;
  const pixels = noise.map((v) => Math.tanh(v));
  const image = Tensor.fromTypedArray(pixels, [3, 40, 48]);
  const asFrame = Tensor.fromTypedArray(pixels, [3, 1, 40, 48]);  // one frame, as a decode or a video loader gives it
  const context = (values: Record<string, unknown>, inputs: Record<string, unknown>): NodeContext => ({
    node: undefined as never, value: <T>(name: string) => values[name] as T, input: <T>(name: string) => inputs[name] as T,
    file: () => { throw new Error('no files here'); }, onProgress: () => {}, streamFrames: false, metadata: {}, textCacheDir: root, device: 'cpu', warn: () => {},
  });
  const [clipOut] = await EXECUTORS.WanVideoClipVisionEncode(context(
    { strength_1: 0.5, strength_2: 1, crop: 'disabled', combine_embeds: 'average', force_offload: true, tiles: 0, ratio: 0.5 },
    { clip_vision: clip, image_1: asFrame }));
  const clipEmbeds = clipOut.value as ClipEmbeds;
  const expectedClip = await clip.encode(image, { strength1: 0.5, crop: 'disabled' });
  t.equal(maxAbsDiff(clipEmbeds.clipEmbeds, expectedClip.clipEmbeds), 0, 'WanVideoClipVisionEncode: ClipVisionEncoder.encode');

  const [i2vOut] = await EXECUTORS.WanVideoImageToVideoEncode(context(
    { width: 48, height: 32, num_frames: 7, noise_aug_strength: 0, start_latent_strength: 0.5, end_latent_strength: 1,
      force_offload: true, fun_or_fl2v_model: true, tiled_vae: false, augment_empty_frames: 0 },
    { vae, clip_embeds: clipEmbeds, start_image: asFrame }));
  const embeds = i2vOut.value as ImageEmbeds;
  const expected = await imageToVideoEncode({ vae, width: 48, height: 32, numFrames: 5, startImage: image, startLatentStrength: 0.5 });
  t.same(embeds.targetShape, [16, 2, 4, 6], 'num_frames 7 rounded down to 5, as the wrapper');
  t.equal(maxAbsDiff(embeds.y!, expected.y!), 0, 'WanVideoImageToVideoEncode: imageToVideoEncode');
  t.equal(embeds.clipContext, clipEmbeds.clipEmbeds, 'the CLIP tokens are borrowed ...');
  t.same(i2vOut.retains, ['clip_embeds'], '... so the CLIP node output is kept alive with the embeds');
  const [plain] = await EXECUTORS.WanVideoImageToVideoEncode(context({ width: 48, height: 32, num_frames: 5 }, {}));
  t.same(plain.value, emptyEmbeds({ width: 48, height: 32, numFrames: 5 }), 'no image: WanVideoEmptyEmbeds, as the wrapper');
  i2vOut.dispose?.();
  clipOut.dispose?.();
  clip.dispose();
  vae.dispose();
});

t.test('the model loader passes its options to WanModel.load', { skip }, async (t) => {
  const w = api();
  Object.assign(w['4'].inputs, { quantization: 'fp8_e4m3fn', attention_mode: 'flash_attn_2', base_precision: 'bf16' });
  const seen: unknown[] = [];
  const load = WanModel.load;
  WanModel.load = async (file, options) => {
    const model = await load(file, options);
    seen.push({ file, quantization: model.config.quantization, attentionMode: model.config.attentionMode,
      basePrecision: model.config.basePrecision, numHeads: model.config.numHeads, textLen: model.config.textLen });
    return model;
  };
  const controller = new AbortController();
  try {
    await t.rejects(runWorkflow(w, { modelDirs, outputDir: newOutputDir(), signal: controller.signal,
      onNodeStart: (id) => { if (id === '6') controller.abort(); } }), { code: 'WAN_ABORTED' });
  } finally {
    WanModel.load = load;
  }
  t.same(seen, [{ file: path.join(weightsDir, 'tiny_t2v_dit.f32.safetensors'), quantization: 'fp8_e4m3fn', attentionMode: 'flash',
    basePrecision: 'bf16', numHeads: 2, textLen: 16 }], 'quantization, attention_mode flash_attn_2 -> flash, base_precision, num_heads, text_len');
});

t.test('model files: exact relative names, then file names below the folders; a miss lists where it looked', { skip }, async (t) => {
  const nested = path.join(root, 'models');
  fs.mkdirSync(path.join(nested, 'vae', 'wan'), { recursive: true });
  fs.copyFileSync(path.join(weightsDir, 'tiny_vae.f32.safetensors'), path.join(nested, 'vae', 'wan', 'tiny_vae.f32.safetensors'));
  const withVae = (name: string, dirs: RunWorkflowOptions['modelDirs']) => {
    const w = api();
    w['7'].inputs.model_name = name;
    w['9'].inputs.filename_prefix = 'lookup';
    return runWorkflow(w, { modelDirs: dirs, outputDir: newOutputDir() });
  };
  const perKind = { diffusion_models: [weightsDir], text_encoders: [weightsDir, tokenizerDir], vae: [path.join(nested, 'vae')] };
  t.ok((await withVae('wan\\tiny_vae.f32.safetensors', perKind)).outputs['9'].files, 'a Windows-style relative name');
  t.ok((await withVae('other/place/tiny_vae.f32.safetensors', perKind)).outputs['9'].files, 'found by file name below the folder');

  await rejectsWith(t, withVae('wan_2.1_vae.safetensors', perKind), 'WAN_IO',
    new RegExp(`^node 7 \\(WanVideoVAELoader\\) input model_name: "wan_2.1_vae.safetensors" not found: looked for wan_2.1_vae.safetensors in ${path.join(nested, 'vae')} ` +
      '\\(modelDirs.vae\\) and for a file named wan_2.1_vae.safetensors below them$'));
  await rejectsWith(t, withVae('wan_2.1_vae.safetensors', modelDirs), 'WAN_IO',
    new RegExp(`looked for wan_2.1_vae.safetensors in ${weightsDir}, ${tokenizerDir} \\(modelDirs\\)`));
  await rejectsWith(t, withVae('tiny_vae.f32.safetensors', { diffusion_models: [weightsDir], text_encoders: [weightsDir, tokenizerDir] }), 'WAN_IO',
    /^node 7 \(WanVideoVAELoader\) input model_name: cannot look for "tiny_vae.f32.safetensors": no vae folders were given \(modelDirs.vae\)$/);
  await rejectsWith(t, withVae('../weights/tiny_vae.f32.safetensors', modelDirs), 'WAN_INVALID_OPTION',
    /input model_name: expected a file name relative to the vae folders but received "..\/weights/);
  fs.mkdirSync(path.join(nested, 'vae', 'copy'));
  fs.copyFileSync(path.join(weightsDir, 'tiny_vae.f32.safetensors'), path.join(nested, 'vae', 'copy', 'tiny_vae.f32.safetensors'));
  await rejectsWith(t, withVae('tiny_vae.f32.safetensors', perKind), 'WAN_INVALID_OPTION',
    /"tiny_vae.f32.safetensors" is ambiguous: 2 files named tiny_vae.f32.safetensors under .*; give its path relative to the folder/);
});

t.test('UI format: what cannot be mapped is an error', async (t) => {
  const long = ui();
  long.nodes.find((n: any) => n.id === 5).widgets_values = [64, 64, 5, 1];
  t.throws(() => parseWorkflow(long), { code: 'WAN_INVALID_OPTION',
    message: /^node 5 \(WanVideoEmptyEmbeds\): widgets_values has 4 values but the node has 3 widgets \(width, height, num_frames\); .*export it in API format$/ });
  const old = ui();  // the March 2025 sampler had an empty string where batched_cfg is now
  old.nodes.find((n: any) => n.id === 6).widgets_values = [3, 5, 5, 42, 'fixed', true, 'unipc', 0, 1, ''];
  t.throws(() => parseWorkflow(old), { code: 'WAN_INVALID_OPTION',
    message: /^node 6 \(WanVideoSampler\) input batched_cfg \(widgets_values\[9\]\): expected a boolean but received "" of type string$/ });
  const vhs = ui();
  vhs.nodes.find((n: any) => n.id === 9).widgets_values = [8, 0, 'wan/t2v', 'video/h264-mp4', 'yuv420p', 19, true, false, false, true];
  t.throws(() => parseWorkflow(vhs), { code: 'WAN_INVALID_OPTION', message: /^node 9 \(VHS_VideoCombine\): widgets_values is an array, which cannot be mapped/ });
  const dangling = ui();
  dangling.nodes.find((n: any) => n.id === 8).inputs[0].link = 77;
  t.throws(() => parseWorkflow(dangling), { code: 'WAN_INVALID_OPTION', message: /^node 8 \(WanVideoDecode\) input vae: refers to link 77, which is not in the workflow's links$/ });
  const muted = ui();
  muted.nodes.find((n: any) => n.id === 7).mode = 2;
  t.throws(() => parseWorkflow(muted), { code: 'WAN_INVALID_OPTION', message: /^node 8 \(WanVideoDecode\): missing required input vae$/ });
  const loadImage = {
    nodes: [
      { id: 1, type: 'LoadImage', mode: 0, widgets_values: ['frame.png', 'image'], outputs: [{ name: 'IMAGE', type: 'IMAGE', links: [1] }] },
      { id: 2, type: 'VHS_VideoCombine', mode: 0, inputs: [{ name: 'images', type: 'IMAGE', link: 1 }],
        widgets_values: { frame_rate: 8, loop_count: 0, filename_prefix: 'x', format: 'image/gif', pingpong: false, save_output: true } },
    ],
    links: [{ id: 1, origin_id: 1, origin_slot: 0, target_id: 2, target_slot: 0, type: 'IMAGE' }],
  };
  t.same(parseWorkflow(loadImage).nodes.get('1')!.values, { image: 'frame.png' }, "LoadImage's upload widget skipped; links in object form");
  const bypassed = ui();
  bypassed.nodes.find((n: any) => n.id === 3).mode = 4;  // bypassed, with no input of its output's type
  t.equal(parseWorkflow(bypassed).nodes.get('4')!.links.block_swap_args, undefined, 'a bypassed node with nothing to pass on: unconnected');
});

t.test('abort stops the run and leaves no output file', { skip }, async (t) => {
  const outputDir = newOutputDir();
  const controller = new AbortController();
  const started: string[] = [];
  await t.rejects(runWorkflow(apiFile, {
    modelDirs, outputDir, signal: controller.signal,
    onNodeStart: (id) => started.push(id),
    onProgress: (e) => { if (e.nodeId === '6' && e.progress?.step === 1) controller.abort(); },
  }), { code: 'WAN_ABORTED' });
  t.same(started, ['1', '2', '5', '3', '4', '6'], 'nothing ran after the sampler');
  t.same(listFiles(outputDir), [], 'no output file');

  // Aborted while the video is written (decode streamed into Video Combine).
  const late = new AbortController();
  await t.rejects(runWorkflow(apiFile, {
    modelDirs, outputDir, signal: late.signal,
    onProgress: (e) => { if (e.nodeId === '9' && (e.progress?.step ?? 0) >= 2) late.abort(); },
  }), { code: 'WAN_ABORTED' });
  t.same(listFiles(outputDir), [], 'no output file, not even a partial one');

  const before = new AbortController();
  before.abort();
  await t.rejects(runWorkflow(apiFile, { modelDirs, outputDir, signal: before.signal }), { code: 'WAN_ABORTED' });
});

t.test('bad arguments', async (t) => {
  await t.rejects(runWorkflow(path.join(root, 'nope.json')), { code: 'WAN_IO', message: /cannot read the workflow .*nope\.json/ });
  fs.writeFileSync(path.join(root, 'broken.json'), '{"1": ');
  await t.rejects(runWorkflow(path.join(root, 'broken.json')), { code: 'WAN_INVALID_OPTION', message: /broken\.json is not JSON/ });
  await t.rejects(runWorkflow(api(), { modelDirs: 'models' as never }), { code: 'WAN_INVALID_OPTION',
    message: /Expected an array of folders or an object of folder lists per kind for modelDirs but received "models"/ });
  await t.rejects(runWorkflow(api(), { modelDirs: { checkpoints: ['x'] } as never }), { code: 'WAN_INVALID_OPTION',
    message: /Expected modelDirs keys among diffusion_models, text_encoders, vae, clip_vision, loras, input but received "checkpoints"/ });
  await t.rejects(runWorkflow(42 as never), { code: 'WAN_INVALID_OPTION', message: /Expected a workflow file path or object/ });
  t.throws(() => parseWorkflow({}), { code: 'WAN_INVALID_OPTION', message: /the workflow has no nodes/ });
});

t.test('npx wan-native run: the command line runs the workflow file', { skip }, async (t) => {
  const outputDir = newOutputDir();
  const cli = path.join(repoRoot, 'dist', 'lib', 'cli.js');
  const r = spawnSync(process.execPath, [cli, 'run', apiFile, '--models', weightsDir, '--models', tokenizerDir, '--output-dir', outputDir],
    { encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr);
  const files = r.stdout.trim().split('\n');
  t.equal(files.length, 1, 'one file written, its path on stdout');
  t.ok(files[0].startsWith(outputDir + path.sep), `written below the output folder: ${files[0]}`);
  t.match(r.stderr, /node 6 \(WanVideoSampler\)/, 'each node is announced on stderr');
  const expected = frameBytes(await directT2v());
  t.equal(decodeVideo(files[0]).length, Buffer.concat(expected).length, 'a video of the library pipeline\'s frame count and size');

  const bad = spawnSync(process.execPath, [cli, 'run', apiFile, '--bogus'], { encoding: 'utf8' });
  t.equal(bad.status, 2);
  t.match(bad.stderr, /wan-native run: unknown option --bogus/);
  const missing = spawnSync(process.execPath, [cli, 'run', apiFile, '--models', tokenizerDir, '--output-dir', newOutputDir()], { encoding: 'utf8' });
  t.equal(missing.status, 1);
  t.match(missing.stderr, /node \d+ \(\w+\) input model_name: .* not found: looked for .* in /, 'a model missing from the folders is named with where it looked');
});

// The test workflow's Video Combine writing one PNG per frame, for byte comparisons.
function asPngFrames(workflow: ReturnType<typeof api>): void {
  const combine = workflow['9'].inputs;
  combine.format = 'image/png';
  delete combine.pix_fmt;
  delete combine.crf;
  delete combine.trim_to_audio;
}

t.test('rms_norm_function and rope_function choose among equal implementations: the run says so', { skip }, async (t) => {
  const workflow = api();
  workflow['4'].inputs.rms_norm_function = 'pytorch';
  workflow['6'].inputs.rope_function = 'default';
  asPngFrames(workflow);
  const result = await runWorkflow(workflow, { modelDirs, outputDir: newOutputDir() });
  t.match(result.warnings, [
    /^node 4 \(WanVideoModelLoader\): rms_norm_function 'pytorch': both of the wrapper's choices compute the same RMS norm/,
    /^node 6 \(WanVideoSampler\): rope_function 'default': the wrapper's choices compute the same rotary embedding/,
  ]);
  t.equal(result.warnings.length, 2);
  const expected = frameBytes(await directT2v());
  for (const [i, file] of result.outputs['9'].files!.entries()) t.ok((await pngBytes(file)).equals(expected[i]), `frame ${i}: unchanged`);
});

t.test("Decode's normalization 'none' hands on the VAE's output unmapped, as the wrapper: VHS clips its lower half", { skip }, async (t) => {
  const run = async (normalization: string) => {
    const workflow = api();
    workflow['8'].inputs.normalization = normalization;
    asPngFrames(workflow);
    const result = await runWorkflow(workflow, { modelDirs, outputDir: newOutputDir() });
    return Promise.all(result.outputs['9'].files!.map((f) => pngBytes(f)));
  };
  const mapped = await run('default'), raw = await run('none');
  t.equal(raw.length, mapped.length);
  let worst = 0, differing = 0;
  for (const [i, frame] of raw.entries())
    for (let j = 0; j < frame.length; ++j) {
      // default: (x + 1) / 2 * 255; none: x * 255, clipped at 0.
      worst = Math.max(worst, Math.abs(frame[j] - Math.max(0, 2 * mapped[i][j] - 255)));
      if (frame[j] !== mapped[i][j]) differing++;
    }
  t.ok(worst <= 2, `every byte is max(0, 2 b - 255) of the default's b, to rounding (worst ${worst})`);
  t.ok(differing > 0, `${differing} bytes differ from the default's`);
});

t.test('torch.compile settings become compile, which on the CPU changes nothing, and say so', { skip }, async (t) => {
  const workflow = api();
  workflow['4'].inputs.compile_args = ['10', 0];
  asPngFrames(workflow);
  const result = await runWorkflow(workflow, { modelDirs, outputDir: newOutputDir() });
  t.match(result.warnings, [/^node 4 \(WanVideoModelLoader\): compile_args: on the CPU the RMS norms and RoPE always run as fused loops, so nothing changes$/]);
  const expected = frameBytes(await directT2v());
  for (const [i, file] of result.outputs['9'].files!.entries()) t.ok((await pngBytes(file)).equals(expected[i]), `frame ${i}: unchanged`);
});
