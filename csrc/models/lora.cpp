#include "models/lora.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "io/key_map.h"
#include "io/loader.h"
#include "ops/quantize.h"

namespace wan::models {
namespace {

using core::DType;
using core::Error;
using core::shape_text;
using core::ErrorCode;

// ---------------------------------------------------------------------------------------------
// Key families (anchors.md c.7; the wrapper's standardize_lora_key_format and ComfyUI's
// comfy/lora.py read them the same way). A key is <prefix><module path><suffix>:
//   prefix   `diffusion_model.`, `model.diffusion_model.` (ComfyUI), `transformer.` (diffusers,
//            finetrainers), `pipe.dit.` (DiffSynth), `base_model.model.` (PEFT), none; or, with
//            the path's dots written as underscores, `lora_unet_` (kohya, ComfyUI),
//            `lora_unet__` (VideoX-Fun), `lycoris_` (SimpleTuner), `lora_transformer_` (OneTrainer);
//   path     official names, or diffusers names (`attn1.to_q`, `ffn.net.0.proj`, ...), renamed
//            by io::normalize_keys; PEFT's adapter segment `.default.` is dropped;
//   suffix   the parts below.

enum class Part {
  Down,            // [rank, in, ...]
  Up,              // [out, rank, ...]
  Alpha,           // scalar; the update is scaled by alpha / rank (alpha = rank when absent)
  Diff,            // full difference of `<path>.weight` (or of the bare parameter `<path>`)
  DiffBias,        // full difference of `<path>.bias`
  DiffModulation,  // full difference of `<path>.modulation` (the wrapper's `.diff_m`)
};

struct Suffix {
  std::string_view text;
  Part part;
};

constexpr Suffix kSuffixes[] = {
    {".lora_A.weight", Part::Down},     {".lora_B.weight", Part::Up},    // PEFT, ComfyUI, diffusers
    {".lora_down.weight", Part::Down},  {".lora_up.weight", Part::Up},   // kohya
    {".lora.down.weight", Part::Down},  {".lora.up.weight", Part::Up},   // older diffusers
    {".lora_linear_layer.down.weight", Part::Down},
    {".lora_linear_layer.up.weight", Part::Up},                          // transformers
    {".lora_A", Part::Down},            {".lora_B", Part::Up},           // bare (ComfyUI's mochi form)
    {".lora_down", Part::Down},         {".lora_up", Part::Up},          // bare (the wrapper's Fun form)
    {".alpha", Part::Alpha},
    {".diff", Part::Diff},              {".w_norm", Part::Diff},         // ComfyUI reads w_norm as a diff
    {".diff_b", Part::DiffBias},        {".b_norm", Part::DiffBias},
    {".diff_m", Part::DiffModulation},
};

constexpr std::string_view kDottedPrefixes[] = {"model.diffusion_model.", "diffusion_model.", "transformer.",
                                                "pipe.dit.", "base_model.model."};
constexpr std::string_view kUnderscoredPrefixes[] = {"lora_unet__", "lora_unet_", "lycoris_", "lora_transformer_"};

// Adapters other than plain LoRA pairs and differences: refused by name rather than reported
// as unmatched, so that the message says what the file is.
struct Unsupported {
  std::string_view marker;  // found anywhere in the key
  std::string_view what;
};
constexpr Unsupported kUnsupported[] = {
    {".lora_mid.", "a LoCon/Tucker middle factor (lora_mid)"},
    {".dora_scale", "DoRA (dora_scale)"},
    {".hada_", "LoHa (hada_*)"},
    {".lokr_", "LoKr (lokr_*)"},
    {".a1.weight", "GLoRA"},
    {".a2.weight", "GLoRA"},
    {".b1.weight", "GLoRA"},
    {".b2.weight", "GLoRA"},
    {".set_weight", "a weight replacement (set_weight)"},
    {".reshape_weight", "a weight reshape (reshape_weight)"},
    {"_loras.", "a Stand-In LoRA (extra q/k/v_loras layers)"},
    {"dwpose_embedding.", "a UniAnimate LoRA (dwpose_embedding)"},
};

// Segments of diffusers' WanTransformer3DModel names that no official module has: a LoRA
// whose paths contain one of them is renamed with the diffusers dialect.
constexpr std::string_view kDiffusersSegments[] = {
    "attn1", "attn2", "to_q", "to_k", "to_v", "to_out", "add_k_proj", "add_v_proj", "norm_added_k",
    "condition_embedder", "scale_shift_table", "proj_out", "net"};

// Multi-word segments, so that an underscored path can be split back into dotted segments.
// The official ones are also taken from the model's own names; these are the ones a model may
// lack (image branch) and the diffusers ones.
constexpr std::string_view kCompoundSegments[] = {
    "self_attn", "cross_attn", "norm_q", "norm_k", "k_img", "v_img", "norm_k_img", "img_emb", "emb_pos",
    "patch_embedding", "text_embedding", "time_embedding", "time_projection", "vace_blocks",
    "to_q", "to_k", "to_v", "to_out", "add_k_proj", "add_v_proj", "norm_added_k", "condition_embedder",
    "time_embedder", "text_embedder", "image_embedder", "linear_1", "linear_2", "time_proj", "pos_embed",
    "proj_out", "proj_in", "scale_shift_table", "before_proj", "after_proj"};

// Image-branch modules (I2V / FLF2V). A T2V model has none, and the wrapper drops LoRA keys
// for them there (WanVideoSetLoRAs: "Filter out any LoRA keys containing 'img' if the base
// model state_dict has no 'img' keys"); I2V LoRAs are commonly used on T2V models.
constexpr std::string_view kImageSegments[] = {"k_img", "v_img", "norm_k_img", "img_emb"};

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }
bool ends_with(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.substr(s.size() - p.size()) == p;
}

std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> out;
  size_t begin = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == sep) {
      out.emplace_back(s.substr(begin, i - begin));
      begin = i + 1;
    }
  }
  return out;
}

