// The one error type of the engine. Its code becomes WanError.code in JS, so codes are a
// stable part of the public API (see shared/spec/API.md).
#pragma once
#include <stdexcept>
#include <string>

namespace wan::core {

enum class ErrorCode {
  BadCheckpoint,   // WAN_BAD_CHECKPOINT: a file that is not a valid checkpoint
  InvalidOption,   // WAN_INVALID_OPTION: an argument outside what is accepted
  InvalidTensor,   // WAN_INVALID_TENSOR: a tensor of the wrong dtype, shape or state
  Io,              // WAN_IO: the operating system refused (missing file, disk full, ...)
  OutOfMemory,     // WAN_OUT_OF_MEMORY
  Aborted,         // WAN_ABORTED: the caller's AbortSignal fired
  Internal,        // WAN_INTERNAL: a bug; the message says where
};

const char* error_code_name(ErrorCode code);

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

// Shorthand for the most common failure: `throw bad_checkpoint(file, "tensor 'x': ...")`.
inline Error bad_checkpoint(const std::string& file, const std::string& what) {
  return Error(ErrorCode::BadCheckpoint, file + ": " + what);
}

}  // namespace wan::core
