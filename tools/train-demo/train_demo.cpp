// Trains the demo model set (models/demo) with the engine's own modules and libtorch
// autograd: the same WanVae and WanDit classes the addon runs, built on parameters that
// require grad. tools/train-demo/README.md has the whole recipe; train.ts runs it.
//
//   wan_train_demo vae     --spec demo.json --out vae.safetensors [--steps --batch --frames --dim --lr --seed]
//   wan_train_demo latents --spec demo.json --prompts P --vae vae.safetensors --out latents.safetensors [--clips --seed]
//   wan_train_demo clips   --spec demo.json --out clips.safetensors [--count --frames --seed]   (to look at)
//   wan_train_demo dit     --prompts P --latents L --out dit.safetensors [--steps --batch --dim --ffn --layers --heads --lr --shift --seed]
//
// P is the prompt file train.ts writes: every training prompt's umT5 embedding ("context"
// [N, L, text_dim], "lengths" [N]) and attributes ("attributes" [N, 4]: colour, shape,
// motion, background); row 0 is the empty prompt, the unconditional input of CFG.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "clips.h"
#include "core/error.h"
#include "core/tensor.h"
#include "io/loader.h"
#include "models/wan_dit.h"
#include "models/wan_vae.h"

namespace {

using namespace wan;
using Params = std::map<std::string, at::Tensor>;

// --key value arguments.
struct Args {
  std::map<std::string, std::string> values;
  std::string str(const std::string& key, const std::string& fallback = "") const {
    auto it = values.find(key);
    if (it != values.end()) return it->second;
    if (fallback.empty()) throw std::runtime_error("missing --" + key);
    return fallback;
  }
  int64_t num(const std::string& key, int64_t fallback) const {
    auto it = values.find(key);
    return it == values.end() ? fallback : std::stoll(it->second);
  }
  double real(const std::string& key, double fallback) const {
    auto it = values.find(key);
    return it == values.end() ? fallback : std::stod(it->second);
  }
};

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// ---------------------------------------------------------------------------------------
// Parameters: created with official names and shapes, trained in float32, saved in bf16.

// Fan-in scaled uniform initialisation (PyTorch's default for Linear and Conv).
int64_t fan_in(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (size_t i = 1; i < shape.size(); ++i) n *= shape[i];
  return n;
}

at::Tensor init_weight(std::vector<int64_t> shape, double gain = 1.0) {
  const double bound = gain / std::sqrt(static_cast<double>(fan_in(shape)));
  return at::empty(shape, at::kFloat).uniform_(-bound, bound);
}

// Biases as PyTorch initialises them, uniform in +-1 / sqrt(fan_in), not zero: every Wan VAE
// block normalises its input per pixel (x / |x|), so with zero biases the features of the
// colours c and k c coincide, and the VAE starts out unable to tell a saturated colour from
// a faded one; a VAE so started never learnt green (it drew green as dark blue).
void add_conv(Params& p, const std::string& name, std::vector<int64_t> shape, double gain = 1.0, double bias_scale = 1.0) {
  const int64_t out = shape[0];
  p[name + ".weight"] = init_weight(shape, gain);
  const double bound = bias_scale / std::sqrt(static_cast<double>(fan_in(shape)));
  p[name + ".bias"] = at::empty({out}, at::kFloat).uniform_(-bound, bound);
}

void require_grad(Params& p) {
  for (auto& [name, t] : p) t.requires_grad_(true);
}

std::map<std::string, ops::Weight> as_weights(const Params& p) {
  std::map<std::string, ops::Weight> w;
  for (const auto& [name, t] : p) w[name] = ops::Weight{core::Tensor{t, core::DType::F32}, {}};
  return w;
}

void save(const std::string& path, const Params& p, const std::map<std::string, std::string>& metadata) {
  std::vector<std::pair<std::string, core::Tensor>> tensors;
  for (const auto& [name, t] : p)
    tensors.push_back({name, core::Tensor{t.detach().to(at::kBFloat16).contiguous(), core::DType::BF16}});
  io::save_safetensors(path, tensors, metadata, {});
}

std::map<std::string, at::Tensor> load(const std::string& path) {
  std::map<std::string, at::Tensor> out;
  for (auto& [name, t] : io::load_checkpoint(path, io::LoadOptions{}, {}).tensors) out[name] = t.value;
  return out;
}

// The Wan2.1 VAE's parameters for base width `d` (models/wan_vae.cpp builds the same tree).
// Convolution weights are PyTorch's default times `gain`, biases PyTorch's times `bias_scale`:
// gain 3 and bias scale 0.1 keep the input's signal alive through the trunk (README.md, "The
// initialisation matters"); PyTorch's own (1, 1) leaves the latent blind to colour.
Params init_vae(int64_t d, int64_t z, double gain, double bias_scale) {
  Params p;
  const auto add_conv = [&](Params& q, const std::string& name, std::vector<int64_t> shape, double g = 1.0) {
    ::add_conv(q, name, shape, g * gain, bias_scale);
  };
  auto residual = [&](const std::string& name, int64_t in, int64_t out) {
    p[name + ".residual.0.gamma"] = at::ones({in, 1, 1, 1});
    add_conv(p, name + ".residual.2", {out, in, 3, 3, 3});
    p[name + ".residual.3.gamma"] = at::ones({out, 1, 1, 1});
    add_conv(p, name + ".residual.6", {out, out, 3, 3, 3}, 0.1);  // near-identity blocks at first
    if (in != out) add_conv(p, name + ".shortcut", {out, in, 1, 1, 1});
  };
  auto attention = [&](const std::string& name, int64_t c) {
    p[name + ".norm.gamma"] = at::ones({c, 1, 1});
    add_conv(p, name + ".to_qkv", {3 * c, c, 1, 1});
    add_conv(p, name + ".proj", {c, c, 1, 1}, 0.1);
  };
  const int64_t mult[] = {1, 2, 4, 4};
  add_conv(p, "encoder.conv1", {d, 3, 3, 3, 3});
  int64_t in = d, k = 0;
  for (int i = 0; i < 4; ++i) {
    const int64_t out = d * mult[i];
    for (int j = 0; j < 2; ++j, in = out) residual("encoder.downsamples." + std::to_string(k++), in, out);
    if (i != 3) {
      const std::string name = "encoder.downsamples." + std::to_string(k++);
      add_conv(p, name + ".resample.1", {out, out, 3, 3});
      if (i > 0) add_conv(p, name + ".time_conv", {out, out, 3, 1, 1});
    }
  }
  for (const char* coder : {"encoder", "decoder"}) {
    const std::string c = coder;
    residual(c + ".middle.0", 4 * d, 4 * d);
    attention(c + ".middle.1", 4 * d);
    residual(c + ".middle.2", 4 * d, 4 * d);
  }
  p["encoder.head.0.gamma"] = at::ones({4 * d, 1, 1, 1});
  add_conv(p, "encoder.head.2", {2 * z, 4 * d, 3, 3, 3});
  add_conv(p, "conv1", {2 * z, 2 * z, 1, 1, 1});
  add_conv(p, "conv2", {z, z, 1, 1, 1});
  add_conv(p, "decoder.conv1", {4 * d, z, 3, 3, 3});
  const int64_t dims[] = {4 * d, 4 * d, 4 * d, 2 * d, d};
  k = 0;
  for (int i = 0; i < 4; ++i) {
    in = i == 0 ? dims[0] : dims[i] / 2;
    const int64_t out = dims[i + 1];
    for (int j = 0; j < 3; ++j, in = out) residual("decoder.upsamples." + std::to_string(k++), in, out);
    if (i != 3) {
      const std::string name = "decoder.upsamples." + std::to_string(k++);
      add_conv(p, name + ".resample.1", {out / 2, out, 3, 3});
      if (i < 2) add_conv(p, name + ".time_conv", {2 * out, out, 3, 1, 1});
    }
  }
  p["decoder.head.0.gamma"] = at::ones({d, 1, 1, 1});
  add_conv(p, "decoder.head.2", {3, d, 3, 3, 3});
  return p;
}

struct DitShape {
  int64_t dim, ffn, layers, text_dim, in_dim = 16, out_dim = 16, freq_dim = 256;
};

// The Wan2.1 T2V DiT's parameters (wan/modules/model.py WanModel, init_weights: Xavier
// linears, zero biases, zero output head).
Params init_dit(const DitShape& s) {
  Params p;
  auto linear = [&](const std::string& name, int64_t out, int64_t in) {
    const double bound = std::sqrt(6.0 / static_cast<double>(in + out));
    p[name + ".weight"] = at::empty({out, in}).uniform_(-bound, bound);
    p[name + ".bias"] = at::zeros({out});
  };
  p["patch_embedding.weight"] = init_weight({s.dim, s.in_dim, 1, 2, 2});
  p["patch_embedding.bias"] = at::zeros({s.dim});
  linear("text_embedding.0", s.dim, s.text_dim);
  linear("text_embedding.2", s.dim, s.dim);
  linear("time_embedding.0", s.dim, s.freq_dim);
  linear("time_embedding.2", s.dim, s.dim);
  linear("time_projection.1", 6 * s.dim, s.dim);
  for (int64_t i = 0; i < s.layers; ++i) {
    const std::string b = "blocks." + std::to_string(i);
    p[b + ".modulation"] = at::randn({1, 6, s.dim}) / std::sqrt(static_cast<double>(s.dim));
    for (const char* attn : {".self_attn", ".cross_attn"}) {
      for (const char* l : {".q", ".k", ".v", ".o"}) linear(b + attn + l, s.dim, s.dim);
      p[b + attn + ".norm_q.weight"] = at::ones({s.dim});
      p[b + attn + ".norm_k.weight"] = at::ones({s.dim});
    }
    p[b + ".norm3.weight"] = at::ones({s.dim});
    p[b + ".norm3.bias"] = at::zeros({s.dim});
    linear(b + ".ffn.0", s.ffn, s.dim);
    linear(b + ".ffn.2", s.dim, s.ffn);
  }
  p["head.modulation"] = at::randn({1, 2, s.dim}) / std::sqrt(static_cast<double>(s.dim));
  p["head.head.weight"] = at::zeros({s.out_dim * 4, s.dim});
  p["head.head.bias"] = at::zeros({s.out_dim * 4});
  return p;
}

// ---------------------------------------------------------------------------------------
// AdamW with global-norm gradient clipping, a linear warm-up and a cosine decay to 10 %,
// and an exponential moving average of the weights (what is saved).
class Optimizer {
 public:
  Optimizer(Params& params, double lr, int64_t steps, double weight_decay, double ema_decay)
      : lr_(lr), steps_(steps), weight_decay_(weight_decay), ema_decay_(ema_decay) {
    at::NoGradGuard no_grad;
    for (auto& [name, t] : params) {
      slots_.push_back({name, t, at::zeros_like(t), at::zeros_like(t), t.detach().clone()});
    }
  }

