// The fp8 matmuls' activations quantised with one scale per row (token), in one kernel: a block
// reads its row once for the largest magnitude and once more (from cache) to write the codes.
// libtorch's ops would take a reduction, a division and a cast, three passes over the input and
// a bf16 temporary; and one scale for the whole tensor lets one outlying token coarsen the
// codes of every other.
#include <cuda_fp8.h>

#include "ops/cuda_rows.cuh"
#include "ops/fp8_rows_row.h"
#include "ops/fused_cuda.h"

namespace wan::ops {
namespace {

using cuda_rows::block_max;
using cuda_rows::kRowThreads;
using cuda_rows::load_float;

// One block per row of codes [rows, cols].
template <typename T>
__global__ void __launch_bounds__(kRowThreads) fp8_rows_kernel(Fp8RowsProblem p) {
  const int64_t row = blockIdx.x;
  uint8_t* codes = p.codes + row * p.cols;
  if (row >= p.valid_rows) {  // padding (the whole block takes this branch)
    for (int64_t i = threadIdx.x; i < p.cols; i += kRowThreads) codes[i] = 0;
    if (threadIdx.x == 0) p.scales[row] = 1.0f;
    return;
  }
  const T* x = static_cast<const T*>(p.x) + row * p.cols;
  float amax = 0.0f;
  for (int64_t i = threadIdx.x; i < p.cols; i += kRowThreads) amax = fmaxf(amax, fabsf(load_float(x, i)));
  const float scale = fp8_rows::row_scale(block_max(amax));
  if (threadIdx.x == 0) p.scales[row] = scale;
  for (int64_t i = threadIdx.x; i < p.cols; i += kRowThreads)
    codes[i] = __nv_cvt_float_to_fp8(__fdiv_rn(load_float(x, i), scale), __NV_SATFINITE, __NV_E4M3);
}

}  // namespace

int launch_fp8_rows(const Fp8RowsProblem& p, void* stream) {
  if (p.cols <= 0 || p.valid_rows < 0 || p.valid_rows > p.rows) return static_cast<int>(cudaErrorInvalidValue);
  if (p.rows == 0) return static_cast<int>(cudaSuccess);
  auto s = static_cast<cudaStream_t>(stream);
  const auto rows = static_cast<unsigned>(p.rows);
  switch (static_cast<KernelDType>(p.x_dtype)) {
    case KernelDType::F16: fp8_rows_kernel<__half><<<rows, kRowThreads, 0, s>>>(p); break;
    case KernelDType::BF16: fp8_rows_kernel<__nv_bfloat16><<<rows, kRowThreads, 0, s>>>(p); break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace wan::ops
