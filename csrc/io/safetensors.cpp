// safetensors: 8-byte little-endian header length N, N bytes of JSON, then the data.
// Checks follow the reference implementation (huggingface/safetensors): every tensor's
// byte range must match dtype x shape, lie inside the data section and not overlap another.
#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io/json.h"

namespace wan::io {
namespace {

using core::bad_checkpoint;

// Larger headers exist nowhere in practice; the cap keeps a corrupt length from making us
// parse gigabytes of tensor data as JSON.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::string quoted(const std::string& s) { return "'" + s + "'"; }

// Product of dims times element size, or nullopt on overflow.
std::optional<uint64_t> byte_count(const std::vector<int64_t>& shape, size_t element_size) {
  uint64_t n = element_size;
  for (int64_t d : shape) {
    if (d != 0 && n > UINT64_MAX / static_cast<uint64_t>(d)) return std::nullopt;
    n *= static_cast<uint64_t>(d);
  }
  return n;
}

TensorRecord parse_entry(const std::string& file, const std::string& name, const JsonValue& v,
                         uint64_t data_start, uint64_t data_size) {
  const std::string where = "tensor " + quoted(name);
  if (v.kind != JsonValue::Kind::Object)
    throw bad_checkpoint(file, where + ": expected an object with dtype, shape and data_offsets");
  const JsonValue* dtype = v.find("dtype");
  const JsonValue* shape = v.find("shape");
  const JsonValue* offsets = v.find("data_offsets");
  if (!dtype || dtype->kind != JsonValue::Kind::String)
    throw bad_checkpoint(file, where + ": missing or non-string \"dtype\"");
  if (!shape || shape->kind != JsonValue::Kind::Array)
    throw bad_checkpoint(file, where + ": missing or non-array \"shape\"");
  if (!offsets || offsets->kind != JsonValue::Kind::Array || offsets->array.size() != 2)
    throw bad_checkpoint(file, where + ": \"data_offsets\" must be an array [begin, end]");

  TensorRecord r;
  r.name = name;
  const auto dt = core::dtype_from_safetensors_name(dtype->string);
  if (!dt)
    throw bad_checkpoint(file, where + ": unknown dtype " + quoted(dtype->string) +
                                   " (expected F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, "
                                   "I16, I8, U8 or BOOL)");
  r.dtype = *dt;
  if (shape->array.size() > 16) throw bad_checkpoint(file, where + ": more than 16 dimensions");
  for (const auto& d : shape->array) {
    if (d.kind != JsonValue::Kind::Number || !d.unsigned_integer || d.negative_integer ||
        *d.unsigned_integer > static_cast<uint64_t>(INT64_MAX))
      throw bad_checkpoint(file, where + ": shape entries must be non-negative integers");
    r.shape.push_back(static_cast<int64_t>(*d.unsigned_integer));
  }
  uint64_t begin_end[2];
  for (int i = 0; i < 2; ++i) {
    const auto& o = offsets->array[i];
    if (o.kind != JsonValue::Kind::Number || !o.unsigned_integer || o.negative_integer)
      throw bad_checkpoint(file, where + ": data_offsets must be non-negative integers");
    begin_end[i] = *o.unsigned_integer;
  }
  const auto [begin, end] = begin_end;
  if (begin > end)
    throw bad_checkpoint(file, where + ": data_offsets [" + std::to_string(begin) + ", " +
                                   std::to_string(end) + "] run backwards");
  if (end > data_size)
    throw bad_checkpoint(file, where + ": data_offsets end " + std::to_string(end) +
                                   " lies past the end of the data (" + std::to_string(data_size) +
                                   " bytes; is the file truncated?)");
  const auto expected = byte_count(r.shape, core::dtype_size(r.dtype));
  if (!expected || *expected != end - begin) {
    std::string shape_text;
    for (size_t i = 0; i < r.shape.size(); ++i)
      shape_text += (i ? ", " : "") + std::to_string(r.shape[i]);
    throw bad_checkpoint(file, where + ": shape [" + shape_text + "] of " + dtype->string +
                                   " needs " + (expected ? std::to_string(*expected) : "too many") +
                                   " bytes but data_offsets span " + std::to_string(end - begin));
  }
  r.offset = data_start + begin;
  r.nbytes = end - begin;
  return r;
}

}  // namespace

ParsedCheckpoint parse_safetensors(const uint8_t* data, size_t size, const std::string& file) {
  if (size < 8)
    throw bad_checkpoint(file, "safetensors file of " + std::to_string(size) +
                                   " bytes is shorter than its 8-byte header length");
  const uint64_t header_len = read_u64_le(data);
  if (header_len > size - 8)
    throw bad_checkpoint(file, "header length " + std::to_string(header_len) +
                                   " runs past the end of the file (" + std::to_string(size) +
                                   " bytes; is the file truncated?)");
  if (header_len > kMaxHeaderBytes)
    throw bad_checkpoint(file, "header length " + std::to_string(header_len) +
                                   " exceeds the 100 MiB limit");
  std::string error;
  const auto header = parse_json(
      std::string_view(reinterpret_cast<const char*>(data) + 8, header_len), error);
  if (!header) throw bad_checkpoint(file, "header is not valid JSON: " + error);
  if (header->kind != JsonValue::Kind::Object)
    throw bad_checkpoint(file, "header must be a JSON object");

  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = size - data_start;
  ParsedCheckpoint out;
  for (const auto& [name, value] : header->object) {
    if (name == "__metadata__") {
      if (value.kind != JsonValue::Kind::Object)
        throw bad_checkpoint(file, "__metadata__ must be an object of strings");
      for (const auto& [k, v] : value.object) {
        if (v.kind != JsonValue::Kind::String)
          throw bad_checkpoint(file, "__metadata__ entry " + quoted(k) + " must be a string");
        out.metadata[k] = v.string;
      }
      continue;
    }
    out.tensors.push_back(parse_entry(file, name, value, data_start, data_size));
  }

  // Overlap check: sort byte ranges; empty tensors own no bytes and cannot overlap.
  std::vector<const TensorRecord*> by_offset;
  for (const auto& r : out.tensors)
    if (r.nbytes) by_offset.push_back(&r);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorRecord* a, const TensorRecord* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorRecord& prev = *by_offset[i - 1];
    const TensorRecord& cur = *by_offset[i];
    if (cur.offset < prev.offset + prev.nbytes)
      throw bad_checkpoint(file, "tensor " + quoted(cur.name) + " overlaps tensor " +
                                     quoted(prev.name) + " in the data section");
  }
  return out;
}

