// ClipVisionEncoder (lib/clip.ts): the CLIP vision tower Wan2.1 I2V and FLF2V use.
#include "binding/addon_data.h"
#include "core/device.h"
#include "core/error.h"
#include "models/clip_vision.h"
#include "runtime/memory_stats.h"

namespace wan::binding {
namespace {

using models::ClipEncodeOptions;
using models::ClipVision;

ClipEncodeOptions::Combine combine_from_name(Napi::Env env, const std::string& name) {
  if (name == "average") return ClipEncodeOptions::Combine::Average;
  if (name == "sum") return ClipEncodeOptions::Combine::Sum;
  if (name == "concat") return ClipEncodeOptions::Combine::Concat;
  if (name == "batch") return ClipEncodeOptions::Combine::Batch;
  throw_error(env, "WAN_INVALID_OPTION", "combineEmbeds: expected one of average, sum, concat, batch but received '" + name + "'");
}

class NativeClipVision : public Napi::ObjectWrap<NativeClipVision> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "NativeClipVision",
                       {InstanceMethod("config", &NativeClipVision::config),
                        InstanceMethod("encode", &NativeClipVision::encode),
                        InstanceMethod("memoryStats", &NativeClipVision::memory_stats),
                        InstanceMethod("offload", &NativeClipVision::offload),
                        InstanceMethod("dispose", &NativeClipVision::dispose)});
  }

  explicit NativeClipVision(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeClipVision>(info) {
    if (!info[0].IsExternal())
      throw_error(info.Env(), "WAN_INVALID_OPTION", "NativeClipVision cannot be constructed from JS");
    auto* holder = info[0].As<Napi::External<std::shared_ptr<ClipVision>>>().Data();
    model_ = std::move(*holder);
    delete holder;
  }

 private:
  const std::shared_ptr<ClipVision>& get(Napi::Env env) const {
    if (!model_) throw_error(env, "WAN_INVALID_OPTION", "the ClipVisionEncoder has been disposed");
    return model_;
  }

  Napi::Value config(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const auto& model = get(env);
    const auto& c = model->config();
    Napi::Object o = Napi::Object::New(env);
    for (auto [key, value] : {std::pair{"imageSize", c.image_size}, {"patchSize", c.patch_size}, {"dim", c.dim},
                              {"mlpDim", c.mlp_dim}, {"numHeads", c.num_heads}, {"numLayers", c.num_layers},
                              {"tokens", c.tokens()}})
      o.Set(key, Napi::Number::New(env, static_cast<double>(value)));
    o.Set("layout", model->layout());
    o.Set("device", core::device_name(model->device()));
    return o;
  }

  // encode(images, {crop, strengths, combineEmbeds, trace}, abortFlag) -> Promise<{embeds, trace?}>
  Napi::Value encode(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
      auto model = get(env);
      if (!info[0].IsArray()) throw_error(env, "WAN_INVALID_OPTION", "images must be an array of Tensors");
      const auto array = info[0].As<Napi::Array>();
      std::vector<at::Tensor> images;
      for (uint32_t i = 0; i < array.Length(); ++i)
        images.push_back(core::to_float(unwrap_tensor(env, array.Get(i), "images[" + std::to_string(i) + "]")));
      const auto o = info[1].As<Napi::Object>();
      ClipEncodeOptions options;
      options.center_crop = o.Get("crop").As<Napi::String>().Utf8Value() == "center";
      options.combine = combine_from_name(env, o.Get("combineEmbeds").As<Napi::String>().Utf8Value());
      if (o.Get("strengths").IsArray()) {
        const auto s = o.Get("strengths").As<Napi::Array>();
        for (uint32_t i = 0; i < s.Length(); ++i) options.strengths.push_back(s.Get(i).As<Napi::Number>().DoubleValue());
      }
      const bool want_trace = o.Get("trace").ToBoolean();
      std::function<bool()> cancelled = cancel_flag(env, info[2]);
      return addon(env).engine.run(
          env,
          [model, images, options, want_trace, cancelled]() -> Engine::Finish {
            auto trace = std::make_shared<models::Trace>();
            auto embeds = std::make_shared<at::Tensor>(
                model->encode(images, options, cancelled, want_trace ? trace.get() : nullptr).contiguous());
            return [embeds, trace, want_trace](Napi::Env env) -> Napi::Value {
              Napi::Object result = Napi::Object::New(env);
              result.Set("embeds", wrap_tensor(env, core::wrap(*embeds)));
              if (want_trace) {
                Napi::Object t = Napi::Object::New(env);
                for (const auto& [name, value] : *trace) t.Set(name, wrap_tensor(env, core::wrap(value.contiguous())));
                result.Set("trace", t);
              }
              return result;
            };
          },
          keep_alive(env, {info[0], info[2]}));
    });
  }

  Napi::Value offload(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guard(env, [&] { return offload_job(env, get(env)); });
  }

  Napi::Value memory_stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return resident_memory_stats(env, *get(env));
  }

  Napi::Value dispose(const Napi::CallbackInfo& info) {
    model_.reset();
    return info.Env().Undefined();
  }

  std::shared_ptr<ClipVision> model_;
};

// loadClipVision(files, {numHeads, populate, device, loadDevice}, abortFlag) -> Promise<NativeClipVision>
Napi::Value load_clip_vision(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const auto files = string_list(env, info[0], "files");
    const auto o = info[1].As<Napi::Object>();
    models::ClipVisionOverrides overrides;
    if (o.Get("numHeads").IsNumber()) overrides.num_heads = o.Get("numHeads").As<Napi::Number>().Int64Value();
    const bool populate = o.Get("populate").ToBoolean();
    const at::Device device = core::parse_device(o.Get("device").As<Napi::String>().Utf8Value(), "device");
    const bool load_on_main = load_on_main_device(o);
    std::function<bool()> cancelled = cancel_flag(env, info[2]);
    return addon(env).engine.run(
        env,
        [files, overrides, populate, device, load_on_main, cancelled]() -> Engine::Finish {
          auto model = models::load_clip_vision(files, overrides, populate, cancelled, device, load_on_main);
          return [model](Napi::Env env) -> Napi::Value {
            auto* holder = new std::shared_ptr<ClipVision>(model);
            return addon(env).clip_class.New({Napi::External<std::shared_ptr<ClipVision>>::New(env, holder)});
          };
        },
        keep_alive(env, {info[2]}));
  });
}

}  // namespace

void init_clip(Napi::Env env, Napi::Object exports) {
  addon(env).clip_class = Napi::Persistent(NativeClipVision::define(env));
  exports.Set("loadClipVision", Napi::Function::New(env, load_clip_vision));
}

}  // namespace wan::binding
