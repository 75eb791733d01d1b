// FlashAttention-style attention (Dao et al. 2022, "FlashAttention: Fast and Memory-Efficient
// Exact Attention with IO-Awareness"): each thread block keeps 64 queries in shared memory,
// streams K and V through it 32 keys at a time and never writes the score matrix out.
// float32 throughout (inputs converted on load), so f32, f16 and bf16 share one kernel; it
// uses CUDA cores, not tensor cores. The reference is ops::attention_math.
#include <cuda_runtime.h>

#include "ops/attention_cuda.h"
#include "ops/attention_cuda_tiles.cuh"

namespace wan::ops {
namespace {

using namespace cuda_attention;

// grid (ceil(Lq / 64), H, B), 256 threads. Shared memory (floats): Q [64][D + 1] scaled by
// log2(e) / sqrt(D), K [32][D + 1], V [32][D], P [64][33].
template <typename T, int kD>
__global__ void __launch_bounds__(kThreads) flash_attention_kernel(AttentionProblem p) {
  constexpr int kLd = kD + 1;  // odd row stride: the 16 keys a warp reads lie in distinct banks
  extern __shared__ float smem[];
  float* qs = smem;
  float* ks = qs + kBlockQ * kLd;
  float* vs = ks + kBlockK * kLd;
  float* ps = vs + kBlockK * kD;

  const int64_t b = blockIdx.z, h = blockIdx.y, q0 = static_cast<int64_t>(blockIdx.x) * kBlockQ;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t kl = keys_of(p, b);
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);

  load_tile<T, kD>(q, p.q_stride[0], p.q_stride[1], p.q_stride[2], b, h, q0, kBlockQ, p.q_len, nullptr,
                   p.scale * kLog2e, qs, kLd);
  RowState<kD> st;
  st.init();

  for (int64_t k0 = 0; k0 < kl; k0 += kBlockK) {
    __syncthreads();  // Q is loaded; the previous tile's K, V and P are no longer read
    load_tile<T, kD>(k, p.k_stride[0], p.k_stride[1], p.k_stride[2], b, h, k0, kBlockK, kl, nullptr, 1.0f, ks, kLd);
    load_tile<T, kD>(v, p.v_stride[0], p.v_stride[1], p.v_stride[2], b, h, k0, kBlockK, kl, nullptr, 1.0f, vs, kD);
    __syncthreads();

    float s[kRows][kKeys];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int c = 0; c < kKeys; ++c) s[r][c] = 0.0f;
#pragma unroll 8
    for (int d = 0; d < kD; ++d) {
      float qv[kRows], kv[kKeys];
#pragma unroll
      for (int r = 0; r < kRows; ++r) qv[r] = qs[(ty + 16 * r) * kLd + d];
#pragma unroll
      for (int c = 0; c < kKeys; ++c) kv[c] = ks[(tx + 16 * c) * kLd + d];
#pragma unroll
      for (int r = 0; r < kRows; ++r)
#pragma unroll
        for (int c = 0; c < kKeys; ++c) s[r][c] = fmaf(qv[r], kv[c], s[r][c]);
    }
#pragma unroll
    for (int c = 0; c < kKeys; ++c)
      if (k0 + tx + 16 * c >= kl)
#pragma unroll
        for (int r = 0; r < kRows; ++r) s[r][c] = neg_inf();

    softmax_update<kD>(s, st, ps);
    __syncthreads();  // P complete
    accumulate_pv<kD>(st, ps, vs);
  }
  store_output<T, kD>(p, b, h, q0, st);
}

template <typename T, int kD>
int launch_d(const AttentionProblem& p, cudaStream_t stream) {
  constexpr int kLd = kD + 1;
  const size_t smem = sizeof(float) * (kBlockQ * kLd + kBlockK * kLd + kBlockK * kD + kBlockQ * kLdp);
  auto kernel = flash_attention_kernel<T, kD>;
  // Above 48 KiB a kernel must opt in (D = 128 needs 74 KiB; D = 256, 137 KiB).
  cudaError_t status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (status != cudaSuccess) return static_cast<int>(status);
  const dim3 grid(static_cast<unsigned>((p.q_len + kBlockQ - 1) / kBlockQ), static_cast<unsigned>(p.heads),
                  static_cast<unsigned>(p.batch));
  kernel<<<grid, kThreads, smem, stream>>>(p);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int launch_typed(const AttentionProblem& p, cudaStream_t stream) {
  switch (p.head_dim) {
    case 32: return launch_d<T, 32>(p, stream);
    case 64: return launch_d<T, 64>(p, stream);
    case 80: return launch_d<T, 80>(p, stream);
    case 96: return launch_d<T, 96>(p, stream);
    case 128: return launch_d<T, 128>(p, stream);
    case 256: return launch_d<T, 256>(p, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace

int launch_flash_attention(const AttentionProblem& p, void* stream) {
  if (p.batch == 0 || p.q_len == 0 || p.heads == 0) return static_cast<int>(cudaSuccess);
  if (p.batch > 65535 || p.heads > 65535 || (p.q_len + kBlockQ - 1) / kBlockQ > 0x7FFFFFFF)
    return static_cast<int>(cudaErrorInvalidValue);
  const auto s = static_cast<cudaStream_t>(stream);
  switch (static_cast<AttentionDType>(p.dtype)) {
    case AttentionDType::F32: return launch_typed<float>(p, s);
    case AttentionDType::F16: return launch_typed<__half>(p, s);
    case AttentionDType::BF16: return launch_typed<__nv_bfloat16>(p, s);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace wan::ops
