// Attention for the Wan DiT, in the layout of the official code (wan/modules/attention.py):
// q [B, Lq, H, D], k and v [B, Lk, H, D], result [B, Lq, H, D].
#pragma once
#include <ATen/ATen.h>

#include <string>

namespace wan::ops {

enum class AttentionMode {
  Sdpa,   // libtorch's scaled_dot_product_attention where it has one (>= 2.1), else plain math
  Flash,  // tiled, online softmax: never builds the Lq x Lk matrix (CPU threads; on a GPU,
          // libtorch's SDPA flash kernels, or our CUDA kernel where libtorch < 2.1)
  Sage,   // int8-quantised Q.K^T with K smoothing and per-block scales (SageAttention; on a
          // GPU our CUDA kernel, which is correct but far slower than SDPA there)
};

AttentionMode attention_mode_from_name(const std::string& name);  // "sdpa" | "flash" | "sageattn"
const char* attention_mode_name(AttentionMode mode);

// softmax(q k^T / sqrt(D)) v per batch and head. `k_lens` (int64 [B], optional: undefined
// tensor for none) masks keys at positions >= k_lens[b], as the official k_lens does for
// padded sequences. Computes in float32 on the CPU whatever the input dtype; returns float32
// on the CPU and the input dtype on a GPU.
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     AttentionMode mode, const at::Tensor& k_lens = {});

// The reference the other modes are tested against: plain float32 math, materialising the
// score matrix one query chunk at a time.
at::Tensor attention_math(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& k_lens = {});

}  // namespace wan::ops
