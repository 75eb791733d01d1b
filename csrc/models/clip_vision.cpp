#include "models/clip_vision.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>

#include "core/error.h"
#include "models/weights.h"
#include "ops/attention.h"
#include "ops/norm.h"

namespace wan::models {
namespace {

using core::Error;
using core::ErrorCode;
using core::shape_text;

// CLIP's normalisation constants (wan/modules/clip.py _clip, and every OpenAI-derived CLIP).
// Kept as doubles and cast once, as torchvision's Normalize does with torch.as_tensor(mean,
// dtype=float32): a float literal would round the decimal straight to float, which is not
// always the same float.
constexpr double kMean[3] = {0.48145466, 0.4578275, 0.40821073};
constexpr double kStd[3] = {0.26862954, 0.26130258, 0.27577711};

void check(bool ok, const std::string& what) {
  if (!ok) throw Error(ErrorCode::InvalidTensor, what);
}

void check_cancelled(const std::function<bool()>& cancelled) {
  if (cancelled && cancelled()) throw Error(ErrorCode::Aborted, "the operation was aborted");
}

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

// ---------------------------------------------------------------------------------------------
// Other namings of the same tower -> the official `visual.*` names. io/key_map recognises these
// layouts ("hf-clip", "open-clip") but leaves them alone: they need tensor surgery, done here.

// `<scope><N>.<rest>` -> {N, rest}; N = -1 when `key` is not in the scope.
std::pair<int64_t, std::string> split_layer(const std::string& key, const std::string& scope) {
  if (!starts_with(key, scope)) return {-1, ""};
  size_t i = scope.size();
  const size_t begin = i;
  while (i < key.size() && std::isdigit(static_cast<unsigned char>(key[i]))) ++i;
  if (i == begin || i >= key.size() || key[i] != '.') return {-1, ""};
  return {std::stoll(key.substr(begin, i - begin)), key.substr(i + 1)};
}

// `rest` with its leading module path renamed by the first matching pair (whole segments).
std::string rename_rest(const std::string& rest, std::initializer_list<std::pair<const char*, const char*>> table) {
  for (const auto& [from, to] : table) {
    const std::string f(from);
    if (starts_with(rest, f) && (rest.size() == f.size() || rest[f.size()] == '.'))
      return std::string(to) + rest.substr(f.size());
  }
  return rest;
}

// A stored tensor under another layout (a view of the mapping, no copy). A scale per row would
// no longer line up with the rows: such a weight is widened to float32 first.
ops::Weight relaid(const ops::Weight& w, const std::function<at::Tensor(const at::Tensor&)>& layout) {
  if (w.scale.defined() && w.scale.dim() > 0) return ops::Weight{core::wrap(layout(w.get(at::kFloat)).contiguous()), {}};
  return ops::Weight{core::Tensor{layout(w.stored.value), w.stored.dtype}, w.scale};
}

ops::Weight reshaped(const ops::Weight& w, at::IntArrayRef shape) {
  const std::vector<int64_t> to = shape.vec();
  return relaid(w, [&](const at::Tensor& t) { return t.reshape(to); });
}

// q, k and v concatenated along the output dimension: the official to_qkv computes them with
// one Linear(dim, 3 dim) and splits its output as view(b, s, 3, n, d), i.e. [q; k; v] rows.
// Kept in the stored dtype when the three agree (the usual case), else widened to float32.
ops::Weight fuse_qkv(const ops::Weight& q, const ops::Weight& k, const ops::Weight& v) {
  const bool same = q.stored.dtype == k.stored.dtype && q.stored.dtype == v.stored.dtype && !q.scale.defined() &&
                    !k.scale.defined() && !v.scale.defined();
  if (same) return ops::Weight{core::Tensor{at::cat({q.stored.value, k.stored.value, v.stored.value}, 0), q.stored.dtype}, {}};
  return ops::Weight{core::wrap(at::cat({q.get(at::kFloat), k.get(at::kFloat), v.get(at::kFloat)}, 0)), {}};
}

// Hugging Face CLIPVisionModel(WithProjection) -> official (ComfyUI's clip_vision_h.safetensors,
// the same ViT-H/14 weights). HF keeps q/k/v apart and 1-D/2-D embeddings:
//   vision_model.embeddings.patch_embedding.weight     -> visual.patch_embedding.weight
//   vision_model.embeddings.class_embedding [dim]      -> visual.cls_embedding [1, 1, dim]
//   vision_model.embeddings.position_embedding.weight [L, dim] -> visual.pos_embedding [1, L, dim]
//   vision_model.pre_layrnorm (sic)                    -> visual.pre_norm
//   vision_model.encoder.layers.N.layer_norm1/2        -> visual.transformer.N.norm1/2
//   ....self_attn.{q,k,v}_proj                         -> ....attn.to_qkv (concatenated q, k, v)
//   ....self_attn.out_proj                             -> ....attn.proj
//   ....mlp.fc1 / mlp.fc2                              -> ....mlp.0 / mlp.2
//   vision_model.post_layernorm                        -> visual.post_norm
//   visual_projection.weight [out, dim]                -> visual.head [dim, out] (x @ head)
// The text tower of a full CLIPModel, logit_scale and the position_ids buffer are dropped.
std::map<std::string, ops::Weight> from_hf_clip(std::map<std::string, ops::Weight> in) {
  std::map<std::string, ops::Weight> out;
  // "visual.transformer.N.attn.to_qkv.weight" -> 'q' | 'k' | 'v' -> (source key, weight)
  std::map<std::string, std::map<char, std::pair<std::string, ops::Weight>>> qkv;
  for (auto& [key, w] : in) {
    if (starts_with(key, "text_model.") || starts_with(key, "text_projection.") || key == "logit_scale" ||
        key == "vision_model.embeddings.position_ids")
      continue;
    if (key == "vision_model.embeddings.patch_embedding.weight") {
      out["visual.patch_embedding.weight"] = w;
    } else if (key == "vision_model.embeddings.class_embedding") {
      out["visual.cls_embedding"] = reshaped(w, {1, 1, -1});
    } else if (key == "vision_model.embeddings.position_embedding.weight") {
      out["visual.pos_embedding"] = reshaped(w, {1, w.stored.value.size(0), -1});
    } else if (key == "visual_projection.weight") {
      out["visual.head"] = relaid(w, [](const at::Tensor& t) { return t.t(); });
    } else if (starts_with(key, "vision_model.pre_layrnorm.")) {
      out["visual.pre_norm." + key.substr(26)] = w;
    } else if (starts_with(key, "vision_model.post_layernorm.")) {
      out["visual.post_norm." + key.substr(28)] = w;
    } else if (auto [n, rest] = split_layer(key, "vision_model.encoder.layers."); n >= 0) {
      const std::string block = "visual.transformer." + std::to_string(n) + ".";
      // self_attn.q_proj.weight -> to_qkv.weight, part 'q'
      if (rest.size() > 17 && starts_with(rest, "self_attn.") && rest.compare(11, 6, "_proj.") == 0 &&
          (rest[10] == 'q' || rest[10] == 'k' || rest[10] == 'v')) {
        qkv[block + "attn.to_qkv." + rest.substr(17)][rest[10]] = {key, w};
        continue;
      }
      out[block + rename_rest(rest, {{"layer_norm1", "norm1"},
                                     {"layer_norm2", "norm2"},
                                     {"self_attn.out_proj", "attn.proj"},
                                     {"mlp.fc1", "mlp.0"},
                                     {"mlp.fc2", "mlp.2"}})] = w;
    } else {
      out[key] = w;  // unknown: reported as unexpected
    }
  }
  for (auto& [name, parts] : qkv) {
    if (parts.size() == 3) {
      out[name] = fuse_qkv(parts['q'].second, parts['k'].second, parts['v'].second);
    } else {  // an incomplete triple: the load error lists to_qkv as missing and these as unexpected
      for (auto& [part, source] : parts) out[source.first] = source.second;
    }
  }
  return out;
}

// open_clip VisionTransformer -> official. The attention is already fused (in_proj_weight,
// the [q; k; v] rows of nn.MultiheadAttention):
//   visual.conv1 -> patch_embedding, class_embedding [dim] -> cls_embedding [1, 1, dim],
//   positional_embedding [L, dim] -> pos_embedding [1, L, dim], ln_pre / ln_post -> pre_norm /
//   post_norm, proj [dim, out] -> head; resblocks.N: ln_1 / ln_2 -> norm1 / norm2,
//   attn.in_proj_{weight,bias} -> attn.to_qkv.{weight,bias}, attn.out_proj -> attn.proj,
//   mlp.c_fc / mlp.c_proj -> mlp.0 / mlp.2. Everything outside `visual.` is the text tower.
std::map<std::string, ops::Weight> from_open_clip(std::map<std::string, ops::Weight> in) {
  std::map<std::string, ops::Weight> out;
  for (auto& [key, w] : in) {
    if (!starts_with(key, "visual.")) continue;
    if (key == "visual.class_embedding") {
      out["visual.cls_embedding"] = reshaped(w, {1, 1, -1});
    } else if (key == "visual.positional_embedding") {
      out["visual.pos_embedding"] = reshaped(w, {1, w.stored.value.size(0), -1});
    } else if (key == "visual.proj") {
      out["visual.head"] = w;
    } else if (auto [n, rest] = split_layer(key, "visual.transformer.resblocks."); n >= 0) {
      out["visual.transformer." + std::to_string(n) + "." +
          rename_rest(rest, {{"ln_1", "norm1"},
                             {"ln_2", "norm2"},
                             {"attn.in_proj_weight", "attn.to_qkv.weight"},
                             {"attn.in_proj_bias", "attn.to_qkv.bias"},
                             {"attn.out_proj", "attn.proj"},
                             {"mlp.c_fc", "mlp.0"},
                             {"mlp.c_proj", "mlp.2"}})] = w;
    } else {
      out["visual." + rename_rest(key.substr(7), {{"conv1", "patch_embedding"},
                                                  {"ln_pre", "pre_norm"},
                                                  {"ln_post", "post_norm"}})] = w;
    }
  }
  return out;
}

// The official XLMRobertaCLIP state dict: the text tower (`textual.*`) and `log_scale` are not
// part of the vision encoder.
std::map<std::string, ops::Weight> from_official(std::map<std::string, ops::Weight> in) {
  for (auto it = in.begin(); it != in.end();)
    it = starts_with(it->first, "textual.") || it->first == "log_scale" ? in.erase(it) : std::next(it);
  return in;
}

// Which naming the file uses, and its weights under the official names.
std::map<std::string, ops::Weight> to_official(std::map<std::string, ops::Weight> in, std::string& layout) {
  // A ComfyUI all-in-one file reduced to its CLIP part keeps the `clip_vision.` prefix.
  const std::string prefix = "clip_vision.";
  if (!in.empty() && std::all_of(in.begin(), in.end(), [&](const auto& kv) { return starts_with(kv.first, prefix); })) {
    std::map<std::string, ops::Weight> stripped;
    for (auto& [key, w] : in) stripped[key.substr(prefix.size())] = w;
    in = std::move(stripped);
  }
  const auto any = [&](const std::string& p) {
    return std::any_of(in.begin(), in.end(), [&](const auto& kv) { return starts_with(kv.first, p); });
  };
  if (any("vision_model.")) {
    layout = "hf-clip";
    return from_hf_clip(std::move(in));
  }
  if (any("visual.transformer.resblocks.")) {
    layout = "open-clip";
    return from_open_clip(std::move(in));
  }
  layout = "official";
  return from_official(std::move(in));
}

}  // namespace

// ---------------------------------------------------------------------------------------------

ClipVision::ClipVision(ClipVisionConfig config, std::map<std::string, ops::Weight> weights, const std::string& source,
                       std::string layout, at::Device device, bool load_on_main)
    : config_(config), device_(device), layout_(std::move(layout)), residency_(device) {
  // post_norm and head (the pooled projection) are not used by the pipeline; files may or may
  // not carry them (a CLIPVisionModel without projection has no head).
  for (const char* unused : {"visual.post_norm.weight", "visual.post_norm.bias", "visual.head"}) weights.erase(unused);
  WeightBag bag(std::move(weights));
  auto linear = [&](const std::string& p) { return Linear{bag.take(p + ".weight"), bag.take(p + ".bias")}; };
  auto layer_norm = [&](const std::string& p) { return LayerNorm{bag.take(p + ".weight"), bag.take(p + ".bias")}; };
  patch_embedding_ = bag.take("visual.patch_embedding.weight");
  cls_embedding_ = bag.take("visual.cls_embedding");
  pos_embedding_ = bag.take("visual.pos_embedding");
  pre_norm_ = layer_norm("visual.pre_norm");
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    const std::string p = "visual.transformer." + std::to_string(i) + ".";
    blocks_.push_back(Block{layer_norm(p + "norm1"), layer_norm(p + "norm2"), linear(p + "attn.to_qkv"),
                            linear(p + "attn.proj"), linear(p + "mlp.0"), linear(p + "mlp.2")});
  }
  bag.check(source, "CLIP vision encoder (" + layout_ + " layout)");
  residency_.manage(weight_members(*this), load_on_main);
}

