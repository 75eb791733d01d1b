#include "io/checkpoint_info.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <optional>
#include <set>
#include <string_view>

#include "core/dtype.h"
#include "io/key_map.h"

namespace wan::io {
namespace {

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

// Lookups over the normalised records.
class Keys {
 public:
  explicit Keys(const std::vector<TensorRecord>& records) {
    for (const auto& r : records) by_name_.emplace(r.name, &r);
  }

  const TensorRecord* find(std::string_view name) const {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : it->second;
  }
  bool has(std::string_view name) const { return find(name) != nullptr; }

  // shape[axis] of `name` (negative axes count from the end), if the tensor and axis exist.
  std::optional<int64_t> dim(std::string_view name, int axis) const {
    const TensorRecord* r = find(name);
    if (!r) return std::nullopt;
    const int rank = static_cast<int>(r->shape.size());
    if (axis < 0) axis += rank;
    if (axis < 0 || axis >= rank) return std::nullopt;
    return r->shape[axis];
  }

  // The distinct N of keys `scope` + N + ".".
  std::set<int64_t> indices(std::string_view scope) const {
    std::set<int64_t> out;
    for (auto it = by_name_.lower_bound(scope);
         it != by_name_.end() && starts_with(it->first, scope); ++it) {
      std::string_view rest = std::string_view(it->first).substr(scope.size());
      size_t i = 0;
      int64_t n = 0;
      while (i < rest.size() && i < 9 && rest[i] >= '0' && rest[i] <= '9')
        n = n * 10 + (rest[i++] - '0');
      if (i > 0 && i < rest.size() && rest[i] == '.') out.insert(n);
    }
    return out;
  }

  size_t count_prefix(std::string_view p) const {
    size_t n = 0;
    for (auto it = by_name_.lower_bound(p); it != by_name_.end() && starts_with(it->first, p); ++it)
      ++n;
    return n;
  }

