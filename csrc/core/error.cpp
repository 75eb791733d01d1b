#include "core/error.h"

namespace wan::core {

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::BadCheckpoint: return "WAN_BAD_CHECKPOINT";
    case ErrorCode::InvalidOption: return "WAN_INVALID_OPTION";
    case ErrorCode::InvalidTensor: return "WAN_INVALID_TENSOR";
    case ErrorCode::Io: return "WAN_IO";
    case ErrorCode::OutOfMemory: return "WAN_OUT_OF_MEMORY";
    case ErrorCode::Aborted: return "WAN_ABORTED";
    case ErrorCode::Internal: return "WAN_INTERNAL";
  }
  return "WAN_INTERNAL";
}

}  // namespace wan::core
