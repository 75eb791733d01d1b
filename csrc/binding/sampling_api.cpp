// Sampling (lib/sampler.ts, lib/conditioning.ts): the seeded noise generator and the resize
// the official I2V applies to its input image. Both are synchronous: a draw of a latent's worth
// of normals takes milliseconds, and the generator's order of draws must follow the caller's.
#include "binding/addon_data.h"
#include "core/error.h"
#include "sampling/freeinit.h"
#include "sampling/fresca.h"
#include "sampling/noise.h"

namespace wan::binding {
namespace {

std::vector<int64_t> shape_argument(Napi::Env env, Napi::Value value) {
  if (!value.IsArray()) throw_error(env, "WAN_INVALID_OPTION", "shape: expected an array of non-negative integers");
  const auto array = value.As<Napi::Array>();
  std::vector<int64_t> shape;
  for (uint32_t i = 0; i < array.Length(); ++i) {
    const Napi::Value d = array.Get(i);
    if (!d.IsNumber() || d.As<Napi::Number>().Int64Value() < 0)
      throw_error(env, "WAN_INVALID_OPTION", "shape: expected an array of non-negative integers");
    shape.push_back(d.As<Napi::Number>().Int64Value());
  }
  return shape;
}

class NativeNoiseGenerator : public Napi::ObjectWrap<NativeNoiseGenerator> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "NativeNoiseGenerator",
                       {InstanceMethod("randn", &NativeNoiseGenerator::randn),
                        InstanceMethod("randperm", &NativeNoiseGenerator::randperm)});
  }

  // new NativeNoiseGenerator(seed: bigint): the seed as an unsigned 64-bit integer.
  explicit NativeNoiseGenerator(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<NativeNoiseGenerator>(info), generator_(seed_argument(info)) {}

 private:
  static uint64_t seed_argument(const Napi::CallbackInfo& info) {
    bool lossless = false;
    if (!info[0].IsBigInt()) throw_error(info.Env(), "WAN_INVALID_OPTION", "seed: expected a bigint");
    const uint64_t seed = info[0].As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw_error(info.Env(), "WAN_INVALID_OPTION", "seed: expected an integer in 0..2^64-1");
    return seed;
  }

  Napi::Value randn(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
      return wrap_tensor(env, core::wrap(generator_.randn(shape_argument(env, info[0]))));
    });
  }

  Napi::Value randperm(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
      if (!info[0].IsNumber() || info[0].As<Napi::Number>().Int64Value() < 0)
        throw_error(env, "WAN_INVALID_OPTION", "randperm: expected a non-negative integer");
      return wrap_tensor(env, core::wrap(generator_.randperm(info[0].As<Napi::Number>().Int64Value())));
    });
  }

  sampling::NoiseGenerator generator_;
};

// resizeBicubic(image [C, H, W] | [N, C, H, W], height, width) -> f32 tensor.
Napi::Value resize_bicubic(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const core::Tensor& image = unwrap_tensor(env, info[0], "image");
    const int64_t height = info[1].As<Napi::Number>().Int64Value(), width = info[2].As<Napi::Number>().Int64Value();
    return wrap_tensor(env, core::wrap(sampling::resize_bicubic(core::to_float(image), height, width)));
  });
}

// fourierFilter(x [..., H, W], low, high, cutoff) -> f32 tensor (FreSca; sampling/fresca.h).
Napi::Value fourier_filter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const core::Tensor& x = unwrap_tensor(env, info[0], "x");
    return wrap_tensor(env, core::wrap(sampling::fourier_filter(core::to_float(x), info[1].As<Napi::Number>().DoubleValue(),
                                                                info[2].As<Napi::Number>().DoubleValue(),
                                                                info[3].As<Napi::Number>().Int64Value())));
  });
}

// frequencyMix(x [..., T, H, W], noise, lowPass [T, H, W]) -> f32 tensor (FreeInit; sampling/freeinit.h).
Napi::Value frequency_mix(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const core::Tensor& x = unwrap_tensor(env, info[0], "x");
    const core::Tensor& noise = unwrap_tensor(env, info[1], "noise");
    const core::Tensor& low_pass = unwrap_tensor(env, info[2], "lowPass");
    return wrap_tensor(env, core::wrap(sampling::frequency_mix(core::to_float(x), core::to_float(noise), core::to_float(low_pass))));
  });
}

}  // namespace

void init_sampling(Napi::Env env, Napi::Object exports) {
  exports.Set("NoiseGenerator", NativeNoiseGenerator::define(env));
  exports.Set("resizeBicubic", Napi::Function::New(env, resize_bicubic));
  exports.Set("fourierFilter", Napi::Function::New(env, fourier_filter));
  exports.Set("frequencyMix", Napi::Function::New(env, frequency_mix));
}

}  // namespace wan::binding
