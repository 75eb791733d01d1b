// FreSca (the wrapper's use_fresca, after WikiChao/FreSca): the guidance term rescaled by
// frequency, its low spatial frequencies by one factor and the rest by another.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

namespace wan::sampling {

// x [..., H, W] float32: each H x W plane's 2-D spectrum times `low` inside the box of the
// centred spectrum whose rows and columns lie within `cutoff` of the centre (index H/2 - cutoff
// up to, not including, H/2 + cutoff; the same for W; clamped to the spectrum), times `high`
// outside it; the real part of the inverse transform, float32.
at::Tensor fourier_filter(const at::Tensor& x, double low, double high, int64_t cutoff);

}  // namespace wan::sampling
