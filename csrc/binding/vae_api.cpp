// Vae (lib/vae.ts): loading the Wan2.1 VAE, encoding, and decoding chunk by chunk.
#include "binding/addon_data.h"
#include "core/device.h"
#include "core/error.h"
#include "models/wan_vae.h"
#include "runtime/memory_stats.h"

namespace wan::binding {
namespace {

using models::WanVae;

// One decode in progress: the VAE's feature caches between calls to next().
class NativeVaeDecoder : public Napi::ObjectWrap<NativeVaeDecoder> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "NativeVaeDecoder",
                       {InstanceMethod("next", &NativeVaeDecoder::next),
                        InstanceMethod("framesLeft", &NativeVaeDecoder::frames_left)});
  }
  explicit NativeVaeDecoder(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeVaeDecoder>(info) {
    auto* holder = info[0].As<Napi::External<std::shared_ptr<WanVae::Decoder>>>().Data();
    decoder_ = std::move(*holder);
    delete holder;
  }

 private:
  // next(clamp, abortFlag) -> Promise<NativeTensor | null>
  Napi::Value next(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
      auto decoder = decoder_;
      const bool clamp = info[0].ToBoolean();
      auto cancelled = cancel_flag(env, info[1]);
      return addon(env).engine.run(
          env,
          [decoder, clamp, cancelled]() -> Engine::Finish {
            if (cancelled()) throw core::Error(core::ErrorCode::Aborted, "the operation was aborted");
            auto frames = std::make_shared<at::Tensor>();
            if (!decoder->done()) *frames = clamp ? decoder->next().clamp_(-1, 1) : decoder->next();
            return [frames](Napi::Env env) -> Napi::Value {
              return frames->defined() ? wrap_tensor(env, core::wrap(*frames)) : env.Null();
            };
          },
          keep_alive(env, {info.This(), info[1]}));
    });
  }

  Napi::Value frames_left(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(decoder_->frames_left()));
  }

  std::shared_ptr<WanVae::Decoder> decoder_;
};

