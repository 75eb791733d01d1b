// LoRAs merged into the DiT's weights at load (the wrapper's WanVideoLoraSelect with
// merge_loras, anchors.md b.4): W' = W + strength * (alpha / rank) * (up @ down) for each
// low-rank pair, W' = W + strength * diff for full-difference keys. The key families of
// anchors.md c.7 are normalised to official names here (see lora.cpp for the list); the
// diffusers dialect goes through io::normalize_keys, the one place that knows it.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ops/linear.h"

namespace wan::models {

struct LoraSpec {
  std::vector<std::string> files;  // one LoRA (shards of it), safetensors or .pth
  double strength = 1.0;           // 0: skipped without opening the files
  // Only keys of these blocks (`blocks.N.`) apply; keys outside the blocks always do (as the
  // wrapper's filter_state_dict_by_blocks). nullopt: every block.
  std::optional<std::vector<int64_t>> blocks;
  // A key is skipped (neither checked nor merged) when its name in the file or the official
  // name of the weight it changes contains one of these; empty strings are ignored.
  std::vector<std::string> layer_filter;
  // The strength changes from call to call (a per-step list): unmerged only, and every update
  // must be a run-time adapter.
  bool per_step = false;
};

// A low-rank update applied at run time rather than merged (the wrapper's merge_loras false):
// y += strength * scale * (x down^T) up^T, strength being the LoRA's at the current call.
struct LoraAdapter {
  ops::Weight down, up;  // [rank, in] and [out, rank], float32
  double scale = 1.0;    // alpha / rank
  int lora = 0;          // index of the LoRA in the list given at load
};
using LoraAdapters = std::map<std::string, std::vector<LoraAdapter>>;  // by official weight name

// Merges `loras`, in order, into `weights` (official names, as models::load_weights gives
// them). Every LoRA is read and checked before any weight changes; one core::Error lists all
// problems of a file: keys that match no weight (unless the wrapper ignores them too: image
// branch keys on a model without one), unsupported adapter kinds (LoHa, LoKr, DoRA, ...), and
// updates whose shape does not fit their weight. Each changed weight is computed in float64
// from its stored value (fp8 decoded with its scale), rounded to float32 once, and stored in
// its own dtype (bf16/fp16 round to nearest even; fp8 re-encoded with the same scale).
// Returns how many weights changed.
int merge_loras(std::map<std::string, ops::Weight>& weights, const std::vector<LoraSpec>& loras,
                const std::function<bool()>& cancelled);

// Unmerged LoRAs: every low-rank pair on a 2-D weight (the linear layers) becomes an adapter of
// that weight, returned; the other updates (full differences, pairs on the patch embedding's
// convolution) are merged as merge_loras merges them, at the LoRA's strength. A LoRA with
// per_step may have none of those: one error lists them. Checks as merge_loras does.
LoraAdapters split_loras(std::map<std::string, ops::Weight>& weights, const std::vector<LoraSpec>& loras,
                         const std::function<bool()>& cancelled);

}  // namespace wan::models
