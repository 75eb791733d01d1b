#include <c10/util/Exception.h>

#include <new>

#include "binding/addon_data.h"
#include "core/error.h"

namespace wan::binding {

ErrorInfo describe_current_exception() {
  try {
    throw;
  } catch (const core::Error& e) {
    return {core::error_code_name(e.code()), e.what()};
  } catch (const c10::Error& e) {
    return {"WAN_TORCH", e.what_without_backtrace()};
  } catch (const std::bad_alloc&) {
    return {"WAN_OUT_OF_MEMORY", "out of memory"};
  } catch (const std::exception& e) {
    return {"WAN_INTERNAL", e.what()};
  } catch (...) {
    return {"WAN_INTERNAL", "unknown C++ exception"};
  }
}

Napi::Error make_error(Napi::Env env, const ErrorInfo& info) {
  Napi::Object error;
  AddonData& data = addon(env);
  if (!data.error_class.IsEmpty()) {
    error = data.error_class.New({Napi::String::New(env, info.code), Napi::String::New(env, info.message)});
  } else {
    error = Napi::Error::New(env, info.message).Value();
    error.Set("code", info.code);
  }
  return Napi::Error(env, error);
}

void throw_error(Napi::Env env, const std::string& code, const std::string& message) {
  throw make_error(env, ErrorInfo{code, message});
}

struct Engine::Job {
  Work work;
  Finish finish;
  std::unique_ptr<ErrorInfo> error;
  Napi::Promise::Deferred deferred;
  Napi::ObjectReference keep_alive;
  explicit Job(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
};

Engine::Engine(Napi::Env env) {
  completions_ = Napi::ThreadSafeFunction::New(
      env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), "wan-native engine", 0, 1);
  completions_.Unref(env);  // an idle engine must not keep the process alive
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Napi::Promise Engine::run(Napi::Env env, Work work, Napi::Object keep_alive) {
  auto job = std::make_shared<Job>(env);
  job->work = std::move(work);
  if (!keep_alive.IsEmpty()) job->keep_alive = Napi::Persistent(keep_alive);
  if (pending_++ == 0) completions_.Ref(env);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(job);
  }
  wake_.notify_one();
  return job->deferred.Promise();
}

void Engine::loop() {
  while (true) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    try {
      job->finish = job->work();
    } catch (...) {
      job->error = std::make_unique<ErrorInfo>(describe_current_exception());
    }
    job->work = nullptr;  // release captured tensors here, off the JS thread
    completions_.BlockingCall([this, job](Napi::Env env, Napi::Function) { complete(env, job); });
  }
}

void Engine::complete(Napi::Env env, const std::shared_ptr<Job>& job) {
  Napi::HandleScope scope(env);
  if (job->error) {
    job->deferred.Reject(make_error(env, *job->error).Value());
  } else {
    try {
      job->deferred.Resolve(guard(env, [&] { return job->finish(env); }));
    } catch (const Napi::Error& e) {
      job->deferred.Reject(e.Value());
    }
  }
  job->finish = nullptr;
  job->keep_alive.Reset();
  if (--pending_ == 0) completions_.Unref(env);
}

}  // namespace wan::binding
