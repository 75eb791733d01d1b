#include "clips.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "io/json.h"

namespace wan::demo {

uint64_t Rng::next() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

double Rng::uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
double Rng::uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
int64_t Rng::below(int64_t n) { return static_cast<int64_t>(uniform() * static_cast<double>(n)); }

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error(path + ": " + what);
}

const io::JsonValue& field(const io::JsonValue& v, const char* name, io::JsonValue::Kind kind, const std::string& path) {
  const io::JsonValue* f = v.find(name);
  if (!f || f->kind != kind) fail(path, std::string("expected the field \"") + name + "\" of the right type");
  return *f;
}

std::array<float, 3> rgb(const io::JsonValue& v, const std::string& path) {
  if (v.kind != io::JsonValue::Kind::Array || v.array.size() != 3) fail(path, "a colour must be [r, g, b]");
  return {static_cast<float>(v.array[0].number), static_cast<float>(v.array[1].number),
          static_cast<float>(v.array[2].number)};
}

std::vector<std::string> strings(const io::JsonValue& v, const std::string& path) {
  std::vector<std::string> out;
  for (const auto& s : v.array) out.push_back(s.string);
  if (out.empty()) fail(path, "an attribute list is empty");
  return out;
}

}  // namespace

DemoSpec read_demo_spec(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail(path, "cannot be read");
  std::stringstream text;
  text << in.rdbuf();
  std::string error;
  const auto root = io::parse_json(text.str(), error);
  if (!root) fail(path, error);
  using K = io::JsonValue::Kind;
  const io::JsonValue& data = field(*root, "data", K::Object, path);
  DemoSpec spec;
  spec.size = static_cast<int64_t>(field(data, "size", K::Number, path).number);
  spec.frames = static_cast<int64_t>(field(data, "frames", K::Number, path).number);
  for (const auto& c : field(data, "colours", K::Array, path).array) {
    spec.colour_names.push_back(field(c, "name", K::String, path).string);
    spec.colours.push_back(rgb(field(c, "rgb", K::Array, path), path));
  }
  spec.shapes = strings(field(data, "shapes", K::Array, path), path);
  spec.motions = strings(field(data, "motions", K::Array, path), path);
  for (const auto& b : field(data, "backgrounds", K::Array, path).array)
    spec.backgrounds.push_back({field(b, "name", K::String, path).string, rgb(field(b, "top", K::Array, path), path),
                                rgb(field(b, "bottom", K::Array, path), path)});
  if (spec.size % 16 != 0 || (spec.frames - 1) % 4 != 0) fail(path, "size must be a multiple of 16 and frames 4k + 1");
  return spec;
}

namespace {

// Whether the point (x, y), relative to the shape's centre, lies inside a shape of radius r:
// a circle, a square of the same area, or an upward equilateral triangle of similar area.
bool inside(const std::string& shape, double x, double y, double r) {
  if (shape == "circle") return x * x + y * y <= r * r;
  if (shape == "square") {
    const double s = r * 0.886;  // sqrt(pi) / 2: the circle's area
    return std::abs(x) <= s && std::abs(y) <= s;
  }
  // Triangle: circumradius R, vertices at (0, -R) and (+-R sin 60, R / 2); the centroid at 0.
  const double R = r * 1.3;
  const double h = R * 0.8660254;
  if (y > R / 2 || y < -R) return false;
  const double half = h * (y + R) / (1.5 * R);  // half width at this height
  return std::abs(x) <= half;
}

}  // namespace

