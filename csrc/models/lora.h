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
};

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

}  // namespace wan::models
