// memoryStats() of the model classes, as lib/memory-planner.ts reads it.
#include "binding/addon_data.h"
#include "runtime/memory_stats.h"

namespace wan::binding {

namespace {

Napi::Object held_object(Napi::Env env, const runtime::HeldBytes& held) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("bytes", Napi::Number::New(env, static_cast<double>(held.bytes)));
  o.Set("tensors", Napi::Number::New(env, static_cast<double>(held.tensors)));
  Napi::Object by = Napi::Object::New(env);
  for (const auto& [dtype, bytes] : held.by_dtype) by.Set(dtype, Napi::Number::New(env, static_cast<double>(bytes)));
  o.Set("byDtype", by);
  return o;
}

}  // namespace

Napi::Object memory_stats_object(Napi::Env env, const runtime::MemoryStats& stats, bool on_main_device) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("resident", held_object(env, stats.resident));
  o.Set("swapped", held_object(env, stats.swapped));
  o.Set("placement", on_main_device ? "main_device" : "offload_device");
  return o;
}

}  // namespace wan::binding
