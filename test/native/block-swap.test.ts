// Block swap on the CPU: swapped blocks are widened a whole block at a time (prefetched on
// worker threads when asked) instead of weight by weight; every setting gives the same bits.
import t from 'tap';
import * as path from 'node:path';

import { loadSafetensors, Tensor, WanModel } from '../../lib/index';
import type { Quantization, WanForwardInput } from '../../lib/index';
import { goldenDir, maxAbsDiff, toNumbers, weightsDir } from '../helpers';

const tiny = { numHeads: 2, textLen: 16 };

async function inputs(): Promise<WanForwardInput[]> {
  const g = (await loadSafetensors(path.join(goldenDir, 'golden_dit_t2v.safetensors'))).tensors;
  return ['a', 'b', 'c'].map((c) => ({
    x: [g.get(`${c}.x`)!], t: g.get(`${c}.t`)!, context: [g.get(`${c}.context`)!],
    seqLen: Number(toNumbers(g.get(`${c}.seq_len`)!.toTypedArray())[0]),
  }));
}

t.test('swap on/off and prefetch on/off give bitwise equal outputs', async (t) => {
  const cases = await inputs();
  for (const [file, quantization] of [['bf16', 'disabled'], ['f32', 'fp8_e4m3fn_scaled'], ['bf16', 'fp8_e5m2']] as [string, Quantization][]) {
    const model = await WanModel.load(path.join(weightsDir, `tiny_t2v_dit.${file}.safetensors`), { ...tiny, quantization });
    const reference: Tensor[] = [];
    for (const input of cases) reference.push((await model.forward(input))[0]);
    for (const [blocksToSwap, prefetchBlocks] of [[1, 0], [2, 0], [1, 1], [2, 1], [2, 2], [2, 5]]) {
      model.setBlockSwap({ blocksToSwap, prefetchBlocks });
      t.match(model.config, { blocksToSwap, prefetchBlocks });
      for (const [i, input] of cases.entries()) {
        const [out] = await model.forward(input);
        t.equal(maxAbsDiff(out, reference[i]), 0, `${file} ${quantization}, swap ${blocksToSwap}, prefetch ${prefetchBlocks}, case ${'abc'[i]}: identical`);
      }
    }
    model.dispose();
  }
  const loaded = await WanModel.load(path.join(weightsDir, 'tiny_t2v_dit.bf16.safetensors'), { ...tiny, blockSwap: { blocksToSwap: 2, prefetchBlocks: 1 } });
  t.match(loaded.config, { blocksToSwap: 2, prefetchBlocks: 1 }, 'blockSwap at load');
  const [out] = await loaded.forward(cases[0]);
  const plain = await WanModel.load(path.join(weightsDir, 'tiny_t2v_dit.bf16.safetensors'), tiny);
  t.equal(maxAbsDiff(out, (await plain.forward(cases[0]))[0]), 0, 'equal to the model loaded without swap');
});

t.test('block swap options are validated', async (t) => {
  const file = path.join(weightsDir, 'tiny_t2v_dit.bf16.safetensors');
  await t.rejects(WanModel.load(file, { ...tiny, blockSwap: { blocksToSwap: 3 } }),
    { code: 'WAN_INVALID_OPTION', message: /blocksToSwap: expected 0\.\.2 \(the model's blocks\) but received 3/ });
  await t.rejects(WanModel.load(file, { ...tiny, blockSwap: { blocksToSwap: -1 } }),
    { code: 'WAN_INVALID_OPTION', message: /non-negative integer for blockSwap.blocksToSwap but received -1/ });
  const model = await WanModel.load(file, tiny);
  t.throws(() => model.setBlockSwap({ prefetchBlocks: 1.5 }), { code: 'WAN_INVALID_OPTION', message: /blockSwap.prefetchBlocks/ });
  t.throws(() => model.setBlockSwap({ useNonBlocking: 'yes' as never }), { code: 'WAN_INVALID_OPTION', message: /blockSwap.useNonBlocking/ });
});

t.test('a call aborted before it starts leaves a prefetching model usable', async (t) => {
  const [input] = await inputs();
  const model = await WanModel.load(path.join(weightsDir, 'tiny_t2v_dit.bf16.safetensors'), { ...tiny, blockSwap: { blocksToSwap: 2, prefetchBlocks: 2 } });
  const controller = new AbortController();
  controller.abort();
  await t.rejects(model.forward(input, { signal: controller.signal }), { code: 'WAN_ABORTED' });
  const [out] = await model.forward(input);
  t.ok(toNumbers(out.toTypedArray()).every(Number.isFinite));
});
