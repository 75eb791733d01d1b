// Kernels exported for tests and benchmarks (lib/ops.ts): not part of the public API.
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <optional>

#include "binding/addon_data.h"
#include "core/cpu_allocator.h"
#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"
#include "ops/adaln.h"
#include "ops/attention.h"
#include "ops/fp8_rows.h"
#include "ops/linear.h"
#include "ops/norm.h"
#include "ops/quantize.h"
#include "ops/rope.h"

#ifdef WAN_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#endif

namespace wan::binding {
namespace {

// The arguments of attention() and attentionSeconds(): q, k, v, mode, kLens?, device, all moved there.
struct AttentionCall {
  at::Tensor q, k, v, k_lens;
  ops::AttentionMode mode;
  at::Device device = at::kCPU;
};

AttentionCall attention_call(Napi::Env env, const Napi::CallbackInfo& info) {
  const core::Tensor& q = unwrap_tensor(env, info[0], "q");
  const core::Tensor& k = unwrap_tensor(env, info[1], "k");
  const core::Tensor& v = unwrap_tensor(env, info[2], "v");
  if (!info[3].IsString()) throw_error(env, "WAN_INVALID_OPTION", "attentionMode must be a string");
  const ops::AttentionMode mode = ops::attention_mode_from_name(info[3].As<Napi::String>().Utf8Value());
  at::Tensor k_lens;
  if (!info[4].IsUndefined() && !info[4].IsNull()) k_lens = unwrap_tensor(env, info[4], "kLens").value;
  // fp8 tensors are held as bytes (core/tensor.h); name them as the user knows them.
  for (const auto& [t, what] : {std::pair<const core::Tensor*, const char*>{&q, "q"}, {&k, "k"}, {&v, "v"}}) {
    if (t->dtype != core::DType::F32 && t->dtype != core::DType::F16 && t->dtype != core::DType::BF16)
      throw_error(env, "WAN_INVALID_TENSOR",
                  std::string("attention: ") + what + " has dtype " + std::string(core::dtype_name(t->dtype)) +
                      " but attention takes f32, f16 or bf16");
  }
  const at::Device device = info[5].IsString() ? core::parse_device(info[5].As<Napi::String>().Utf8Value(), "device")
                                               : at::Device(at::kCPU);
  return AttentionCall{q.value.to(device), k.value.to(device), v.value.to(device),
                       k_lens.defined() ? k_lens.to(device) : k_lens, mode, device};
}

// attention(q, k, v, mode, kLens?, device?) -> NativeTensor (f32 on the CPU, wherever it was
// computed). Synchronous: it runs on the calling thread, which is what tests and benchmarks want.
Napi::Value attention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const AttentionCall c = attention_call(env, info);
    const at::Tensor out = ops::attention(c.q, c.k, c.v, c.mode, c.k_lens);
    return wrap_tensor(env, core::wrap(out.to(at::kCPU, at::kFloat)));
  });
}

// attentionSeconds(q, k, v, mode, kLens | undefined, device, reps) -> seconds of each of `reps`
// calls after two warm-ups, the device synchronised around each: the kernel's own time, without
// the copies attention() makes.
Napi::Value attention_seconds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const AttentionCall c = attention_call(env, info);
    const int64_t reps = info[6].IsNumber() ? info[6].As<Napi::Number>().Int64Value() : 0;
    if (reps <= 0) throw_error(env, "WAN_INVALID_OPTION", "attentionSeconds: reps must be a positive integer");
    const c10::impl::VirtualGuardImpl device_guard(c.device.type());
    auto sync = [&] {
      if (!c.device.is_cpu()) device_guard.synchronizeStream(device_guard.getStream(c.device));
    };
    for (int i = 0; i < 2; ++i) ops::attention(c.q, c.k, c.v, c.mode, c.k_lens);
    sync();
    Napi::Array seconds = Napi::Array::New(env, reps);
    for (int64_t r = 0; r < reps; ++r) {
      const auto start = std::chrono::steady_clock::now();
      ops::attention(c.q, c.k, c.v, c.mode, c.k_lens);
      sync();
      seconds.Set(r, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    return seconds;
  });
}

