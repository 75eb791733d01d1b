#include "core/device.h"

#include "core/error.h"

namespace wan::core {

#ifdef WAN_WITH_CUDA
constexpr bool kCudaBuild = true;
#else
constexpr bool kCudaBuild = false;
#endif

at::Device parse_device(const std::string& name, const std::string& option) {
  if (name == "cpu") return at::Device(at::kCPU);
  int64_t index = -1;
  if (name == "cuda") {
    index = 0;
  } else if (name.rfind("cuda:", 0) == 0 && name.size() > 5 && name.size() < 9 &&
             name.find_first_not_of("0123456789", 5) == std::string::npos) {
    index = std::stoll(name.substr(5));
  } else {
    throw Error(ErrorCode::InvalidOption, option + ": expected 'cpu', 'cuda' or 'cuda:N' but received '" + name + "'");
  }
  if (!at::hasCUDA())
    throw Error(ErrorCode::InvalidOption, option + ": '" + name + "' asks for a GPU, but " +
                                              (kCudaBuild ? "no CUDA GPU is visible to this process"
                                                                  : "this build of wan-native is CPU-only") +
                                              " (runtimeInfo().cuda is false)");
  const auto count = static_cast<int64_t>(at::getNumGPUs());
  if (index >= count)
    throw Error(ErrorCode::InvalidOption, option + ": '" + name + "' names GPU " + std::to_string(index) +
                                              " but this machine has " + std::to_string(count));
  return at::Device(at::kCUDA, static_cast<at::DeviceIndex>(index));
}

std::string device_name(const at::Device& device) {
  return device.is_cpu() ? "cpu" : device.str();
}

}  // namespace wan::core