FileFormat detect_format(const uint8_t* data, size_t size) {
  if (size >= 4 && std::memcmp(data, "PK\x03\x04", 4) == 0) return FileFormat::TorchZip;
  if (size >= 4 && std::memcmp(data, "GGUF", 4) == 0) return FileFormat::Gguf;
  // safetensors before the legacy check: its length prefix may well start with 0x80.
  if (size >= 9 && data[8] == '{') return FileFormat::Safetensors;
  // Pre-1.6 torch.save: a protocol-2 pickle whose first object is the magic number, a LONG1.
  if (size >= 4 && data[0] == 0x80 && data[1] == 0x02 && data[2] == 0x8a) return FileFormat::TorchLegacy;
  return FileFormat::Unknown;
}

ParsedCheckpoint parse_checkpoint(const uint8_t* data, size_t size, const std::string& file) {
  switch (detect_format(data, size)) {
    case FileFormat::Safetensors: return parse_safetensors(data, size, file);
    case FileFormat::TorchZip: return parse_torch_zip(data, size, file);
    case FileFormat::TorchLegacy:
      throw bad_checkpoint(file, "a legacy (pre-zip) torch.save file; re-save it with a current "
                                 "torch (torch.save(torch.load(f), f)) or convert it to safetensors");
    case FileFormat::Gguf:
      throw bad_checkpoint(file, "GGUF checkpoints are not supported yet; use safetensors or .pth");
    case FileFormat::Unknown: break;
  }
  throw bad_checkpoint(file, "not a checkpoint: expected safetensors (8-byte length then '{') or "
                             "a torch.save zip archive ('PK'), found " +
                             (size < 9 ? std::to_string(size) + " bytes" : "other content"));
}

}  // namespace wan::io
