// The fused q/k RMS norm + RoPE kernel's arithmetic (csrc/ops/norm_rope_row.h, shared by the CUDA
// kernel and its CPU reference) against the engine's eager rms_norm and rope_apply, on the CPU:
// which grid position and which angle each pair takes, padding tokens, several samples. The
// kernel itself runs in test/gpu/attention.test.ts.
import t from 'tap';

import { normRope } from '../../lib/ops';
import { maxAbsDiff, randn } from '../helpers';

// The reference sums a row's squares in float32 in order, the eager CPU loop in float64: the
// normalisation differs by an ulp or so, on values of order 1.
const TOLERANCE = 1e-5;

const CASES: { name: string; shape: number[]; headDim: number; grids: number[][] | null }[] = [
  { name: 'Wan head dim 128, 2 heads, a 2x3x4 grid', shape: [1, 24, 256], headDim: 128, grids: [[2, 3, 4]] },
  { name: 'head dim 32, 3 heads, padding past the grid', shape: [1, 40, 96], headDim: 32, grids: [[3, 2, 5]] },
  { name: 'two samples with their own grids, padded to one length', shape: [2, 36, 128], headDim: 64, grids: [[1, 6, 6], [4, 2, 3]] },
  { name: 'positions past the first rows of the table (grid 5x7x9)', shape: [1, 315, 64], headDim: 64, grids: [[5, 7, 9]] },
  { name: 'the norm alone (cross-attention q)', shape: [2, 10, 192], headDim: 64, grids: null },
];

t.test('the kernel arithmetic equals rms_norm then rope_apply', async (t) => {
  CASES.forEach(({ name, shape, headDim, grids }, i) => {
    const x = randn(shape, 10 + i), weight = randn([shape[2]], 20 + i);
    const eager = normRope(x, weight, 1e-6, headDim, grids, 'eager');
    const reference = normRope(x, weight, 1e-6, headDim, grids, 'reference');
    t.same(reference.shape, shape, `${name}: shape`);
    const err = maxAbsDiff(reference, eager);
    t.ok(err <= TOLERANCE, `${name}: max abs ${err.toExponential(2)} <= ${TOLERANCE}`);
    // RoPE did turn the pairs: the norm alone differs from it where a grid is given.
    if (grids) t.ok(maxAbsDiff(normRope(x, weight, 1e-6, headDim, null, 'reference'), eager) > 0.1, `${name}: rotated`);
  });
});

t.test('a grid past the angle table is refused, by each way alike', async (t) => {
  const x = randn([1, 4, 64], 1), weight = randn([64], 2);
  for (const how of ['eager', 'reference'] as const)
    t.throws(() => normRope(x, weight, 1e-6, 64, [[1, 2000, 2]], how), { message: /rope: a grid of 2000 positions exceeds the 1024 the table covers/ }, how);
});

t.test('the fused kernel needs a GPU, and says so', async (t) => {
  const x = randn([1, 4, 64], 1), weight = randn([64], 2);
  t.throws(() => normRope(x, weight, 1e-6, 64, [[1, 2, 2]], 'fused'), { message: /the fused kernel does not run here \(cpu\)/ });
});
