// The Wan2.1 causal 3D VAE (wan/modules/vae.py: WanVAE_ and the WanVAE wrapper).
// Config from shapes, then the blocks bottom-up (causal conv, RMS norm, residual block,
// attention, resample), then encoder, decoder and the chunked drivers.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ops/linear.h"
#include "runtime/residency.h"

namespace wan::models {

struct WanVaeConfig {
  int64_t dim = 96;    // base channels (encoder.conv1 out); the tiny golden VAE has 8
  int64_t z_dim = 16;  // latent channels
  // Fixed for Wan2.1: dim_mult [1, 2, 4, 4], 2 residual blocks per level, temporal
  // downsampling in the last two levels (4x in time, 8x in space), no attention but the middle.
};

// Per-call state of the causal convolutions: the last frames each one saw (CACHE_T = 2),
// carried from chunk to chunk. Slots are taken in call order, as the official feat_idx.
struct FeatureCache {
  struct Slot {
    at::Tensor frames;
    bool present = false;
    bool rep = false;  // the upsample3d marker of the first chunk ('Rep')
  };
  std::vector<Slot> slots;
  size_t index = 0;
  Slot& next() {
    if (index >= slots.size()) slots.resize(index + 1);
    return slots[index++];
  }
};

class WanVae : public std::enable_shared_from_this<WanVae> {
 public:
  // `device`: where the VAE computes (float32) and its weights live while in use;
  // `load_on_main`: whether they go there at load or at the first use (the wrapper's
  // load_device). encode() and the Decoder take and return CPU tensors.
  WanVae(WanVaeConfig config, std::map<std::string, ops::Weight> weights, const std::string& source,
         at::Device device = at::kCPU, bool load_on_main = true);

  struct Tiling;

  // video [3, F, H, W] in [-1, 1], F = 4k + 1, H and W multiples of 8 -> normalised latent
  // [z_dim, (F - 1) / 4 + 1, H / 8, W / 8]. `mu` (optional) receives the latent before
  // (mu - mean) / std. With `tiling`, overlapping spatial tiles of the video are encoded each on
  // its own (all frames, its own cache) and their latents blended linearly where they overlap,
  // as a tiled decode blends its frames.
  at::Tensor encode(const at::Tensor& video, const std::function<bool()>& cancelled = {},
                    at::Tensor* mu = nullptr, const Tiling* tiling = nullptr) const;

  // The encoder and decoder over a batch, for training (the demo model's trainer, issue 9): autograd
  // follows them when the weights require grad. video [B, 3, F, H, W] in [-1, 1] -> the
  // posterior's mean and log variance [B, z_dim, (F - 1) / 4 + 1, H / 8, W / 8], before the
  // latent normalisation; decode_raw takes such a latent back to [B, 3, 4T - 3, 8h, 8w],
  // unclamped. encode() and decode() are these plus normalisation (and clamping).
  std::pair<at::Tensor, at::Tensor> encode_moments(const at::Tensor& video,
                                                   const std::function<bool()>& cancelled = {}) const;
  at::Tensor decode_raw(const at::Tensor& z) const;
  // (mu - mean) / std with Wan's per-channel constants: [B, z_dim, T, h, w] -> the latent
  // encode() returns (and the DiT works on).
  static at::Tensor normalize(const at::Tensor& mu);

  // Spatial tiling of a decode or an encode, in pixels (WanVideo Decode's and Encode's tile_x,
  // tile_y, tile_stride_x, tile_stride_y): overlapping tiles, each with its own cache, blended
  // linearly where they overlap.
  struct Tiling {
    int64_t tile_x = 272, tile_y = 272, stride_x = 144, stride_y = 128;
  };

  // Decodes one latent frame at a time with the feature cache carried between them (the
  // official loop), so memory is bounded by one chunk: next() returns the video frames of the
  // next latent frame, [3, n, 8h, 8w] unclamped (n = 1 for the first, then 4).
  class Decoder {
   public:
    Decoder(std::shared_ptr<const WanVae> vae, const at::Tensor& z, const Tiling* tiling);
    bool done() const { return next_frame_ >= x_.size(2); }
    int64_t frames_left() const { return x_.size(2) - next_frame_; }
    at::Tensor next();

   private:
    struct Tile {
      int64_t y, x;           // latent offset
      FeatureCache cache;
      at::Tensor weight;      // [1, 1, 8 th, 8 tw] blending weights
    };
    std::shared_ptr<const WanVae> vae_;
    at::Tensor x_;            // [1, z, T, h, w] after the post-quant conv
    int64_t th_, tw_;         // tile size in latent pixels (the whole latent when untiled)
    std::vector<Tile> tiles_;
    int64_t next_frame_ = 0;
  };

