// The Wan2.1 diffusion transformer (wan/modules/model.py, WanModel): T2V, I2V and FLF2V.
// Config from shapes, then the blocks bottom-up, then the model; module names follow the
// checkpoint keys (`blocks.N.self_attn.q`, `ffn.0`; ffn.1 is GELU(tanh)).
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "models/lora.h"
#include "ops/attention.h"
#include "ops/fp8_matmul.h"
#include "ops/linear.h"
#include "ops/quantize.h"
#include "ops/rope.h"
#include "runtime/residency.h"

namespace wan::models {

struct WanDitConfig {
  std::string model_type = "t2v";  // "t2v" | "i2v" | "flf2v"
  int64_t dim = 0, ffn_dim = 0, freq_dim = 256, text_dim = 4096, in_dim = 16, out_dim = 16;
  int64_t num_heads = 0, num_layers = 0;
  int64_t text_len = 512;  // text contexts are zero-padded to this many tokens
  std::array<int64_t, 3> patch{1, 2, 2};
  bool qk_norm = true, cross_attn_norm = true;
  double eps = 1e-6;

  int64_t head_dim() const { return dim / num_heads; }
  bool has_image_input() const { return model_type == "i2v" || model_type == "flf2v"; }
};

struct WanDitOptions {
  // Where the model computes (the wrapper's main_device). Weights that are not swapped live
  // there in their storage dtype; inputs are copied there and outputs back to the CPU.
  at::Device device = at::kCPU;
  at::ScalarType compute = at::kFloat;  // matmul and attention dtype; modulation and norms stay float32
  ops::AttentionMode attention = ops::AttentionMode::Sdpa;
  ops::Quantization quantization = ops::Quantization::Disabled;  // weight storage chosen at load
  // 'fp8_e4m3fn_fast': linears with e4m3fn weights multiply in fp8 on the GPU (ops/fp8_matmul.h).
  bool fp8_matmul = false;
  // Block swap (the wrapper's block_swap_args). On the CPU the last `blocks_to_swap` blocks are
  // widened to float32 a whole block at a time just before use, `prefetch_blocks` of them ahead
  // on worker threads while the current block computes; the others widen each weight as it is
  // used. Either way the output is bitwise the same. On a GPU the swapped blocks stay in
  // page-locked CPU memory and are copied over just in time, `prefetch_blocks` ahead on a side
  // stream (runtime/device_swap.h).
  int blocks_to_swap = 0;
  int prefetch_blocks = 0;
  // Off the CPU, block swap's offload_txt_emb / offload_img_emb: text_embedding / img_emb stay on
  // the CPU and come to the device for each forward alone.
  bool offload_txt_emb = false, offload_img_emb = false;
  // Whether the weights go to the device at load, or at the first forward (the wrapper's
  // load_device main_device / offload_device; runtime/residency.h).
  bool load_on_main = true;
  // The wrapper's compile_args: on a GPU, the elementwise chains run as fused kernels
  // (ops::norm_rope_fused, ops/adaln.h, ops::linear_gelu_fused). On the CPU it changes nothing.
  bool compile = false;
  // torch.compile's 'reduce-overhead' (CUDA graphs): on a GPU, the blocks of a forward are
  // captured as one CUDA graph once two forwards in a row have the same shapes, and replayed
  // while they keep them. Only where nothing in the blocks needs the host: no block swap, no
  // Enhance-A-Video, no skipped blocks, no trace, no padding, attention other than sageattn; elsewhere, and if a
  // capture fails, the blocks run as they are.
  bool cuda_graphs = false;
};

// What cuda_graphs did: graphs captured, forwards that replayed one, and why capturing failed
// ("" if it has not), after which the model runs its blocks as they are.
struct GraphStats {
  int64_t captures = 0, replays = 0;
  std::string failure;
};

// The wrapper's cache_args: a call may skip the transformer blocks, adding again the residual
// they added the last time they ran for its stream (cond, uncond, each context window's own).
// The methods differ in how they decide. Each stream's state lives in the model until
// clear_block_cache().
enum class BlockCacheMethod { TeaCache, MagCache, EasyCache };

struct BlockCacheCall {
  BlockCacheMethod method = BlockCacheMethod::TeaCache;
  int64_t stream = -1;  // -1: off
  int64_t step = 0;     // the step, recorded when skipped
  // The blocks are skipped while the accumulated estimate of the error stays below it.
  double threshold = 0.3;
  bool on_main = false;  // the residual kept on the main device (cache_device main_device)
  // TeaCache: with coefficients (highest power first, np.poly1d's order) the relative L1 change
  // of the time embedding e (mode e0: e0) goes through this polynomial before it is accumulated;
  // without, the change of e0 itself.
  std::vector<double> coefficients;
  bool mode_e0 = false;
  // MagCache: this step's calibrated ratio of output to previous output magnitude for the
  // stream's prediction (the sampler interpolates the model's table), and how many calls in a
  // row may be skipped.
  double magnitude_ratio = 1.0;
  int64_t max_skips = 4;
};

struct BlockCacheReport {
  int64_t stream;
  std::vector<int64_t> skipped_steps;
};

struct WanDitInput {
  std::vector<at::Tensor> x;        // per sample [C_in, F, H, W] (latent grid)
  at::Tensor t;                     // [B] timesteps in [0, 1000]
  std::vector<at::Tensor> context;  // per sample [L_i, text_dim], L_i <= text_len
  int64_t seq_len = 0;              // tokens every sample is padded to
  at::Tensor clip_fea;              // i2v [B, 257, 1280]; flf2v [2B, 257, 1280]; else undefined
  std::vector<at::Tensor> y;        // i2v/flf2v per sample [in_dim - C_in, F, H, W]; else empty
  // Unmerged LoRAs: each LoRA's strength for this call, one per LoRA given at load (a per-step
  // strength list's value at this step); empty: the strengths given at load.
  std::vector<double> lora_strengths;
  // Enhance-A-Video (the wrapper's feta_args): when set, every self-attention output is scaled
  // by a gain computed from its cross-frame attention, with this weight. The sampler decides
  // per step (start/end percent); samples of one latent frame are left alone.
  std::optional<double> feta_weight;
  // RIFLEx (the wrapper's riflex_freq_index; ops::Riflex): 0 off, else the frame frequency of
  // RoPE stretched over riflex_latent_frames, the whole video's latent frames (a context window
  // is only part of them).
  int64_t riflex_freq_index = 0;
  int64_t riflex_latent_frames = 0;
  // Skip layer guidance (the wrapper's slg_args): these blocks are left out of this call, the
  // residual stream passing them by. The sampler asks it of the unconditional pass.
  std::vector<int64_t> skip_blocks;
  BlockCacheCall cache;
  // NAG (Normalized Attention Guidance; the wrapper's WanVideoApplyNAG): every block's text
  // cross-attention also attends to this context ([L, text_dim], the NAG prompt's), and its
  // output is pushed away from that one: Z = scale Z+ - (scale - 1) Z-, its L1 norm per token held
  // to at most tau times Z+'s, then alpha Z + (1 - alpha) Z+, before the output projection. The
  // sampler asks it of the conditional pass.
  struct Nag {
    at::Tensor context;
    double scale = 11.0, tau = 2.5, alpha = 0.25;
  };
  std::optional<Nag> nag;
};

// Named intermediates of sample 0 for tests and debugging (names as in the goldens).
using Trace = std::map<std::string, at::Tensor>;

class WanDit {
 public:
  // Takes the parameters by their official names; throws core::Error(BadCheckpoint) listing
  // every missing and unexpected key at once.
  // `adapters` (split_loras) are unmerged LoRAs by weight name, `lora_strengths` the strength
  // of each LoRA given at load (the default of WanDitInput::lora_strengths).
  WanDit(WanDitConfig config, std::map<std::string, ops::Weight> weights, WanDitOptions options,
         const std::string& source, LoraAdapters adapters = {}, std::vector<double> lora_strengths = {});