  // One update from the gradients the last backward() left; returns the gradient norm.
  double step() {
    at::NoGradGuard no_grad;
    ++t_;
    double sq = 0;
    for (auto& s : slots_)
      if (s.param.grad().defined()) sq += s.param.grad().pow(2).sum().item<double>();
    const double norm = std::sqrt(sq);
    const double clip = norm > 1.0 ? 1.0 / norm : 1.0;
    const int64_t warmup = std::min<int64_t>(200, steps_ / 10);
    const double progress = static_cast<double>(t_) / static_cast<double>(steps_);
    const double lr = lr_ * (t_ < warmup ? static_cast<double>(t_) / warmup : 0.1 + 0.45 * (1 + std::cos(M_PI * progress)));
    const double b1 = 0.9, b2 = 0.99, eps = 1e-8;
    const double c1 = 1 - std::pow(b1, t_), c2 = 1 - std::pow(b2, t_);
    const double ema = std::min(ema_decay_, (1.0 + t_) / (10.0 + t_));
    for (auto& s : slots_) {
      at::Tensor g = s.param.mutable_grad();
      if (!g.defined()) continue;
      g.mul_(clip);
      s.m.mul_(b1).add_(g, 1 - b1);
      s.v.mul_(b2).addcmul_(g, g, 1 - b2);
      // Decay matrices and convolutions only, not norms, biases or modulation.
      if (s.param.dim() >= 2 && s.name.find("modulation") == std::string::npos) s.param.mul_(1 - lr * weight_decay_);
      s.param.addcdiv_(s.m, (s.v / c2).sqrt_().add_(eps), -lr / c1);
      s.average.mul_(ema).add_(s.param, 1 - ema);
      g.zero_();
    }
    return norm;
  }

