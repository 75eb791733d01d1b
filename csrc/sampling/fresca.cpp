#include "sampling/fresca.h"

#include <algorithm>

namespace wan::sampling {

at::Tensor fourier_filter(const at::Tensor& x, double low, double high, int64_t cutoff) {
  const int64_t height = x.size(-2), width = x.size(-1);
  // The box in centred (fftshift) coordinates, then shifted back to the FFT's own order, so the
  // spectrum itself need not be shifted. (The wrapper slices the centred mask with Python
  // slices, which wrap around once 2 * cutoff exceeds the latent's size; here the box stops at
  // the spectrum's edges.)
  at::Tensor mask = at::full({height, width}, high, at::kFloat);
  const int64_t row0 = std::max<int64_t>(0, height / 2 - cutoff), row1 = std::min(height, height / 2 + cutoff);
  const int64_t col0 = std::max<int64_t>(0, width / 2 - cutoff), col1 = std::min(width, width / 2 + cutoff);
  if (row0 < row1 && col0 < col1) mask.slice(0, row0, row1).slice(1, col0, col1).fill_(low);
  mask = at::fft_ifftshift(mask, {0, 1});
  const at::Tensor spectrum = at::fft_fft2(x.to(at::kFloat), c10::nullopt, {-2, -1});
  return at::real(at::fft_ifft2(spectrum * mask, c10::nullopt, {-2, -1})).contiguous();
}

}  // namespace wan::sampling