  // The official forward: per sample float32 [out_dim, F, H, W]. `cancelled` is polled
  // between blocks.
  std::vector<at::Tensor> forward(const WanDitInput& in, const std::function<bool()>& cancelled = {},
                                  Trace* trace = nullptr) const;
  // cache_args: what each stream skipped since the last clear, and forgetting it all.
  std::vector<BlockCacheReport> block_cache_report() const;
  void clear_block_cache() const;

  const WanDitConfig& config() const { return config_; }
  const WanDitOptions& options() const { return options_; }
  void set_attention(ops::AttentionMode mode) { options_.attention = mode; }
  // Throws InvalidOption unless 0 <= blocks <= num_layers and prefetch >= 0. On a GPU the
  // blocks move at the next forward.
  void set_block_swap(int blocks, int prefetch);
  // Returns the weights to the CPU (the wrapper's force_offload): the device copies of the blocks
  // and of everything else are dropped; the next forward brings them back. Engine thread only.
  void offload() const;
  bool on_main_device() const { return residency_.on_main(); }
  GraphStats graph_stats() const;
  // Held while memory accounting reads the weights from another thread.
  std::unique_lock<std::mutex> lock_weights() const { return residency_.lock(); }
  // Calls f(weight, block) on every parameter as held (block -1 outside the blocks), for
  // memory accounting (runtime/memory_stats.h). Defined below, so that the count needs no
  // change to the forward's source file.
  template <typename F>
  void visit_weights(F&& f) const;

