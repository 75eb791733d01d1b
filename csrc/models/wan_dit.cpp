#include "models/wan_dit.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "models/weights.h"
#include "ops/adaln.h"
#include "ops/norm.h"
#include "runtime/device_swap.h"
#include "runtime/prefetch.h"

#ifdef WAN_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/version.h>
#endif

namespace wan::models {
namespace {

using core::Error;
using core::ErrorCode;
using core::shape_text;

// Timestep embedding (sinusoidal_embedding_1d), computed in float64 as the official code
// does: t [B] -> [B, dim] = [cos(t w), sin(t w)], w_j = 10000^(-j/half).
at::Tensor sinusoidal_embedding(int64_t dim, const at::Tensor& t) {
  const int64_t half = dim / 2;
  const at::Tensor position = t.to(at::kDouble).flatten();
  const at::Tensor freqs = at::pow(10000.0, -at::arange(half, position.options()).div(half));
  const at::Tensor sinusoid = at::outer(position, freqs);
  return at::cat({at::cos(sinusoid), at::sin(sinusoid)}, 1).to(at::kFloat);
}

void check(bool ok, const std::string& what) {
  if (!ok) throw Error(ErrorCode::InvalidTensor, what);
}

}  // namespace

WanDit::WanDit(WanDitConfig config, std::map<std::string, ops::Weight> weights, WanDitOptions options,
               const std::string& source, LoraAdapters adapters, std::vector<double> lora_strengths)
    : config_(std::move(config)), options_(options), rope_(ops::rope_table(config_.head_dim())),
      lora_strengths_(std::move(lora_strengths)), residency_(options.device) {
  WeightBag bag(std::move(weights));
  auto linear = [&](const std::string& p) {
    Linear l{bag.take(p + ".weight"), bag.take(p + ".bias"), {}};
    if (auto it = adapters.find(p + ".weight"); it != adapters.end()) {
      l.loras = std::move(it->second);
      adapters.erase(it);
    }
    return l;
  };
  patch_embedding_weight_ = bag.take("patch_embedding.weight");
  patch_embedding_bias_ = bag.take("patch_embedding.bias");
  text_embedding0_ = linear("text_embedding.0");
  text_embedding2_ = linear("text_embedding.2");
  time_embedding0_ = linear("time_embedding.0");
  time_embedding2_ = linear("time_embedding.2");
  time_projection1_ = linear("time_projection.1");
  const bool image = config_.has_image_input();
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    const std::string p = "blocks." + std::to_string(i) + ".";
    Block b;
    for (auto [attention, name] : {std::pair{&b.self_attn, "self_attn"}, std::pair{&b.cross_attn, "cross_attn"}}) {
      const std::string a = p + name + ".";
      attention->q = linear(a + "q");
      attention->k = linear(a + "k");
      attention->v = linear(a + "v");
      attention->o = linear(a + "o");
      if (config_.qk_norm) {
        attention->norm_q = bag.take(a + "norm_q.weight");
        attention->norm_k = bag.take(a + "norm_k.weight");
      }
    }
    if (image) {
      b.cross_attn.k_img = linear(p + "cross_attn.k_img");
      b.cross_attn.v_img = linear(p + "cross_attn.v_img");
      if (config_.qk_norm) b.cross_attn.norm_k_img = bag.take(p + "cross_attn.norm_k_img.weight");
    }
    if (config_.cross_attn_norm) {
      b.norm3_weight = bag.take(p + "norm3.weight");
      b.norm3_bias = bag.take(p + "norm3.bias");
    }
    b.ffn0 = linear(p + "ffn.0");
    b.ffn2 = linear(p + "ffn.2");
    b.modulation = bag.take(p + "modulation");
    blocks_.push_back(std::move(b));
  }
  head_ = linear("head.head");
  head_modulation_ = bag.take("head.modulation");
  if (image) {
    img_norm0_weight_ = bag.take("img_emb.proj.0.weight");
    img_norm0_bias_ = bag.take("img_emb.proj.0.bias");
    img_proj1_ = linear("img_emb.proj.1");
    img_proj3_ = linear("img_emb.proj.3");
    img_norm4_weight_ = bag.take("img_emb.proj.4.weight");
    img_norm4_bias_ = bag.take("img_emb.proj.4.bias");
    if (config_.model_type == "flf2v") img_emb_pos_ = bag.take("img_emb.emb_pos");
  }
  bag.check(source, "Wan2.1 DiT");
  if (!adapters.empty())  // split_loras makes adapters of 2-D weights only, which are all linear layers
    throw Error(ErrorCode::Internal,
                "an unmerged LoRA changes '" + adapters.begin()->first + "', which is not a linear layer");
  set_block_swap(options.blocks_to_swap, options.prefetch_blocks);
  // Everything outside the blocks moves with the model (runtime/residency.h), except the
  // embeddings block swap keeps on the CPU; the blocks are placed by place_blocks.
  std::vector<ops::Weight*> moving{&patch_embedding_weight_, &patch_embedding_bias_, &head_modulation_};
  std::vector<Linear*> linears{&time_embedding0_, &time_embedding2_, &time_projection1_, &head_};
  if (!options_.offload_txt_emb) linears.insert(linears.end(), {&text_embedding0_, &text_embedding2_});
  if (!options_.offload_img_emb) {
    linears.insert(linears.end(), {&img_proj1_, &img_proj3_});
    moving.insert(moving.end(),
                  {&img_norm0_weight_, &img_norm0_bias_, &img_norm4_weight_, &img_norm4_bias_, &img_emb_pos_});
  }
  for (Linear* l : linears) {
    moving.insert(moving.end(), {&l->weight, &l->bias});
    for (LoraAdapter& a : l->loras) moving.insert(moving.end(), {&a.down, &a.up});
  }
  residency_.manage(moving, options_.load_on_main);
  if (!options_.device.is_cpu()) {
    rope_.cos = rope_.cos.to(options_.device);  // a few kilobytes: always there
    rope_.sin = rope_.sin.to(options_.device);
    if (options_.load_on_main) {
      const std::lock_guard<std::mutex> lock(placement_mutex_);
      place_blocks();  // at load, so that a model too large for the device fails here
    }
  }
}

void WanDit::offload() const {
  const std::lock_guard<std::mutex> lock(placement_mutex_);
  release_graph();  // it reads the placed weights
  placed_.clear();
  placed_swap_ = -1;
  residency_.place(false);
}

