// WanModel (lib/model.ts): loading a DiT and calling its forward on the engine thread.
#include "binding/addon_data.h"
#include "core/device.h"
#include "core/error.h"
#include "models/wan_dit.h"
#include "runtime/memory_stats.h"

namespace wan::binding {
namespace {

std::vector<at::Tensor> tensor_list(Napi::Env env, Napi::Value value, const std::string& what) {
  if (!value.IsArray()) throw_error(env, "WAN_INVALID_OPTION", what + " must be an array of Tensors");
  const auto array = value.As<Napi::Array>();
  std::vector<at::Tensor> out;
  for (uint32_t i = 0; i < array.Length(); ++i)
    out.push_back(core::to_float(unwrap_tensor(env, array.Get(i), what + "[" + std::to_string(i) + "]")));
  return out;
}

int64_t int_option(Napi::Object o, const char* key) {
  const Napi::Value v = o.Get(key);
  return v.IsNumber() ? v.As<Napi::Number>().Int64Value() : 0;
}

// loras: [{files: string[], strength: number, blocks?: number[], layerFilter?: string[], perStep?: boolean}],
// checked in lib/model.ts.
std::vector<models::LoraSpec> lora_list(Napi::Env env, Napi::Value value) {
  std::vector<models::LoraSpec> out;
  if (value.IsUndefined()) return out;
  if (!value.IsArray()) throw_error(env, "WAN_INVALID_OPTION", "loras must be an array");
  const auto array = value.As<Napi::Array>();
  for (uint32_t i = 0; i < array.Length(); ++i) {
    const std::string what = "loras[" + std::to_string(i) + "]";
    if (!array.Get(i).IsObject()) throw_error(env, "WAN_INVALID_OPTION", what + " must be an object");
    const auto o = array.Get(i).As<Napi::Object>();
    models::LoraSpec spec;
    spec.files = string_list(env, o.Get("files"), what + ".files");
    if (o.Get("strength").IsNumber()) spec.strength = o.Get("strength").As<Napi::Number>().DoubleValue();
    if (o.Get("blocks").IsArray()) {
      const auto blocks = o.Get("blocks").As<Napi::Array>();
      spec.blocks.emplace();
      for (uint32_t j = 0; j < blocks.Length(); ++j) spec.blocks->push_back(blocks.Get(j).ToNumber().Int64Value());
    }
    if (o.Get("layerFilter").IsArray()) spec.layer_filter = string_list(env, o.Get("layerFilter"), what + ".layerFilter");
    spec.per_step = o.Get("perStep").ToBoolean();
    out.push_back(std::move(spec));
  }
  return out;
}

class NativeWanModel : public Napi::ObjectWrap<NativeWanModel> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "NativeWanModel",
                       {InstanceMethod("config", &NativeWanModel::config),
                        InstanceMethod("forward", &NativeWanModel::forward),
                        InstanceMethod("setAttentionMode", &NativeWanModel::set_attention_mode),
                        InstanceMethod("setBlockSwap", &NativeWanModel::set_block_swap),
                        InstanceMethod("memoryStats", &NativeWanModel::memory_stats),
                        InstanceMethod("graphStats", &NativeWanModel::graph_stats),
                        InstanceMethod("cacheReport", &NativeWanModel::cache_report),
                        InstanceMethod("clearCache", &NativeWanModel::clear_cache),
                        InstanceMethod("offload", &NativeWanModel::offload),
                        InstanceMethod("dispose", &NativeWanModel::dispose)});
  }

  explicit NativeWanModel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeWanModel>(info) {
    if (!info[0].IsExternal())
      throw_error(info.Env(), "WAN_INVALID_OPTION", "NativeWanModel cannot be constructed from JS");
    auto* holder = info[0].As<Napi::External<std::shared_ptr<models::WanDit>>>().Data();
    model_ = std::move(*holder);
    delete holder;
  }

 private:
  const std::shared_ptr<models::WanDit>& get(Napi::Env env) const {
    if (!model_) throw_error(env, "WAN_INVALID_OPTION", "the WanModel has been disposed");
    return model_;
  }

  Napi::Value config(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const auto& model = get(env);
    const auto& c = model->config();
    Napi::Object o = Napi::Object::New(env);
    o.Set("modelType", c.model_type);
    for (auto [key, value] : {std::pair{"dim", c.dim}, {"ffnDim", c.ffn_dim}, {"freqDim", c.freq_dim},
                              {"textDim", c.text_dim}, {"inDim", c.in_dim}, {"outDim", c.out_dim},
                              {"numHeads", c.num_heads}, {"numLayers", c.num_layers}, {"textLen", c.text_len}})
      o.Set(key, Napi::Number::New(env, static_cast<double>(value)));
    Napi::Array patch = Napi::Array::New(env, 3);
    for (uint32_t i = 0; i < 3; ++i) patch.Set(i, Napi::Number::New(env, static_cast<double>(c.patch[i])));
    o.Set("patchSize", patch);
    o.Set("qkNorm", c.qk_norm);
    o.Set("crossAttnNorm", c.cross_attn_norm);
    o.Set("eps", c.eps);
    o.Set("computeDtype", std::string(core::dtype_name(core::dtype_of(at::empty({0}, model->options().compute)))));
    o.Set("attentionMode", ops::attention_mode_name(model->options().attention));
    const std::string stored = ops::quantization_name(model->options().quantization);
    o.Set("quantization", model->options().fp8_matmul ? stored + "_fast" : stored);
    o.Set("device", core::device_name(model->options().device));
    o.Set("blocksToSwap", model->options().blocks_to_swap);
    o.Set("prefetchBlocks", model->options().prefetch_blocks);
    // The fused kernels run only on a GPU (wan_dit.cpp).
    o.Set("compiled", model->options().compile && model->options().device.is_cuda());
    o.Set("cudaGraphs", model->options().cuda_graphs && model->options().device.is_cuda());
    return o;
  }

  // graphStats() -> {captures, replays, failure}: what cudaGraphs did (failure null unless a
  // capture failed).
  Napi::Value graph_stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const models::GraphStats stats = get(env)->graph_stats();
    Napi::Object o = Napi::Object::New(env);
    o.Set("captures", Napi::Number::New(env, static_cast<double>(stats.captures)));
    o.Set("replays", Napi::Number::New(env, static_cast<double>(stats.replays)));
    o.Set("failure", stats.failure.empty() ? env.Null() : Napi::String::New(env, stats.failure));
    return o;
  }

  // cacheReport() -> [{stream, skippedSteps}]: what the block cache skipped since clearCache().
  Napi::Value cache_report(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const auto report = get(env)->block_cache_report();
    Napi::Array list = Napi::Array::New(env, report.size());
    for (size_t i = 0; i < report.size(); ++i) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("stream", Napi::Number::New(env, static_cast<double>(report[i].stream)));
      Napi::Array steps = Napi::Array::New(env, report[i].skipped_steps.size());
      for (size_t k = 0; k < report[i].skipped_steps.size(); ++k)
        steps.Set(k, Napi::Number::New(env, static_cast<double>(report[i].skipped_steps[k])));
      o.Set("skippedSteps", steps);
      list.Set(i, o);
    }
    return list;
  }

  // clearCache(): forgets every block cache stream (their residuals are freed).
  Napi::Value clear_cache(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    get(env)->clear_block_cache();
    return env.Undefined();
  }

  // setBlockSwap(blocksToSwap, prefetchBlocks): takes effect at the next forward.
  Napi::Value set_block_swap(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    guard(env, [&] {
      get(env)->set_block_swap(info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::Number>().Int32Value());
    });
    return env.Undefined();
  }

  // offload() -> Promise<void>: the weights back to the CPU after the queued forwards.
  Napi::Value offload(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guard(env, [&] { return offload_job(env, get(env)); });
  }

  // memoryStats() -> {resident, swapped, placement}: the last blocksToSwap blocks count as swapped.
  Napi::Value memory_stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const auto& model = get(env);
    const int64_t first_swapped = model->config().num_layers - model->options().blocks_to_swap;
    runtime::MemoryStats stats;
    {
      const auto lock = model->lock_weights();
      model->visit_weights([&](const ops::Weight& w, int64_t block) { stats.add(w, block >= first_swapped); });
    }
    return memory_stats_object(env, stats, model->on_main_device());
  }

  Napi::Value set_attention_mode(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    guard(env, [&] { get(env)->set_attention(ops::attention_mode_from_name(info[0].As<Napi::String>().Utf8Value())); });
    return env.Undefined();
  }

  // forward({x, t, context, seqLen, clipFea?, y?, fetaWeight?, riflexFreqIndex?, riflexLatentFrames?,
  //          skipBlocks?, cache?, loraStrengths?, nag?}, trace, abortFlag)
  //   -> Promise<{outputs, trace?}>
  Napi::Value forward(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
      auto model = get(env);
      const auto o = info[0].As<Napi::Object>();
      models::WanDitInput in;
      in.x = tensor_list(env, o.Get("x"), "x");
      in.t = unwrap_tensor(env, o.Get("t"), "t").value;
      in.context = tensor_list(env, o.Get("context"), "context");
      in.seq_len = o.Get("seqLen").As<Napi::Number>().Int64Value();
      if (o.Has("clipFea") && !o.Get("clipFea").IsUndefined())
        in.clip_fea = core::to_float(unwrap_tensor(env, o.Get("clipFea"), "clipFea"));
      if (o.Has("y") && !o.Get("y").IsUndefined()) in.y = tensor_list(env, o.Get("y"), "y");
      if (o.Get("loraStrengths").IsArray()) {
        const auto list = o.Get("loraStrengths").As<Napi::Array>();
        for (uint32_t i = 0; i < list.Length(); ++i) in.lora_strengths.push_back(list.Get(i).ToNumber().DoubleValue());
      }
      if (o.Has("fetaWeight") && o.Get("fetaWeight").IsNumber())
        in.feta_weight = o.Get("fetaWeight").As<Napi::Number>().DoubleValue();
      if (o.Get("skipBlocks").IsArray()) {
        const auto list = o.Get("skipBlocks").As<Napi::Array>();
        for (uint32_t i = 0; i < list.Length(); ++i) in.skip_blocks.push_back(list.Get(i).ToNumber().Int64Value());
      }
      if (o.Get("cache").IsObject()) {
        // Checked by WanModel.forward (lib/model.ts).
        const auto cc = o.Get("cache").As<Napi::Object>();
        const std::string method = cc.Get("method").ToString().Utf8Value();
        in.cache.method = method == "magcache"    ? models::BlockCacheMethod::MagCache
                          : method == "easycache" ? models::BlockCacheMethod::EasyCache
                                                  : models::BlockCacheMethod::TeaCache;
        in.cache.stream = cc.Get("stream").ToNumber().Int64Value();
        in.cache.step = cc.Get("step").ToNumber().Int64Value();
        in.cache.threshold = cc.Get("threshold").ToNumber().DoubleValue();
        in.cache.on_main = cc.Get("cacheDevice").ToString().Utf8Value() == "main_device";
        if (cc.Get("coefficients").IsArray()) {
          const auto k = cc.Get("coefficients").As<Napi::Array>();
          for (uint32_t i = 0; i < k.Length(); ++i) in.cache.coefficients.push_back(k.Get(i).ToNumber().DoubleValue());
        }
        in.cache.mode_e0 = cc.Get("mode").IsString() && cc.Get("mode").ToString().Utf8Value() == "e0";
        if (cc.Get("magnitudeRatio").IsNumber()) in.cache.magnitude_ratio = cc.Get("magnitudeRatio").ToNumber().DoubleValue();
        if (cc.Get("maxSkips").IsNumber()) in.cache.max_skips = cc.Get("maxSkips").ToNumber().Int64Value();
      }
      if (o.Get("nag").IsObject()) {
        // Checked by WanModel.forward (lib/model.ts).
        const auto n = o.Get("nag").As<Napi::Object>();
        in.nag = models::WanDitInput::Nag{unwrap_tensor(env, n.Get("context"), "nag.context").value,
                                          n.Get("scale").ToNumber().DoubleValue(), n.Get("tau").ToNumber().DoubleValue(),
                                          n.Get("alpha").ToNumber().DoubleValue()};
      }
      if (o.Get("riflexFreqIndex").IsNumber()) {
        in.riflex_freq_index = o.Get("riflexFreqIndex").As<Napi::Number>().Int64Value();
        in.riflex_latent_frames = o.Get("riflexLatentFrames").ToNumber().Int64Value();
      }
      const bool want_trace = info[1].ToBoolean();
      std::function<bool()> cancelled = cancel_flag(env, info[2]);
      return addon(env).engine.run(
          env,
          [model, in, want_trace, cancelled]() -> Engine::Finish {
            auto trace = std::make_shared<models::Trace>();
            auto outputs = std::make_shared<std::vector<at::Tensor>>(
                model->forward(in, cancelled, want_trace ? trace.get() : nullptr));
            return [outputs, trace, want_trace](Napi::Env env) -> Napi::Value {
              Napi::Object result = Napi::Object::New(env);
              Napi::Array list = Napi::Array::New(env, outputs->size());
              for (size_t i = 0; i < outputs->size(); ++i) list.Set(i, wrap_tensor(env, core::wrap((*outputs)[i])));
              result.Set("outputs", list);
              if (want_trace) {
                Napi::Object t = Napi::Object::New(env);
                for (const auto& [name, value] : *trace) t.Set(name, wrap_tensor(env, core::wrap(value.contiguous())));
                result.Set("trace", t);
              }
              return result;
            };
          },
          keep_alive(env, {o, info[2]}));
    });
  }

  Napi::Value dispose(const Napi::CallbackInfo& info) {
    model_.reset();
    return info.Env().Undefined();
  }

  std::shared_ptr<models::WanDit> model_;
};

