#include "io/key_map.h"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string_view>
#include <unordered_map>

#include "core/error.h"

namespace wan::io {
namespace {

// ---------------------------------------------------------------------------------------------
// Rename tables. `from` and `to` are module paths matched on whole dot-separated segments, so
// `norm2` never matches `norm2x` and whatever follows the path (`.weight`, `.scale_weight`,
// nothing for a bare parameter) is carried over unchanged.

struct Rename {
  std::string_view from, to;
};

struct Table {
  const Rename* begin = nullptr;
  size_t size = 0;
};

template <size_t N>
constexpr Table table(const Rename (&r)[N]) {
  return {r, N};
}

// A numbered scope (`blocks.7.`): `from` + index + '.' becomes `to` + index + '.', and the rest
// of the key is renamed with `tables`, first match wins.
struct Scope {
  std::string_view from, to;
  Table tables[2];
};

struct Dialect {
  std::string_view layout;
  Table top;  // keys outside every scope
  Scope scopes[2];
};

// diffusers WanTransformer3DModel -> official WanModel: the inverse of `rename_dict` in
// diffusers scripts/convert_wan_to_diffusers.py (WanTransformerConverter; the I2V added k/v
// and image embedder names from the same dict in its current version).
constexpr Rename kDiffusersTop[] = {
    {"condition_embedder.time_embedder.linear_1", "time_embedding.0"},
    {"condition_embedder.time_embedder.linear_2", "time_embedding.2"},
    {"condition_embedder.text_embedder.linear_1", "text_embedding.0"},
    {"condition_embedder.text_embedder.linear_2", "text_embedding.2"},
    {"condition_embedder.time_proj", "time_projection.1"},
    {"condition_embedder.image_embedder.norm1", "img_emb.proj.0"},
    {"condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"},
    {"condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"},
    {"condition_embedder.image_embedder.norm2", "img_emb.proj.4"},
    {"condition_embedder.image_embedder.pos_embed", "img_emb.emb_pos"},  // FLF2V
    {"scale_shift_table", "head.modulation"},
    {"proj_out", "head.head"},
};

constexpr Rename kDiffusersBlock[] = {
    {"scale_shift_table", "modulation"},
    {"attn1.to_q", "self_attn.q"},
    {"attn1.to_k", "self_attn.k"},
    {"attn1.to_v", "self_attn.v"},
    {"attn1.to_out.0", "self_attn.o"},
    {"attn1.norm_q", "self_attn.norm_q"},
    {"attn1.norm_k", "self_attn.norm_k"},
    {"attn2.to_q", "cross_attn.q"},
    {"attn2.to_k", "cross_attn.k"},
    {"attn2.to_v", "cross_attn.v"},
    {"attn2.to_out.0", "cross_attn.o"},
    {"attn2.norm_q", "cross_attn.norm_q"},
    {"attn2.norm_k", "cross_attn.norm_k"},
    // I2V image keys/values live in the cross-attention's "added" projections
    // (config added_kv_proj_dim 5120).
    {"attn2.add_k_proj", "cross_attn.k_img"},
    {"attn2.add_v_proj", "cross_attn.v_img"},
    {"attn2.norm_added_k", "cross_attn.norm_k_img"},
    // diffusers swaps norm2 and norm3: the original block applies norm1, norm3 (cross-attn,
    // the only one with weights), norm2, and diffusers numbers them in that order
    // (see convert_wan_to_diffusers.py, "Hack to swap the layer names").
    {"norm2", "norm3"},
    {"norm3", "norm2"},
    {"ffn.net.0.proj", "ffn.0"},
    {"ffn.net.2", "ffn.2"},
};

// VACE blocks are attention blocks plus two projections (WanVaceTransformerConverter:
// before_proj -> proj_in, after_proj -> proj_out).
constexpr Rename kDiffusersVaceBlock[] = {
    {"proj_in", "before_proj"},
    {"proj_out", "after_proj"},
};

// Hugging Face (U)MT5EncoderModel -> Wan T5Encoder (wan/modules/t5.py). umT5 has a relative
// attention bias in every layer, which is Wan's per-block `pos_embedding` (shared_pos=False).
// FFN: HF computes act(wi_0 x) * wi_1 x, Wan fc1(x) * gate(x) with gate = Sequential(Linear,
// GELU), so wi_0 is the gate (same mapping as WanVideoWrapper LoadWanVideoT5TextEncoder).
constexpr Rename kHfT5Top[] = {
    {"shared", "token_embedding"},
    {"encoder.embed_tokens", "token_embedding"},  // tied to `shared`; see normalize_keys
    {"encoder.final_layer_norm", "norm"},
};

constexpr Rename kHfT5Block[] = {
    {"layer.0.SelfAttention.q", "attn.q"},
    {"layer.0.SelfAttention.k", "attn.k"},
    {"layer.0.SelfAttention.v", "attn.v"},
    {"layer.0.SelfAttention.o", "attn.o"},
    {"layer.0.SelfAttention.relative_attention_bias", "pos_embedding.embedding"},
    {"layer.0.layer_norm", "norm1"},
    {"layer.1.DenseReluDense.wi_0", "ffn.gate.0"},
    {"layer.1.DenseReluDense.wi_1", "ffn.fc1"},
    {"layer.1.DenseReluDense.wo", "ffn.fc2"},
    {"layer.1.layer_norm", "norm2"},
};

constexpr Dialect kDiffusers = {
    "diffusers",
    table(kDiffusersTop),
    {{"blocks.", "blocks.", {table(kDiffusersBlock), {}}},
     {"vace_blocks.", "vace_blocks.", {table(kDiffusersVaceBlock), table(kDiffusersBlock)}}},
};

constexpr Dialect kHfT5 = {
    "hf-t5",
    table(kHfT5Top),
    {{"encoder.block.", "blocks.", {table(kHfT5Block), {}}}, {}},
};

// ComfyUI prefixes of the diffusion model (CUI-vend model_detection.py, WVW-load); the first
// one any key carries is stripped.
constexpr std::string_view kDitPrefixes[] = {"model.diffusion_model.", "diffusion_model."};

// Prefixes of the other components of a ComfyUI all-in-one checkpoint. None of them begins an
// official Wan key, so setting them aside can never hide a DiT, VAE, T5 or CLIP tensor.
constexpr std::string_view kComponentPrefixes[] = {
    "vae.",         "first_stage_model.", "text_encoders.", "cond_stage_model.",
    "clip_vision.", "conditioner.",
};

// Stripped when every (non-marker) key has it.
constexpr std::string_view kWholeFilePrefixes[] = {"model.", "vae.", "first_stage_model."};

constexpr std::string_view kScaledFp8Marker = "scaled_fp8";  // ComfyUI model_detection.py
constexpr std::string_view kModelTypeMarker =
    "model_type.";  // e.g. model_type.Wan2_1-FLF2V-14B-720P

// ---------------------------------------------------------------------------------------------

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

// Marker keys hold no weights: bare names without a dot (`scaled_fp8`, `spiece_model`) and
// `model_type.*`. They are ignored when deciding whether every key shares a prefix.
bool is_marker_like(std::string_view key) {
  return key.find('.') == std::string_view::npos || starts_with(key, kModelTypeMarker);
}

// `path` renamed by the first entry of `t` that covers whole segments of it.
std::optional<std::string> rename_in(std::string_view path, Table t) {
  for (size_t i = 0; i < t.size; ++i) {
    const Rename& r = t.begin[i];
    if (!starts_with(path, r.from)) continue;
    if (path.size() != r.from.size() && path[r.from.size()] != '.') continue;
    return std::string(r.to) + std::string(path.substr(r.from.size()));
  }
  return std::nullopt;
}

// Length of `scope` + digits + '.', or 0 when `key` does not start that way.
size_t scope_length(std::string_view key, std::string_view scope) {
  if (scope.empty() || !starts_with(key, scope)) return 0;
  size_t i = scope.size();
  const size_t digits_begin = i;
  while (i < key.size() && key[i] >= '0' && key[i] <= '9') ++i;
  if (i == digits_begin || i >= key.size() || key[i] != '.') return 0;
  return i + 1;
}

std::string rename_key(std::string_view key, const Dialect& d) {
  for (const Scope& s : d.scopes) {
    const size_t n = scope_length(key, s.from);
    if (n == 0) continue;
    const std::string_view index = key.substr(s.from.size(), n - s.from.size());  // "7."
    const std::string_view rest = key.substr(n);
    for (const Table& t : s.tables)
      if (auto renamed = rename_in(rest, t))
        return std::string(s.to) + std::string(index) + *renamed;
    return std::string(s.to) + std::string(index) + std::string(rest);
  }
  if (auto renamed = rename_in(key, d.top)) return *renamed;
  return std::string(key);
}

bool has_block_key(const std::vector<std::string>& keys, std::string_view scope,
                   std::string_view what) {
  for (const auto& k : keys) {
    const size_t n = scope_length(k, scope);
    if (n != 0 && starts_with(std::string_view(k).substr(n), what)) return true;
  }
  return false;
}

// Which naming the (prefix-stripped) keys use. Each test looks for names that no official
// Wan module has, so official files are never renamed by accident.
std::string_view detect_layout(const std::vector<std::string>& keys) {
  auto any = [&](auto pred) { return std::any_of(keys.begin(), keys.end(), pred); };
  if (any([](const std::string& k) { return starts_with(k, "condition_embedder."); }) ||
      has_block_key(keys, "blocks.", "attn1.") || has_block_key(keys, "blocks.", "attn2."))
    return "diffusers";
  if (any([](const std::string& k) {
        return starts_with(k, "encoder.block.") || k == "shared.weight" ||
               k == "encoder.final_layer_norm.weight";
      }))
    return "hf-t5";
  if (any([](const std::string& k) { return starts_with(k, "vision_model."); })) return "hf-clip";
  if (any([](const std::string& k) { return starts_with(k, "visual.transformer.resblocks."); }))
    return "open-clip";
  if (any([](const std::string& k) {
        return starts_with(k, "decoder.mid_block.") || starts_with(k, "encoder.down_blocks.") ||
               k == "post_quant_conv.weight";
      }))
    return "diffusers-vae";
  return "official";
}

std::string_view last_segment(std::string_view key) {
  const size_t dot = key.rfind('.');
  return dot == std::string_view::npos ? key : key.substr(dot + 1);
}

std::string_view layer_of(std::string_view key) {
  const size_t dot = key.rfind('.');
  return dot == std::string_view::npos ? std::string_view() : key.substr(0, dot);
}

}  // namespace

NormalizedCheckpoint normalize_keys(const ParsedCheckpoint& in, const std::string& file) {
  NormalizedCheckpoint out;

  // 1. Prefixes: pick the DiT prefix, set the other components of all-in-one files aside.
  std::string_view prefix;
  for (std::string_view p : kDitPrefixes) {
    if (std::any_of(in.tensors.begin(), in.tensors.end(),
                    [&](const TensorRecord& r) { return starts_with(r.name, p); })) {
      prefix = p;
      break;
    }
  }
  std::vector<const TensorRecord*> primary, aside;
  std::vector<std::string> names;  // primary names, prefix stripped
  for (const TensorRecord& r : in.tensors) {
    if (!prefix.empty() && starts_with(r.name, prefix)) {
      primary.push_back(&r);
      names.push_back(r.name.substr(prefix.size()));
      continue;
    }
    auto component = std::find_if(std::begin(kComponentPrefixes), std::end(kComponentPrefixes),
                                  [&](std::string_view c) { return starts_with(r.name, c); });
    if (component != std::end(kComponentPrefixes)) {
      aside.push_back(&r);
      if (std::find(out.other_components.begin(), out.other_components.end(), *component) ==
          out.other_components.end())
        out.other_components.emplace_back(*component);
      continue;
    }
    primary.push_back(&r);
    names.push_back(r.name);
  }
  // A file that is nothing but one component (a VAE saved as `vae.*`) is that component.
  if (prefix.empty() && primary.empty() && out.other_components.size() == 1) {
    for (const TensorRecord* r : aside) {
      primary.push_back(r);
      names.push_back(r->name);
    }
    aside.clear();
    out.other_components.clear();
  }
  for (const TensorRecord* r : aside) out.set_aside.push_back(*r);
  if (prefix.empty()) {
    for (std::string_view p : kWholeFilePrefixes) {
      bool any = false, all = true;
      for (const auto& n : names) {
        if (is_marker_like(n) && !starts_with(n, p)) continue;
        if (starts_with(n, p))
          any = true;
        else
          all = false;
      }
      if (!any || !all) continue;
      prefix = p;
      for (auto& n : names)
        if (starts_with(n, p)) n.erase(0, p.size());
      break;
    }
  }
  out.stripped_prefix = std::string(prefix);

  // 2. Dialect.
  const std::string_view layout = detect_layout(names);
  const Dialect* dialect = layout == "diffusers" ? &kDiffusers
                           : layout == "hf-t5"   ? &kHfT5
                                                 : nullptr;
  if (dialect)
    out.layout = std::string(layout);
  else if (layout != "official")
    out.layout = std::string(layout);
  else
    out.layout = prefix.empty() || prefix == "vae." || prefix == "first_stage_model." ? "official"
                                                                                      : "comfyui";

  // HF stores the umT5 token embedding as `shared` and, when tied weights were not
  // deduplicated on save, again as `encoder.embed_tokens`: keep `shared`. (Different shapes
  // are not a tie; both then map to token_embedding.weight and are refused below.)
  const auto shared = std::find(names.begin(), names.end(), "shared.weight");
  const TensorRecord* shared_record =
      shared == names.end() ? nullptr : primary[shared - names.begin()];

  // 3. Names; markers out.
  std::vector<std::string> canonical(names.size());
  std::vector<bool> keep(names.size(), true);
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string& n = names[i];
    const TensorRecord& r = *primary[i];
    if (n == kScaledFp8Marker) {
      // Its dtype names the fp8 format (float32 means e4m3fn); two elements mean "do not run
      // the matmul in fp8" (ComfyUI model_detection.py).
      auto& q = out.quantization;
      q.scaled_fp8_marker = true;
      q.scaled_fp8_dtype =
          r.dtype == core::DType::F8_E5M2 ? core::DType::F8_E5M2 : core::DType::F8_E4M3FN;
      q.fp8_matmul_allowed = element_count(r.shape) != 2;
      keep[i] = false;
    } else if (starts_with(n, kModelTypeMarker)) {
      keep[i] = false;
    } else if (dialect == &kHfT5 && shared_record && n == "encoder.embed_tokens.weight" &&
               shared_record->shape == r.shape) {
      keep[i] = false;
    }
    if (!keep[i]) {
      out.dropped.push_back(r.name);
      continue;
    }
    canonical[i] = dialect ? rename_key(n, *dialect) : n;
  }