at::Tensor WanDit::project(const Linear& l, const at::Tensor& x, const LoraStrengths& lora) const {
  const at::Tensor in = x.to(options_.compute);
  at::Tensor y = options_.fp8_matmul && ops::fp8_matmul_fits(in, l.weight) ? ops::linear_fp8(in, l.weight, l.bias)
                                                                            : ops::linear(in, l.weight, l.bias);
  // Unmerged LoRAs: y += strength * alpha / rank * (x down^T) up^T, at this call's strength.
  for (const LoraAdapter& a : l.loras) {
    const double factor = lora.at(a.lora) * a.scale;
    if (factor != 0) y = y + ops::linear(ops::linear(in, a.down, {}), a.up, {}) * factor;
  }
  return y;
}

at::Tensor WanDit::apply(const Linear& l, const at::Tensor& x, const LoraStrengths& lora) const {
  return project(l, x, lora).to(at::kFloat);
}

at::Tensor WanDit::project_gelu(const Linear& l, const at::Tensor& x, const LoraStrengths& lora) const {
  const at::Tensor in = x.to(options_.compute);
  const bool lora_active =
      std::any_of(l.loras.begin(), l.loras.end(), [&](const LoraAdapter& a) { return lora.at(a.lora) * a.scale != 0; });
  const bool fp8 = options_.fp8_matmul && ops::fp8_matmul_fits(in, l.weight);
  if (options_.compile && !lora_active && !fp8) {
    at::Tensor fused = ops::linear_gelu_fused(in, l.weight, l.bias);
    if (fused.defined()) return fused;
  }
  at::Tensor hidden = project(l, in, lora);
  // GELU(tanh) computes in float32 for every dtype (ATen's opmath), so in place on a bf16
  // hidden it gives the bits that widening, GELU in float32 and narrowing again would.
  return ops::records_grad(hidden) ? at::gelu(hidden, "tanh") : at::gelu_(hidden, "tanh");
}

at::Tensor WanDit::modulated(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift) const {
  if (options_.compile) {
    at::Tensor fused = ops::modulate_fused(x, scale, shift, config_.eps, options_.compute);
    if (fused.defined()) return fused;
  }
  return ops::modulate(x, scale, shift, config_.eps);
}

at::Tensor WanDit::residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate) const {
  if (options_.compile) {
    at::Tensor fused = ops::gated_residual_fused(x, y, gate);
    if (fused.defined()) return fused;
  }
  return ops::gated_residual(x, y, gate);
}

at::Tensor WanDit::heads(const at::Tensor& x) const {
  return x.view({x.size(0), x.size(1), config_.num_heads, config_.head_dim()});
}

// Enhance-A-Video (Luo et al. 2025, as the wrapper's enhance_a_video applies it): for every
// spatial position and head, softmax(q k^T / sqrt(D)) across the T latent frames; the mean of
// its off-diagonal entries, averaged over positions and heads, times (T + weight), floored at 1,
// is the gain of the attention output. q, k: [L, H, D] of one sample, RMS-normed, before RoPE;
// tokens are frame-major (f, h, w), so position s of frame f is token f*S + s. (The wrapper's
// March 2025 code reshapes them as (S, T) instead, mixing neighbouring positions of one frame;
// we group by frame as the method and its reference implementation do.)
static double feta_gain(const at::Tensor& q, const at::Tensor& k, const std::array<int64_t, 3>& grid, double weight) {
  const int64_t frames = grid[0], positions = grid[1] * grid[2];
  const int64_t heads = q.size(1), head_dim = q.size(2);
  auto per_position = [&](const at::Tensor& u) {  // [T*S, H, D] -> [S, H, T, D]
    return u.narrow(0, 0, frames * positions).to(at::kFloat).view({frames, positions, heads, head_dim}).permute({1, 2, 0, 3});
  };
  const at::Tensor attn =
      at::matmul(per_position(q) * (1.0 / std::sqrt(static_cast<double>(head_dim))), per_position(k).transpose(-2, -1))
          .softmax(-1);  // [S, H, T, T]
  const at::Tensor off_diagonal = attn.masked_fill(at::eye(frames, attn.options().dtype(at::kBool)), 0.0);
  const double mean = (off_diagonal.sum({2, 3}) / static_cast<double>(frames * frames - frames)).mean().item<double>();
  return std::max(1.0, mean * (static_cast<double>(frames) + weight));
}

// x: [B, L, dim] -> [B, L, dim]. RMS-normalised q and k, 3D RoPE, keys past each sample's
// real length masked (the official k_lens=seq_lens).
at::Tensor WanDit::self_attention(const Attention& a, at::Tensor x, const at::Tensor& seq_lens,
                                  const std::vector<std::array<int64_t, 3>>& grids, const ops::RopeTable& rope,
                                  const ops::RopeAngles& angles, std::optional<double> feta_weight,
                                  const LoraStrengths& lora) const {
  const auto compute = options_.compute;  // float32 on the CPU, where attention computes in float32 anyway
  // One copy of the input in the compute dtype serves the three projections (on the CPU it is x).
  at::Tensor in = x.to(compute);
  x.reset();
  at::Tensor q, k;
  if (options_.compile && config_.qk_norm && !feta_weight) {
    // Compiled: q and k normalised and rotated by one fused kernel each (on a GPU; elsewhere
    // undefined, and the eager ops below run).
    auto fused = [&](const Linear& l, const ops::Weight& norm) {
      return ops::norm_rope_fused(project(l, in, lora), norm.get(at::kFloat), config_.eps, config_.head_dim(), &grids,
                                  rope, compute);
    };
    q = fused(a.q, a.norm_q);
    if (q.defined()) k = fused(a.k, a.norm_k);
    if (!k.defined()) q.reset();
  }
  const bool eager = !q.defined();
  if (eager) {
    q = apply(a.q, in, lora);
    k = apply(a.k, in, lora);
  }
  at::Tensor v = heads(project(a.v, in, lora));
  in.reset();
  std::vector<double> gains;
  if (eager) {
    if (config_.qk_norm) {
      q = ops::rms_norm(q, a.norm_q.get(at::kFloat), config_.eps);
      k = ops::rms_norm(k, a.norm_k.get(at::kFloat), config_.eps);
    }
    if (feta_weight) {
      for (size_t i = 0; i < grids.size(); ++i)
        gains.push_back(grids[i][0] > 1 ? feta_gain(heads(q)[i], heads(k)[i], grids[i], *feta_weight) : 1.0);
    }
    // RoPE in float32, then each goes to the compute dtype before the next is rotated.
    q = ops::rope_apply(heads(q), grids, rope, &angles).to(compute);
    k = ops::rope_apply(heads(k), grids, rope, &angles).to(compute);
  } else {
    q = heads(q);
    k = heads(k);
  }
  at::Tensor out = ops::attention(q, k, v, options_.attention, seq_lens);  // [B, L, H, D], compute dtype
  q.reset();
  k.reset();
  v.reset();
  if (!gains.empty())
    out = out.to(at::kFloat) * at::tensor(gains, at::kDouble).to(out.device(), at::kFloat).view({-1, 1, 1, 1});
  return project(a.o, out.flatten(2), lora);
}

