// A libtorch tensor with the dtype the user sees. libtorch 1.13 has no float8 types, so fp8
// tensors are held as kByte with the fp8 format in `dtype`; every other dtype maps 1:1.
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "core/dtype.h"

namespace wan::core {

struct Tensor {
  at::Tensor value;
  DType dtype = DType::F32;
};

// The storage type of each dtype (fp8 -> kByte).
at::ScalarType storage_scalar_type(DType t);
// The dtype of a plain libtorch tensor; throws InvalidTensor for types we do not expose.
DType dtype_of(const at::Tensor& t);

inline Tensor wrap(at::Tensor t) { return Tensor{t, dtype_of(t)}; }

// A shape as error messages print it: "[2, 3, 8]".
std::string shape_text(at::IntArrayRef sizes);

// Values as float32 (fp8 decoded exactly through a lookup table; f64/ints converted).
at::Tensor to_float(const Tensor& t);

// Returns a contiguous tensor holding `t` converted to `target`. Conversion into fp8 is
// refused: fp8 weights come from checkpoints, and quantising belongs to ops/ (issue 7).
Tensor convert(const Tensor& t, DType target);

// Sets libtorch's thread count (it defaults to 1 on these VMs, native-notes.md) and, once
// per process, installs our CPU allocator (core/cpu_allocator.h).
void init_runtime(int threads);

}  // namespace wan::core
