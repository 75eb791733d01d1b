// Loading a model's parameters from checkpoint files, and handing them out by name.
#pragma once
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "ops/linear.h"

namespace wan::models {

struct LoadedWeights {
  std::map<std::string, ops::Weight> weights;             // official names (io/key_map)
  std::map<std::string, std::vector<int64_t>> shapes;
  // Files whose ComfyUI `scaled_fp8` marker has 2 elements: their producer disabled fp8 matmuls.
  std::vector<std::string> no_fp8_matmul;
};

// The files of a checkpoint as an error names them: "a", "a and b", "a, b and c". An error about
// the whole set (an unexpected key, a missing one) may come from any shard.
std::string files_text(const std::vector<std::string>& files);

// Maps the files (shards of one checkpoint, any supported layout) and names their tensors
// as the official code does; tensors alias the mappings. Scaled-fp8 scales are attached to
// their weights (Weight::scale) rather than listed.
LoadedWeights load_weights(const std::vector<std::string>& files, bool populate,
                           const std::function<bool()>& cancelled);

// Hands out parameters by name and remembers what was asked for, so that a load can report
// every missing and every unexpected key in one error.
class WeightBag {
 public:
  explicit WeightBag(std::map<std::string, ops::Weight> weights) : weights_(std::move(weights)) {}
  ops::Weight take(const std::string& name);
  // Throws core::Error(BadCheckpoint) naming `source` and listing every missing and unused key.
  void check(const std::string& source, const std::string& model) const;

 private:
  std::map<std::string, ops::Weight> weights_;
  std::set<std::string> used_;
  std::vector<std::string> missing_;
};

// Every weight `model.visit_weights` lists, as the members runtime::Residency moves. For a
// model's constructor: the weights are then its own members, being set up, so handing out
// visit_weights' const references as pointers is sound.
template <typename Model>
std::vector<ops::Weight*> weight_members(const Model& model) {
  std::vector<ops::Weight*> out;
  model.visit_weights([&](const ops::Weight& w) { out.push_back(const_cast<ops::Weight*>(&w)); });
  return out;
}

}  // namespace wan::models
