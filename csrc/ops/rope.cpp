#include "ops/rope.h"

#include <ATen/Parallel.h>

#include <cmath>

#include "core/error.h"
#include "ops/norm.h"
#include "ops/norm_rope_row.h"

#ifdef WAN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "ops/kernel_glue.h"
#endif

namespace wan::ops {

RopeTable rope_table(int64_t head_dim, int64_t max_pos, double theta, Riflex riflex) {
  const int64_t c = head_dim / 2;
  RopeTable t;
  t.parts = {c - 2 * (c / 3), c / 3, c / 3};
  if (riflex.index < 0 || riflex.index > t.parts[0])
    throw core::Error(core::ErrorCode::InvalidOption,
                      "Expected riflexFreqIndex in 0.." + std::to_string(t.parts[0]) + " (the frame frequencies of head dim " +
                          std::to_string(head_dim) + ") but received " + std::to_string(riflex.index));
  if (riflex.index > 0 && riflex.latent_frames < 1)
    throw core::Error(core::ErrorCode::InvalidOption, "Expected at least 1 latent frame for RIFLEx but received " +
                                                          std::to_string(riflex.latent_frames));
  // rope_params' frequency of pair k of a part of `pairs` pairs, as the official table has it.
  auto frequency = [&](int64_t part, int64_t pairs, int64_t k) {
    if (part == 0 && k == riflex.index - 1) return 0.9 * 2.0 * M_PI / static_cast<double>(riflex.latent_frames);
    return 1.0 / std::pow(theta, (2.0 * k) / (2.0 * pairs));
  };
  t.cos = at::empty({max_pos, c}, at::kFloat);
  t.sin = at::empty({max_pos, c}, at::kFloat);
  float* cs = t.cos.data_ptr<float>();
  float* sn = t.sin.data_ptr<float>();
  for (int64_t pos = 0; pos < max_pos; ++pos) {
    int64_t j = 0;
    for (int64_t part = 0; part < 3; ++part) {
      for (int64_t k = 0; k < t.parts[part]; ++k, ++j) {
        const double angle = static_cast<double>(pos) * frequency(part, t.parts[part], k);
        cs[pos * c + j] = static_cast<float>(std::cos(angle));
        sn[pos * c + j] = static_cast<float>(std::sin(angle));
      }
    }
  }
  return t;
}

namespace {

// The same rotation in composite ops, which autograd can differentiate (training), by the
// angles of rope_angles().
at::Tensor rope_apply_composite(const at::Tensor& x, const RopeAngles& angles) {
  const int64_t B = x.size(0), L = x.size(1), H = x.size(2), D = x.size(3), C = D / 2;
  const at::Tensor pairs = x.to(at::kFloat).reshape({B, L, H, C, 2});
  const at::Tensor re = pairs.select(4, 0), im = pairs.select(4, 1);
  const at::Tensor &co = angles.cos, &si = angles.sin;
  // re co - im si and re si + im co, each completed in place before the next product exists:
  // half the temporaries of one expression, the same ops (autograd too: neither subtraction
  // nor addition needs the values it overwrites).
  at::Tensor real = re * co;
  real.sub_(im * si);
  at::Tensor imag = re * si;
  imag.add_(im * co);
  return at::stack({real, imag}, 4).reshape({B, L, H, D});
}

// Every grid position must have a row in the angle table.
void check_grids_fit(const std::vector<std::array<int64_t, 3>>& grids, const RopeTable& table) {
  const int64_t max_pos = table.cos.size(0);
  for (const auto& g : grids)
    for (const int64_t n : g)
      if (n > max_pos)
        throw core::Error(core::ErrorCode::InvalidTensor,
                          "rope: a grid of " + std::to_string(n) + " positions exceeds the " +
                              std::to_string(max_pos) + " the table covers");
}

}  // namespace

RopeAngles rope_angles(const std::vector<std::array<int64_t, 3>>& grids, int64_t seq_len, const RopeTable& table,
                       at::Device device) {
  check_grids_fit(grids, table);
  // Per token the table rows of its three grid coordinates; padding takes row 0 and is masked
  // to the identity rotation below.
  const int64_t B = static_cast<int64_t>(grids.size()), C = table.cos.size(1);
  std::vector<int64_t> index[3];
  std::vector<float> live;
  for (int64_t b = 0; b < B; ++b) {
    const auto& g = grids[b];
    for (int64_t l = 0; l < seq_len; ++l) {
      const bool inside = l < g[0] * g[1] * g[2];
      const int64_t pos[3] = {inside ? l / (g[1] * g[2]) : 0, inside ? (l / g[2]) % g[1] : 0, inside ? l % g[2] : 0};
      for (int k = 0; k < 3; ++k) index[k].push_back(pos[k]);
      live.push_back(inside ? 1.0f : 0.0f);
    }
  }
  at::Tensor cos_parts[3], sin_parts[3];
  int64_t start = 0;
  const at::Tensor cos = table.cos.to(device), sin = table.sin.to(device);
  for (int k = 0; k < 3; ++k) {
    const at::Tensor idx = at::tensor(index[k], at::kLong).to(device);
    cos_parts[k] = cos.index_select(0, idx).narrow(1, start, table.parts[k]);
    sin_parts[k] = sin.index_select(0, idx).narrow(1, start, table.parts[k]);
    start += table.parts[k];
  }
  const at::Tensor mask = at::tensor(live, at::kFloat).to(device).view({B * seq_len, 1});
  return RopeAngles{
      (at::cat({cos_parts[0], cos_parts[1], cos_parts[2]}, 1) * mask + (1 - mask)).view({B, seq_len, 1, C}),
      (at::cat({sin_parts[0], sin_parts[1], sin_parts[2]}, 1) * mask).view({B, seq_len, 1, C})};
}

at::Tensor rope_apply(const at::Tensor& x, const std::vector<std::array<int64_t, 3>>& grids,
                      const RopeTable& table, const RopeAngles* angles) {
  const at::Tensor in = x.to(at::kFloat).contiguous();
  const int64_t B = in.size(0), L = in.size(1), H = in.size(2), D = in.size(3), C = D / 2;
  if (C != table.cos.size(1))
    throw core::Error(core::ErrorCode::Internal, "rope_apply: head dim " + std::to_string(D) +
                                                     " does not match the table's " +
                                                     std::to_string(2 * table.cos.size(1)));
  check_grids_fit(grids, table);
  // The composite ops off the CPU and where autograd records: the loop below is CPU-only.
  if (records_grad(x) || !in.is_cpu()) {
    const bool fit = angles && angles->cos.defined() && angles->cos.device() == in.device() &&
                     angles->cos.sizes() == at::IntArrayRef({B, L, 1, C});
    return rope_apply_composite(x, fit ? *angles : rope_angles(grids, L, table, in.device()));
  }
  at::Tensor out = in.clone();
  const float* cs = table.cos.data_ptr<float>();
  const float* sn = table.sin.data_ptr<float>();
  float* data = out.data_ptr<float>();
  const int64_t p0 = table.parts[0], p1 = table.parts[0] + table.parts[1];
  at::parallel_for(0, B * L, 64, [&](int64_t begin, int64_t end) {
    for (int64_t bl = begin; bl < end; ++bl) {
      const int64_t b = bl / L, l = bl % L;
      const auto& g = grids[b];
      if (l >= g[0] * g[1] * g[2]) continue;  // padding
      const int64_t pos[3] = {l / (g[1] * g[2]), (l / g[2]) % g[1], l % g[2]};
      for (int64_t h = 0; h < H; ++h) {
        float* v = data + (bl * H + h) * D;
        for (int64_t j = 0; j < C; ++j) {
          const int64_t p = pos[j < p0 ? 0 : j < p1 ? 1 : 2];
          const float co = cs[p * C + j], si = sn[p * C + j];
          const float re = v[2 * j], im = v[2 * j + 1];
          v[2 * j] = re * co - im * si;
          v[2 * j + 1] = re * si + im * co;
        }
      }
    }
  });
  return out;
}

at::Tensor norm_rope_fused(const at::Tensor& x, const at::Tensor& weight, double eps, int64_t head_dim,
                           const std::vector<std::array<int64_t, 3>>* grids, const RopeTable& table,
                           at::ScalarType out_dtype) {
#ifdef WAN_WITH_CUDA
  if (!x.is_cuda() || x.dim() != 3 || x.size(0) > kNormRopeMaxBatch || records_grad(x, weight) ||
      kernel_dtype(x.scalar_type()) < 0 || kernel_dtype(out_dtype) < 0 || head_dim <= 0 || head_dim % 2 != 0 ||
      x.size(2) % head_dim != 0 || (grids && static_cast<int64_t>(grids->size()) != x.size(0)))
    return {};
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor in = x.contiguous();
  const at::Tensor w = weight.to(x.device(), at::kFloat).contiguous();
  const at::Tensor cos = table.cos.to(x.device()).contiguous(), sin = table.sin.to(x.device()).contiguous();
  if (grids && cos.size(1) != head_dim / 2)
    throw core::Error(core::ErrorCode::Internal, "norm_rope: head dim " + std::to_string(head_dim) +
                                                     " does not match the RoPE table's " + std::to_string(2 * cos.size(1)));
  at::Tensor out = at::empty(in.sizes(), in.options().dtype(out_dtype));
  NormRopeProblem p{};
  p.x = in.data_ptr();
  p.out = out.data_ptr();
  p.weight = w.data_ptr<float>();
  p.cos = cos.data_ptr<float>();
  p.sin = sin.data_ptr<float>();
  p.batch = in.size(0);
  p.seq_len = in.size(1);
  p.dim = in.size(2);
  p.head_dim = head_dim;
  p.rope = grids != nullptr;
  if (grids) {
    check_grids_fit(*grids, table);
    for (size_t b = 0; b < grids->size(); ++b)
      for (int k = 0; k < 3; ++k) p.grids[b][k] = (*grids)[b][k];
  }
  for (int k = 0; k < 3; ++k) p.parts[k] = table.parts[k];
  p.x_dtype = kernel_dtype(in.scalar_type());
  p.out_dtype = kernel_dtype(out_dtype);
  p.eps = static_cast<float>(eps);
  check_launch("norm_rope", launch_norm_rope(p, c10::cuda::getCurrentCUDAStream(x.device().index()).stream()));
  return out;
#else
  return {};
#endif
}

at::Tensor norm_rope_reference(const at::Tensor& x, const at::Tensor& weight, double eps, int64_t head_dim,
                               const std::vector<std::array<int64_t, 3>>* grids, const RopeTable& table) {
  const at::Tensor in = x.to(at::kCPU, at::kFloat).contiguous();
  const at::Tensor w = weight.to(at::kCPU, at::kFloat).contiguous();
  const at::Tensor cos = table.cos.to(at::kCPU).contiguous(), sin = table.sin.to(at::kCPU).contiguous();
  const int64_t batch = in.size(0), seq_len = in.size(1), dim = in.size(2), half = head_dim / 2;
  if (head_dim <= 0 || head_dim % 2 != 0 || dim % head_dim != 0 || (grids && static_cast<int64_t>(grids->size()) != batch) ||
      (grids && cos.size(1) != half))
    throw core::Error(core::ErrorCode::InvalidTensor, "norm_rope_reference: x [" + std::to_string(batch) + ", " +
                                                          std::to_string(seq_len) + ", " + std::to_string(dim) +
                                                          "] does not fit head dim " + std::to_string(head_dim) +
                                                          ", the grids or the RoPE table");
  if (grids) check_grids_fit(*grids, table);
  at::Tensor out = at::empty_like(in);
  const float* src = in.data_ptr<float>();
  const float* g = w.data_ptr<float>();
  const float* cs = cos.data_ptr<float>();
  const float* sn = sin.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const int64_t parts[3] = {table.parts[0], table.parts[1], table.parts[2]};
  for (int64_t row = 0; row < batch * seq_len; ++row) {
    const float* a = src + row * dim;
    float* o = dst + row * dim;
    float squares = 0.0f;
    for (int64_t i = 0; i < dim; ++i) squares = norm_rope::add(squares, norm_rope::mul(a[i], a[i]));
    const float mean = norm_rope::mul(squares, 1.0f / static_cast<float>(dim));
    const float inverse_rms = 1.0f / std::sqrt(norm_rope::add(mean, static_cast<float>(eps)));
    const int64_t b = row / seq_len;
    const int64_t grid[3] = {grids ? (*grids)[b][0] : 0, grids ? (*grids)[b][1] : 0, grids ? (*grids)[b][2] : 0};
    const norm_rope::Position where = norm_rope::position(row % seq_len, grid, grids != nullptr);
    for (int64_t k = 0; k < dim / 2; ++k)
      norm_rope::pair(a[2 * k], a[2 * k + 1], g[2 * k], g[2 * k + 1], inverse_rms, where, k % half, half, parts, cs,
                      sn, o[2 * k], o[2 * k + 1]);
  }
  return out;
}

}  // namespace wan::ops
