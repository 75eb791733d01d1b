// 3D rotary position embedding of Wan (wan/modules/model.py rope_params / rope_apply).
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <vector>

namespace wan::ops {

// The angle table for head dim d: [max_pos, d/2] as cos and sin, float32. The d/2 complex
// pairs are split over frames, height and width as [c - 2(c/3), c/3, c/3], c = d/2; each
// part k has its own frequencies 1/10000^(2j/d_k), d_k = 2 x its pair count (for d = 128:
// 22, 21 and 21 pairs). Angles are computed in float64, as the official complex table is.
struct RopeTable {
  at::Tensor cos, sin;  // [max_pos, d/2]
  std::array<int64_t, 3> parts;  // pairs for frame, height, width
};
//
// RIFLEx (the wrapper's riflex_freq_index, rope_params' k and L_test): frame frequency `index`
// (1-based; 0 leaves the table as it is) becomes 0.9 * 2 pi / latent_frames, so that its period
// is a little longer than the whole video and frames past the length the model was trained on
// do not repeat the first ones. Throws InvalidOption unless 0 <= index <= the frame part's pairs
// (22 for head dim 128) and, with an index, latent_frames >= 1.
struct Riflex {
  int64_t index = 0;
  int64_t latent_frames = 0;
};
RopeTable rope_table(int64_t head_dim, int64_t max_pos = 1024, double theta = 10000.0, Riflex riflex = {});

// The cos and sin that each token of samples with `grids`, padded to seq_len, turns its pairs by:
// [B, seq_len, 1, D/2] float32 each on `device`, cos 1 and sin 0 for padding. What rope_apply
// multiplies by off the CPU; a forward makes them once for all its blocks rather than gathering
// them from the table (on the host, then copied) at every call.
struct RopeAngles {
  at::Tensor cos, sin;
};
RopeAngles rope_angles(const std::vector<std::array<int64_t, 3>>& grids, int64_t seq_len, const RopeTable& table,
                       at::Device device);

// Rotates x [B, L, H, D] (float32): token l < F*H*W of sample b sits at grid position
// (f, h, w) of grids[b] = {F, H, W}; tokens past the grid (padding) are left as they are.
// `angles`, when given, are rope_angles(grids, L, table, x's device).
at::Tensor rope_apply(const at::Tensor& x, const std::vector<std::array<int64_t, 3>>& grids,
                      const RopeTable& table, const RopeAngles* angles = nullptr);

// Compiled (a model loaded with `compile`), on a GPU: rms_norm over the last dimension of
// x [B, L, dim] (weight [dim]) and then, when grids is given, rope_apply on its heads of head_dim,
// as one fused kernel (ops/norm_rope_cuda.cu), the result [B, L, dim] in out_dtype. The same
// arithmetic as the eager ops up to the order of one sum (within 1e-5). Returns an undefined
// tensor where the kernel does not apply (a CPU tensor, a CPU-only build, autograd recording,
// more than 16 samples, a dtype other than float32, float16 or bfloat16): the caller then runs
// the eager ops.
at::Tensor norm_rope_fused(const at::Tensor& x, const at::Tensor& weight, double eps, int64_t head_dim,
                           const std::vector<std::array<int64_t, 3>>* grids, const RopeTable& table,
                           at::ScalarType out_dtype);

// The fused kernel's arithmetic on the CPU, a row at a time (ops/norm_rope_row.h, which the
// kernel shares; the row's sum of squares in order): what tests compare with rms_norm and
// rope_apply where no GPU runs the kernel. x [B, L, dim] float32 on the CPU -> float32.
at::Tensor norm_rope_reference(const at::Tensor& x, const at::Tensor& weight, double eps, int64_t head_dim,
                               const std::vector<std::array<int64_t, 3>>* grids, const RopeTable& table);

}  // namespace wan::ops
