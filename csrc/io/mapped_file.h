// A read-only view of a whole file through mmap. Tensors made from a checkpoint alias the
// mapping and keep it alive through shared_ptr, so no tensor data is ever copied at load.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

namespace wan::io {

class MappedFile {
 public:
  // Throws core::Error(Io) naming the file when it cannot be opened or mapped.
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  // Private copy-on-write pages; read-only only under strict overcommit (see open()).
  uint8_t* mutable_data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  uint8_t* data_;
  size_t size_;
};

}  // namespace wan::io
