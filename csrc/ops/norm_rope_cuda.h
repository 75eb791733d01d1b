// Launcher of the fused RMS norm + RoPE kernel (norm_rope_cuda.cu), called by ops/rope.cpp for
// GPU tensors when a model is loaded with `compile`. Plain pointers and sizes, no ATen, so that
// the .cu file builds with nvcc alone (scripts/cuda-compile-check.sh), like ops/attention_cuda.h.
#pragma once
#include <cstdint>

namespace wan::ops {

enum class NormRopeDType : int { F32 = 0, F16 = 1, BF16 = 2 };

// The samples one launch takes: their grids travel in the kernel's parameters.
constexpr int kNormRopeMaxBatch = 16;

// x and out [B, L, dim], contiguous, in device memory; weight [dim] float32. Row (b, l) becomes
// x * rsqrt(mean(x^2) + eps) * weight in float32 (WanRMSNorm over the whole dim, all heads), then,
// when `rope`, each head's (2c, 2c + 1) pairs turn by the angle of token l's grid position as
// rope_apply does: pairs [0, parts[0]) by its frame, the next parts[1] by its row, the rest by its
// column (cos and sin [max_pos, head_dim / 2] float32, device memory); tokens past a sample's
// grid F*H*W are only normalised. The result is rounded once to out's dtype.
struct NormRopeProblem {
  const void* x;
  void* out;
  const float* weight;
  const float* cos;
  const float* sin;
  int64_t batch, seq_len, dim, head_dim;
  int64_t grids[kNormRopeMaxBatch][3];
  int64_t parts[3];
  int x_dtype, out_dtype;  // NormRopeDType
  float eps;
  bool rope;
};

// Returns a cudaError_t as int; cudaErrorInvalidValue for a batch of 0 or over
// kNormRopeMaxBatch, an odd head_dim, or a dim that is not a multiple of it.
int launch_norm_rope(const NormRopeProblem& p, void* stream);

}  // namespace wan::ops
