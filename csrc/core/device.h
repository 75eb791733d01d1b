// Where a model computes: the CPU, or a GPU when the addon was built against a CUDA libtorch
// and the machine has one (the wrapper's main_device).
#pragma once
#include <ATen/ATen.h>

#include <string>

namespace wan::core {

// "cpu", "cuda" (GPU 0) or "cuda:N". Throws InvalidOption naming `option` when the name is
// not one of these, or names a GPU this build or this machine does not have.
at::Device parse_device(const std::string& name, const std::string& option);

// The name parse_device reads back: "cpu", "cuda:0".
std::string device_name(const at::Device& device);

}  // namespace wan::core