at::Tensor ClipVision::apply(const Linear& l, const at::Tensor& x) const { return ops::linear(x, l.weight, l.bias); }

at::Tensor ClipVision::norm(const LayerNorm& n, const at::Tensor& x) const {
  return ops::layer_norm(x, n.weight.get(at::kFloat), n.bias.get(at::kFloat), config_.eps);
}

// SelfAttention: x [B, L, dim] -> [B, L, dim]; no mask, no causality.
at::Tensor ClipVision::attention(const Block& b, const at::Tensor& x) const {
  const int64_t batch = x.size(0), len = x.size(1);
  // to_qkv: [B, L, 3 dim] viewed as [B, L, 3, H, D] and split, as the official unbind(2).
  const at::Tensor qkv = apply(b.to_qkv, x).view({batch, len, 3, config_.num_heads, config_.head_dim()});
  const at::Tensor out = ops::attention(qkv.select(2, 0), qkv.select(2, 1), qkv.select(2, 2),
                                        ops::AttentionMode::Sdpa);  // [B, L, H, D]
  return apply(b.proj, out.reshape({batch, len, config_.dim}));
}

// AttentionBlock (post_norm=False): x [B, L, dim] -> [B, L, dim].
at::Tensor ClipVision::block_forward(const Block& b, const at::Tensor& x_in) const {
  at::Tensor x = x_in + attention(b, norm(b.norm1, x_in));
  // mlp: Linear(dim, 4 dim), nn.GELU() (exact erf, not tanh and not QuickGELU: activation='gelu'), Linear.
  return x + apply(b.mlp2, at::gelu(apply(b.mlp0, norm(b.norm2, x))));
}

