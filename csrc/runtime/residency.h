// Where a model's weights are between uses: the wrapper's load_device and force_offload. A
// model computing on a GPU (its main device) has its weights there, or offloaded to the CPU,
// from where its next use brings them back.
//
// The weights as loaded (on the CPU, mapped from the file or made at load) are kept: placing
// copies them to the main device and offloading drops the copies, so an offload copies nothing
// and holds no host memory beyond what the load did. On a model whose main device is the CPU
// nothing moves; only the state changes, so that the sequence of loads, uses and offloads is the
// same everywhere (and testable on the CPU).
//
// Threads: weights are placed and offloaded on the engine thread, which runs every use of them
// too; memoryStats, on the JS thread, reads the weights under lock().
#pragma once
#include <ATen/ATen.h>

#include <atomic>
#include <mutex>
#include <utility>
#include <vector>

#include "ops/linear.h"

namespace wan::runtime {

class Residency {
 public:
  explicit Residency(at::Device main = at::kCPU) : main_(main) {}
  Residency(const Residency&) = delete;
  Residency& operator=(const Residency&) = delete;

  // Takes the weights that move (members of the model, which must not move in memory after
  // this), as they are now: on the CPU. Undefined weights (absent optional parameters) are
  // skipped. `on_main`: whether they go to the main device now (loadDevice 'main_device').
  void manage(const std::vector<ops::Weight*>& weights, bool on_main) {
    for (ops::Weight* w : weights)
      if (w->defined()) held_.emplace_back(w, *w);
    place(on_main);
  }

  // Copies the weights to the main device (true) or returns them to their CPU copies (false).
  // A placement that fails (out of device memory) leaves every weight on the CPU.
  void place(bool on_main) {
    if (on_main_ == on_main) return;
    if (!main_.is_cpu()) {
      const auto held = lock();
      try {
        for (auto& [member, host] : held_) *member = on_main ? host.to(main_) : host;
      } catch (...) {
        for (auto& [member, host] : held_) *member = host;
        on_main_ = false;
        throw;
      }
    }
    on_main_ = on_main;
  }

  at::Device main() const { return main_; }
  bool on_main() const { return on_main_; }
  std::unique_lock<std::mutex> lock() const { return std::unique_lock<std::mutex>(mutex_); }

 private:
  at::Device main_;
  std::atomic<bool> on_main_{false};
  std::vector<std::pair<ops::Weight*, ops::Weight>> held_;  // (member, its CPU copy)
  mutable std::mutex mutex_;
};

}  // namespace wan::runtime