  Params averaged() const {
    Params out;
    for (const auto& s : slots_) out[s.name] = s.average;
    return out;
  }

 private:
  struct Slot {
    std::string name;
    at::Tensor param, m, v, average;
  };
  std::vector<Slot> slots_;
  double lr_;
  int64_t steps_, t_ = 0;
  double weight_decay_, ema_decay_;
};

// ---------------------------------------------------------------------------------------
// The prompt file.

struct Prompts {
  at::Tensor context;     // [N, L, text_dim]
  at::Tensor lengths;     // [N]
  at::Tensor attributes;  // [N, 4]; row 0 (the empty prompt) is -1
  int64_t count() const { return context.size(0); }
  at::Tensor embedding(int64_t row) const { return context[row].narrow(0, 0, lengths[row].item<int64_t>()); }
  demo::ClipAttributes clip(int64_t row) const {
    const at::Tensor a = attributes[row];
    return {a[0].item<int64_t>(), a[1].item<int64_t>(), a[2].item<int64_t>(), a[3].item<int64_t>()};
  }
};

Prompts read_prompts(const std::string& path) {
  auto t = load(path);
  Prompts p{t.at("context").to(at::kFloat), t.at("lengths").to(at::kLong), t.at("attributes").to(at::kLong)};
  if (p.count() < 2 || p.attributes[0][0].item<int64_t>() != -1)
    throw std::runtime_error(path + ": expected the empty prompt in row 0 and training prompts after it");
  return p;
}

// Any attributes: the VAE learns pictures, not prompts. Colours that would vanish into
// their background are drawn anyway; they are rare and harmless here.
demo::ClipAttributes random_clip(const demo::DemoSpec& spec, demo::Rng& rng) {
  demo::ClipAttributes a;
  a.colour = rng.below(static_cast<int64_t>(spec.colours.size()));
  a.shape = rng.below(static_cast<int64_t>(spec.shapes.size()));
  a.motion = rng.below(static_cast<int64_t>(spec.motions.size()));
  a.background = rng.below(static_cast<int64_t>(spec.backgrounds.size()));
  return a;
}

// ---------------------------------------------------------------------------------------
// Stage 1: the VAE as an autoencoder on the clips.
//
// Nine frames (the first alone, then two chunks of four) take every path of the causal
// chunking: the temporal down- and upsampling treat the first, second and later chunks each
// their own way, and a VAE trained on five frames decodes the third chunk wrongly. Random
// crops (the model is convolutional but for the per-frame middle attention) make a step
// four times cheaper than whole 64x64 frames.
//
// Loss: L1 + MSE reconstruction of the clip from the posterior mean (plus a little noise,
// so that the decoder tolerates the imprecise latents a sampler ends with), and a moment
// penalty that gives the normalised latent (mu - mean) / std, with Wan's per-channel
// constants, zero mean and unit variance per channel: the scale a flow-matching DiT expects.
int train_vae(const Args& args) {
  const demo::DemoSpec spec = demo::read_demo_spec(args.str("spec"));
  const int64_t steps = args.num("steps", 3000), batch = args.num("batch", 4), frames = args.num("frames", 9);
  const int64_t crop = args.num("crop", spec.size);  // a random crop x crop window of each clip
  const double object_weight = args.real("object-weight", 0);
  const int64_t objects_max = args.num("objects", 1);  // each clip shows 1 to this many shapes
  const int64_t dim = args.num("dim", 16), z = 16;
  const uint64_t seed = static_cast<uint64_t>(args.num("seed", 1));
  at::manual_seed(seed);
  demo::Rng rng(seed);

  Params params = init_vae(dim, z, args.real("init-gain", 3.0), args.real("bias-scale", 0.1));
  if (args.values.count("init"))  // continue from earlier weights
    for (auto& [name, t] : load(args.str("init"))) params.at(name) = t.to(at::kFloat).clone();
  // The middle attention's output projections stay zero, so that the VAE is local (every
  // layer sees a bounded neighbourhood) and what it learns on crops holds on whole frames:
  // with a per-frame attention trained on 4 x 4 latents, 8 x 8 ones decoded to grey.
  Params frozen;
  for (const char* coder : {"encoder", "decoder"})
    for (const char* part : {".middle.1.proj.weight", ".middle.1.proj.bias"}) {
      const std::string name = std::string(coder) + part;
      frozen[name] = at::zeros_like(params.at(name));
      params.erase(name);
    }
  require_grad(params);
  Params all = params;
  all.insert(frozen.begin(), frozen.end());
  const auto vae = std::make_shared<models::WanVae>(models::WanVaeConfig{dim, z}, as_weights(all), "demo VAE");
  Optimizer opt(params, args.real("lr", 1e-3), steps, 1e-4, args.real("ema", 0.99));
  const auto averaged = [&] {
    Params out = opt.averaged();
    out.insert(frozen.begin(), frozen.end());
    return out;
  };
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"wan_native.demo", "vae"}, {"wan_native.steps", std::to_string(steps)},
      {"wan_native.seed", std::to_string(seed)}};
  const at::Tensor std = at::tensor(models::WanVae::latent_std(), at::kFloat).view({1, -1, 1, 1, 1});

  const auto start = std::chrono::steady_clock::now();
  double smooth = 0;
  for (int64_t step = 1; step <= steps; ++step) {
    std::vector<at::Tensor> clips;
    for (int64_t b = 0; b < batch; ++b) {
      demo::Rng fixed(seed);  // --same-clip 1: one clip over and over (a check that the VAE can learn at all)
      demo::Rng& r = args.num("same-clip", 0) ? fixed : rng;
      std::vector<demo::ClipAttributes> objects;
      for (int64_t k = 0, count = 1 + r.below(objects_max); k < count; ++k) objects.push_back(random_clip(spec, r));
      at::Tensor clip = demo::render_clip(spec, objects, frames, r);
      if (crop < spec.size) {
        const int64_t y = rng.below(spec.size - crop + 1), x = rng.below(spec.size - crop + 1);
        clip = clip.narrow(2, y, crop).narrow(3, x, crop);
      }
      clips.push_back(clip);
    }
    const at::Tensor x = at::stack(clips);
    const at::Tensor mu = vae->encode_moments(x).first;
    const at::Tensor normalised = models::WanVae::normalize(mu);
    const at::Tensor noisy = mu + at::randn_like(mu) * std * args.real("noise", 0.05);
    const at::Tensor y = vae->decode_raw(noisy);
    // Pixels of the shapes weigh object_weight times more than the background: a shape is a
    // small part of each frame, and without the weight its hue is learnt last. Backgrounds are
    // vertical gradients, so a row's median over the clip's frames and columns is the
    // background there (this holds for single frames too).
    at::Tensor weight = at::ones_like(x.narrow(1, 0, 1));
    if (object_weight > 0) {
      const at::Tensor rows = x.permute({0, 1, 3, 2, 4}).flatten(3);  // [B, 3, H, F * W]
      const at::Tensor background = std::get<0>(rows.median(3, true)).unsqueeze(2);  // [B, 3, 1, H, 1]
      weight = weight + object_weight * ((x - background).abs().sum(1, true) > 0.3).to(at::kFloat);
    }
    const at::Tensor error = (y - x).abs() + (y - x).pow(2);
    const at::Tensor recon = (error * weight).mean() / weight.mean();
    const at::Tensor channel_mean = normalised.mean({0, 2, 3, 4});
    const at::Tensor channel_var = normalised.var({0, 2, 3, 4}, false);
    const at::Tensor moments = channel_mean.pow(2).mean() + (channel_var - 1).pow(2).mean();
    const at::Tensor loss = recon + args.real("moments", 0.01) * moments;
    loss.backward();
    const double grad_norm = opt.step();
    smooth = step == 1 ? recon.item<double>() : 0.98 * smooth + 0.02 * recon.item<double>();
    if (step % 25 == 0 || step == 1)
      std::printf("vae step %lld/%lld  recon %.4f (avg %.4f)  moments %.3f  |g| %.2f  %.1f s\n",
                  static_cast<long long>(step), static_cast<long long>(steps), recon.item<double>(), smooth,
                  moments.item<double>(), grad_norm, seconds_since(start));
    std::fflush(stdout);
    // The averaged weights so far, to look at while training goes on.
    if (step % 250 == 0) save(args.str("out"), averaged(), metadata);
  }
  save(args.str("out"), averaged(), metadata);
  std::printf("saved %s after %.0f s\n", args.str("out").c_str(), seconds_since(start));
  return 0;
}