// x: [B, L, dim], context: [B, text_len, dim], context_img: [B, 257|514, dim] or undefined.
at::Tensor WanDit::cross_attention(const Attention& a, at::Tensor x, const at::Tensor& context,
                                   const at::Tensor& context_img, const LoraStrengths& lora, const NagGuidance* nag,
                                   std::pair<at::Tensor, at::Tensor>* nag_parts) const {
  const auto compute = options_.compute;
  at::Tensor q;
  if (options_.compile && config_.qk_norm)  // compiled: the fused kernel normalises q alone, no RoPE
    q = ops::norm_rope_fused(project(a.q, x, lora), a.norm_q.get(at::kFloat), config_.eps, config_.head_dim(), nullptr,
                             rope_, compute);
  const bool eager = !q.defined();
  if (eager) q = apply(a.q, x, lora);
  at::Tensor k = apply(a.k, context, lora);
  x.reset();
  if (config_.qk_norm) {
    if (eager) q = ops::rms_norm(q, a.norm_q.get(at::kFloat), config_.eps);
    k = ops::rms_norm(k, a.norm_k.get(at::kFloat), config_.eps);
  }
  q = heads(q).to(compute);
  const at::Tensor v = heads(apply(a.v, context, lora)).to(compute);
  // In the compute dtype: the output projection takes it so (a round trip through float32 would
  // give the same bits for one more pass each way).
  at::Tensor out = ops::attention(q, heads(k).to(compute), v, options_.attention);
  if (nag) {
    // NAG: the same queries towards the NAG context with the same k/v weights, then the guided
    // combination per token over the whole width (all heads), in float32.
    at::Tensor k_nag = apply(a.k, nag->context, lora);
    if (config_.qk_norm) k_nag = ops::rms_norm(k_nag, a.norm_k.get(at::kFloat), config_.eps);
    const at::Tensor v_nag = heads(apply(a.v, nag->context, lora)).to(compute);
    const at::Tensor positive = out.flatten(2).to(at::kFloat);
    const at::Tensor negative = ops::attention(q, heads(k_nag).to(compute), v_nag, options_.attention).flatten(2).to(at::kFloat);
    if (nag_parts) *nag_parts = {positive, negative};
    at::Tensor guided = positive * nag->scale - negative * (nag->scale - 1);
    const at::Tensor norm_positive = positive.abs().sum(-1, true), norm_guided = guided.abs().sum(-1, true);
    // Where the guided output grew by more than tau (a 0/0 counts as 10, as the method's code),
    // it is scaled back to tau times the positive one's norm.
    const at::Tensor ratio = at::nan_to_num(norm_guided / norm_positive, 10.0);
    guided = at::where(ratio > nag->tau, guided * (norm_positive * nag->tau / (norm_guided + 1e-7)), guided);
    out = (guided * nag->alpha + positive * (1 - nag->alpha)).view(out.sizes()).to(compute);
  }
  if (context_img.defined()) {  // WanI2VCrossAttention: image tokens have their own k/v
    at::Tensor k_img = apply(a.k_img, context_img, lora);
    if (config_.qk_norm) k_img = ops::rms_norm(k_img, a.norm_k_img.get(at::kFloat), config_.eps);
    const at::Tensor v_img = heads(apply(a.v_img, context_img, lora)).to(compute);
    // Summed in float32 (the text attention's output widens exactly in the add).
    out = ops::attention(q, heads(k_img).to(compute), v_img, options_.attention).to(at::kFloat) + out;
  }
  return project(a.o, out.flatten(2), lora);
}

// x: [B, L, dim], e0: [B, 6, dim] -> [B, L, dim]. Modulation and gating in float32.
//
// Written for the fewest live [B, L, dim] tensors: each intermediate is dropped when its last
// use is done (temporaries of one C++ statement live until it ends, so the stages are
// separate statements). The largest moments are the FFN (the residual, ffn.0's input and its
// output, ffn_dim wide in the compute dtype, GELU applied in place) and self-attention at RoPE
// (the residual, q, k, v and RoPE's output); ditActivationBytesPerElement in
// lib/memory-planner.ts counts both, and test/native/memory-stats.test.ts holds this to it.
at::Tensor WanDit::block_forward(const Block& b, int index, at::Tensor x, const at::Tensor& e0,
                                 const at::Tensor& seq_lens, const std::vector<std::array<int64_t, 3>>& grids,
                                 const ops::RopeTable& rope, const ops::RopeAngles& angles,
                                 const at::Tensor& context, const at::Tensor& context_img,
                                 std::optional<double> feta_weight, const LoraStrengths& lora, Trace* trace,
                                 const NagGuidance* nag) const {
  const std::string name = "block" + std::to_string(index);
  const auto e = (b.modulation.get(at::kFloat) + e0).chunk(6, 1);  // 6 x [B, 1, dim]
  // y, each stage's output, comes in the compute dtype; the trace keeps it in float32.
  auto record = [&](const char* what, const at::Tensor& t) {
    if (trace) (*trace)[name + what] = t.to(at::kFloat);
  };
  at::Tensor y = self_attention(b.self_attn, modulated(x, e[1], e[0]), seq_lens, grids, rope, angles, feta_weight, lora);
  record("_self_attn_out", y);
  x = residual(x, y, e[2]);
  y.reset();
  std::pair<at::Tensor, at::Tensor> nag_parts;
  y = cross_attention(b.cross_attn,
                      config_.cross_attn_norm
                          ? ops::layer_norm(x, b.norm3_weight.get(at::kFloat), b.norm3_bias.get(at::kFloat), config_.eps)
                          : x,
                      context, context_img, lora, nag, trace && nag ? &nag_parts : nullptr);
  if (nag_parts.first.defined()) {
    record("_cross_attn_text", nag_parts.first);
    record("_cross_attn_nag", nag_parts.second);
  }
  record("_cross_attn_out", y);
  x = x + y;
  y.reset();
  {
    // Separate statements, so that ffn.0's input is freed before ffn.2 runs.
    at::Tensor hidden = project_gelu(b.ffn0, modulated(x, e[4], e[3]), lora);
    y = project(b.ffn2, hidden, lora);
  }
  record("_ffn_out", y);
  x = residual(x, y, e[5]);
  record("_out", x);
  return x;
}

