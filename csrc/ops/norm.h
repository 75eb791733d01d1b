// Normalisations of the Wan models, computed in float32 as the official code does.
#pragma once
#include <ATen/ATen.h>

namespace wan::ops {

// Whether autograd records an op on a or b: the hand-written CPU loops (which have no
// backward) then give way to composite ATen ops, for training (the demo model's trainer, issue 9).
bool records_grad(const at::Tensor& a, const at::Tensor& b = {});

// x * rsqrt(mean(x^2, -1) + eps) * weight over the last dimension (WanRMSNorm).
// x: [..., C] float32 -> [..., C] float32.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// LayerNorm over the last dimension; weight and bias may be undefined (no affine).
at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps);

}  // namespace wan::ops
