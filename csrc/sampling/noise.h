// The sampler's random numbers, drawn exactly as the official code draws them: PyTorch's CPU
// generator (mt19937) seeded with the seed, float32 normals (wan/text2video.py `torch.randn(...,
// generator=seed_g)`), so a seed gives the official initial noise. One generator per run: the
// draws after the initial noise (FreeNoise's permutations, SDE noise) continue its stream.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace wan::sampling {

class NoiseGenerator {
 public:
  explicit NoiseGenerator(uint64_t seed);

  at::Tensor randn(const std::vector<int64_t>& shape);  // float32 N(0, 1)
  at::Tensor randperm(int64_t n);                       // int64, torch.randperm(n, generator)

 private:
  at::Generator generator_;
};

// torch.nn.functional.interpolate(x, size, mode='bicubic', align_corners=False) of an image
// [C, H, W] (or a batch [N, C, H, W]) in float32: how the official I2V resizes its input.
at::Tensor resize_bicubic(const at::Tensor& image, int64_t height, int64_t width);

}  // namespace wan::sampling
