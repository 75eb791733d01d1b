// The CLIP vision tower that Wan2.1 I2V and FLF2V condition on (wan/modules/clip.py:
// VisionTransformer inside XLMRobertaCLIP, open-clip-xlm-roberta-large-vit-huge-14), run the way
// CLIPModel.visual runs it: bicubic resize, CLIP normalisation, then every transformer block but
// the last (use_31_block=True), no post_norm and no head -> [N, 257, 1280] for ViT-H/14.
// Config from shapes, then the blocks bottom-up (attention, MLP, residual block), then the model.
// Module names are the official checkpoint keys (`visual.transformer.N.attn.to_qkv`, `mlp.0`;
// mlp.1 is GELU(erf)); Hugging Face (ComfyUI clip_vision_h) and open_clip files are converted
// to them by load_clip_vision.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ops/linear.h"
#include "runtime/residency.h"

namespace wan::models {

struct ClipVisionConfig {
  int64_t image_size = 224;  // pixels the image is resized to (grid * patch)
  int64_t patch_size = 14;
  int64_t dim = 1280;        // vision_dim; 64 in the tiny golden
  int64_t mlp_dim = 5120;    // dim * vision_mlp_ratio (4)
  int64_t num_heads = 16;    // not stored in the weights: ViT-H/14 has 16 (head dim 80)
  int64_t num_layers = 32;   // blocks in the file; the pipeline runs num_layers - 1 of them
  double eps = 1e-5;         // every LayerNorm (norm_eps)
  // Fixed for the Wan CLIP: pool 'token' (class token + position embedding for 1 + grid^2
  // tokens), pre_norm (so the patch embedding has no bias), pre-LN blocks, activation 'gelu'.

  int64_t grid() const { return image_size / patch_size; }
  int64_t tokens() const { return grid() * grid() + 1; }  // 257 for ViT-H/14 at 224
  int64_t head_dim() const { return dim / num_heads; }
};

// How the images of one encode call are prepared and combined (WanVideoClipVisionEncode).
struct ClipEncodeOptions {
  // false: stretch to image_size x image_size, as the official CLIPModel.visual does; true:
  // resize the short side to image_size and cut the centre (the wrapper's crop="center").
  bool center_crop = false;
  std::vector<double> strengths;  // per image; images past the list keep strength 1
  enum class Combine { Average, Sum, Concat, Batch } combine = Combine::Average;
};

// Named intermediates for tests and debugging (names as in the goldens).
using Trace = std::map<std::string, at::Tensor>;

class ClipVision {
 public:
  // Takes the parameters by their official names (`visual.*`); throws core::Error(BadCheckpoint)
  // listing every missing and unexpected key at once.
  // `device`: where the encoder computes (float32) and its weights live while in use;
  // `load_on_main`: whether they go there at load or at the first use (the wrapper's
  // load_device). encode() takes and returns CPU tensors.
  ClipVision(ClipVisionConfig config, std::map<std::string, ops::Weight> weights, const std::string& source,
             std::string layout = "official", at::Device device = at::kCPU, bool load_on_main = true);
  at::Device device() const { return device_; }
  // Where the weights are between uses (runtime/residency.h): a use brings them to the main
  // device; offload() returns them to the CPU (the wrapper's force_offload).
  void offload() const { residency_.place(false); }
  bool on_main_device() const { return residency_.on_main(); }
  // Held while memory accounting reads the weights from another thread.
  std::unique_lock<std::mutex> lock_weights() const { return residency_.lock(); }

  // CLIPModel.visual's preprocessing of one image: [3, H, W] or [3, 1, H, W] in [-1, 1] ->
  // [1, 3, S, S] (S = image_size): bicubic resize (align_corners=False, no antialias, as
  // F.interpolate in the official code), * 0.5 + 0.5, (x - mean) / std with the CLIP constants.
  at::Tensor preprocess(const at::Tensor& image, bool center_crop) const;

