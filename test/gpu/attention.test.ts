// The CUDA attention kernels ('flash', 'sageattn'), libtorch's CUDA SDPA, the fused kernels of
// `compile` (q/k norm + RoPE, modulation, gated residual) and the fp8 matmuls' activation
// quantisation against the eager ops and the CPU's references on the same inputs. Runs where the addon was
// built against a CUDA libtorch and sees a GPU; skips itself elsewhere.
import t from 'tap';

import { runtimeInfo } from '../../lib/index';
import { attention, AttentionMode, fp8Rows, gatedResidual, modulate, normRope } from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import { maxAbsDiff, normals, randn } from '../helpers';

const skip = runtimeInfo().cuda ? false : 'no CUDA GPU';

// Tolerances against the CPU reference. f32 inputs: the kernels accumulate in float32, so only
// the order of the sums differs (2e-5, as the CPU flash kernel's bound). bf16 inputs: the output
// comes back rounded to bf16 (2^-9 relative), so max |diff| <= 1e-2 on outputs of magnitude
// below 1, and cosine >= 0.9999. sageattn: int8 Q.K^T, as on the CPU (cosine >= 0.999, 0.05).
const TOLERANCE: Record<'f32' | 'bf16', Record<AttentionMode, { maxAbs: number; cosine: number }>> = {
  f32: { sdpa: { maxAbs: 2e-5, cosine: 0.99999 }, flash: { maxAbs: 2e-5, cosine: 0.99999 }, sageattn: { maxAbs: 5e-2, cosine: 0.999 } },
  bf16: { sdpa: { maxAbs: 1e-2, cosine: 0.9999 }, flash: { maxAbs: 1e-2, cosine: 0.9999 }, sageattn: { maxAbs: 5e-2, cosine: 0.999 } },
};

// A float32 value rounded to bfloat16 (round to nearest, ties to even), as a float32 again.
function bf16RoundedNearestEven(value: number): number {
  const bits = new Uint32Array(new Float32Array([value]).buffer);
  bits[0] = (bits[0] + 0x7fff + ((bits[0] >>> 16) & 1)) & 0xffff0000;
  return new Float32Array(bits.buffer)[0];
}

function cosine(a: Tensor, b: Tensor): number {
  const x = a.toTypedArray() as Float32Array, y = b.toTypedArray() as Float32Array;
  let xy = 0, xx = 0, yy = 0;
  for (let i = 0; i < x.length; i++) { xy += x[i] * y[i]; xx += x[i] * x[i]; yy += y[i] * y[i]; }
  return xy / Math.sqrt(xx * yy);
}

interface Case { name: string; B: number; Lq: number; Lk: number; H: number; D: number; kLens?: number[]; dtype: 'f32' | 'bf16' }
const cases: Case[] = [
  { name: 'tiny model heads', B: 1, Lq: 18, Lk: 18, H: 2, D: 32, dtype: 'f32' },
  { name: 'padded batch with kLens', B: 2, Lq: 100, Lk: 100, H: 2, D: 64, kLens: [77, 9], dtype: 'f32' },
  { name: 'cross-attention to 512 text tokens', B: 1, Lq: 300, Lk: 512, H: 4, D: 128, dtype: 'bf16' },
  { name: 'cross-attention to 257 image tokens', B: 1, Lq: 130, Lk: 257, H: 2, D: 128, dtype: 'bf16' },
  { name: 'Wan head size, L = 2048', B: 1, Lq: 2048, Lk: 2048, H: 2, D: 128, dtype: 'bf16' },
  { name: 'Wan head size, L = 1500 with kLens', B: 2, Lq: 1500, Lk: 1500, H: 2, D: 128, kLens: [1500, 1023], dtype: 'bf16' },
];

for (const c of cases) {
  t.test(`${c.name}: B=${c.B} Lq=${c.Lq} Lk=${c.Lk} H=${c.H} D=${c.D} ${c.dtype}`, { skip }, async (t) => {
    const q = randn([c.B, c.Lq, c.H, c.D], 101, c.dtype);
    const k = randn([c.B, c.Lk, c.H, c.D], 102, c.dtype);
    const v = randn([c.B, c.Lk, c.H, c.D], 103, c.dtype);
    const kl = c.kLens ? Tensor.fromTypedArray(BigInt64Array.from(c.kLens, BigInt), [c.B]) : undefined;
    const reference = attention(q, k, v, 'sdpa', kl, 'cpu');
    for (const mode of ['sdpa', 'flash', 'sageattn'] as AttentionMode[]) {
      const out = attention(q, k, v, mode, kl, 'cuda');
      t.same(out.shape, reference.shape);
      const err = maxAbsDiff(out, reference), cos = cosine(out, reference);
      const tol = TOLERANCE[c.dtype][mode];
      t.ok(Number.isFinite(err) && err <= tol.maxAbs, `${mode}: max |diff| ${err.toExponential(2)} <= ${tol.maxAbs}`);
      t.ok(cos >= tol.cosine, `${mode}: cosine ${cos.toFixed(7)} >= ${tol.cosine}`);
    }
  });
}

