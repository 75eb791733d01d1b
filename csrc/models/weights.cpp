#include "models/weights.h"

#include <set>

#include "core/error.h"
#include "io/json.h"
#include "io/key_map.h"
#include "io/loader.h"

namespace wan::models {
namespace {

// The scale of a scaled weight, shaped to multiply it: one number for the tensor, or one per
// output row as [out, 1, ...]. Anything else is refused, naming the scale: multiplying by it
// would broadcast along the wrong dimension or fail inside a layer.
at::Tensor weight_scale(const at::Tensor& scale, const at::Tensor& weight, const std::string& name,
                        const std::string& file) {
  if (scale.numel() == 1) return scale.reshape({});
  const int64_t rows = weight.dim() >= 1 ? weight.size(0) : 0;
  const bool per_row = weight.dim() >= 2 && scale.numel() == rows &&
                       (scale.dim() == 1 || (scale.dim() == 2 && scale.size(1) == 1));
  if (!per_row)
    throw core::bad_checkpoint(file, "tensor '" + name + "' " + core::shape_text(scale.sizes()) +
                                         " must be one scale for its weight or one per output row (" +
                                         std::to_string(rows) + ") of the weight " +
                                         core::shape_text(weight.sizes()));
  std::vector<int64_t> shape(weight.dim(), 1);
  shape[0] = rows;
  return scale.reshape(shape);
}

// The `format` of a ComfyUI `.comfy_quant` layer config (JSON in a uint8 tensor), or "?".
std::string comfy_quant_format(const core::Tensor& config) {
  if (config.value.scalar_type() != at::kByte || config.value.dim() != 1) return "?";
  const at::Tensor bytes = config.value.contiguous();
  const std::string text(static_cast<const char*>(bytes.data_ptr()), static_cast<size_t>(bytes.numel()));
  std::string error;
  const std::optional<io::JsonValue> json = io::parse_json(text, error);
  const io::JsonValue* format = json ? json->find("format") : nullptr;
  return format && format->kind == io::JsonValue::Kind::String ? format->string : "?";
}

}  // namespace

std::string files_text(const std::vector<std::string>& files) {
  std::string out;
  for (size_t i = 0; i < files.size(); ++i)
    out += (i == 0 ? "" : i + 1 == files.size() ? " and " : ", ") + files[i];
  return out;
}

LoadedWeights load_weights(const std::vector<std::string>& files, bool populate,
                           const std::function<bool()>& cancelled) {
  LoadedWeights out;
  std::map<std::string, std::string> owner;
  for (const auto& file : files) {
    io::MappedCheckpoint mapped = io::map_checkpoint(file, io::LoadOptions{populate}, cancelled);
    const io::NormalizedCheckpoint normalized = io::normalize_keys(mapped.parsed, file);
    if (!normalized.quantization.fp8_matmul_allowed) out.no_fp8_matmul.push_back(file);
    // ComfyUI mixed-precision layers other than plain fp8 ones (io::normalize_keys has turned
    // those into scaled fp8): refused by name before anything else is read.
    std::vector<std::string> quant_layers;
    std::set<std::string> formats;
    for (const auto& r : normalized.tensors) {
      const std::string suffix = ".comfy_quant";
      if (r.name.size() <= suffix.size() || r.name.compare(r.name.size() - suffix.size(), suffix.size(), suffix) != 0)
        continue;
      quant_layers.push_back(r.name.substr(0, r.name.size() - suffix.size()));
      formats.insert(comfy_quant_format(io::tensor_from_record(mapped.file, r)));
    }
    if (!quant_layers.empty()) {
      const bool one = quant_layers.size() == 1;
      std::string listed;
      for (const std::string& f : formats) listed += (listed.empty() ? "'" : ", '") + f + "'";
      throw core::bad_checkpoint(
          file, (one ? "layer '" + quant_layers.front() + "' is"
                     : std::to_string(quant_layers.size()) + " layers (first '" + quant_layers.front() + "') are") +
                    " in ComfyUI's quantized format" + (formats.size() == 1 ? " " : "s ") + listed +
                    (one ? " (its .comfy_quant config)" : " (their .comfy_quant configs)") +
                    ", which wan-native does not read; of that format it reads the fp8 layers with one scale per "
                    "tensor (float8_e4m3fn, float8_e5m2)");
    }
    for (const auto& r : normalized.tensors) {
      const auto [it, inserted] = owner.emplace(r.name, file);
      if (!inserted) throw core::bad_checkpoint(file, "tensor '" + r.name + "' also appears in " + it->second);
      out.weights[r.name] = ops::Weight{io::tensor_from_record(mapped.file, r), {}};
      out.shapes[r.name] = r.shape;
    }
  }
  // Scaled weights: `<layer>.scale_weight` (ComfyUI's scaled fp8; other tools' `.weight_scale`
  // is renamed to it) belongs to `<layer>.weight`, which Weight::get dequantises with it. One
  // number scales the tensor; one per output row (SDCPP's int8/fp8 configs: [out] or [out, 1])
  // is kept as [out, 1, ...] so that it multiplies rows. `.scale_input` is a static activation
  // scale for fp8 matmuls; ours compute the activations' scales per call (ops/fp8_matmul.h).
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
      target->second.scale = weight_scale(it->second.stored.value, target->second.stored.value, name, owner.at(name));
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