// loadWanModel(files, {numHeads, textLen, attentionMode, device, loadDevice, basePrecision, quantization?,
//                      loras?, mergeLoras?, blocksToSwap, prefetchBlocks, offloadTxtEmb, offloadImgEmb, populate},
//              abortFlag) -> Promise<NativeWanModel>
Napi::Value load_wan_model(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const auto files = string_list(env, info[0], "files");
    const auto o = info[1].As<Napi::Object>();
    models::WanDitOverrides overrides{int_option(o, "numHeads"), int_option(o, "textLen")};
    overrides.loras = lora_list(env, o.Get("loras"));
    overrides.merge_loras = !o.Get("mergeLoras").IsBoolean() || o.Get("mergeLoras").ToBoolean();
    models::WanDitOptions options;
    options.attention = ops::attention_mode_from_name(o.Get("attentionMode").As<Napi::String>().Utf8Value());
    options.blocks_to_swap = static_cast<int>(int_option(o, "blocksToSwap"));
    options.prefetch_blocks = static_cast<int>(int_option(o, "prefetchBlocks"));
    options.device = core::parse_device(o.Get("device").As<Napi::String>().Utf8Value(), "device");
    options.load_on_main = load_on_main_device(o);
    options.offload_txt_emb = o.Get("offloadTxtEmb").ToBoolean();
    options.offload_img_emb = o.Get("offloadImgEmb").ToBoolean();
    options.compile = o.Get("compile").ToBoolean();
    options.cuda_graphs = o.Get("cudaGraphs").ToBoolean();
    if (!options.device.is_cpu()) {
      // On a GPU the model computes in basePrecision; on the CPU always in float32 (bf16 matmul
      // is ~30x slower there, native-notes.md).
      const std::string precision = o.Get("basePrecision").As<Napi::String>().Utf8Value();
      options.compute = precision == "fp32" ? at::kFloat : precision == "bf16" ? at::kBFloat16 : at::kHalf;
    }
    if (o.Get("quantization").IsString()) {
      const std::string name = o.Get("quantization").As<Napi::String>().Utf8Value();
      // fp8_e4m3fn_fast, fp8_e4m3fn_scaled_fast: the storage of the name without "_fast",
      // multiplied in fp8 on the GPU.
      const std::string fast = "_fast";
      options.fp8_matmul = name == "fp8_e4m3fn_fast" || name == "fp8_e4m3fn_scaled_fast";
      const std::string storage = options.fp8_matmul ? name.substr(0, name.size() - fast.size()) : name;
      options.quantization = ops::quantization_from_name(storage);
      if (options.fp8_matmul) {
        const std::string why = ops::fp8_matmul_unsupported(options.device);
        if (!why.empty())
          throw core::Error(core::ErrorCode::InvalidOption, "quantization '" + name + "' runs fp8 matmuls, but " + why +
                                                                "; use '" + storage + "' (fp8 storage)");
      }
    }
    const bool populate = o.Get("populate").ToBoolean();
    std::function<bool()> cancelled = cancel_flag(env, info[2]);
    return addon(env).engine.run(
        env,
        [files, overrides, options, populate, cancelled]() -> Engine::Finish {
          auto model = models::load_wan_dit(files, overrides, options, populate, cancelled);
          return [model](Napi::Env env) -> Napi::Value {
            auto* holder = new std::shared_ptr<models::WanDit>(model);
            return addon(env).wan_model_class.New({Napi::External<std::shared_ptr<models::WanDit>>::New(env, holder)});
          };
        },
        keep_alive(env, {info[2]}));
  });
}

}  // namespace

void init_model(Napi::Env env, Napi::Object exports) {
  Napi::Function cls = NativeWanModel::define(env);
  addon(env).wan_model_class = Napi::Persistent(cls);
  exports.Set("loadWanModel", Napi::Function::New(env, load_wan_model));
}

}  // namespace wan::binding
