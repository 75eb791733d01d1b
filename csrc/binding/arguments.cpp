// Argument helpers shared by the binding files.
#include "binding/addon_data.h"

namespace wan::binding {

std::vector<std::string> string_list(Napi::Env env, Napi::Value value, const std::string& what) {
  if (!value.IsArray()) throw_error(env, "WAN_INVALID_OPTION", what + " must be an array of strings");
  const auto array = value.As<Napi::Array>();
  std::vector<std::string> out;
  for (uint32_t i = 0; i < array.Length(); ++i) {
    const Napi::Value v = array.Get(i);
    if (!v.IsString()) throw_error(env, "WAN_INVALID_OPTION", what + " must be an array of strings");
    out.push_back(v.As<Napi::String>().Utf8Value());
  }
  return out;
}

// The JS side passes an Int32Array over a SharedArrayBuffer and sets element 0 with
// Atomics.store when its AbortSignal fires; the engine thread polls it.
std::function<bool()> cancel_flag(Napi::Env env, Napi::Value flag) {
  Engine* engine = &addon(env).engine;
  if (!flag.IsTypedArray()) return [engine] { return engine->stopping(); };
  auto array = flag.As<Napi::Int32Array>();
  if (array.TypedArrayType() != napi_int32_array || array.ElementLength() < 1)
    throw_error(env, "WAN_INVALID_OPTION", "abort flag must be an Int32Array");
  int32_t* cell = array.Data();
  return [engine, cell] { return __atomic_load_n(cell, __ATOMIC_RELAXED) != 0 || engine->stopping(); };
}

Napi::Object keep_alive(Napi::Env env, std::initializer_list<Napi::Value> values) {
  Napi::Array holder = Napi::Array::New(env);
  uint32_t i = 0;
  for (const auto& v : values) holder.Set(i++, v);
  return holder;
}

}  // namespace wan::binding