 private:
  std::map<std::string, const TensorRecord*, std::less<>> by_name_;
};

void put(CheckpointInfo& info, const char* key, std::optional<int64_t> value) {
  if (value) info.config.emplace_back(key, *value);
}

std::string num(int64_t v) { return std::to_string(v); }

// Layers counted from `scope`; warns when the indices are not 0..n-1 (a partial shard).
int64_t count_layers(const Keys& k, std::string_view scope, CheckpointInfo& info) {
  const auto idx = k.indices(scope);
  if (!idx.empty() && (*idx.begin() != 0 || *idx.rbegin() != static_cast<int64_t>(idx.size()) - 1))
    info.warnings.push_back(std::string(scope) + "N indices are not 0.." +
                            num(static_cast<int64_t>(idx.size()) - 1) + " (" + num(*idx.begin()) +
                            ".." + num(*idx.rbegin()) + "): a partial or pruned file?");
  return static_cast<int64_t>(idx.size());
}

// ----------------------------------------------------------------------------------------- DiT

// Weights of Wan variants that wan-native does not run (anchors c.1, "Fun / camera / other").
struct Extension {
  std::string_view key;  // prefix of a top-level key, or ".x." inside blocks
  std::string_view what;
};

constexpr Extension kDitExtensions[] = {
    {"control_adapter.", "Fun camera control adapter"},
    {"ref_conv.", "Fun 1.1 reference conv"},
    {"fps_embedding.", "SkyReels fps embedding"},
    {".cam_encoder.", "ReCamMaster camera encoder"},
    {"pose_patch_embedding.", "Wan-Animate pose embedding"},
    {"face_adapter.", "Wan-Animate face adapter"},
    {"casual_audio_encoder.", "S2V audio encoder"},
    {"audio_injector.", "S2V audio injector"},
    {"audio_proj.", "HuMo audio projection"},
    {"multitalk_audio_proj.", "MultiTalk/InfiniteTalk audio projection"},
    {".audio_cross_attn.", "MultiTalk/InfiniteTalk audio cross-attention"},
    {"proj_model.", "FantasyTalking projection"},
};

struct DitRelease {
  int64_t dim, ffn_dim, num_layers;
  const char* variant;
};

// Wan2.1 1.3B/14B (and Wan2.2 A14B experts, same shapes), Wan2.2 TI2V-5B (anchors c.3).
constexpr DitRelease kDitReleases[] = {
    {1536, 8960, 30, "1.3B"},
    {5120, 13824, 40, "14B"},
    {3072, 14336, 30, "5B"},
};

void inspect_dit(const Keys& k, const std::vector<TensorRecord>& records, CheckpointInfo& info) {
  info.family = "wan-dit";
  const bool vace = k.has("vace_patch_embedding.weight");
  if (!k.has("patch_embedding.weight") && vace)
    info.warnings.push_back(
        "holds only VACE module weights (vace_*); load it together with a T2V model");

  std::optional<int64_t> dim = k.dim("patch_embedding.weight", 0);
  if (!dim) dim = k.dim("head.modulation", -1);
  if (!dim) dim = k.dim("vace_patch_embedding.weight", 0);
  const auto in_dim = k.dim("patch_embedding.weight", 1);
  const auto pt = k.dim("patch_embedding.weight", 2), ph = k.dim("patch_embedding.weight", 3),
             pw = k.dim("patch_embedding.weight", 4);
  std::optional<int64_t> out_dim;
  if (auto head = k.dim("head.head.weight", 0)) {
    const int64_t patch = pt && ph && pw ? *pt * *ph * *pw : 4;  // patch (1, 2, 2) by default
    if (patch > 0 && *head % patch == 0) out_dim = *head / patch;
  }
  const auto ffn_dim = k.dim("blocks.0.ffn.0.weight", 0);
  const int64_t layers = count_layers(k, "blocks.", info);

  const DitRelease* release = nullptr;
  for (const auto& r : kDitReleases)
    if (dim && *dim == r.dim) release = &r;
  info.variant = release ? release->variant : dim ? "tiny" : "";

  put(info, "dim", dim);
  put(info, "in_dim", in_dim);
  put(info, "out_dim", out_dim);
  put(info, "ffn_dim", ffn_dim);
  put(info, "freq_dim", k.dim("time_embedding.0.weight", 1));
  put(info, "text_dim", k.dim("text_embedding.0.weight", 1));
  if (release) {
    // Head dim 128 in every release (CUI-vend, WVW-load); text_len is a training constant.
    put(info, "num_heads", *dim / 128);
    put(info, "text_len", 512);
    info.warnings.push_back("text_len is not stored in the weights; assuming 512");
  } else if (dim) {
    info.warnings.push_back(
        "dim " + num(*dim) +
        " matches no Wan release: num_heads and text_len are not stored in the weights; "
        "take them from the model's config (the golden tiny models use head dim 32)");
  }
  put(info, "num_layers", layers);
  put(info, "patch_t", pt);
  put(info, "patch_h", ph);
  put(info, "patch_w", pw);
  if (layers > 0) {
    put(info, "qk_norm", k.has("blocks.0.self_attn.norm_q.weight") ? 1 : 0);
    put(info, "cross_attn_norm", k.has("blocks.0.norm3.weight") ? 1 : 0);
  }
  const bool img_emb = k.has("img_emb.proj.0.weight") || k.has("img_emb.proj.0.bias");
  put(info, "image_dim", k.dim("img_emb.proj.0.weight", 0));
  put(info, "flf_pos_tokens", k.dim("img_emb.emb_pos", 1));
  if (vace) {
    put(info, "vace_in_dim", k.dim("vace_patch_embedding.weight", 1));
    put(info, "vace_layers", count_layers(k, "vace_blocks.", info));
  }

  if (release &&
      ((ffn_dim && *ffn_dim != release->ffn_dim) || (layers && layers != release->num_layers)))
    info.warnings.push_back("dim " + num(release->dim) + " but ffn_dim " +
                            (ffn_dim ? num(*ffn_dim) : "?") + " and " + num(layers) +
                            " layers (the " + release->variant + " release has " +
                            num(release->ffn_dim) + " and " + num(release->num_layers) + ")");
  if (!k.has("text_embedding.0.weight") && k.has("patch_embedding.weight"))
    info.warnings.push_back(
        "no text_embedding: a model without text cross-attention (e.g. MiniMax remover)");

  std::vector<std::string> extensions;
  for (const auto& e : kDitExtensions) {
    const bool inside = e.key.front() == '.';
    const bool found = std::any_of(records.begin(), records.end(), [&](const TensorRecord& r) {
      return inside ? r.name.find(e.key) != std::string::npos : starts_with(r.name, e.key);
    });
    if (found) extensions.emplace_back(e.what);
  }
  for (const auto& what : extensions)
    info.warnings.push_back("holds " + what + " weights: a Wan variant wan-native does not run");

  // Model type, in ComfyUI's order of precedence (model_detection.py): VACE first.
  if (vace)
    info.task = "vace";
  else if (!extensions.empty())
    info.task = "";
  else if (k.has("img_emb.emb_pos"))
    info.task = "flf2v";
  else if (img_emb)
    info.task = "i2v";
  else if (in_dim && *in_dim == 16)
    info.task = "t2v";
  else if (in_dim && *in_dim == 36) {
    info.task = "i2v";
    info.warnings.push_back(
        "in_dim 36 without img_emb: a Wan2.2 I2V-A14B expert (no CLIP image branch)");
  } else if (in_dim) {
    info.warnings.push_back("in_dim " + num(*in_dim) +
                            ": a Wan2.2 TI2V-5B or Fun control/inpaint model");
  }
}

// ----------------------------------------------------------------------------------------- VAE

struct VaeNames {
  std::string_view layout, encoder_in, decoder_in, post_quant;
};

constexpr VaeNames kVaeNames[] = {
    {"official", "encoder.conv1.weight", "decoder.conv1.weight", "conv2.weight"},
    // diffusers AutoencoderKLWan (convert_wan_to_diffusers.py convert_vae), not renamed.
    {"diffusers-vae", "encoder.conv_in.weight", "decoder.conv_in.weight", "post_quant_conv.weight"},
};

void inspect_vae(const Keys& k, const std::string& layout, CheckpointInfo& info) {
  info.family = "wan-vae";
  const VaeNames& n = layout == "diffusers-vae" ? kVaeNames[1] : kVaeNames[0];
  // Wan2.2's VAE nests its upsampling resblocks one level deeper (ComfyUI sd.py).
  const bool v22 = k.has("decoder.upsamples.0.upsamples.0.residual.2.weight");
  info.variant = v22 ? "wan2.2" : "wan2.1";
  const auto dim = k.dim(n.encoder_in, 0), z_dim = k.dim(n.post_quant, 0),
             decoder_dim = k.dim(n.decoder_in, 0);
  put(info, "dim", dim);
  put(info, "z_dim", z_dim);
  put(info, "decoder_dim", decoder_dim);
  const bool release = v22 ? dim == 160 && z_dim == 48 : dim == 96 && z_dim == 16;
  if (dim && z_dim && !release)
    info.warnings.push_back("dim " + num(*dim) + ", z_dim " + num(*z_dim) +
                            " match no released VAE");
  // dim_mult ends in 4 in both releases; a narrower decoder is a pruned one (WVW lightVAE).
  if (dim && decoder_dim && *decoder_dim != 4 * *dim)
    info.warnings.push_back("decoder width " + num(*decoder_dim) +
                            " is not 4 x dim: a pruned (lightVAE-style) decoder");
  if (layout == "diffusers-vae")
    info.warnings.push_back(
        "diffusers VAE names are not renamed; the Wan VAE loader needs the original names");
}

// ---------------------------------------------------------------------------------------- umT5

void inspect_umt5(const Keys& k, const std::string& layout, CheckpointInfo& info) {
  info.family = "umt5";
  const auto vocab = k.dim("token_embedding.weight", 0), dim = k.dim("token_embedding.weight", 1);
  const int64_t layers = count_layers(k, "blocks.", info);
  // Wan T5: relative position bias [num_buckets, num_heads], per block unless shared_pos.
  const bool shared_pos = k.has("pos_embedding.embedding.weight");
  const char* pos =
      shared_pos ? "pos_embedding.embedding.weight" : "blocks.0.pos_embedding.embedding.weight";
  put(info, "vocab_size", vocab);
  put(info, "dim", dim);
  put(info, "dim_attn", k.dim("blocks.0.attn.q.weight", 0));
  put(info, "dim_ffn", k.dim("blocks.0.ffn.fc1.weight", 0));
  put(info, "num_heads", k.dim(pos, 1));
  put(info, "num_buckets", k.dim(pos, 0));
  put(info, "num_layers", layers);
  put(info, "shared_pos", shared_pos ? 1 : 0);
  if (const TensorRecord* sp = k.find("spiece_model"))
    put(info, "spiece_model_bytes", static_cast<int64_t>(sp->nbytes));
  info.variant = dim == 4096 && layers == 24 && vocab == 256384 ? "xxl" : dim ? "tiny" : "";
  if (!k.has(pos)) info.warnings.push_back("no relative position bias found: num_heads is unknown");
  int64_t with_bias = 0;
  for (int64_t i : k.indices("blocks."))
    with_bias += k.has("blocks." + num(i) + ".pos_embedding.embedding.weight");
  if (!shared_pos && with_bias > 0 && with_bias < layers)
    info.warnings.push_back("relative attention bias in " + num(with_bias) + " of " + num(layers) +
                            " layers: a T5 (not umT5) encoder, which Wan does not use");
  if (layout == "hf-t5" && k.count_prefix("decoder."))
    info.warnings.push_back("holds " + num(static_cast<int64_t>(k.count_prefix("decoder."))) +
                            " decoder tensors; only the encoder is used");
}

// ---------------------------------------------------------------------------------------- CLIP

struct ClipNames {
  std::string_view layout;
  std::string_view patch_embedding;  // [dim, 3, patch, patch]
  std::string_view pos_embedding;    // tokens on axis pos_axis
  int pos_axis;
  std::string_view blocks;      // "<blocks>N."
  std::string_view mlp_in;      // inside a block: [mlp_dim, dim]
  std::string_view projection;  // embed_dim on axis projection_axis
  int projection_axis;
};

constexpr ClipNames kClipNames[] = {
    // Wan's own XLMRobertaCLIP (wan/modules/clip.py), the official .pth.
    {"official", "visual.patch_embedding.weight", "visual.pos_embedding", 1, "visual.transformer.",
     "mlp.0.weight", "visual.head", 1},
    // Hugging Face CLIPVisionModelWithProjection (Comfy-Org clip_vision_h.safetensors).
    {"hf-clip", "vision_model.embeddings.patch_embedding.weight",
     "vision_model.embeddings.position_embedding.weight", 0, "vision_model.encoder.layers.",
     "mlp.fc1.weight", "visual_projection.weight", 0},
    // open_clip VisionTransformer.
    {"open-clip", "visual.conv1.weight", "visual.positional_embedding", 0,
     "visual.transformer.resblocks.", "mlp.c_fc.weight", "visual.proj", 1},
};

void inspect_clip(const Keys& k, const ClipNames& n, CheckpointInfo& info) {
  info.family = "clip-vision";
  const auto dim = k.dim(n.patch_embedding, 0), patch = k.dim(n.patch_embedding, 2);
  const int64_t layers = count_layers(k, n.blocks, info);
  std::optional<int64_t> image_size;
  if (auto tokens = k.dim(n.pos_embedding, n.pos_axis); tokens && patch && *tokens > 1) {
    const auto side =
        static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(*tokens - 1))));
    if (side * side == *tokens - 1) image_size = side * *patch;  // one class token + side^2 patches
  }
  put(info, "vision_dim", dim);
  put(info, "patch_size", patch);
  put(info, "image_size", image_size);
  put(info, "vision_layers", layers);
  put(info, "vision_mlp_dim", k.dim(std::string(n.blocks) + "0." + std::string(n.mlp_in), 0));
  if (dim == 1280)
    put(info, "vision_heads", 16);  // ViT-H/14: head dim 80
  else if (dim)
    info.warnings.push_back("vision_dim " + num(*dim) +
                            " is not ViT-H's: vision_heads is not stored in the weights");
  put(info, "embed_dim", k.dim(n.projection, n.projection_axis));
  if (n.layout == "official") {
    put(info, "vocab_size", k.dim("textual.token_embedding.weight", 0));
    put(info, "text_dim", k.dim("textual.token_embedding.weight", 1));
    if (k.has("textual.token_embedding.weight"))
      put(info, "text_layers", count_layers(k, "textual.blocks.", info));
    put(info, "max_text_len", k.dim("textual.pos_embedding.weight", 0));
  } else {
    info.warnings.push_back(std::string(n.layout) +
                            " names are not renamed (Wan's CLIP fuses q/k/v into to_qkv); the CLIP "
                            "loader must convert");
  }
  info.variant = dim == 1280 && patch == 14 && layers == 32 ? "vit-h-14" : dim ? "tiny" : "";
}

