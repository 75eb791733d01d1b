// Placement (the wrapper's load_device, force_offload and block swap's embedding offloads) on the
// CPU: where a model's weights are between uses, as memoryStats().placement reports it. On the
// CPU nothing moves (the CPU is both devices), so these tests hold the sequence (what loads
// where, which stage offloads what, an offload after a failed stage) and that outputs do not
// change; test/gpu/models.test.ts checks on a GPU that the memory really goes and comes back.
import t from 'tap';
import * as path from 'node:path';

import {
  ClipVisionEncoder, emptyEmbeds, imageToVideoEncode, loadSafetensors, Sampler, Tensor, TextEncoder, Vae, WanModel,
} from '../../lib/index';
import type { WanForwardInput } from '../../lib/index';
import { goldenDir, maxAbsDiff, randn, repoRoot, toNumbers, weightsDir } from '../helpers';

const demo = (name: string) => path.join(repoRoot, 'models', 'demo', name);
const tinyDit = path.join(weightsDir, 'tiny_t2v_dit.bf16.safetensors');
const tiny = { numHeads: 2, textLen: 16 };

async function ditInput(): Promise<WanForwardInput> {
  const g = (await loadSafetensors(path.join(goldenDir, 'golden_dit_t2v.safetensors'))).tensors;
  return {
    x: [g.get('a.x')!], t: g.get('a.t')!, context: [g.get('a.context')!],
    seqLen: Number(toNumbers(g.get('a.seq_len')!.toTypedArray())[0]),
  };
}

t.test('the loaders place weights on the offload device by default, as the wrapper, or on the main device', async (t) => {
  const loads: [string, (loadDevice?: 'main_device' | 'offload_device') => Promise<{ memoryStats(): { placement: string }; dispose(): void }>][] = [
    ['WanModel', (loadDevice) => WanModel.load(tinyDit, { ...tiny, loadDevice })],
    ['TextEncoder', (loadDevice) => TextEncoder.load(path.join(weightsDir, 'tiny_umt5_enc.f32.safetensors'), { loadDevice })],
    ['ClipVisionEncoder', (loadDevice) => ClipVisionEncoder.load(path.join(weightsDir, 'tiny_clip.f32.safetensors'), { numHeads: 4, loadDevice })],
    ['Vae', (loadDevice) => Vae.load(path.join(weightsDir, 'tiny_vae.f32.safetensors'), { loadDevice })],
  ];
  for (const [name, load] of loads) {
    for (const [given, want] of [[undefined, 'offload_device'], ['offload_device', 'offload_device'], ['main_device', 'main_device']] as const) {
      const model = await load(given);
      t.equal(model.memoryStats().placement, want, `${name}, loadDevice ${given ?? '(default)'}: ${want}`);
      model.dispose();
    }
  }
});

t.test('a forward brings the DiT to its main device, offload() returns it, and the output never changes', async (t) => {
  const input = await ditInput();
  const resident = await WanModel.load(tinyDit, { ...tiny, loadDevice: 'main_device' });
  const [want] = await resident.forward(input);
  const model = await WanModel.load(tinyDit, tiny);
  t.equal(model.memoryStats().placement, 'offload_device');
  const [first] = await model.forward(input);
  t.equal(model.memoryStats().placement, 'main_device', 'after a forward');
  t.equal(maxAbsDiff(first, want), 0, 'loaded offloaded, the first forward equals a resident model\'s, bitwise');
  const offloaded = model.offload();
  await offloaded;
  t.equal(model.memoryStats().placement, 'offload_device', 'after offload()');
  t.equal(maxAbsDiff((await model.forward(input))[0], want), 0, 'brought back, bitwise the same');
  // offload() queues behind the forwards already called: they run on the weights they started with.
  const [during, , after] = await Promise.all([model.forward(input), model.offload(), model.forward(input)]);
  t.equal(maxAbsDiff(during[0], want) + maxAbsDiff(after[0], want), 0, 'forward, offload, forward queued together');
  model.dispose();
  await t.rejects(model.offload(), { code: 'WAN_INVALID_OPTION', message: /the WanModel has been disposed/ });
});

