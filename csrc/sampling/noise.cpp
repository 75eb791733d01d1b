#include "sampling/noise.h"

#include <ATen/CPUGeneratorImpl.h>

#include "core/error.h"

namespace wan::sampling {

NoiseGenerator::NoiseGenerator(uint64_t seed) : generator_(at::make_generator<at::CPUGeneratorImpl>(seed)) {}

at::Tensor NoiseGenerator::randn(const std::vector<int64_t>& shape) {
  return at::randn(shape, generator_, at::TensorOptions().dtype(at::kFloat));
}

at::Tensor NoiseGenerator::randperm(int64_t n) {
  return at::randperm(n, generator_, at::TensorOptions().dtype(at::kLong));
}

at::Tensor resize_bicubic(const at::Tensor& image, int64_t height, int64_t width) {
  const bool single = image.dim() == 3;
  if (!single && image.dim() != 4)
    throw core::Error(core::ErrorCode::InvalidTensor, "resize: expected an image [C, H, W] or [N, C, H, W]");
  const at::Tensor batch = single ? image.unsqueeze(0) : image;
  const at::Tensor out = at::upsample_bicubic2d(batch.to(at::kFloat).contiguous(), {height, width}, false);
  return single ? out.squeeze(0) : out;
}

}  // namespace wan::sampling