template <typename F>
void WanDit::for_each_weight(Block& b, F&& f) {
  auto linear = [&f](Linear& l) {
    f(l.weight);
    f(l.bias);
    for (LoraAdapter& a : l.loras) {
      f(a.down);
      f(a.up);
    }
  };
  for (Attention* a : {&b.self_attn, &b.cross_attn}) {
    for (Linear* l : {&a->q, &a->k, &a->v, &a->o, &a->k_img, &a->v_img}) linear(*l);
    for (ops::Weight* w : {&a->norm_q, &a->norm_k, &a->norm_k_img}) f(*w);
  }
  linear(b.ffn0);
  linear(b.ffn2);
  for (ops::Weight* w : {&b.norm3_weight, &b.norm3_bias, &b.modulation}) f(*w);
}

WanDit::Block WanDit::widened_block(int64_t index) const {
  Block b = blocks_[index];
  for_each_weight(b, [](ops::Weight& w) {
    if (w.needs_widening()) w = ops::Weight{core::Tensor{w.get(at::kFloat), core::DType::F32}, {}};
  });
  return b;
}

std::function<WanDit::Block()> WanDit::widened_block_job(int64_t index) const {
  Block b = blocks_[index];
  std::vector<at::Tensor> outs;
  for_each_weight(b, [&outs](ops::Weight& w) {
    if (w.needs_widening()) outs.push_back(at::empty(w.stored.value.sizes(), at::TensorOptions().dtype(at::kFloat)));
  });
  return [b, outs]() mutable {
    size_t k = 0;
    for_each_weight(b, [&](ops::Weight& w) {
      if (w.needs_widening()) w = w.widened_into(outs[k++]);
    });
    return b;
  };
}

void WanDit::place_blocks() const {
  if (placed_swap_ == options_.blocks_to_swap) return;
  release_graph();  // it reads the placed weights
  placed_.clear();  // the old copies go before the new ones are made, so that both never coexist
  placed_swap_ = -1;
  const int64_t layers = static_cast<int64_t>(blocks_.size());
  const int64_t first_swapped = layers - options_.blocks_to_swap;
  const bool cuda = options_.device.is_cuda();
  for (int64_t i = 0; i < layers; ++i) {
    Block b = blocks_[i];
    const bool swapped = i >= first_swapped;
    for_each_weight(b, [&](ops::Weight& w) {
      if (w.defined()) w = swapped ? w.to(at::kCPU, /*pinned=*/cuda) : w.to(options_.device);
    });
    placed_.push_back(std::move(b));
  }
  placed_swap_ = options_.blocks_to_swap;
}

// What the blocks of one forward read, besides their weights.
struct WanDit::BlockInputs {
  const at::Tensor& x;
  const at::Tensor& e0;
  const at::Tensor& seq_lens;
  const std::vector<std::array<int64_t, 3>>& grids;
  const ops::RopeTable& rope;
  const ops::RopeAngles& angles;
  const at::Tensor& context;
  const at::Tensor& context_img;
  const LoraStrengths& lora;
  ops::Riflex riflex;
};

// The blocks captured as one CUDA graph, with the tensors it reads and writes at fixed addresses:
// each replay reads x, e0 and the contexts (copied in first) and writes out.
struct WanDit::CapturedBlocks {
#ifdef WAN_WITH_CUDA
  at::cuda::CUDAGraph graph;
#endif
  at::Tensor x, e0, context, context_img, seq_lens, out;
  ops::RopeTable rope;  // what the fused kernels read, kept for the replays
  ops::RopeAngles angles;
};

GraphStats WanDit::graph_stats() const {
  const std::lock_guard<std::mutex> lock(graph_stats_mutex_);
  return graph_stats_;
}

std::vector<BlockCacheReport> WanDit::block_cache_report() const {
  const std::lock_guard<std::mutex> lock(block_cache_mutex_);
  std::vector<BlockCacheReport> out;
  for (const auto& [stream, state] : block_cache_) out.push_back({stream, state.skipped_steps});
  return out;
}

void WanDit::clear_block_cache() const {
  const std::lock_guard<std::mutex> lock(block_cache_mutex_);
  block_cache_.clear();
}

namespace {
// mean |a - b| (b undefined: mean |a|), in float32 as the wrapper's tensors.
double mean_abs(const at::Tensor& a, const at::Tensor& b = {}) {
  return (b.defined() ? (a - b) : a).abs().mean().item<double>();
}
}  // namespace

bool WanDit::reuse_residual(BlockCacheState& state, const BlockCacheCall& call, const at::Tensor& x,
                            const at::Tensor& embedding) const {
  switch (call.method) {
    case BlockCacheMethod::TeaCache: {
      // The relative L1 change of the time embedding since the last computed call, rescaled by
      // the model's polynomial, accumulated (in float32, as the wrapper's tensor).
      const double change = mean_abs(embedding, state.embedding) / mean_abs(state.embedding);
      double rescaled = change;
      if (!call.coefficients.empty()) {
        rescaled = 0.0;
        for (const double k : call.coefficients) rescaled = rescaled * change + k;  // np.poly1d, highest power first
      }
      state.accumulated = state.accumulated + static_cast<float>(rescaled);
      if (state.accumulated < static_cast<float>(call.threshold)) return true;
      state.accumulated = 0.0f;
      return false;
    }
    case BlockCacheMethod::MagCache: {
      // MagCache: the output's magnitude changes by a calibrated ratio each step; skipping k steps
      // errs by |1 - the product of their ratios|, summed over the calls skipped in a row.
      state.ratio *= call.magnitude_ratio;
      state.error += std::abs(1.0 - state.ratio);
      state.skips += 1;
      if (state.error < call.threshold && state.skips <= call.max_skips) return true;
      state.ratio = 1.0;
      state.error = 0.0;
      state.skips = 0;
      return false;
    }
    case BlockCacheMethod::EasyCache: {
      // EasyCache: the output changes k times as much as the input (k measured between the last
      // two computed calls); the predicted relative change of the output, summed over the calls
      // since the last computed one.
      if (state.k <= 0.0 || state.output_norm <= 0.0) return false;
      const double input_change = mean_abs(x.to(state.previous_input.device()), state.previous_input);
      state.easy_error += state.k * input_change / state.output_norm;
      if (state.easy_error < call.threshold) return true;
      state.easy_error = 0.0;
      return false;
    }
  }
  return false;
}

void WanDit::release_graph() const {
  captured_.reset();
  graph_key_.clear();
}

