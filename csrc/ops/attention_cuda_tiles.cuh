// Pieces shared by the CUDA attention kernels (attention_flash.cu, attention_sage.cu): tile
// loads with dtype conversion, the online softmax and the P.V accumulation.
//
// A thread block of 256 threads is a 16 x 16 grid: tx = threadIdx.x % 16 picks columns
// (keys of a score tile, or output channels), ty = threadIdx.x / 16 picks query rows. A
// thread owns rows ty + 16 r (r < 4) of the block's 64 queries, the keys tx + 16 c (c < 2) of
// each 32-key tile and the output channels tx + 16 c (c < D / 16). The 16 threads of one row
// group are one half of a warp, so row reductions are __shfl_xor_sync with offsets 8..1.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "ops/attention_cuda.h"

namespace wan::ops::cuda_attention {

constexpr int kThreads = 256;
constexpr int kBlockQ = 64;          // query rows per thread block
constexpr int kBlockK = 32;          // keys per tile
constexpr int kRows = kBlockQ / 16;  // query rows per thread
constexpr int kKeys = kBlockK / 16;  // keys per thread in a score tile
constexpr int kLdp = kBlockK + 1;    // row stride of the probability tile (odd: no bank conflicts)
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void from_float(float* p, float x) { *p = x; }
__device__ __forceinline__ void from_float(__half* p, float x) { *p = __float2half_rn(x); }
__device__ __forceinline__ void from_float(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }

// The keys batch entry b attends to.
__device__ __forceinline__ int64_t keys_of(const AttentionProblem& p, int64_t b) {
  if (p.k_lens == nullptr) return p.k_len;
  const int64_t n = p.k_lens[b];
  return n < 0 ? 0 : (n > p.k_len ? p.k_len : n);
}

// Rows row0 .. row0 + rows of head h of a [B, L, H, D] tensor into shared memory as float
// (row stride ld), minus `shift` (per channel, or nullptr), times `scale`. Rows at or past
// `valid` become zeros and are never read from global memory.
template <typename T, int kD>
__device__ __forceinline__ void load_tile(const T* base, int64_t sb, int64_t sl, int64_t sh, int64_t b, int64_t h,
                                          int64_t row0, int rows, int64_t valid, const float* shift, float scale,
                                          float* dst, int ld) {
  for (int e = threadIdx.x; e < rows * kD; e += kThreads) {
    const int r = e / kD, c = e % kD;
    const int64_t row = row0 + r;
    float x = 0.0f;
    if (row < valid) {
      x = to_float(base[b * sb + row * sl + h * sh + c]);
      if (shift != nullptr) x -= shift[c];
      x *= scale;
    }
    dst[r * ld + c] = x;
  }
}

// Running softmax state and output accumulator of one thread.
template <int kD>
struct RowState {
  float m[kRows];               // running max of the scores (log2 units)
  float l[kRows];               // running sum of 2^(s - m)
  float acc[kRows][kD / 16];    // unnormalised output, channels tx + 16 c

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      m[r] = neg_inf();
      l[r] = 0.0f;
#pragma unroll
      for (int c = 0; c < kD / 16; ++c) acc[r][c] = 0.0f;
    }
  }
};

// One tile of scores s (log2 units; -inf for keys past the end) updates the running max and
// sum (FlashAttention's online softmax), rescales the accumulator, and leaves the tile's
// probabilities in shared memory `ps` [kBlockQ][kLdp] for accumulate_pv. Every tile holds at
// least one real key, so the new max is finite and 2^(-inf - max) = 0 clears the first
// rescale.
template <int kD>
__device__ __forceinline__ void softmax_update(float (&s)[kRows][kKeys], RowState<kD>& st, float* ps) {
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    float mx = s[r][0];
#pragma unroll
    for (int c = 1; c < kKeys; ++c) mx = fmaxf(mx, s[r][c]);
#pragma unroll
    for (int off = 8; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    const float m_new = fmaxf(st.m[r], mx);
    const float alpha = exp2f(st.m[r] - m_new);
    float sum = 0.0f;
#pragma unroll
    for (int c = 0; c < kKeys; ++c) {
      const float e = exp2f(s[r][c] - m_new);
      ps[(ty + 16 * r) * kLdp + tx + 16 * c] = e;
      sum += e;
    }
#pragma unroll
    for (int off = 8; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    st.l[r] = st.l[r] * alpha + sum;
    st.m[r] = m_new;
#pragma unroll
    for (int c = 0; c < kD / 16; ++c) st.acc[r][c] *= alpha;
  }
}

// acc += P V for the tile: ps [kBlockQ][kLdp], vs [kBlockK][kD] (zero rows past the end).
// Call after a __syncthreads() that follows softmax_update.
template <int kD>
__device__ __forceinline__ void accumulate_pv(RowState<kD>& st, const float* ps, const float* vs) {
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll 4
  for (int j = 0; j < kBlockK; ++j) {
    float pr[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) pr[r] = ps[(ty + 16 * r) * kLdp + j];
#pragma unroll
    for (int c = 0; c < kD / 16; ++c) {
      const float v = vs[j * kD + tx + 16 * c];
#pragma unroll
      for (int r = 0; r < kRows; ++r) st.acc[r][c] = fmaf(pr[r], v, st.acc[r][c]);
    }
  }
}

// out rows q0 + ty + 16 r (those < q_len) = acc / l; a row that saw no key is written as 0.
template <typename T, int kD>
__device__ __forceinline__ void store_output(const AttentionProblem& p, int64_t b, int64_t h, int64_t q0,
                                             const RowState<kD>& st) {
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = q0 + ty + 16 * r;
    if (row >= p.q_len) continue;
    const float inv = st.l[r] > 0.0f ? 1.0f / st.l[r] : 0.0f;
    T* dst = out + b * p.out_stride[0] + row * p.out_stride[1] + h * p.out_stride[2];
#pragma unroll
    for (int c = 0; c < kD / 16; ++c) from_float(dst + tx + 16 * c, st.acc[r][c] * inv);
  }
}

}  // namespace wan::ops::cuda_attention