at::Tensor ClipVision::preprocess(const at::Tensor& image, bool center_crop) const {
  // [3, H, W] or [3, 1, H, W] (a one-frame video, as image2video.py passes img[:, None]) -> [1, 3, H, W].
  at::Tensor x = image;
  if (x.dim() == 4) {
    check(x.size(0) == 3 && x.size(1) == 1, "image: expected [3, H, W] or [3, 1, H, W], got " + shape_text(x.sizes()));
    x = x.transpose(0, 1);  // CLIPModel.visual: u.transpose(0, 1)
  } else {
    check(x.dim() == 3 && x.size(0) == 3, "image: expected [3, H, W] or [3, 1, H, W], got " + shape_text(x.sizes()));
    x = x.unsqueeze(0);
  }
  check(x.size(2) > 0 && x.size(3) > 0, "image: expected a non-empty image, got " + shape_text(image.sizes()));
  x = x.to(device_, at::kFloat);
  const int64_t size = config_.image_size;
  int64_t h = size, w = size;
  if (center_crop) {
    // As ComfyUI's clip_preprocess: scale the short side to `size` (Python round, half to
    // even, which nearbyint does in the default rounding mode), then cut the centre.
    const double scale = static_cast<double>(size) / static_cast<double>(std::min(x.size(2), x.size(3)));
    h = static_cast<int64_t>(std::nearbyint(scale * static_cast<double>(x.size(2))));
    w = static_cast<int64_t>(std::nearbyint(scale * static_cast<double>(x.size(3))));
  }
  if (center_crop) {
    // ComfyUI's clip_preprocess, which the wrapper's crop mode runs, on its [0, 1] IMAGE:
    // F.interpolate(mode='bicubic', antialias=True) where the size changes (the filter widened
    // when scaling down, as PIL does), the centre cut, then the 8-bit round trip
    // clip(255 x, 0, 255).round() / 255.
    x = x.mul(0.5).add(0.5);
    if (x.size(2) != h || x.size(3) != w)
      x = at::_upsample_bicubic2d_aa(x, {h, w}, /*align_corners=*/false, c10::nullopt, c10::nullopt);
    x = x.narrow(2, (h - size) / 2, size).narrow(3, (w - size) / 2, size);
    x = x.mul(255.0).clamp(0.0, 255.0).round().div(255.0);
  } else {
    // The official code: F.interpolate(mode='bicubic', align_corners=False) with a size, no scale
    // factors and no antialias, on [-1, 1]; then videos.mul_(0.5).add_(0.5).
    x = at::upsample_bicubic2d(x, {h, w}, /*align_corners=*/false, c10::nullopt, c10::nullopt);
    x = x.mul(0.5).add(0.5);
  }
  // T.Normalize(mean, std): sub_(mean).div_(std) in float32.
  const at::Tensor mean = at::tensor(std::vector<double>(kMean, kMean + 3)).to(device_, at::kFloat).view({1, 3, 1, 1});
  const at::Tensor std = at::tensor(std::vector<double>(kStd, kStd + 3)).to(device_, at::kFloat).view({1, 3, 1, 1});
  return x.sub(mean).div(std).contiguous();  // [1, 3, S, S]
}

