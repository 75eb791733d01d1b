// The fused modulation and gated-residual kernels' arithmetic (csrc/ops/adaln_row.h, shared by the
// CUDA kernels and their CPU references) against the engine's eager ops, on the CPU: which
// sample's scale, shift and gate each row takes, rows wider than a kernel block, a row mean far
// from zero, and y in bfloat16. The kernels themselves run in test/gpu/attention.test.ts.
import t from 'tap';

import { fusedOpSeconds, gatedResidual, modulate } from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import { maxAbsDiff, normals, randn } from '../helpers';

// The reference sums a row in float32 in order, the eager layer_norm with Welford's updates: the
// mean and the inverse deviation differ by an ulp or so, on outputs of order 1 to 10.
const TOLERANCE = 1e-5;

// normals scaled and offset, so that rows have a mean away from zero and a spread other than 1.
function values(shape: number[], seed: number, scale: number, offset: number): Tensor {
  const v = normals(shape.reduce((a, b) => a * b, 1), seed).map((x) => offset + scale * x);
  return Tensor.fromTypedArray(v, shape);
}

const CASES: { name: string; shape: number[] }[] = [
  { name: 'one sample, a row narrower than a kernel block', shape: [1, 12, 96] },
  { name: 'two samples with their own scale and shift', shape: [2, 9, 200] },
  { name: 'the 1.3B width (6 elements a thread)', shape: [1, 5, 1536] },
  { name: 'a width that is not a multiple of the block', shape: [3, 4, 777] },
];

t.test('the modulation kernel arithmetic equals layer_norm, mul_ and add_', async (t) => {
  CASES.forEach(({ name, shape }, i) => {
    const [B, , dim] = shape;
    const x = values(shape, 10 + i, 2.5, 3), scale = values([B, 1, dim], 20 + i, 0.3, 0), shift = values([B, 1, dim], 30 + i, 0.5, 0);
    const eager = modulate(x, scale, shift, 1e-6, 'eager');
    const reference = modulate(x, scale, shift, 1e-6, 'reference');
    t.same(reference.shape, shape, `${name}: shape`);
    const err = maxAbsDiff(reference, eager);
    t.ok(err <= TOLERANCE, `${name}: max abs ${err.toExponential(2)} <= ${TOLERANCE}`);
    // Each sample takes its own row: swapping the samples' scales changes the result.
    if (B > 1) {
      const swapped = Tensor.fromTypedArray(new Float32Array([...scale.toTypedArray() as Float32Array].reverse()), [B, 1, dim]);
      t.ok(maxAbsDiff(modulate(x, swapped, shift, 1e-6, 'reference'), eager) > 0.1, `${name}: per-sample scale`);
    }
  });
});

t.test('the gated residual kernel arithmetic is bitwise the eager mul and add', async (t) => {
  CASES.forEach(({ name, shape }, i) => {
    const [B, , dim] = shape;
    const x = randn(shape, 40 + i), gate = values([B, 1, dim], 50 + i, 0.7, 0.1);
    for (const dtype of ['f32', 'bf16'] as const) {
      const y = randn(shape, 60 + i, dtype);
      const eager = gatedResidual(x, y, gate, 'eager');
      const reference = gatedResidual(x, y, gate, 'reference');
      t.equal(maxAbsDiff(reference, eager), 0, `${name}, y ${dtype}: bitwise equal`);
      t.ok(maxAbsDiff(eager, x) > 0.1, `${name}, y ${dtype}: y was added`);
    }
  });
});

t.test('shapes that do not fit are refused with their names', async (t) => {
  const x = randn([2, 3, 8], 1), row = randn([2, 1, 8], 2), wrong = randn([1, 1, 8], 3);
  t.throws(() => modulate(x, wrong, row, 1e-6, 'reference'), { message: /modulate_reference: scale must be \[2, 1, 8\] for x \[2, 3, 8\], got \[1, 1, 8\]/ });
  t.throws(() => gatedResidual(x, randn([2, 3, 4], 4), row, 'reference'), { message: /gated_residual_reference: y must be \[2, 3, 8\] like x, got \[2, 3, 4\]/ });
  t.throws(() => gatedResidual(x, x, wrong, 'reference'), { message: /gate must be \[2, 1, 8\]/ });
});

t.test('the fused kernels need a GPU, and say so', async (t) => {
  const x = randn([1, 4, 64], 1), row = randn([1, 1, 64], 2);
  t.throws(() => modulate(x, row, row, 1e-6, 'fused'), { message: /modulate: the fused kernel does not run here \(cpu\)/ });
  t.throws(() => gatedResidual(x, x, row, 'fused'), { message: /gatedResidual: the fused kernel does not run here \(cpu\)/ });
  t.throws(() => modulate(x, row, row, 1e-6, 'sideways' as never), { message: /expected 'eager', 'reference' or 'fused' but received 'sideways'/ });
});

t.test('fusedOpSeconds times each chain the eager way here, and refuses the fused one without a GPU', async (t) => {
  const dims = { dim: 64, headDim: 32, ffnDim: 128 };
  for (const op of ['normRope', 'modulate', 'gatedResidual', 'linearGelu'] as const) {
    const seconds = fusedOpSeconds(op, 'eager', [2, 3, 4], dims, 3, 'cpu');
    t.ok(seconds.length === 3 && seconds.every((s) => s > 0 && s < 10), `${op}: 3 timings, each in (0, 10) s`);
    t.throws(() => fusedOpSeconds(op, 'fused', [2, 3, 4], dims, 1, 'cpu'), { message: /fusedOpSeconds: the fused kernel does not run here \(cpu\)/ }, op);
  }
  t.throws(() => fusedOpSeconds('softmax' as never, 'eager', [1, 1, 1], dims, 1, 'cpu'), { message: /expected 'normRope', 'modulate', 'gatedResidual' or 'linearGelu' but received 'softmax'/ });
});
