#include "models/wan_vae.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "core/error.h"
#include "models/weights.h"
#include "ops/attention.h"
#include "ops/norm.h"

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
// The two products are taken in place: the same values as x / n * s * g, in one buffer of x's
// size instead of three (at full resolution each is hundreds of MB).
// Where autograd records (training), out of place: the in-place products and SiLU would
// overwrite values the backward needs.
at::Tensor rms(const at::Tensor& x, const ops::Weight& gamma) {
  const double scale = std::sqrt(static_cast<double>(x.size(1)));
  at::Tensor y = x / at::clamp_min(at::norm(x, 2, {1}, true), 1e-12);
  const at::Tensor g = gamma.get(at::kFloat);
  if (ops::records_grad(x, g)) return y * scale * g;
  return y.mul_(scale).mul_(g);
}

// residual.0-1 and head.0-1: RMS norm then SiLU, in the norm's buffer.
at::Tensor rms_silu(const at::Tensor& x, const ops::Weight& gamma) {
  at::Tensor y = rms(x, gamma);
  if (ops::records_grad(y)) return at::silu(y);
  at::silu_(y);
  return y;
}

// CausalConv3d: zero padding in front in time (2 x pad_t frames, fewer when cached frames of
// the previous chunk are prepended), symmetric in space. The convolution pads space itself,
// so that the input is copied only when frames are put in front of it (the official F.pad
// copies it for every conv).
at::Tensor causal_conv(const ops::Weight& w, const ops::Weight& b, const at::Tensor& x, const at::Tensor& cache,
                       int64_t pad_t, int64_t pad_hw, int64_t stride_t = 1) {
  int64_t front = 2 * pad_t;
  at::Tensor in = x;
  if (cache.defined() && front > 0) {
    in = at::cat({cache, x}, 2);
    front -= cache.size(2);
  }
  if (front > 0) in = at::constant_pad_nd(in, {0, 0, 0, 0, front, 0});
  return at::conv3d(in, w.get(at::kFloat), b.get(at::kFloat), {stride_t, 1, 1}, {0, pad_hw, pad_hw});
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

// Wan's fixed per-channel latent mean and 1 / std, shaped [1, z, 1, 1, 1].
std::pair<at::Tensor, at::Tensor> latent_scale(at::Device device) {
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(device);
  return {at::tensor(WanVae::latent_mean(), opts).view({1, -1, 1, 1, 1}),
          (1.0 / at::tensor(WanVae::latent_std(), opts)).view({1, -1, 1, 1, 1})};
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

WanVae::WanVae(WanVaeConfig config, std::map<std::string, ops::Weight> weights, const std::string& source,
               at::Device device, bool load_on_main)
    : config_(config), device_(device), residency_(device) {
  for (const auto& [name, w] : weights) weight_bytes_ += static_cast<int64_t>(w.stored.value.nbytes());
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
  residency_.manage(weight_members(*this), load_on_main);
}

// x: [b, in, t, h, w] -> [b, out, t, h, w]
at::Tensor WanVae::residual(const Residual& r, const at::Tensor& x, FeatureCache& cache) const {
  const at::Tensor h = r.shortcut.weight.defined() ? causal_conv(r.shortcut.weight, r.shortcut.bias, x, {}, 0, 0) : x;
  at::Tensor y = cached_conv(r.conv2.weight, r.conv2.bias, rms_silu(x, r.norm0), cache);
  y = cached_conv(r.conv6.weight, r.conv6.bias, rms_silu(y, r.norm3), cache);
  if (ops::records_grad(y, h)) return y + h;
  return y.add_(h);
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
  residency_.place(true);
  at::Tensor x = cached_conv(c.conv1.weight, c.conv1.bias, x_in, cache);
  auto middle = [&] {
    x = residual(c.middle0, x, cache);
    x = attention(c.middle1, x);
    x = residual(c.middle2, x, cache);
  };
  if (!encoder) middle();
  for (const Stage& s : c.stages) x = s.kind == Stage::kResidual ? residual(s.residual, x, cache) : resample(s.resample, x, cache);
  if (encoder) middle();
  return cached_conv(c.head_conv.weight, c.head_conv.bias, rms_silu(x, c.head_norm), cache);
}

namespace {
at::Tensor tiled_mu(const WanVae& vae, const at::Tensor& x, const WanVae::Tiling& tiling, const std::function<bool()>& cancelled);
}  // namespace

at::Tensor WanVae::encode(const at::Tensor& video, const std::function<bool()>& cancelled, at::Tensor* mu_out,
                          const Tiling* tiling) const {
  const auto s = video.sizes();
  if (video.dim() != 4 || s[0] != 3 || (s[1] - 1) % 4 != 0 || s[2] % 8 != 0 || s[3] % 8 != 0 || s[2] == 0 || s[3] == 0)
    throw Error(ErrorCode::InvalidTensor, "Vae.encode: video must be [3, F, H, W] with F = 4k + 1 and H, W multiples of 8, got " +
                                              c10::str(s));
  const at::Tensor x = video.to(device_, at::kFloat).unsqueeze(0);
  const at::Tensor mu = tiling ? tiled_mu(*this, x, *tiling, cancelled) : encode_moments(x, cancelled).first;
  if (mu_out) *mu_out = mu.squeeze(0).to(at::kCPU);
  return normalize(mu).squeeze(0).to(at::kCPU);
}

at::Tensor WanVae::normalize(const at::Tensor& mu) {
  const auto [mean, inv_std] = latent_scale(mu.device());
  return (mu - mean) * inv_std;
}

std::pair<at::Tensor, at::Tensor> WanVae::encode_moments(const at::Tensor& x,
                                                         const std::function<bool()>& cancelled) const {
  if (x.dim() != 5 || x.size(1) != 3 || (x.size(2) - 1) % 4 != 0)
    throw Error(ErrorCode::InvalidTensor, "Vae: video batch must be [B, 3, F, H, W] with F = 4k + 1, got " + c10::str(x.sizes()));
  FeatureCache cache;
  std::vector<at::Tensor> outs;
  // The first frame alone, then chunks of four (vae.py encode).
  for (int64_t i = 0, chunks = 1 + (x.size(2) - 1) / 4; i < chunks; ++i) {
    check_cancelled(cancelled);
    cache.index = 0;
    outs.push_back(run(encoder_, i == 0 ? x.narrow(2, 0, 1) : x.narrow(2, 1 + 4 * (i - 1), 4), cache, true));
  }
  const auto moments = causal_conv(conv1_.weight, conv1_.bias, at::cat(outs, 2), {}, 0, 0).chunk(2, 1);
  return {moments[0], moments[1]};
}

at::Tensor WanVae::decode_raw(const at::Tensor& z) const {
  if (z.dim() != 5 || z.size(1) != config_.z_dim)
    throw Error(ErrorCode::InvalidTensor, "Vae: latent batch must be [B, " + std::to_string(config_.z_dim) +
                                              ", T, h, w], got " + c10::str(z.sizes()));
  residency_.place(true);
  const at::Tensor x = causal_conv(conv2_.weight, conv2_.bias, z, {}, 0, 0);
  FeatureCache cache;
  std::vector<at::Tensor> frames;
  // One latent frame at a time, as Decoder::next() (vae.py decode).
  for (int64_t i = 0; i < x.size(2); ++i) {
    cache.index = 0;
    frames.push_back(run(decoder_, x.narrow(2, i, 1), cache, false));
  }
  return at::cat(frames, 2);
}

at::Tensor WanVae::unnormalize(const at::Tensor& z) const {
  residency_.place(true);
  const auto [mean, inv_std] = latent_scale(device_);
  // As vae.py decode: z / (1 / std) + mean, then the post-quant conv.
  return causal_conv(conv2_.weight, conv2_.bias, z.to(device_, at::kFloat).unsqueeze(0) / inv_std + mean, {}, 0, 0);
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

// The tiles of an h x w latent, in latent pixels: th x tw each, starting at ys x xs.
struct TileGrid {
  int64_t th, tw;
  std::vector<int64_t> ys, xs;
};

TileGrid tile_grid(int64_t h, int64_t w, const WanVae::Tiling& tiling) {
  for (auto [name, v] : {std::pair{"tileX", tiling.tile_x}, {"tileY", tiling.tile_y},
                         {"tileStrideX", tiling.stride_x}, {"tileStrideY", tiling.stride_y}})
    if (v <= 0 || v % 8 != 0)
      throw Error(ErrorCode::InvalidOption, std::string(name) + ": expected a positive multiple of 8 but received " + std::to_string(v));
  if (tiling.stride_x >= tiling.tile_x || tiling.stride_y >= tiling.tile_y)
    throw Error(ErrorCode::InvalidOption, "Expected tileStrideX and tileStrideY below tileX and tileY, so that tiles overlap, but received tileX " +
                                              std::to_string(tiling.tile_x) + ", tileY " + std::to_string(tiling.tile_y) +
                                              ", tileStrideX " + std::to_string(tiling.stride_x) + ", tileStrideY " +
                                              std::to_string(tiling.stride_y));
  TileGrid g;
  g.th = std::min(tiling.tile_y / 8, h);
  g.tw = std::min(tiling.tile_x / 8, w);
  g.ys = tile_starts(h, g.th, tiling.stride_y / 8);
  g.xs = tile_starts(w, g.tw, tiling.stride_x / 8);
  return g;
}

}  // namespace

namespace {

// The tiled encode: the tile grid of the latent (tile sizes and strides in pixels, / 8), each
// tile's pixels encoded alone, its latent weighted by ramps over the latent pixels it shares
// with its neighbours, the weighted sum over the summed weights.
at::Tensor tiled_mu(const WanVae& vae, const at::Tensor& x, const WanVae::Tiling& tiling, const std::function<bool()>& cancelled) {
  const int64_t h = x.size(3) / 8, w = x.size(4) / 8;
  const TileGrid g = tile_grid(h, w, tiling);
  const auto& ys = g.ys;
  const auto& xs = g.xs;
  at::Tensor sum, weight_sum;
  for (size_t i = 0; i < ys.size(); ++i)
    for (size_t j = 0; j < xs.size(); ++j) {
      const int64_t top = i > 0 ? ys[i - 1] + g.th - ys[i] : 0;
      const int64_t bottom = i + 1 < ys.size() ? ys[i] + g.th - ys[i + 1] : 0;
      const int64_t left = j > 0 ? xs[j - 1] + g.tw - xs[j] : 0;
      const int64_t right = j + 1 < xs.size() ? xs[j] + g.tw - xs[j + 1] : 0;
      const at::Tensor part = x.narrow(3, 8 * ys[i], 8 * g.th).narrow(4, 8 * xs[j], 8 * g.tw);
      const at::Tensor mu = vae.encode_moments(part, cancelled).first;  // [1, z, T, th, tw]
      const at::Tensor weight = at::outer(ramp(g.th, top, bottom), ramp(g.tw, left, right)).view({1, 1, 1, g.th, g.tw}).to(mu.device());
      if (!sum.defined()) {
        sum = at::zeros({1, mu.size(1), mu.size(2), h, w}, mu.options());
        weight_sum = at::zeros({1, 1, 1, h, w}, mu.options());
      }
      sum.narrow(3, ys[i], g.th).narrow(4, xs[j], g.tw).add_(mu * weight);
      weight_sum.narrow(3, ys[i], g.th).narrow(4, xs[j], g.tw).add_(weight);
    }
  return sum / weight_sum;
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
  const TileGrid g = tile_grid(h, w, *tiling);
  th_ = g.th;
  tw_ = g.tw;
  const auto& ys = g.ys;
  const auto& xs = g.xs;
  for (size_t i = 0; i < ys.size(); ++i)
    for (size_t j = 0; j < xs.size(); ++j) {
      // Overlap with the previous and next tile, in pixels.
      const int64_t top = i > 0 ? 8 * (ys[i - 1] + th_ - ys[i]) : 0;
      const int64_t bottom = i + 1 < ys.size() ? 8 * (ys[i] + th_ - ys[i + 1]) : 0;
      const int64_t left = j > 0 ? 8 * (xs[j - 1] + tw_ - xs[j]) : 0;
      const int64_t right = j + 1 < xs.size() ? 8 * (xs[j] + tw_ - xs[j + 1]) : 0;
      tiles_.push_back(Tile{ys[i], xs[j], {},
                            at::outer(ramp(8 * th_, top, bottom), ramp(8 * tw_, left, right))
                                .view({1, 1, 8 * th_, 8 * tw_})
                                .to(x_.device())});
    }
}

at::Tensor WanVae::Decoder::next() {
  if (done()) throw Error(ErrorCode::Internal, "Vae decoder: no frames left");
  const at::Tensor frame = x_.narrow(2, next_frame_++, 1);
  if (tiles_.size() == 1 && !tiles_[0].weight.defined()) {
    tiles_[0].cache.index = 0;
    return vae_->run(vae_->decoder_, frame, tiles_[0].cache, false).squeeze(0).to(at::kCPU);
  }
  at::Tensor sum, weight_sum;
  for (Tile& tile : tiles_) {
    tile.cache.index = 0;
    const at::Tensor part = frame.narrow(3, tile.y, th_).narrow(4, tile.x, tw_);
    const at::Tensor out = vae_->run(vae_->decoder_, part, tile.cache, false).squeeze(0);  // [3, n, 8th, 8tw]
    if (!sum.defined()) {
      sum = at::zeros({3, out.size(1), 8 * x_.size(3), 8 * x_.size(4)}, out.options());
      weight_sum = at::zeros({1, 1, 8 * x_.size(3), 8 * x_.size(4)}, out.options());
    }
    sum.narrow(2, 8 * tile.y, 8 * th_).narrow(3, 8 * tile.x, 8 * tw_).add_(out * tile.weight);
    weight_sum.narrow(2, 8 * tile.y, 8 * th_).narrow(3, 8 * tile.x, 8 * tw_).add_(tile.weight);
  }
  return (sum / weight_sum).to(at::kCPU);
}

// ---------------------------------------------------------------------------------------
// Decode memory planning (WanVae::estimate_decode_memory).
//
// The planner replays Decoder::next() on shapes: every tensor the functions above allocate,
// in the same order, freed where the real one dies (a C++ temporary at the end of its
// full-expression, a local at the end of its scope, an assigned-over value at the
// assignment), plus the buffers libtorch allocates inside a convolution, and feeds them to a
// model of the heap. A formula would do for the live bytes (the busiest moment is the second
// conv of the last level's first residual block, at full resolution with dim channels and 4
// frames, next to every feature cache), but how much the heap keeps resident on top of them
// depends on the order of allocations: 15-35% more in the measurements behind this planner.
// Keep it in step with the code it replays.
//
// Inside a convolution (libtorch 1.13 as Debian builds it, traced allocation by allocation):
// at::conv3d and at::conv2d go to oneDNN when ConvParams::use_mkldnn holds (use_mkldnn()
// below). oneDNN copies the input into its blocked layout (nCdhw16c with AVX-512, 8c with
// AVX2; channels padded up to the block), reorders the weight, computes a blocked output,
// and mkldnn_to_dense copies that into the plain output:
//   +input(blocked) +weight(blocked) +output(blocked) -weight -input +output -output(blocked)
// so a conv needs its input once more and its output twice. Below the threshold (small
// latents or tiles) it is slow_conv3d / slow_conv2d: the output, then a vol2col / im2col
// column buffer [C kt kh kw, T H W], 27x the input for a 3x3x3 kernel.
//
// The heap: core/cpu_allocator sets M_MMAP_MAX 0, M_TRIM_THRESHOLD 256 MiB and M_TOP_PAD
// 64 MiB, so that tensors come from glibc's heap and freed memory stays resident. The
// decode runs on the engine thread, whose arena grows in heaps of 64 MiB (HEAP_MAX_SIZE).
// glibc takes the best-fitting free chunk, coalesces neighbours, and starts a new heap when
// the current one's top is too small; a non-main heap is never trimmed (its top never
// reaches the trim threshold, and top_pad keeps it from being deleted). A block larger than
// a heap is mmapped after all: sysmalloc's fallback for a non-main arena whose new_heap
// failed calls sysmalloc_mmap without looking at M_MMAP_MAX (glibc 2.36; mallinfo2 showed
// 506 MiB mmapped in a 256x192 decode), so it is resident while it lives and unmapped when
// freed. The JS thread's ArrayBuffers (decode()'s copies) come from the main arena (brk),
// whose top is trimmed to top_pad when it exceeds 256 MiB. Resident memory is what has been
// handed out, less those trims and unmaps. Replayed on the full allocation
// trace of a real 128x96 decode (LD_PRELOAD malloc tracer) this model came within 7% of the
// arena's real resident size; the rest is glibc's tcache, which keeps thousands of small
// freed chunks (tensor metadata, oneDNN descriptors) where they are, splitting freed
// blocks. The replay leaves those small allocations out. The estimate as a whole, with
// kRuntimeBytes, was within +2% to +6% of VmHWM for 64x64 to 128x96 decodes, tiled or not
// (test/native/vae-memory.test.ts); BENCHMARKS.md has 480x832.

namespace {

constexpr int64_t kMiB = int64_t{1} << 20;

// Pages a process's first decode maps besides its tensors, from /proc/self/smaps before and
// after decodes of 64x64 and 128x96 (Debian 12, libtorch 1.13, Node 20, 2 threads):
// libtorch's, oneDNN's and node's code run for the first time (file-backed, 13.5-16 MiB),
// the OpenBLAS and OpenMP thread buffers and oneDNN's JIT kernels (about 5 MiB) and the JS
// thread's own small allocations (about 3 MiB). A second decode in the process maps none.
constexpr int64_t kRuntimeBytes = 22 * kMiB;

class HeapModel {
 public:
  struct Block {
    int arena = -1;  // 0 the engine thread's, 1 the main arena, 2 mmapped
    int64_t addr = 0, size = 0;
  };

  HeapModel() {
    main_.main = true;
    main_.heaps.push_back(Heap{0, 0, std::numeric_limits<int64_t>::max() / 4, 0});
  }

  // malloc(bytes + 64) (core/cpu_allocator aligns inside the block) on the engine thread, or
  // on the JS thread (`js`), which uses the main arena.
  Block alloc(int64_t bytes, bool js) {
    const int64_t chunk = std::max<int64_t>(kMinChunk, (bytes + 64 + 8 + 15) / 16 * 16);
    if (js) return take(main_, 1, chunk);
    if (chunk <= kHeapUsable) return take(engine_, 0, chunk);
    const int64_t pages = (chunk + 8 + kPage - 1) / kPage * kPage;
    mapped_ += pages;
    return {2, 0, pages};
  }

  void release(const Block& b) {
    if (b.arena == 2) {
      mapped_ -= b.size;
      return;
    }
    Arena& a = b.arena == 0 ? engine_ : main_;
    int64_t addr = b.addr, size = b.size;
    if (auto next = a.by_addr.find(addr + size); next != a.by_addr.end()) {
      size += next->second;
      a.by_size.erase({next->second, next->first});
      a.by_addr.erase(next);
    }
    if (auto it = a.by_addr.lower_bound(addr); it != a.by_addr.begin()) {
      auto prev = std::prev(it);
      if (prev->first + prev->second == addr) {
        addr = prev->first;
        size += prev->second;
        a.by_size.erase({prev->second, prev->first});
        a.by_addr.erase(prev);
      }
    }
    Heap& top = a.heaps.back();
    if (addr + size == top.top && addr >= top.base) {
      top.top = addr;
      if (a.main && top.end_brk - top.top >= kTrimThreshold) {  // systrim(top_pad)
        top.end_brk = top.top + kTopPad;
        top.touched = std::min(top.touched, top.end_brk);
      }
      return;
    }
    a.by_size.insert({size, addr});
    a.by_addr[addr] = size;
  }

  int64_t resident() const {
    int64_t r = mapped_;
    for (const Arena* a : {&engine_, &main_})
      for (const Heap& h : a->heaps) r += h.touched - h.base;
    return r;
  }

 private:
  static constexpr int64_t kMinChunk = 32;
  static constexpr int64_t kPage = 4096;
  static constexpr int64_t kHeapUsable = 64 * kMiB - 64;  // HEAP_MAX_SIZE less heap_info and fenceposts
  static constexpr int64_t kTrimThreshold = 256 * kMiB;
  static constexpr int64_t kTopPad = 64 * kMiB;

  struct Heap {
    int64_t base, top, end, touched;
    int64_t end_brk = 0;  // main arena: the break
  };
  struct Arena {
    bool main = false;
    std::vector<Heap> heaps;
    std::set<std::pair<int64_t, int64_t>> by_size;  // free chunks (size, addr): best fit
    std::map<int64_t, int64_t> by_addr;             // free chunks addr -> size: coalescing
  };

  Block take(Arena& a, int arena, int64_t chunk) {
    auto it = a.by_size.lower_bound({chunk, std::numeric_limits<int64_t>::min()});
    if (it != a.by_size.end()) {
      const auto [size, addr] = *it;
      a.by_size.erase(it);
      a.by_addr.erase(addr);
      const int64_t used = size - chunk >= kMinChunk ? chunk : size;
      if (used < size) {
        a.by_size.insert({size - chunk, addr + chunk});
        a.by_addr[addr + chunk] = size - chunk;
      }
      // A retired heap's old top was never touched.
      Heap& h = a.main ? a.heaps[0] : a.heaps[static_cast<size_t>((addr >> 40) - 1)];
      h.touched = std::max(h.touched, addr + used);
      return {arena, addr, used};
    }
    if (a.heaps.empty() || a.heaps.back().top + chunk > a.heaps.back().end) {
      if (!a.heaps.empty()) {  // the old heap's top becomes an ordinary free chunk
        Heap& old = a.heaps.back();
        if (old.end - old.top >= kMinChunk) {
          a.by_size.insert({old.end - old.top, old.top});
          a.by_addr[old.top] = old.end - old.top;
        }
        old.top = old.end;
      }
      const int64_t base = static_cast<int64_t>(a.heaps.size() + 1) << 40;
      a.heaps.push_back(Heap{base, base, base + kHeapUsable, base});
    }
    Heap& h = a.heaps.back();
    const int64_t addr = h.top;
    h.top += chunk;
    h.touched = std::max(h.touched, h.top);
    if (a.main) h.end_brk = std::max(h.end_brk, h.top + kTopPad);
    return {arena, addr, chunk};
  }

  Arena engine_, main_;
  int64_t mapped_ = 0;
};

// oneDNN's channel block for blocked layouts on this CPU.
int64_t onednn_block() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("avx512f") ? 16 : 8;
#else
  return 8;
#endif
}

}  // namespace

class DecodePlanner {
 public:
  enum Kind { kActivation, kCache, kOutput, kKinds };
  struct Shape {  // [c, t, h, w] for video tensors; [t, c, h, w] images are the same bytes
    int64_t c = 0, t = 0, h = 0, w = 0;
    int64_t bytes() const { return 4 * c * t * h * w; }
  };
  struct Sym {  // a tensor of the replay; id -1: a view of memory it does not own
    Shape s;
    int id = -1;
    bool contiguous = true;
  };

  DecodePlanner(const WanVae& vae) : vae_(vae), threads_(at::get_num_threads()), block_(onednn_block()) {
    mkldnn_ = at::hasMKLDNN() && at::globalContext().userEnabledMkldnn();
  }

  WanVae::DecodeMemory run(const WanVae::DecodeMemoryQuery& q) {
    const int64_t z = vae_.config_.z_dim, T = q.frames, h = q.height / 8, w = q.width / 8;
    // Decoder::Decoder: unnormalize (z / (1 / std) + mean, then the post-quant conv).
    stage_ = "post-quant conv";
    {
      Sym a = alloc({z, T, h, w}), b = alloc({z, T, h, w});
      x_ = conv(b, vae_.conv2_, true, 0, {z, T, h, w});
      drop(b);
      drop(a);
    }
    struct Tile {
      Cache cache;
    };
    int64_t th = h, tw = w;
    std::vector<Tile> tiles(1);
    if (q.tiling) {
      const TileGrid g = tile_grid(h, w, *q.tiling);
      th = g.th;
      tw = g.tw;
      tiles.resize(g.ys.size() * g.xs.size());
      for (size_t i = 0; i < tiles.size(); ++i) alloc({1, 1, 8 * th, 8 * tw});  // blending weights
    }
    for (chunk_ = 0; chunk_ < T; ++chunk_) {
      const int64_t n = chunk_ == 0 ? 1 : 4;
      Sym out;
      if (!q.tiling) {
        tile_ = -1;
        tiles[0].cache.index = 0;
        out = coder({{z, 1, h, w}, -1, T == 1}, tiles[0].cache);
      } else {
        Sym sum, weight_sum;
        for (size_t k = 0; k < tiles.size(); ++k) {
          tile_ = static_cast<int>(k);
          tiles[k].cache.index = 0;
          Sym part = coder({{z, 1, th, tw}, -1, false}, tiles[k].cache);
          if (sum.id < 0) {
            sum = alloc({3, n, 8 * h, 8 * w});
            weight_sum = alloc({1, 1, 8 * h, 8 * w});
          }
          Sym weighted = alloc(part.s);  // out * tile.weight
          drop(weighted);
          drop(part);
        }
        stage_ = "tile blending";
        tile_ = -1;
        out = alloc({3, n, 8 * h, 8 * w});  // sum / weight_sum
        drop(weight_sum);
        drop(sum);
      }
      set_kind(out, kOutput);
      stage_ = "the decoded frames";
      if (q.whole) {  // decode(): toTypedArray() copies the chunk into JS, then dispose()
        Sym copy = alloc(out.s, true, kOutput, /*js=*/true);
        (void)copy;
      }
      drop(out);
    }
    if (q.whole) {
      stage_ = "decode(): the video assembled in JS";
      alloc({3, 1 + 4 * (T - 1), 8 * h, 8 * w}, true, kOutput, /*js=*/true);
    }
    WanVae::DecodeMemory m;
    m.weights = vae_.weight_bytes_;
    m.runtime = kRuntimeBytes;
    m.caches = busiest_.caches;
    m.activations = busiest_.activations;
    m.output = output_peak_;
    // Never below zero: frames JS copies late may reuse heap the decode freed (the main arena).
    m.allocator = std::max<int64_t>(0, resident_peak_ - m.caches - m.activations - m.output);
    m.bytes = m.weights + m.runtime + m.caches + m.activations + m.output + m.allocator;
    m.peak_at = busiest_.where;
    return m;
  }

 private:
  using Conv = WanVae::Conv;

  struct Slot {
    Sym frames;
    bool present = false, rep = false;
  };
  struct Cache {  // FeatureCache
    std::vector<Slot> slots;
    size_t index = 0;
    Slot& next() {
      if (index >= slots.size()) slots.resize(index + 1);
      return slots[index++];
    }
  };
  struct Entry {
    HeapModel::Block block;
    int64_t bytes;
    Kind kind;
    bool live;
  };
  struct Busiest {  // the moment the most caches and activations are live
    int64_t caches = 0, activations = 0;
    std::string where;
  };

  Sym alloc(Shape s, bool contiguous = true, Kind kind = kActivation, bool js = false) {
    Sym x{s, static_cast<int>(entries_.size()), contiguous};
    entries_.push_back(Entry{heap_.alloc(s.bytes(), js), s.bytes(), kind, true});
    live_[kind] += s.bytes();
    resident_peak_ = std::max(resident_peak_, heap_.resident());
    output_peak_ = std::max(output_peak_, live_[kOutput]);
    if (live_[kCache] + live_[kActivation] > busiest_.caches + busiest_.activations)
      busiest_ = Busiest{live_[kCache], live_[kActivation], where()};
    return x;
  }
  Sym alloc_bytes(int64_t bytes) { return alloc({1, 1, 1, (bytes + 3) / 4}); }

  void drop(Sym& x) {
    if (x.id >= 0 && entries_[x.id].live) {
      Entry& e = entries_[x.id];
      heap_.release(e.block);
      live_[e.kind] -= e.bytes;
      e.live = false;
    }
    x.id = -1;
  }

  void set_kind(const Sym& x, Kind kind) {
    Entry& e = entries_[x.id];
    live_[e.kind] -= e.bytes;
    live_[kind] += e.bytes;
    e.kind = kind;
    output_peak_ = std::max(output_peak_, live_[kOutput]);
  }

  std::string where() const {
    std::string s = chunk_ < 0 ? "before the first chunk" : "chunk " + std::to_string(chunk_ + 1);
    if (tile_ >= 0) s += ", tile " + std::to_string(tile_ + 1);
    return s + ", " + stage_ + (op_.empty() ? "" : " (" + op_ + ")");
  }

  // ConvParams::use_mkldnn (aten/src/ATen/native/Convolution.cpp, libtorch 1.13) for a float
  // CPU input [n, c, d2, d3, ...], stride and dilation 1, one group.
  bool use_mkldnn(int64_t n, int64_t c, int64_t d2, int64_t d3, int64_t kh, int64_t kw) const {
    return mkldnn_ && (n >= 16 || kw != 1 || kh != 1 || threads_ > 1) &&
           ((kw > 3 && kh > 3) || n > 1 || n * c * d2 * d3 > 20480);
  }

  int64_t blocked(int64_t channels) const { return (channels + block_ - 1) / block_ * block_; }

  // at::conv3d (`video`: in [c, t, h, w] is [1, C, T, H, W]) or at::conv2d (in [c, t, h, w] is
  // the images [T, C, H, W]) with zero padding `pad` in space, giving `out`.
  Sym conv(const Sym& in, const Conv& c, bool video, int64_t pad, Shape out) {
    const auto& ws = c.weight.stored.value.sizes();
    const int64_t kh = ws[ws.size() - 2], kw = ws[ws.size() - 1];
    const int64_t k = c.weight.stored.value.numel() / (ws[0] * ws[1]);
    Sym widened;  // Weight::get(kFloat) of a bf16 / fp16 / fp8 weight
    if (c.weight.stored.dtype != core::DType::F32) widened = alloc_bytes(4 * c.weight.stored.value.numel());
    const bool onednn = video ? use_mkldnn(1, in.s.c, in.s.t, in.s.h, kh, kw) : use_mkldnn(in.s.t, in.s.c, in.s.h, in.s.w, kh, kw);
    Sym dense;  // the conv's input.contiguous()
    if (!in.contiguous) dense = alloc(in.s);
    Sym y;
    if (onednn) {
      op_ = "oneDNN conv";
      Sym src = alloc({blocked(in.s.c), in.s.t, in.s.h, in.s.w});
      Sym weight = alloc_bytes(4 * blocked(ws[0]) * blocked(ws[1]) * k);
      Sym dst = alloc({blocked(out.c), out.t, out.h, out.w});
      drop(weight);
      drop(src);
      y = alloc(out);  // mkldnn_to_dense
      drop(dst);
    } else {
      op_ = "vol2col conv";
      y = alloc(out);
      const bool columns = video || k != 1 || pad != 0;
      Sym cols;
      if (columns) cols = alloc_bytes(4 * ws[1] * k * out.t * out.h * out.w);
      drop(cols);
    }
    op_.clear();
    drop(dense);
    drop(widened);
    return y;
  }

  // rms(); rms_silu() is the same (SiLU in place).
  Sym rms(const Sym& x) {
    Sym norm = alloc({1, x.s.t, x.s.h, x.s.w}), clamped = alloc({1, x.s.t, x.s.h, x.s.w});
    Sym y = alloc(x.s, x.contiguous);
    drop(clamped);
    drop(norm);
    return y;
  }

  Sym causal_conv(const Conv& c, const Sym& x, const Sym* cache, int64_t pad_t, int64_t pad_hw) {
    const auto& ws = c.weight.stored.value.sizes();
    int64_t front = 2 * pad_t;
    Sym in = x, copy;
    if (cache && front > 0) {
      copy = alloc({x.s.c, cache->s.t + x.s.t, x.s.h, x.s.w});
      in = copy;
      front -= cache->s.t;
    }
    if (front > 0) {
      Sym padded = alloc({x.s.c, in.s.t + front, x.s.h, x.s.w});
      drop(copy);
      copy = in = padded;
    }
    Sym y = conv(in, c, true, pad_hw,
                 {ws[0], in.s.t - ws[2] + 1, in.s.h + 2 * pad_hw - ws[3] + 1, in.s.w + 2 * pad_hw - ws[4] + 1});
    drop(copy);
    return y;
  }

  Sym cached_conv(const Conv& c, const Sym& x, Cache& cache) {
    Slot& slot = cache.next();
    Sym keep = alloc({x.s.c, std::min<int64_t>(x.s.t, kCacheT), x.s.h, x.s.w}, x.contiguous);
    if (keep.s.t < kCacheT && slot.present) {
      Sym both = alloc({x.s.c, kCacheT, x.s.h, x.s.w});
      drop(keep);
      keep = both;
    }
    const int64_t pad = c.weight.stored.value.size(2) / 2;
    Sym y = causal_conv(c, x, slot.present ? &slot.frames : nullptr, pad, pad);
    drop(slot.frames);
    set_kind(keep, kCache);
    slot.frames = keep;
    slot.present = true;
    return y;
  }

  Sym residual(const WanVae::Residual& r, const Sym& x, Cache& cache, const std::string& name) {
    Sym h = x;
    if (r.shortcut.weight.defined()) {
      stage_ = name + ".shortcut";
      h = causal_conv(r.shortcut, x, nullptr, 0, 0);
    }
    stage_ = name + ".residual.2";
    Sym a = rms(x);
    Sym y = cached_conv(r.conv2, a, cache);
    drop(a);
    stage_ = name + ".residual.6";
    Sym b = rms(y);
    Sym y2 = cached_conv(r.conv6, b, cache);
    drop(y);
    drop(b);
    if (h.id != x.id) drop(h);
    return y2;  // y.add_(h)
  }

  Sym attention(const WanVae::Attention& a, const Sym& x, const std::string& name) {
    stage_ = name;
    const int64_t c = x.s.c, t = x.s.t, L = x.s.h * x.s.w;
    Sym img = rms({x.s, x.id, x.contiguous && t == 1});  // frames_to_images: a view
    Sym qkv = conv(img, a.to_qkv, false, 0, {3 * c, t, x.s.h, x.s.w});
    op_ = "attention";
    Sym q = alloc({c, t, x.s.h, x.s.w}), k = alloc(q.s), v = alloc(q.s);  // .contiguous()
    Sym out = alloc(q.s);
    for (int64_t b = 0; b < t; ++b)
      for (int64_t c0 = 0; c0 < L; c0 += kMathChunk) {  // ops/attention.cpp math_impl
        const int64_t n = std::min(kMathChunk, L - c0);
        Sym scores = alloc({1, 1, n, L}), probs = alloc({1, 1, n, L});
        drop(scores);
        Sym pv = alloc({1, 1, n, c});
        drop(pv);
        drop(probs);
      }
    drop(v);
    drop(k);
    drop(q);
    op_.clear();
    Sym back = alloc(q.s);  // out.permute().reshape(): a copy
    drop(img);
    Sym proj = conv(back, a.proj, false, 0, back.s);
    drop(back);
    Sym y = alloc(x.s);  // images_to_frames(img) + x
    drop(out);
    drop(qkv);
    drop(proj);
    return y;
  }

  Sym resample(const WanVae::Resample& r, const Sym& x_in, Cache& cache, const std::string& name) {
    Sym x = x_in, owned;
    if (r.mode == "upsample3d") {
      stage_ = name + ".time_conv";
      Slot& slot = cache.next();
      if (!slot.present) {
        slot.present = true;
        slot.rep = true;
      } else {
        const int64_t t = x.s.t;
        Sym keep = alloc({x.s.c, std::min<int64_t>(t, kCacheT), x.s.h, x.s.w}, x.contiguous);
        if (keep.s.t < kCacheT) {
          Sym zeros;
          if (slot.rep) zeros = alloc(keep.s);
          Sym both = alloc({x.s.c, kCacheT, x.s.h, x.s.w});
          drop(keep);
          drop(zeros);
          keep = both;
        }
        Sym y = causal_conv(r.time_conv, x, slot.rep ? nullptr : &slot.frames, 1, 0);
        drop(slot.frames);
        set_kind(keep, kCache);
        slot.frames = keep;
        slot.rep = false;
        owned = alloc({y.s.c / 2, 2 * t, y.s.h, y.s.w});  // the two halves interleaved (at::stack)
        drop(y);
        x = owned;
      }
    }
    stage_ = name + ".resample.1";
    Sym up = alloc({x.s.c, x.s.t, 2 * x.s.h, 2 * x.s.w});  // upsample_nearest2d of the frames
    const int64_t out_c = r.resample1.weight.stored.value.size(0);
    Sym img = conv(up, r.resample1, false, 1, {out_c, x.s.t, 2 * x.s.h, 2 * x.s.w});
    drop(up);
    drop(owned);
    return {img.s, img.id, img.s.t == 1};  // images_to_frames: a view
  }

  // WanVae::run for the decoder.
  Sym coder(const Sym& input, Cache& cache) {
    const WanVae::Coder& c = vae_.decoder_;
    stage_ = "decoder.conv1";
    Sym x = cached_conv(c.conv1, input, cache);
    auto step = [&](Sym y) {
      drop(x);
      x = y;
    };
    step(residual(c.middle0, x, cache, "decoder.middle.0"));
    step(attention(c.middle1, x, "decoder.middle.1"));
    step(residual(c.middle2, x, cache, "decoder.middle.2"));
    for (size_t i = 0; i < c.stages.size(); ++i) {
      const std::string name = "decoder.upsamples." + std::to_string(i);
      const auto& s = c.stages[i];
      step(s.kind == WanVae::Stage::kResidual ? residual(s.residual, x, cache, name) : resample(s.resample, x, cache, name));
    }
    stage_ = "decoder.head.2";
    Sym a = rms(x);
    Sym y = cached_conv(c.head_conv, a, cache);
    drop(a);
    drop(x);
    return y;
  }

  static constexpr int64_t kMathChunk = 1024;  // query rows per score matrix, ops/attention.cpp

  const WanVae& vae_;
  const int threads_;
  const int64_t block_;
  bool mkldnn_ = false;
  HeapModel heap_;
  std::vector<Entry> entries_;
  int64_t live_[kKinds] = {};
  int64_t resident_peak_ = 0, output_peak_ = 0;
  Busiest busiest_;
  Sym x_;  // the unnormalized latent
  int64_t chunk_ = -1;
  int tile_ = -1;
  std::string stage_, op_;
};

WanVae::DecodeMemory WanVae::estimate_decode_memory(const DecodeMemoryQuery& q) const {
  if (q.frames < 1 || q.height <= 0 || q.width <= 0 || q.height % 8 != 0 || q.width % 8 != 0)
    throw Error(ErrorCode::InvalidOption, "Vae.estimateDecodeMemory: expected frames >= 1 and height, width positive multiples of 8, got " +
                                              std::to_string(q.frames) + " frames of " + std::to_string(q.height) + " x " +
                                              std::to_string(q.width));
  return DecodePlanner(*this).run(q);
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
                                     const std::function<bool()>& cancelled, at::Device device, bool load_on_main) {
  LoadedWeights loaded = load_weights(files, populate, cancelled);
  return std::make_shared<WanVae>(infer_wan_vae_config(loaded.shapes, files_text(files)), std::move(loaded.weights),
                                  files_text(files), device, load_on_main);
}

}  // namespace wan::models
