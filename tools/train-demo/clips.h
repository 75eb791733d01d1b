// The demo model's training data: short clips of one shape in one colour moving over a
// plain or gradient background, drawn procedurally from their attributes and a seed.
// The attribute lists live in models/demo/demo.json, which lib/demo.ts reads too, so the
// prompts the model was trained on and the ones the demo and its test compose agree.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace wan::demo {

// A small deterministic generator (SplitMix64): the same clips on every machine and
// compiler, which the standard distributions do not promise.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next();
  double uniform();                              // [0, 1)
  double uniform(double lo, double hi);          // [lo, hi)
  int64_t below(int64_t n);                      // [0, n)

 private:
  uint64_t state_;
};

struct Background {
  std::string name;
  std::array<float, 3> top, bottom;  // RGB 0..255; equal for a plain background
};

struct DemoSpec {
  int64_t size = 64;    // frames are size x size pixels
  int64_t frames = 17;  // 4k + 1
  std::vector<std::string> colour_names, shapes, motions;
  std::vector<std::array<float, 3>> colours;
  std::vector<Background> backgrounds;
};

// Reads the spec's "data" section; throws std::runtime_error naming the file and field.
DemoSpec read_demo_spec(const std::string& path);

// Indices into the spec's lists.
struct ClipAttributes {
  int64_t colour = 0, shape = 0, motion = 0, background = 0;
};

// One clip, [3, frames, size, size] float32 in [-1, 1] (the VAE's input range). Position,
// size, speed and, for bouncing, height and bounce count come from `rng`; edges are
// antialiased by 4x4 supersampling.
at::Tensor render_clip(const DemoSpec& spec, const ClipAttributes& a, int64_t frames, Rng& rng);
// Several objects over the first one's background, drawn in order (the VAE's training clips:
// more coloured pixels a step than one small shape gives).
at::Tensor render_clip(const DemoSpec& spec, const std::vector<ClipAttributes>& objects, int64_t frames, Rng& rng);

}  // namespace wan::demo
