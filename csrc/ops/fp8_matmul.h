// fp8 matmuls on a GPU (the wrapper's quantization 'fp8_e4m3fn_fast'): the linear layers whose
// weights are stored as e4m3fn codes multiply in fp8 on the tensor cores (at::_scaled_mm), the
// activations quantised per call, largest magnitude -> 448: with one scale per row (token) on
// sm_90 and later in bf16 (ops/fp8_rows.h), one per tensor elsewhere.
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "ops/linear.h"

namespace wan::ops {

// Why fp8 matmuls cannot run on `device` ("" when they can): they need a CUDA build on
// libtorch >= 2.5 and a GPU of compute capability >= 8.9.
std::string fp8_matmul_unsupported(at::Device device);

// Whether linear_fp8 takes x [..., K] (bf16 or fp16, on a GPU) with this weight: e4m3fn codes
// [N, K] with K and N multiples of 16, as the fp8 tensor cores need.
bool fp8_matmul_fits(const at::Tensor& x, const Weight& weight);

// y = x W^T + b, computed as fp8 x fp8 with float32 accumulation, in x's dtype.
at::Tensor linear_fp8(const at::Tensor& x, const Weight& weight, const Weight& bias);

}  // namespace wan::ops
