#include "models/wan_vae.h"

#include <cmath>
#include <cstdlib>
#include <malloc.h>

#include "core/error.h"
#include "models/weights.h"
#include "ops/attention.h"

namespace wan::models {
namespace {

using core::Error;
using core::ErrorCode;

constexpr int64_t kCacheT = 2;  // frames each causal conv keeps (CACHE_T)

void check_cancelled(const std::function<bool()>& cancelled) {
  if (cancelled && cancelled()) throw Error(ErrorCode::Aborted, "the operation was aborted");
}

// RMS_norm: F.normalize over channels (dim 1) * sqrt(C) * gamma; gamma is [C, 1, 1, 1] for
// video tensors and [C, 1, 1] for the attention's per-frame images, so it broadcasts as stored.
at::Tensor rms(const at::Tensor& x, const ops::Weight& gamma) {
  const double scale = std::sqrt(static_cast<double>(x.size(1)));
  return x / at::clamp_min(at::norm(x, 2, {1}, true), 1e-12) * scale * gamma.get(at::kFloat);
}

// CausalConv3d: zero padding in front in time (2 x pad_t frames, fewer when cached frames of
// the previous chunk are prepended), symmetric in space.
at::Tensor causal_conv(const ops::Weight& w, const ops::Weight& b, at::Tensor x, const at::Tensor& cache,
                       int64_t pad_t, int64_t pad_hw, int64_t stride_t = 1) {
  int64_t front = 2 * pad_t;
  if (cache.defined() && front > 0) {
    x = at::cat({cache, x}, 2);
    front -= cache.size(2);
  }
  if (front > 0 || pad_hw > 0) x = at::constant_pad_nd(x, {pad_hw, pad_hw, pad_hw, pad_hw, front, 0});
  return at::conv3d(x, w.get(at::kFloat), b.get(at::kFloat), {stride_t, 1, 1});
}

// The official pattern around every cached conv: remember the last CACHE_T input frames
// (topped up with the previous chunk's last frame when this chunk is shorter), convolve
// with the previous chunk's frames in front.
at::Tensor cached_conv(const ops::Weight& w, const ops::Weight& b, const at::Tensor& x, FeatureCache& cache) {
  FeatureCache::Slot& slot = cache.next();
  const int64_t t = x.size(2);
  at::Tensor keep = x.narrow(2, std::max<int64_t>(0, t - kCacheT), std::min(t, kCacheT)).clone();
  if (keep.size(2) < kCacheT && slot.present)
    keep = at::cat({slot.frames.narrow(2, slot.frames.size(2) - 1, 1), keep}, 2);
  const int64_t pad = w.stored.value.size(2) / 2;  // 3x3x3 -> 1, 1x1x1 -> 0
  at::Tensor out = causal_conv(w, b, x, slot.present ? slot.frames : at::Tensor(), pad, pad);
  slot.frames = keep;
  slot.present = true;
  return out;
}

// [b, c, t, h, w] <-> [(b t), c, h, w] for per-frame 2D work.
at::Tensor frames_to_images(const at::Tensor& x) {
  return x.permute({0, 2, 1, 3, 4}).reshape({x.size(0) * x.size(2), x.size(1), x.size(3), x.size(4)});
}
at::Tensor images_to_frames(const at::Tensor& x, int64_t b) {
  return x.reshape({b, x.size(0) / b, x.size(1), x.size(2), x.size(3)}).permute({0, 2, 1, 3, 4});
}

}  // namespace

const std::vector<float>& WanVae::latent_mean() {
  static const std::vector<float> mean = {-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                                          0.4134,  -0.0715, 0.5517,  -0.3632, -0.1922, -0.9497, 0.2503, -0.2921};
  return mean;
}

const std::vector<float>& WanVae::latent_std() {
  static const std::vector<float> std = {2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                                         3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160};
  return std;
}

WanVae::WanVae(WanVaeConfig config, std::map<std::string, ops::Weight> weights, const std::string& source)
    : config_(config) {
  WeightBag bag(std::move(weights));
  auto conv = [&](const std::string& p) { return Conv{bag.take(p + ".weight"), bag.take(p + ".bias")}; };
  auto residual = [&](const std::string& p, int64_t in, int64_t out) {
    Residual r{bag.take(p + ".residual.0.gamma"), bag.take(p + ".residual.3.gamma"), conv(p + ".residual.2"),
               conv(p + ".residual.6"), {}};
    if (in != out) r.shortcut = conv(p + ".shortcut");
    return r;
  };
  auto attention = [&](const std::string& p) {
    return Attention{bag.take(p + ".norm.gamma"), conv(p + ".to_qkv"), conv(p + ".proj")};
  };
  auto resample = [&](const std::string& p, const std::string& mode) {
    Resample r{mode, conv(p + ".resample.1"), {}};
    if (mode == "upsample3d" || mode == "downsample3d") r.time_conv = conv(p + ".time_conv");
    return r;
  };
  const int64_t d = config_.dim;
  const int64_t mult[] = {1, 2, 4, 4};

  // Encoder3d: dims d x [1, 1, 2, 4, 4]; temporal downsampling [False, True, True].
  encoder_.conv1 = conv("encoder.conv1");
  int64_t in = d, k = 0;
  for (int i = 0; i < 4; ++i) {
    const int64_t out = d * mult[i];
    for (int j = 0; j < 2; ++j, in = out)
      encoder_.stages.push_back({Stage::kResidual, residual("encoder.downsamples." + std::to_string(k++), in, out), {}});
    if (i != 3)
      encoder_.stages.push_back(
          {Stage::kResample, {}, resample("encoder.downsamples." + std::to_string(k++), i == 0 ? "downsample2d" : "downsample3d")});
  }
  encoder_.middle0 = residual("encoder.middle.0", in, in);
  encoder_.middle1 = attention("encoder.middle.1");
  encoder_.middle2 = residual("encoder.middle.2", in, in);
  encoder_.head_norm = bag.take("encoder.head.0.gamma");
  encoder_.head_conv = conv("encoder.head.2");

  // Decoder3d: dims d x [4, 4, 4, 2, 1]; each upsample halves the channels it passes on;
  // temporal upsampling [True, True, False].
  decoder_.conv1 = conv("decoder.conv1");
  decoder_.middle0 = residual("decoder.middle.0", 4 * d, 4 * d);
  decoder_.middle1 = attention("decoder.middle.1");
  decoder_.middle2 = residual("decoder.middle.2", 4 * d, 4 * d);
  const int64_t dims[] = {4 * d, 4 * d, 4 * d, 2 * d, d};
  k = 0;
  for (int i = 0; i < 4; ++i) {
    in = i == 0 ? dims[0] : dims[i] / 2;
    const int64_t out = dims[i + 1];
    for (int j = 0; j < 3; ++j, in = out)
      decoder_.stages.push_back({Stage::kResidual, residual("decoder.upsamples." + std::to_string(k++), in, out), {}});
    if (i != 3)
      decoder_.stages.push_back(
          {Stage::kResample, {}, resample("decoder.upsamples." + std::to_string(k++), i < 2 ? "upsample3d" : "upsample2d")});
  }
  decoder_.head_norm = bag.take("decoder.head.0.gamma");
  decoder_.head_conv = conv("decoder.head.2");
  conv1_ = conv("conv1");
  conv2_ = conv("conv2");
  bag.check(source, "Wan2.1 VAE");
}

// x: [b, in, t, h, w] -> [b, out, t, h, w]
at::Tensor WanVae::residual(const Residual& r, const at::Tensor& x, FeatureCache& cache) const {
  const at::Tensor h = r.shortcut.weight.defined() ? causal_conv(r.shortcut.weight, r.shortcut.bias, x, {}, 0, 0) : x;
  at::Tensor y = cached_conv(r.conv2.weight, r.conv2.bias, at::silu(rms(x, r.norm0)), cache);
  y = cached_conv(r.conv6.weight, r.conv6.bias, at::silu(rms(y, r.norm3)), cache);
  return y + h;
}

// x: [b, c, t, h, w]; single-head attention among the h*w pixels of each frame.
at::Tensor WanVae::attention(const Attention& a, const at::Tensor& x) const {
  const int64_t b = x.size(0), c = x.size(1), h = x.size(3), w = x.size(4);
  at::Tensor img = rms(frames_to_images(x), a.norm);
  const at::Tensor qkv = at::conv2d(img, a.to_qkv.weight.get(at::kFloat), a.to_qkv.bias.get(at::kFloat));
  // [bt, 3c, h, w] -> [bt, hw, 1, 3c] -> q, k, v [bt, hw, 1 head, c]
  const auto parts = qkv.reshape({qkv.size(0), 3 * c, h * w}).permute({0, 2, 1}).unsqueeze(2).chunk(3, -1);
  const at::Tensor out = ops::attention(parts[0].contiguous(), parts[1].contiguous(), parts[2].contiguous(),
                                        ops::AttentionMode::Sdpa);
  img = out.squeeze(2).permute({0, 2, 1}).reshape({qkv.size(0), c, h, w});
  img = at::conv2d(img, a.proj.weight.get(at::kFloat), a.proj.bias.get(at::kFloat));
  return images_to_frames(img, b) + x;
}

// Resample (vae.py): spatial 2x up/down per frame, and for the 3d modes the temporal 2x
// with the official caching (upsample3d skips the first chunk: its 'Rep' marker).
at::Tensor WanVae::resample(const Resample& r, const at::Tensor& x_in, FeatureCache& cache) const {
  at::Tensor x = x_in;
  const int64_t b = x.size(0);
  if (r.mode == "upsample3d") {
    FeatureCache::Slot& slot = cache.next();
    if (!slot.present) {
      slot.present = true;
      slot.rep = true;
    } else {
      const int64_t t = x.size(2);
      at::Tensor keep = x.narrow(2, std::max<int64_t>(0, t - kCacheT), std::min(t, kCacheT)).clone();
      if (keep.size(2) < kCacheT)
        keep = at::cat({slot.rep ? at::zeros_like(keep) : slot.frames.narrow(2, slot.frames.size(2) - 1, 1), keep}, 2);
      x = causal_conv(r.time_conv.weight, r.time_conv.bias, x, slot.rep ? at::Tensor() : slot.frames, 1, 0);
      slot.frames = keep;
      slot.rep = false;
      // [b, 2c, t, h, w] -> [b, c, 2t, h, w], the two halves interleaved in time
      const int64_t c = x.size(1) / 2;
      x = x.reshape({b, 2, c, t, x.size(3), x.size(4)});
      x = at::stack({x.select(1, 0), x.select(1, 1)}, 3).reshape({b, c, 2 * t, x.size(4), x.size(5)});
    }
  }
  at::Tensor img = frames_to_images(x);
  if (r.mode == "upsample2d" || r.mode == "upsample3d") {
    img = at::upsample_nearest2d(img, {2 * img.size(2), 2 * img.size(3)});  // = nearest-exact at 2x
    img = at::conv2d(img, r.resample1.weight.get(at::kFloat), r.resample1.bias.get(at::kFloat), 1, 1);
  } else {
    img = at::constant_pad_nd(img, {0, 1, 0, 1});  // ZeroPad2d((0, 1, 0, 1))
    img = at::conv2d(img, r.resample1.weight.get(at::kFloat), r.resample1.bias.get(at::kFloat), 2);
  }
  x = images_to_frames(img, b);
  if (r.mode == "downsample3d") {
    FeatureCache::Slot& slot = cache.next();
    if (!slot.present) {
      slot.frames = x.clone();
      slot.present = true;
    } else {
      const at::Tensor keep = x.narrow(2, x.size(2) - 1, 1).clone();
      x = causal_conv(r.time_conv.weight, r.time_conv.bias,
                      at::cat({slot.frames.narrow(2, slot.frames.size(2) - 1, 1), x}, 2), {}, 0, 0, 2);
      slot.frames = keep;
    }
  }
  return x;
}

at::Tensor WanVae::run(const Coder& c, const at::Tensor& x_in, FeatureCache& cache, bool encoder) const {
  at::Tensor x = cached_conv(c.conv1.weight, c.conv1.bias, x_in, cache);
  auto middle = [&] {
    x = residual(c.middle0, x, cache);
    x = attention(c.middle1, x);
    x = residual(c.middle2, x, cache);
  };
  if (!encoder) middle();
  for (const Stage& s : c.stages) x = s.kind == Stage::kResidual ? residual(s.residual, x, cache) : resample(s.resample, x, cache);
  if (encoder) middle();
  return cached_conv(c.head_conv.weight, c.head_conv.bias, at::silu(rms(x, c.head_norm)), cache);
}

at::Tensor WanVae::encode(const at::Tensor& video, const std::function<bool()>& cancelled, at::Tensor* mu_out) const {
  const auto s = video.sizes();
  if (video.dim() != 4 || s[0] != 3 || (s[1] - 1) % 4 != 0 || s[2] % 8 != 0 || s[3] % 8 != 0 || s[2] == 0 || s[3] == 0)
    throw Error(ErrorCode::InvalidTensor, "Vae.encode: video must be [3, F, H, W] with F = 4k + 1 and H, W multiples of 8, got " +
                                              c10::str(s));
  const at::Tensor x = video.to(at::kFloat).unsqueeze(0);
  FeatureCache cache;
  std::vector<at::Tensor> outs;
  // The first frame alone, then chunks of four (vae.py encode).
  for (int64_t i = 0, chunks = 1 + (s[1] - 1) / 4; i < chunks; ++i) {
    check_cancelled(cancelled);
    cache.index = 0;
    outs.push_back(run(encoder_, i == 0 ? x.narrow(2, 0, 1) : x.narrow(2, 1 + 4 * (i - 1), 4), cache, true));
  }
  const at::Tensor mu = causal_conv(conv1_.weight, conv1_.bias, at::cat(outs, 2), {}, 0, 0).chunk(2, 1)[0];
  if (mu_out) *mu_out = mu.squeeze(0);
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor mean = at::tensor(latent_mean(), opts).view({1, -1, 1, 1, 1});
  const at::Tensor inv_std = (1.0 / at::tensor(latent_std(), opts)).view({1, -1, 1, 1, 1});
  return ((mu - mean) * inv_std).squeeze(0);
}

at::Tensor WanVae::unnormalize(const at::Tensor& z) const {
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor mean = at::tensor(latent_mean(), opts).view({1, -1, 1, 1, 1});
  const at::Tensor inv_std = (1.0 / at::tensor(latent_std(), opts)).view({1, -1, 1, 1, 1});
  // As vae.py decode: z / (1 / std) + mean, then the post-quant conv.
  return causal_conv(conv2_.weight, conv2_.bias, z.to(at::kFloat).unsqueeze(0) / inv_std + mean, {}, 0, 0);
}

namespace {

// Linear ramp weights along one axis of a tile: rising over `before` pixels where a
// neighbour overlaps in front, falling over `after` pixels where one overlaps behind.
at::Tensor ramp(int64_t n, int64_t before, int64_t after) {
  at::Tensor w = at::ones({n}, at::kFloat);
  float* p = w.data_ptr<float>();
  for (int64_t i = 0; i < before && i < n; ++i) p[i] = std::min(p[i], float(i + 1) / float(before + 1));
  for (int64_t i = 0; i < after && i < n; ++i) p[n - 1 - i] = std::min(p[n - 1 - i], float(i + 1) / float(after + 1));
  return w;
}

// Tile starts covering [0, total) with tiles of `size` every `stride`, the last flush with the end.
std::vector<int64_t> tile_starts(int64_t total, int64_t size, int64_t stride) {
  std::vector<int64_t> starts;
  for (int64_t s = 0;; s += stride) {
    if (s + size >= total) {
      starts.push_back(std::max<int64_t>(0, total - size));
      return starts;
    }
    starts.push_back(s);
  }
}

}  // namespace

WanVae::Decoder::Decoder(std::shared_ptr<const WanVae> vae, const at::Tensor& z, const Tiling* tiling)
    : vae_(std::move(vae)) {
  const int64_t z_dim = vae_->config_.z_dim;
  if (z.dim() != 4 || z.size(0) != z_dim || z.size(1) < 1)
    throw Error(ErrorCode::InvalidTensor, "Vae.decode: latent must be [" + std::to_string(z_dim) + ", T, h, w], got " +
                                              c10::str(z.sizes()));
  x_ = vae_->unnormalize(z);
  const int64_t h = x_.size(3), w = x_.size(4);
  if (!tiling) {
    th_ = h;
    tw_ = w;
    tiles_.push_back(Tile{0, 0, {}, at::Tensor()});
    return;
  }
  for (auto [name, v] : {std::pair{"tileX", tiling->tile_x}, {"tileY", tiling->tile_y},
                         {"tileStrideX", tiling->stride_x}, {"tileStrideY", tiling->stride_y}})
    if (v <= 0 || v % 8 != 0)
      throw Error(ErrorCode::InvalidOption, std::string(name) + ": expected a positive multiple of 8 but received " + std::to_string(v));
  if (tiling->stride_x > tiling->tile_x || tiling->stride_y > tiling->tile_y)
    throw Error(ErrorCode::InvalidOption, "tileStrideX and tileStrideY must not exceed tileX and tileY (tiles must overlap or touch)");
  th_ = std::min(tiling->tile_y / 8, h);
  tw_ = std::min(tiling->tile_x / 8, w);
  const auto ys = tile_starts(h, th_, tiling->stride_y / 8), xs = tile_starts(w, tw_, tiling->stride_x / 8);
  for (size_t i = 0; i < ys.size(); ++i)
    for (size_t j = 0; j < xs.size(); ++j) {
      // Overlap with the previous and next tile, in pixels.
      const int64_t top = i > 0 ? 8 * (ys[i - 1] + th_ - ys[i]) : 0;
      const int64_t bottom = i + 1 < ys.size() ? 8 * (ys[i] + th_ - ys[i + 1]) : 0;
      const int64_t left = j > 0 ? 8 * (xs[j - 1] + tw_ - xs[j]) : 0;
      const int64_t right = j + 1 < xs.size() ? 8 * (xs[j] + tw_ - xs[j + 1]) : 0;
      tiles_.push_back(Tile{ys[i], xs[j], {},
                            at::outer(ramp(8 * th_, top, bottom), ramp(8 * tw_, left, right)).view({1, 1, 8 * th_, 8 * tw_})});
    }
}

at::Tensor WanVae::Decoder::next() {
  if (done()) throw Error(ErrorCode::Internal, "Vae decoder: no frames left");
  if (std::getenv("VAE_TRIM")) malloc_trim(0);
  const at::Tensor frame = x_.narrow(2, next_frame_++, 1);
  if (tiles_.size() == 1 && !tiles_[0].weight.defined()) {
    tiles_[0].cache.index = 0;
    return vae_->run(vae_->decoder_, frame, tiles_[0].cache, false).squeeze(0);
  }
  at::Tensor sum, weight_sum;
  for (Tile& tile : tiles_) {
    tile.cache.index = 0;
    const at::Tensor part = frame.narrow(3, tile.y, th_).narrow(4, tile.x, tw_);
    const at::Tensor out = vae_->run(vae_->decoder_, part, tile.cache, false).squeeze(0);  // [3, n, 8th, 8tw]
    if (!sum.defined()) {
      sum = at::zeros({3, out.size(1), 8 * x_.size(3), 8 * x_.size(4)}, at::kFloat);
      weight_sum = at::zeros({1, 1, 8 * x_.size(3), 8 * x_.size(4)}, at::kFloat);
    }
    sum.narrow(2, 8 * tile.y, 8 * th_).narrow(3, 8 * tile.x, 8 * tw_).add_(out * tile.weight);
    weight_sum.narrow(2, 8 * tile.y, 8 * th_).narrow(3, 8 * tile.x, 8 * tw_).add_(tile.weight);
  }
  return sum / weight_sum;
}

WanVaeConfig infer_wan_vae_config(const std::map<std::string, std::vector<int64_t>>& shapes, const std::string& source) {
  const auto conv1 = shapes.find("encoder.conv1.weight");
  const auto conv2 = shapes.find("conv2.weight");
  if (conv1 == shapes.end() || conv2 == shapes.end())
    throw core::bad_checkpoint(source, "not a Wan2.1 VAE: no 'encoder.conv1.weight' and 'conv2.weight' to infer the configuration from");
  WanVaeConfig c;
  c.dim = conv1->second.at(0);
  c.z_dim = conv2->second.at(0);
  return c;
}

std::shared_ptr<WanVae> load_wan_vae(const std::vector<std::string>& files, bool populate,
                                     const std::function<bool()>& cancelled) {
  LoadedWeights loaded = load_weights(files, populate, cancelled);
  return std::make_shared<WanVae>(infer_wan_vae_config(loaded.shapes, files.front()), std::move(loaded.weights),
                                  files.front());
}

}  // namespace wan::models
