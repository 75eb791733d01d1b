// The umT5 text encoder of Wan2.1 (wan/modules/t5.py: T5Encoder as umt5_xxl(encoder_only)).
// Config from shapes, then the blocks bottom-up, then the encoder.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ops/linear.h"
#include "runtime/residency.h"

namespace wan::models {

struct Umt5Config {
  int64_t vocab = 0, dim = 0, dim_attn = 0, dim_ffn = 0, num_heads = 0, num_layers = 0;
  int64_t num_buckets = 32, max_dist = 128;
  bool shared_pos = false;  // umT5: one relative position table per layer
};

// T5's bidirectional relative position bucket of rel = key - query (_relative_position_bucket).
at::Tensor t5_relative_bucket(const at::Tensor& rel, int64_t num_buckets, int64_t max_dist);

class Umt5Encoder {
 public:
  // `device`: where the encoder computes (float32) and its weights live while in use;
  // `load_on_main`: whether they go there at load or at the first use (the wrapper's
  // load_device). forward takes and returns CPU tensors.
  Umt5Encoder(Umt5Config config, std::map<std::string, ops::Weight> weights, const std::string& source,
              at::Device device = at::kCPU, bool load_on_main = true);

  // ids, mask: int64 [B, L] (mask 1 for real tokens) -> [B, L, dim] float32. `trace` (optional)
  // receives token_embedding_out, block{i}_pos_bias and block{i}_out.
  at::Tensor forward(const at::Tensor& ids, const at::Tensor& mask, const std::function<bool()>& cancelled = {},
                     std::map<std::string, at::Tensor>* trace = nullptr) const;

  const Umt5Config& config() const { return config_; }
  at::Device device() const { return device_; }
  // Where the weights are between uses (runtime/residency.h): a use brings them to the main
  // device; offload() returns them to the CPU (the wrapper's force_offload).
  void offload() const { residency_.place(false); }
  bool on_main_device() const { return residency_.on_main(); }
  // Held while memory accounting reads the weights from another thread.
  std::unique_lock<std::mutex> lock_weights() const { return residency_.lock(); }
  // Calls f(weight) on every parameter as held, for memory accounting (runtime/memory_stats.h).
  template <typename F>
  void visit_weights(F&& f) const {
    for (const ops::Weight* w : {&token_embedding_, &norm_, &shared_pos_embedding_}) f(*w);
    for (const Block& b : blocks_)
      for (const ops::Weight* w : {&b.norm1, &b.norm2, &b.q, &b.k, &b.v, &b.o, &b.gate0, &b.fc1, &b.fc2, &b.pos_embedding})
        f(*w);
  }

 private:
  struct Block {
    ops::Weight norm1, norm2;
    ops::Weight q, k, v, o;            // attn.* (no biases in T5)
    ops::Weight gate0, fc1, fc2;       // ffn.gate.0 (then GELU-tanh), ffn.fc1, ffn.fc2
    ops::Weight pos_embedding;         // [num_buckets, num_heads], per layer unless shared
  };
  at::Tensor position_bias(const ops::Weight& table, int64_t length) const;  // [1, N, L, L]

  Umt5Config config_;
  at::Device device_;
  ops::Weight token_embedding_, norm_, shared_pos_embedding_;
  std::vector<Block> blocks_;
  mutable runtime::Residency residency_;
};

Umt5Config infer_umt5_config(const std::map<std::string, std::vector<int64_t>>& shapes, const std::string& source);

// `embedded_tokenizer` (optional) receives the bytes of a ComfyUI-style `spiece_model` tensor
// (the serialized SentencePiece model), or is cleared when the file has none.
std::shared_ptr<Umt5Encoder> load_umt5(const std::vector<std::string>& files, bool populate,
                                       const std::function<bool()>& cancelled, std::string* embedded_tokenizer = nullptr,
                                       at::Device device = at::kCPU, bool load_on_main = true);

}  // namespace wan::models