std::string join(const std::vector<std::string>& parts, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? std::string(sep) : "") + parts[i];
  return out;
}

bool has_segment(std::string_view path, std::string_view segment) {
  for (const auto& s : split(path, '.'))
    if (s == segment) return true;
  return false;
}

std::string part_name(Part p) {
  switch (p) {
    case Part::Down: return "lora_A (down)";
    case Part::Up: return "lora_B (up)";
    case Part::Alpha: return "alpha";
    case Part::Diff: return "diff";
    case Part::DiffBias: return "diff_b";
    case Part::DiffModulation: return "diff_m";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------

// One key of a LoRA file, on its way to an official name.
struct LoraKey {
  std::string key;   // as stored
  size_t file = 0;   // index into the LoRA's files
  const io::TensorRecord* record = nullptr;
  Part part = Part::Down;
  std::string path;  // module path, prefix and suffix removed; then official
  bool underscored = false;
};

// The model's names, for matching.
struct ModelNames {
  std::map<std::string, std::vector<int64_t>> params;    // official parameter names -> shapes
  std::unordered_map<std::string, std::string> aliases;  // `blocks_0_self_attn_q` -> `blocks.0.self_attn.q`
  std::unordered_set<std::string> compounds;             // multi-word segments
  bool image_branch = false;
};

ModelNames model_names(const std::map<std::string, ops::Weight>& weights) {
  ModelNames m;
  for (auto s : kCompoundSegments) m.compounds.emplace(s);
  for (const auto& [name, w] : weights) {
    m.params.emplace(name, w.stored.value.sizes().vec());
    std::string module = name;
    if (ends_with(module, ".weight")) module.resize(module.size() - 7);
    else if (ends_with(module, ".bias")) module.resize(module.size() - 5);
    std::string underscored = module;
    std::replace(underscored.begin(), underscored.end(), '.', '_');
    m.aliases.emplace(underscored, module);
    for (const auto& seg : split(name, '.'))
      if (seg.find('_') != std::string::npos) m.compounds.insert(seg);
    for (auto s : kImageSegments)
      if (has_segment(name, s)) m.image_branch = true;
  }
  return m;
}

// `blocks_0_cross_attn_k_img` -> `blocks.0.cross_attn.k_img`: underscores become dots except
// inside the longest known multi-word segment starting at each word.
std::string dotted(std::string_view underscored, const ModelNames& m) {
  const auto words = split(underscored, '_');
  std::vector<std::string> segments;
  for (size_t i = 0; i < words.size();) {
    size_t take = 1;
    for (size_t n = std::min<size_t>(4, words.size() - i); n >= 2; --n) {
      std::vector<std::string> span(words.begin() + i, words.begin() + i + n);
      if (m.compounds.count(join(span, "_"))) {
        take = n;
        break;
      }
    }
    segments.push_back(join(std::vector<std::string>(words.begin() + i, words.begin() + i + take), "_"));
    i += take;
  }
  return join(segments, ".");
}

bool looks_diffusers(std::string_view path) {
  for (const auto& seg : split(path, '.'))
    for (auto d : kDiffusersSegments)
      if (seg == d) return true;
  return false;
}

// Diffusers module paths -> official ones, with the rename tables of io::normalize_keys (each
// path given as a `<path>.weight` record; the record's offset carries its index back).
// normalize_keys picks the diffusers dialect from the key set; a LoRA that touches only
// `ffn.net.*` has no key it recognises, so a key only diffusers files have is added (unless the
// LoRA changes that module itself, whose key then serves).
void rename_diffusers(std::vector<std::string>& paths, const std::string& file) {
  std::vector<std::string> unique(paths);  // the down, up and alpha of a module share its path
  std::sort(unique.begin(), unique.end());
  unique.erase(std::unique(unique.begin(), unique.end()), unique.end());
  io::ParsedCheckpoint fake;
  for (size_t i = 0; i < unique.size(); ++i)
    fake.tensors.push_back(io::TensorRecord{unique[i] + ".weight", DType::F32, {}, {}, i, 0});
  if (!std::binary_search(unique.begin(), unique.end(), std::string("condition_embedder.time_proj")))
    fake.tensors.push_back(io::TensorRecord{"condition_embedder.time_proj.weight", DType::F32, {}, {},
                                            std::numeric_limits<uint64_t>::max(), 0});
  const io::NormalizedCheckpoint normalized = io::normalize_keys(fake, file);
  std::map<std::string, std::string> renamed;
  for (const auto& r : normalized.tensors)
    if (r.offset < unique.size() && ends_with(r.name, ".weight"))
      renamed[unique[r.offset]] = r.name.substr(0, r.name.size() - 7);
  for (auto& p : paths)
    if (auto it = renamed.find(p); it != renamed.end()) p = it->second;
}

// Attention leaves in diffusers spelling under official attention names (`self_attn.to_q`,
// `cross_attn.to_out.0`), as some trainers write them; the wrapper renames them too.
std::string fix_attention_leaves(const std::string& path) {
  auto segs = split(path, '.');
  std::vector<std::string> out;
  for (size_t i = 0; i < segs.size(); ++i) {
    const bool in_attention = !out.empty() && (out.back() == "self_attn" || out.back() == "cross_attn");
    if (in_attention && (segs[i] == "to_q" || segs[i] == "to_k" || segs[i] == "to_v")) {
      out.push_back(segs[i].substr(3));
    } else if (in_attention && segs[i] == "to_out" && i + 1 < segs.size() && segs[i + 1] == "0") {
      out.push_back("o");
      ++i;
    } else {
      out.push_back(segs[i]);
    }
  }
  return join(out, ".");
}

// The parameter a key changes, or "" when the model has none.
std::string target_of(const LoraKey& k, const ModelNames& m) {
  auto has = [&](const std::string& n) { return m.params.count(n) > 0; };
  switch (k.part) {
    case Part::Down:
    case Part::Up:
    case Part::Alpha: return has(k.path + ".weight") ? k.path + ".weight" : "";
    case Part::Diff:
      if (has(k.path + ".weight")) return k.path + ".weight";
      return has(k.path) ? k.path : "";  // bare parameters: modulation, emb_pos
    case Part::DiffBias: return has(k.path + ".bias") ? k.path + ".bias" : "";
    case Part::DiffModulation: return has(k.path + ".modulation") ? k.path + ".modulation" : "";
  }
  return "";
}

std::optional<int64_t> block_of(std::string_view name) {
  if (!starts_with(name, "blocks.")) return std::nullopt;
  size_t i = 7;
  int64_t index = 0;
  const size_t begin = i;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9') index = index * 10 + (name[i++] - '0');
  if (i == begin || i >= name.size() || name[i] != '.') return std::nullopt;
  return index;
}

// The updates of one weight.
struct Patch {
  double factor = 1.0;    // strength * alpha / rank for a pair; strength for a difference
  core::Tensor up, down;  // a low-rank pair, or
  core::Tensor diff;      // a full difference
  int lora = 0;           // index of its LoraSpec
  double scale = 1.0;     // alpha / rank: factor without the strength (unmerged LoRAs)
};

at::Tensor as_double(const core::Tensor& t) {
  return t.dtype == DType::F64 ? t.value : core::to_float(t).to(at::kDouble);
}

// Reads one LoRA, checks it against the model and appends its updates to `patches`.
void collect(const LoraSpec& spec, int index, const ModelNames& m, std::map<std::string, std::vector<Patch>>& patches,
             const std::function<bool()>& cancelled) {
  const std::string name =
      spec.files.size() == 1 ? spec.files[0]
                             : spec.files[0] + " (and " + std::to_string(spec.files.size() - 1) + " more shards)";
  std::vector<io::MappedCheckpoint> mapped;
  std::map<std::string, std::string> owner;
  std::vector<LoraKey> keys;
  std::vector<std::string> unmatched, problems;
  for (size_t f = 0; f < spec.files.size(); ++f) {
    mapped.push_back(io::map_checkpoint(spec.files[f], io::LoadOptions{false}, cancelled));
    for (const auto& r : mapped.back().parsed.tensors) {
      const auto [it, inserted] = owner.emplace(r.name, spec.files[f]);
      if (!inserted) throw core::bad_checkpoint(spec.files[f], "tensor '" + r.name + "' also appears in " + it->second);
    }
  }
  // The wrapper's test for a rank-stabilised PEFT LoRA (compensate_rs_lora_format), which then
  // scales by about sqrt(rank) (rsLoRA's alpha / sqrt(rank) with alpha = rank): every pair gets
  // alpha = r^2 // sqrt(r), r the rank of blocks.0.cross_attn.k, in place of any alpha stored.
  std::optional<double> rs_alpha;
  for (const auto& m : mapped)
    for (const auto& r : m.parsed.tensors)
      if (r.name == "base_model.model.blocks.0.cross_attn.k.lora_A.weight" && !r.shape.empty()) {
        const double rank = static_cast<double>(r.shape[0]);
        rs_alpha = std::floor(rank * rank / std::sqrt(rank));
      }

  // layerFilter: a key is skipped when its stored name or `official` contains a filter string.
  auto filtered = [&](const std::string& key, const std::string& official) {
    return std::any_of(spec.layer_filter.begin(), spec.layer_filter.end(), [&](const std::string& s) {
      return !s.empty() && (key.find(s) != std::string::npos || official.find(s) != std::string::npos);
    });
  };

  // 1. Suffix and prefix.
  for (size_t f = 0; f < mapped.size(); ++f) {
    for (const auto& r : mapped[f].parsed.tensors) {
      LoraKey k{r.name, f, &r};
      std::string key = r.name;
      for (size_t at; (at = key.find(".default.")) != std::string::npos;) key.erase(at, 8);  // PEFT adapter name
      if (ends_with(key, ".default")) key.resize(key.size() - 8);
      const auto unsupported = std::find_if(std::begin(kUnsupported), std::end(kUnsupported),
                                            [&](const Unsupported& u) { return key.find(u.marker) != std::string::npos; });
      if (unsupported != std::end(kUnsupported)) {
        if (!filtered(r.name, ""))
          problems.push_back("key '" + r.name + "' is " + std::string(unsupported->what) +
                           ", which is not supported (only low-rank pairs and .diff/.diff_b/.diff_m differences are)");
        continue;
      }
      const auto suffix = std::find_if(std::begin(kSuffixes), std::end(kSuffixes),
                                       [&](const Suffix& s) { return ends_with(key, s.text); });
      if (suffix == std::end(kSuffixes)) {
        k.path = key;  // for the layer filter; it stays unmatched
      } else {
        k.part = suffix->part;
        k.path = key.substr(0, key.size() - suffix->text.size());
      }
      for (auto p : kUnderscoredPrefixes) {
        if (starts_with(k.path, p)) {
          k.path.erase(0, p.size());
          k.underscored = true;
          break;
        }
      }
      if (!k.underscored) {
        for (auto p : kDottedPrefixes) {
          if (starts_with(k.path, p)) {
            k.path.erase(0, p.size());
            break;
          }
        }
      }
      if (suffix == std::end(kSuffixes)) {
        if (!filtered(r.name, k.path)) unmatched.push_back(r.name);
        continue;
      }
      keys.push_back(std::move(k));
    }
  }

  // A file without a single LoRA part is something else (a whole model given as a LoRA): said
  // so, rather than listing its keys as unmatched LoRA keys.
  if (keys.empty() && !unmatched.empty()) {
    std::vector<std::string> first(unmatched.begin(), unmatched.begin() + std::min<size_t>(3, unmatched.size()));
    throw core::bad_checkpoint(name, "not a LoRA: none of its " + std::to_string(unmatched.size()) +
                                         " keys is a LoRA part (.lora_A/.lora_B, .lora_down/.lora_up, .alpha, "
                                         ".diff, .diff_b, .diff_m); it holds [" + join(first, ", ") +
                                         (unmatched.size() > first.size() ? ", ...]" : "]"));
  }

  // 2. Official module paths. Underscored ones are looked up among the model's own names
  // first (exact); the rest are split into segments and treated as dotted.
  std::vector<size_t> to_rename;
  for (size_t i = 0; i < keys.size(); ++i) {
    LoraKey& k = keys[i];
    if (k.underscored) {
      std::string u = k.path;
      std::replace(u.begin(), u.end(), '.', '_');  // `blocks_29.self_attn.q` (WVW issue #869) too
      const auto alias = m.aliases.find(u);
      if (alias != m.aliases.end()) {
        k.path = alias->second;
        continue;
      }
      k.path = dotted(u, m);
    }
    to_rename.push_back(i);
  }
  if (std::any_of(to_rename.begin(), to_rename.end(), [&](size_t i) { return looks_diffusers(keys[i].path); })) {
    std::vector<std::string> paths;
    for (size_t i : to_rename) paths.push_back(keys[i].path);
    rename_diffusers(paths, name);
    for (size_t j = 0; j < to_rename.size(); ++j) keys[to_rename[j]].path = paths[j];
  }
  for (size_t i : to_rename) keys[i].path = fix_attention_leaves(keys[i].path);

  // 3. Targets, filters, grouping.
  struct Group {
    const LoraKey *down = nullptr, *up = nullptr, *alpha = nullptr, *diff = nullptr;
  };
  std::map<std::string, Group> groups;
  for (const LoraKey& k : keys) {
    const std::string target = target_of(k, m);
    const std::string& official = target.empty() ? k.path : target;
    if (filtered(k.key, official)) continue;
    if (spec.blocks) {
      const auto block = block_of(official);
      if (block && std::find(spec.blocks->begin(), spec.blocks->end(), *block) == spec.blocks->end()) continue;
    }
    if (target.empty()) {
      const bool image_key =
          std::any_of(std::begin(kImageSegments), std::end(kImageSegments), [&](std::string_view s) { return has_segment(k.path, s); });
      if (!(image_key && !m.image_branch)) unmatched.push_back(k.key);
      continue;
    }
    Group& g = groups[target];
    const LoraKey*& slot = k.part == Part::Down ? g.down : k.part == Part::Up ? g.up : k.part == Part::Alpha ? g.alpha : g.diff;
    if (slot)
      problems.push_back("keys '" + slot->key + "' and '" + k.key + "' both give the " +
                         (&slot == &g.diff ? std::string("difference") : part_name(k.part)) + " of '" + target + "'");
    else
      slot = &k;
  }
  if (!unmatched.empty())
    problems.insert(problems.begin(), std::to_string(unmatched.size()) + " LoRA key" + (unmatched.size() == 1 ? "" : "s") +
                                          " match no weight of the model: [" + join(unmatched, ", ") +
                                          "] (layerFilter skips keys on purpose)");

  // 4. Shapes; the updates.
  auto tensor = [&](const LoraKey* k) { return io::tensor_from_record(mapped[k->file].file, *k->record); };
  // A low-rank pair: up [out, rank(, 1, 1, 1)] x down [rank, in(, kt, kh, kw)] -> [out, in*kt*kh*kw],
  // which must have the weight's rows and element count (conv weights reshape accordingly).
  auto add_pair = [&](const std::string& target, const Group& g, const std::vector<int64_t>& shape) {
    const core::Tensor up = tensor(g.up), down = tensor(g.down);
    const auto us = up.value.sizes(), ds = down.value.sizes();
    const int64_t numel = std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<int64_t>());
    const int64_t rows = shape.size() >= 2 ? shape[0] : 0;
    const int64_t rank = ds.empty() ? 0 : ds[0];
    const bool fits = us.size() >= 2 && ds.size() >= 2 && rank > 0 && up.value.numel() == us[0] * rank &&
                      us[0] == rows && down.value.numel() / rank * rows == numel;
    if (!fits) {
      std::string hint;
      if (target == "patch_embedding.weight" && ds.size() == 5 && shape.size() == 5 && ds[1] != shape[1])
        hint = " (a Control-LoRA widens patch_embedding to " + std::to_string(ds[1]) +
               " input channels, which is not supported)";
      problems.push_back("keys '" + g.up->key + "' " + shape_text(us) + " and '" + g.down->key + "' " + shape_text(ds) +
                         " do not fit '" + target + "' of shape " + shape_text(shape) + hint);
      return;
    }
    double alpha = static_cast<double>(rank);  // no alpha: the update is up @ down
    if (rs_alpha) {
      alpha = *rs_alpha;
    } else if (g.alpha) {
      const core::Tensor a = tensor(g.alpha);
      if (a.value.numel() != 1) {
        problems.push_back("key '" + g.alpha->key + "' must hold one number, got shape " + shape_text(a.value.sizes()));
        return;
      }
      alpha = as_double(a).item<double>();
    }
    patches[target].push_back(
        Patch{spec.strength * alpha / static_cast<double>(rank), up, down, {}, index, alpha / static_cast<double>(rank)});
  };
  for (const auto& [target, g] : groups) {
    const std::vector<int64_t>& shape = m.params.at(target);
    if (g.down && g.up) {
      add_pair(target, g, shape);
    } else if (g.down || g.up) {
      const LoraKey* k = g.down ? g.down : g.up;
      problems.push_back("key '" + k->key + "' (" + part_name(k->part) + " of '" + target + "') has no " +
                         part_name(g.down ? Part::Up : Part::Down) + " beside it");
    } else if (g.alpha) {
      problems.push_back("key '" + g.alpha->key + "' is an alpha without a lora_A/lora_B pair for '" + target + "'");
    }
    if (g.diff) {
      const core::Tensor d = tensor(g.diff);
      if (d.value.sizes().vec() != shape)
        problems.push_back("key '" + g.diff->key + "' " + shape_text(d.value.sizes()) + " does not fit '" + target +
                           "' of shape " + shape_text(shape));
      else
        patches[target].push_back(Patch{spec.strength, {}, {}, d, index, 1.0});
    }
  }
  if (!problems.empty()) throw core::bad_checkpoint(name, "LoRA: " + join(problems, "; "));
}

bool is_fp8(DType t) { return t == DType::F8_E4M3FN || t == DType::F8_E5M2; }

// The scale to store fp8 `values` with: `scale` (undefined: none; one number, or one per row as
// [out, 1, ...]) where every value fits the format's finite range at it; else, per tensor or per
// row as `scale` is, the larger of it and the one that maps the largest magnitude to the top.
at::Tensor fp8_scale_for(const at::Tensor& values, const at::Tensor& scale, DType format) {
  const double top = format == DType::F8_E4M3FN ? 448.0 : 57344.0;
  const bool per_row = scale.defined() && scale.dim() > 0;
  std::vector<int64_t> inner;
  for (int64_t d = 1; d < values.dim(); ++d) inner.push_back(d);
  const at::Tensor amax =
      per_row && !inner.empty() ? values.abs().amax(inner, /*keepdim=*/true) : values.abs().max();
  const at::Tensor current = scale.defined() ? scale.to(at::kFloat) : at::ones({}, at::kFloat);
  if ((amax <= current * top).all().item<bool>()) return scale;
  return at::maximum(current, amax / top);
}

using Patches = std::map<std::string, std::vector<Patch>>;  // official name -> updates, in LoRA order

// Every LoRA read and checked, before any weight changes.
Patches collect_all(const std::map<std::string, ops::Weight>& weights, const std::vector<LoraSpec>& loras,
                    const std::function<bool()>& cancelled) {
  Patches patches;
  if (std::all_of(loras.begin(), loras.end(), [](const LoraSpec& l) { return l.strength == 0 && !l.per_step; }))
    return patches;
  const ModelNames names = model_names(weights);
  for (size_t i = 0; i < loras.size(); ++i)
    if (loras[i].strength != 0 || loras[i].per_step) collect(loras[i], static_cast<int>(i), names, patches, cancelled);
  return patches;
}

int merge_patches(std::map<std::string, ops::Weight>& weights, const Patches& patches,
                  const std::function<bool()>& cancelled) {
  for (const auto& [target, list] : patches) {
    if (cancelled && cancelled()) throw Error(ErrorCode::Aborted, "the operation was aborted");
    ops::Weight& w = weights.at(target);
    const DType dtype = w.stored.dtype;
    if (!(is_fp8(dtype) || dtype == DType::F64 || dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16))
      throw Error(ErrorCode::InvalidTensor, "a LoRA changes '" + target + "', which is stored as " +
                                                std::string(core::dtype_name(dtype)) + ", not a float type");
    // float64 throughout, so that the result is the correctly rounded float32 merge whatever the
    // BLAS summation order or thread count; fp8 codes are decoded exactly, times their scale.
    // (a copy: the stored tensor may alias the mapped file)
    at::Tensor value = is_fp8(dtype) ? as_double(w.stored) : w.stored.value.to(at::kDouble, false, /*copy=*/true);
    if (w.scale.defined()) value = value * w.scale.to(at::kDouble);
    const at::Tensor rows = value.dim() >= 2 ? value.view({value.size(0), -1}) : value;  // conv: [out, in*kt*kh*kw]
    for (const Patch& p : list) {
      if (p.diff.value.defined())
        value.add_(as_double(p.diff), p.factor);
      else  // one pass: BLAS accumulates factor * up @ down into the weight
        rows.addmm_(as_double(p.up).flatten(1), as_double(p.down).flatten(1), 1.0, p.factor);
    }
    at::Tensor stored;
    if (dtype == DType::F64) {
      stored = value;
    } else {
      const at::Tensor merged = value.to(at::kFloat);  // the float32 merge, rounded once
      if (is_fp8(dtype)) {
        // Re-encoded (round to nearest even) with the weight's scale, unless the merged values
        // outgrow what the format holds at that scale: the scale then grows to fit them, where
        // keeping it would saturate them at the old range.
        const at::Tensor scale = fp8_scale_for(merged, w.scale, dtype);
        stored = ops::encode_fp8(scale.defined() ? merged / scale : merged, dtype);
        w.scale = scale;
      } else {
        stored = merged.to(core::storage_scalar_type(dtype)).contiguous();
      }
    }
    w.stored = core::Tensor{stored, dtype};
  }
  return static_cast<int>(patches.size());
}

}  // namespace

