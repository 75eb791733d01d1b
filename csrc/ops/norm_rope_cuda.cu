// Fused RMS norm + RoPE for the DiT's q and k on a GPU (`compile`). Eagerly, libtorch runs them
// as about twenty elementwise kernels on float32 copies of [B, L, dim] (ops/norm.cpp and
// ops/rope.cpp off the CPU); here one block reads a token's row once for the sum of squares and
// once more to write the normalised, rotated row in the compute dtype.
//
// The arithmetic is the eager path's, operation for operation, with the products and sums
// rounded separately (__fmul_rn and friends, so that nvcc contracts nothing into an FMA): only
// the order in which the row's squares are summed differs, which moves rsqrt's argument by an
// ulp at most. The per-pair part lives in norm_rope_row.h, which the CPU reference shares.
#include "ops/cuda_rows.cuh"
#include "ops/fused_cuda.h"
#include "ops/norm_rope_row.h"

namespace wan::ops {
namespace {

using cuda_rows::block_sum;
using cuda_rows::kRowThreads;
using cuda_rows::load_float;
using cuda_rows::store_float;

// One block per row (b, l) of x [B, L, dim].
template <typename TIn, typename TOut>
__global__ void __launch_bounds__(kRowThreads) norm_rope_kernel(NormRopeProblem p) {
  const int64_t row = blockIdx.x;
  const TIn* x = static_cast<const TIn*>(p.x) + row * p.dim;
  TOut* out = static_cast<TOut*>(p.out) + row * p.dim;

  float squares = 0.0f;
  for (int64_t i = threadIdx.x; i < p.dim; i += kRowThreads) {
    const float v = load_float(x, i);
    squares = __fadd_rn(squares, __fmul_rn(v, v));
  }
  // As libtorch: mean = sum * (1 / dim), then rsqrt(mean + eps).
  const float mean = __fmul_rn(block_sum(squares), 1.0f / static_cast<float>(p.dim));
  const float inverse_rms = rsqrtf(__fadd_rn(mean, p.eps));

  // Where this token sits in its sample's grid (the frame, row and column RoPE turns by).
  const int64_t b = row / p.seq_len, l = row % p.seq_len;
  const norm_rope::Position where = norm_rope::position(l, p.grids[b], p.rope);
  const int64_t half = p.head_dim / 2;
  for (int64_t k = threadIdx.x; k < p.dim / 2; k += kRowThreads) {  // pair k: elements 2k and 2k + 1
    const int64_t i = 2 * k;
    float out0, out1;
    norm_rope::pair(load_float(x, i), load_float(x, i + 1), p.weight[i], p.weight[i + 1], inverse_rms, where,
                    k % half, half, p.parts, p.cos, p.sin, out0, out1);
    store_float(out, i, out0);
    store_float(out, i + 1, out1);
  }
}

template <typename TIn>
int launch_for_input(const NormRopeProblem& p, cudaStream_t s) {
  const auto blocks = static_cast<unsigned>(p.batch * p.seq_len);
  switch (static_cast<KernelDType>(p.out_dtype)) {
    case KernelDType::F32: norm_rope_kernel<TIn, float><<<blocks, kRowThreads, 0, s>>>(p); break;
    case KernelDType::F16: norm_rope_kernel<TIn, __half><<<blocks, kRowThreads, 0, s>>>(p); break;
    case KernelDType::BF16: norm_rope_kernel<TIn, __nv_bfloat16><<<blocks, kRowThreads, 0, s>>>(p); break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int launch_norm_rope(const NormRopeProblem& p, void* stream) {
  if (p.batch < 1 || p.batch > kNormRopeMaxBatch || p.head_dim <= 0 || p.head_dim % 2 != 0 || p.dim % p.head_dim != 0)
    return static_cast<int>(cudaErrorInvalidValue);
  if (p.seq_len == 0) return static_cast<int>(cudaSuccess);
  auto s = static_cast<cudaStream_t>(stream);
  switch (static_cast<KernelDType>(p.x_dtype)) {
    case KernelDType::F32: return launch_for_input<float>(p, s);
    case KernelDType::F16: return launch_for_input<__half>(p, s);
    case KernelDType::BF16: return launch_for_input<__nv_bfloat16>(p, s);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace wan::ops
