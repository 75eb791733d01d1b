// ATen's dtypes as the fused CUDA kernels name them (ops/fused_cuda.h).
#pragma once
#include <c10/core/ScalarType.h>

#include "ops/fused_cuda.h"

namespace wan::ops {

// The kernels' code for t, or -1 for a dtype they do not take.
inline int kernel_dtype(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::Float: return static_cast<int>(KernelDType::F32);
    case c10::ScalarType::Half: return static_cast<int>(KernelDType::F16);
    case c10::ScalarType::BFloat16: return static_cast<int>(KernelDType::BF16);
    default: return -1;
  }
}

}  // namespace wan::ops
