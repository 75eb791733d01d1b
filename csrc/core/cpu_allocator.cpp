#include "core/cpu_allocator.h"

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <malloc.h>
#include <torch/version.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>

namespace wan::core {
namespace {

// libtorch's own alignment for CPU tensors (c10::gAlignment): vectorised kernels expect it.
constexpr size_t kAlignment = 64;

class HeapCpuAllocator final : public at::Allocator {
 public:
  at::DataPtr allocate(size_t n) const override {
    if (n == 0) return at::DataPtr(nullptr, nullptr, &std::free, at::Device(at::kCPU));
    if (n > SIZE_MAX - kAlignment) throw std::bad_alloc();
    void* raw = std::malloc(n + kAlignment);
    if (!raw) throw std::bad_alloc();
    const auto aligned = (reinterpret_cast<uintptr_t>(raw) + kAlignment - 1) & ~uintptr_t(kAlignment - 1);
    return at::DataPtr(reinterpret_cast<void*>(aligned), raw, &std::free, at::Device(at::kCPU));
  }

#if TORCH_VERSION_MAJOR >= 2
  // libtorch 2.x asks allocators to copy their own blocks (Allocator::clone).
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }
#endif
};

}  // namespace

void install_cpu_allocator() {
  static std::once_flag once;
  std::call_once(once, [] {
    mallopt(M_MMAP_MAX, 0);                // large blocks stay in the heap, for reuse
    mallopt(M_TRIM_THRESHOLD, 256 << 20);  // return memory to the OS only in big steps
    mallopt(M_TOP_PAD, 64 << 20);
    static HeapCpuAllocator allocator;
    c10::SetCPUAllocator(&allocator, /*priority=*/1);
  });
}

}  // namespace wan::core
