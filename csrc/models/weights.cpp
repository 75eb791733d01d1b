#include "models/weights.h"

#include "core/error.h"
#include "io/key_map.h"
#include "io/loader.h"

namespace wan::models {

LoadedWeights load_weights(const std::vector<std::string>& files, bool populate,
                           const std::function<bool()>& cancelled) {
  LoadedWeights out;
  std::map<std::string, std::string> owner;
  for (const auto& file : files) {
    io::MappedCheckpoint mapped = io::map_checkpoint(file, io::LoadOptions{populate}, cancelled);
    const io::NormalizedCheckpoint normalized = io::normalize_keys(mapped.parsed, file);
    for (const auto& r : normalized.tensors) {
      const auto [it, inserted] = owner.emplace(r.name, file);
      if (!inserted) throw core::bad_checkpoint(file, "tensor '" + r.name + "' also appears in " + it->second);
      out.weights[r.name] = ops::Weight{io::tensor_from_record(mapped.file, r), {}};
      out.shapes[r.name] = r.shape;
    }
  }
  // Scaled fp8 (ComfyUI, Kijai): `<layer>.scale_weight` belongs to `<layer>.weight`, which
  // Weight::get dequantises with it; `.scale_input` only matters to fp8 matmul kernels,
  // which widen-then-multiply does not use.
  auto ends_with = [](const std::string& s, const std::string& suffix) {
    return s.size() > suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  for (auto it = out.weights.begin(); it != out.weights.end();) {
    const std::string name = it->first;
    if (ends_with(name, ".scale_weight")) {
      auto target = out.weights.find(name.substr(0, name.size() - 13) + ".weight");
      if (target == out.weights.end()) {
        ++it;  // an orphan scale: reported as unexpected by the model
        continue;
      }
      target->second.scale = it->second.stored.value;
    } else if (!ends_with(name, ".scale_input")) {
      ++it;
      continue;
    }
    out.shapes.erase(name);
    it = out.weights.erase(it);
  }
  return out;
}

ops::Weight WeightBag::take(const std::string& name) {
  auto it = weights_.find(name);
  if (it == weights_.end()) {
    missing_.push_back(name);
    return {};
  }
  used_.insert(name);
  return it->second;
}

void WeightBag::check(const std::string& source, const std::string& model) const {
  std::vector<std::string> unexpected;
  for (const auto& [name, w] : weights_)
    if (!used_.count(name)) unexpected.push_back(name);
  if (missing_.empty() && unexpected.empty()) return;
  auto list = [](const std::vector<std::string>& names) {
    std::string s;
    for (size_t i = 0; i < names.size() && i < 40; ++i) s += (i ? ", " : "") + names[i];
    if (names.size() > 40) s += ", ... (" + std::to_string(names.size() - 40) + " more)";
    return s;
  };
  std::string message = "not a " + model + " of the inferred configuration:";
  if (!missing_.empty()) message += " " + std::to_string(missing_.size()) + " missing [" + list(missing_) + "]";
  if (!unexpected.empty())
    message += std::string(missing_.empty() ? "" : ";") + " " + std::to_string(unexpected.size()) +
               " unexpected [" + list(unexpected) + "]";
  throw core::bad_checkpoint(source, message);
}

}  // namespace wan::models