// gpuMemory(device, reset) -> {allocated, peak, reserved, free, total}: bytes of libtorch's CUDA
// caching allocator on that GPU (peak since the last reset), and the device's free and total
// memory as the driver reports them (cudaMemGetInfo); null in a CPU-only build.
Napi::Value gpu_memory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
#ifdef WAN_WITH_CUDA
    const at::Device device = core::parse_device(info[0].As<Napi::String>().Utf8Value(), "device");
    namespace alloc = c10::cuda::CUDACachingAllocator;
    const auto stats = alloc::getDeviceStats(device.index());
    Napi::Object o = Napi::Object::New(env);
    // Index 0 of each stat array is the aggregate over both pools (StatType::AGGREGATE).
    o.Set("allocated", Napi::Number::New(env, static_cast<double>(stats.allocated_bytes[0].current)));
    o.Set("peak", Napi::Number::New(env, static_cast<double>(stats.allocated_bytes[0].peak)));
    o.Set("reserved", Napi::Number::New(env, static_cast<double>(stats.reserved_bytes[0].current)));
    if (info[1].ToBoolean()) alloc::resetPeakStats(device.index());
    const c10::cuda::CUDAGuard on_device(device);
    size_t free = 0, total = 0;
    const cudaError_t status = cudaMemGetInfo(&free, &total);
    if (status != cudaSuccess)
      throw core::Error(core::ErrorCode::Internal,
                        std::string("gpuMemory: cudaMemGetInfo failed: ") + cudaGetErrorString(status));
    o.Set("free", Napi::Number::New(env, static_cast<double>(free)));
    o.Set("total", Napi::Number::New(env, static_cast<double>(total)));
    return o;
#else
    return env.Null();
#endif
  });
}

// The output dtype a test asks of a fused kernel: 'f32', 'f16' or 'bf16'.
at::ScalarType fused_out_dtype(const Napi::Value& v, const char* op) {
  const std::string name = v.IsString() ? v.As<Napi::String>().Utf8Value() : "f32";
  const auto t = core::dtype_from_name(name);
  if (!t || (*t != core::DType::F32 && *t != core::DType::F16 && *t != core::DType::BF16))
    throw core::Error(core::ErrorCode::InvalidOption,
                      std::string(op) + ": expected 'f32', 'f16' or 'bf16' for outDtype but received '" + name + "'");
  return core::storage_scalar_type(*t);
}

[[noreturn]] void throw_bad_how(const char* op, const std::string& how) {
  throw core::Error(core::ErrorCode::InvalidOption,
                    std::string(op) + ": expected 'eager', 'reference' or 'fused' but received '" + how + "'");
}

at::Tensor require_fused(const at::Tensor& out, const char* op, at::Device device) {
  if (!out.defined())
    throw core::Error(core::ErrorCode::InvalidOption,
                      std::string(op) + ": the fused kernel does not run here (" + core::device_name(device) + ")");
  return out;
}

// normRope(x [B, L, dim], weight [dim], eps, headDim, grids [[F, H, W] per sample] | null, how, device,
//          riflex? [index, latentFrames])
// -> the q/k RMS norm, then RoPE (with RIFLEx's table when given) when grids are given, float32
// on the CPU, computed `how`:
// 'eager' (ops::rms_norm then ops::rope_apply), 'reference' (the fused kernel's row arithmetic
// on the CPU) or 'fused' (the kernel itself; a GPU only). For tests: they compare the three.
Napi::Value norm_rope(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const at::Device device = core::parse_device(info[6].As<Napi::String>().Utf8Value(), "device");
    const at::Tensor x = unwrap_tensor(env, info[0], "x").value.to(device, at::kFloat);
    const at::Tensor weight = unwrap_tensor(env, info[1], "weight").value.to(device, at::kFloat);
    const double eps = info[2].As<Napi::Number>().DoubleValue();
    const int64_t head_dim = info[3].As<Napi::Number>().Int64Value();
    std::optional<std::vector<std::array<int64_t, 3>>> grids;
    if (info[4].IsArray()) {
      grids.emplace();
      const Napi::Array list = info[4].As<Napi::Array>();
      for (uint32_t i = 0; i < list.Length(); ++i) {
        const Napi::Array g = list.Get(i).As<Napi::Array>();
        grids->push_back({g.Get(0u).As<Napi::Number>().Int64Value(), g.Get(1u).As<Napi::Number>().Int64Value(),
                          g.Get(2u).As<Napi::Number>().Int64Value()});
      }
    }
    const std::string how = info[5].As<Napi::String>().Utf8Value();
    ops::Riflex riflex;
    if (info[7].IsArray()) {
      const Napi::Array r = info[7].As<Napi::Array>();
      riflex = {r.Get(0u).ToNumber().Int64Value(), r.Get(1u).ToNumber().Int64Value()};
    }
    ops::RopeTable table = ops::rope_table(head_dim, 1024, 10000.0, riflex);
    table.cos = table.cos.to(device);
    table.sin = table.sin.to(device);
    const auto* g = grids ? &*grids : nullptr;
    at::Tensor out;
    if (how == "eager") {
      out = ops::rms_norm(x, weight, eps);
      if (g) {
        out = ops::rope_apply(out.view({x.size(0), x.size(1), x.size(2) / head_dim, head_dim}), *g, table)
                  .view({x.size(0), x.size(1), x.size(2)});
      }
    } else if (how == "reference") {
      out = ops::norm_rope_reference(x, weight, eps, head_dim, g, table);
    } else if (how == "fused") {
      out = require_fused(ops::norm_rope_fused(x, weight, eps, head_dim, g, table, at::kFloat), "normRope", device);
    } else {
      throw_bad_how("normRope", how);
    }
    return wrap_tensor(env, core::wrap(out.to(at::kCPU, at::kFloat).contiguous()));
  });
}