  // 4. Quantization scale names. Other tools write `.weight_scale` / `.input_scale` for what
  // ComfyUI calls `.scale_weight` / `.scale_input` (WanVideoWrapper renames them on load). In
  // ComfyUI's own mixed-precision format (a `.comfy_quant` config per layer) they are native
  // names. Its fp8 layers (an fp8 weight, one `weight_scale`, no `weight_scale_2`) are ComfyUI's
  // scaled fp8 under those names: their config goes and their scales are renamed. Its other
  // layers (nvfp4, block scales) are left alone, for the loader to refuse by name.
  struct LayerParts {
    const TensorRecord *weight = nullptr, *weight_scale = nullptr;
    size_t comfy_quant = SIZE_MAX;  // index of its config
    bool weight_scale_2 = false;
  };
  std::map<std::string, LayerParts, std::less<>> layers;
  for (size_t i = 0; i < names.size(); ++i) {
    if (!keep[i]) continue;
    const std::string_view seg = last_segment(canonical[i]);
    LayerParts& l = layers[std::string(layer_of(canonical[i]))];
    if (seg == "weight") l.weight = primary[i];
    if (seg == "weight_scale") l.weight_scale = primary[i];
    if (seg == "weight_scale_2") l.weight_scale_2 = true;
    if (seg == "comfy_quant") l.comfy_quant = i;
  }
  std::set<std::string, std::less<>> comfy_quant_layers;
  for (const auto& [layer, l] : layers) {
    if (l.comfy_quant == SIZE_MAX && !l.weight_scale_2) continue;
    const bool plain_fp8 = l.comfy_quant != SIZE_MAX && !l.weight_scale_2 && l.weight &&
                           (l.weight->dtype == core::DType::F8_E4M3FN || l.weight->dtype == core::DType::F8_E5M2) &&
                           (!l.weight_scale || element_count(l.weight_scale->shape) == 1);
    if (!plain_fp8) {
      comfy_quant_layers.insert(layer);
      continue;
    }
    keep[l.comfy_quant] = false;
    out.dropped.push_back(primary[l.comfy_quant]->name);
    ++out.quantization.comfy_quant;
  }
  std::vector<bool> renamed_scale(names.size(), false);
  for (size_t i = 0; i < names.size(); ++i) {
    if (!keep[i]) continue;
    std::string& c = canonical[i];
    const std::string layer(layer_of(c));
    const std::string seg(last_segment(c));
    if (layer.empty() || comfy_quant_layers.count(layer)) continue;
    if (seg == "weight_scale" || seg == "input_scale") {
      c = layer + (seg == "weight_scale" ? ".scale_weight" : ".scale_input");
      renamed_scale[i] = true;
    }
  }

  // 5. Records, refusing two sources for one name.
  std::unordered_map<std::string, size_t> source_of;
  source_of.reserve(names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    if (!keep[i]) continue;
    auto [it, inserted] = source_of.emplace(canonical[i], i);
    if (!inserted)
      throw core::bad_checkpoint(file, "tensors '" + primary[it->second]->name + "' and '" +
                                           primary[i]->name + "' both map to '" + canonical[i] +
                                           "'");
    TensorRecord r = *primary[i];
    r.name = canonical[i];
    const std::string_view seg = last_segment(r.name);
    auto& q = out.quantization;
    if (seg == "scale_weight" && r.name.size() > seg.size()) ++q.scale_weight;
    if (seg == "scale_input" && r.name.size() > seg.size()) ++q.scale_input;
    if (seg == "comfy_quant") ++q.comfy_quant;
    if (renamed_scale[i]) ++q.renamed_scales;
    out.tensors.push_back(std::move(r));
  }
  return out;
}

}  // namespace wan::io
