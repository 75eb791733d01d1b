// NativeTensor: the JS handle of an engine tensor (lib/tensor.ts wraps it in Tensor).
#include <cstring>

#include "binding/addon_data.h"
#include "core/error.h"

namespace wan::binding {
namespace {

class NativeTensor : public Napi::ObjectWrap<NativeTensor> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "NativeTensor",
                       {InstanceMethod("shape", &NativeTensor::shape),
                        InstanceMethod("dtype", &NativeTensor::dtype),
                        InstanceMethod("toTypedArray", &NativeTensor::to_typed_array),
                        InstanceMethod("dispose", &NativeTensor::dispose),
                        InstanceMethod("isDisposed", &NativeTensor::is_disposed)});
  }

  // Constructed from C++ only, with the tensor passed as an External.
  explicit NativeTensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeTensor>(info) {
    if (!info[0].IsExternal())
      throw_error(info.Env(), "WAN_INVALID_OPTION", "NativeTensor cannot be constructed from JS");
    auto* t = info[0].As<Napi::External<core::Tensor>>().Data();
    tensor_ = std::move(*t);
    delete t;
  }

  const core::Tensor& get(Napi::Env env, const std::string& what) const {
    if (!tensor_.value.defined())
      throw_error(env, "WAN_INVALID_TENSOR", what + " has been disposed");
    return tensor_;
  }

 private:
  Napi::Value shape(const Napi::CallbackInfo& info) {
    const auto sizes = get(info.Env(), "tensor").value.sizes();
    Napi::Array out = Napi::Array::New(info.Env(), sizes.size());
    for (size_t i = 0; i < sizes.size(); ++i) out.Set(i, Napi::Number::New(info.Env(), sizes[i]));
    return out;
  }

  Napi::Value dtype(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), std::string(core::dtype_name(get(info.Env(), "tensor").dtype)));
  }

  // A copy; f16, bf16 and fp8 come out as Float32Array (API.md).
  Napi::Value to_typed_array(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
      const core::Tensor& t = get(env, "tensor");
      at::Tensor values;
      napi_typedarray_type type = napi_uint8_array;  // every case below sets it
      switch (t.dtype) {
        case core::DType::F32: case core::DType::F16: case core::DType::BF16:
        case core::DType::F8_E4M3FN: case core::DType::F8_E5M2:
          values = core::to_float(t); type = napi_float32_array; break;
        case core::DType::F64: values = t.value; type = napi_float64_array; break;
        case core::DType::I64: values = t.value; type = napi_bigint64_array; break;
        case core::DType::I32: values = t.value; type = napi_int32_array; break;
        case core::DType::I16: values = t.value; type = napi_int16_array; break;
        case core::DType::I8: values = t.value; type = napi_int8_array; break;
        case core::DType::U8: case core::DType::Bool:
          values = t.value.to(at::kByte); type = napi_uint8_array; break;
      }
      values = values.contiguous().cpu();
      const size_t bytes = values.nbytes();
      Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, bytes);
      if (bytes) std::memcpy(buffer.Data(), values.data_ptr(), bytes);
      napi_value result;
      NAPI_THROW_IF_FAILED(env, napi_create_typedarray(env, type, values.numel(), buffer, 0, &result),
                           Napi::Value());
      return Napi::Value(env, result);
    });
  }

  Napi::Value dispose(const Napi::CallbackInfo& info) {
    tensor_ = core::Tensor{};
    return info.Env().Undefined();
  }

  Napi::Value is_disposed(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), !tensor_.value.defined());
  }

  core::Tensor tensor_;
};

// Keeps a JS typed array alive while a tensor aliases its memory. The tensor may die on any
// thread (the engine, an OpenMP worker), but a JS reference may only be dropped on the JS
// thread: elsewhere the drop is posted through the releaser.
struct BorrowedBuffer {
  Napi::Reference<Napi::Value> ref;
};

void release_borrowed(Napi::Env env, BorrowedBuffer* borrowed) {
  AddonData& data = addon(env);
  if (std::this_thread::get_id() == data.js_thread) {
    delete borrowed;
    return;
  }
  const napi_status status = data.releaser.NonBlockingCall(
      [borrowed](Napi::Env, Napi::Function) { delete borrowed; });
  if (status != napi_ok) {
    // The environment is shutting down: its references die with it, so only the holder
    // is freed here. Reset() would touch V8 from the wrong thread.
    borrowed->ref.SuppressDestruct();
    delete borrowed;
  }
}

struct SourceView {
  void* data;
  size_t length;  // elements
  core::DType natural;
};