// ---------------------------------------------------------------------------------------
// Stage 2: a fixed set of clips encoded by the trained VAE (through the loader, as the
// addon loads it), so the DiT trains on exactly what the demo's VAE will decode.
int encode_latents(const Args& args) {
  const demo::DemoSpec spec = demo::read_demo_spec(args.str("spec"));
  const Prompts prompts = read_prompts(args.str("prompts"));
  const int64_t clips = args.num("clips", 2000);
  const uint64_t seed = static_cast<uint64_t>(args.num("seed", 2));
  demo::Rng rng(seed);
  const auto vae = models::load_wan_vae({args.str("vae")}, true, {});
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> latents;
  std::vector<int64_t> rows;
  const auto start = std::chrono::steady_clock::now();
  constexpr int64_t kBatch = 16;
  for (int64_t i = 0; i < clips; i += kBatch) {
    // Every training prompt in turn, so each appears about equally often; batches of clips
    // through encode_moments, normalised as encode() does.
    std::vector<at::Tensor> batch;
    for (int64_t j = i; j < std::min(clips, i + kBatch); ++j) {
      const int64_t row = 1 + j % (prompts.count() - 1);
      batch.push_back(demo::render_clip(spec, prompts.clip(row), spec.frames, rng));
      rows.push_back(row);
    }
    const at::Tensor z = models::WanVae::normalize(vae->encode_moments(at::stack(batch)).first);
    for (int64_t j = 0; j < z.size(0); ++j) latents.push_back(z[j]);
    if ((i / kBatch + 1) % 10 == 0) {
      std::printf("latents %lld/%lld  %.1f s\n", static_cast<long long>(latents.size()), static_cast<long long>(clips),
                  seconds_since(start));
      std::fflush(stdout);
    }
  }
  const at::Tensor all = at::stack(latents);
  std::printf("latent mean %.3f std %.3f\n", all.mean().item<double>(), all.std().item<double>());
  io::save_safetensors(args.str("out"),
                       {{"latents", core::Tensor{all, core::DType::F32}},
                        {"rows", core::Tensor{at::tensor(rows, at::kLong), core::DType::I64}}},
                       {}, {});
  return 0;
}