namespace {

#ifdef WAN_WITH_CUDA
// Everything a captured graph bakes in besides the weights: the inputs' shapes, the grids, the
// unmerged LoRAs' strengths (factors of the captured products), the attention mode and RIFLEx
// (the angles).
std::string graph_key(const std::vector<double>& lora, at::IntArrayRef x, at::IntArrayRef context,
                      const at::Tensor& context_img, const std::vector<std::array<int64_t, 3>>& grids,
                      const char* attention, const ops::Riflex& riflex) {
  std::string key = "riflex " + std::to_string(riflex.index) + "/" + std::to_string(riflex.latent_frames) + ";";
  auto sizes = [&](at::IntArrayRef s) {
    for (const int64_t d : s) key += std::to_string(d) + ",";
    key += ";";
  };
  sizes(x);
  sizes(context);
  if (context_img.defined()) sizes(context_img.sizes());
  for (const auto& g : grids) key += std::to_string(g[0]) + "x" + std::to_string(g[1]) + "x" + std::to_string(g[2]) + ";";
  for (const double strength : lora) {
    char exact[40];
    std::snprintf(exact, sizeof exact, "%a,", strength);
    key += exact;
  }
  return key + attention;
}

// After a capture failed part way: ends the stream's capture if it is still on, and clears the
// (not sticky) error it left, so that the stream and the device work on as before.
void abandon_capture(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) == cudaSuccess && status != cudaStreamCaptureStatusNone) {
    cudaGraph_t partial = nullptr;
    if (cudaStreamEndCapture(stream, &partial) == cudaSuccess && partial) cudaGraphDestroy(partial);
  }
  (void)cudaGetLastError();
}
#endif

}  // namespace

at::Tensor WanDit::replay_blocks(const BlockInputs& in) const {
#ifdef WAN_WITH_CUDA
  auto count = [this](int64_t GraphStats::*counter) {
    const std::lock_guard<std::mutex> lock(graph_stats_mutex_);
    ++(graph_stats_.*counter);
  };
  {
    const std::lock_guard<std::mutex> lock(graph_stats_mutex_);
    if (!graph_stats_.failure.empty()) return {};
  }
  if (placed_swap_ != 0 || options_.attention == ops::AttentionMode::Sage) return {};
  const std::string key = graph_key(in.lora, in.x.sizes(), in.context.sizes(), in.context_img, in.grids,
                                    ops::attention_mode_name(options_.attention), in.riflex);
  if (captured_ && key == graph_key_) {
    CapturedBlocks& c = *captured_;
    c.x.copy_(in.x);
    c.e0.copy_(in.e0);
    c.context.copy_(in.context);
    if (in.context_img.defined()) c.context_img.copy_(in.context_img);
    c.graph.replay();
    count(&GraphStats::replays);
    return c.out;
  }
  if (key != graph_key_) {  // new shapes: this forward runs the blocks as they are (the warm-up)
    release_graph();
    graph_key_ = key;
    return {};
  }
  // The second forward in a row with these shapes: capture on a side stream (the default stream
  // cannot be captured), then replay on the current one. Nothing runs while capturing.
  auto c = std::make_shared<CapturedBlocks>();
  c->x = in.x.clone();
  c->e0 = in.e0.clone();
  c->context = in.context.clone();
  if (in.context_img.defined()) c->context_img = in.context_img.clone();
  c->seq_lens = in.seq_lens;
  c->rope = in.rope;
  c->angles = in.angles;
  const int device = options_.device.index();
  const c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream(device);
  const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, device);
  // The side stream starts after the inputs' copies on the current one (as torch.cuda.graph does).
  cudaEvent_t inputs_copied = nullptr;
  C10_CUDA_CHECK(cudaEventCreateWithFlags(&inputs_copied, cudaEventDisableTiming));
  C10_CUDA_CHECK(cudaEventRecord(inputs_copied, current.stream()));
  C10_CUDA_CHECK(cudaStreamWaitEvent(side.stream(), inputs_copied, 0));
  C10_CUDA_CHECK(cudaEventDestroy(inputs_copied));  // released once the wait is done
  try {
    const c10::cuda::CUDAStreamGuard on_side(side);
    // Thread-local where libtorch lets us choose: other threads' CUDA calls (another Node
    // worker's engine) then neither break this capture nor fail because of it.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
    c->graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
#else
    c->graph.capture_begin();
#endif
    at::Tensor h = c->x;
    for (size_t i = 0; i < placed_.size(); ++i)
      h = block_forward(placed_[i], static_cast<int>(i), std::move(h), c->e0, c->seq_lens, in.grids, c->rope, c->angles,
                        c->context, c->context_img, std::nullopt, in.lora, nullptr);
    c->out = h;
    c->graph.capture_end();
  } catch (const std::exception& e) {
    // Something in the blocks needed the host after all. The memory the capture took from the
    // allocator stays with it; the model runs its blocks as they are from now on.
    abandon_capture(side.stream());
    {
      const std::lock_guard<std::mutex> lock(graph_stats_mutex_);
      graph_stats_.failure = e.what();
    }
    std::fprintf(stderr, "wan-native: cudaGraphs: capturing the DiT blocks failed; they run without a graph: %s\n",
                 e.what());
    return {};
  }
  captured_ = c;
  count(&GraphStats::captures);
  c->graph.replay();
  count(&GraphStats::replays);
  return c->out;
#else
  (void)in;
  return {};
#endif
}

template <typename Run>
void WanDit::run_blocks_on_device(Run&& run) const {
  const int64_t layers = static_cast<int64_t>(placed_.size());
  const int64_t first_swapped = layers - placed_swap_;  // as placed, whatever setBlockSwap did since
  for (int64_t i = 0; i < first_swapped; ++i) run(placed_[i], i);
  if (first_swapped == layers) return;
  const at::Device device = options_.device;
  // Pairs of (device weight, host weight) of one block, in for_each_weight's order.
  auto weights_of = [](Block& b) {
    std::vector<ops::Weight*> out;
    for_each_weight(b, [&](ops::Weight& w) { out.push_back(&w); });
    return out;
  };
  runtime::DeviceSwap<Block> swap(
      device, first_swapped, layers, options_.prefetch_blocks,
      [&](int64_t i) {
        const auto on_device = [&](const at::Tensor& t) {
          return at::empty_like(t, t.options().device(device).pinned_memory(false));
        };
        Block b = placed_[i];
        for (ops::Weight* w : weights_of(b)) {
          if (!w->defined()) continue;
          w->stored.value = on_device(w->stored.value);
          if (w->scale.defined()) w->scale = on_device(w->scale);
        }
        return b;
      },
      [&](Block& b, int64_t i) {
        Block& host = placed_[i];
        const auto to = weights_of(b), from = weights_of(host);
        for (size_t k = 0; k < to.size(); ++k) {
          if (!to[k]->defined()) continue;
          to[k]->stored.value.copy_(from[k]->stored.value, /*non_blocking=*/true);
          if (to[k]->scale.defined()) to[k]->scale.copy_(from[k]->scale, /*non_blocking=*/true);
        }
      });
  for (int64_t i = first_swapped; i < layers; ++i) run(swap.take(i), i);
}

