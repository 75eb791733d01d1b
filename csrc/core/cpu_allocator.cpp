#include "core/cpu_allocator.h"

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <malloc.h>
#include <torch/version.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>

namespace wan::core {
namespace {

// libtorch's own alignment for CPU tensors (c10::gAlignment): vectorised kernels expect it.
constexpr size_t kAlignment = 64;

// Bytes of the blocks handed out and not yet freed, and the most there were since the last
// reset: what the tensors hold, without the heap's freed blocks (cpu_memory()).
std::atomic<int64_t> allocated_bytes{0};
std::atomic<int64_t> peak_bytes{0};

// The block's own malloc pointer is kept in the 8 bytes before the aligned pointer, so that
// data and context are one pointer: libtorch's raw_allocate()/raw_deallocate() (used by some
// kernels, e.g. GELU's scratch space) require exactly that, and a raw deleter. The requested
// size is kept in the 8 bytes before that, for the count above.
void free_block(void* aligned) {
  if (!aligned) return;
  void** slots = static_cast<void**>(aligned);
  allocated_bytes.fetch_sub(reinterpret_cast<int64_t>(slots[-2]), std::memory_order_relaxed);
  std::free(slots[-1]);
}

// libtorch 2.3 made Allocator::allocate non-const (pytorch#120969).
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
#define WAN_ALLOCATE_CONST
#else
#define WAN_ALLOCATE_CONST const
#endif

class HeapCpuAllocator final : public at::Allocator {
 public:
  at::DataPtr allocate(size_t n) WAN_ALLOCATE_CONST override {
    if (n == 0) return at::DataPtr(nullptr, nullptr, &free_block, at::Device(at::kCPU));
    if (n > SIZE_MAX - kAlignment) throw std::bad_alloc();
    void* raw = std::malloc(n + kAlignment);
    if (!raw) throw std::bad_alloc();
    // malloc's blocks are 16-byte aligned, so rounding raw + 1 up to 64 leaves 16 to 64 bytes
    // in front: room for the pointer and the size.
    const auto aligned = (reinterpret_cast<uintptr_t>(raw) + kAlignment) & ~uintptr_t(kAlignment - 1);
    void* data = reinterpret_cast<void*>(aligned);
    static_cast<void**>(data)[-1] = raw;
    static_cast<void**>(data)[-2] = reinterpret_cast<void*>(n);
    const int64_t now = allocated_bytes.fetch_add(static_cast<int64_t>(n), std::memory_order_relaxed) + n;
    int64_t peak = peak_bytes.load(std::memory_order_relaxed);
    while (now > peak && !peak_bytes.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
    }
    return at::DataPtr(data, data, &free_block, at::Device(at::kCPU));
  }

  at::DeleterFnPtr raw_deleter() const override { return &free_block; }

#if TORCH_VERSION_MAJOR >= 2
  // libtorch 2.x asks allocators to copy their own blocks (Allocator::clone).
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }
#endif
};

}  // namespace

CpuMemory cpu_memory(bool reset_peak) {
  const CpuMemory m{allocated_bytes.load(), peak_bytes.load()};
  if (reset_peak) peak_bytes.store(allocated_bytes.load());
  return m;
}

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
