// I2V and FLF2V ComfyUI workflows (test/fixtures/workflows/i2v.api.json, flf2v.api.json) run end
// to end on the tiny models of shared/golden/weights, and give the frames of the same pipeline
// called through the library.
//
// The tiny golden CLIP (tiny_clip) is 64 wide, but the tiny I2V DiT takes what the real one
// takes: img_emb = MLPProj(1280, 64) reads ViT-H/14 tokens. So a CLIP vision tower of the real
// width is written here at test time: ViT-H/14 (1280 wide, 16 heads, MLP 5120, 224 px in 14 px
// patches -> 257 tokens) cut to 2 blocks (the encoder runs all but the last, so 1 runs), under
// the key names and shapes of the official models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth
// (shared/manifests). The image size stays 224: the FLF2V model's img_emb.emb_pos is
// [1, 514, 1280], two images of 257 tokens, so a CLIP with fewer tokens could not drive it.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { ClipVisionEncoder, imageToVideoEncode, loadImage, saveSafetensors, Sampler, Tensor, TextEncoder, Vae, WanModel } from '../../lib/index';
import type { ClipVisionEncodeOptions, ImageToVideoEncodeOptions, SamplerOptions } from '../../lib/index';
import { native } from '../../lib/native';
import { NODE_SPECS, parseWorkflow, runWorkflow } from '../../lib/workflow';
import { ffprobe, frameBytes, have, listFiles, pngBytes, trainTinyTokenizer } from '../media';
import { fixturesDir, manifestsDir, readRawSafetensors, tempDir, weightsDir } from '../helpers';

const sharp = require('sharp');

const root = tempDir('wan-workflow-i2v-');
t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
let outputs = 0;
const newOutputDir = () => path.join(root, `out${++outputs}`);

type Kind = 'i2v' | 'flf2v';
const fixture = (kind: Kind) => JSON.parse(fs.readFileSync(path.join(fixturesDir, 'workflows', `${kind}.api.json`), 'utf8'));

// ---------------------------------------------------------------------------------------------
// The synthesised CLIP vision tower.

const CLIP_NAME = 'clip_vision_h_2_blocks.f32.safetensors';  // what the workflows' loaders name
const CLIP_BLOCKS = 2;
const clipDir = path.join(root, 'clip_vision');
const clipFile = path.join(clipDir, CLIP_NAME);

// The visual.* keys of the official file with their shapes, blocks past CLIP_BLOCKS dropped.
function clipVisionKeys(): { key: string; shape: number[] }[] {
  const manifest = JSON.parse(fs.readFileSync(path.join(manifestsDir, 'clip_xlm_roberta_vit_h_14.json'), 'utf8'));
  return (manifest.tensors as { key: string; shape: number[] }[]).filter(({ key }) => {
    const block = /^visual\.transformer\.(\d+)\./.exec(key);
    return key.startsWith('visual.') && (!block || Number(block[1]) < CLIP_BLOCKS);
  });
}