t.test('the stages offload their model when done (forceOffload, default true), also when they fail', async (t) => {
  const encoder = await TextEncoder.load(demo('umt5-demo.safetensors'), { loadDevice: 'main_device' });
  const textEmbeds = await encoder.encode({ positive: 'a red circle moves left' }, { forceOffload: false });
  t.equal(encoder.memoryStats().placement, 'main_device', 'encode, forceOffload false: kept');
  const again = await encoder.encode({ positive: 'a red circle moves left' });
  t.equal(encoder.memoryStats().placement, 'offload_device', 'encode: offloaded');
  t.equal(maxAbsDiff(again.promptEmbeds[0], textEmbeds.promptEmbeds[0]), 0, 'the same embeddings either way');
  encoder.dispose();

  const model = await WanModel.load(demo('wan-demo-dit.safetensors'), { loadDevice: 'main_device' });
  const sampler = new Sampler(model);
  const options = { imageEmbeds: emptyEmbeds({ width: 64, height: 64, numFrames: 5 }), textEmbeds, steps: 2, seed: 1 };
  const kept = await sampler.sample({ ...options, forceOffload: false });
  t.equal(model.memoryStats().placement, 'main_device', 'sample, forceOffload false: kept');
  const latent = await sampler.sample(options);
  t.equal(model.memoryStats().placement, 'offload_device', 'sample: offloaded');
  t.equal(maxAbsDiff(latent, kept), 0, 'the same latent either way');
  await model.forward({ x: [latent], t: Tensor.fromTypedArray(new BigInt64Array([500n]), [1]), context: textEmbeds.promptEmbeds, seqLen: 32 });
  t.equal(model.memoryStats().placement, 'main_device');
  const aborted = new AbortController();
  aborted.abort();
  await t.rejects(sampler.sample({ ...options, signal: aborted.signal }), { code: 'WAN_ABORTED' });
  t.equal(model.memoryStats().placement, 'offload_device', 'a failed sample offloads too');
  await t.rejects(sampler.sample({ ...options, forceOffload: 'yes' as never }),
    { code: 'WAN_INVALID_OPTION', message: 'Expected a boolean for forceOffload but received "yes" of type string' });
  model.dispose();

  const vae = await Vae.load(demo('wan-demo-vae.safetensors'), { loadDevice: 'main_device' });
  const video = await vae.decode(latent, { forceOffload: false });
  t.equal(vae.memoryStats().placement, 'main_device', 'decode, forceOffload false: kept');
  t.equal(maxAbsDiff(await vae.decode(latent), video), 0, 'decode: the same video');
  t.equal(vae.memoryStats().placement, 'offload_device', 'decode: offloaded');
  await vae.encode(video, { forceOffload: false });
  t.equal(vae.memoryStats().placement, 'main_device', 'encode, forceOffload false: kept');
  for await (const frames of vae.decodeFrames(latent)) {
    frames.dispose();
    break;  // a caller that stops early
  }
  t.equal(vae.memoryStats().placement, 'offload_device', 'decodeFrames stopped early: offloaded');
  await imageToVideoEncode({ vae, startImage: randn([3, 64, 64], 3), width: 64, height: 64, numFrames: 5, forceOffload: false });
  t.equal(vae.memoryStats().placement, 'main_device', 'imageToVideoEncode, forceOffload false: the VAE kept');
  await imageToVideoEncode({ vae, startImage: randn([3, 64, 64], 3), width: 64, height: 64, numFrames: 5 });
  t.equal(vae.memoryStats().placement, 'offload_device', 'imageToVideoEncode: the VAE offloaded');
  vae.dispose();

  const clip = await ClipVisionEncoder.load(path.join(weightsDir, 'tiny_clip.f32.safetensors'), { numHeads: 4, loadDevice: 'main_device' });
  const image = randn([3, 32, 32], 4);
  const { clipEmbeds } = await clip.encode(image, { forceOffload: false });
  t.equal(clip.memoryStats().placement, 'main_device', 'CLIP encode, forceOffload false: kept');
  t.equal(maxAbsDiff((await clip.encode(image)).clipEmbeds, clipEmbeds), 0, 'CLIP encode: the same embeddings');
  t.equal(clip.memoryStats().placement, 'offload_device', 'CLIP encode: offloaded');
  clip.dispose();
});

t.test('embedding offloads give the same output, are set at load, and loadDevice is checked', async (t) => {
  const input = await ditInput();
  const plain = await WanModel.load(tinyDit, tiny);
  const [want] = await plain.forward(input);
  const offloading = await WanModel.load(tinyDit, { ...tiny, blockSwap: { offloadTxtEmb: true, offloadImgEmb: true, blocksToSwap: 1 } });
  t.equal(maxAbsDiff((await offloading.forward(input))[0], want), 0, 'T2V with both embeddings offloaded: bitwise equal');
  t.throws(() => offloading.setBlockSwap({ blocksToSwap: 2, offloadTxtEmb: false }),
    { code: 'WAN_INVALID_OPTION', message: /blockSwap.offloadTxtEmb is set at load \(it was true\); setBlockSwap changes blocksToSwap and prefetchBlocks only/ });
  offloading.setBlockSwap({ blocksToSwap: 2, offloadTxtEmb: true });
  t.equal(maxAbsDiff((await offloading.forward(input))[0], want), 0, 'setBlockSwap keeping them: still equal');

  // The I2V image embedding (img_emb) on random inputs.
  const i2vFile = path.join(weightsDir, 'tiny_i2v_dit.bf16.safetensors');
  const i2vInput = {
    x: [randn([16, 2, 4, 4], 5)], y: [randn([20, 2, 4, 4], 6)], clipFea: randn([1, 257, 1280], 7),
    t: Tensor.fromTypedArray(new BigInt64Array([700n]), [1]), context: [randn([7, 32], 8)], seqLen: 8,
  };
  const i2v = await WanModel.load(i2vFile, { numHeads: 2 });
  const i2vOffloading = await WanModel.load(i2vFile, { numHeads: 2, blockSwap: { offloadImgEmb: true, offloadTxtEmb: true } });
  t.equal(maxAbsDiff((await i2vOffloading.forward(i2vInput))[0], (await i2v.forward(i2vInput))[0]), 0, 'I2V with both embeddings offloaded: bitwise equal');

  await t.rejects(WanModel.load(tinyDit, { ...tiny, loadDevice: 'gpu' as never }),
    { code: 'WAN_INVALID_OPTION', message: `Expected 'main_device' or 'offload_device' for loadDevice but received "gpu" of type string` });
  await t.rejects(Vae.load(path.join(weightsDir, 'tiny_vae.f32.safetensors'), { loadDevice: 'main' as never }),
    { code: 'WAN_INVALID_OPTION', message: /for loadDevice but received "main"/ });
});
