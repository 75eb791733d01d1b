// ops::attention on the CPU: 'flash' and 'sageattn' against 'sdpa' (on libtorch 1.13 the
// float32 reference attention_math), k_lens masking, and the error messages.
import t from 'tap';

import { WanError } from '../../lib/errors';
import { native } from '../../lib/native';
import { attention, AttentionMode } from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import { normals, randn } from '../helpers';

// Tolerances, against 'sdpa' on the same inputs (measured on this CPU, AVX2 kernels):
//  - flash: max |diff| <= 2e-5. Measured 2e-7 to 5.4e-7 on the cases below; up to 1.5e-5 at
//    L = 4096 on other random inputs before its P.V sums were blocked per key tile, 7e-6 since
//    (flash and sdpa are then each within 4e-6 of a float64 reference).
//  - sageattn: cosine >= 0.999 and max |diff| <= 0.05. Measured: cosine 0.99992-0.99998;
//    max |diff| 0.016-0.025 at D = 32 with 8-24 keys (one int8 step is a larger share of a
//    32-term dot product, and few keys make each score matter more) and 0.004-0.009 at D = 128.
const FLASH_MAX_ABS = 2e-5;
const SAGE_MIN_COSINE = 0.999;
const SAGE_MAX_ABS = 0.05;

function lens(values: number[]): Tensor {
  return Tensor.fromTypedArray(BigInt64Array.from(values, BigInt), [values.length]);
}