  // The resident memory a decode needs at its peak, in bytes, found before decoding by
  // replaying Decoder::next() on shapes alone (DecodePlanner in wan_vae.cpp; nothing is
  // allocated). `bytes` is the sum of the parts:
  struct DecodeMemory {
    int64_t bytes = 0;
    int64_t weights = 0;      // every weight of the VAE as stored: resident once loaded (populate)
    int64_t runtime = 0;      // code and thread buffers a process's first decode maps (a constant)
    // At the busiest moment of the decode (the most tensors live, at `peak_at`):
    int64_t caches = 0;       // feature caches: the last 2 frames of each causal conv, per tile
    int64_t activations = 0;  // every other tensor: activations, the latent, tile sums, and
                              // libtorch's own buffers (oneDNN reorders, vol2col columns)
    int64_t output = 0;       // the most decoded frames held at once (decode(): the video in JS)
    int64_t allocator = 0;    // what the heap holds beyond those at its resident peak: freed
                              // blocks glibc keeps for reuse (core/cpu_allocator), fragmentation
    std::string peak_at;      // the busiest moment: chunk, tile, layer and op
  };
  struct DecodeMemoryQuery {
    int64_t frames = 21;      // latent frames T
    int64_t height = 0, width = 0;  // video pixels, multiples of 8
    std::optional<Tiling> tiling;
    bool whole = true;        // decode() (the whole video is kept) rather than decodeFrames()
  };
  DecodeMemory estimate_decode_memory(const DecodeMemoryQuery& query) const;

  const WanVaeConfig& config() const { return config_; }
  at::Device device() const { return device_; }
  // Where the weights are between uses (runtime/residency.h): a use brings them to the main
  // device; offload() returns them to the CPU (the wrapper's force_offload). A Decoder offloaded
  // between frames brings them back for its next frame.
  void offload() const { residency_.place(false); }
  bool on_main_device() const { return residency_.on_main(); }
  // Held while memory accounting reads the weights from another thread.
  std::unique_lock<std::mutex> lock_weights() const { return residency_.lock(); }
  // Calls f(weight) on every parameter as held, for memory accounting (runtime/memory_stats.h).
  template <typename F>
  void visit_weights(F&& f) const;
  static const std::vector<float>& latent_mean();
  static const std::vector<float>& latent_std();

 private:
  friend class DecodePlanner;
  struct Conv {  // a (causal) convolution: weight [out, in, (kt,) kh, kw]
    ops::Weight weight, bias;
  };
  struct Residual {  // residual: 0 RMS, 1 SiLU, 2 conv, 3 RMS, 4 SiLU, 5 dropout, 6 conv
    ops::Weight norm0, norm3;
    Conv conv2, conv6, shortcut;  // shortcut only when channels change
  };
  struct Attention {  // single-head attention over each frame's pixels
    ops::Weight norm;
    Conv to_qkv, proj;
  };
  struct Resample {  // mode: downsample2d/3d (encoder), upsample2d/3d (decoder)
    std::string mode;
    Conv resample1, time_conv;
  };
  struct Stage {  // one entry of downsamples / upsamples
    enum Kind { kResidual, kResample } kind;
    Residual residual;
    Resample resample;
  };
  struct Coder {  // Encoder3d / Decoder3d
    Conv conv1;
    std::vector<Stage> stages;
    Residual middle0, middle2;
    Attention middle1;
    ops::Weight head_norm;
    Conv head_conv;
  };

  at::Tensor residual(const Residual& r, const at::Tensor& x, FeatureCache& cache) const;
  at::Tensor attention(const Attention& a, const at::Tensor& x) const;
  at::Tensor resample(const Resample& r, const at::Tensor& x, FeatureCache& cache) const;
  at::Tensor run(const Coder& c, const at::Tensor& x, FeatureCache& cache, bool encoder) const;
  at::Tensor unnormalize(const at::Tensor& z) const;

  WanVaeConfig config_;
  at::Device device_;
  int64_t weight_bytes_ = 0;  // all weights as stored
  Coder encoder_, decoder_;
  Conv conv1_, conv2_;  // quant_conv [2z, 2z, 1, 1, 1] and post_quant_conv [z, z, 1, 1, 1]
  mutable runtime::Residency residency_;
};

WanVaeConfig infer_wan_vae_config(const std::map<std::string, std::vector<int64_t>>& shapes, const std::string& source);

std::shared_ptr<WanVae> load_wan_vae(const std::vector<std::string>& files, bool populate,
                                     const std::function<bool()>& cancelled, at::Device device = at::kCPU,
                                     bool load_on_main = true);

template <typename F>
void WanVae::visit_weights(F&& f) const {
  auto conv = [&f](const Conv& c) {
    f(c.weight);
    f(c.bias);
  };
  auto residual = [&](const Residual& r) {
    f(r.norm0);
    f(r.norm3);
    for (const Conv* c : {&r.conv2, &r.conv6, &r.shortcut}) conv(*c);
  };
  for (const Coder* c : {&encoder_, &decoder_}) {
    conv(c->conv1);
    for (const Stage& s : c->stages) {
      residual(s.residual);
      conv(s.resample.resample1);
      conv(s.resample.time_conv);
    }
    residual(c->middle0);
    residual(c->middle2);
    f(c->middle1.norm);
    conv(c->middle1.to_qkv);
    conv(c->middle1.proj);
    f(c->head_norm);
    conv(c->head_conv);
  }
  conv(conv1_);
  conv(conv2_);
}

}  // namespace wan::models
