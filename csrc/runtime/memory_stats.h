// What a loaded model holds: the bytes of its parameters as stored (after quantization, LoRA
// merges, key mapping), by dtype, split into the blocks block swap makes ready just in time
// ("swapped") and everything else ("resident"). Counted from the tensors the model references,
// so it is what the model keeps alive, not what its file held (a CLIP file's text tower, which
// the vision encoder drops, is not counted). lib/memory-planner.ts models the same numbers
// before loading; test/native/memory-stats.test.ts checks them against the files.
#pragma once
#include <cstdint>
#include <map>
#include <set>
#include <string>

#include "core/dtype.h"
#include "ops/linear.h"

namespace wan::runtime {

struct HeldBytes {
  int64_t bytes = 0;
  int64_t tensors = 0;
  std::map<std::string, int64_t> by_dtype;  // 'f32' | 'bf16' | 'f8_e4m3fn' ... -> bytes
};

class MemoryStats {
 public:
  HeldBytes resident, swapped;

  // Adds a parameter (and its fp8 scale). A tensor two weights share counts once; undefined
  // weights (optional parameters a checkpoint lacks) count nothing.
  void add(const ops::Weight& w, bool is_swapped) {
    if (!w.defined()) return;
    HeldBytes& into = is_swapped ? swapped : resident;
    add_tensor(into, w.stored.value, std::string(core::dtype_name(w.stored.dtype)));
    if (w.scale.defined()) add_tensor(into, w.scale, std::string(core::dtype_name(core::dtype_of(w.scale))));
  }

 private:
  void add_tensor(HeldBytes& into, const at::Tensor& t, const std::string& dtype) {
    // Keyed by the first byte and the size: a view of another parameter's storage would be a
    // different key, but no loader makes those.
    const auto key = std::make_pair(t.data_ptr(), static_cast<int64_t>(t.nbytes()));
    if (!seen_.insert(key).second) return;
    into.bytes += static_cast<int64_t>(t.nbytes());
    into.tensors += 1;
    into.by_dtype[dtype] += static_cast<int64_t>(t.nbytes());
  }
  std::set<std::pair<const void*, int64_t>> seen_;
};

}  // namespace wan::runtime