void WanDit::set_block_swap(int blocks, int prefetch) {
  const int layers = static_cast<int>(blocks_.size());
  if (blocks < 0 || blocks > layers)
    throw Error(ErrorCode::InvalidOption, "blocksToSwap: expected 0.." + std::to_string(layers) +
                                              " (the model's blocks) but received " + std::to_string(blocks));
  if (prefetch < 0)
    throw Error(ErrorCode::InvalidOption, "prefetchBlocks: expected a non-negative integer but received " +
                                              std::to_string(prefetch));
  options_.blocks_to_swap = blocks;
  options_.prefetch_blocks = prefetch;
}

std::vector<at::Tensor> WanDit::forward(const WanDitInput& in, const std::function<bool()>& cancelled,
                                        Trace* trace) const {
  const auto& c = config_;
  const int64_t batch = static_cast<int64_t>(in.x.size());
  check(batch > 0, "forward: x must hold at least one sample");
  check(in.t.defined() && in.t.numel() == batch,
        "forward: t must hold one timestep per sample (" + std::to_string(batch) + ")");
  check(static_cast<int64_t>(in.context.size()) == batch,
        "forward: context must hold one tensor per sample (" + std::to_string(batch) + ")");
  if (c.has_image_input()) {
    check(in.clip_fea.defined() && static_cast<int64_t>(in.y.size()) == batch,
          "forward: a " + c.model_type + " model needs clipFea and one y per sample");
  }

  const LoraStrengths& lora = in.lora_strengths.empty() ? lora_strengths_ : in.lora_strengths;
  check(lora.size() == lora_strengths_.size(), "forward: loraStrengths must hold one strength per LoRA given at load (" +
                                                   std::to_string(lora_strengths_.size()) + "), got " +
                                                   std::to_string(lora.size()));

  // Inputs come to the model's device; the outputs (and the trace) go back to the CPU.
  const at::Device device = options_.device;
  auto here = [&](const at::Tensor& t) { return t.defined() ? t.to(device) : t; };
  residency_.place(true);
  // The embeddings block swap keeps on the CPU come to the device for this forward alone.
  auto bring = [&](const ops::Weight& w) { return w.to(device); };
  auto bring_linear = [&](const Linear& l) {
    Linear out{bring(l.weight), bring(l.bias), l.loras};
    for (LoraAdapter& a : out.loras) {
      a.down = bring(a.down);
      a.up = bring(a.up);
    }
    return out;
  };

  // Patch embedding: per sample [C_in, F, H, W] -> [1, dim, F', H', W'] -> [1, L_i, dim].
  const at::Tensor pw = patch_embedding_weight_.get(options_.compute);
  const at::Tensor pb = patch_embedding_bias_.get(options_.compute);
  std::vector<at::Tensor> tokens;
  std::vector<std::array<int64_t, 3>> grids;
  for (int64_t i = 0; i < batch; ++i) {
    at::Tensor u = here(in.x[i]);
    check(u.dim() == 4, "forward: x[" + std::to_string(i) + "] must be [C, F, H, W], got " + shape_text(u.sizes()));
    if (c.has_image_input()) u = at::cat({u, here(in.y[i]).to(u.dtype())}, 0);
    check(u.size(0) == c.in_dim, "forward: x[" + std::to_string(i) + "] (with y) has " + std::to_string(u.size(0)) +
                                     " channels, the model takes " + std::to_string(c.in_dim));
    check(u.size(2) % c.patch[1] == 0 && u.size(3) % c.patch[2] == 0,
          "forward: x[" + std::to_string(i) + "] height and width must be multiples of the patch size 2, got " +
              shape_text(u.sizes()));
    const at::Tensor p = at::conv3d(u.unsqueeze(0).to(options_.compute), pw, pb, c.patch).to(at::kFloat);
    if (trace && i == 0) (*trace)["patch_embedding_out"] = p;
    grids.push_back({p.size(2), p.size(3), p.size(4)});
    tokens.push_back(p.flatten(2).transpose(1, 2));
  }
  std::vector<int64_t> lens;
  for (const auto& tk : tokens) lens.push_back(tk.size(1));
  const at::Tensor seq_lens = at::tensor(lens, at::kLong);
  const int64_t longest = *std::max_element(lens.begin(), lens.end());
  check(longest <= in.seq_len, "forward: seqLen " + std::to_string(in.seq_len) + " is shorter than the " +
                                   std::to_string(longest) + " tokens of the largest sample");
  for (auto& tk : tokens) tk = at::constant_pad_nd(tk, {0, 0, 0, in.seq_len - tk.size(1)});
  at::Tensor x = at::cat(tokens, 0);  // [B, seq_len, dim]
  tokens.clear();

  // Time: [B] -> sinusoid [B, freq_dim] -> e [B, dim] -> e0 [B, 6, dim], all float32.
  const at::Tensor sinusoid = sinusoidal_embedding(c.freq_dim, here(in.t));
  const at::Tensor e = apply(time_embedding2_, at::silu(apply(time_embedding0_, sinusoid, lora)), lora);
  const at::Tensor e0 = apply(time_projection1_, at::silu(e), lora).unflatten(1, {6, c.dim});
  if (trace) {
    (*trace)["sinusoidal_t"] = sinusoid;
    (*trace)["time_embedding_out_e"] = e;
    (*trace)["time_projection_out"] = e0.flatten(1);
  }

  // Text: each [L_i, text_dim] zero-padded to text_len -> [B, text_len, dim].
  std::vector<at::Tensor> padded;
  for (int64_t i = 0; i < batch; ++i) {
    const at::Tensor& u = in.context[i];
    check(u.dim() == 2 && u.size(1) == c.text_dim && u.size(0) <= c.text_len,
          "forward: context[" + std::to_string(i) + "] must be [L <= " + std::to_string(c.text_len) + ", " +
              std::to_string(c.text_dim) + "], got " + shape_text(u.sizes()));
    padded.push_back(at::constant_pad_nd(here(u).to(at::kFloat), {0, 0, 0, c.text_len - u.size(0)}));
  }
  const Linear text0 = options_.offload_txt_emb ? bring_linear(text_embedding0_) : text_embedding0_;
  const Linear text2 = options_.offload_txt_emb ? bring_linear(text_embedding2_) : text_embedding2_;
  const at::Tensor context = apply(text2, at::gelu(apply(text0, at::stack(padded), lora), "tanh"), lora);
  if (trace) (*trace)["text_embedding_out"] = context;
  // NAG's context, embedded as the text is, the same for every sample.
  std::optional<NagGuidance> nag;
  if (in.nag) {
    const at::Tensor& u = in.nag->context;
    check(u.dim() == 2 && u.size(1) == c.text_dim && u.size(0) <= c.text_len,
          "forward: nag.context must be [L <= " + std::to_string(c.text_len) + ", " + std::to_string(c.text_dim) + "], got " +
              shape_text(u.sizes()));
    const at::Tensor nag_padded = at::constant_pad_nd(here(u).to(at::kFloat), {0, 0, 0, c.text_len - u.size(0)}).unsqueeze(0);
    const at::Tensor embedded = apply(text2, at::gelu(apply(text0, nag_padded, lora), "tanh"), lora);
    nag = NagGuidance{embedded.expand({batch, -1, -1}), in.nag->scale, in.nag->tau, in.nag->alpha};
  }

  // CLIP image tokens (MLPProj): [B, 257, 1280] (flf2v: two images per sample, 514 tokens
  // with a learned position embedding) -> [B, 257|514, dim].
  at::Tensor context_img;
  if (c.has_image_input()) {
    at::Tensor f = here(in.clip_fea).to(at::kFloat);
    check(f.dim() == 3 && f.size(2) == 1280, "forward: clipFea must be [N, 257, 1280], got " + shape_text(f.sizes()));
    const bool brought = options_.offload_img_emb;
    auto img = [&](const ops::Weight& w) { return (brought ? bring(w) : w).get(at::kFloat); };
    if (img_emb_pos_.defined()) {
      check(f.numel() == batch * 514 * 1280, "forward: a flf2v model needs clipFea [" + std::to_string(2 * batch) +
                                                 ", 257, 1280] (first and last frame), got " + shape_text(f.sizes()));
      f = f.reshape({batch, 514, 1280}) + img(img_emb_pos_);
    }
    check(f.size(0) == batch, "forward: clipFea must hold one image per sample, got " + shape_text(f.sizes()));
    f = ops::layer_norm(f, img(img_norm0_weight_), img(img_norm0_bias_), 1e-5);
    const Linear proj1 = brought ? bring_linear(img_proj1_) : img_proj1_;
    const Linear proj3 = brought ? bring_linear(img_proj3_) : img_proj3_;
    f = apply(proj3, at::gelu(apply(proj1, f, lora)), lora);  // GELU (erf) here, as nn.GELU()
    context_img = ops::layer_norm(f, img(img_norm4_weight_), img(img_norm4_bias_), 1e-5);
    if (trace) (*trace)["img_emb"] = context_img;
  }

  // RIFLEx changes one frame frequency of the angle table: a table of this forward's own.
  const ops::Riflex riflex{in.riflex_freq_index, in.riflex_latent_frames};
  ops::RopeTable riflex_rope;
  if (riflex.index != 0) {
    riflex_rope = ops::rope_table(c.head_dim(), rope_.cos.size(0), 10000.0, riflex);
    riflex_rope.cos = riflex_rope.cos.to(device);
    riflex_rope.sin = riflex_rope.sin.to(device);
  }
  const ops::RopeTable& rope = riflex.index != 0 ? riflex_rope : rope_;
  // Off the CPU the eager RoPE multiplies by each token's angles: made once here for all the
  // blocks (compiled, the fused kernel reads the table itself; the CPU's loop does too).
  const bool eager_rope = !(options_.compile && c.qk_norm && !in.feta_weight);
  const ops::RopeAngles angles =
      !device.is_cpu() && eager_rope ? ops::rope_angles(grids, in.seq_len, rope, device) : ops::RopeAngles{};
  for (const int64_t b : in.skip_blocks)
    check(b >= 0 && b < c.num_layers, "forward: skipBlocks holds block " + std::to_string(b) + ", the model has blocks 0.." +
                                          std::to_string(c.num_layers - 1));
  const auto skipped = [&](int64_t i) { return std::find(in.skip_blocks.begin(), in.skip_blocks.end(), i) != in.skip_blocks.end(); };
  auto run_block = [&](const Block& block, int64_t i) {
    if (cancelled && cancelled()) throw Error(ErrorCode::Aborted, "the operation was aborted");
    if (skipped(i)) return;  // skip layer guidance: the residual stream passes the block by
    x = block_forward(block, static_cast<int>(i), std::move(x), e0, seq_lens, grids, rope, angles, context, context_img,
                      in.feta_weight, lora, trace, nag ? &*nag : nullptr);
  };
  auto run_blocks = [&] {
    if (!device.is_cpu()) {
      const std::lock_guard<std::mutex> lock(placement_mutex_);
      place_blocks();
      // cuda_graphs: where nothing in the blocks needs the host (the rest is checked with the
      // graph's key in replay_blocks).
      const bool unpadded = std::all_of(lens.begin(), lens.end(), [&](int64_t n) { return n == in.seq_len; });
      at::Tensor replayed;
      if (options_.cuda_graphs && !trace && !in.feta_weight && !nag && unpadded && in.skip_blocks.empty()) {
        if (cancelled && cancelled()) throw Error(ErrorCode::Aborted, "the operation was aborted");
        replayed = replay_blocks(BlockInputs{x, e0, seq_lens, grids, rope, angles, context, context_img, lora, riflex});
      }
      if (replayed.defined()) x = replayed;
      else run_blocks_on_device(run_block);
    } else {
      // The last blocks_to_swap blocks come widened a block at a time (runtime/prefetch.h).
      const int64_t layers = static_cast<int64_t>(blocks_.size());
      const int64_t first_swapped = layers - options_.blocks_to_swap;
      std::optional<runtime::Prefetcher<Block>> swapped;
      if (first_swapped < layers) {
        swapped.emplace(first_swapped, layers, options_.prefetch_blocks,
                        [this](int64_t i) { return widened_block_job(i); },
                        [this](int64_t i) { return widened_block(i); });
      }
      for (int64_t i = 0; i < layers; ++i) {
        if (i < first_swapped) run_block(blocks_[i], i);
        else run_block(swapped->take(i), i);
      }
    }
  };

  // cache_args: where this stream's estimate of what skipping costs stays below the threshold,
  // the blocks are not run: the residual they added at its last computed call is added again
  // (the wrapper's WanModel.forward).
  const BlockCacheCall& cache = in.cache;
  if (cache.stream < 0) {
    run_blocks();
  } else {
    const at::Device keep_on = cache.on_main ? device : at::Device(at::kCPU);
    const bool tea = cache.method == BlockCacheMethod::TeaCache, easy = cache.method == BlockCacheMethod::EasyCache;
    const at::Tensor embedding = tea ? (!cache.coefficients.empty() && !cache.mode_e0 ? e : e0).to(keep_on).clone() : at::Tensor();
    BlockCacheState state;
    bool fresh = true;
    {
      const std::lock_guard<std::mutex> lock(block_cache_mutex_);
      if (const auto it = block_cache_.find(cache.stream); it != block_cache_.end()) {
        state = it->second;
        // A stream whose shapes changed starts again.
        fresh = !state.residual.defined() || state.residual.sizes() != x.sizes() ||
                (tea && state.embedding.sizes() != embedding.sizes());
      }
    }
    if (fresh) state = BlockCacheState{{}, state.skipped_steps};  // its first call: computed
    const bool reuse = !fresh && reuse_residual(state, cache, x, embedding);
    const auto kept = [&](const at::Tensor& t) { return t.device() == keep_on ? t.clone() : t.to(keep_on); };
    const at::Tensor input = (reuse && !easy) ? at::Tensor() : kept(x);
    if (reuse) {
      x = x + state.residual.to(device);
      state.skipped_steps.push_back(cache.step);
    } else {
      run_blocks();
      const at::Tensor output = kept(x);
      state.residual = output - input;
      if (tea) state.embedding = embedding;
      if (easy) {
        if (state.computed_input.defined())
          state.k = mean_abs(output, state.computed_output) / std::max(mean_abs(input, state.computed_input), 1e-12);
        state.computed_input = input;
        state.computed_output = output;
        state.output_norm = mean_abs(output);
      }
    }
    if (easy) state.previous_input = input;
    const std::lock_guard<std::mutex> lock(block_cache_mutex_);
    block_cache_[cache.stream] = std::move(state);
  }

  if (trace) (*trace)["blocks_out"] = x;
  // Head: modulated LayerNorm and projection to patch pixels [B, L, out_dim * 4].
  const auto he = (head_modulation_.get(at::kFloat) + e.unsqueeze(1)).chunk(2, 1);
  x = apply(head_, modulated(x, he[1], he[0]), lora);
  if (trace) (*trace)["head_out"] = x;

  // Unpatchify: [L, (pt ph pw c)] of each sample -> [c, F pt, H ph, W pw].
  std::vector<at::Tensor> out;
  for (int64_t i = 0; i < batch; ++i) {
    const auto& g = grids[i];
    at::Tensor u = x[i].narrow(0, 0, g[0] * g[1] * g[2]);
    u = u.view({g[0], g[1], g[2], c.patch[0], c.patch[1], c.patch[2], c.out_dim});
    u = u.permute({6, 0, 3, 1, 4, 2, 5});  // fhwpqrc -> cfphqwr
    out.push_back(u.reshape({c.out_dim, g[0] * c.patch[0], g[1] * c.patch[1], g[2] * c.patch[2]})
                      .to(at::kCPU)
                      .contiguous());
  }
  if (trace && !device.is_cpu())
    for (auto& [name, value] : *trace) value = value.to(at::kCPU);
  return out;
}

