// Parameters as stored in a checkpoint, widened to the compute dtype when used, so that
// resident memory follows the file's dtype (bf16, fp16 or fp8) rather than fp32.
#pragma once
#include <ATen/ATen.h>

#include "core/tensor.h"

namespace wan::ops {

struct Weight {
  core::Tensor stored;  // any dtype; fp8 kept as codes
  at::Tensor scale;     // ComfyUI scaled fp8: W = decode(W_fp8) * scale_weight; else undefined

  bool defined() const { return stored.value.defined(); }
  // The value in `compute` dtype on `stored`'s device.
  at::Tensor get(at::ScalarType compute) const;
  // The float32 value as a Weight, computed by the calling thread alone (plain loops, no
  // libtorch thread pool), so that a worker can widen the next block while the model's own
  // parallel work runs; bitwise equal to get(at::kFloat). An fp32 weight is returned as is.
  Weight widened() const;
  // widened(), written into `out` (float32, this weight's shape, allocated by the caller: a
  // prefetch worker fills blocks that the engine thread allocated, so that freed blocks return
  // to the engine thread's malloc arena rather than to one per worker).
  Weight widened_into(at::Tensor out) const;
  // This weight with its tensors on `device`, still in its storage dtype (fp8 stays codes). On
  // the CPU with `pinned`, in page-locked memory, so that copies to a GPU run asynchronously.
  Weight to(at::Device device, bool pinned = false) const;
  // Whether widened() makes a new tensor (false for float32 without a scale).
  bool needs_widening() const { return defined() && (stored.dtype != core::DType::F32 || scale.defined()); }
};

// y = x W^T + b with W [out, in], x [..., in] in the compute dtype.
at::Tensor linear(const at::Tensor& x, const Weight& weight, const Weight& bias);

// Compiled, on a GPU: gelu_tanh(x W^T + b) with the GELU in the matmul's epilogue (cuBLASLt,
// through libtorch's _addmm_activation), which saves a pass over the FFN's widest tensor. The
// GELU sees the unrounded sum rather than the compute dtype's rounding of it. Undefined for a
// CPU tensor (libtorch's CPU _addmm_activation applies the erf GELU, not tanh), without a bias,
// or where autograd records: the caller then runs linear() and gelu.
at::Tensor linear_gelu_fused(const at::Tensor& x, const Weight& weight, const Weight& bias);

}  // namespace wan::ops