 private:
  struct Linear {
    ops::Weight weight, bias;
    std::vector<LoraAdapter> loras;  // unmerged LoRAs of this layer, applied at run time
  };
  struct Attention {
    Linear q, k, v, o;
    ops::Weight norm_q, norm_k;
    Linear k_img, v_img;  // i2v / flf2v cross-attention only
    ops::Weight norm_k_img;
  };
  struct Block {
    Attention self_attn, cross_attn;
    ops::Weight norm3_weight, norm3_bias;  // cross_attn_norm: LayerNorm with affine
    Linear ffn0, ffn2;                     // ffn.1 is GELU(tanh)
    ops::Weight modulation;                // [1, 6, dim]
  };

  // Each call's strength of every LoRA given at load (only unmerged ones' are read).
  using LoraStrengths = std::vector<double>;
  // A linear layer (with its unmerged LoRAs) in the compute dtype; apply() returns it as float32.
  at::Tensor project(const Linear& l, const at::Tensor& x, const LoraStrengths& lora) const;
  at::Tensor apply(const Linear& l, const at::Tensor& x, const LoraStrengths& lora) const;
  // gelu_tanh(project(l, x)), the FFN's first layer: compiled on a GPU, the GELU runs in the
  // matmul (ops::linear_gelu_fused) unless an unmerged LoRA or an fp8 matmul comes between.
  at::Tensor project_gelu(const Linear& l, const at::Tensor& x, const LoraStrengths& lora) const;
  // The adaptive LayerNorm (ops/adaln.h), fused when compiled and on a GPU: modulated() returns
  // the input of the linear layers that follow, in the compute dtype where fused (float32
  // otherwise); residual() returns x + y * gate in float32, y in any dtype.
  at::Tensor modulated(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift) const;
  at::Tensor residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate) const;
  // The attentions and the block take their input by value and drop it as soon as they are done
  // with it, so that a forward holds as few [B, L, dim] tensors at once as it can. The attentions
  // return their output projection in the compute dtype: the residual's add widens it exactly.
  at::Tensor self_attention(const Attention& a, at::Tensor x, const at::Tensor& seq_lens,
                            const std::vector<std::array<int64_t, 3>>& grids, const ops::RopeTable& rope,
                            const ops::RopeAngles& angles,
                            std::optional<double> feta_weight,
                            const LoraStrengths& lora) const;
  // NAG's context, embedded as the text is ([B, text_len, dim]), and its parameters.
  struct NagGuidance {
    at::Tensor context;
    double scale, tau, alpha;
  };
  // `nag_parts` (for a trace): receives the text attention's output towards the context and
  // towards NAG's, [B, L, dim] float32, before they are combined.
  at::Tensor cross_attention(const Attention& a, at::Tensor x, const at::Tensor& context,
                             const at::Tensor& context_img, const LoraStrengths& lora, const NagGuidance* nag = nullptr,
                             std::pair<at::Tensor, at::Tensor>* nag_parts = nullptr) const;
  at::Tensor block_forward(const Block& b, int index, at::Tensor x, const at::Tensor& e0,
                           const at::Tensor& seq_lens, const std::vector<std::array<int64_t, 3>>& grids,
                           const ops::RopeTable& rope, const ops::RopeAngles& angles,
                           const at::Tensor& context, const at::Tensor& context_img, std::optional<double> feta_weight,
                           const LoraStrengths& lora, Trace* trace, const NagGuidance* nag = nullptr) const;
  at::Tensor heads(const at::Tensor& x) const;  // [B, L, dim] -> [B, L, H, D]
  // Calls f on every weight of a block, always in the same order.
  template <typename F>
  static void for_each_weight(Block& b, F&& f);
  // A copy of block `index` with every weight in float32, widened with libtorch's thread pool.
  Block widened_block(int64_t index) const;
  // The same in two steps: the float32 tensors are allocated here, and the returned job (for a
  // prefetch worker) fills them by that thread alone.
  std::function<Block()> widened_block_job(int64_t index) const;
  // Off the CPU: makes placed_ match blocks_to_swap (resident blocks on the device, swapped
  // ones in page-locked CPU memory). The caller holds placement_mutex_.
  void place_blocks() const;
  // The blocks on the device for one forward: resident ones as placed, swapped ones copied in.
  template <typename Run>
  void run_blocks_on_device(Run&& run) const;
  // cuda_graphs: the blocks' output for these inputs from a captured graph (captured now if the
  // previous forward had the same key), or undefined where the caller runs the blocks itself.
  // The caller holds placement_mutex_.
  struct BlockInputs;
  at::Tensor replay_blocks(const BlockInputs& in) const;
  void release_graph() const;  // the caller holds placement_mutex_