WanDitConfig infer_wan_dit_config(const std::map<std::string, std::vector<int64_t>>& shapes,
                                  const WanDitOverrides& overrides, const std::string& source) {
  auto shape = [&](const std::string& key) -> const std::vector<int64_t>& {
    auto it = shapes.find(key);
    if (it == shapes.end())
      throw core::bad_checkpoint(source, "not a Wan2.1 DiT: no tensor '" + key + "' to infer the configuration from");
    return it->second;
  };
  WanDitConfig c;
  const auto& patch = shape("patch_embedding.weight");  // [dim, in_dim, pt, ph, pw]
  if (patch.size() != 5) throw core::bad_checkpoint(source, "patch_embedding.weight must be 5-D");
  c.dim = patch[0];
  c.in_dim = patch[1];
  c.patch = {patch[2], patch[3], patch[4]};
  c.ffn_dim = shape("blocks.0.ffn.0.weight")[0];
  c.freq_dim = shape("time_embedding.0.weight")[1];
  c.text_dim = shape("text_embedding.0.weight")[1];
  c.out_dim = shape("head.head.weight")[0] / (c.patch[0] * c.patch[1] * c.patch[2]);
  while (shapes.count("blocks." + std::to_string(c.num_layers) + ".modulation")) ++c.num_layers;
  c.qk_norm = shapes.count("blocks.0.self_attn.norm_q.weight") > 0;
  c.cross_attn_norm = shapes.count("blocks.0.norm3.weight") > 0;
  c.model_type = shapes.count("img_emb.emb_pos") ? "flf2v" : shapes.count("img_emb.proj.0.weight") ? "i2v" : "t2v";
  if (overrides.num_heads > 0) {
    c.num_heads = overrides.num_heads;
  } else if (c.dim % 128 == 0) {
    c.num_heads = c.dim / 128;  // head dim 128 in every release
  } else {
    throw Error(ErrorCode::InvalidOption, source + ": numHeads cannot be inferred for dim " + std::to_string(c.dim) +
                                              " (releases use head dim 128); pass numHeads");
  }
  if (c.dim % c.num_heads != 0 || (c.dim / c.num_heads) % 2 != 0)
    throw Error(ErrorCode::InvalidOption, "numHeads: " + std::to_string(c.num_heads) + " does not divide dim " +
                                              std::to_string(c.dim) + " into even head dims");
  c.text_len = overrides.text_len > 0 ? overrides.text_len : 512;
  return c;
}