at::Tensor ClipVision::forward(const at::Tensor& pixels, const std::function<bool()>& cancelled, Trace* trace) const {
  const auto& c = config_;
  check(pixels.dim() == 4 && pixels.size(1) == 3 && pixels.size(2) == c.image_size && pixels.size(3) == c.image_size,
        "forward: pixels must be [N, 3, " + std::to_string(c.image_size) + ", " + std::to_string(c.image_size) +
            "], got " + shape_text(pixels.sizes()));
  const int64_t batch = pixels.size(0);
  residency_.place(true);
  // Patch embedding: [N, 3, S, S] -> [N, dim, g, g] -> [N, g^2, dim].
  at::Tensor x =
      at::conv2d(pixels.to(device_, at::kFloat), patch_embedding_.get(at::kFloat), {}, {c.patch_size, c.patch_size});
  if (trace) (*trace)["patch_embedding_out"] = x;
  x = x.flatten(2).permute({0, 2, 1});
  // Class token in front, position embedding ([1, 1 + g^2, dim]) added, pre-norm.
  x = at::cat({cls_embedding_.get(at::kFloat).expand({batch, -1, -1}), x}, 1);  // [N, tokens, dim]
  x = x + pos_embedding_.get(at::kFloat);
  x = norm(pre_norm_, x);
  // use_31_block=True: transformer[:-1], every block but the last.
  const size_t run = blocks_.size() - 1;
  for (size_t i = 0; i < run; ++i) {
    check_cancelled(cancelled);
    x = block_forward(blocks_[i], x);
    if (trace) (*trace)["block" + std::to_string(i) + "_out"] = x;
  }
  if (trace) {  // the whole transformer too (use_31_block=False), for checking the last block's weights
    check_cancelled(cancelled);
    const at::Tensor all = block_forward(blocks_.back(), x);
    (*trace)["block" + std::to_string(run) + "_out"] = all;
    (*trace)["all_blocks"] = all;
  }
  return x;
}

