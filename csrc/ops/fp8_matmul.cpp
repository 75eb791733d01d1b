#include "ops/fp8_matmul.h"

#include <torch/version.h>

#include <optional>
#include <vector>

#include "core/error.h"
#include "ops/fp8_rows.h"

// at::_scaled_mm took its current argument order in libtorch 2.5 (native-notes.md); older
// versions and CPU-only builds have no fp8 matmul. WAN_NO_FP8_MATMUL (CMake WAN_FP8_MATMUL=OFF)
// leaves it out of a CUDA build.
#if defined(WAN_WITH_CUDA) && !defined(WAN_NO_FP8_MATMUL) && \
    (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5))
#define WAN_FP8_MATMUL 1
#include <ATen/cuda/CUDAContext.h>
#endif

namespace wan::ops {

std::string fp8_matmul_unsupported(at::Device device) {
#ifdef WAN_FP8_MATMUL
  if (!device.is_cuda()) return "it runs on a GPU, and this model computes on the " + device.str();
  const cudaDeviceProp* p = at::cuda::getDeviceProperties(device.index());
  if (p->major * 10 + p->minor < 89)
    return "it needs a GPU of compute capability 8.9 or later, and " + std::string(p->name) + " has " +
           std::to_string(p->major) + "." + std::to_string(p->minor);
  return "";
#else
  return "this build has no fp8 matmuls (they need a CUDA build on libtorch 2.5 or later)";
#endif
}

bool fp8_matmul_fits(const at::Tensor& x, const Weight& weight) {
  const at::Tensor& w = weight.stored.value;
  return x.is_cuda() && weight.stored.dtype == core::DType::F8_E4M3FN && w.dim() == 2 && w.size(0) % 16 == 0 &&
         w.size(1) % 16 == 0 && x.size(-1) == w.size(1) &&
         (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf) &&
         (!weight.scale.defined() || weight.scale.numel() == 1);
}

at::Tensor linear_fp8(const at::Tensor& x, const Weight& weight, const Weight& bias) {
#ifdef WAN_FP8_MATMUL
  const int64_t K = x.size(-1), N = weight.stored.value.size(0);
  at::Tensor a = x.reshape({-1, K});
  const int64_t M = a.size(0), rows = (M + 15) / 16 * 16;  // the fp8 GEMM wants rows in 16s
  const at::Tensor w8 = weight.stored.value.view(at::kFloat8_e4m3fn);  // [N, K]; .t() is column-major [K, N]
  const at::Tensor w_scale = weight.scale.defined() ? weight.scale.to(a.device(), at::kFloat).reshape({1, 1})
                                                    : at::ones({1, 1}, a.options().dtype(at::kFloat));
  // The bias is added in the GEMM's epilogue (in x's dtype, as _scaled_mm wants it), before the
  // output is rounded: no pass of its own over the output.
  std::optional<at::Tensor> b;  // nullopt, not an undefined tensor, when there is none: _scaled_mm tests has_value
  if (bias.defined()) b = bias.get(x.scalar_type());
  at::Tensor y;
  const cudaDeviceProp* props = at::cuda::getDeviceProperties(a.device().index());
  if (x.scalar_type() == at::kBFloat16 && props->major >= 9) {
    // One scale per row (token), computed and applied by one kernel (ops/fp8_rows.h); libtorch's
    // row-wise fp8 GEMM (sm_90, bf16 output) takes them with the weight's scale per column.
    const Fp8Rows q = quantize_fp8_rows(a, rows);
    y = at::_scaled_mm(q.codes.view(at::kFloat8_e4m3fn), w8.t(), q.scales, w_scale.expand({1, N}).contiguous(), b,
                       /*scale_result=*/{}, at::kBFloat16, /*use_fast_accum=*/true);
  } else {
    // Elsewhere (sm_89, fp16) one scale for the tensor, as libtorch's GEMM there takes: three
    // passes over x's dtype, its extremes, the scaling and the cast. The scaled values stay below
    // e4m3fn's 448 but for x's rounding, and the cast rounds anything under 480 to 448, so no
    // clamp is needed.
    if (rows != M) a = at::constant_pad_nd(a, {0, 0, 0, rows - M});
    const auto extremes = at::aminmax(a);
    const at::Tensor amax = at::maximum(std::get<0>(extremes).abs(), std::get<1>(extremes).abs()).to(at::kFloat);
    const at::Tensor scale_a = (amax / 448.0).clamp_min(1e-12);  // float32, 0-dim
    const at::Tensor a8 = (a * scale_a.reciprocal()).to(at::kFloat8_e4m3fn);
    y = at::_scaled_mm(a8, w8.t(), scale_a, w_scale.reshape({}), b, /*scale_result=*/{}, x.scalar_type(),
                       /*use_fast_accum=*/true);
  }
  if (rows != M) y = y.narrow(0, 0, M);
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = N;
  return y.reshape(shape);
#else
  throw core::Error(core::ErrorCode::Internal, "linear_fp8: " + fp8_matmul_unsupported(x.device()));
#endif
}

}  // namespace wan::ops