SourceView view_of(Napi::Env env, const Napi::TypedArray& array) {
  void* base = static_cast<uint8_t*>(array.ArrayBuffer().Data()) + array.ByteOffset();
  const size_t n = array.ElementLength();
  switch (array.TypedArrayType()) {
    case napi_float32_array: return {base, n, core::DType::F32};
    case napi_float64_array: return {base, n, core::DType::F64};
    case napi_int32_array: return {base, n, core::DType::I32};
    case napi_bigint64_array: return {base, n, core::DType::I64};
    case napi_int16_array: return {base, n, core::DType::I16};
    case napi_int8_array: return {base, n, core::DType::I8};
    case napi_uint8_array: return {base, n, core::DType::U8};
    case napi_uint16_array: return {base, n, core::DType::BF16};  // raw 16-bit codes
    default:
      throw_error(env, "WAN_INVALID_OPTION",
                  "Tensor.fromTypedArray: expected Float32Array, Float64Array, Int32Array, "
                  "BigInt64Array, Int16Array, Int8Array, Uint8Array or Uint16Array");
  }
}

// fromTypedArray(array, shape, dtype): zero-copy when the array already holds `dtype`'s
// bytes (Float32Array as f32, Uint8Array as u8 or fp8 codes, Uint16Array as f16/bf16 bits,
// ...); otherwise the values are converted into a new tensor.
Napi::Value tensor_from_typed_array(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const auto array = info[0].As<Napi::TypedArray>();
    const auto shape_array = info[1].As<Napi::Array>();
    const auto dtype = core::dtype_from_name(info[2].As<Napi::String>().Utf8Value());
    if (!dtype) throw_error(env, "WAN_INVALID_OPTION", "unknown dtype " + info[2].As<Napi::String>().Utf8Value());
    std::vector<int64_t> shape;
    int64_t numel = 1;
    for (uint32_t i = 0; i < shape_array.Length(); ++i) {
      shape.push_back(shape_array.Get(i).As<Napi::Number>().Int64Value());
      numel *= shape.back();
    }
    SourceView src = view_of(env, array);
    if (static_cast<size_t>(numel) != src.length)
      throw_error(env, "WAN_INVALID_OPTION",
                  "Tensor.fromTypedArray: shape holds " + std::to_string(numel) +
                      " elements but the array has " + std::to_string(src.length));
    const bool raw_codes =
        (src.natural == core::DType::U8 &&
         (*dtype == core::DType::F8_E4M3FN || *dtype == core::DType::F8_E5M2)) ||
        (src.natural == core::DType::BF16 && (*dtype == core::DType::F16 || *dtype == core::DType::BF16));
    const bool zero_copy = raw_codes || src.natural == *dtype;
    if (src.natural == core::DType::BF16 && !raw_codes)
      throw_error(env, "WAN_INVALID_OPTION",
                  "Tensor.fromTypedArray: a Uint16Array holds raw f16 or bf16 bits, not " +
                      std::string(core::dtype_name(*dtype)));

    const core::DType storage = zero_copy ? *dtype : src.natural;
    auto options = at::TensorOptions().dtype(core::storage_scalar_type(storage));
    at::Tensor value;
    if (numel == 0) {
      value = at::empty(shape, options);
    } else {
      auto* borrowed = new BorrowedBuffer{Napi::Persistent(static_cast<Napi::Value>(array))};
      value = at::from_blob(src.data, shape, [env, borrowed](void*) { release_borrowed(env, borrowed); },
                            options);
    }
    core::Tensor tensor{value, storage};
    if (!zero_copy) {
      if (*dtype == core::DType::Bool) tensor = core::Tensor{value.ne(0), core::DType::Bool};
      else tensor = core::convert(tensor, *dtype);  // copies; the borrowed view dies here
    }
    return wrap_tensor(env, std::move(tensor));
  });
}

}  // namespace

Napi::Object wrap_tensor(Napi::Env env, core::Tensor tensor) {
  auto* holder = new core::Tensor(std::move(tensor));
  return addon(env).tensor_class.New({Napi::External<core::Tensor>::New(env, holder)});
}

const core::Tensor& unwrap_tensor(Napi::Env env, Napi::Value value, const std::string& what) {
  if (!value.IsObject() || !value.As<Napi::Object>().InstanceOf(addon(env).tensor_class.Value()))
    throw_error(env, "WAN_INVALID_TENSOR", what + " is not a wan-native Tensor");
  return NativeTensor::Unwrap(value.As<Napi::Object>())->get(env, what);
}

void init_tensor(Napi::Env env, Napi::Object exports) {
  Napi::Function cls = NativeTensor::define(env);
  addon(env).tensor_class = Napi::Persistent(cls);
  exports.Set("NativeTensor", cls);
  exports.Set("tensorFromTypedArray", Napi::Function::New(env, tensor_from_typed_array));
}

}  // namespace wan::binding
