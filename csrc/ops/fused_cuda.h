// Launchers of the fused row and elementwise kernels of the GPU path: those a model loaded with
// `compile` runs, RMS norm + RoPE for q and k (norm_rope_cuda.cu) and the blocks' modulation and
// gated residual (adaln_cuda.cu), called by ops/rope.cpp and ops/adaln.cpp; and the fp8 matmuls'
// activation quantisation (fp8_rows_cuda.cu), called by ops/fp8_rows.cpp. Plain pointers and
// sizes, no ATen, so that the .cu files build with nvcc alone (scripts/cuda-compile-check.sh),
// like ops/attention_cuda.h.
#pragma once
#include <cstdint>

namespace wan::ops {

// The element types the kernels read and write (ops/kernel_glue.h maps ATen's onto them).
enum class KernelDType : int { F32 = 0, F16 = 1, BF16 = 2 };

// The samples one norm_rope launch takes: their grids travel in the kernel's parameters.
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
  int x_dtype, out_dtype;  // KernelDType
  float eps;
  bool rope;
};

// Returns a cudaError_t as int; cudaErrorInvalidValue for a batch of 0 or over
// kNormRopeMaxBatch, an odd head_dim, or a dim that is not a multiple of it.
int launch_norm_rope(const NormRopeProblem& p, void* stream);

// A block's modulation: x [B, L, dim] float32 -> out [B, L, dim] in out_dtype, row (b, l) being
// LayerNorm(x) (no affine, biased variance, eps) * (1 + scale[b]) + shift[b], with scale and shift
// [B, dim] float32; all contiguous in device memory. Computed in float32 and rounded once to
// out's dtype, the compute dtype of the linear layer that takes it.
struct ModulateProblem {
  const float* x;
  void* out;
  const float* scale;
  const float* shift;
  int64_t batch, seq_len, dim;
  int out_dtype;  // KernelDType
  float eps;
};

// Returns a cudaError_t as int; cudaErrorInvalidValue for a dim of 0 or an unknown dtype.
int launch_modulate(const ModulateProblem& p, void* stream);

// The gated residual: out = x + y * gate[b] over [B, L, dim], x and out float32, y in y_dtype (a
// linear layer's output in the compute dtype), gate [B, dim] float32; contiguous, device memory.
// out may be x.
struct GatedResidualProblem {
  const float* x;
  const void* y;
  const float* gate;
  float* out;
  int64_t batch, seq_len, dim;
  int y_dtype;  // KernelDType
};

// Returns a cudaError_t as int; cudaErrorInvalidValue for a dim of 0 or an unknown dtype.
int launch_gated_residual(const GatedResidualProblem& p, void* stream);

// fp8 activations with one scale per row: x [valid_rows, cols] (f16 or bf16, contiguous, device
// memory) -> codes [rows, cols] e4m3fn and scales [rows] float32, rows >= valid_rows. Row r's
// scale is max(absmax(x[r]) / 448, 1e-12) and its codes x[r, c] / scale rounded to the nearest
// e4m3fn value (ties to even), saturating at +-448; rows past valid_rows (padding for the fp8
// GEMM) get codes 0 and scale 1.
struct Fp8RowsProblem {
  const void* x;
  uint8_t* codes;
  float* scales;
  int64_t rows, valid_rows, cols;
  int x_dtype;  // KernelDType
};

// Returns a cudaError_t as int; cudaErrorInvalidValue for valid_rows > rows, cols of 0 or an
// unknown dtype.
int launch_fp8_rows(const Fp8RowsProblem& p, void* stream);

}  // namespace wan::ops
