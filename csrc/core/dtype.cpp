#include "core/dtype.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace wan::core {
namespace {

struct DTypeInfo {
  DType type;
  size_t size;
  std::string_view name;              // our API name
  std::string_view safetensors_name;  // as written in safetensors headers
};

constexpr DTypeInfo kDTypes[] = {
    {DType::F64, 8, "f64", "F64"},
    {DType::F32, 4, "f32", "F32"},
    {DType::F16, 2, "f16", "F16"},
    {DType::BF16, 2, "bf16", "BF16"},
    {DType::F8_E4M3FN, 1, "f8_e4m3fn", "F8_E4M3"},
    {DType::F8_E5M2, 1, "f8_e5m2", "F8_E5M2"},
    {DType::I64, 8, "i64", "I64"},
    {DType::I32, 4, "i32", "I32"},
    {DType::I16, 2, "i16", "I16"},
    {DType::I8, 1, "i8", "I8"},
    {DType::U8, 1, "u8", "U8"},
    {DType::Bool, 1, "bool", "BOOL"},
};

const DTypeInfo& info(DType t) {
  for (const auto& i : kDTypes)
    if (i.type == t) return i;
  return kDTypes[0];  // unreachable: every enumerator is in the table
}

}  // namespace

size_t dtype_size(DType t) { return info(t).size; }
std::string_view dtype_name(DType t) { return info(t).name; }
std::string_view dtype_safetensors_name(DType t) { return info(t).safetensors_name; }

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& i : kDTypes)
    if (i.name == name) return i.type;
  return std::nullopt;
}

std::optional<DType> dtype_from_safetensors_name(std::string_view name) {
  for (const auto& i : kDTypes)
    if (i.safetensors_name == name) return i.type;
  // Some writers spell the OCP name in full.
  if (name == "F8_E4M3FN") return DType::F8_E4M3FN;
  return std::nullopt;
}

// fp8 decoding by the definitions (OCP 8-bit floating point, 2023), computed with ldexp so
// that every code, subnormals included, is exact in float.
float f8_e4m3fn_to_float(uint8_t code) {
  const bool negative = code & 0x80;
  const int exponent = (code >> 3) & 0x0F;
  const int mantissa = code & 0x07;
  float value;
  if (exponent == 0x0F && mantissa == 0x07) {
    value = std::numeric_limits<float>::quiet_NaN();  // e4m3fn has no infinities
  } else if (exponent == 0) {
    value = std::ldexp(static_cast<float>(mantissa), -9);  // m/8 * 2^-6
  } else {
    value = std::ldexp(1.0f + mantissa / 8.0f, exponent - 7);
  }
  return negative ? -value : value;
}

float f8_e5m2_to_float(uint8_t code) {
  const bool negative = code & 0x80;
  const int exponent = (code >> 2) & 0x1F;
  const int mantissa = code & 0x03;
  float value;
  if (exponent == 0x1F) {
    value = mantissa == 0 ? std::numeric_limits<float>::infinity()
                          : std::numeric_limits<float>::quiet_NaN();
  } else if (exponent == 0) {
    value = std::ldexp(static_cast<float>(mantissa), -16);  // m/4 * 2^-14
  } else {
    value = std::ldexp(1.0f + mantissa / 4.0f, exponent - 15);
  }
  return negative ? -value : value;
}

}  // namespace wan::core