function values(x: Tensor): Float32Array {
  return x.toTypedArray() as Float32Array;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function cosine(a: Float32Array, b: Float32Array): number {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / Math.sqrt(na * nb);
}

interface Case { name: string; B: number; Lq: number; Lk: number; H: number; D: number; kLens?: number[]; dtype?: 'f32' | 'bf16' }

const cases: Case[] = [
  { name: 'self-attention, tiny model', B: 1, Lq: 18, Lk: 18, H: 2, D: 32 },
  { name: 'padded batch with kLens', B: 2, Lq: 24, Lk: 24, H: 2, D: 32, kLens: [18, 8] },
  { name: 'cross-attention to 16 text tokens', B: 1, Lq: 24, Lk: 16, H: 2, D: 32 },
  { name: 'cross-attention to 257 image tokens, bf16', B: 1, Lq: 24, Lk: 257, H: 2, D: 32, dtype: 'bf16' },
  { name: 'head size not a multiple of 16, odd', B: 1, Lq: 7, Lk: 19, H: 3, D: 33 },
  { name: 'Wan head size, L = 1024', B: 1, Lq: 1024, Lk: 1024, H: 2, D: 128 },
  { name: 'Wan head size, L = 2048, bf16', B: 1, Lq: 2048, Lk: 2048, H: 2, D: 128, dtype: 'bf16' },
];

for (const c of cases) {
  t.test(`${c.name}: B=${c.B} Lq=${c.Lq} Lk=${c.Lk} H=${c.H} D=${c.D}${c.kLens ? ` kLens=[${c.kLens}]` : ''}`, async (t) => {
    const q = randn([c.B, c.Lq, c.H, c.D], 1, c.dtype);
    const k = randn([c.B, c.Lk, c.H, c.D], 2, c.dtype);
    const v = randn([c.B, c.Lk, c.H, c.D], 3, c.dtype);
    const kl = c.kLens ? lens(c.kLens) : undefined;
    const reference = attention(q, k, v, 'sdpa', kl);
    t.same(reference.shape, [c.B, c.Lq, c.H, c.D]);
    t.equal(reference.dtype, 'f32');
    const ref = values(reference);
    t.ok(ref.every(Number.isFinite), 'sdpa: finite');

    const flash = values(attention(q, k, v, 'flash', kl));
    const flashErr = maxAbsDiff(flash, ref);
    t.ok(flashErr <= FLASH_MAX_ABS, `flash: max |diff| ${flashErr.toExponential(2)} <= ${FLASH_MAX_ABS}`);

    const sage = values(attention(q, k, v, 'sageattn', kl));
    const cos = cosine(sage, ref), sageErr = maxAbsDiff(sage, ref);
    t.ok(cos >= SAGE_MIN_COSINE, `sageattn: cosine ${cos.toFixed(6)} >= ${SAGE_MIN_COSINE}`);
    t.ok(sageErr <= SAGE_MAX_ABS, `sageattn: max |diff| ${sageErr.toExponential(2)} <= ${SAGE_MAX_ABS}`);
  });
}

t.test('keys past kLens do not influence any mode, exactly', async (t) => {
  const [B, L, H, D] = [2, 40, 2, 32];
  const kLens = [29, 5];
  const q = randn([B, L, H, D], 11);
  const kData = normals(B * L * H * D, 12), vData = normals(B * L * H * D, 13);
  const k = Tensor.fromTypedArray(kData, [B, L, H, D]);
  const v = Tensor.fromTypedArray(vData, [B, L, H, D]);
  // The same keys and values, with everything past kLens[b] replaced by large other values.
  const k2Data = kData.slice(), v2Data = vData.slice();
  const noise = normals(B * L * H * D, 14);
  for (let b = 0; b < B; b++)
    for (let j = kLens[b]; j < L; j++)
      for (let e = 0; e < H * D; e++) {
        const i = (b * L + j) * H * D + e;
        k2Data[i] = 50 * noise[i];
        v2Data[i] = -1000 * noise[i];
      }
  const k2 = Tensor.fromTypedArray(k2Data, [B, L, H, D]);
  const v2 = Tensor.fromTypedArray(v2Data, [B, L, H, D]);
  for (const mode of ['sdpa', 'flash', 'sageattn'] as AttentionMode[]) {
    const a = values(attention(q, k, v, mode, lens(kLens)));
    const b = values(attention(q, k2, v2, mode, lens(kLens)));
    t.equal(maxAbsDiff(a, b), 0, `${mode}: identical output`);
    // ...and batch entry 1 equals attention over its 5 keys alone.
    const sliceOf = (data: Float32Array, n: number) => {
      const out = new Float32Array(n * H * D);
      out.set(data.subarray(L * H * D, L * H * D + n * H * D));
      return Tensor.fromTypedArray(out, [1, n, H, D]);
    };
    const q1 = Tensor.fromTypedArray(values(q).slice(L * H * D), [1, L, H, D]);
    const alone = values(attention(q1, sliceOf(kData, 5), sliceOf(vData, 5), mode));
    const err = maxAbsDiff(a.subarray(L * H * D), alone);
    // flash slices the keys as this does; libtorch 2.x's SDPA (sdpa there) masks them, which sums
    // the same terms in another order; sageattn's per-block scales see the padding.
    t.ok(err <= (mode === 'flash' ? 0 : 1e-6), `${mode}: batch 1 = attention over its ${kLens[1]} keys (max |diff| ${err})`);
  }
  const i32 = Tensor.fromTypedArray(Int32Array.from(kLens), [B]);
  t.same(values(attention(q, k, v, 'flash', i32)), values(attention(q, k, v, 'flash', lens(kLens))), 'i32 kLens work like i64');
});

t.test('kLens equal to Lk change nothing', async (t) => {
  const q = randn([2, 12, 2, 32], 21), k = randn([2, 20, 2, 32], 22), v = randn([2, 20, 2, 32], 23);
  for (const mode of ['sdpa', 'flash', 'sageattn'] as AttentionMode[])
    t.same(values(attention(q, k, v, mode, lens([20, 20]))), values(attention(q, k, v, mode)), mode);
});

t.test('argument errors name the argument, what was expected and what came', async (t) => {
  const q = randn([1, 18, 2, 32], 31), k = randn([1, 18, 2, 32], 32), v = randn([1, 18, 2, 32], 33);
  const badHeads = randn([1, 18, 3, 32], 34);
  const expect = (fn: () => unknown, code: string, message: RegExp | string, what: string) => {
    let err: unknown;
    try {
      fn();
    } catch (e) {
      err = e;
    }
    t.ok(err instanceof WanError, `${what}: a WanError`);
    t.equal((err as WanError | undefined)?.code, code, `${what}: code`);
    if (typeof message === 'string') t.equal((err as Error | undefined)?.message, message, `${what}: message`);
    else t.match((err as Error | undefined)?.message, message, `${what}: message`);
  };

  // Checked in TypeScript...
  expect(() => attention(q, k, v, 'xformers' as AttentionMode), 'WAN_INVALID_OPTION',
         'Expected one of sdpa, flash, sageattn for mode but received "xformers" of type string', 'bad mode');
  expect(() => attention(q, badHeads, v, 'flash'), 'WAN_INVALID_TENSOR',
         'attention: expected k of shape [1, Lk, 2, 32] to match q [1, 18, 2, 32] but received [1, 18, 3, 32]', 'k heads');
  expect(() => attention(q, k, randn([1, 17, 2, 32], 35), 'flash'), 'WAN_INVALID_TENSOR',
         'attention: expected v of the shape of k [1, 18, 2, 32] but received [1, 17, 2, 32]', 'v length');
  expect(() => attention(randn([18, 2, 32], 36), k, v, 'sdpa'), 'WAN_INVALID_TENSOR',
         'attention: expected a 4-D tensor [B, Lq, H, D] for q but received shape [18, 2, 32]', 'q rank');
  expect(() => attention(q, k, v, 'flash', lens([18, 18])), 'WAN_INVALID_TENSOR',
         'attention: expected an i64 or i32 tensor of shape [1] for kLens but received i64 [2]', 'kLens shape');
  expect(() => attention(q, k, v, 'flash', lens([19])), 'WAN_INVALID_TENSOR',
         'attention: expected kLens values in [1, 18] (Lk) but kLens[0] is 19', 'kLens value');
  expect(() => attention(q, randn([1, 18, 2, 32], 37, 'bf16'), v, 'flash'), 'WAN_INVALID_TENSOR',
         'attention: expected q, k and v of one dtype but received f32, bf16 and f32', 'mixed dtypes');
  expect(() => attention(q, 'k' as unknown as Tensor, v, 'flash'), 'WAN_INVALID_TENSOR',
         'k is not a Tensor (received "k" of type string)', 'not a tensor');

  // ...and again in C++, for callers that bypass lib/ops.ts.
  const h = (x: Tensor, what: string) => Tensor.handle(x, what);
  expect(() => native().attention(h(q, 'q'), h(k, 'k'), h(v, 'v'), 'xformers'), 'WAN_INVALID_OPTION',
         "attentionMode: expected one of sdpa, flash, sageattn but received 'xformers'", 'native: bad mode');
  expect(() => native().attention(h(q, 'q'), h(badHeads, 'k'), h(v, 'v'), 'flash'), 'WAN_INVALID_TENSOR',
         'attention: k must have shape [B, Lk, H, D] = [1, Lk, 2, 32] to match q [1, 18, 2, 32] but got [1, 18, 3, 32]',
         'native: k heads');
  expect(() => native().attention(h(q, 'q'), h(k, 'k'), h(randn([1, 18, 2, 16], 38), 'v'), 'sageattn'), 'WAN_INVALID_TENSOR',
         'attention: v must have the shape of k [1, 18, 2, 32] but got [1, 18, 2, 16]', 'native: v shape');
  expect(() => native().attention(h(q, 'q'), h(k, 'k'), h(v, 'v'), 'sdpa', h(lens([0]), 'kLens')), 'WAN_INVALID_TENSOR',
         'attention: k_lens[0] = 0 is outside [1, Lk = 18]', 'native: kLens value');
  const codes = Tensor.fromTypedArray(new Uint8Array(18 * 2 * 32), [1, 18, 2, 32], 'f8_e4m3fn');
  expect(() => native().attention(h(q, 'q'), h(codes, 'k'), h(v, 'v'), 'flash'), 'WAN_INVALID_TENSOR',
         'attention: k has dtype f8_e4m3fn but attention takes f32, f16 or bf16', 'native: fp8');
});
