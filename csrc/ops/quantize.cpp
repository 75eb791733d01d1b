#include "ops/quantize.h"

#include <ATen/Parallel.h>

#include <array>
#include <cmath>

#include "core/error.h"

namespace wan::ops {

using core::DType;
using core::Error;
using core::ErrorCode;

Quantization quantization_from_name(const std::string& name) {
  if (name == "disabled") return Quantization::Disabled;
  if (name == "fp8_e4m3fn") return Quantization::Fp8E4m3fn;
  if (name == "fp8_e4m3fn_scaled") return Quantization::Fp8E4m3fnScaled;
  if (name == "fp8_e5m2") return Quantization::Fp8E5m2;
  throw Error(ErrorCode::InvalidOption,
              "quantization: expected one of disabled, fp8_e4m3fn, fp8_e4m3fn_scaled, fp8_e5m2 but received '" + name + "'");
}

const char* quantization_name(Quantization q) {
  switch (q) {
    case Quantization::Disabled: return "disabled";
    case Quantization::Fp8E4m3fn: return "fp8_e4m3fn";
    case Quantization::Fp8E4m3fnScaled: return "fp8_e4m3fn_scaled";
    case Quantization::Fp8E5m2: return "fp8_e5m2";
  }
  return "?";
}

const std::vector<std::string>& kept_in_high_precision() {
  // Older wrappers list "head" and "vector_in", newer ones "ref_conv" and "audio_proj"; both keep
  // the text embedding. Names that no Wan2.1 model here has (vector_in, adapter, ...) cost nothing.
  static const std::vector<std::string> kept = {"norm",     "head",          "bias",           "time_in",
                                                "vector_in", "patch_embedding", "time_",          "img_emb",
                                                "modulation", "text_embedding", "adapter",        "add",
                                                "ref_conv",  "audio_proj"};
  return kept;
}

bool keeps_precision(const std::string& name) {
  for (const std::string& k : kept_in_high_precision())
    if (name.find(k) != std::string::npos) return true;
  return false;
}

namespace {

struct Fp8Format {
  int mantissa_bits, bias;
  double max_finite;
  uint8_t max_code, nan_code;
};

Fp8Format format_of(DType format) {
  if (format == DType::F8_E4M3FN) return {3, 7, 448.0, 0x7E, 0x7F};
  if (format == DType::F8_E5M2) return {2, 15, 57344.0, 0x7B, 0x7E};
  throw Error(ErrorCode::Internal, "encode_fp8: not an fp8 format");
}

}  // namespace

uint8_t encode_fp8(float value, DType format) {
  const Fp8Format f = format_of(format);
  const uint8_t sign = std::signbit(value) ? 0x80 : 0x00;
  if (std::isnan(value)) return f.nan_code;
  const double x = std::fabs(static_cast<double>(value));
  const int steps = 1 << f.mantissa_bits;      // mantissa values per binade
  const int min_exponent = 1 - f.bias;         // of the smallest normal number
  int exponent = x > 0 ? std::ilogb(x) : min_exponent;
  if (exponent < min_exponent) exponent = min_exponent;  // subnormals share the smallest binade's spacing
  // Multiples of the spacing 2^(exponent - mantissa_bits); nearbyint rounds ties to even.
  double q = std::nearbyint(std::ldexp(x, f.mantissa_bits - exponent));
  if (q >= 2 * steps) {  // rounded up into the next binade
    exponent += 1;
    q /= 2;
  }
  if (std::ldexp(q, exponent - f.mantissa_bits) > f.max_finite) return sign | f.max_code;
  // Normal numbers: q in [steps, 2 steps) -> biased exponent, mantissa q - steps. Subnormals
  // (exponent == min_exponent, q < steps) have biased exponent 0 and mantissa q.
  const int biased = q >= steps ? exponent + f.bias : 0;
  const int mantissa = q >= steps ? static_cast<int>(q) - steps : static_cast<int>(q);
  return static_cast<uint8_t>(sign | (biased << f.mantissa_bits) | mantissa);
}

at::Tensor encode_fp8(const at::Tensor& values, DType format) {
  const at::Tensor x = values.to(at::kFloat).contiguous();
  at::Tensor codes = at::empty(x.sizes(), at::TensorOptions().dtype(at::kByte));
  const float* in = x.data_ptr<float>();
  uint8_t* out = codes.data_ptr<uint8_t>();
  at::parallel_for(0, x.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = encode_fp8(in[i], format);
  });
  return codes;
}

int quantize_weights(std::map<std::string, Weight>& weights, Quantization q, const std::function<bool()>& cancelled) {
  if (q == Quantization::Disabled) return 0;
  const DType format = q == Quantization::Fp8E5m2 ? DType::F8_E5M2 : DType::F8_E4M3FN;
  const bool scaled = q == Quantization::Fp8E4m3fnScaled;
  int converted = 0;
  for (auto& [name, w] : weights) {
    if (cancelled && cancelled()) throw Error(ErrorCode::Aborted, "the operation was aborted");
    const bool quantize = w.stored.value.dim() >= 2 && !keeps_precision(name);
    if (!quantize) {
      // Copied so that nothing refers to the mapped file any more.
      w.stored.value = w.stored.value.clone();
      if (w.scale.defined()) w.scale = w.scale.clone();
      continue;
    }
    if (w.stored.dtype == format && w.scale.defined() == scaled) {
      w.stored.value = w.stored.value.clone();
      if (w.scale.defined()) w.scale = w.scale.clone();
      continue;
    }
    const at::Tensor values = w.get(at::kFloat);  // decoded, with any scale applied
    at::Tensor scale;
    if (scaled) {
      // ComfyUI's scaled fp8: one float32 scale per tensor mapping absmax to e4m3fn's 448.
      const double absmax = values.abs().max().item<double>();
      scale = at::full({}, absmax > 0 ? absmax / 448.0 : 1.0, at::kFloat);
    }
    w.stored = core::Tensor{encode_fp8(scaled ? values / scale : values, format), format};
    w.scale = scale;
    ++converted;
  }
  return converted;
}

}  // namespace wan::ops
