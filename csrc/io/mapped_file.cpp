#include "io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace wan::io {

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  auto io_error = [&](const std::string& what) {
    return core::Error(core::ErrorCode::Io, path + ": " + what + ": " + std::strerror(errno));
  };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw io_error("cannot open");
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const auto e = io_error("cannot stat");
    ::close(fd);
    throw e;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw core::Error(core::ErrorCode::Io, path + ": not a regular file");
  }
  const size_t size = static_cast<size_t>(st.st_size);
  uint8_t* data = nullptr;
  if (size > 0) {
    // PROT_WRITE with MAP_PRIVATE: an in-place op on a loaded weight gets private
    // copy-on-write pages instead of a SIGSEGV, and the file itself is never modified.
    // MAP_NORESERVE: without it Linux charges the whole writable mapping against RAM plus
    // swap up front, so one 28 GB single-file 14B checkpoint failed to map on a 24 GB
    // machine. Under strict overcommit (vm.overcommit_memory=2) that flag is ignored and the
    // mapping can still fail; a read-only mapping is never charged, so fall back to it.
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
    if (p == MAP_FAILED && errno == ENOMEM) p = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const auto e = io_error("cannot map");
      ::close(fd);
      throw e;
    }
    data = static_cast<uint8_t*>(p);
  }
  ::close(fd);  // the mapping keeps the file referenced
  return std::shared_ptr<MappedFile>(new MappedFile(path, data, size));
}

MappedFile::~MappedFile() {
  if (data_) munmap(data_, size_);
}

}  // namespace wan::io
