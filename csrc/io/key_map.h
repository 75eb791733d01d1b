// The one place where checkpoint key dialects are normalised to the official Wan2.1 names
// (wan/modules/{model,vae,t5,clip}.py at 9737cba9, as listed in shared/manifests/).
// Works on the records the file parsers produce; no tensor data is read or copied, so a
// record keeps its offset, dtype and shape and only its name changes.
//
// Handled (shared/spec/anchors.md section c):
//   prefixes   `model.diffusion_model.`, `diffusion_model.` (ComfyUI), `model.` (all keys),
//              `vae.` / `first_stage_model.` (a VAE-only file whose every key has it);
//   all-in-one ComfyUI files: the keys under `vae.`, `first_stage_model.`, `text_encoders.`,
//              `cond_stage_model.`, `clip_vision.`, `conditioner.` are set aside (not
//              normalised, names as stored) and their prefixes reported, so that the DiT part
//              loads on its own and `inspect` can say what else the file holds;
//   diffusers  WanTransformer3DModel names (incl. the norm2<->norm3 swap, I2V added k/v, VACE);
//   hf-t5      Hugging Face (U)MT5 encoder names -> Wan T5Encoder names;
//   scaled fp8 the ComfyUI `scaled_fp8` marker is dropped and described in `quantization`;
//              `<layer>.weight_scale` -> `<layer>.scale_weight`, `<layer>.input_scale` ->
//              `<layer>.scale_input` (except in comfy_quant layers, where those names mean
//              something else and are kept).
//   markers    `model_type.*` (some FLF2V files) is dropped; `spiece_model` (the umT5
//              tokenizer embedded by Comfy-Org) is kept under its name for the tokenizer.
// Recognised but not renamed (layout reported, keys kept): Hugging Face CLIP vision
// (`vision_model.*`, "hf-clip"), open_clip (`visual.transformer.resblocks.*`, "open-clip") and
// the diffusers VAE ("diffusers-vae"): the CLIPs need tensor surgery (q/k/v fusion, reshapes)
// and the VAE an index remapping that no file at hand can check; that is the loaders' business.
// Keys that match no rule are kept as they are; the loaders report unexpected keys.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "io/checkpoint.h"

namespace wan::io {

// What a file's quantization bookkeeping says, gathered while its keys are normalised.
struct QuantizationFacts {
  bool scaled_fp8_marker = false;  // a ComfyUI `scaled_fp8` tensor was present (dropped)
  std::optional<core::DType> scaled_fp8_dtype;  // the format it names: F8_E4M3FN or F8_E5M2
  bool fp8_matmul_allowed = true;               // false when the marker has 2 elements (ComfyUI)
  int64_t scale_weight = 0;                     // `<layer>.scale_weight` tensors, after renaming
  int64_t scale_input = 0;                      // `<layer>.scale_input` tensors, after renaming
  int64_t renamed_scales = 0;  // how many of those were `.weight_scale` / `.input_scale`
  int64_t comfy_quant = 0;     // `<layer>.comfy_quant` markers (ComfyUI mixed NVFP4/FP8), kept
};

struct NormalizedCheckpoint {
  std::vector<TensorRecord> tensors;  // file order, official names; markers removed
  // "official" | "comfyui" (official names under a stripped prefix) | "diffusers" | "hf-t5"
  // | "hf-clip" | "open-clip" | "diffusers-vae" (the last three recognised, not renamed)
  std::string layout;
  std::string stripped_prefix;  // "" when none
  QuantizationFacts quantization;
  std::vector<std::string> dropped;  // source keys removed on purpose (markers, tied aliases)
  // All-in-one files: the other components' records (names as stored) and their prefixes
  // ("vae.", "text_encoders.", ...), in order of first appearance.
  std::vector<TensorRecord> set_aside;
  std::vector<std::string> other_components;
};

// Throws core::Error(BadCheckpoint) naming `file` when two source keys map to one name.
NormalizedCheckpoint normalize_keys(const ParsedCheckpoint& in, const std::string& file);

}  // namespace wan::io
