// Checkpoint functions exported to lib/checkpoint.ts: load, save, inspect, and a buffer
// parser used by the fuzz test.
#include "binding/addon_data.h"
#include "core/error.h"
#include "io/checkpoint_info.h"
#include "io/loader.h"

namespace wan::binding {
namespace {

Napi::Object metadata_object(Napi::Env env, const std::map<std::string, std::string>& metadata) {
  Napi::Object out = Napi::Object::New(env);
  for (const auto& [k, v] : metadata) out.Set(k, v);
  return out;
}

// loadCheckpoint(file, {populate}, abortFlag) -> Promise<{names, tensors, metadata}>
Napi::Value load_checkpoint(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    if (!info[0].IsString()) throw_error(env, "WAN_INVALID_OPTION", "file must be a string");
    const std::string file = info[0].As<Napi::String>().Utf8Value();
    io::LoadOptions options;
    if (info[1].IsObject()) {
      const Napi::Value populate = info[1].As<Napi::Object>().Get("populate");
      if (populate.IsBoolean()) options.populate = populate.As<Napi::Boolean>().Value();
    }
    auto cancelled = cancel_flag(env, info[2]);
    return addon(env).engine.run(
        env,
        [file, options, cancelled]() -> Engine::Finish {
          auto loaded = std::make_shared<io::LoadedCheckpoint>(io::load_checkpoint(file, options, cancelled));
          return [loaded](Napi::Env env) -> Napi::Value {
            Napi::Object out = Napi::Object::New(env);
            Napi::Array names = Napi::Array::New(env, loaded->tensors.size());
            Napi::Array tensors = Napi::Array::New(env, loaded->tensors.size());
            for (size_t i = 0; i < loaded->tensors.size(); ++i) {
              auto& [name, tensor] = loaded->tensors[i];
              names.Set(i, name);
              tensors.Set(i, wrap_tensor(env, std::move(tensor)));
            }
            out.Set("names", names);
            out.Set("tensors", tensors);
            out.Set("metadata", metadata_object(env, loaded->metadata));
            return out;
          };
        },
        keep_alive(env, {info[2]}));
  });
}

// saveSafetensors(path, names, tensors, metadata, abortFlag) -> Promise<void>
Napi::Value save_safetensors(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    if (!info[0].IsString()) throw_error(env, "WAN_INVALID_OPTION", "path must be a string");
    const std::string path = info[0].As<Napi::String>().Utf8Value();
    const auto names = string_list(env, info[1], "names");
    const auto tensor_array = info[2].As<Napi::Array>();
    std::vector<std::pair<std::string, core::Tensor>> tensors;
    for (size_t i = 0; i < names.size(); ++i)
      tensors.emplace_back(names[i], unwrap_tensor(env, tensor_array.Get(i), "tensor '" + names[i] + "'"));
    std::map<std::string, std::string> metadata;
    if (info[3].IsObject()) {
      const auto object = info[3].As<Napi::Object>();
      const auto keys = object.GetPropertyNames();
      for (uint32_t i = 0; i < keys.Length(); ++i) {
        const std::string k = keys.Get(i).As<Napi::String>().Utf8Value();
        metadata[k] = object.Get(k).ToString().Utf8Value();
      }
    }
    auto cancelled = cancel_flag(env, info[4]);
    return addon(env).engine.run(
        env,
        [path, tensors, metadata, cancelled]() -> Engine::Finish {
          io::save_safetensors(path, tensors, metadata, cancelled);
          return [](Napi::Env env) -> Napi::Value { return env.Undefined(); };
        },
        keep_alive(env, {info[2], info[4]}));
  });
}

Napi::Object info_object(Napi::Env env, const io::CheckpointInfo& ci) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("family", ci.family);
  out.Set("variant", ci.variant);
  out.Set("task", ci.task);
  out.Set("layout", ci.layout);
  out.Set("keyPrefix", ci.key_prefix);
  out.Set("quantization", ci.quantization);
  Napi::Object dtypes = Napi::Object::New(env);
  for (const auto& [k, v] : ci.dtypes) dtypes.Set(k, Napi::Number::New(env, static_cast<double>(v)));
  out.Set("dtypes", dtypes);
  out.Set("numTensors", Napi::Number::New(env, static_cast<double>(ci.num_tensors)));
  out.Set("numParams", Napi::Number::New(env, static_cast<double>(ci.num_params)));
  Napi::Object config = Napi::Object::New(env);
  for (const auto& [k, v] : ci.config) config.Set(k, Napi::Number::New(env, static_cast<double>(v)));
  out.Set("config", config);
  Napi::Array warnings = Napi::Array::New(env, ci.warnings.size());
  for (size_t i = 0; i < ci.warnings.size(); ++i) warnings.Set(i, ci.warnings[i]);
  out.Set("warnings", warnings);
  out.Set("text", io::describe(ci));
  return out;
}

// inspectCheckpoint(files) -> Promise<CheckpointInfo>; reads headers only. Shards of one
// checkpoint are inspected together.
Napi::Value inspect_checkpoint(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const auto files = string_list(env, info[0], "files");
    if (files.empty()) throw_error(env, "WAN_INVALID_OPTION", "files must not be empty");
    return addon(env).engine.run(
        env,
        [files]() -> Engine::Finish {
          io::ParsedCheckpoint all;
          std::map<std::string, const std::string*> owner;  // tensor name -> shard
          for (const auto& file : files) {
            io::ParsedCheckpoint part = io::read_checkpoint_index(file);
            for (auto& r : part.tensors) {
              const auto [it, inserted] = owner.emplace(r.name, &file);
              if (!inserted)
                throw core::bad_checkpoint(file, "tensor '" + r.name + "' also appears in " + *it->second);
              all.tensors.push_back(std::move(r));
            }
            all.metadata.insert(part.metadata.begin(), part.metadata.end());
          }
          auto ci = std::make_shared<io::CheckpointInfo>(io::inspect_checkpoint(all, files.front()));
          return [ci](Napi::Env env) -> Napi::Value { return info_object(env, *ci); };
        },
        Napi::Object());
  });
}

// parseCheckpointBuffer(bytes) -> number of tensors. Synchronous, for the fuzz test: the
// same parser as for files, over an in-memory span.
Napi::Value parse_checkpoint_buffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    if (!info[0].IsTypedArray()) throw_error(env, "WAN_INVALID_OPTION", "expected a Uint8Array");
    const auto bytes = info[0].As<Napi::Uint8Array>();
    const auto parsed = io::parse_checkpoint(bytes.Data(), bytes.ByteLength(), "<buffer>");
    return Napi::Number::New(env, static_cast<double>(parsed.tensors.size()));
  });
}

}  // namespace

void init_checkpoint(Napi::Env env, Napi::Object exports) {
  exports.Set("loadCheckpoint", Napi::Function::New(env, load_checkpoint));
  exports.Set("saveSafetensors", Napi::Function::New(env, save_safetensors));
  exports.Set("inspectCheckpoint", Napi::Function::New(env, inspect_checkpoint));
  exports.Set("parseCheckpointBuffer", Napi::Function::New(env, parse_checkpoint_buffer));
}

}  // namespace wan::binding