// -------------------------------------------------------------------------------- quantization

std::string fp8_name(core::DType t) {
  return t == core::DType::F8_E5M2 ? "fp8_e5m2" : "fp8_e4m3fn";
}

bool is_fp8(core::DType t) { return t == core::DType::F8_E4M3FN || t == core::DType::F8_E5M2; }

void inspect_quantization(const NormalizedCheckpoint& n, const Keys& k, CheckpointInfo& info) {
  const QuantizationFacts& q = n.quantization;
  std::set<core::DType> fp8;
  bool int8 = false;
  int64_t unscaled = 0;
  for (const auto& r : n.tensors) {
    if (is_fp8(r.dtype)) {
      fp8.insert(r.dtype);
      const std::string_view name = r.name;
      if (name.size() > 7 && name.substr(name.size() - 7) == ".weight" &&
          !k.has(std::string(name.substr(0, name.size() - 7)) + ".scale_weight"))
        ++unscaled;
    }
    if (r.dtype == core::DType::I8 && r.shape.size() >= 2) int8 = true;
  }
  const bool scaled = q.scaled_fp8_marker || q.scale_weight > 0;
  if (q.comfy_quant > 0)
    info.quantization = "comfy_quant";
  else if (fp8.size() > 1)
    info.quantization = "mixed";
  else if (fp8.size() == 1)
    info.quantization = fp8_name(*fp8.begin()) + (scaled ? "_scaled" : "");
  else if (int8)
    info.quantization = scaled ? "int8_scaled" : "int8";
  else
    info.quantization = "none";

  if (scaled && fp8.empty() && !int8 && q.comfy_quant == 0)
    info.warnings.push_back("scale tensors present but no fp8 weights");
  if (q.scaled_fp8_marker && q.scaled_fp8_dtype && fp8.size() == 1 &&
      *fp8.begin() != *q.scaled_fp8_dtype)
    info.warnings.push_back("the scaled_fp8 marker names " + fp8_name(*q.scaled_fp8_dtype) +
                            " but the weights are " + fp8_name(*fp8.begin()));
  if (q.scaled_fp8_marker && !q.fp8_matmul_allowed)
    info.warnings.push_back(
        "the scaled_fp8 marker has 2 elements: its producer disabled fp8 matmul");
  if (scaled && unscaled > 0 && q.comfy_quant == 0)
    info.warnings.push_back(num(unscaled) + " fp8 weights have no scale_weight (scale 1 assumed)");
}