// modulate(x [B, L, dim], scale [B, 1, dim], shift [B, 1, dim], eps, how, device, outDtype?)
// -> LayerNorm(x) * (1 + scale) + shift on the CPU, computed `how` (as normRope); outDtype is
// the fused kernel's output dtype (float32 by default), widened to float32 on the way back.
Napi::Value modulate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const at::Device device = core::parse_device(info[5].As<Napi::String>().Utf8Value(), "device");
    const at::Tensor x = unwrap_tensor(env, info[0], "x").value.to(device, at::kFloat);
    const at::Tensor scale = unwrap_tensor(env, info[1], "scale").value.to(device, at::kFloat);
    const at::Tensor shift = unwrap_tensor(env, info[2], "shift").value.to(device, at::kFloat);
    const double eps = info[3].As<Napi::Number>().DoubleValue();
    const std::string how = info[4].As<Napi::String>().Utf8Value();
    at::Tensor out;
    if (how == "eager") out = ops::modulate(x, scale, shift, eps);
    else if (how == "reference") out = ops::modulate_reference(x, scale, shift, eps);
    else if (how == "fused")
      out = require_fused(ops::modulate_fused(x, scale, shift, eps, fused_out_dtype(info[6], "modulate")), "modulate",
                          device);
    else throw_bad_how("modulate", how);
    return wrap_tensor(env, core::wrap(out.to(at::kCPU, at::kFloat).contiguous()));
  });
}

// gatedResidual(x [B, L, dim], y [B, L, dim], gate [B, 1, dim], how, device) -> x + y * gate on
// the CPU, float32, computed `how` (as normRope); y keeps its dtype (f32, f16 or bf16).
Napi::Value gated_residual(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const at::Device device = core::parse_device(info[4].As<Napi::String>().Utf8Value(), "device");
    const at::Tensor x = unwrap_tensor(env, info[0], "x").value.to(device, at::kFloat);
    const at::Tensor y = unwrap_tensor(env, info[1], "y").value.to(device);
    const at::Tensor gate = unwrap_tensor(env, info[2], "gate").value.to(device, at::kFloat);
    const std::string how = info[3].As<Napi::String>().Utf8Value();
    at::Tensor out;
    if (how == "eager") out = ops::gated_residual(x, y, gate);
    else if (how == "reference") out = ops::gated_residual_reference(x, y, gate);
    else if (how == "fused") out = require_fused(ops::gated_residual_fused(x, y, gate), "gatedResidual", device);
    else throw_bad_how("gatedResidual", how);
    return wrap_tensor(env, core::wrap(out.to(at::kCPU, at::kFloat).contiguous()));
  });
}