at::Tensor ClipVision::encode(const std::vector<at::Tensor>& images, const ClipEncodeOptions& options,
                              const std::function<bool()>& cancelled, Trace* trace) const {
  check(!images.empty(), "encode: expected at least one image");
  std::vector<at::Tensor> pixels;
  for (const auto& image : images) pixels.push_back(preprocess(image, options.center_crop));
  const at::Tensor batch = at::cat(pixels, 0);  // [N, 3, S, S]
  if (trace) (*trace)["preprocessed"] = batch;
  const at::Tensor embeds = forward(batch, cancelled, trace);  // [N, tokens, dim]
  if (trace) (*trace)["out"] = embeds;

  // WanVideoClipVisionEncode: image i weighted by its strength, then combined.
  if (trace && !device_.is_cpu())
    for (auto& [name, value] : *trace) value = value.to(at::kCPU);
  std::vector<at::Tensor> weighted;
  for (int64_t i = 0; i < embeds.size(0); ++i) {
    const double s = static_cast<size_t>(i) < options.strengths.size() ? options.strengths[i] : 1.0;
    weighted.push_back(embeds.narrow(0, i, 1).to(at::kCPU) * s);  // [1, tokens, dim]
  }
  if (weighted.size() == 1) return weighted[0];
  switch (options.combine) {
    case ClipEncodeOptions::Combine::Average: return at::stack(weighted).mean(0);
    case ClipEncodeOptions::Combine::Sum: return at::stack(weighted).sum(0);
    case ClipEncodeOptions::Combine::Concat: return at::cat(weighted, 1);  // [1, N tokens, dim]
    case ClipEncodeOptions::Combine::Batch: return at::cat(weighted, 0);   // [N, tokens, dim]
  }
  return weighted[0];
}

