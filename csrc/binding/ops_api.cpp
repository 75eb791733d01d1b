// Kernels exported for tests and benchmarks (lib/ops.ts): not part of the public API.
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

}  // namespace

void init_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("attention", Napi::Function::New(env, attention));
}

}  // namespace wan::binding
