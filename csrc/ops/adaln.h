// The DiT blocks' adaptive LayerNorm: the modulation of a block's input by its timestep
// embedding, and the gated residual that adds an attention or FFN output back (the official
// WanAttentionBlock's `norm1(x) * (1 + e[1]) + e[0]` and `x + y * e[2]`). Eager, as fused kernels
// (`compile`, on a GPU) and as those kernels' CPU references.
#pragma once
#include <ATen/ATen.h>

namespace wan::ops {

// LayerNorm(x) (no affine) * (1 + scale) + shift, float32. x [B, L, dim] float32; scale and
// shift broadcast over it ([B, 1, dim]). In place on the norm's output where autograd does not
// record, which leaves one [B, L, dim] tensor live instead of three.
at::Tensor modulate(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, double eps);

// x + y * gate, float32: x [B, L, dim] float32, y [B, L, dim] in any float dtype (promoted
// exactly), gate [B, 1, dim] float32.
at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate);

// Compiled, on a GPU: modulate() as one kernel (ops/adaln_cuda.cu), the result in out_dtype (the
// compute dtype of the linear layer that takes it), within 1e-5 of the eager ops in float32.
// Returns an undefined tensor where the kernel does not apply (a CPU tensor, a CPU-only build,
// autograd recording, an out_dtype other than float32, float16 or bfloat16, scale or shift not
// [B, 1, dim]): the caller then runs modulate().
at::Tensor modulate_fused(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, double eps,
                          at::ScalarType out_dtype);

// Compiled, on a GPU: gated_residual() as one kernel, bitwise equal to it. Undefined where the
// kernel does not apply, as modulate_fused.
at::Tensor gated_residual_fused(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate);

// The kernels' arithmetic on the CPU, a row at a time (ops/adaln_row.h, which the kernels
// share; the row's sums in order): what tests compare with the eager ops where no GPU runs the
// kernels. Same arguments; float32 on the CPU.
at::Tensor modulate_reference(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, double eps);
at::Tensor gated_residual_reference(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate);

}  // namespace wan::ops
