// memoryStats() of loaded models against the bytes of their files' tensors, with fp8 storage and
// block swap; the memory planner's weight model against what the model holds; maxMemory on load.
import * as path from 'node:path';
import t from 'tap';

import { ClipVisionEncoder, loadCheckpoint, planMemory, runtimeInfo, Tensor, TextEncoder, Vae, WanModel } from '../../lib/index';
import { ditActivationBytesPerElement } from '../../lib/memory-planner';
import { native } from '../../lib/native';
import { cpuMemory } from '../../lib/ops';
import { randn, weightsDir } from '../helpers';

const ELEMENT: Record<string, number> = { f32: 4, bf16: 2, f16: 2, f8_e4m3fn: 1, f8_e5m2: 1 };
const DIT = path.join(weightsDir, 'tiny_t2v_dit.bf16.safetensors');
const LOAD = { numHeads: 2, textLen: 16 };

// Bytes of every tensor of a file, and of those of blocks.N (N >= first), from the headers.
async function fileBytes(file: string, first = Infinity, fp8 = false) {
  const { tensors } = await loadCheckpoint(file, { populate: false });
  let all = 0, swapped = 0;
  for (const [key, tensor] of tensors) {
    const n = tensor.shape.reduce((a, b) => a * b, 1);
    // fp8 storage: 2-D+ weights whose name holds none of the kept words (ops::keeps_precision).
    const quantized = fp8 && tensor.shape.length >= 2 && !/norm|head|bias|patch_embedding|time_|img_emb|modulation|text_embedding/.test(key);
    const bytes = n * (quantized ? 1 : ELEMENT[tensor.dtype]);
    all += bytes;
    const m = /^blocks\.(\d+)\./.exec(key);
    if (m && Number(m[1]) >= first) swapped += bytes;
    tensor.dispose();
  }
  return { all, swapped };
}

t.test('WanModel: the sum of its tensors, by storage dtype, swapped or not', async (t) => {
  const file = await fileBytes(DIT);
  const model = await WanModel.load(DIT, LOAD);
  const stats = model.memoryStats();
  t.equal(stats.weights, file.all, `${stats.weights} bytes held = the file's tensors`);
  t.same(stats.resident.byDtype, { bf16: file.all });
  t.equal(stats.swapped.bytes, 0);
  t.equal(stats.resident.tensors, 69, 'every tensor of the file');
  // Block swap moves the last blocks from resident to swapped; the total stays.
  model.setBlockSwap({ blocksToSwap: 1 });
  const swap = model.memoryStats();
  const expected = await fileBytes(DIT, 1);
  t.equal(swap.weights, file.all);
  t.equal(swap.swapped.bytes, expected.swapped, 'block 1 of 2 is swapped');
  t.equal(swap.resident.bytes, file.all - expected.swapped);
  model.dispose();
  t.throws(() => model.memoryStats(), { message: /disposed/ });
});

t.test('WanModel: fp8 storage holds one byte a quantized value', async (t) => {
  const model = await WanModel.load(DIT, { ...LOAD, quantization: 'fp8_e4m3fn', blockSwap: { blocksToSwap: 2 } });
  const stats = model.memoryStats();
  const fp8 = await fileBytes(DIT, 0, true);
  t.equal(stats.weights, fp8.all);
  t.equal(stats.swapped.bytes, fp8.swapped, 'both blocks swapped');
  t.ok(stats.swapped.byDtype.f8_e4m3fn > 0 && stats.resident.byDtype.bf16 > 0, 'blocks fp8, norms and embeddings bf16');
  t.ok(stats.weights < (await fileBytes(DIT)).all, 'less than bf16');
  // The planner's weight model (before loading) agrees with what the model holds.
  for (const quantization of ['disabled', 'fp8_e4m3fn'] as const) {
    const plan = await planMemory({ dit: DIT, quantization, blocksToSwap: 0, maxMemory: 2 ** 40, width: 16, height: 16, numFrames: 1 });
    const sum = plan.dit.otherBytes + plan.dit.blockBytes.reduce((a, b) => a + b, 0);
    t.equal(sum, quantization === 'disabled' ? (await fileBytes(DIT)).all : fp8.all, `planner weights, ${quantization}`);
  }
  model.dispose();
});

t.test('cpuMemory counts the CPU tensors, and the peak since its reset', async (t) => {
  // (Tensor.fromTypedArray keeps the JavaScript array's memory, so the tensor comes from libtorch.)
  const generator = new (native().NoiseGenerator)(1n);
  const before = cpuMemory(true).allocated;
  const x = new Tensor(generator.randn([1000, 100]));
  t.equal(cpuMemory().allocated - before, 400_000, 'a [1000, 100] float32 tensor: 400,000 bytes more');
  x.dispose();
  t.equal(cpuMemory().allocated, before, 'and as many fewer once disposed');
  const peak = cpuMemory(true).peak;
  t.ok(peak >= before + 400_000, `the peak kept it (${peak - before} bytes above)`);
  t.equal(cpuMemory().peak, before, 'the reset brought the peak down to what is allocated now');
});

