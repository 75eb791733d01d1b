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

// RoPE with RIFLEx as the official rope_params builds its table and the wrapper changes it
// (wanvideo/modules/model.py: inv_theta_pow[k-1] = 0.9 * 2 pi / L_test), then rope_apply, in
// float64: the frame, height and width parts of each head's pairs c = D/2 are c - 2(c/3), c/3, c/3.
function referenceNormRope(x: Float32Array, weight: Float32Array, dim: number, headDim: number, grid: number[],
                           riflex: { freqIndex: number; latentFrames: number }): Float64Array {
  const c = headDim / 2, parts = [c - 2 * Math.floor(c / 3), Math.floor(c / 3), Math.floor(c / 3)];
  const frequencies = parts.map((pairs) => Array.from({ length: pairs }, (_, k) => 1 / Math.pow(10000, (2 * k) / (2 * pairs))));
  frequencies[0][riflex.freqIndex - 1] = (0.9 * 2 * Math.PI) / riflex.latentFrames;
  const [, H, W] = grid, tokens = x.length / dim, out = new Float64Array(x.length);
  for (let l = 0; l < tokens; ++l) {
    const row = x.subarray(l * dim, (l + 1) * dim);
    const rms = Math.sqrt(row.reduce((s, v) => s + v * v, 0) / dim + 1e-6);
    const pos = [Math.floor(l / (H * W)), Math.floor(l / W) % H, l % W];
    for (let h = 0; h < dim / headDim; ++h) {
      let j = 0;
      for (let part = 0; part < 3; ++part) {
        for (let k = 0; k < parts[part]; ++k, ++j) {
          const i = h * headDim + 2 * j, angle = pos[part] * frequencies[part][k];
          const re = (row[i] / rms) * weight[i], im = (row[i + 1] / rms) * weight[i + 1];
          out[l * dim + i] = re * Math.cos(angle) - im * Math.sin(angle);
          out[l * dim + i + 1] = re * Math.sin(angle) + im * Math.cos(angle);
        }
      }
    }
  }
  return out;
}

t.test('RIFLEx: the frame frequency it names is 0.9 x 2 pi / latent frames, as the wrapper sets it', async (t) => {
  const grid = [7, 2, 3], dim = 256, headDim = 128, riflex = { freqIndex: 4, latentFrames: 5 };
  const x = randn([1, 42, dim], 31), weight = randn([dim], 32);
  const expected = referenceNormRope(x.toTypedArray() as Float32Array, weight.toTypedArray() as Float32Array, dim, headDim, grid, riflex);
  for (const how of ['eager', 'reference'] as const) {
    const got = normRope(x, weight, 1e-6, headDim, [grid], how, 'cpu', riflex).toTypedArray() as Float32Array;
    let err = 0;
    got.forEach((v, i) => { err = Math.max(err, Math.abs(v - expected[i])); });
    t.ok(err <= TOLERANCE, `${how}: max abs ${err.toExponential(2)} against the float64 reference <= ${TOLERANCE}`);
  }
  // Frames past the first turn differently without it (frequency 10000^(-6/44) = 0.285 against 1.131).
  t.ok(maxAbsDiff(normRope(x, weight, 1e-6, headDim, [grid], 'eager'), normRope(x, weight, 1e-6, headDim, [grid], 'eager', 'cpu', riflex)) > 0.1,
    'RIFLEx changes the rotation');
  t.throws(() => normRope(x, weight, 1e-6, headDim, [grid], 'eager', 'cpu', { freqIndex: 23, latentFrames: 5 }),
    { code: 'WAN_INVALID_OPTION', message: /Expected riflexFreqIndex in 0\.\.22 \(the frame frequencies of head dim 128\) but received 23/ });
  t.throws(() => normRope(x, weight, 1e-6, headDim, [grid], 'eager', 'cpu', { freqIndex: 6, latentFrames: 0 }),
    { code: 'WAN_INVALID_OPTION', message: /Expected at least 1 latent frame for RIFLEx but received 0/ });
});
