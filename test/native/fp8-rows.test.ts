// The fp8 matmuls' per-row activation quantisation (csrc/ops/fp8_rows.*): its CPU reference, whose
// arithmetic the CUDA kernel shares (ops/fp8_rows_row.h) and which test/gpu/attention.test.ts
// holds the kernel to, code for code. Here: each row's scale maps its own largest magnitude to
// 448, the codes decode to the row within e4m3fn's precision, and padding rows are inert.
import t from 'tap';

import { fp8Rows } from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import { decodeE4m3fn, normals } from '../helpers';

t.test('each row its own scale (amax -> 448), codes within e4m3fn precision of the row, zero and padding rows inert', async (t) => {
  const [M, cols, rows] = [5, 64, 16];
  const v = normals(M * cols, 7);
  for (let c = 0; c < cols; c++) { v[1 * cols + c] *= 1000; v[3 * cols + c] = 0; }  // row 1 an outlier, row 3 zeros
  const x = Tensor.fromTypedArray(v, [M, cols], 'bf16');
  const values = x.toTypedArray() as Float32Array;  // as rounded to bf16
  const { codes, scales } = fp8Rows(x, rows, 'reference');
  t.same(codes.shape, [rows, cols], 'codes [rows, cols]');
  t.same(scales.shape, [rows, 1], 'scales [rows, 1]');
  const q = codes.toTypedArray() as Uint8Array, s = scales.toTypedArray() as Float32Array;
  for (let r = 0; r < M; r++) {
    const row = values.subarray(r * cols, (r + 1) * cols);
    const amax = row.reduce((m, a) => Math.max(m, Math.abs(a)), 0);
    if (amax === 0) {
      t.equal(s[r], Math.fround(1e-12), `row ${r} (zeros): scale 1e-12`);
      t.ok(q.subarray(r * cols, (r + 1) * cols).every((c) => c === 0), `row ${r} (zeros): codes 0`);
      continue;
    }
    t.ok(Math.abs(s[r] - amax / 448) <= amax / 448 * 2 ** -23, `row ${r}: scale ${s[r].toExponential(4)} = amax / 448`);
    let worst = 0, top = 0;
    for (let c = 0; c < cols; c++) {
      const code = q[r * cols + c];
      worst = Math.max(worst, Math.abs(decodeE4m3fn(code) * s[r] - row[c]));
      if ((code & 0x7f) === 0x7e) top++;
    }
    // Round to nearest: half a step of 3 mantissa bits, 2^-4 of the value, at most 2^-4 of amax.
    t.ok(worst <= amax * 2 ** -4, `row ${r}: max abs error ${worst.toExponential(2)} <= amax * 2^-4 (${(amax * 2 ** -4).toExponential(2)})`);
    t.ok(top >= 1, `row ${r}: its largest magnitude codes to +-448`);
  }
  for (let r = M; r < rows; r++) {
    t.equal(s[r], 1, `padding row ${r}: scale 1`);
    t.ok(q.subarray(r * cols, (r + 1) * cols).every((c) => c === 0), `padding row ${r}: codes 0`);
  }
});

t.test('bad shapes are refused, and the kernel needs a GPU', async (t) => {
  const x = Tensor.fromTypedArray(normals(8, 1), [2, 4], 'bf16');
  t.throws(() => fp8Rows(x, 1, 'reference'), { message: /quantize_fp8_rows_reference: expected x \[M, cols\] and rows >= M, got 2 dimensions and rows 1/ });
  t.throws(() => fp8Rows(x, 16, 'fused'), { message: /fp8Rows: the fused kernel does not run here \(cpu\)/ });
  t.throws(() => fp8Rows(x, 16, 'eager' as never), { message: /fp8Rows: expected 'reference' or 'fused' but received 'eager'/ });
});
