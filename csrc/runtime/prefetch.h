// Making things ahead of their use: the CPU side of block swap. A swapped block's "transfer" is
// its widening from storage (bf16, fp16, fp8) to float32; with prefetch, a worker widens the
// next blocks while the current one computes, so the widening hides behind the compute and
// memory holds the stored weights plus only the blocks in flight.
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <future>

namespace wan::runtime {

// Items first..end-1, taken in order. depth 0: each is made on the caller's thread when taken.
// depth k > 0: workers make up to k items ahead of the one in use (k + 1 in memory at most).
// `prepare(i)` runs on the caller's thread (where memory should be allocated) and returns the
// job a worker runs to finish item i.
template <typename T>
class Prefetcher {
 public:
  using Job = std::function<T()>;
  Prefetcher(int64_t first, int64_t end, int depth, std::function<Job(int64_t)> prepare,
             std::function<T(int64_t)> make_here)
      : next_(first), end_(end), depth_(depth), prepare_(std::move(prepare)), make_here_(std::move(make_here)) {
    fill(first);
  }
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;
  ~Prefetcher() {
    for (auto& f : pending_)
      if (f.valid()) f.wait();  // a failed forward still waits for its workers
  }

  T take(int64_t i) {
    if (depth_ == 0) return make_here_(i);
    fill(i + 1);
    T item = pending_.front().get();  // rethrows a worker's exception
    pending_.pop_front();
    return item;
  }

 private:
  // Keeps items up to `from` + depth - 1 launched.
  void fill(int64_t from) {
    while (depth_ > 0 && next_ < end_ && next_ < from + depth_) {
      pending_.push_back(std::async(std::launch::async, prepare_(next_)));
      ++next_;
    }
  }

  int64_t next_, end_;
  int depth_;
  std::function<Job(int64_t)> prepare_;
  std::function<T(int64_t)> make_here_;
  std::deque<std::future<T>> pending_;
};

}  // namespace wan::runtime