t.test("a DiT forward holds the planner's activation count at its peak", async (t) => {
  // The tiny DiT (dim 64, ffn 128: r = 2) at 4,096 and 16,384 tokens with flash attention: the
  // most bytes live at once during a forward, above those held before it (cpuMemory), against
  // ditActivationBytesPerElement (CPU: max(20, 8 + 4r) = 20 bytes per element of a [L, 64] tensor:
  // the residual, q, k, v and RoPE's output at self-attention). Within 2 %: the rest is the time
  // embedding, the text context and the small tensors around them. (Before the block kept its
  // statements' temporaries alive, this was 13 [L, 64] float32 tensors, 52 bytes.)
  for (const dtype of ['f32', 'bf16']) {
    const model = await WanModel.load(path.join(weightsDir, `tiny_t2v_dit.${dtype}.safetensors`), { ...LOAD, attentionMode: 'flash' });
    const t0 = Tensor.fromTypedArray(Float64Array.of(700), [1]), context = randn([16, 32], 2);
    for (const side of [64, 128]) {
      const x = randn([16, 4, side, side], 1);
      const tokens = 4 * (side / 2) ** 2;
      const held = cpuMemory(true).allocated;
      const [out] = await model.forward({ x: [x], t: t0, context: [context], seqLen: tokens });
      const live = cpuMemory().peak - held;
      const planned = ditActivationBytesPerElement(64, 128, 'cpu') * tokens * 64;
      t.ok(live >= planned && live <= 1.02 * planned,
        `${dtype}, ${tokens} tokens: ${live} bytes live at the peak, planned ${planned} (${(live / planned).toFixed(4)}x)`);
      out.dispose();
      x.dispose();
    }
    model.dispose();
  }
});

t.test("device 'cuda' plans against the GPU's free memory, which a CPU-only build has none of", { skip: runtimeInfo().cuda ? 'a CUDA build (test/gpu checks it)' : false }, async (t) => {
  await t.rejects(planMemory({ dit: DIT, device: 'cuda', width: 16, height: 16, numFrames: 1 }), {
    code: 'WAN_INVALID_OPTION',
    message: "device 'cuda': this build of wan-native is CPU-only, so there is no GPU memory to plan against; give maxMemory",
  });
});

t.test('TextEncoder, ClipVisionEncoder and Vae report their weights', async (t) => {
  for (const [name, load] of [
    ['tiny_umt5_enc', (f: string) => TextEncoder.load(f)],
    ['tiny_clip', (f: string) => ClipVisionEncoder.load(f, { numHeads: 4 })],
    ['tiny_vae', (f: string) => Vae.load(f)],
  ] as const) {
    const file = path.join(weightsDir, `${name}.f32.safetensors`);
    const model = await load(file);
    const stats = model.memoryStats();
    const bytes = (await fileBytes(file)).all;
    // The model holds what it uses: at most the file (a CLIP file's unused tensors are dropped).
    t.ok(stats.weights > 0 && stats.weights <= bytes, `${name}: ${stats.weights} of the file's ${bytes} bytes`);
    t.same(Object.keys(stats.resident.byDtype), ['f32'], `${name}: float32`);
    t.equal(stats.swapped.bytes, 0);
    model.dispose();
  }
});

t.test('maxMemory: the loader applies the plan, or refuses before loading', async (t) => {
  const model = await WanModel.load(DIT, { ...LOAD, maxMemory: 64 * 2 ** 30, planFor: { width: 64, height: 64, numFrames: 5 } });
  t.ok(model.memoryPlan?.fits);
  t.same([model.config.quantization, model.config.blocksToSwap], ['disabled', 0], 'room enough: the file as it is');
  t.match(model.memoryPlan!.summary, /Memory plan \(cpu\) for 64x64, 5 frames/);
  model.dispose();
  await t.rejects(WanModel.load(DIT, { ...LOAD, maxMemory: 1024 }), {
    code: 'WAN_OUT_OF_MEMORY', message: /^maxMemory: 832x480, 81 frames needs .* the budget \(maxMemory\) is 0 MiB/,
  });
  await t.rejects(WanModel.load(DIT, { ...LOAD, maxMemory: -5 }), { code: 'WAN_INVALID_OPTION', message: /for maxMemory but received -5/ });
});
