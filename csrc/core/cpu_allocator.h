// The CPU allocator wan-native installs into libtorch at start-up.
#pragma once

#include <cstdint>

namespace wan::core {

// Keeps large tensors in glibc's heap (mallopt) and allocates them with a plain malloc
// instead of posix_memalign. Why both, measured on Debian 12 / libtorch 1.13:
//  - glibc serves blocks over 32 MiB with mmap and unmaps them on free, so every large op
//    output page-faults fresh zeroed memory: eager ops run 3-10x slower (native-notes.md).
//  - keeping them in the heap with posix_memalign(64) (libtorch's default) leaks in
//    practice: memalign trims the block to the exact size, small allocations take the
//    trimmed edges, and the freed block is then a few bytes too small for the next
//    same-sized request. A loop allocating and freeing 128 MiB grew by 128 MiB per turn.
//    Asking malloc for size + 64 bytes and aligning inside the block keeps every request of
//    one size the same, so freed blocks are reused (test/native/tensor.test.ts checks it).
void install_cpu_allocator();

// Bytes of CPU tensor memory allocated through that allocator now, and the most allocated at
// once since the last reset (which reset_peak makes now, after reading). Only the tensors:
// the heap's freed blocks that glibc keeps for reuse are not counted.
struct CpuMemory {
  int64_t allocated = 0;
  int64_t peak = 0;
};
CpuMemory cpu_memory(bool reset_peak);

}  // namespace wan::core