  WanDitConfig config_;
  WanDitOptions options_;
  ops::RopeTable rope_;  // on the device; a forward with RIFLEx makes its own
  ops::Weight patch_embedding_weight_, patch_embedding_bias_;
  Linear text_embedding0_, text_embedding2_;  // text_embedding.1 is GELU(tanh)
  Linear time_embedding0_, time_embedding2_;  // time_embedding.1 is SiLU
  Linear time_projection1_;                   // time_projection.0 is SiLU
  std::vector<Block> blocks_;  // as loaded, on the CPU
  mutable std::mutex placement_mutex_;  // held by a forward off the CPU
  mutable std::vector<Block> placed_;   // off the CPU: blocks_ placed for placed_swap_
  mutable int placed_swap_ = -1;
  // cuda_graphs, under placement_mutex_: the captured blocks (they read the placed weights, so
  // any re-placement releases them), the last forward's key, and what happened so far.
  struct CapturedBlocks;
  mutable std::shared_ptr<CapturedBlocks> captured_;
  mutable std::string graph_key_;
  mutable std::mutex graph_stats_mutex_;  // graph_stats() reads them while a forward runs
  mutable GraphStats graph_stats_;
  struct BlockCacheState {
    at::Tensor residual;  // what the blocks added at the last computed call, [B, seq_len, dim] float32
    std::vector<int64_t> skipped_steps;
    // TeaCache: the time embedding of the last computed call; the change accumulated since.
    at::Tensor embedding;
    float accumulated = 0.0f;  // a float32 tensor in the wrapper
    // MagCache: the product of the ratios since the last computed call, the summed error and
    // the calls skipped in a row.
    double ratio = 1.0, error = 0.0;
    int64_t skips = 0;
    // EasyCache: the previous call's block input; the last two computed calls' input and output
    // (their changes give the transformation rate k, 0 until known); the error accumulated.
    at::Tensor previous_input, computed_input, computed_output;
    double k = 0.0, output_norm = 0.0, easy_error = 0.0;
  };
  // Whether this call skips its blocks, updating the stream's state (all but the residual, which
  // the computed path sets).
  bool reuse_residual(BlockCacheState& state, const BlockCacheCall& call, const at::Tensor& x,
                      const at::Tensor& embedding) const;
  mutable std::mutex block_cache_mutex_;
  mutable std::map<int64_t, BlockCacheState> block_cache_;
  Linear head_;
  ops::Weight head_modulation_;   // [1, 2, dim]
  // img_emb (i2v / flf2v): LayerNorm(1280), Linear, GELU, Linear, LayerNorm(dim)
  ops::Weight img_norm0_weight_, img_norm0_bias_, img_norm4_weight_, img_norm4_bias_;
  Linear img_proj1_, img_proj3_;
  ops::Weight img_emb_pos_;  // flf2v: [1, 514, 1280]
  std::vector<double> lora_strengths_;  // at load, per LoRA
  // Everything outside the blocks but the offloaded embeddings: on the device or the CPU.
  mutable runtime::Residency residency_;
};