// fp8Rows(x [M, cols], rows, how, device) -> {codes [rows, cols] u8, scales [rows, 1] f32} on
// the CPU: the fp8 matmuls' per-row activation quantisation, computed 'reference' (on the CPU) or
// 'fused' (the CUDA kernel; a GPU only). x goes to the device as it is (bf16 or fp16 for the
// kernel). For tests.
Napi::Value fp8_rows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const at::Device device = core::parse_device(info[3].As<Napi::String>().Utf8Value(), "device");
    const at::Tensor x = unwrap_tensor(env, info[0], "x").value.to(device);
    const int64_t rows = info[1].As<Napi::Number>().Int64Value();
    const std::string how = info[2].As<Napi::String>().Utf8Value();
    ops::Fp8Rows q;
    if (how == "reference") q = ops::quantize_fp8_rows_reference(x, rows);
    else if (how == "fused") q = ops::quantize_fp8_rows(x, rows);
    else throw core::Error(core::ErrorCode::InvalidOption, "fp8Rows: expected 'reference' or 'fused' but received '" + how + "'");
    require_fused(q.codes, "fp8Rows", device);
    Napi::Object o = Napi::Object::New(env);
    o.Set("codes", wrap_tensor(env, core::wrap(q.codes.to(at::kCPU).contiguous())));
    o.Set("scales", wrap_tensor(env, core::wrap(q.scales.to(at::kCPU).contiguous())));
    return o;
  });
}

// fusedOpSeconds(op, how, [F, H, W], dim, headDim, ffnDim, reps, device) -> seconds of each of
// `reps` calls (after two warm-ups, the device synchronised around each) of one of the chains
// `compile` fuses, at one sample of F*H*W tokens, computed `how` as a bf16 DiT block does it:
//   'normRope':      q [1, L, dim] bf16 (a projection's output) -> RMS norm, RoPE, bf16;
//   'modulate':      x [1, L, dim] float32 -> LayerNorm * (1 + scale) + shift, bf16;
//   'gatedResidual': x float32 + y bf16 * gate -> float32;
//   'linearGelu':    x [1, L, dim] bf16 -> gelu_tanh(x W^T + b), W [ffnDim, dim] bf16.
// 'eager' runs the ops the model runs without `compile`, 'fused' the fused kernel. For
// benchmarks (bench/gpu.ts): every speed-up of compile measured on its own.
Napi::Value fused_op_seconds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const std::string op = info[0].As<Napi::String>().Utf8Value(), how = info[1].As<Napi::String>().Utf8Value();
    if (how != "eager" && how != "fused") throw_bad_how("fusedOpSeconds", how);
    const Napi::Array g = info[2].As<Napi::Array>();
    const std::array<int64_t, 3> grid{g.Get(0u).As<Napi::Number>().Int64Value(), g.Get(1u).As<Napi::Number>().Int64Value(),
                                      g.Get(2u).As<Napi::Number>().Int64Value()};
    const int64_t dim = info[3].As<Napi::Number>().Int64Value(), head_dim = info[4].As<Napi::Number>().Int64Value();
    const int64_t ffn_dim = info[5].As<Napi::Number>().Int64Value(), reps = info[6].As<Napi::Number>().Int64Value();
    const at::Device device = core::parse_device(info[7].As<Napi::String>().Utf8Value(), "device");
    if (reps <= 0) throw_error(env, "WAN_INVALID_OPTION", "fusedOpSeconds: reps must be a positive integer");
    const int64_t tokens = grid[0] * grid[1] * grid[2];
    const auto f32 = at::TensorOptions().device(device).dtype(at::kFloat), bf16 = f32.dtype(at::kBFloat16);
    const bool fused = how == "fused";
    std::function<at::Tensor()> call;
    const std::vector<std::array<int64_t, 3>> grids{grid};
    ops::RopeTable table = ops::rope_table(head_dim);
    table.cos = table.cos.to(device);
    table.sin = table.sin.to(device);
    if (op == "normRope") {
      const at::Tensor q = at::randn({1, tokens, dim}, bf16), w = at::randn({dim}, f32);
      const ops::RopeAngles angles = ops::rope_angles(grids, tokens, table, device);
      call = [=, &grids, &table]() {
        if (fused) return ops::norm_rope_fused(q, w, 1e-6, head_dim, &grids, table, at::kBFloat16);
        const at::Tensor normed = ops::rms_norm(q.to(at::kFloat), w, 1e-6);
        return ops::rope_apply(normed.view({1, tokens, dim / head_dim, head_dim}), grids, table, &angles).to(at::kBFloat16);
      };
    } else if (op == "modulate") {
      const at::Tensor x = at::randn({1, tokens, dim}, f32), scale = at::randn({1, 1, dim}, f32), shift = at::randn({1, 1, dim}, f32);
      call = [=]() {
        return fused ? ops::modulate_fused(x, scale, shift, 1e-6, at::kBFloat16)
                     : ops::modulate(x, scale, shift, 1e-6).to(at::kBFloat16);
      };
    } else if (op == "gatedResidual") {
      const at::Tensor x = at::randn({1, tokens, dim}, f32), y = at::randn({1, tokens, dim}, bf16), gate = at::randn({1, 1, dim}, f32);
      call = [=]() { return fused ? ops::gated_residual_fused(x, y, gate) : ops::gated_residual(x, y, gate); };
    } else if (op == "linearGelu") {
      const at::Tensor x = at::randn({1, tokens, dim}, bf16);
      const ops::Weight w{core::Tensor{at::randn({ffn_dim, dim}, bf16).mul_(0.02), core::DType::BF16}, {}};
      const ops::Weight b{core::Tensor{at::randn({ffn_dim}, bf16), core::DType::BF16}, {}};
      call = [=]() -> at::Tensor {
        if (fused) return ops::linear_gelu_fused(x, w, b);
        at::Tensor hidden = ops::linear(x, w, b);
        return at::gelu_(hidden, "tanh");
      };
    } else {
      throw core::Error(core::ErrorCode::InvalidOption,
                        "fusedOpSeconds: expected 'normRope', 'modulate', 'gatedResidual' or 'linearGelu' but received '" + op + "'");
    }
    const c10::impl::VirtualGuardImpl device_guard(device.type());
    auto sync = [&] {
      if (!device.is_cpu()) device_guard.synchronizeStream(device_guard.getStream(device));
    };
    for (int i = 0; i < 2; ++i) require_fused(call(), "fusedOpSeconds", device);
    sync();
    Napi::Array seconds = Napi::Array::New(env, reps);
    for (int64_t r = 0; r < reps; ++r) {
      const auto start = std::chrono::steady_clock::now();
      call();
      sync();
      seconds.Set(r, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    return seconds;
  });
}