// ---------------------------------------------------------------------------------------
// Stage 3: the DiT as a flow-matching model (Wan's convention): x_t = (1 - s) x0 + s noise,
// the target velocity noise - x0, timestep 1000 s, with s = shift u / (1 + (shift - 1) u)
// for u uniform in (0, 1) (the shifted schedule the samplers use). One prompt in ten is
// replaced by the empty prompt, so that classifier-free guidance has an unconditional model.
int train_dit(const Args& args) {
  const Prompts prompts = read_prompts(args.str("prompts"));
  auto data = load(args.str("latents"));
  const at::Tensor latents = data.at("latents").to(at::kFloat);
  const at::Tensor rows = data.at("rows").to(at::kLong);
  const int64_t steps = args.num("steps", 4000), batch = args.num("batch", 32);
  const uint64_t seed = static_cast<uint64_t>(args.num("seed", 3));
  const double shift = args.real("shift", 3.0);
  at::manual_seed(seed);
  demo::Rng rng(seed);

  DitShape shape{args.num("dim", 128), args.num("ffn", 512), args.num("layers", 6), prompts.context.size(2)};
  models::WanDitConfig config;
  config.dim = shape.dim;
  config.ffn_dim = shape.ffn;
  config.num_layers = shape.layers;
  config.num_heads = args.num("heads", 2);
  config.text_dim = shape.text_dim;
  config.text_len = args.num("text-len", 16);
  Params params = init_dit(shape);
  if (args.values.count("init"))  // continue from earlier weights
    for (auto& [name, t] : load(args.str("init"))) params.at(name) = t.to(at::kFloat).clone();
  require_grad(params);
  const models::WanDit dit(config, as_weights(params), models::WanDitOptions{}, "demo DiT");
  Optimizer opt(params, args.real("lr", 3e-4), steps, 1e-4, args.real("ema", 0.995));

  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"wan_native.demo", "dit"}, {"wan_native.steps", std::to_string(steps)},
      {"wan_native.seed", std::to_string(seed)}, {"wan_native.num_heads", std::to_string(config.num_heads)},
      {"wan_native.text_len", std::to_string(config.text_len)}};
  const int64_t seq_len = latents.size(2) * (latents.size(3) / 2) * (latents.size(4) / 2);
  const auto start = std::chrono::steady_clock::now();
  double smooth = 0;
  for (int64_t step = 1; step <= steps; ++step) {
    models::WanDitInput in;
    std::vector<at::Tensor> targets;
    std::vector<double> ts;
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t i = rng.below(latents.size(0));
      const at::Tensor x0 = latents[i];
      const at::Tensor noise = at::randn_like(x0);
      const double u = rng.uniform(0.001, 0.999);
      const double s = shift * u / (1 + (shift - 1) * u);
      in.x.push_back((1 - s) * x0 + s * noise);
      targets.push_back(noise - x0);
      ts.push_back(1000.0 * s);
      const int64_t row = rng.uniform() < 0.1 ? 0 : rows[i].item<int64_t>();
      in.context.push_back(prompts.embedding(row));
    }
    in.t = at::tensor(ts, at::kFloat);
    in.seq_len = seq_len;
    const std::vector<at::Tensor> out = dit.forward(in);
    const at::Tensor loss = (at::stack(out) - at::stack(targets)).pow(2).mean();
    loss.backward();
    const double grad_norm = opt.step();
    smooth = step == 1 ? loss.item<double>() : 0.98 * smooth + 0.02 * loss.item<double>();
    if (step % 50 == 0 || step == 1)
      std::printf("dit step %lld/%lld  loss %.4f (avg %.4f)  |g| %.2f  %.1f s\n", static_cast<long long>(step),
                  static_cast<long long>(steps), loss.item<double>(), smooth, grad_norm, seconds_since(start));
    std::fflush(stdout);
    if (step % 500 == 0) save(args.str("out"), opt.averaged(), metadata);  // to look at while training goes on
  }
  save(args.str("out"), opt.averaged(), metadata);
  std::printf("saved %s after %.0f s\n", args.str("out").c_str(), seconds_since(start));
  return 0;
}

