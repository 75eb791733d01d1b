// Float32 arithmetic rounded one operation at a time, for the fused kernels' per-element code
// that their CPU references share (norm_rope_row.h, adaln_row.h): libtorch's eager ops round
// each product and sum separately, and on the GPU nvcc would otherwise contract a * b + c into
// an FMA. (The host build targets baseline x86-64, which has no FMA to contract into.)
#pragma once

#ifdef __CUDACC__
#define WAN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define WAN_HOST_DEVICE inline
#endif

namespace wan::ops::rounded {

WAN_HOST_DEVICE float mul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
WAN_HOST_DEVICE float add(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
WAN_HOST_DEVICE float sub(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

}  // namespace wan::ops::rounded
