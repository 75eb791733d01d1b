// Element types that cross the JS boundary and appear in checkpoint files.
// ATen-free on purpose: the file parsers in csrc/io/ use it without pulling in libtorch.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace wan::core {

enum class DType : uint8_t {
  F64, F32, F16, BF16,
  F8_E4M3FN,  // 1 sign, 4 exponent (bias 7), 3 mantissa; no infinities, 0x7F/0xFF are NaN
  F8_E5M2,    // 1 sign, 5 exponent (bias 15), 2 mantissa; IEEE-like with inf and NaN
  I64, I32, I16, I8, U8, Bool,
};

// Bytes per element.
size_t dtype_size(DType t);

// The public name used by the TypeScript API: 'f32', 'bf16', 'f8_e4m3fn', ...
std::string_view dtype_name(DType t);
std::optional<DType> dtype_from_name(std::string_view name);

// The name used in safetensors headers: 'F32', 'BF16', 'F8_E4M3', ...
std::string_view dtype_safetensors_name(DType t);
std::optional<DType> dtype_from_safetensors_name(std::string_view name);

// Exact conversion of one fp8 code to float (NaN, subnormals and infinities included).
float f8_e4m3fn_to_float(uint8_t code);
float f8_e5m2_to_float(uint8_t code);

}  // namespace wan::core