  // VisionTransformer.forward(pixels, use_31_block=True): [N, 3, S, S] -> [N, tokens, dim]
  // after all blocks but the last. With `trace`, also records patch_embedding_out, every
  // block{i}_out and all_blocks (the last block run too). `cancelled` is polled between blocks.
  at::Tensor forward(const at::Tensor& pixels, const std::function<bool()>& cancelled = {},
                     Trace* trace = nullptr) const;

  // The pipeline step: preprocess each image, encode them as one batch, weight image i by
  // strengths[i] and combine them as WanVideoClipVisionEncode does: one image -> [1, tokens, dim];
  // several -> average / sum [1, tokens, dim], concat [1, n * tokens, dim], batch [n, tokens, dim].
  at::Tensor encode(const std::vector<at::Tensor>& images, const ClipEncodeOptions& options,
                    const std::function<bool()>& cancelled = {}, Trace* trace = nullptr) const;

  const ClipVisionConfig& config() const { return config_; }
  const std::string& layout() const { return layout_; }  // the file's naming: official | hf-clip | open-clip
  // Calls f(weight) on every parameter as held, for memory accounting (runtime/memory_stats.h).
  template <typename F>
  void visit_weights(F&& f) const {
    for (const ops::Weight* w : {&patch_embedding_, &cls_embedding_, &pos_embedding_, &pre_norm_.weight, &pre_norm_.bias}) f(*w);
    for (const Block& b : blocks_)
      for (const ops::Weight* w : {&b.norm1.weight, &b.norm1.bias, &b.norm2.weight, &b.norm2.bias, &b.to_qkv.weight,
                                   &b.to_qkv.bias, &b.proj.weight, &b.proj.bias, &b.mlp0.weight, &b.mlp0.bias,
                                   &b.mlp2.weight, &b.mlp2.bias})
        f(*w);
  }

 private:
  struct Linear {
    ops::Weight weight, bias;
  };
  struct LayerNorm {
    ops::Weight weight, bias;
  };
  struct Block {  // AttentionBlock, post_norm=False
    LayerNorm norm1, norm2;
    Linear to_qkv, proj;  // attn: fused q, k, v [3 dim, dim] and the output projection
    Linear mlp0, mlp2;    // mlp.1 is GELU (erf), mlp.3 dropout
  };

  at::Tensor apply(const Linear& l, const at::Tensor& x) const;
  at::Tensor norm(const LayerNorm& n, const at::Tensor& x) const;
  at::Tensor attention(const Block& b, const at::Tensor& x) const;
  at::Tensor block_forward(const Block& b, const at::Tensor& x) const;

  ClipVisionConfig config_;
  at::Device device_;
  std::string layout_;
  ops::Weight patch_embedding_;  // [dim, 3, patch, patch], no bias
  ops::Weight cls_embedding_;    // [1, 1, dim]
  ops::Weight pos_embedding_;    // [1, tokens, dim]
  LayerNorm pre_norm_;
  std::vector<Block> blocks_;
  mutable runtime::Residency residency_;
};

// Infers the configuration from the (official) names and shapes. num_heads is not stored in
// the weights: the known widths imply it (1280 -> 16 for ViT-H); pass it for other sizes.
struct ClipVisionOverrides {
  int64_t num_heads = 0;  // 0: infer
};
ClipVisionConfig infer_clip_vision_config(const std::map<std::string, std::vector<int64_t>>& shapes,
                                          const ClipVisionOverrides& overrides, const std::string& source);

// Loads the vision tower from the official .pth (XLMRobertaCLIP: `visual.*`, the text tower and
// `log_scale` ignored), a Hugging Face CLIPVisionModel file (ComfyUI's clip_vision_h.safetensors:
// `vision_model.*`, q/k/v fused on load) or an open_clip state dict (`visual.transformer.resblocks.*`).
std::shared_ptr<ClipVision> load_clip_vision(const std::vector<std::string>& files, const ClipVisionOverrides& overrides,
                                             bool populate, const std::function<bool()>& cancelled,
                                             at::Device device = at::kCPU, bool load_on_main = true);

}  // namespace wan::models
