// Kernels exported for tests and benchmarks (lib/ops.ts): not part of the public API.
#include <chrono>

#include "binding/addon_data.h"
#include "core/error.h"
#include "ops/attention.h"

namespace wan::binding {
namespace {

// attention(q, k, v, mode, kLens?) -> NativeTensor (f32 on the CPU). Synchronous: it runs on
// the calling thread, which is what tests and benchmarks want.
Napi::Value attention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const core::Tensor& q = unwrap_tensor(env, info[0], "q");
    const core::Tensor& k = unwrap_tensor(env, info[1], "k");
    const core::Tensor& v = unwrap_tensor(env, info[2], "v");
    if (!info[3].IsString()) throw_error(env, "WAN_INVALID_OPTION", "attentionMode must be a string");
    const ops::AttentionMode mode = ops::attention_mode_from_name(info[3].As<Napi::String>().Utf8Value());
    at::Tensor k_lens;
    if (!info[4].IsUndefined() && !info[4].IsNull()) k_lens = unwrap_tensor(env, info[4], "kLens").value;
    // fp8 tensors are held as bytes (core/tensor.h); name them as the user knows them.
    for (const auto& [t, what] : {std::pair<const core::Tensor*, const char*>{&q, "q"}, {&k, "k"}, {&v, "v"}}) {
      if (t->dtype != core::DType::F32 && t->dtype != core::DType::F16 && t->dtype != core::DType::BF16)
        throw_error(env, "WAN_INVALID_TENSOR",
                    std::string("attention: ") + what + " has dtype " + std::string(core::dtype_name(t->dtype)) +
                        " but attention takes f32, f16 or bf16");
    }
    return wrap_tensor(env, core::wrap(ops::attention(q.value, k.value, v.value, mode, k_lens)));
  });
}

// gemmRate(m, k, n, reps) -> seconds of each of `reps` fp32 [m, k] x [k, n] products, after
// one warm-up: the machine's matmul rate, for benchmarks to report next to their own.
Napi::Value gemm_rate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    int64_t dims[4];
    for (int i = 0; i < 4; ++i) {
      if (!info[i].IsNumber() || info[i].As<Napi::Number>().Int64Value() <= 0)
        throw_error(env, "WAN_INVALID_OPTION", "gemmRate(m, k, n, reps): expected positive integers");
      dims[i] = info[i].As<Napi::Number>().Int64Value();
    }
    const at::Tensor a = at::randn({dims[0], dims[1]}), b = at::randn({dims[1], dims[2]});
    at::Tensor c = at::mm(a, b);
    Napi::Array seconds = Napi::Array::New(env, dims[3]);
    for (int64_t r = 0; r < dims[3]; ++r) {
      const auto start = std::chrono::steady_clock::now();
      at::mm_out(c, a, b);
      seconds.Set(r, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    return seconds;
  });
}

}  // namespace

void init_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("attention", Napi::Function::New(env, attention));
  exports.Set("gemmRate", Napi::Function::New(env, gemm_rate));
}

}  // namespace wan::binding