class NativeVae : public Napi::ObjectWrap<NativeVae> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "NativeVae",
                       {InstanceMethod("config", &NativeVae::config), InstanceMethod("encode", &NativeVae::encode),
                        InstanceMethod("decoder", &NativeVae::decoder),
                        InstanceMethod("estimateDecodeMemory", &NativeVae::estimate_decode_memory),
                        InstanceMethod("memoryStats", &NativeVae::memory_stats),
                        InstanceMethod("offload", &NativeVae::offload),
                        InstanceMethod("dispose", &NativeVae::dispose)});
  }
  explicit NativeVae(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeVae>(info) {
    auto* holder = info[0].As<Napi::External<std::shared_ptr<WanVae>>>().Data();
    vae_ = std::move(*holder);
    delete holder;
  }

 private:
  const std::shared_ptr<WanVae>& get(Napi::Env env) const {
    if (!vae_) throw_error(env, "WAN_INVALID_OPTION", "the Vae has been disposed");
    return vae_;
  }

  Napi::Value config(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("dim", Napi::Number::New(env, static_cast<double>(get(env)->config().dim)));
    o.Set("zDim", Napi::Number::New(env, static_cast<double>(get(env)->config().z_dim)));
    o.Set("device", core::device_name(get(env)->device()));
    return o;
  }

  // encode(video, abortFlag, tiling | undefined) -> Promise<NativeTensor>
  Napi::Value encode(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
      auto vae = get(env);
      const at::Tensor video = core::to_float(unwrap_tensor(env, info[0], "video"));
      auto cancelled = cancel_flag(env, info[1]);
      const std::optional<WanVae::Tiling> tiling = tiling_of(info[2]);
      return addon(env).engine.run(
          env,
          [vae, video, cancelled, tiling]() -> Engine::Finish {
            auto z = std::make_shared<at::Tensor>(vae->encode(video, cancelled, nullptr, tiling ? &*tiling : nullptr));
            return [z](Napi::Env env) -> Napi::Value { return wrap_tensor(env, core::wrap(*z)); };
          },
          keep_alive(env, {info[0], info[1]}));
    });
  }

  static std::optional<WanVae::Tiling> tiling_of(const Napi::Value& v) {
    if (!v.IsObject()) return std::nullopt;
    const auto o = v.As<Napi::Object>();
    return WanVae::Tiling{o.Get("tileX").As<Napi::Number>().Int64Value(), o.Get("tileY").As<Napi::Number>().Int64Value(),
                          o.Get("tileStrideX").As<Napi::Number>().Int64Value(),
                          o.Get("tileStrideY").As<Napi::Number>().Int64Value()};
  }

  // decoder(latent, tiling | undefined) -> Promise<NativeVaeDecoder>
  Napi::Value decoder(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
      std::shared_ptr<const WanVae> vae = get(env);
      const at::Tensor z = core::to_float(unwrap_tensor(env, info[0], "latent"));
      const std::optional<WanVae::Tiling> tiling = tiling_of(info[1]);
      return addon(env).engine.run(
          env,
          [vae, z, tiling]() -> Engine::Finish {
            auto decoder = std::make_shared<WanVae::Decoder>(vae, z, tiling ? &*tiling : nullptr);
            return [decoder](Napi::Env env) -> Napi::Value {
              return addon(env).vae_decoder_class.New(
                  {Napi::External<std::shared_ptr<WanVae::Decoder>>::New(env, new std::shared_ptr<WanVae::Decoder>(decoder))});
            };
          },
          keep_alive(env, {info[0]}));
    });
  }

  // estimateDecodeMemory({frames, height, width, tiling?, whole}) -> {bytes, breakdown, peakAt}.
  // Synchronous: a replay on shapes, milliseconds (WanVae::estimate_decode_memory).
  Napi::Value estimate_decode_memory(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
      const auto o = info[0].As<Napi::Object>();
      WanVae::DecodeMemoryQuery q;
      q.frames = o.Get("frames").As<Napi::Number>().Int64Value();
      q.height = o.Get("height").As<Napi::Number>().Int64Value();
      q.width = o.Get("width").As<Napi::Number>().Int64Value();
      q.tiling = tiling_of(o.Get("tiling"));
      q.whole = o.Get("whole").ToBoolean();
      const WanVae::DecodeMemory m = get(env)->estimate_decode_memory(q);
      auto number = [&](int64_t v) { return Napi::Number::New(env, static_cast<double>(v)); };
      Napi::Object breakdown = Napi::Object::New(env);
      breakdown.Set("weights", number(m.weights));
      breakdown.Set("runtime", number(m.runtime));
      breakdown.Set("caches", number(m.caches));
      breakdown.Set("activations", number(m.activations));
      breakdown.Set("output", number(m.output));
      breakdown.Set("allocator", number(m.allocator));
      Napi::Object out = Napi::Object::New(env);
      out.Set("bytes", number(m.bytes));
      out.Set("breakdown", breakdown);
      out.Set("peakAt", m.peak_at);
      return out;
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
    vae_.reset();
    return info.Env().Undefined();
  }

  std::shared_ptr<WanVae> vae_;
};

// loadVae(files, {populate, device, loadDevice}, abortFlag) -> Promise<NativeVae>
Napi::Value load_vae(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const auto files = string_list(env, info[0], "files");
    const auto o = info[1].As<Napi::Object>();
    const bool populate = o.Get("populate").ToBoolean();
    const at::Device device = core::parse_device(o.Get("device").As<Napi::String>().Utf8Value(), "device");
    const bool load_on_main = load_on_main_device(o);
    auto cancelled = cancel_flag(env, info[2]);
    return addon(env).engine.run(
        env,
        [files, populate, device, load_on_main, cancelled]() -> Engine::Finish {
          auto vae = models::load_wan_vae(files, populate, cancelled, device, load_on_main);
          return [vae](Napi::Env env) -> Napi::Value {
            return addon(env).vae_class.New(
                {Napi::External<std::shared_ptr<WanVae>>::New(env, new std::shared_ptr<WanVae>(vae))});
          };
        },
        keep_alive(env, {info[2]}));
  });
}

}  // namespace

void init_vae(Napi::Env env, Napi::Object exports) {
  addon(env).vae_class = Napi::Persistent(NativeVae::define(env));
  addon(env).vae_decoder_class = Napi::Persistent(NativeVaeDecoder::define(env));
  exports.Set("loadVae", Napi::Function::New(env, load_vae));
}

}  // namespace wan::binding
