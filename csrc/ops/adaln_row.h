// The per-element arithmetic of the fused modulation and gated-residual kernels (adaln_cuda.cu),
// shared with their CPU references (ops::modulate_reference, ops::gated_residual_reference), so
// that machines without a GPU check it against the eager ops (test/native/adaln.test.ts).
#pragma once
#include "ops/rounded.h"

namespace wan::ops::adaln {

// One element of a block's modulation: LayerNorm without affine, (x - mean) * inverse_std, then
// * (1 + scale) + shift, each operation rounded as the eager layer_norm, mul_ and add_ round it.
WAN_HOST_DEVICE float modulated(float x, float mean, float inverse_std, float scale, float shift) {
  const float normed = rounded::mul(rounded::sub(x, mean), inverse_std);
  return rounded::add(rounded::mul(normed, rounded::add(1.0f, scale)), shift);
}

// One element of the gated residual x + y * gate: bitwise what the eager mul and add give.
WAN_HOST_DEVICE float gated(float x, float y, float gate) { return rounded::add(x, rounded::mul(y, gate)); }

}  // namespace wan::ops::adaln
