// SageAttention (Zhang et al. 2024, "SageAttention: Accurate 8-bit attention for
// plug-and-play inference acceleration") on CUDA cores: K minus its mean over the keys (the
// same q.mean is then missing from every score of a row, which softmax ignores), Q quantised
// to int8 per block of 64 queries and K per tile of 32 keys (scale = absmax / 127), Q.K^T as
// int32 sums of __dp4a (sm_61+), dequantised with the two scales; online softmax and P.V in
// float32 as in attention_flash.cu. The reference is ops::attention_math (cosine >= 0.999).
#include <cuda_runtime.h>

#include "ops/attention_cuda.h"
#include "ops/attention_cuda_tiles.cuh"

namespace wan::ops {
namespace {

using namespace cuda_attention;

constexpr int kMeanRows = 16;  // key rows summed in parallel by key_mean_kernel

// mean[b, h, c] = mean over keys j < k_lens[b] of k[b, j, h, c]. grid (ceil(D / 32), H, B),
// block (32, kMeanRows): a warp reads 32 consecutive channels of one key.
template <typename T>
__global__ void key_mean_kernel(AttentionProblem p, float* mean) {
  __shared__ float part[kMeanRows][33];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const int64_t h = blockIdx.y, b = blockIdx.z;
  const int64_t kl = keys_of(p, b);
  const T* k = static_cast<const T*>(p.k);
  float sum = 0.0f;
  if (c < p.head_dim)
    for (int64_t j = threadIdx.y; j < kl; j += kMeanRows)
      sum += to_float(k[b * p.k_stride[0] + j * p.k_stride[1] + h * p.k_stride[2] + c]);
  part[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && c < p.head_dim) {
    float total = 0.0f;
    for (int y = 0; y < kMeanRows; ++y) total += part[y][threadIdx.x];
    mean[(b * p.heads + h) * p.head_dim + c] = kl > 0 ? total / static_cast<float>(kl) : 0.0f;
  }
}

// max |x| over a [rows][cols] tile (row stride ld) of shared memory, returned to every
// thread. `red` holds kThreads / 32 + 1 floats. Contains __syncthreads().
__device__ __forceinline__ float block_absmax(const float* x, int rows, int cols, int ld, float* red) {
  float m = 0.0f;
  for (int e = threadIdx.x; e < rows * cols; e += kThreads) m = fmaxf(m, fabsf(x[(e / cols) * ld + e % cols]));
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = m;
  __syncthreads();
  if (threadIdx.x < 32) {
    float w = threadIdx.x < kThreads / 32 ? red[threadIdx.x] : 0.0f;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) w = fmaxf(w, __shfl_xor_sync(0xffffffffu, w, off));
    if (threadIdx.x == 0) red[kThreads / 32] = w;
  }
  __syncthreads();
  return red[kThreads / 32];
}

__device__ __forceinline__ unsigned quantize_byte(float x, float inv) {
  const int q = max(-127, min(127, __float2int_rn(x * inv)));
  return static_cast<unsigned>(q) & 0xFFu;
}

// Packs a float tile [rows][kD] (row stride ld) as int8 x 4 words [rows][ldw], scale amax / 127.
template <int kD>
__device__ __forceinline__ void quantize_tile(const float* x, int rows, int ld, float amax, int* dst, int ldw) {
  constexpr int kW = kD / 4;
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  for (int e = threadIdx.x; e < rows * kW; e += kThreads) {
    const int r = e / kW, w = e % kW;
    const float* src = x + r * ld + 4 * w;
    const unsigned packed = quantize_byte(src[0], inv) | (quantize_byte(src[1], inv) << 8) |
                            (quantize_byte(src[2], inv) << 16) | (quantize_byte(src[3], inv) << 24);
    dst[r * ldw + w] = static_cast<int>(packed);
  }
}

// grid (ceil(Lq / 64), H, B), 256 threads. Shared memory: a float staging tile [64][D + 1]
// (Q, then each centred K tile), V [32][D], P [64][33], int8 Q [64][D / 4 + 1] and K
// [32][D / 4 + 1] words, and 9 floats for reductions.
template <typename T, int kD>
__global__ void __launch_bounds__(kThreads) sage_attention_kernel(AttentionProblem p, const float* k_mean) {
  constexpr int kLd = kD + 1;
  constexpr int kW = kD / 4;
  constexpr int kLdw = kW + 1;  // odd: the 16 keys a warp reads lie in distinct banks
  extern __shared__ float smem[];
  float* stage = smem;
  float* vs = stage + kBlockQ * kLd;
  float* ps = vs + kBlockK * kD;
  int* qi = reinterpret_cast<int*>(ps + kBlockQ * kLdp);
  int* ki = qi + kBlockQ * kLdw;
  float* red = reinterpret_cast<float*>(ki + kBlockK * kLdw);

  const int64_t b = blockIdx.z, h = blockIdx.y, q0 = static_cast<int64_t>(blockIdx.x) * kBlockQ;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t kl = keys_of(p, b);
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const float* mean = k_mean + (b * p.heads + h) * kD;

  load_tile<T, kD>(q, p.q_stride[0], p.q_stride[1], p.q_stride[2], b, h, q0, kBlockQ, p.q_len, nullptr, 1.0f, stage,
                   kLd);
  __syncthreads();
  const float q_amax = block_absmax(stage, kBlockQ, kD, kLd, red);
  quantize_tile<kD>(stage, kBlockQ, kLd, q_amax, qi, kLdw);
  const float q_scale = q_amax / 127.0f * p.scale * kLog2e;
  RowState<kD> st;
  st.init();

  for (int64_t k0 = 0; k0 < kl; k0 += kBlockK) {
    __syncthreads();  // Q is quantised; the previous tile's K words, V and P are no longer read
    load_tile<T, kD>(k, p.k_stride[0], p.k_stride[1], p.k_stride[2], b, h, k0, kBlockK, kl, mean, 1.0f, stage, kLd);
    load_tile<T, kD>(v, p.v_stride[0], p.v_stride[1], p.v_stride[2], b, h, k0, kBlockK, kl, nullptr, 1.0f, vs, kD);
    __syncthreads();
    const float k_amax = block_absmax(stage, kBlockK, kD, kLd, red);  // zero rows past the end do not count
    quantize_tile<kD>(stage, kBlockK, kLd, k_amax, ki, kLdw);
    __syncthreads();

    int acc[kRows][kKeys];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int c = 0; c < kKeys; ++c) acc[r][c] = 0;
#pragma unroll 8
    for (int w = 0; w < kW; ++w) {
      int qa[kRows], kb[kKeys];
#pragma unroll
      for (int r = 0; r < kRows; ++r) qa[r] = qi[(ty + 16 * r) * kLdw + w];
#pragma unroll
      for (int c = 0; c < kKeys; ++c) kb[c] = ki[(tx + 16 * c) * kLdw + w];
#pragma unroll
      for (int r = 0; r < kRows; ++r)
#pragma unroll
        for (int c = 0; c < kKeys; ++c) acc[r][c] = __dp4a(qa[r], kb[c], acc[r][c]);
    }
    const float scale = q_scale * (k_amax / 127.0f);
    float s[kRows][kKeys];
#pragma unroll
    for (int c = 0; c < kKeys; ++c) {
      const bool valid = k0 + tx + 16 * c < kl;
#pragma unroll
      for (int r = 0; r < kRows; ++r) s[r][c] = valid ? static_cast<float>(acc[r][c]) * scale : neg_inf();
    }

    softmax_update<kD>(s, st, ps);
    __syncthreads();  // P complete
    accumulate_pv<kD>(st, ps, vs);
  }
  store_output<T, kD>(p, b, h, q0, st);
}

