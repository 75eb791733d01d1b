// What the ATen glue of the fused CUDA kernels (ops/fused_cuda.h) shares: ATen's dtypes as the
// kernels name them, and the check of a launcher's status.
#pragma once
#include <c10/core/ScalarType.h>

#include <string>

#include "core/error.h"
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

// Throws an Internal error naming `what` when a launcher returned a CUDA error (its status).
inline void check_launch(const char* what, int status) {
  if (status != 0)
    throw core::Error(core::ErrorCode::Internal,
                      std::string(what) + ": the fused CUDA kernel failed with CUDA error " + std::to_string(status));
}

}  // namespace wan::ops
