// fp8 weight storage chosen at load (the wrapper's `quantization` option): weights of the
// large linear layers become fp8 codes, widened per layer just before use (ops::Weight::get);
// everything the wrapper keeps in high precision stays as the file has it.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "ops/linear.h"

namespace wan::ops {

enum class Quantization {
  Disabled,         // use the file's dtypes
  Fp8E4m3fn,        // e4m3fn codes of the values
  Fp8E4m3fnScaled,  // e4m3fn codes of value / scale, scale = absmax / 448 per tensor (ComfyUI)
  Fp8E5m2,          // e5m2 codes of the values
};

Quantization quantization_from_name(const std::string& name);  // throws InvalidOption
const char* quantization_name(Quantization q);

// The wrapper's params_to_keep (WanVideoModelLoader, its versions together): a parameter whose
// name contains one of these stays in high precision.
const std::vector<std::string>& kept_in_high_precision();
bool keeps_precision(const std::string& name);

// float32 -> fp8 code, rounding to nearest (ties to even) and saturating at the largest finite
// value (+-448 for e4m3fn, +-57344 for e5m2); NaN -> the format's NaN code.
uint8_t encode_fp8(float value, core::DType format);
at::Tensor encode_fp8(const at::Tensor& values, core::DType format);  // any float dtype -> kByte codes

// Converts the weights of `weights` that the wrapper quantizes (2-D or more, name not kept) to
// `q`. Weights already stored in the requested form are left alone; fp8 weights of another
// form are decoded and re-encoded. Afterwards no weight refers to its source any more (kept
// ones are copied), so a mapped checkpoint can be released. Returns how many were converted.
int quantize_weights(std::map<std::string, Weight>& weights, Quantization q, const std::function<bool()>& cancelled);

}  // namespace wan::ops
