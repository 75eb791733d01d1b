// fp8 activations for the fp8 matmuls (ops/fp8_matmul.h): e4m3fn codes with one float32 scale
// per row (token), its largest magnitude mapped to 448.
#pragma once
#include <ATen/ATen.h>

namespace wan::ops {

struct Fp8Rows {
  at::Tensor codes;   // [rows, cols] uint8 e4m3fn codes
  at::Tensor scales;  // [rows, 1] float32: row r's values are decode(codes[r]) * scales[r]
};

// x [M, cols] (bf16 or fp16, on a GPU) quantised by one kernel (ops/fp8_rows_cuda.cu), with rows
// >= M rows: those past M (padding for the fp8 GEMM's multiples of 16) get codes 0 and scale 1.
// Row r's scale is max(absmax(x[r]) / 448, 1e-12), its codes x / scale rounded to the nearest
// e4m3fn value (ties to even), saturating at 448. Undefined codes where the kernel does not run
// (a CPU tensor, a CPU-only build, another dtype).
Fp8Rows quantize_fp8_rows(const at::Tensor& x, int64_t rows);

// The same arithmetic on the CPU (ops/fp8_rows_row.h, ops::encode_fp8), for tests: x [M, cols]
// of any float dtype -> codes and scales on the CPU.
Fp8Rows quantize_fp8_rows_reference(const at::Tensor& x, int64_t rows);

}  // namespace wan::ops