int merge_loras(std::map<std::string, ops::Weight>& weights, const std::vector<LoraSpec>& loras,
                const std::function<bool()>& cancelled) {
  return merge_patches(weights, collect_all(weights, loras, cancelled), cancelled);
}

LoraAdapters split_loras(std::map<std::string, ops::Weight>& weights, const std::vector<LoraSpec>& loras,
                         const std::function<bool()>& cancelled) {
  Patches merged;
  LoraAdapters adapters;
  std::vector<std::string> fixed;  // updates of per-step LoRAs that cannot be adapters
  for (auto& [target, list] : collect_all(weights, loras, cancelled)) {
    const bool linear = weights.at(target).stored.value.dim() == 2;
    for (Patch& p : list) {
      if (linear && p.up.value.defined()) {
        const auto as_float = [](const core::Tensor& t) {
          const at::Tensor v = core::to_float(t);
          return ops::Weight{core::Tensor{v.view({v.size(0), -1}).contiguous(), DType::F32}, {}};
        };
        adapters[target].push_back(LoraAdapter{as_float(p.down), as_float(p.up), p.scale, p.lora});
      } else if (loras[p.lora].per_step) {
        fixed.push_back("'" + target + "' (" + (p.diff.value.defined() ? "a full difference" : "a convolution") + ", LoRA " +
                        std::to_string(p.lora) + ")");
      } else {
        merged[target].push_back(std::move(p));
      }
    }
  }
  if (!fixed.empty())
    throw Error(ErrorCode::InvalidOption,
                "a LoRA with a per-step strength list can only change linear layers, at run time, but it changes " +
                    join(fixed, ", ") + ": give that LoRA one strength");
  merge_patches(weights, merged, cancelled);
  return adapters;
}

}  // namespace wan::models
