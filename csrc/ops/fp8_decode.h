// fp8 (e4m3fn / e5m2) codes -> float32 on the GPU. libtorch 1.13 has no float8 dtypes and
// 2.x only converts them through its own kernels, so checkpoints' fp8 weights are decoded
// here wherever they live. The CPU path is core::to_float's lookup table.
#pragma once
#include <cstdint>

namespace wan::ops {

// Decodes n codes from device memory `src` into `dst` on `stream` (a cudaStream_t).
// Exact for every code, NaN, infinities and subnormals included (same rules as
// core::f8_e4m3fn_to_float / f8_e5m2_to_float). Returns a cudaError_t as int.
int launch_fp8_decode(const uint8_t* src, float* dst, int64_t n, bool e5m2, void* stream);

}  // namespace wan::ops
