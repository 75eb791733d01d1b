// Device helpers of the row kernels (norm_rope_cuda.cu, adaln_cuda.cu, fp8_rows_cuda.cu): float32
// loads and stores of the element types they take, and block-wide sums and maxima for kernels
// that give one block of kRowThreads threads to each row.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace wan::ops::cuda_rows {

constexpr int kRowThreads = 256;

template <typename T>
__device__ __forceinline__ float load_float(const T* p, int64_t i);
template <>
__device__ __forceinline__ float load_float<float>(const float* p, int64_t i) { return p[i]; }
template <>
__device__ __forceinline__ float load_float<__half>(const __half* p, int64_t i) { return __half2float(p[i]); }
template <>
__device__ __forceinline__ float load_float<__nv_bfloat16>(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}

template <typename T>
__device__ __forceinline__ void store_float(T* p, int64_t i, float v);
template <>
__device__ __forceinline__ void store_float<float>(float* p, int64_t i, float v) { p[i] = v; }
template <>
__device__ __forceinline__ void store_float<__half>(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
template <>
__device__ __forceinline__ void store_float<__nv_bfloat16>(__nv_bfloat16* p, int64_t i, float v) {
  p[i] = __float2bfloat16_rn(v);
}

// `value` combined over every thread of a block of kRowThreads (a sum, a maximum), returned to
// all of them. A kernel may call it several times in a row: each call's two barriers keep one
// call's shared slots from being overwritten before every thread has read them.
template <typename Combine>
__device__ __forceinline__ float block_reduce(float value, float identity, Combine combine) {
  __shared__ float warp_values[kRowThreads / 32];
  __shared__ float total;
  for (int offset = 16; offset > 0; offset >>= 1) value = combine(value, __shfl_xor_sync(0xffffffffu, value, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_values[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < kRowThreads / 32 ? warp_values[lane] : identity;
    for (int offset = 16; offset > 0; offset >>= 1) value = combine(value, __shfl_xor_sync(0xffffffffu, value, offset));
    if (lane == 0) total = value;
  }
  __syncthreads();
  return total;
}

struct Sum {
  __device__ __forceinline__ float operator()(float a, float b) const { return __fadd_rn(a, b); }
};
struct Max {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

__device__ __forceinline__ float block_sum(float value) { return block_reduce(value, 0.0f, Sum{}); }
__device__ __forceinline__ float block_max(float value) { return block_reduce(value, -INFINITY, Max{}); }

}  // namespace wan::ops::cuda_rows
