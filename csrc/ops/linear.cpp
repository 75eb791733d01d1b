#include "ops/linear.h"

namespace wan::ops {

at::Tensor Weight::get(at::ScalarType compute) const {
  at::Tensor w = stored.dtype == core::DType::F8_E4M3FN || stored.dtype == core::DType::F8_E5M2
                     ? core::to_float(stored)
                     : stored.value;
  if (scale.defined()) w = w.to(at::kFloat) * scale.to(w.device(), at::kFloat);
  return w.to(compute);
}

at::Tensor linear(const at::Tensor& x, const Weight& weight, const Weight& bias) {
  const auto compute = x.scalar_type();
  return at::linear(x, weight.get(compute), bias.defined() ? bias.get(compute) : at::Tensor());
}

}  // namespace wan::ops
