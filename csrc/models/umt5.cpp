#include "models/umt5.h"

#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/tensor.h"
#include "models/weights.h"
#include "ops/norm.h"

namespace wan::models {

using core::Error;
using core::ErrorCode;

at::Tensor t5_relative_bucket(const at::Tensor& rel, int64_t num_buckets, int64_t max_dist) {
  // Bidirectional: half the buckets for keys after the query. Within each half, exact
  // buckets up to max_exact, then logarithmic up to max_dist; computed in float32 as torch.
  const int64_t half = num_buckets / 2, max_exact = half / 2;
  at::Tensor buckets = (rel > 0).to(at::kLong) * half;
  const at::Tensor distance = rel.abs();
  at::Tensor large = max_exact + (at::log(distance.to(at::kFloat) / static_cast<float>(max_exact)) /
                                  static_cast<float>(std::log(static_cast<double>(max_dist) / max_exact)) *
                                  static_cast<float>(half - max_exact))
                                     .to(at::kLong);
  large = at::clamp_max(large, half - 1);
  return buckets + at::where(distance < max_exact, distance, large);
}

namespace {

// Rows of an embedding table in float32, looked up in the stored dtype: widening the whole
// table first would cost 4 GB for umT5-XXL's 256k x 4096 entries.
at::Tensor embed(const ops::Weight& table, const at::Tensor& ids) {
  at::Tensor x = core::to_float(core::Tensor{at::embedding(table.stored.value, ids), table.stored.dtype});
  if (!table.scale.defined()) return x;
  // A scale per row ([vocab, 1]) is looked up with the rows.
  const at::Tensor scale = table.scale.dim() == 0 ? table.scale : at::embedding(table.scale, ids);
  return x * scale.to(at::kFloat);
}

}  // namespace

Umt5Encoder::Umt5Encoder(Umt5Config config, std::map<std::string, ops::Weight> weights, const std::string& source,
                         at::Device device, bool load_on_main)
    : config_(config), device_(device), residency_(device) {
  WeightBag bag(std::move(weights));
  token_embedding_ = bag.take("token_embedding.weight");
  if (config_.shared_pos) shared_pos_embedding_ = bag.take("pos_embedding.embedding.weight");
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    const std::string p = "blocks." + std::to_string(i) + ".";
    Block b;
    b.norm1 = bag.take(p + "norm1.weight");
    b.norm2 = bag.take(p + "norm2.weight");
    b.q = bag.take(p + "attn.q.weight");
    b.k = bag.take(p + "attn.k.weight");
    b.v = bag.take(p + "attn.v.weight");
    b.o = bag.take(p + "attn.o.weight");
    b.gate0 = bag.take(p + "ffn.gate.0.weight");
    b.fc1 = bag.take(p + "ffn.fc1.weight");
    b.fc2 = bag.take(p + "ffn.fc2.weight");
    if (!config_.shared_pos) b.pos_embedding = bag.take(p + "pos_embedding.embedding.weight");
    blocks_.push_back(std::move(b));
  }
  norm_ = bag.take("norm.weight");
  bag.check(source, "umT5 encoder");
  residency_.manage(weight_members(*this), load_on_main);
}

// T5RelativeEmbedding(L, L): the table looked up at the bucket of (key - query) -> [1, N, L, L].
at::Tensor Umt5Encoder::position_bias(const ops::Weight& table, int64_t length) const {
  const at::Tensor pos = at::arange(length, at::TensorOptions().dtype(at::kLong).device(device_));
  const at::Tensor buckets = t5_relative_bucket(pos.unsqueeze(0) - pos.unsqueeze(1), config_.num_buckets, config_.max_dist);
  return embed(table, buckets).permute({2, 0, 1}).unsqueeze(0).contiguous();
}

