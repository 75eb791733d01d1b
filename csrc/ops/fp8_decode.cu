#include <cuda_runtime.h>

#include <cmath>

#include "ops/fp8_decode.h"

namespace wan::ops {
namespace {

__device__ __forceinline__ float decode_e4m3fn(uint8_t code) {
  const int exponent = (code >> 3) & 0x0F;
  const int mantissa = code & 0x07;
  float value;
  if (exponent == 0x0F && mantissa == 0x07) value = __int_as_float(0x7FC00000);  // NaN; no infinities
  else if (exponent == 0) value = ldexpf(static_cast<float>(mantissa), -9);      // subnormal m/8 * 2^-6
  else value = ldexpf(1.0f + mantissa * 0.125f, exponent - 7);
  return (code & 0x80) ? -value : value;
}

__device__ __forceinline__ float decode_e5m2(uint8_t code) {
  const int exponent = (code >> 2) & 0x1F;
  const int mantissa = code & 0x03;
  float value;
  if (exponent == 0x1F) value = mantissa ? __int_as_float(0x7FC00000) : __int_as_float(0x7F800000);
  else if (exponent == 0) value = ldexpf(static_cast<float>(mantissa), -16);     // subnormal m/4 * 2^-14
  else value = ldexpf(1.0f + mantissa * 0.25f, exponent - 15);
  return (code & 0x80) ? -value : value;
}

// Grid-stride loop: one launch covers any n, each thread decodes 4 codes per read of a
// 32-bit word when the input is aligned (the common case for whole tensors).
template <bool kE5M2>
__global__ void fp8_decode_kernel(const uint8_t* __restrict__ src, float* __restrict__ dst, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const bool aligned = (reinterpret_cast<uintptr_t>(src) & 3) == 0 && (reinterpret_cast<uintptr_t>(dst) & 15) == 0;
  const int64_t words = aligned ? n / 4 : 0;
  for (int64_t w = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; w < words; w += stride) {
    const uint32_t packed = reinterpret_cast<const uint32_t*>(src)[w];
    float4 out;
    out.x = kE5M2 ? decode_e5m2(packed & 0xFF) : decode_e4m3fn(packed & 0xFF);
    out.y = kE5M2 ? decode_e5m2((packed >> 8) & 0xFF) : decode_e4m3fn((packed >> 8) & 0xFF);
    out.z = kE5M2 ? decode_e5m2((packed >> 16) & 0xFF) : decode_e4m3fn((packed >> 16) & 0xFF);
    out.w = kE5M2 ? decode_e5m2(packed >> 24) : decode_e4m3fn(packed >> 24);
    reinterpret_cast<float4*>(dst)[w] = out;
  }
  for (int64_t i = words * 4 + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    dst[i] = kE5M2 ? decode_e5m2(src[i]) : decode_e4m3fn(src[i]);
}

}  // namespace

int launch_fp8_decode(const uint8_t* src, float* dst, int64_t n, bool e5m2, void* stream) {
  if (n <= 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int64_t work = (n + 3) / 4;
  const int blocks = static_cast<int>(work / kThreads + 1 < 65535 ? work / kThreads + 1 : 65535);
  auto s = static_cast<cudaStream_t>(stream);
  if (e5m2) fp8_decode_kernel<true><<<blocks, kThreads, 0, s>>>(src, dst, n);
  else fp8_decode_kernel<false><<<blocks, kThreads, 0, s>>>(src, dst, n);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace wan::ops
