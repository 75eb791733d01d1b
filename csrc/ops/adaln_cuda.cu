// The DiT blocks' modulation and gated residual on a GPU (`compile`). Eagerly, the modulation is a
// LayerNorm, a multiply and an add on float32 [B, L, dim] tensors and a cast to the compute dtype
// (four kernels, about 30 bytes of memory traffic per element); the gated residual a multiply and
// an add (about 18). Here each is one kernel: the modulation reads x once from memory (its row
// three times from cache) and writes the compute dtype, 6 bytes per element; the residual reads
// x and y and writes the sum, 10.
//
// The arithmetic is the eager path's, operation for operation, each product and sum rounded
// separately (adaln_row.h, shared with the CPU references): the gated residual is bitwise the
// eager one; the modulation differs only in how the row's mean and variance are summed (libtorch
// uses Welford's updates), within 1e-5 of it.
#include "ops/adaln_row.h"
#include "ops/cuda_rows.cuh"
#include "ops/fused_cuda.h"

namespace wan::ops {
namespace {

using cuda_rows::block_sum;
using cuda_rows::kRowThreads;
using cuda_rows::load_float;
using cuda_rows::store_float;

// One block per row (b, l) of x [B, L, dim]: the mean, then the variance about it (two passes,
// as the CPU reference), then the modulated row.
template <typename TOut>
__global__ void __launch_bounds__(kRowThreads) modulate_kernel(ModulateProblem p) {
  const int64_t row = blockIdx.x, b = row / p.seq_len;
  const float* x = p.x + row * p.dim;
  const float* scale = p.scale + b * p.dim;
  const float* shift = p.shift + b * p.dim;
  TOut* out = static_cast<TOut*>(p.out) + row * p.dim;
  const float inverse_dim = 1.0f / static_cast<float>(p.dim);

  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < p.dim; i += kRowThreads) sum = __fadd_rn(sum, x[i]);
  const float mean = __fmul_rn(block_sum(sum), inverse_dim);
  float squares = 0.0f;
  for (int64_t i = threadIdx.x; i < p.dim; i += kRowThreads) {
    const float d = __fsub_rn(x[i], mean);
    squares = __fadd_rn(squares, __fmul_rn(d, d));
  }
  const float inverse_std = rsqrtf(__fadd_rn(__fmul_rn(block_sum(squares), inverse_dim), p.eps));
  for (int64_t i = threadIdx.x; i < p.dim; i += kRowThreads)
    store_float(out, i, adaln::modulated(x[i], mean, inverse_std, scale[i], shift[i]));
}

// Grid (rows, column chunks of kRowThreads): one element a thread.
template <typename TY>
__global__ void __launch_bounds__(kRowThreads) gated_residual_kernel(GatedResidualProblem p) {
  const int64_t row = blockIdx.x, c = static_cast<int64_t>(blockIdx.y) * kRowThreads + threadIdx.x;
  if (c >= p.dim) return;
  const int64_t i = row * p.dim + c, b = row / p.seq_len;
  p.out[i] = adaln::gated(p.x[i], load_float(static_cast<const TY*>(p.y), i), p.gate[b * p.dim + c]);
}

}  // namespace

int launch_modulate(const ModulateProblem& p, void* stream) {
  if (p.dim <= 0 || p.batch < 0 || p.seq_len < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (p.batch == 0 || p.seq_len == 0) return static_cast<int>(cudaSuccess);
  auto s = static_cast<cudaStream_t>(stream);
  const auto rows = static_cast<unsigned>(p.batch * p.seq_len);
  switch (static_cast<KernelDType>(p.out_dtype)) {
    case KernelDType::F32: modulate_kernel<float><<<rows, kRowThreads, 0, s>>>(p); break;
    case KernelDType::F16: modulate_kernel<__half><<<rows, kRowThreads, 0, s>>>(p); break;
    case KernelDType::BF16: modulate_kernel<__nv_bfloat16><<<rows, kRowThreads, 0, s>>>(p); break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}

int launch_gated_residual(const GatedResidualProblem& p, void* stream) {
  if (p.dim <= 0 || p.batch < 0 || p.seq_len < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (p.batch == 0 || p.seq_len == 0) return static_cast<int>(cudaSuccess);
  auto s = static_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(p.batch * p.seq_len), static_cast<unsigned>((p.dim + kRowThreads - 1) / kRowThreads));
  switch (static_cast<KernelDType>(p.y_dtype)) {
    case KernelDType::F32: gated_residual_kernel<float><<<grid, kRowThreads, 0, s>>>(p); break;
    case KernelDType::F16: gated_residual_kernel<__half><<<grid, kRowThreads, 0, s>>>(p); break;
    case KernelDType::BF16: gated_residual_kernel<__nv_bfloat16><<<grid, kRowThreads, 0, s>>>(p); break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace wan::ops