t.test('the fused q/k RMS norm + RoPE kernel (compile) against the eager ops on the GPU and the CPU', { skip }, async (t) => {
  // Float32 in and out: only the order of a row's sum of squares differs (1e-5 on values of
  // order 1). A 1.3B-sized row (dim 1536, 12 heads of 128) and a batch with padding.
  const cases: { shape: number[]; headDim: number; grids: number[][] | null; riflex?: { freqIndex: number; latentFrames: number } }[] = [
    { shape: [1, 2 * 3 * 4, 1536], headDim: 128, grids: [[2, 3, 4]] },
    { shape: [2, 40, 256], headDim: 128, grids: [[3, 2, 5], [1, 4, 4]] },
    { shape: [2, 17, 1536], headDim: 128, grids: null },
    { shape: [1, 7 * 2 * 3, 256], headDim: 128, grids: [[7, 2, 3]], riflex: { freqIndex: 6, latentFrames: 21 } },
  ];
  cases.forEach(({ shape, headDim, grids, riflex }, i) => {
    const x = randn(shape, 30 + i), weight = randn([shape[2]], 40 + i);
    const fused = normRope(x, weight, 1e-6, headDim, grids, 'fused', 'cuda', riflex);
    for (const [what, want] of [['eager on the GPU', normRope(x, weight, 1e-6, headDim, grids, 'eager', 'cuda', riflex)],
      ['eager on the CPU', normRope(x, weight, 1e-6, headDim, grids, 'eager', 'cpu', riflex)]] as const) {
      const err = maxAbsDiff(fused, want);
      t.ok(err <= 1e-5, `[${shape}] head dim ${headDim}${grids ? '' : ', no RoPE'}${riflex ? ', RIFLEx' : ''}: fused vs ${what} max abs ${err.toExponential(2)} <= 1e-5`);
    }
  });
});

t.test('the fused modulation and gated residual kernels (compile) against the eager ops on the GPU and the CPU', { skip }, async (t) => {
  // Modulation, float32 out: only how a row's mean and variance are summed differs (1e-5 on
  // outputs of order 1 to 10). bfloat16 out: the same arithmetic rounded once at the end, so
  // each value is the kernel's float32 result rounded to nearest even, within half a bf16 ulp
  // (at most 2^-8 of the value: bf16 keeps 8 significant bits).
  // Gated residual: the same mul and add, bitwise.
  const spread = (shape: number[], seed: number, scale: number, offset: number) =>
    Tensor.fromTypedArray(normals(shape.reduce((a, b) => a * b, 1), seed).map((v) => offset + scale * v), shape);
  for (const shape of [[1, 24, 1536], [2, 33, 5120], [3, 7, 200]]) {
    const [B, , dim] = shape;
    const x = spread(shape, 70 + dim, 2.5, 3), scale = spread([B, 1, dim], 71, 0.3, 0), shift = spread([B, 1, dim], 72, 0.5, 0);
    const fused = modulate(x, scale, shift, 1e-6, 'fused', 'cuda');
    for (const [what, want] of [['eager on the GPU', modulate(x, scale, shift, 1e-6, 'eager', 'cuda')],
      ['eager on the CPU', modulate(x, scale, shift, 1e-6, 'eager')]] as const) {
      const err = maxAbsDiff(fused, want);
      t.ok(err <= 1e-5, `modulate [${shape}]: fused vs ${what} max abs ${err.toExponential(2)} <= 1e-5`);
    }
    const wide = fused.toTypedArray() as Float32Array, narrow = modulate(x, scale, shift, 1e-6, 'fused', 'cuda', 'bf16').toTypedArray() as Float32Array;
    let worst = 0, notRounded = 0;
    for (let i = 0; i < wide.length; i++) {
      worst = Math.max(worst, Math.abs(narrow[i] - wide[i]) / Math.max(Math.abs(wide[i]), 1e-30));
      if (narrow[i] !== bf16RoundedNearestEven(wide[i])) notRounded++;
    }
    t.ok(worst <= 2 ** -8, `modulate [${shape}] to bf16: max relative ${worst.toExponential(2)} <= ${(2 ** -8).toExponential(2)}`);
    t.equal(notRounded, 0, `modulate [${shape}] to bf16: each value is the float32 result rounded to nearest even`);

    const gate = spread([B, 1, dim], 73, 0.7, 0.1);
    for (const dtype of ['f32', 'bf16'] as const) {
      const y = randn(shape, 74, dtype);
      const got = gatedResidual(x, y, gate, 'fused', 'cuda');
      t.equal(maxAbsDiff(got, gatedResidual(x, y, gate, 'eager', 'cuda')), 0, `gated residual [${shape}], y ${dtype}: bitwise the eager ops on the GPU`);
      t.equal(maxAbsDiff(got, gatedResidual(x, y, gate, 'eager')), 0, `gated residual [${shape}], y ${dtype}: bitwise the eager ops on the CPU`);
    }
  }
});

t.test('the fp8 activation quantisation kernel: codes and scales equal the CPU reference', { skip }, async (t) => {
  // The same float32 division and round-to-nearest-even e4m3fn cast, so code for code.
  for (const [M, cols, dtype] of [[2047, 1536, 'bf16'], [33, 8960, 'f16'], [16, 64, 'bf16']] as const) {
    const x = Tensor.fromTypedArray(normals(M * cols, M).map((v, i) => (i % 97 === 0 ? 40 * v : v)), [M, cols], dtype);
    const rows = Math.ceil(M / 16) * 16;
    const got = fp8Rows(x, rows, 'fused', 'cuda'), want = fp8Rows(x, rows, 'reference');
    t.equal(maxAbsDiff(got.scales, want.scales), 0, `[${M}, ${cols}] ${dtype}: scales equal`);
    const a = got.codes.toTypedArray() as Uint8Array, b = want.codes.toTypedArray() as Uint8Array;
    let differ = 0;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) differ++;
    t.equal(differ, 0, `[${M}, ${cols}] ${dtype}: all ${a.length} codes equal (rows padded to ${rows})`);
  }
});