template <typename T, int kD>
int launch_d(const AttentionProblem& p, float* workspace, cudaStream_t stream) {
  constexpr int kLd = kD + 1;
  constexpr int kLdw = kD / 4 + 1;
  static_assert(kD % 16 == 0, "the thread layout needs whole 16-channel groups");
  const dim3 mean_grid(static_cast<unsigned>((kD + 31) / 32), static_cast<unsigned>(p.heads),
                       static_cast<unsigned>(p.batch));
  key_mean_kernel<T><<<mean_grid, dim3(32, kMeanRows), 0, stream>>>(p, workspace);
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) return static_cast<int>(status);

  const size_t smem = sizeof(float) * (kBlockQ * kLd + kBlockK * kD + kBlockQ * kLdp) +
                      sizeof(int) * (kBlockQ * kLdw + kBlockK * kLdw) + sizeof(float) * (kThreads / 32 + 1);
  auto kernel = sage_attention_kernel<T, kD>;
  // Above 48 KiB a kernel must opt in (D = 128 needs 68 KiB; D = 256, 129 KiB).
  status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (status != cudaSuccess) return static_cast<int>(status);
  const dim3 grid(static_cast<unsigned>((p.q_len + kBlockQ - 1) / kBlockQ), static_cast<unsigned>(p.heads),
                  static_cast<unsigned>(p.batch));
  kernel<<<grid, kThreads, smem, stream>>>(p, workspace);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int launch_typed(const AttentionProblem& p, float* workspace, cudaStream_t stream) {
  switch (p.head_dim) {
    case 32: return launch_d<T, 32>(p, workspace, stream);
    case 64: return launch_d<T, 64>(p, workspace, stream);
    case 80: return launch_d<T, 80>(p, workspace, stream);
    case 96: return launch_d<T, 96>(p, workspace, stream);
    case 128: return launch_d<T, 128>(p, workspace, stream);
    case 256: return launch_d<T, 256>(p, workspace, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace

int launch_sage_attention(const AttentionProblem& p, float* workspace, void* stream) {
  if (p.batch == 0 || p.q_len == 0 || p.heads == 0) return static_cast<int>(cudaSuccess);
  if (p.batch > 65535 || p.heads > 65535 || (p.q_len + kBlockQ - 1) / kBlockQ > 0x7FFFFFFF)
    return static_cast<int>(cudaErrorInvalidValue);
  const auto s = static_cast<cudaStream_t>(stream);
  switch (static_cast<AttentionDType>(p.dtype)) {
    case AttentionDType::F32: return launch_typed<float>(p, workspace, s);
    case AttentionDType::F16: return launch_typed<__half>(p, workspace, s);
    case AttentionDType::BF16: return launch_typed<__nv_bfloat16>(p, workspace, s);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace wan::ops
