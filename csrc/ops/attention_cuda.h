// Launchers of the CUDA attention kernels (attention_flash.cu, attention_sage.cu), called by
// ops/attention.cpp for GPU tensors. Plain pointers and sizes, no ATen, so that the .cu files
// build with nvcc alone (scripts/cuda-compile-check.sh), like ops/fp8_decode.cu.
#pragma once
#include <cstdint>

namespace wan::ops {

enum class AttentionDType : int { F32 = 0, F16 = 1, BF16 = 2 };

// q [B, Lq, H, D], k and v [B, Lk, H, D] and out [B, Lq, H, D], all of one dtype in device
// memory, each with a contiguous last dimension; strides are in elements, for B, L and H.
struct AttentionProblem {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  // Device int64 [B], or nullptr: batch entry b attends to keys j < k_lens[b], clamped to
  // [0, k_len] (the host does not read device values; a row with no key comes out as zeros).
  const int64_t* k_lens;
  int64_t batch, q_len, k_len, heads, head_dim;
  int64_t q_stride[3], k_stride[3], v_stride[3], out_stride[3];
  int dtype;    // AttentionDType
  float scale;  // the softmax scale, 1 / sqrt(head_dim)
};

// The head sizes the kernels are instantiated for (Wan: 128; CLIP-H: 80; tests: 32). Others
// go to libtorch's SDPA.
inline bool cuda_attention_supports_head_dim(int64_t d) {
  return d == 32 || d == 64 || d == 80 || d == 96 || d == 128 || d == 256;
}

// FlashAttention-style: one thread block per (batch, head, 64 queries), key tiles of 32 in
// shared memory, float32 scores, online softmax and accumulators. Returns a cudaError_t as int.
int launch_flash_attention(const AttentionProblem& p, void* stream);

// SageAttention: K centred by its mean over the keys, Q (per 64 queries) and K (per 32 keys)
// quantised to int8, Q.K^T with __dp4a, then softmax and P.V in float32. `workspace` is
// batch * heads * head_dim floats of device memory (the key means). Returns a cudaError_t.
int launch_sage_attention(const AttentionProblem& p, float* workspace, void* stream);

}  // namespace wan::ops
