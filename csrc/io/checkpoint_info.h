// Recognising a checkpoint from its records alone: which model it holds, in which key
// layout and quantization, and the configuration its shapes imply (shared/spec/anchors.md
// c.3-c.6). Backs `wan-native inspect` and lets loaders pick an architecture without a
// config file. ATen-free; no tensor data is read.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "io/checkpoint.h"

namespace wan::io {

struct CheckpointInfo {
  std::string family;   // "wan-dit" | "wan-vae" | "umt5" | "clip-vision" | "unknown"
  std::string variant;  // DiT "1.3B" | "14B" | "5B" | "tiny" (dims of no release); VAE "wan2.1" |
                        // "wan2.2"; umT5 "xxl" | "tiny"; CLIP "vit-h-14" | "tiny"; "" unknown
  std::string task;    // DiT: "t2v" | "i2v" | "flf2v" | "vace" | "" (other Wan variants); others ""
  std::string layout;  // from normalize_keys
  std::string key_prefix;    // the stripped prefix, "" if none
  std::string quantization;  // "none" | "fp8_e4m3fn" | "fp8_e5m2" | "fp8_e4m3fn_scaled" |
                             // "fp8_e5m2_scaled" | "mixed" (both fp8 formats) | "int8" |
                             // "int8_scaled" | "comfy_quant"
  std::map<std::string, int64_t> dtypes;    // core::dtype_name -> tensors, over the whole file
  int64_t num_tensors = 0, num_params = 0;  // whole file; num_params counts every element
  // Inferred from shapes, in a stable order. DiT: dim, in_dim, out_dim, ffn_dim, freq_dim,
  // text_dim, num_heads and text_len (release dims only; text_len assumed), num_layers,
  // patch_t/h/w, qk_norm, cross_attn_norm, image_dim (i2v), flf_pos_tokens (flf2v), vace_in_dim,
  // vace_layers. VAE: dim, z_dim, decoder_dim. umT5: vocab_size, dim, dim_attn, dim_ffn, num_heads,
  // num_buckets, num_layers, shared_pos, spiece_model_bytes. CLIP: vision_dim, patch_size,
  // image_size, vision_layers, vision_mlp_dim, vision_heads (ViT-H only), embed_dim, text_*.
  std::vector<std::pair<std::string, int64_t>> config;
  std::vector<std::string> warnings;  // e.g. "text_len is not stored in the weights; assuming 512"
};

// Throws core::Error(BadCheckpoint) naming `file` where normalize_keys does.
CheckpointInfo inspect_checkpoint(const ParsedCheckpoint& in, const std::string& file);

// A human-readable multi-line report for `wan-native inspect`, ending in a newline.
std::string describe(const CheckpointInfo& info);

}  // namespace wan::io