// What training relies on, checked on random weights for the VAE and the DiT (run by
// test/native/train-paths.test.ts):
// - where autograd records, the engine's composite ops compute what its fused inference
//   kernels compute (maxDiff against the output's scale);
// - the gradient is the loss's: autograd's directional derivative along a random direction
//   equals a central finite difference;
// - the model reads the very tensors the optimiser updates in place (the finite difference
//   moves the parameters in place under the model built once; a model that had copied its
//   weights would see no change).
using Forward = std::function<at::Tensor()>;

void check_paths(const char* model, Params params, const std::function<Forward(const Params&)>& build) {
  at::Tensor fused;
  {
    at::NoGradGuard no_grad;
    fused = build(params)();
  }
  require_grad(params);
  const Forward forward = build(params);
  const at::Tensor traced = forward();
  const at::Tensor target = at::randn_like(fused);
  (traced - target).pow(2).mean().backward();
  std::map<std::string, at::Tensor> direction;
  double autograd = 0;
  for (auto& [name, t] : params) {
    direction[name] = at::randn_like(t) * 1e-2;
    if (t.grad().defined()) autograd += (t.grad() * direction[name]).sum().item<double>();
  }
  const double eps = 1e-2;
  at::NoGradGuard no_grad;
  auto loss_moved = [&](double by) {
    for (auto& [name, t] : params) t.detach().add_(direction[name], by);
    return (forward() - target).pow(2).mean().item<double>();
  };
  const double plus = loss_moved(eps), minus = loss_moved(-2 * eps);
  loss_moved(eps);
  std::printf("{\"model\": \"%s\", \"maxDiff\": %.6g, \"scale\": %.6g, \"autograd\": %.8g, \"finite\": %.8g}\n", model,
              (traced.detach() - fused).abs().max().item<double>(), fused.abs().max().item<double>(), autograd,
              (plus - minus) / (2 * eps));
}