// Random values: weights N(0,1)/sqrt(fan_in) (visual.head is used as x @ head, so its fan-in is
// its first dimension), biases 0.1 N(0,1) as the tiny goldens, LayerNorm gains 1, the class and
// position embeddings N(0,1)/sqrt(1280) (open_clip's initialisation scale). F32, PyTorch's CPU
// generator seeded with 2025, keys in the manifest's order.
async function writeClipVision(file: string): Promise<void> {
  const generator = new (native().NoiseGenerator)(2025n);
  const tensors = new Map<string, Tensor>();
  for (const { key, shape } of clipVisionKeys()) {
    const numel = shape.reduce((a, b) => a * b, 1);
    let values: Float32Array;
    if (/norm\d?\.weight$/.test(key)) {
      values = new Float32Array(numel).fill(1);
    } else {
      const noise = new Tensor(generator.randn(shape));
      values = noise.toTypedArray() as Float32Array;
      noise.dispose();
      const scale = key.endsWith('.bias') ? 0.1
        : key === 'visual.cls_embedding' || key === 'visual.pos_embedding' ? 1 / Math.sqrt(shape[2])
        : key === 'visual.head' ? 1 / Math.sqrt(shape[0])
        : 1 / Math.sqrt(numel / shape[0]);  // [out, in] or [out, 3, p, p]
      for (let i = 0; i < numel; i++) values[i] *= scale;
    }
    tensors.set(key, Tensor.fromTypedArray(values, shape));
  }
  fs.mkdirSync(path.dirname(file), { recursive: true });
  try {
    await saveSafetensors(file, tensors, { format: 'pt', note: `ViT-H/14 cut to ${CLIP_BLOCKS} blocks, random weights (wan-native test)` });
  } finally {
    for (const tensor of tensors.values()) tensor.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// The other files the workflows name.

// The tiny FLF2V model is the tiny I2V one plus img_emb.emb_pos (test/native/dit.test.ts loads
// the two files as a list). WanVideoModelLoader names one file, so the two are given as the
// shards of a Hugging Face index, which WanModel.load reads like a list of their files.
const flf2vDir = path.join(root, 'diffusion_models');
const i2vWeights = path.join(weightsDir, 'tiny_i2v_dit.f32.safetensors');
const embPosWeights = path.join(fixturesDir, 'dit', 'tiny_flf2v_emb_pos.bf16.safetensors');
function writeFlf2vShards(): void {
  fs.mkdirSync(flf2vDir, { recursive: true });
  const weightMap: Record<string, string> = {};
  for (const [i, source] of [i2vWeights, embPosWeights].entries()) {
    const shard = `tiny_flf2v_dit-0000${i + 1}-of-00002.safetensors`;
    fs.copyFileSync(source, path.join(flf2vDir, shard));
    for (const key of Object.keys(readRawSafetensors(source).header)) weightMap[key] = shard;
  }
  fs.writeFileSync(path.join(flf2vDir, 'tiny_flf2v_dit.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }, null, 1));
}

// The umT5 tokenizer, trained with Debian's spm_train as test/native/workflow.test.ts does
// (T5 conventions: pad 0, eos 1, unk 2; vocab <= 256); the workflows name it "spiece.model".
const tokenizerDir = path.join(root, 'tokenizer');
const trainTokenizer = () => trainTinyTokenizer(tokenizerDir);

// The input images: a landscape first frame and a portrait last frame (so that crop 'center'
// and 'disabled' differ, and both are resized to the video's 80 x 64), smooth with some texture.
const inputDir = path.join(root, 'input');
async function writeImage(file: string, width: number, height: number, salt: number): Promise<void> {
  const rgb = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 3;
      rgb[i] = Math.round((255 * x) / (width - 1));
      rgb[i + 1] = Math.round((255 * y) / (height - 1)) ^ salt;
      rgb[i + 2] = (x * y * 7 + salt * 13 + ((x >> 3) + (y >> 3)) * 40) % 256;
    }
  }
  await sharp(rgb, { raw: { width, height, channels: 3 } }).png().toFile(file);
}

const modelDirs = {
  diffusion_models: [weightsDir, flf2vDir], text_encoders: [weightsDir, tokenizerDir], vae: [weightsDir],
  clip_vision: [clipDir], input: [inputDir],
};

const skip = !trainTokenizer() ? 'spm_train (Debian package sentencepiece) is needed: scripts/setup.sh installs it'
  : !(have('ffmpeg') && have('ffprobe')) ? 'ffmpeg and ffprobe are needed (apt install ffmpeg)' : false;

// Written once, by the first test that needs them.
let written: Promise<void> | undefined;
const ready = () => (written ??= (async () => {
  fs.mkdirSync(inputDir, { recursive: true });
  await writeImage(path.join(inputDir, 'start.png'), 96, 72, 0);
  await writeImage(path.join(inputDir, 'end.png'), 56, 88, 85);
  writeFlf2vShards();
  await writeClipVision(clipFile);
})());

// ---------------------------------------------------------------------------------------------
// The same pipelines through the library: each workflow's values, written out.

interface Pipeline {
  prompt: string; negative: string;
  clip: ClipVisionEncodeOptions;
  encode: Omit<ImageToVideoEncodeOptions, 'vae' | 'startImage' | 'endImage' | 'clipEmbeds'>;
  model: string | string[];
  sample: Pick<SamplerOptions, 'steps' | 'cfg' | 'shift' | 'seed' | 'scheduler'>;
}
const PIPELINES: Record<Kind, Pipeline> = {
  i2v: {
    prompt: 'a cat walks on the beach at sunset', negative: 'rain at night',
    clip: { strength1: 0.8, crop: 'center' },
    encode: { width: 80, height: 64, numFrames: 5, noiseAugStrength: 0.05, startLatentStrength: 0.9 },
    model: i2vWeights,
    sample: { steps: 2, cfg: 5, shift: 5, seed: 7, scheduler: 'unipc' },
  },
  flf2v: {
    prompt: 'camera pans slowly over the waves', negative: 'city at night',
    clip: { strength2: 0.9, crop: 'disabled', combineEmbeds: 'batch' },  // image2: the end image
    encode: { width: 80, height: 64, numFrames: 5, endLatentStrength: 0.8 },
    model: [i2vWeights, embPosWeights],
    sample: { steps: 2, cfg: 4, shift: 3, seed: 11, scheduler: 'dpm++' },
  },
};

// extraEnd: the I2V pipeline with end.png as an extra end latent frame (fun_or_fl2v_model false).
async function direct(kind: Kind, extraEnd = false): Promise<Tensor> {
  const p = PIPELINES[kind];
  const start = await loadImage(path.join(inputDir, 'start.png'));
  const end = kind === 'flf2v' || extraEnd ? await loadImage(path.join(inputDir, 'end.png')) : undefined;
  const encoder = await TextEncoder.load(path.join(weightsDir, 'tiny_umt5_enc.f32.safetensors'), { tokenizer: path.join(tokenizerDir, 'spiece.model') });
  const textEmbeds = await encoder.encode({ positive: [p.prompt], negative: p.negative });
  encoder.dispose();
  const clip = await ClipVisionEncoder.load(clipFile);
  const clipEmbeds = await clip.encode(start, { ...p.clip, image2: kind === 'flf2v' ? end : undefined });
  clip.dispose();
  const vae = await Vae.load(path.join(weightsDir, 'tiny_vae.f32.safetensors'));
  const imageEmbeds = await imageToVideoEncode({ ...p.encode, vae, startImage: start, endImage: end, clipEmbeds, flf2v: !extraEnd });
  const model = await WanModel.load(p.model, { numHeads: 2, basePrecision: 'fp32', attentionMode: 'sdpa' });
  const latent = await new Sampler(model).sample({ ...p.sample, imageEmbeds, textEmbeds });
  model.dispose();
  const video = await vae.decode(latent, { trimEndLatent: imageEmbeds.extraEndLatent });
  for (const x of [start, end, latent, imageEmbeds.y, clipEmbeds.clipEmbeds, ...textEmbeds.promptEmbeds, ...textEmbeds.negativePromptEmbeds]) x?.dispose();
  vae.dispose();
  return video;
}

// ---------------------------------------------------------------------------------------------





// Runs fn with model loads and disposals recorded into `events` (WanModel.load with the model
// type it found, dispose() of each model class).
async function spyModels<T>(events: string[], fn: () => Promise<T>): Promise<T> {
  const classes = { TextEncoder, ClipVisionEncoder, WanModel, Vae } as Record<string, { prototype: { dispose(): void } }>;
  const saved = Object.entries(classes).map(([name, cls]) => [name, cls, cls.prototype.dispose] as const);
  for (const [name, cls, original] of saved) {
    cls.prototype.dispose = function (this: unknown) {
      events.push(`dispose ${name}`);
      return original.call(this);
    };
  }
  const load = WanModel.load;
  WanModel.load = async (file, options) => {
    const model = await load(file, options);
    events.push(`load WanModel ${model.config.modelType}`);
    return model;
  };
  try {
    return await fn();
  } finally {
    for (const [, cls, original] of saved) cls.prototype.dispose = original;
    WanModel.load = load;
  }
}

t.test('the synthesised CLIP: the official key layout at ViT-H/14 width, its config inferred from shapes', { skip }, async (t) => {
  await ready();
  const raw = readRawSafetensors(clipFile);
  const tiny = readRawSafetensors(path.join(weightsDir, 'tiny_clip.f32.safetensors'));
  const blocksCut = (keys: string[]) => keys.filter((k) => k.startsWith('visual.') && !/^visual\.transformer\.([2-9]|\d\d)/.test(k)).sort();
  t.same(blocksCut(Object.keys(raw.header)), blocksCut(Object.keys(tiny.header)), "tiny_clip's visual keys, blocks 0 and 1");
  t.same([raw.header['visual.pos_embedding'].shape, raw.header['visual.transformer.1.mlp.2.weight'].shape, raw.header['visual.head'].shape],
    [[1, 257, 1280], [1280, 5120], [1280, 1024]], 'the official shapes');

  const clip = await ClipVisionEncoder.load(clipFile);
  t.same(clip.config, { imageSize: 224, patchSize: 14, dim: 1280, mlpDim: 5120, numHeads: 16, numLayers: 2, tokens: 257, layout: 'official', device: 'cpu' },
    'width, heads (16: known for 1280), MLP, patch and image size from the shapes');
  const { clipEmbeds } = await clip.encode(path.join(inputDir, 'start.png'));
  t.same(clipEmbeds.shape, [1, 257, 1280], 'what the I2V DiT takes');
  const values = clipEmbeds.toTypedArray() as Float32Array;
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  const std = Math.sqrt(values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length);
  t.ok(values.every(Number.isFinite) && std > 0.1 && std < 10, `finite features of order 1 (std ${std.toFixed(3)})`);
  clipEmbeds.dispose();
  clip.dispose();
});

// What a run of each fixture (plus the PNG output 20) does: each model is loaded just before its
// first use and freed after its last, the CLIP tower before the VAE loads and the text encoder
// before the DiT; the VAE (encode, then decode) stays loaded through sampling.
const ORDER: Record<Kind, string[]> = {
  i2v: [
    'start 1 LoadImage', 'start 2 CLIPVisionLoader', 'start 3 WanVideoClipVisionEncode', 'dispose ClipVisionEncoder',
    'start 4 WanVideoVAELoader', 'start 5 WanVideoImageToVideoEncode', 'start 6 LoadWanVideoT5TextEncoder',
    'start 7 WanVideoTextEncode', 'dispose TextEncoder', 'start 8 WanVideoBlockSwap', 'start 9 WanVideoModelLoader',
    'load WanModel i2v', 'start 10 WanVideoSampler', 'dispose WanModel', 'start 11 WanVideoDecode', 'dispose Vae',
    'start 12 VHS_VideoCombine', 'start 20 VHS_VideoCombine',
  ],
  flf2v: [
    'start 1 LoadImage', 'start 2 LoadImage', 'start 3 LoadWanVideoClipTextEncoder', 'start 4 WanVideoClipVisionEncode',
    'dispose ClipVisionEncoder', 'start 5 WanVideoVAELoader', 'start 6 WanVideoImageToVideoEncode',
    'start 7 LoadWanVideoT5TextEncoder', 'start 8 WanVideoTextEncode', 'dispose TextEncoder', 'start 9 WanVideoBlockSwap',
    'start 10 WanVideoModelLoader', 'load WanModel flf2v', 'start 11 WanVideoSampler', 'dispose WanModel',
    'start 12 WanVideoDecode', 'dispose Vae', 'start 13 VHS_VideoCombine', 'start 20 VHS_VideoCombine',
  ],
};

for (const kind of ['i2v', 'flf2v'] as const) {
  t.test(`an API-format ${kind.toUpperCase()} workflow runs end to end and gives the library pipeline's frames`, { skip }, async (t) => {
    await ready();
    const workflow = fixture(kind);
    const ids = Object.keys(workflow);
    const combineId = ids.find((id) => workflow[id].class_type === 'VHS_VideoCombine')!;
    const decodeId = workflow[combineId].inputs.images[0];
    // A second output beside the fixture's MP4: PNG frames of the same decode, for an exact comparison.
    workflow['20'] = { class_type: 'VHS_VideoCombine', inputs: { images: [decodeId, 0], frame_rate: 16, loop_count: 0,
      filename_prefix: `${kind}_png`, format: 'image/png', pingpong: false, save_output: true, save_metadata: false } };
    const outputDir = newOutputDir();
    const events: string[] = [];
    const result = await spyModels(events, () => runWorkflow(workflow, {
      modelDirs, outputDir, onNodeStart: (id, classType) => events.push(`start ${id} ${classType}`),
    }));

    t.same(events, ORDER[kind], `every node ran once, in this order; the model loader made a ${kind} model` +
      (kind === 'flf2v' ? ' of the two shards of its index' : ''));
    t.same(Object.keys(result.timings).sort(), [...ids, '20'].sort(), 'a time for each node');

    // The MP4: its size and frame count, and the workflow embedded as VHS does.
    const files = result.outputs[combineId].files!;
    t.same(files, [path.join(outputDir, 'wan', `${kind}_00001.mp4`)], 'the MP4 under outputDir/wan');
    const probe = ffprobe(files[0]);
    t.same([probe.streams[0].width, probe.streams[0].height, Number(probe.streams[0].nb_read_frames)], [80, 64, 5], 'ffprobe: 5 frames of 80x64');
    t.same(JSON.parse(probe.format.tags!.prompt), workflow, 'the workflow is embedded (prompt)');

    // The PNG frames: byte for byte the library pipeline's.
    const pngs = result.outputs['20'].files!;
    t.same(pngs.map((f) => path.basename(f)), [1, 2, 3, 4, 5].map((i) => `${kind}_png_00001_000${i}.png`), '5 PNG frames');
    t.same(listFiles(outputDir), [path.join('wan', `${kind}_00001.mp4`), ...pngs.map((f) => path.relative(outputDir, f))].sort(), 'and nothing else');
    const video = await direct(kind);
    t.same(video.shape, [3, 5, 64, 80], 'the library pipeline: [3, 5, 64, 80]');
    const expected = frameBytes(video);
    video.dispose();
    for (const [i, file] of pngs.entries()) t.ok((await pngBytes(file)).equals(expected[i]), `frame ${i}: the library's bytes`);
  });
}

t.test('an unknown node type is refused before anything runs, with the nodes wan-native runs', async (t) => {
  for (const kind of ['i2v', 'flf2v'] as const) {
    const workflow = fixture(kind);
    const find = (classType: string) => Object.keys(workflow).find((id) => workflow[id].class_type === classType)!;
    const encodeId = find('WanVideoImageToVideoEncode'), clipId = find('WanVideoClipVisionEncode');
    // The wrapper's former all-in-one I2V node (CLIP and VAE encoding), wired in place of the CLIP encode.
    workflow['20'] = { class_type: 'WanVideoImageClipEncode', inputs: { clip_vision: workflow[clipId].inputs.clip_vision,
      image: workflow[clipId].inputs.image_1, vae: workflow[encodeId].inputs.vae, generation_width: 80, generation_height: 64, num_frames: 5 } };
    workflow[encodeId].inputs.clip_embeds = ['20', 0];
    t.same(parseWorkflow(fixture(kind)).order.length, Object.keys(fixture(kind)).length, `${kind}: the fixture itself is valid, every node runs`);
    const started: string[] = [];
    const outputDir = newOutputDir();
    const err = await runWorkflow(workflow, { modelDirs, outputDir, onNodeStart: (id) => started.push(id) }).then(() => undefined, (e) => e);
    t.match(err, { code: 'WAN_INVALID_OPTION' }, `${kind}: refused`);
    const m = /^node 20 \(WanVideoImageClipEncode\): unknown node type "WanVideoImageClipEncode" \(wan-native runs (.*)\)$/.exec(err?.message ?? '');
    t.ok(m, `${kind}: the message names the node and its type`, { message: err?.message });
    const listed = m ? m[1].split(', ') : [];
    t.same(listed, [...NODE_SPECS.keys()], 'and lists every node wan-native runs');
    for (const node of ['CLIPVisionLoader', 'LoadWanVideoClipTextEncoder', 'WanVideoClipVisionEncode', 'LoadImage', 'WanVideoImageToVideoEncode'])
      t.ok(listed.includes(node), `${node} among them`);
    t.same(started, [], 'no node ran');
    t.same(listFiles(outputDir), [], 'nothing was written');
  }
});

t.test('an I2V workflow with start and end images and fun_or_fl2v_model false: the end image an extra latent frame, dropped at decode', { skip }, async (t) => {
  await ready();
  const workflow = fixture('i2v');
  workflow['30'] = { class_type: 'LoadImage', inputs: { image: 'end.png' } };
  Object.assign(workflow['5'].inputs, { end_image: ['30', 0], fun_or_fl2v_model: false });
  workflow['20'] = { class_type: 'VHS_VideoCombine', inputs: { images: ['11', 0], frame_rate: 16, loop_count: 0,
    filename_prefix: 'extra_png', format: 'image/png', pingpong: false, save_output: true, save_metadata: false } };
  delete workflow['12'];
  const result = await runWorkflow(workflow, { modelDirs, outputDir: newOutputDir() });
  const pngs = result.outputs['20'].files!;
  const video = await direct('i2v', true);
  t.same(video.shape, [3, 5, 64, 80], 'the library pipeline: 5 frames, the extra latent frame left out');
  t.equal(pngs.length, 5, '5 PNG frames');
  const expected = frameBytes(video);
  video.dispose();
  let same = pngs.length === expected.length;
  for (const [i, file] of pngs.entries()) same &&= (await pngBytes(file)).equals(expected[i]);
  t.ok(same, 'byte for byte the library\'s frames');
});
