#include "ops/fp8_rows.h"

#include <cmath>
#include <string>

#include "core/error.h"
#include "ops/fp8_rows_row.h"
#include "ops/quantize.h"

#ifdef WAN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "ops/kernel_glue.h"
#endif

namespace wan::ops {

namespace {

void check_rows(const char* op, const at::Tensor& x, int64_t rows) {
  if (x.dim() != 2 || rows < x.size(0))
    throw core::Error(core::ErrorCode::InvalidTensor,
                      std::string(op) + ": expected x [M, cols] and rows >= M, got " + std::to_string(x.dim()) +
                          " dimensions and rows " + std::to_string(rows));
}

}  // namespace

Fp8Rows quantize_fp8_rows(const at::Tensor& x, int64_t rows) {
#ifdef WAN_WITH_CUDA
  if (!x.is_cuda() || (x.scalar_type() != at::kBFloat16 && x.scalar_type() != at::kHalf)) return {};
  check_rows("quantize_fp8_rows", x, rows);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor in = x.contiguous();
  Fp8Rows out{at::empty({rows, in.size(1)}, in.options().dtype(at::kByte)),
              at::empty({rows, 1}, in.options().dtype(at::kFloat))};
  Fp8RowsProblem p{};
  p.x = in.data_ptr();
  p.codes = out.codes.data_ptr<uint8_t>();
  p.scales = out.scales.data_ptr<float>();
  p.rows = rows;
  p.valid_rows = in.size(0);
  p.cols = in.size(1);
  p.x_dtype = kernel_dtype(in.scalar_type());
  check_launch("quantize_fp8_rows", launch_fp8_rows(p, c10::cuda::getCurrentCUDAStream(x.device().index()).stream()));
  return out;
#else
  return {};
#endif
}

Fp8Rows quantize_fp8_rows_reference(const at::Tensor& x, int64_t rows) {
  check_rows("quantize_fp8_rows_reference", x, rows);
  const at::Tensor in = x.to(at::kCPU, at::kFloat).contiguous();
  const int64_t valid = in.size(0), cols = in.size(1);
  Fp8Rows out{at::zeros({rows, cols}, at::kByte), at::ones({rows, 1}, at::kFloat)};
  for (int64_t r = 0; r < valid; ++r) {
    const float* v = in.data_ptr<float>() + r * cols;
    uint8_t* codes = out.codes.data_ptr<uint8_t>() + r * cols;
    float amax = 0.0f;
    for (int64_t i = 0; i < cols; ++i) amax = std::fmax(amax, std::fabs(v[i]));
    const float scale = fp8_rows::row_scale(amax);
    out.scales.data_ptr<float>()[r] = scale;
    for (int64_t i = 0; i < cols; ++i) codes[i] = encode_fp8(v[i] / scale, core::DType::F8_E4M3FN);
  }
  return out;
}

}  // namespace wan::ops