int path_check(const Args& args) {
  const demo::DemoSpec spec = demo::read_demo_spec(args.str("spec"));
  demo::Rng rng(5);
  at::manual_seed(5);
  // The VAE on a nine-frame clip (every path of the causal chunking), its middle attention
  // live (random output projection) so that its path is checked too.
  Params vae = init_vae(16, 16, 3.0, 0.1);
  for (const char* coder : {"encoder", "decoder"}) vae.at(std::string(coder) + ".middle.1.proj.weight").normal_(0, 0.05);
  const at::Tensor clip = demo::render_clip(spec, random_clip(spec, rng), 9, rng).narrow(2, 0, 32).narrow(3, 0, 32).unsqueeze(0);
  check_paths("vae", vae, [&](const Params& p) -> Forward {
    auto model = std::make_shared<models::WanVae>(models::WanVaeConfig{16, 16}, as_weights(p), "demo VAE");
    return [model, clip] { return model->decode_raw(model->encode_moments(clip).first); };
  });
  // A small DiT with every weight random (the released initialisation zeroes the head).
  DitShape shape{32, 64, 2, 24};
  Params dit = init_dit(shape);
  for (auto& [name, t] : dit) t.normal_(name.find("norm") != std::string::npos ? 1.0 : 0.0, 0.1);
  models::WanDitConfig config;
  config.dim = shape.dim;
  config.ffn_dim = shape.ffn;
  config.num_layers = shape.layers;
  config.num_heads = 2;
  config.text_dim = shape.text_dim;
  config.text_len = 8;
  models::WanDitInput in;
  in.x = {at::randn({16, 3, 4, 6}), at::randn({16, 3, 4, 6})};
  in.context = {at::randn({5, shape.text_dim}), at::randn({8, shape.text_dim})};
  in.t = at::tensor({250.0f, 900.0f});
  in.seq_len = 3 * 2 * 3;
  check_paths("dit", dit, [&](const Params& p) -> Forward {
    auto model = std::make_shared<models::WanDit>(config, as_weights(p), models::WanDitOptions{}, "demo DiT");
    return [model, in] { return at::stack(model->forward(in)); };
  });
  return 0;
}

