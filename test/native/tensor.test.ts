// Tensors across the JS/C++ boundary: dtypes, zero-copy, exact fp8 decoding, disposal, GC.
import t from 'tap';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';

import { Tensor, WanError } from '../../lib/index';
import { toNumbers } from '../helpers';

t.test('typed arrays round-trip in their natural dtype', async (t) => {
  const cases: [ArrayBufferView & ArrayLike<number | bigint>, string][] = [
    [new Float32Array([1.5, -2, 3.25, 1e-40]), 'f32'],
    [new Float64Array([1.5, -2, Math.PI, 5e-324]), 'f64'],
    [new Int32Array([1, -2, 2147483647, -2147483648]), 'i32'],
    [new BigInt64Array([1n, -2n, 9007199254740993n, -9223372036854775808n]), 'i64'],
    [new Int16Array([1, -2, 32767, -32768]), 'i16'],
    [new Int8Array([1, -2, 127, -128]), 'i8'],
    [new Uint8Array([0, 1, 200, 255]), 'u8'],
  ];
  for (const [data, dtype] of cases) {
    const x = Tensor.fromTypedArray(data as any, [2, 2]);
    t.equal(x.dtype, dtype);
    t.same(x.shape, [2, 2]);
    const back = x.toTypedArray();
    t.equal(back.constructor, data.constructor, `${dtype} comes back as ${data.constructor.name}`);
    t.same(Array.from(back as any), Array.from(data as any), `${dtype} values`);
  }
});

t.test('the natural dtype shares memory; a converted one is a copy', async (t) => {
  const data = new Float32Array([1, 2, 3, 4]);
  const shared = Tensor.fromTypedArray(data, [4]);
  const copied = Tensor.fromTypedArray(data, [4], 'f64');
  data[0] = 42;
  t.equal(shared.toTypedArray()[0], 42, 'zero-copy tensor sees the write');
  t.equal(copied.toTypedArray()[0], 1, 'converted tensor does not');
  t.type(copied.toTypedArray(), Float64Array);
});

t.test('f16 and bf16 from raw bits decode exactly', async (t) => {
  // f16: 1, -2, 65504 (max), 2^-24 (smallest subnormal), inf, NaN
  const f16 = Tensor.fromTypedArray(new Uint16Array([0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00, 0x7e00]), [6], 'f16');
  const v = f16.toTypedArray() as Float32Array;
  t.same(Array.from(v.subarray(0, 5)), [1, -2, 65504, 2 ** -24, Infinity]);
  t.ok(Number.isNaN(v[5]));
  // bf16: 1, -2, 2^-133 (smallest subnormal), 3.140625
  const bf16 = Tensor.fromTypedArray(new Uint16Array([0x3f80, 0xc000, 0x0001, 0x4049]), [4], 'bf16');
  t.same(toNumbers(bf16.toTypedArray()), [1, -2, 2 ** -133, 3.140625]);
  t.equal(bf16.dtype, 'bf16');
});

t.test('f32 converts to bf16 with round-to-nearest-even', async (t) => {
  const x = Tensor.fromTypedArray(new Float32Array([1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -7]), [3], 'bf16');
  t.same(toNumbers(x.toTypedArray()), [1, 1 + 2 ** -6, 1 + 2 ** -7]);
});

// Independent decoders written from the OCP fp8 definitions, to check the C++ tables.
function e4m3fn(code: number): number {
  const sign = code & 0x80 ? -1 : 1;
  const e = (code >> 3) & 0xf, m = code & 7;
  if (e === 15 && m === 7) return NaN;
  return sign * (e === 0 ? (m / 8) * 2 ** -6 : (1 + m / 8) * 2 ** (e - 7));
}
function e5m2(code: number): number {
  const sign = code & 0x80 ? -1 : 1;
  const e = (code >> 2) & 0x1f, m = code & 3;
  if (e === 31) return m === 0 ? sign * Infinity : NaN;
  return sign * (e === 0 ? (m / 4) * 2 ** -14 : (1 + m / 4) * 2 ** (e - 15));
}

t.test('fp8 codes decode exactly, all 256 of each format', async (t) => {
  const codes = Uint8Array.from({ length: 256 }, (_, i) => i);
  for (const [dtype, ref] of [['f8_e4m3fn', e4m3fn], ['f8_e5m2', e5m2]] as const) {
    const x = Tensor.fromTypedArray(codes, [16, 16], dtype);
    t.equal(x.dtype, dtype);
    const got = toNumbers(x.toTypedArray());
    const want = Array.from(codes, ref);
    const mismatches = got.filter((g, i) => !(Object.is(g, want[i]) || (Number.isNaN(g) && Number.isNaN(want[i]))));
    t.equal(mismatches.length, 0, `${dtype}: every code matches the definition`);
  }
  t.equal(e4m3fn(0x7e), 448);
  t.equal(e5m2(0x7b), 57344);
});

