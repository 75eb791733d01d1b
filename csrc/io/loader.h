// Loading checkpoints into tensors that alias memory-mapped files, and writing safetensors.
#pragma once
#include <functional>
#include <memory>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/checkpoint.h"

namespace wan::io {

// Called between units of work; returns true when the caller has given up (AbortSignal).
using CancelCheck = std::function<bool()>;

struct LoadOptions {
  // Read every page into memory before returning, so the first forward pass does not stall
  // on disk. With false, pages are read lazily when first touched.
  bool populate = true;
};

struct LoadedCheckpoint {
  std::vector<std::pair<std::string, core::Tensor>> tensors;  // in file order
  std::map<std::string, std::string> metadata;
};

class MappedFile;

// A checkpoint file mapped into memory and indexed, before any tensor is made.
struct MappedCheckpoint {
  std::shared_ptr<MappedFile> file;
  ParsedCheckpoint parsed;
};

// Maps and parses one file (and with options.populate reads its pages in).
MappedCheckpoint map_checkpoint(const std::string& file, const LoadOptions& options,
                                const CancelCheck& cancelled);

// A tensor aliasing the mapping (copied only when its data is misaligned for its dtype).
core::Tensor tensor_from_record(const std::shared_ptr<MappedFile>& file, const TensorRecord& r);

// Loads one checkpoint file (safetensors or torch zip, by content); shards are joined by
// the caller (lib/checkpoint.ts). Throws core::Error: BadCheckpoint (naming the file and
// tensor), Io, or Aborted.
LoadedCheckpoint load_checkpoint(const std::string& file, const LoadOptions& options,
                                 const CancelCheck& cancelled);

// Parses headers only (for inspect): maps the file but reads no tensor data.
ParsedCheckpoint read_checkpoint_index(const std::string& file);

// Writes a safetensors file atomically: a temporary file in the same folder, fsync, rename.
// On any failure or cancellation the temporary file is removed and `path` is untouched.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, core::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata,
                      const CancelCheck& cancelled);

}  // namespace wan::io