// Clips to look at: `count` random clips of `frames` frames, [N, 3, F, H, W] in [-1, 1].
int render_clips(const Args& args) {
  const demo::DemoSpec spec = demo::read_demo_spec(args.str("spec"));
  demo::Rng rng(static_cast<uint64_t>(args.num("seed", 99)));
  std::vector<at::Tensor> clips;
  for (int64_t i = 0, n = args.num("count", 8); i < n; ++i)
    clips.push_back(demo::render_clip(spec, std::vector<demo::ClipAttributes>{random_clip(spec, rng), random_clip(spec, rng)},
                                      args.num("frames", spec.frames), rng));
  io::save_safetensors(args.str("out"), {{"clips", core::Tensor{at::stack(clips), core::DType::F32}}}, {}, {});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: wan_train_demo vae|latents|dit|clips|path-check --key value ...\n");
    return 2;
  }
  Args args;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string key = argv[i];
    if (key.rfind("--", 0) != 0) {
      std::fprintf(stderr, "expected --key value, got %s\n", argv[i]);
      return 2;
    }
    args.values[key.substr(2)] = argv[i + 1];
  }
  core::init_runtime(static_cast<int>(args.num("threads", 2)));
  const std::string stage = argv[1];
  try {
    if (stage == "vae") return train_vae(args);
    if (stage == "latents") return encode_latents(args);
    if (stage == "dit") return train_dit(args);
    if (stage == "clips") return render_clips(args);
    if (stage == "path-check") return path_check(args);
    std::fprintf(stderr, "unknown stage %s\n", stage.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "wan_train_demo %s: %s\n", stage.c_str(), e.what());
    return 1;
  }
}