namespace {

// One object's path: centre (x, y) and radius r for t in [0, 1].
struct Path {
  std::string shape;
  std::array<float, 3> colour;
  double r0, r1, x0, y0, x1, y1, bounce_height = 0, bounces = 1;
};

Path random_path(const DemoSpec& spec, const ClipAttributes& a, Rng& rng) {
  const double S = static_cast<double>(spec.size);
  const std::string& motion = spec.motions.at(a.motion);
  Path p{spec.shapes.at(a.shape), spec.colours.at(a.colour), 0, 0, 0, 0, 0, 0};
  p.r0 = p.r1 = rng.uniform(7, 10);
  const double travel = rng.uniform(0.36, 0.5) * S;
  auto across = [&](double r) { return rng.uniform(r + 3, S - r - 3); };
  if (motion == "left" || motion == "right") {
    const double start = rng.uniform(p.r0 + 2, S - p.r0 - 2 - travel);
    p.y0 = p.y1 = across(p.r0);
    p.x0 = motion == "right" ? start : S - start;
    p.x1 = motion == "right" ? start + travel : S - start - travel;
  } else if (motion == "up" || motion == "down") {
    const double start = rng.uniform(p.r0 + 2, S - p.r0 - 2 - travel);
    p.x0 = p.x1 = across(p.r0);
    p.y0 = motion == "down" ? start : S - start;
    p.y1 = motion == "down" ? start + travel : S - start - travel;
  } else if (motion == "growing" || motion == "shrinking") {
    const double small = rng.uniform(4, 6), big = rng.uniform(13, 17);
    p.r0 = motion == "growing" ? small : big;
    p.r1 = motion == "growing" ? big : small;
    p.x0 = p.x1 = rng.uniform(big + 2, S - big - 2);
    p.y0 = p.y1 = rng.uniform(big + 2, S - big - 2);
  } else if (motion == "bouncing") {
    p.x0 = p.x1 = across(p.r0);
    p.y0 = p.y1 = S - p.r0 - 2;  // the floor
    p.bounce_height = rng.uniform(0.3, 0.45) * S;
    p.bounces = static_cast<double>(1 + rng.below(2));
  } else {
    throw std::runtime_error("render_clip: unknown motion \"" + motion + "\"");
  }
  return p;
}

}  // namespace

at::Tensor render_clip(const DemoSpec& spec, const ClipAttributes& a, int64_t frames, Rng& rng) {
  return render_clip(spec, std::vector<ClipAttributes>{a}, frames, rng);
}

at::Tensor render_clip(const DemoSpec& spec, const std::vector<ClipAttributes>& objects, int64_t frames, Rng& rng) {
  const double S = static_cast<double>(spec.size);
  const Background& bg = spec.backgrounds.at(objects.at(0).background);
  std::vector<Path> paths;
  for (const ClipAttributes& a : objects) paths.push_back(random_path(spec, a, rng));

  const int64_t n = spec.size;
  at::Tensor out = at::empty({3, frames, n, n}, at::kFloat);
  float* p = out.data_ptr<float>();
  constexpr int kSub = 4;  // 4 x 4 samples per pixel
  for (int64_t f = 0; f < frames; ++f) {
    const double t = frames > 1 ? static_cast<double>(f) / static_cast<double>(frames - 1) : 0.0;
    for (int64_t yi = 0; yi < n; ++yi) {
      const float g = static_cast<float>((yi + 0.5) / S);  // gradient position, top to bottom
      for (int64_t xi = 0; xi < n; ++xi) {
        float v[3];
        for (int ch = 0; ch < 3; ++ch) v[ch] = bg.top[ch] + (bg.bottom[ch] - bg.top[ch]) * g;
        for (const Path& o : paths) {  // later objects in front
          const double cx = o.x0 + (o.x1 - o.x0) * t;
          const double cy = o.y0 + (o.y1 - o.y0) * t - o.bounce_height * std::abs(std::sin(M_PI * o.bounces * t));
          const double r = o.r0 + (o.r1 - o.r0) * t;
          int covered = 0;
          for (int sy = 0; sy < kSub; ++sy)
            for (int sx = 0; sx < kSub; ++sx)
              covered += inside(o.shape, xi + (sx + 0.5) / kSub - cx, yi + (sy + 0.5) / kSub - cy, r);
          const float c = static_cast<float>(covered) / (kSub * kSub);
          for (int ch = 0; ch < 3; ++ch) v[ch] += (o.colour[ch] - v[ch]) * c;
        }
        for (int ch = 0; ch < 3; ++ch) p[((ch * frames + f) * n + yi) * n + xi] = v[ch] / 127.5f - 1.0f;
      }
    }
  }
  return out;
}

}  // namespace wan::demo
