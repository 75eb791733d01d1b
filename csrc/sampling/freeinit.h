// FreeInit's noise reinitialisation (Wu et al. 2023, the wrapper's freeinit_args): a latent's
// low spatio-temporal frequencies joined to another's high ones.
#pragma once
#include <ATen/ATen.h>

namespace wan::sampling {

// x, noise [..., T, H, W] and low_pass [T, H, W] float32, the filter laid out centred (frequency
// 0 at index T/2, H/2, W/2, as after fftshift): the 3-D spectrum of x times low_pass plus the
// spectrum of noise times (1 - low_pass), transformed back; the real part, float32.
at::Tensor frequency_mix(const at::Tensor& x, const at::Tensor& noise, const at::Tensor& low_pass);

}  // namespace wan::sampling