// cpuMemory(reset) -> {allocated, peak}: bytes of CPU tensors allocated now and the most at
// once since the last reset (reset by this call when `reset`), as core/cpu_allocator counts them.
Napi::Value cpu_memory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const core::CpuMemory m = core::cpu_memory(info[0].ToBoolean());
    Napi::Object o = Napi::Object::New(env);
    o.Set("allocated", Napi::Number::New(env, static_cast<double>(m.allocated)));
    o.Set("peak", Napi::Number::New(env, static_cast<double>(m.peak)));
    return o;
  });
}

// gemmRate(m, k, n, reps) -> seconds of each of `reps` fp32 [m, k] x [k, n] products, after
// one warm-up: the machine's matmul rate, for benchmarks to report next to their own.
Napi::Value gemm_rate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    int64_t dims[4];
    for (int i = 0; i < 4; ++i) {
      if (!info[i].IsNumber() || info[i].As<Napi::Number>().Int64Value() <= 0)
        throw_error(env, "WAN_INVALID_OPTION", "gemmRate(m, k, n, reps): expected positive integers");
      dims[i] = info[i].As<Napi::Number>().Int64Value();
    }
    const at::Tensor a = at::randn({dims[0], dims[1]}), b = at::randn({dims[1], dims[2]});
    at::Tensor c = at::mm(a, b);
    Napi::Array seconds = Napi::Array::New(env, dims[3]);
    for (int64_t r = 0; r < dims[3]; ++r) {
      const auto start = std::chrono::steady_clock::now();
      at::mm_out(c, a, b);
      seconds.Set(r, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    return seconds;
  });
}

}  // namespace

void init_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("attention", Napi::Function::New(env, attention));
  Napi::Array kept = Napi::Array::New(env);
  for (const std::string& k : ops::kept_in_high_precision()) kept.Set(kept.Length(), k);
  exports.Set("keptInHighPrecision", kept);
  exports.Set("gemmRate", Napi::Function::New(env, gemm_rate));
  exports.Set("attentionSeconds", Napi::Function::New(env, attention_seconds));
  exports.Set("gpuMemory", Napi::Function::New(env, gpu_memory));
  exports.Set("cpuMemory", Napi::Function::New(env, cpu_memory));
  exports.Set("normRope", Napi::Function::New(env, norm_rope));
  exports.Set("modulate", Napi::Function::New(env, modulate));
  exports.Set("gatedResidual", Napi::Function::New(env, gated_residual));
  exports.Set("fusedOpSeconds", Napi::Function::New(env, fused_op_seconds));
  exports.Set("fp8Rows", Napi::Function::New(env, fp8_rows));
}

}  // namespace wan::binding
