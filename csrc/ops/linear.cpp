#include "ops/linear.h"

#include <array>
#include <cstring>
#include <vector>

#include "ops/norm.h"

namespace wan::ops {

namespace {

const std::array<float, 256>& fp8_values(core::DType format) {
  static const auto table = [](float (*decode)(uint8_t)) {
    std::array<float, 256> t{};
    for (int i = 0; i < 256; ++i) t[i] = decode(static_cast<uint8_t>(i));
    return t;
  };
  static const std::array<float, 256> e4m3 = table(core::f8_e4m3fn_to_float), e5m2 = table(core::f8_e5m2_to_float);
  return format == core::DType::F8_E5M2 ? e5m2 : e4m3;
}

}  // namespace

Weight Weight::widened() const {
  if (!needs_widening()) return *this;
  return widened_into(at::empty(stored.value.sizes(), at::TensorOptions().dtype(at::kFloat)));
}

Weight Weight::widened_into(at::Tensor out) const {
  using core::DType;
  if (!needs_widening()) return *this;
  const bool per_tensor_scale = !scale.defined() || scale.numel() == 1;
  const bool direct = stored.dtype == DType::F32 || stored.dtype == DType::BF16 || stored.dtype == DType::F16 ||
                      stored.dtype == DType::F8_E4M3FN || stored.dtype == DType::F8_E5M2;
  if (!direct || !per_tensor_scale || !stored.value.is_contiguous() || !stored.value.device().is_cpu()) {
    out.copy_(get(at::kFloat));
    return Weight{core::Tensor{out, DType::F32}, {}};
  }
  const int64_t n = stored.value.numel();
  float* dst = out.data_ptr<float>();
  const void* src = stored.value.data_ptr();
  switch (stored.dtype) {
    case DType::F32:
      std::memcpy(dst, src, n * sizeof(float));
      break;
    case DType::BF16:  // the top half of a float32
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(src)[i]) << 16;
        std::memcpy(&dst[i], &bits, sizeof(float));
      }
      break;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(static_cast<const c10::Half*>(src)[i]);
      break;
    default: {  // fp8 codes
      const auto& table = fp8_values(stored.dtype);
      for (int64_t i = 0; i < n; ++i) dst[i] = table[static_cast<const uint8_t*>(src)[i]];
    }
  }
  if (scale.defined()) {
    const float s = scale.to(at::kFloat).item<float>();
    for (int64_t i = 0; i < n; ++i) dst[i] *= s;
  }
  return Weight{core::Tensor{out, DType::F32}, {}};
}

Weight Weight::to(at::Device device, bool pinned) const {
  auto move = [&](const at::Tensor& t) -> at::Tensor {
    if (!t.defined()) return t;
    if (device.is_cpu() && pinned) return t.is_pinned() ? t : t.to(at::kCPU).pin_memory();
    return t.to(device);
  };
  return Weight{core::Tensor{move(stored.value), stored.dtype}, move(scale)};
}

at::Tensor Weight::get(at::ScalarType compute) const {
  at::Tensor w = stored.dtype == core::DType::F8_E4M3FN || stored.dtype == core::DType::F8_E5M2
                     ? core::to_float(stored)
                     : stored.value;
  if (scale.defined()) w = w.to(at::kFloat) * scale.to(w.device(), at::kFloat);
  return w.to(compute);
}

at::Tensor linear(const at::Tensor& x, const Weight& weight, const Weight& bias) {
  const auto compute = x.scalar_type();
  const at::Tensor w = weight.get(compute);
  // On the CPU in float32 the product, then the bias in place: libtorch's linear (addmm with the
  // bias as C) ran the DiT's [L, 1536] x [1536, 1536] projections 9-12 % slower with OpenBLAS on
  // this machine (176 against 201 GFLOP/s at L = 1,024 and 4,096); the FFN's shapes were within
  // the noise either way. Autograd keeps the composite.
  if (x.is_cpu() && compute == at::kFloat && bias.defined() && !records_grad(x, w))
    return at::matmul(x, w.t()).add_(bias.get(compute));
  return at::linear(x, w, bias.defined() ? bias.get(compute) : at::Tensor());
}

at::Tensor linear_gelu_fused(const at::Tensor& x, const Weight& weight, const Weight& bias) {
  if (!x.is_cuda() || !bias.defined() || x.dim() < 1 || records_grad(x)) return {};
  const auto compute = x.scalar_type();
  const at::Tensor w = weight.get(compute);
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = w.size(0);
  const at::Tensor rows = x.reshape({-1, x.size(-1)});
  return at::_addmm_activation(bias.get(compute), rows, w.t(), 1, 1, /*use_gelu=*/true).view(sizes);
}

}  // namespace wan::ops