t.test('bool from bytes normalises to 0/1', async (t) => {
  const x = Tensor.fromTypedArray(new Uint8Array([0, 1, 7, 0]), [4], 'bool');
  t.equal(x.dtype, 'bool');
  t.same(toNumbers(x.toTypedArray()), [0, 1, 1, 0]);
});

t.test('empty and scalar shapes', async (t) => {
  t.same(Tensor.fromTypedArray(new Float32Array(0), [0, 3]).shape, [0, 3]);
  const s = Tensor.fromTypedArray(new Float32Array([7]), []);
  t.same(s.shape, []);
  t.same(toNumbers(s.toTypedArray()), [7]);
});

t.test('bad arguments name the option, the expectation and what came', async (t) => {
  t.throws(() => Tensor.fromTypedArray(new Float32Array(6), [2, 2]),
    { code: 'WAN_INVALID_OPTION', message: 'Expected data of 4 elements for shape [2, 2] but received 6' });
  t.throws(() => Tensor.fromTypedArray(new Float32Array(4), [2, -2]),
    { code: 'WAN_INVALID_OPTION', message: /Expected an array of non-negative integers for shape but received an array of length 2/ });
  t.throws(() => Tensor.fromTypedArray(new Float32Array(4), [4], 'f7' as any),
    { code: 'WAN_INVALID_OPTION', message: /Expected one of f64, f32, .* for dtype but received "f7" of type string/ });
  t.throws(() => Tensor.fromTypedArray(new Uint16Array(4), [4]),
    { code: 'WAN_INVALID_OPTION', message: /raw bits of a Uint16Array/ });
  t.throws(() => Tensor.fromTypedArray(new Uint16Array(4), [4], 'f32'),
    { code: 'WAN_INVALID_OPTION', message: /Uint16Array holds raw f16 or bf16 bits, not f32/ });
  t.throws(() => Tensor.fromTypedArray(new Float32Array(4), [4], 'f8_e4m3fn'),
    { code: 'WAN_INVALID_OPTION', message: /converting f32 to f8_e4m3fn is not supported/ });
  t.throws(() => Tensor.fromTypedArray([1, 2] as any, [2]), { code: 'WAN_INVALID_OPTION', message: /Expected a typed array for data/ });
});

t.test('dispose frees the tensor and later use is a clear error', async (t) => {
  const x = Tensor.fromTypedArray(new Float32Array([1, 2]), [2]);
  t.equal(x.disposed, false);
  x.dispose();
  t.equal(x.disposed, true);
  const err = t.throws(() => x.toTypedArray()) as WanError;
  t.ok(err instanceof WanError);
  t.equal(err.code, 'WAN_INVALID_TENSOR');
  t.match(err.message, /has been disposed/);
  x.dispose();  // twice is harmless
});

t.test('native memory is freed by dispose() and when JS lets go', async (t) => {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  const source = new Float32Array(16 << 20);  // 64 MiB
  const rssMiB = () => process.memoryUsage().rss / 2 ** 20;
  // Each conversion allocates 128 MiB of native f64 storage: 5 GiB over 40 turns if leaked.
  const warm = Tensor.fromTypedArray(source, [16 << 20], 'f64');
  warm.dispose();
  let before = rssMiB();
  for (let i = 0; i < 40; i++) Tensor.fromTypedArray(source, [16 << 20], 'f64').dispose();
  let grown = rssMiB() - before;
  t.ok(grown < 256, `dispose(): resident memory grew by ${grown.toFixed(0)} MiB over 40 x 128 MiB`);

  // Without dispose(), the garbage collector frees them; Node runs native finalizers
  // between event-loop turns, so the loop yields as an async program would.
  gc();
  before = rssMiB();
  for (let i = 0; i < 40; i++) {
    const x = Tensor.fromTypedArray(source, [16 << 20], 'f64');
    t.equal(x.shape[0], 16 << 20);
    gc();
    await new Promise((r) => setImmediate(r));
  }
  grown = rssMiB() - before;
  t.ok(grown < 1024, `GC: resident memory grew by ${grown.toFixed(0)} MiB over 40 x 128 MiB`);
});

t.test('values read back through toNumbers helper', async (t) => {
  t.same(toNumbers(new BigInt64Array([3n])), [3]);
});

t.test('shape and dtype are read-only at run time, as their types say', async (t) => {
  const x = Tensor.fromTypedArray(new Float32Array([1, 2, 3, 4]), [2, 2]);
  t.throws(() => { (x.shape as number[])[0] = 99; }, TypeError, 'shape entries');
  t.throws(() => { (x as { shape: number[] }).shape = [4]; }, TypeError, 'shape');
  t.throws(() => { (x as { dtype: string }).dtype = 'i64'; }, TypeError, 'dtype');
  t.same([x.shape, x.dtype, x.numel], [[2, 2], 'f32', 4]);
});