std::string format_count(int64_t v) {
  std::string s = std::to_string(v), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i > 0 && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

std::string format_params(int64_t v) {
  const double d = static_cast<double>(v);
  char buf[32];
  if (v >= 1000000000)
    std::snprintf(buf, sizeof buf, "%.2f B", d / 1e9);
  else if (v >= 1000000)
    std::snprintf(buf, sizeof buf, "%.1f M", d / 1e6);
  else if (v >= 1000)
    std::snprintf(buf, sizeof buf, "%.1f K", d / 1e3);
  else
    return std::to_string(v);
  return buf;
}

}  // namespace

CheckpointInfo inspect_checkpoint(const ParsedCheckpoint& in, const std::string& file) {
  const NormalizedCheckpoint n = normalize_keys(in, file);
  CheckpointInfo info;
  info.layout = n.layout;
  info.key_prefix = n.stripped_prefix;
  info.num_tensors = static_cast<int64_t>(in.tensors.size());
  for (const auto& r : in.tensors) {
    ++info.dtypes[std::string(core::dtype_name(r.dtype))];
    const int64_t e = element_count(r.shape);
    info.num_params = e > INT64_MAX - info.num_params ? INT64_MAX : info.num_params + e;
  }

  const Keys k(n.tensors);
  const auto clip = std::find_if(std::begin(kClipNames), std::end(kClipNames),
                                 [&](const ClipNames& c) { return k.has(c.patch_embedding); });
  if (k.has("patch_embedding.weight") || k.has("vace_patch_embedding.weight"))
    inspect_dit(k, n.tensors, info);
  else if (k.has("decoder.middle.0.residual.0.gamma") || n.layout == "diffusers-vae" ||
           (k.has("encoder.conv1.weight") && k.has("decoder.conv1.weight") &&
            k.has("conv2.weight")))
    inspect_vae(k, n.layout, info);
  else if (k.has("token_embedding.weight") &&
           (k.has("blocks.0.attn.q.weight") || k.has("blocks.0.ffn.fc1.weight")))
    inspect_umt5(k, n.layout, info);
  else if (clip != std::end(kClipNames))
    inspect_clip(k, *clip, info);
  else {
    info.family = "unknown";
    info.warnings.push_back("no Wan DiT, Wan VAE, umT5 or CLIP key pattern found");
  }

  inspect_quantization(n, k, info);

  if (!n.other_components.empty()) {
    std::string parts;
    for (const auto& c : n.other_components) {
      const auto count =
          std::count_if(n.set_aside.begin(), n.set_aside.end(),
                        [&](const TensorRecord& r) { return starts_with(r.name, c); });
      parts += (parts.empty() ? "" : ", ") + c + "* (" + num(count) + " tensors)";
    }
    info.warnings.push_back(
        "all-in-one file: also holds " + parts + "; only the " +
        (n.stripped_prefix.empty() ? std::string("unprefixed") : "'" + n.stripped_prefix + "'") +
        " part is described");
  }
  return info;
}

