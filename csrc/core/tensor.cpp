#include "core/tensor.h"

#include <ATen/Parallel.h>

#include <array>

#include "core/cpu_allocator.h"
#include "core/error.h"

#ifdef WAN_WITH_CUDA
#include <c10/cuda/CUDAStream.h>

#include "ops/fp8_decode.h"
#endif

namespace wan::core {

std::string shape_text(at::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out + "]";
}

at::ScalarType storage_scalar_type(DType t) {
  switch (t) {
    case DType::F64: return at::kDouble;
    case DType::F32: return at::kFloat;
    case DType::F16: return at::kHalf;
    case DType::BF16: return at::kBFloat16;
    case DType::F8_E4M3FN:
    case DType::F8_E5M2:
    case DType::U8: return at::kByte;
    case DType::I64: return at::kLong;
    case DType::I32: return at::kInt;
    case DType::I16: return at::kShort;
    case DType::I8: return at::kChar;
    case DType::Bool: return at::kBool;
  }
  return at::kFloat;
}

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kDouble: return DType::F64;
    case at::kFloat: return DType::F32;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kByte: return DType::U8;
    case at::kLong: return DType::I64;
    case at::kInt: return DType::I32;
    case at::kShort: return DType::I16;
    case at::kChar: return DType::I8;
    case at::kBool: return DType::Bool;
    default:
      throw Error(ErrorCode::InvalidTensor,
                  std::string("libtorch dtype ") + at::toString(t.scalar_type()) +
                      " has no wan-native equivalent");
  }
}

namespace {

using Lut = std::array<float, 256>;

const Lut& fp8_table(DType t) {
  static const Lut e4m3 = [] {
    Lut l;
    for (int i = 0; i < 256; ++i) l[i] = f8_e4m3fn_to_float(static_cast<uint8_t>(i));
    return l;
  }();
  static const Lut e5m2 = [] {
    Lut l;
    for (int i = 0; i < 256; ++i) l[i] = f8_e5m2_to_float(static_cast<uint8_t>(i));
    return l;
  }();
  return t == DType::F8_E5M2 ? e5m2 : e4m3;
}

// fp8 codes -> float32 through a 256-entry table; parallel because it runs over whole
// checkpoints (2.2 Gelem/s on 2 threads into a preallocated output, native-notes.md).
at::Tensor decode_fp8(const at::Tensor& codes, DType format) {
  const at::Tensor in = codes.contiguous();
  at::Tensor out = at::empty(in.sizes(), in.options().dtype(at::kFloat));
#ifdef WAN_WITH_CUDA
  if (in.is_cuda()) {
    const int status = ops::launch_fp8_decode(in.data_ptr<uint8_t>(), out.data_ptr<float>(), in.numel(),
                                              format == DType::F8_E5M2,
                                              c10::cuda::getCurrentCUDAStream(in.device().index()).stream());
    if (status != 0)
      throw Error(ErrorCode::Internal, "fp8 decode kernel failed with CUDA error " + std::to_string(status));
    return out;
  }
#endif
  const Lut& lut = fp8_table(format);
  const uint8_t* src = in.data_ptr<uint8_t>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, in.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) dst[i] = lut[src[i]];
  });
  return out;
}

bool is_fp8(DType t) { return t == DType::F8_E4M3FN || t == DType::F8_E5M2; }

}  // namespace

at::Tensor to_float(const Tensor& t) {
  if (is_fp8(t.dtype)) return decode_fp8(t.value, t.dtype);
  return t.value.to(at::kFloat).contiguous();
}

Tensor convert(const Tensor& t, DType target) {
  if (is_fp8(target)) {
    if (t.dtype == target) return Tensor{t.value.contiguous(), target};
    throw Error(ErrorCode::InvalidOption,
                "converting " + std::string(dtype_name(t.dtype)) + " to " +
                    std::string(dtype_name(target)) +
                    " is not supported: pass fp8 codes as a Uint8Array with that dtype");
  }
  if (is_fp8(t.dtype)) return Tensor{decode_fp8(t.value, t.dtype).to(storage_scalar_type(target)), target};
  return Tensor{t.value.to(storage_scalar_type(target)).contiguous(), target};
}

void init_runtime(int threads) {
  install_cpu_allocator();
  if (threads > 0) at::set_num_threads(threads);
}

}  // namespace wan::core