// ---------------------------------------------------------------------------------------------

ClipVisionConfig infer_clip_vision_config(const std::map<std::string, std::vector<int64_t>>& shapes,
                                          const ClipVisionOverrides& overrides, const std::string& source) {
  auto shape = [&](const std::string& key) -> const std::vector<int64_t>& {
    auto it = shapes.find(key);
    if (it == shapes.end())
      throw core::bad_checkpoint(source, "not a CLIP vision encoder: no tensor '" + key +
                                             "' (or its Hugging Face / open_clip equivalent) to infer the configuration from");
    return it->second;
  };
  ClipVisionConfig c;
  const auto& patch = shape("visual.patch_embedding.weight");  // [dim, 3, p, p]
  if (patch.size() != 4 || patch[1] != 3 || patch[2] != patch[3])
    throw core::bad_checkpoint(source, "visual.patch_embedding.weight must be [dim, 3, p, p]");
  c.dim = patch[0];
  c.patch_size = patch[2];
  const auto& pos = shape("visual.pos_embedding");  // [1, 1 + g^2, dim]
  const int64_t grid = pos.size() == 3 ? static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(pos[1] - 1)))) : 0;
  if (pos.size() != 3 || grid < 1 || grid * grid + 1 != pos[1] || pos[2] != c.dim)
    throw core::bad_checkpoint(source, "visual.pos_embedding must be [1, 1 + g^2, " + std::to_string(c.dim) +
                                           "] (a class token and a square grid), got " + shape_text(pos));
  c.image_size = grid * c.patch_size;
  c.num_layers = 0;
  while (shapes.count("visual.transformer." + std::to_string(c.num_layers) + ".norm1.weight")) ++c.num_layers;
  if (c.num_layers < 1) throw core::bad_checkpoint(source, "not a CLIP vision encoder: no visual.transformer.0 block");
  c.mlp_dim = shape("visual.transformer.0.mlp.0.weight")[0];
  if (overrides.num_heads > 0) {
    c.num_heads = overrides.num_heads;
  } else if (c.dim == 1280 || c.dim == 1024) {
    c.num_heads = 16;  // ViT-H/14 (Wan's CLIP, head dim 80), ViT-L (head dim 64)
  } else if (c.dim == 768) {
    c.num_heads = 12;  // ViT-B
  } else {
    throw Error(ErrorCode::InvalidOption, source + ": numHeads cannot be inferred for a CLIP vision width of " +
                                              std::to_string(c.dim) + " (ViT-H/14 has 1280 and 16 heads); pass numHeads");
  }
  if (c.dim % c.num_heads != 0)
    throw Error(ErrorCode::InvalidOption, "numHeads: " + std::to_string(c.num_heads) + " does not divide the width " +
                                              std::to_string(c.dim));
  return c;
}

std::shared_ptr<ClipVision> load_clip_vision(const std::vector<std::string>& files, const ClipVisionOverrides& overrides,
                                             bool populate, const std::function<bool()>& cancelled, at::Device device,
                                             bool load_on_main) {
  LoadedWeights loaded = load_weights(files, populate, cancelled);
  std::string layout;
  std::map<std::string, ops::Weight> weights = to_official(std::move(loaded.weights), layout);
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& [name, w] : weights) {
    const auto sizes = w.stored.value.sizes();
    shapes[name] = std::vector<int64_t>(sizes.begin(), sizes.end());
  }
  const ClipVisionConfig config = infer_clip_vision_config(shapes, overrides, files_text(files));
  return std::make_shared<ClipVision>(config, std::move(weights), files_text(files), layout, device, load_on_main);
}

}  // namespace wan::models
