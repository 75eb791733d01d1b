// The per-row arithmetic of the fp8 activation quantisation (fp8_rows_cuda.cu), shared with its
// CPU reference (ops::quantize_fp8_rows_reference): one scale per row, its largest magnitude
// mapped to e4m3fn's largest finite value.
#pragma once
#include "ops/rounded.h"

namespace wan::ops::fp8_rows {

constexpr float kE4m3fnMax = 448.0f;

// The scale of a row whose largest magnitude is amax (IEEE division, as on the host): never 0,
// so that an all-zero row divides to codes of 0.
WAN_HOST_DEVICE float row_scale(float amax) {
  const float scale = amax / kE4m3fnMax;
  return scale > 1e-12f ? scale : 1e-12f;
}

}  // namespace wan::ops::fp8_rows