template <typename F>
void WanDit::visit_weights(F&& f) const {
  auto linear = [&f](const Linear& l, int64_t block) {
    f(l.weight, block);
    f(l.bias, block);
    for (const LoraAdapter& a : l.loras) {
      f(a.down, block);
      f(a.up, block);
    }
  };
  f(patch_embedding_weight_, -1);
  f(patch_embedding_bias_, -1);
  for (const Linear* l : {&text_embedding0_, &text_embedding2_, &time_embedding0_, &time_embedding2_, &time_projection1_})
    linear(*l, -1);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const Block& b = blocks_[i];
    const auto n = static_cast<int64_t>(i);
    for (const Attention* a : {&b.self_attn, &b.cross_attn}) {
      for (const Linear* l : {&a->q, &a->k, &a->v, &a->o, &a->k_img, &a->v_img}) linear(*l, n);
      for (const ops::Weight* w : {&a->norm_q, &a->norm_k, &a->norm_k_img}) f(*w, n);
    }
    linear(b.ffn0, n);
    linear(b.ffn2, n);
    for (const ops::Weight* w : {&b.norm3_weight, &b.norm3_bias, &b.modulation}) f(*w, n);
  }
  linear(head_, -1);
  f(head_modulation_, -1);
  for (const ops::Weight* w : {&img_norm0_weight_, &img_norm0_bias_, &img_norm4_weight_, &img_norm4_bias_, &img_emb_pos_})
    f(*w, -1);
  linear(img_proj1_, -1);
  linear(img_proj3_, -1);
}

// Infers the configuration of a DiT checkpoint from its (normalised) tensor names and
// shapes (anchors.md c.3). num_heads and text_len are not stored in the weights: the
// released dims imply them (head dim 128, 512 text tokens); pass them for other sizes.
struct WanDitOverrides {
  int64_t num_heads = 0;  // 0: infer
  int64_t text_len = 0;   // 0: 512
  std::vector<LoraSpec> loras;  // applied in order (models/lora.h)
  bool merge_loras = true;       // merged into the weights at load; else applied at run time
};
WanDitConfig infer_wan_dit_config(const std::map<std::string, std::vector<int64_t>>& shapes,
                                  const WanDitOverrides& overrides, const std::string& source);

// Loads a DiT from checkpoint files (shards of one checkpoint, any supported layout).
std::shared_ptr<WanDit> load_wan_dit(const std::vector<std::string>& files, const WanDitOverrides& overrides,
                                     const WanDitOptions& options, bool populate,
                                     const std::function<bool()>& cancelled);

}  // namespace wan::models