std::shared_ptr<WanDit> load_wan_dit(const std::vector<std::string>& files, const WanDitOverrides& overrides,
                                     const WanDitOptions& options, bool populate,
                                     const std::function<bool()>& cancelled) {
  LoadedWeights loaded = load_weights(files, populate, cancelled);
  if (options.fp8_matmul && !loaded.no_fp8_matmul.empty()) {
    const std::string storage = ops::quantization_name(options.quantization);
    throw Error(ErrorCode::InvalidOption,
                "quantization '" + storage + "_fast': " + loaded.no_fp8_matmul.front() +
                    " says its fp8 weights must not be multiplied in fp8 (its scaled_fp8 marker has 2 elements, "
                    "which ComfyUI reads as fp8 matmuls disabled); use '" + storage + "' (fp8 storage)");
  }
  WanDitConfig config = infer_wan_dit_config(loaded.shapes, overrides, files_text(files));
  // Before quantizing: merged updates go into the file's values; unmerged ones stay float32.
  LoraAdapters adapters;
  if (overrides.merge_loras) merge_loras(loaded.weights, overrides.loras, cancelled);
  else adapters = split_loras(loaded.weights, overrides.loras, cancelled);
  ops::quantize_weights(loaded.weights, options.quantization, cancelled);
  std::vector<double> strengths;
  for (const LoraSpec& l : overrides.loras) strengths.push_back(l.strength);
  return std::make_shared<WanDit>(config, std::move(loaded.weights), options, files_text(files), std::move(adapters),
                                  std::move(strengths));
}

}  // namespace wan::models