std::string describe(const CheckpointInfo& info) {
  std::string s;
  auto line = [&](const char* label, const std::string& value) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "%-14s", label);
    s += buf + value + "\n";
  };
  std::string what = info.family;
  if (!info.variant.empty() || !info.task.empty()) {
    what += " (";
    what += info.variant;
    if (!info.variant.empty() && !info.task.empty()) what += ", ";
    what += info.task + ")";
  }
  line("model", what);
  line("layout",
       info.layout + (info.key_prefix.empty() ? "" : " (prefix '" + info.key_prefix + "')"));
  line("quantization", info.quantization);
  line("tensors", format_count(info.num_tensors));
  line("parameters", format_count(info.num_params) + " (" + format_params(info.num_params) + ")");
  std::string dtypes;
  for (const auto& [name, count] : info.dtypes)
    dtypes += (dtypes.empty() ? "" : ", ") + name + " x" + num(count);
  line("dtypes", dtypes.empty() ? "-" : dtypes);
  if (!info.config.empty()) {
    s += "config\n";
    for (const auto& [key, value] : info.config) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "  %-20s", key.c_str());
      s += buf + num(value) + "\n";
    }
  }
  if (!info.warnings.empty()) {
    s += "warnings\n";
    for (const auto& w : info.warnings) s += "  - " + w + "\n";
  }
  return s;
}

}  // namespace wan::io
