// Options a call does not know are refused, naming them, where they used to be ignored: a
// misspelt option ('stepz') or one of the wrapper's that is not implemented here
// ('rmsNormFunction', 'normalization', 'audio') would otherwise change nothing without a word.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import {
  emptyEmbeds, imageToVideoEncode, loadSafetensors, planMemory, Sampler, saveSafetensors, Tensor, TextEncoder, Vae, videoCombine, WanModel,
} from '../../lib/index';
import { weightsDir } from '../helpers';

const w = (name: string) => path.join(weightsDir, name);
const TINY = { numHeads: 2, textLen: 16 };
const among = (what: string, names: string[]) => new RegExp(`^Expected ${what.replace(/[.[\]]/g, '\\$&')} among .* but received ` +
  `${names.map((n) => `'${n}'`).join(', ')}, which (is|are) not one of them$`);
const refused = { code: 'WAN_INVALID_OPTION' };

t.test('loaders and calls refuse options they do not know, naming them', async (t) => {
  const model = await WanModel.load(w('tiny_t2v_dit.f32.safetensors'), TINY);
  const vae = await Vae.load(w('tiny_vae.f32.safetensors'));
  const text = { promptEmbeds: [Tensor.fromTypedArray(new Float32Array(3 * 32), [3, 32])], negativePromptEmbeds: [] };
  const o = { imageEmbeds: emptyEmbeds({ width: 32, height: 32, numFrames: 5 }), textEmbeds: text, steps: 1, cfg: 1 };
  const latent = Tensor.fromTypedArray(new Float32Array(16 * 2 * 4 * 4), [16, 2, 4, 4]);
  const image = Tensor.fromTypedArray(new Float32Array(3 * 32 * 32), [3, 32, 32]);
  const cases: [string, () => Promise<unknown>, RegExp][] = [
    ['WanModel.load', () => WanModel.load(w('tiny_t2v_dit.f32.safetensors'), { ...TINY, rmsNormFunction: 'pytorch' } as never), among('options', ['rmsNormFunction'])],
    ['WanModel.load blockSwap', () => WanModel.load(w('tiny_t2v_dit.f32.safetensors'), { ...TINY, blockSwap: { blocksToSwap: 1, debug: true } as never }), among('blockSwap', ['debug'])],
    ['WanModel.load loras[0]', () => WanModel.load(w('tiny_t2v_dit.f32.safetensors'), { ...TINY, loras: [{ path: 'x', weight: 1 } as never] }), among('loras[0]', ['weight'])],
    ['Sampler.sample', () => new Sampler(model).sample({ ...o, stepz: 3, flowEditArgs: {} } as never), among('options', ['stepz', 'flowEditArgs'])],
    ['Sampler.sample fetaArgs', () => new Sampler(model).sample({ ...o, fetaArgs: { weight: 2, start: 0.1 } as never }), among('fetaArgs', ['start'])],
    ['Sampler.sample contextOptions', () => new Sampler(model).sample({ ...o, contextOptions: { frames: 81, referenceLatent: latent } as never }), among('contextOptions', ['referenceLatent'])],
    ['WanModel.forward', () => model.forward({ x: [latent], t: Tensor.fromTypedArray(BigInt64Array.of(1n), [1]), context: [text.promptEmbeds[0]], seqLen: 8 }, { signal: undefined, onProgress: () => {} } as never), among('options', ['onProgress'])],
    ['WanModel.forward input', () => model.forward({ x: [latent], t: Tensor.fromTypedArray(BigInt64Array.of(1n), [1]), context: [text.promptEmbeds[0]], seqLen: 8, skipBlock: [0] } as never), among('input', ['skipBlock'])],
    ['Vae.load', () => Vae.load(w('tiny_vae.f32.safetensors'), { precision: 'bf16' } as never), among('options', ['precision'])],
    ['Vae.load null', () => Vae.load(w('tiny_vae.f32.safetensors'), null as never), /^Expected an object for options but received null$/],
    ['Vae.decode', () => vae.decode(latent, { normalization: 'none' } as never), among('options', ['normalization'])],
    ['Vae.encode', () => vae.encode(Tensor.fromTypedArray(new Float32Array(3 * 32 * 32), [3, 1, 32, 32]), { clamp: true } as never), among('options', ['clamp'])],
    ['TextEncoder.load', () => TextEncoder.load(w('tiny_umt5_enc.f32.safetensors'), { quantization: 'fp8_e4m3fn' } as never), among('options', ['quantization'])],
    ['imageToVideoEncode', () => imageToVideoEncode({ vae, startImage: image, width: 32, height: 32, numFrames: 5, temporalMask: image } as never), among('options', ['temporalMask'])],
    ['imageToVideoEncode seed', () => imageToVideoEncode({ vae, startImage: image, width: 32, height: 32, numFrames: 5, seed: 1.5 }), /^Expected an integer in 0\.\.2\^64-1 for seed but received 1\.5 of type number$/],
    ['videoCombine', () => videoCombine(latent, { audio: 'a.wav' } as never), among('options', ['audio'])],
    ['planMemory', () => planMemory({ dit: [], vramManagement: true } as never), among('options', ['vramManagement'])],
    ['loadSafetensors', () => loadSafetensors(w('tiny_vae.f32.safetensors'), { mmap: false } as never), among('options', ['mmap'])],
    ['saveSafetensors null', () => saveSafetensors(path.join(os.tmpdir(), 'wan-never-written.safetensors'), null as never),
      /^Expected a Map or an object of named tensors for tensors but received null$/],
  ];
  for (const [what, call, message] of cases) await t.rejects(call(), { ...refused, message }, what);
  t.notOk(fs.existsSync(path.join(os.tmpdir(), 'wan-never-written.safetensors')), 'saveSafetensors without tensors wrote nothing');
  t.doesNotThrow(() => emptyEmbeds({ width: 32, height: 32, numFrames: 5, numFrame: undefined } as never), 'an unknown key set to undefined is no option');
  t.throws(() => emptyEmbeds({ width: 32, height: 32, frames: 5 } as never), { ...refused, message: among('options', ['frames']) });
  model.dispose();
  vae.dispose();
});
