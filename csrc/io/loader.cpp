#include "io/loader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "core/error.h"
#include "io/mapped_file.h"

namespace wan::io {
namespace {

using core::Error;
using core::ErrorCode;

void check_cancelled(const CancelCheck& cancelled) {
  if (cancelled && cancelled()) throw Error(ErrorCode::Aborted, "the operation was aborted");
}

// Reads one byte per page of [begin, end) so that the kernel brings the range into memory.
// Cancellation is checked every 64 MiB.
void populate_range(const uint8_t* begin, const uint8_t* end, const CancelCheck& cancelled) {
  constexpr size_t kPage = 4096;
  constexpr size_t kChunk = 64 << 20;
  volatile uint8_t sink = 0;
  for (const uint8_t* chunk = begin; chunk < end; chunk += std::min<size_t>(kChunk, end - chunk)) {
    check_cancelled(cancelled);
    const uint8_t* chunk_end = chunk + std::min<size_t>(kChunk, end - chunk);
    for (const uint8_t* p = chunk; p < chunk_end; p += kPage) sink = sink + *p;
  }
}

}  // namespace

ParsedCheckpoint read_checkpoint_index(const std::string& file) {
  const auto mapped = MappedFile::open(file);
  return parse_checkpoint(mapped->data(), mapped->size(), file);
}

core::Tensor tensor_from_record(const std::shared_ptr<MappedFile>& file, const TensorRecord& r) {
  const auto options = at::TensorOptions().dtype(core::storage_scalar_type(r.dtype));
  std::vector<int64_t> strides = r.strides;
  if (strides.empty()) {
    strides.assign(r.shape.size(), 1);
    for (int i = static_cast<int>(r.shape.size()) - 2; i >= 0; --i)
      strides[i] = strides[i + 1] * std::max<int64_t>(r.shape[i + 1], 1);
  }
  uint8_t* ptr = file->mutable_data() + r.offset;
  at::Tensor t;
  if (r.nbytes == 0) {
    t = at::empty(r.shape, options);  // nothing to alias
  } else if (r.offset % core::dtype_size(r.dtype) != 0) {
    // safetensors only aligns the data section to 8 bytes when its writer padded the header;
    // a misaligned element type is copied rather than read unaligned.
    t = at::from_blob(ptr, r.shape, strides, options).clone();
  } else {
    auto keep_alive = file;
    t = at::from_blob(ptr, r.shape, strides, [keep_alive](void*) {}, options);
  }
  return core::Tensor{t, r.dtype};
}

MappedCheckpoint map_checkpoint(const std::string& file, const LoadOptions& options,
                                const CancelCheck& cancelled) {
  check_cancelled(cancelled);
  MappedCheckpoint out{MappedFile::open(file), {}};
  out.parsed = parse_checkpoint(out.file->data(), out.file->size(), file);
  if (options.populate && out.file->size() > 0) {
    madvise(out.file->mutable_data(), out.file->size(), MADV_SEQUENTIAL);
    populate_range(out.file->data(), out.file->data() + out.file->size(), cancelled);
  }
  return out;
}

LoadedCheckpoint load_checkpoint(const std::string& file, const LoadOptions& options,
                                 const CancelCheck& cancelled) {
  MappedCheckpoint mapped = map_checkpoint(file, options, cancelled);
  LoadedCheckpoint out;
  out.metadata = std::move(mapped.parsed.metadata);
  for (const auto& r : mapped.parsed.tensors) out.tensors.emplace_back(r.name, tensor_from_record(mapped.file, r));
  return out;
}

namespace {

std::string json_escape(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", u);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

class TempFile {
 public:
  explicit TempFile(const std::string& target) {
    static std::atomic<int> counter{0};
    const auto slash = target.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "" : target.substr(0, slash + 1);
    const std::string base = slash == std::string::npos ? target : target.substr(slash + 1);
    path_ = dir + "." + base + ".tmp-" + std::to_string(getpid()) + "-" +
            std::to_string(counter++);
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("cannot create temporary file " + path_);
  }
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(path_.c_str());
  }

  void write(const void* data, size_t n) {
    auto p = static_cast<const uint8_t*>(data);
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, std::min<size_t>(n, 1 << 30));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) fail("cannot write " + path_);
      p += w;
      n -= static_cast<size_t>(w);
    }
  }

  void commit(const std::string& target) {
    if (fsync(fd_) != 0) fail("cannot flush " + path_);
    if (::close(fd_) != 0) {
      fd_ = -1;
      fail("cannot close " + path_);
    }
    fd_ = -1;
    if (::rename(path_.c_str(), target.c_str()) != 0) fail("cannot rename to " + target);
    committed_ = true;
  }

 private:
  [[noreturn]] void fail(const std::string& what) {
    throw Error(ErrorCode::Io, what + ": " + std::strerror(errno));
  }
  std::string path_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, core::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata,
                      const CancelCheck& cancelled) {
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      header += (first ? "" : ",") + json_escape(k) + ":" + json_escape(v);
      first = false;
    }
    header += "}";
  }
  std::vector<at::Tensor> contiguous;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__")
      throw Error(ErrorCode::InvalidOption, "'__metadata__' is reserved and cannot name a tensor");
    if (!t.value.defined())
      throw Error(ErrorCode::InvalidTensor, "tensor '" + name + "' has been disposed");
    contiguous.push_back(t.value.contiguous());
    const uint64_t n = contiguous.back().nbytes();
    std::string shape;
    for (const auto d : t.value.sizes()) shape += (shape.empty() ? "" : ",") + std::to_string(d);
    header += (header.size() > 1 ? "," : "") + json_escape(name) + ":{\"dtype\":\"" +
              std::string(core::dtype_safetensors_name(t.dtype)) + "\",\"shape\":[" + shape +
              "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + n) +
              "]}";
    offset += n;
  }
  header += "}";
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
  header.append((8 - header.size() % 8) % 8, ' ');

  TempFile tmp(path);
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(uint64_t(header.size()) >> (8 * i));
  tmp.write(len, 8);
  tmp.write(header.data(), header.size());
  for (const auto& t : contiguous) {
    check_cancelled(cancelled);
    tmp.write(t.data_ptr(), t.nbytes());
  }
  check_cancelled(cancelled);
  tmp.commit(path);
}

}  // namespace wan::io
