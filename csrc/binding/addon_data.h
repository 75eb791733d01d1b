// Per-environment state of the addon, and the one worker thread that runs all engine work.
// This directory is the only place that includes napi.h (STYLE.md, rule 6).
#pragma once
#include <napi.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "core/tensor.h"
#include "runtime/memory_stats.h"

namespace wan::binding {

// memoryStats() of every model class: { resident, swapped }, each { bytes, tensors, byDtype },
// and placement: 'main_device' or 'offload_device' (memory_api.cpp).
Napi::Object memory_stats_object(Napi::Env env, const runtime::MemoryStats& stats, bool on_main_device);

// A failure described on the worker thread, turned into a WanError on the JS thread.
struct ErrorInfo {
  std::string code;     // WAN_*
  std::string message;  // without C++ backtraces
};

// Classifies the exception being handled: wan errors keep their code, c10 errors lose their
// backtrace (native-notes.md: an uncaught c10::Error aborts Node), bad_alloc becomes OOM.
ErrorInfo describe_current_exception();

// Runs `body`, turning any C++ exception into a thrown JS WanError.
template <typename F>
auto guard(Napi::Env env, F&& body) -> decltype(body());

Napi::Error make_error(Napi::Env env, const ErrorInfo& info);
[[noreturn]] void throw_error(Napi::Env env, const std::string& code, const std::string& message);

// All libtorch work runs on one dedicated thread, in order. Several libuv pool threads each
// driving OpenMP would oversubscribe the cores (native-notes.md, "AsyncWorker").
class Engine {
 public:
  using Finish = std::function<Napi::Value(Napi::Env)>;  // builds the result on the JS thread
  using Work = std::function<Finish()>;                  // runs on the engine thread

  explicit Engine(Napi::Env env);
  ~Engine();

  // Queues `work`; the promise settles with Finish's value or a WanError. `keep_alive` holds
  // JS objects (inputs, the abort flag) until the job has finished.
  Napi::Promise run(Napi::Env env, Work work, Napi::Object keep_alive);

  // Set when the environment shuts down; long jobs check it with their abort flag.
  bool stopping() const { return stopping_.load(); }

 private:
  struct Job;
  void loop();
  void complete(Napi::Env env, const std::shared_ptr<Job>& job);

  Napi::ThreadSafeFunction completions_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::atomic<bool> stopping_{false};
  int pending_ = 0;  // touched on the JS thread only
  std::thread thread_;
};

struct AddonData {
  explicit AddonData(Napi::Env env);
  Engine engine;
  Napi::FunctionReference tensor_class;
  Napi::FunctionReference wan_model_class;
  Napi::FunctionReference vae_class, vae_decoder_class;
  Napi::FunctionReference clip_class;  // clip_api.cpp: NativeClipVision
  Napi::FunctionReference text_encoder_class;
  Napi::FunctionReference error_class;  // lib/errors.ts WanError, registered at load
  // Deletes references to borrowed JS buffers on the JS thread when a tensor dies elsewhere.
  Napi::ThreadSafeFunction releaser;
  std::thread::id js_thread;
};

AddonData& addon(Napi::Env env);

// Arguments. string_list throws WAN_INVALID_OPTION naming `what`.
std::vector<std::string> string_list(Napi::Env env, Napi::Value value, const std::string& what);
// The JS side passes an Int32Array over a SharedArrayBuffer and sets element 0 with
// Atomics.store when its AbortSignal fires; the engine thread polls it (and the shutdown flag).
std::function<bool()> cancel_flag(Napi::Env env, Napi::Value flag);
// An array holding `values`, for Engine::run's keep_alive.
Napi::Object keep_alive(Napi::Env env, std::initializer_list<Napi::Value> values);

// A loader's loadDevice: 'main_device' (the default here; lib/ fills in the wrapper's) or
// 'offload_device'.
inline bool load_on_main_device(Napi::Object options) {
  const Napi::Value v = options.Get("loadDevice");
  return !v.IsString() || v.As<Napi::String>().Utf8Value() != "offload_device";
}

// offload() of every model class: a job that returns the model's weights to the CPU after the
// jobs queued before it (runtime/residency.h) -> Promise<void>.
template <typename Model>
Napi::Value offload_job(Napi::Env env, std::shared_ptr<Model> model) {
  return addon(env).engine.run(
      env,
      [model]() -> Engine::Finish {
        model->offload();
        return [](Napi::Env env) -> Napi::Value { return env.Undefined(); };
      },
      keep_alive(env, {}));
}

// memoryStats() of a model whose weights all count as resident, read under its weights' lock.
template <typename Model>
Napi::Object resident_memory_stats(Napi::Env env, const Model& model) {
  runtime::MemoryStats stats;
  {
    const auto lock = model.lock_weights();
    model.visit_weights([&](const ops::Weight& w) { stats.add(w, false); });
  }
  return memory_stats_object(env, stats, model.on_main_device());
}

// Module parts, each registering its exports.
void init_tensor(Napi::Env env, Napi::Object exports);
void init_checkpoint(Napi::Env env, Napi::Object exports);
void init_ops(Napi::Env env, Napi::Object exports);
void init_model(Napi::Env env, Napi::Object exports);  // model_api.cpp: WanModel
void init_vae(Napi::Env env, Napi::Object exports);    // vae_api.cpp: Vae
void init_clip(Napi::Env env, Napi::Object exports);   // clip_api.cpp: ClipVisionEncoder
void init_sampling(Napi::Env env, Napi::Object exports);      // sampling_api.cpp: noise, resize
void init_text_encoder(Napi::Env env, Napi::Object exports);  // text_encoder_api.cpp: TextEncoder

// The NativeTensor JS object for an engine tensor, and back.
Napi::Object wrap_tensor(Napi::Env env, core::Tensor tensor);
const core::Tensor& unwrap_tensor(Napi::Env env, Napi::Value value, const std::string& what);

template <typename F>
auto guard(Napi::Env env, F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (...) {
    throw make_error(env, describe_current_exception());
  }
}

}  // namespace wan::binding