at::Tensor Umt5Encoder::forward(const at::Tensor& ids, const at::Tensor& mask, const std::function<bool()>& cancelled,
                                std::map<std::string, at::Tensor>* trace) const {
  if (ids.dim() != 2 || mask.sizes() != ids.sizes())
    throw Error(ErrorCode::InvalidTensor, "TextEncoder: ids and mask must both be [B, L], got " + c10::str(ids.sizes()) +
                                              " and " + c10::str(mask.sizes()));
  const at::Tensor token_ids = ids.to(device_, at::kLong);
  if (token_ids.numel() && (token_ids.min().item<int64_t>() < 0 || token_ids.max().item<int64_t>() >= config_.vocab))
    throw Error(ErrorCode::InvalidTensor, "TextEncoder: token ids must lie in [0, " + std::to_string(config_.vocab) + ")");
  const int64_t b = ids.size(0), l = ids.size(1), n = config_.num_heads, c = config_.dim_attn / n;
  residency_.place(true);
  at::Tensor x = embed(token_embedding_, token_ids);  // [B, L, dim]
  if (trace) (*trace)["token_embedding_out"] = x;
  // Padded keys get the most negative float added, as T5Attention's masked_fill does.
  const at::Tensor key_masked = (mask.to(device_, at::kLong) == 0).view({b, 1, 1, l});
  const at::Tensor shared = config_.shared_pos ? position_bias(shared_pos_embedding_, l) : at::Tensor();
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (cancelled && cancelled()) throw Error(ErrorCode::Aborted, "the operation was aborted");
    const Block& blk = blocks_[i];
    const at::Tensor pos_bias = config_.shared_pos ? shared : position_bias(blk.pos_embedding, l);
    if (trace) (*trace)["block" + std::to_string(i) + "_pos_bias"] = pos_bias;
    // Self-attention without scaling (T5): softmax(q k^T + bias) v, heads of dim_attn / N.
    const at::Tensor h = ops::rms_norm(x, blk.norm1.get(at::kFloat), 1e-6);
    const at::Tensor q = ops::linear(h, blk.q, {}).view({b, l, n, c}).permute({0, 2, 1, 3});
    const at::Tensor k = ops::linear(h, blk.k, {}).view({b, l, n, c}).permute({0, 2, 3, 1});
    const at::Tensor v = ops::linear(h, blk.v, {}).view({b, l, n, c}).permute({0, 2, 1, 3});
    at::Tensor bias = pos_bias.expand({b, n, l, l}).clone();
    bias.masked_fill_(key_masked, std::numeric_limits<float>::lowest());
    const at::Tensor attn = at::softmax(at::matmul(q, k) + bias, -1);
    x = x + ops::linear(at::matmul(attn, v).permute({0, 2, 1, 3}).reshape({b, l, n * c}), blk.o, {});
    // Gated GELU(tanh) feed-forward: fc2(fc1(x) * gelu(gate(x))).
    const at::Tensor h2 = ops::rms_norm(x, blk.norm2.get(at::kFloat), 1e-6);
    x = x + ops::linear(ops::linear(h2, blk.fc1, {}) * at::gelu(ops::linear(h2, blk.gate0, {}), "tanh"), blk.fc2, {});
    if (trace) (*trace)["block" + std::to_string(i) + "_out"] = x;
  }
  if (trace && !device_.is_cpu())
    for (auto& [name, value] : *trace) value = value.to(at::kCPU);
  return ops::rms_norm(x, norm_.get(at::kFloat), 1e-6).to(at::kCPU);
}

Umt5Config infer_umt5_config(const std::map<std::string, std::vector<int64_t>>& shapes, const std::string& source) {
  auto shape = [&](const std::string& key) -> const std::vector<int64_t>& {
    auto it = shapes.find(key);
    if (it == shapes.end())
      throw core::bad_checkpoint(source, "not a umT5 encoder: no tensor '" + key + "' to infer the configuration from");
    return it->second;
  };
  Umt5Config c;
  c.vocab = shape("token_embedding.weight")[0];
  c.dim = shape("token_embedding.weight")[1];
  c.dim_attn = shape("blocks.0.attn.q.weight")[0];
  c.dim_ffn = shape("blocks.0.ffn.fc1.weight")[0];
  c.shared_pos = shapes.count("pos_embedding.embedding.weight") > 0;
  const auto& table = shape(c.shared_pos ? "pos_embedding.embedding.weight" : "blocks.0.pos_embedding.embedding.weight");
  c.num_buckets = table[0];
  c.num_heads = table[1];
  while (shapes.count("blocks." + std::to_string(c.num_layers) + ".norm1.weight")) ++c.num_layers;
  if (c.num_heads <= 0 || c.dim_attn % c.num_heads != 0)
    throw core::bad_checkpoint(source, "umT5: " + std::to_string(c.num_heads) + " heads do not divide dim_attn " +
                                           std::to_string(c.dim_attn));
  return c;
}

std::shared_ptr<Umt5Encoder> load_umt5(const std::vector<std::string>& files, bool populate,
                                       const std::function<bool()>& cancelled, std::string* embedded_tokenizer,
                                       at::Device device, bool load_on_main) {
  LoadedWeights loaded = load_weights(files, populate, cancelled);
  // A ComfyUI file may carry its tokenizer as a `spiece_model` tensor (u8): not a parameter.
  if (embedded_tokenizer) embedded_tokenizer->clear();
  if (auto it = loaded.weights.find("spiece_model"); it != loaded.weights.end()) {
    const at::Tensor bytes = it->second.stored.value.contiguous();
    if (embedded_tokenizer && bytes.element_size() == 1)
      embedded_tokenizer->assign(static_cast<const char*>(bytes.data_ptr()), bytes.numel());
    loaded.weights.erase(it);
  }
  return std::make_shared<Umt5Encoder>(infer_umt5_config(loaded.shapes, files_text(files)), std::move(loaded.weights),
                                       files_text(files), device, load_on_main);
}

}  // namespace wan::models
