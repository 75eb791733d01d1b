// Module entry: per-environment state, runtime settings, and the export table.
#include <ATen/Parallel.h>
#include <torch/version.h>

#include <thread>

#include "binding/addon_data.h"

#ifndef WAN_BACKEND
#define WAN_BACKEND "cpu"
#endif

namespace wan::binding {

AddonData::AddonData(Napi::Env env) : engine(env), js_thread(std::this_thread::get_id()) {
  releaser = Napi::ThreadSafeFunction::New(
      env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), "wan-native releaser", 0, 1);
  releaser.Unref(env);
}

AddonData& addon(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

namespace {

Napi::Value set_error_class(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) throw Napi::TypeError::New(info.Env(), "setErrorClass(fn)");
  addon(info.Env()).error_class = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

Napi::Value set_threads(const Napi::CallbackInfo& info) {
  const int threads = info[0].As<Napi::Number>().Int32Value();
  core::init_runtime(threads);
  return info.Env().Undefined();
}

Napi::Value runtime_info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("backend", WAN_BACKEND);
  out.Set("torchVersion", std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) +
                              "." + std::to_string(TORCH_VERSION_PATCH));
  out.Set("threads", at::get_num_threads());
  out.Set("cuda", at::hasCUDA());
  return out;
}

Napi::Object init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonData(env));
  // libtorch starts with one thread on these VMs; use every core unless told otherwise.
  const unsigned cores = std::thread::hardware_concurrency();
  core::init_runtime(cores > 0 ? static_cast<int>(cores) : 1);
  exports.Set("setErrorClass", Napi::Function::New(env, set_error_class));
  exports.Set("setThreads", Napi::Function::New(env, set_threads));
  exports.Set("runtimeInfo", Napi::Function::New(env, runtime_info));
  init_tensor(env, exports);
  init_checkpoint(env, exports);
  init_ops(env, exports);
  init_model(env, exports);
  init_vae(env, exports);
  init_clip(env, exports);
  init_text_encoder(env, exports);
  init_sampling(env, exports);
  return exports;
}

}  // namespace
}  // namespace wan::binding

static Napi::Object init_wan_native(Napi::Env env, Napi::Object exports) {
  return wan::binding::init(env, exports);
}
NODE_API_MODULE(wan_native, init_wan_native)
