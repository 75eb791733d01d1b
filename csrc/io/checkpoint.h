// What a checkpoint file holds, as found by the parsers: where each tensor's bytes are.
// Parsers work on a byte span (a memory-mapped file or a buffer under test) and never copy
// tensor data; csrc/binding turns records into tensors that alias the mapping.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace wan::io {

struct TensorRecord {
  std::string name;              // the key as stored in the file (dialects are normalised later)
  core::DType dtype;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in elements; empty means contiguous row-major
  uint64_t offset = 0;           // byte offset, from the start of the file, of element [0, 0, ...]
  uint64_t nbytes = 0;           // bytes spanned from offset (for strided views: up to the last element)
};

struct ParsedCheckpoint {
  std::vector<TensorRecord> tensors;            // in file order
  std::map<std::string, std::string> metadata;  // safetensors __metadata__; empty for .pth
};

// Elements in a shape, saturating at INT64_MAX (for counting parameters, never for offsets).
inline int64_t element_count(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d <= 0) return 0;
    if (n > INT64_MAX / d) return INT64_MAX;
    n *= d;
  }
  return n;
}

enum class FileFormat { Safetensors, TorchZip, TorchLegacy, Gguf, Unknown };

// Decides by content (magic bytes), never by file name.
FileFormat detect_format(const uint8_t* data, size_t size);

// Each throws core::Error(BadCheckpoint) naming `file` and, where one is at fault, the tensor.
// Every record returned lies inside [0, size) and its byte count matches dtype and shape.
ParsedCheckpoint parse_safetensors(const uint8_t* data, size_t size, const std::string& file);
ParsedCheckpoint parse_torch_zip(const uint8_t* data, size_t size, const std::string& file);
ParsedCheckpoint parse_checkpoint(const uint8_t* data, size_t size, const std::string& file);

}  // namespace wan::io
