// TextEncoder (lib/text-encoder.ts): the umT5 encoder on the engine thread.
#include "binding/addon_data.h"
#include "core/device.h"
#include "core/error.h"
#include "models/umt5.h"
#include "runtime/memory_stats.h"

namespace wan::binding {
namespace {

using models::Umt5Encoder;
struct TextEncoderParts {
  std::shared_ptr<Umt5Encoder> model;
  std::string embedded_tokenizer;  // a ComfyUI file's `spiece_model` bytes, or empty
};

class NativeTextEncoder : public Napi::ObjectWrap<NativeTextEncoder> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "NativeTextEncoder",
                       {InstanceMethod("config", &NativeTextEncoder::config),
                        InstanceMethod("encodeTokens", &NativeTextEncoder::encode_tokens),
                        InstanceMethod("embeddedTokenizer", &NativeTextEncoder::embedded_tokenizer),
                        InstanceMethod("memoryStats", &NativeTextEncoder::memory_stats),
                        InstanceMethod("offload", &NativeTextEncoder::offload),
                        InstanceMethod("dispose", &NativeTextEncoder::dispose)});
  }
  explicit NativeTextEncoder(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeTextEncoder>(info) {
    auto* holder = info[0].As<Napi::External<TextEncoderParts>>().Data();
    parts_ = std::move(*holder);
    delete holder;
  }

 private:
  const std::shared_ptr<Umt5Encoder>& get(Napi::Env env) const {
    if (!parts_.model) throw_error(env, "WAN_INVALID_OPTION", "the TextEncoder has been disposed");
    return parts_.model;
  }

  // The serialized SentencePiece model the checkpoint carries (a copy), or null.
  Napi::Value embedded_tokenizer(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (parts_.embedded_tokenizer.empty()) return env.Null();
    return Napi::Buffer<char>::Copy(env, parts_.embedded_tokenizer.data(), parts_.embedded_tokenizer.size());
  }

  Napi::Value offload(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guard(env, [&] { return offload_job(env, get(env)); });
  }

  Napi::Value memory_stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return resident_memory_stats(env, *get(env));
  }

  Napi::Value config(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const auto& c = get(env)->config();
    Napi::Object o = Napi::Object::New(env);
    for (auto [key, value] : {std::pair{"vocab", c.vocab}, {"dim", c.dim}, {"dimAttn", c.dim_attn}, {"dimFfn", c.dim_ffn},
                              {"numHeads", c.num_heads}, {"numLayers", c.num_layers}, {"numBuckets", c.num_buckets}})
      o.Set(key, Napi::Number::New(env, static_cast<double>(value)));
    o.Set("sharedPos", c.shared_pos);
    o.Set("device", core::device_name(get(env)->device()));
    return o;
  }

  // encodeTokens(ids, mask, trace, abortFlag) -> Promise<{output, trace?}>
  Napi::Value encode_tokens(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
      auto model = get(env);
      const at::Tensor ids = unwrap_tensor(env, info[0], "ids").value;
      const at::Tensor mask = unwrap_tensor(env, info[1], "mask").value;
      const bool want_trace = info[2].ToBoolean();
      auto cancelled = cancel_flag(env, info[3]);
      return addon(env).engine.run(
          env,
          [model, ids, mask, want_trace, cancelled]() -> Engine::Finish {
            auto trace = std::make_shared<std::map<std::string, at::Tensor>>();
            auto out = std::make_shared<at::Tensor>(model->forward(ids, mask, cancelled, want_trace ? trace.get() : nullptr));
            return [out, trace, want_trace](Napi::Env env) -> Napi::Value {
              Napi::Object result = Napi::Object::New(env);
              result.Set("output", wrap_tensor(env, core::wrap(*out)));
              if (want_trace) {
                Napi::Object t = Napi::Object::New(env);
                for (const auto& [name, value] : *trace) t.Set(name, wrap_tensor(env, core::wrap(value.contiguous())));
                result.Set("trace", t);
              }
              return result;
            };
          },
          keep_alive(env, {info[0], info[1], info[3]}));
    });
  }

  Napi::Value dispose(const Napi::CallbackInfo& info) {
    parts_ = TextEncoderParts{};
    return info.Env().Undefined();
  }

  TextEncoderParts parts_;
};

// loadTextEncoder(files, {populate, device, loadDevice}, abortFlag) -> Promise<NativeTextEncoder>
Napi::Value load_text_encoder(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const auto files = string_list(env, info[0], "files");
    const auto options = info[1].As<Napi::Object>();
    const bool populate = options.Get("populate").ToBoolean();
    const at::Device device = core::parse_device(options.Get("device").As<Napi::String>().Utf8Value(), "device");
    const bool load_on_main = load_on_main_device(options);
    auto cancelled = cancel_flag(env, info[2]);
    return addon(env).engine.run(
        env,
        [files, populate, device, load_on_main, cancelled]() -> Engine::Finish {
          auto parts = std::make_shared<TextEncoderParts>();
          parts->model = models::load_umt5(files, populate, cancelled, &parts->embedded_tokenizer, device, load_on_main);
          return [parts](Napi::Env env) -> Napi::Value {
            return addon(env).text_encoder_class.New({Napi::External<TextEncoderParts>::New(env, new TextEncoderParts(*parts))});
          };
        },
        keep_alive(env, {info[2]}));
  });
}

}  // namespace

void init_text_encoder(Napi::Env env, Napi::Object exports) {
  addon(env).text_encoder_class = Napi::Persistent(NativeTextEncoder::define(env));
  exports.Set("loadTextEncoder", Napi::Function::New(env, load_text_encoder));
}

}  // namespace wan::binding
