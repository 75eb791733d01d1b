#include "ops/adaln.h"

#include <cmath>
#include <string>

#include "core/error.h"
#include "core/tensor.h"
#include "ops/adaln_row.h"
#include "ops/norm.h"

#ifdef WAN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "ops/kernel_glue.h"
#endif

namespace wan::ops {

using core::shape_text;

namespace {

// Whether `per_sample` ([B, 1, dim] or [B, dim]) holds one row of x [B, L, dim]'s width per sample.
bool one_row_per_sample(const at::Tensor& x, const at::Tensor& per_sample) {
  return per_sample.defined() && per_sample.numel() == x.size(0) * x.size(2) && per_sample.size(0) == x.size(0) &&
         per_sample.size(-1) == x.size(2);
}

// For the references: x [B, L, dim] and per-sample rows that fit it, or an error naming them.
void check_shapes(const char* op, const at::Tensor& x, std::initializer_list<std::pair<const char*, at::Tensor>> rows) {
  if (x.dim() != 3)
    throw core::Error(core::ErrorCode::InvalidTensor,
                      std::string(op) + ": x must be [B, L, dim], got " + shape_text(x.sizes()));
  for (const auto& [name, t] : rows)
    if (!one_row_per_sample(x, t))
      throw core::Error(core::ErrorCode::InvalidTensor, std::string(op) + ": " + name + " must be [" +
                                                            std::to_string(x.size(0)) + ", 1, " + std::to_string(x.size(2)) +
                                                            "] for x " + shape_text(x.sizes()) + ", got " +
                                                            (t.defined() ? shape_text(t.sizes()) : "nothing"));
}

#ifdef WAN_WITH_CUDA
// Whether the fused kernels take these: float32 x [B, L, dim] on a GPU, the per-sample rows on
// its device, no autograd.
bool fusable(const at::Tensor& x, std::initializer_list<at::Tensor> rows) {
  if (!x.is_cuda() || x.dim() != 3 || x.scalar_type() != at::kFloat || records_grad(x)) return false;
  for (const at::Tensor& t : rows)
    if (!one_row_per_sample(x, t) || t.device() != x.device() || records_grad(t)) return false;
  return true;
}
#endif

}  // namespace

at::Tensor modulate(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, double eps) {
  // The same elementwise ops in place give bitwise the same result as h * (1 + scale) + shift;
  // out of place where autograd records (training), as the in-place forms would need the
  // overwritten values.
  at::Tensor h = layer_norm(x, {}, {}, eps);
  if (records_grad(x, scale) || records_grad(shift)) return h * (1 + scale) + shift;
  return h.mul_(1 + scale).add_(shift);
}

at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate) {
  return x + y * gate;
}

at::Tensor modulate_fused(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, double eps,
                          at::ScalarType out_dtype) {
#ifdef WAN_WITH_CUDA
  if (!fusable(x, {scale, shift}) || kernel_dtype(out_dtype) < 0) return {};
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor in = x.contiguous();
  const at::Tensor s = scale.to(at::kFloat).contiguous(), t = shift.to(at::kFloat).contiguous();
  at::Tensor out = at::empty(in.sizes(), in.options().dtype(out_dtype));
  ModulateProblem p{};
  p.x = in.data_ptr<float>();
  p.out = out.data_ptr();
  p.scale = s.data_ptr<float>();
  p.shift = t.data_ptr<float>();
  p.batch = in.size(0);
  p.seq_len = in.size(1);
  p.dim = in.size(2);
  p.out_dtype = kernel_dtype(out_dtype);
  p.eps = static_cast<float>(eps);
  check_launch("modulate", launch_modulate(p, c10::cuda::getCurrentCUDAStream(x.device().index()).stream()));
  return out;
#else
  return {};
#endif
}

at::Tensor gated_residual_fused(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate) {
#ifdef WAN_WITH_CUDA
  if (!fusable(x, {gate}) || !y.defined() || y.sizes() != x.sizes() || y.device() != x.device() || records_grad(y) ||
      kernel_dtype(y.scalar_type()) < 0)
    return {};
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor in = x.contiguous(), add = y.contiguous(), g = gate.to(at::kFloat).contiguous();
  at::Tensor out = at::empty_like(in);
  GatedResidualProblem p{};
  p.x = in.data_ptr<float>();
  p.y = add.data_ptr();
  p.gate = g.data_ptr<float>();
  p.out = out.data_ptr<float>();
  p.batch = in.size(0);
  p.seq_len = in.size(1);
  p.dim = in.size(2);
  p.y_dtype = kernel_dtype(add.scalar_type());
  check_launch("gated_residual",
               launch_gated_residual(p, c10::cuda::getCurrentCUDAStream(x.device().index()).stream()));
  return out;
#else
  return {};
#endif
}

at::Tensor modulate_reference(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, double eps) {
  check_shapes("modulate_reference", x, {{"scale", scale}, {"shift", shift}});
  const at::Tensor in = x.to(at::kCPU, at::kFloat).contiguous();
  const at::Tensor s = scale.to(at::kCPU, at::kFloat).contiguous(), t = shift.to(at::kCPU, at::kFloat).contiguous();
  at::Tensor out = at::empty_like(in);
  const int64_t seq_len = in.size(1), dim = in.size(2);
  const float inverse_dim = 1.0f / static_cast<float>(dim);
  for (int64_t row = 0; row < in.size(0) * seq_len; ++row) {
    const float* a = in.data_ptr<float>() + row * dim;
    const float* sc = s.data_ptr<float>() + (row / seq_len) * dim;
    const float* sh = t.data_ptr<float>() + (row / seq_len) * dim;
    float* o = out.data_ptr<float>() + row * dim;
    float sum = 0.0f;
    for (int64_t i = 0; i < dim; ++i) sum = rounded::add(sum, a[i]);
    const float mean = rounded::mul(sum, inverse_dim);
    float squares = 0.0f;
    for (int64_t i = 0; i < dim; ++i) {
      const float d = rounded::sub(a[i], mean);
      squares = rounded::add(squares, rounded::mul(d, d));
    }
    const float inverse_std =
        1.0f / std::sqrt(rounded::add(rounded::mul(squares, inverse_dim), static_cast<float>(eps)));
    for (int64_t i = 0; i < dim; ++i) o[i] = adaln::modulated(a[i], mean, inverse_std, sc[i], sh[i]);
  }
  return out;
}

at::Tensor gated_residual_reference(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate) {
  check_shapes("gated_residual_reference", x, {{"gate", gate}});
  if (!y.defined() || y.sizes() != x.sizes())
    throw core::Error(core::ErrorCode::InvalidTensor, "gated_residual_reference: y must be " + shape_text(x.sizes()) +
                                                          " like x, got " +
                                                          (y.defined() ? shape_text(y.sizes()) : "nothing"));
  const at::Tensor in = x.to(at::kCPU, at::kFloat).contiguous();
  // y's values are exact in float32 whatever its dtype (float16 and bfloat16 widen exactly).
  const at::Tensor add = y.to(at::kCPU, at::kFloat).contiguous(), g = gate.to(at::kCPU, at::kFloat).contiguous();
  at::Tensor out = at::empty_like(in);
  const int64_t seq_len = in.size(1), dim = in.size(2);
  const float* a = in.data_ptr<float>();
  const float* b = add.data_ptr<float>();
  const float* w = g.data_ptr<float>();
  float* o = out.data_ptr<float>();
  for (int64_t i = 0; i < in.numel(); ++i) o[i] = adaln::gated(a[i], b[i], w[(i / (seq_len * dim)) * dim + i % dim]);
  return out;
}

}  // namespace wan::ops
