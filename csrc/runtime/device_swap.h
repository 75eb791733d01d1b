// The GPU side of block swap (the wrapper's block swap with prefetch and non_blocking): the
// swapped blocks live in page-locked host memory and are copied to the GPU just in time, on a
// side stream and `depth` blocks ahead of the one computing, so that copies overlap compute.
// Device-generic c10 streams and events, so that this compiles in CPU-only builds too.
#pragma once
#include <ATen/ATen.h>
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <functional>

namespace wan::runtime {

// Items first..end-1 of type T (a block of weights), taken in order. `allocate(i)` makes item
// i's empty device tensors; `fill(item, i)` issues its host-to-device copies (non-blocking) on
// the current stream. Two events order the streams:
// - a copy waits for the compute stream's work issued before it, because its memory may have
//   been freed by that work and handed out again (it was allocated on the compute stream);
// - the compute stream waits, in take(i), for item i's copies alone.
template <typename T>
class DeviceSwap {
 public:
  DeviceSwap(at::Device device, int64_t first, int64_t end, int depth, std::function<T(int64_t)> allocate,
             std::function<void(T&, int64_t)> fill)
      : device_(device), guard_(device.type()), compute_(guard_.getStream(device)),
        copy_(guard_.getStreamFromGlobalPool(device)), next_(first), end_(end), depth_(std::max(depth, 0)),
        allocate_(std::move(allocate)), fill_(std::move(fill)) {}
  DeviceSwap(const DeviceSwap&) = delete;
  DeviceSwap& operator=(const DeviceSwap&) = delete;

  T take(int64_t i) {
    issue_through(i + depth_);
    Pending p = std::move(pending_.front());
    pending_.pop_front();
    p.ready.block(compute_);
    return std::move(p.item);
  }

 private:
  struct Pending {
    T item;
    c10::Event ready;
  };

  void issue_through(int64_t last) {
    while (next_ < end_ && next_ <= last) {
      T item = allocate_(next_);
      c10::Event issued(device_.type());
      issued.record(compute_);
      issued.block(copy_);
      {
        const c10::StreamGuard on_copy_stream(copy_);
        fill_(item, next_);
      }
      c10::Event ready(device_.type());
      ready.record(copy_);
      pending_.push_back(Pending{std::move(item), std::move(ready)});
      ++next_;
    }
  }

  at::Device device_;
  c10::impl::VirtualGuardImpl guard_;
  c10::Stream compute_, copy_;
  int64_t next_, end_;
  int depth_;
  std::function<T(int64_t)> allocate_;
  std::function<void(T&, int64_t)> fill_;
  std::deque<Pending> pending_;
};

}  // namespace wan::runtime
