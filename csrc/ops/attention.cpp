// Attention for the Wan DiT: the float32 reference (attention_math), two CPU kernels that
// never build the Lq x Lk matrix (Flash: online softmax over key tiles; Sage: int8 Q.K^T as
// in SageAttention), libtorch's SDPA where it exists, and the CUDA kernels
// (attention_flash.cu, attention_sage.cu) for GPU tensors.
//
// Shapes follow the official wan/modules/attention.py: q [B, Lq, H, D], k and v [B, Lk, H, D].
#include "ops/attention.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define WAN_ATTENTION_X86 1
// The addon is built for baseline x86-64, so the AVX2 kernels carry their own target and are
// chosen at run time (__builtin_cpu_supports); the generic loops serve every other CPU.
#define WAN_AVX2 __attribute__((target("avx2,fma")))
#endif

#ifdef WAN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "ops/attention_cuda.h"
#endif

#define WAN_TORCH_AT_LEAST(M, m) \
  (TORCH_VERSION_MAJOR > (M) || (TORCH_VERSION_MAJOR == (M) && TORCH_VERSION_MINOR >= (m)))

namespace wan::ops {

using core::Error;
using core::ErrorCode;

namespace {

// ---------------------------------------------------------------------------------------
// Tile sizes of the CPU kernels, chosen by measurement at L = 2048 and 4096 (192 x 192 beat
// 96-384 x 192-384 by 3-8%). Per thread the kernels hold Q^T [D, 192], the scores S^T
// [192, 192], V [192, D] and the output accumulator [192, D] in float32 (plus converted K rows
// for f16/bf16): about 0.5 MiB at D = 128, which stays in a 1 MiB L2. Nothing grows with L.
constexpr int64_t kMathChunk = 1024;  // query rows per score matrix in attention_math
constexpr int kBlockQ = 192;          // query rows per task: 12 panels of 16, 32 strips of 6
constexpr int kBlockK = 192;          // keys per tile: 32 strips of 6, 3 Sage K blocks
constexpr int kSageQueryBlock = 64;   // queries sharing one int8 scale (SageAttention's Q block)
constexpr int kSageKeyBlock = 64;     // keys sharing one int8 scale (SageAttention's K block)
constexpr int kPanel = 16;            // queries per panel of Q^T: two AVX2 registers
constexpr int kVec = 16;              // V and the output accumulator are padded to 16 floats
constexpr float kLog2e = 1.4426950408889634f;

static_assert(kBlockQ % kSageQueryBlock == 0 && kSageQueryBlock % kPanel == 0 && kBlockK % kSageKeyBlock == 0,
              "tiles must be whole panels and whole quantisation blocks");

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

std::string dtype_string(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "f32";
    case at::kHalf: return "f16";
    case at::kBFloat16: return "bf16";
    case at::kDouble: return "f64";
    case at::kLong: return "i64";
    case at::kInt: return "i32";
    case at::kShort: return "i16";
    case at::kChar: return "i8";
    case at::kByte: return "u8";
    case at::kBool: return "bool";
    default: return at::toString(t);
  }
}

[[noreturn]] void invalid(const std::string& message) { throw Error(ErrorCode::InvalidTensor, "attention: " + message); }

struct Dims {
  int64_t B, Lq, Lk, H, D;
};

// Checks q, k, v and k_lens and returns the sizes. k_lens values are checked unless both q and
// k_lens are on a GPU: reading them would stall the stream, and the kernels clamp them instead.
Dims check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_lens) {
  if (!q.defined() || !k.defined() || !v.defined()) invalid("q, k and v must all be defined tensors");
  if (q.dim() != 4) invalid("q must be a 4-D tensor [B, Lq, H, D] but got shape " + core::shape_text(q.sizes()));
  if (k.dim() != 4) invalid("k must be a 4-D tensor [B, Lk, H, D] but got shape " + core::shape_text(k.sizes()));
  const Dims d{q.size(0), q.size(1), k.size(1), q.size(2), q.size(3)};
  if (k.size(0) != d.B || k.size(2) != d.H || k.size(3) != d.D)
    invalid("k must have shape [B, Lk, H, D] = [" + std::to_string(d.B) + ", Lk, " + std::to_string(d.H) + ", " +
            std::to_string(d.D) + "] to match q " + core::shape_text(q.sizes()) + " but got " + core::shape_text(k.sizes()));
  if (!v.sizes().equals(k.sizes()))
    invalid("v must have the shape of k " + core::shape_text(k.sizes()) + " but got " + core::shape_text(v.sizes()));
  for (const auto* t : {&q, &k, &v}) {
    const auto type = t->scalar_type();
    if (type != at::kFloat && type != at::kHalf && type != at::kBFloat16)
      invalid(std::string(t == &q ? "q" : t == &k ? "k" : "v") + " has dtype " + dtype_string(type) +
              " but attention takes f32, f16 or bf16");
  }
  if (k.scalar_type() != q.scalar_type() || v.scalar_type() != q.scalar_type())
    invalid("q, k and v must have the same dtype but got q " + dtype_string(q.scalar_type()) + ", k " +
            dtype_string(k.scalar_type()) + " and v " + dtype_string(v.scalar_type()));
  if (k.device() != q.device() || v.device() != q.device())
    invalid("q, k and v must be on the same device but got q on " + q.device().str() + ", k on " +
            k.device().str() + " and v on " + v.device().str());
  if (d.Lk < 1 && d.B > 0) invalid("k must hold at least one key but got shape " + core::shape_text(k.sizes()));
  if (k_lens.defined()) {
    const auto type = k_lens.scalar_type();
    if (k_lens.dim() != 1 || k_lens.size(0) != d.B || (type != at::kLong && type != at::kInt))
      invalid("k_lens must be a 1-D i64 or i32 tensor of B = " + std::to_string(d.B) + " elements but got " +
              dtype_string(type) + " " + core::shape_text(k_lens.sizes()));
    if (k_lens.device().is_cpu() || !q.is_cuda()) {
      const at::Tensor lens = k_lens.to(at::kCPU).to(at::kLong).contiguous();
      const int64_t* p = lens.data_ptr<int64_t>();
      for (int64_t b = 0; b < d.B; ++b)
        if (p[b] < 1 || p[b] > d.Lk)
          invalid("k_lens[" + std::to_string(b) + "] = " + std::to_string(p[b]) + " is outside [1, Lk = " +
                  std::to_string(d.Lk) + "]");
    }
  }
  return d;
}

// The number of keys each batch entry attends to (checked by check_inputs).
std::vector<int64_t> key_counts(const Dims& d, const at::Tensor& k_lens) {
  std::vector<int64_t> out(d.B, d.Lk);
  if (k_lens.defined()) {
    const at::Tensor lens = k_lens.to(at::kCPU).to(at::kLong).contiguous();
    std::copy(lens.data_ptr<int64_t>(), lens.data_ptr<int64_t>() + d.B, out.begin());
  }
  return out;
}

// Plain ATen math, one chunk of queries at a time. Keys at and beyond k_lens[b] are left out
// of the slice, which is exactly what the official -inf mask computes (their softmax weight
// is 0) without multiplying 0 by whatever the padded values hold.
at::Tensor math_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Dims& d,
                     const at::Tensor& k_lens) {
  at::Tensor out = at::empty({d.B, d.Lq, d.H, d.D}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  const std::vector<int64_t> lens = key_counts(d, k_lens);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d.D));
  for (int64_t b = 0; b < d.B; ++b) {
    const at::Tensor kt = k[b].narrow(0, 0, lens[b]).to(at::kFloat).permute({1, 2, 0});  // [H, D, kl]
    const at::Tensor vb = v[b].narrow(0, 0, lens[b]).to(at::kFloat).transpose(0, 1);     // [H, kl, D]
    for (int64_t c0 = 0; c0 < d.Lq; c0 += kMathChunk) {
      const int64_t n = std::min(kMathChunk, d.Lq - c0);
      const at::Tensor qc = q[b].narrow(0, c0, n).to(at::kFloat).transpose(0, 1);  // [H, n, D]
      at::Tensor scores = at::bmm(qc, kt).mul_(scale);                             // [H, n, kl]
      const at::Tensor probs = at::softmax(scores, -1);
      scores.reset();
      out[b].narrow(0, c0, n).copy_(at::bmm(probs, vb).transpose(0, 1));  // [n, H, D]
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Tiles and thread-local buffers.

struct Buffer {
  explicit Buffer(size_t bytes) : ptr(std::aligned_alloc(64, static_cast<size_t>(round_up(bytes ? bytes : 1, 64)))) {
    if (!ptr) throw std::bad_alloc();
  }
  ~Buffer() { std::free(ptr); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  template <typename T>
  T* as() const { return static_cast<T*>(ptr); }
  void* ptr;
};

// A [B, L, H, D] tensor whose last dimension is contiguous.
struct Rows {
  explicit Rows(const at::Tensor& t)
      : data(static_cast<const char*>(t.data_ptr())), type(t.scalar_type()), elem(t.element_size()),
        sb(t.stride(0)), sl(t.stride(1)), sh(t.stride(2)) {}
  const char* data;
  at::ScalarType type;
  int64_t elem, sb, sl, sh;

  const float* f32_row(int64_t b, int64_t l, int64_t h) const {
    return reinterpret_cast<const float*>(data + (b * sb + l * sl + h * sh) * elem);
  }

  // Row (b, l, h) as float32, times `scale`.
  void load(int64_t b, int64_t l, int64_t h, int64_t n, float scale, float* dst) const {
    const char* p = data + (b * sb + l * sl + h * sh) * elem;
    switch (type) {
      case at::kFloat: {
        const float* s = reinterpret_cast<const float*>(p);
        for (int64_t i = 0; i < n; ++i) dst[i] = s[i] * scale;
        break;
      }
      case at::kBFloat16: {
        const c10::BFloat16* s = reinterpret_cast<const c10::BFloat16*>(p);
        for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]) * scale;
        break;
      }
      default: {
        const c10::Half* s = reinterpret_cast<const c10::Half*>(p);
        for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]) * scale;
        break;
      }
    }
  }
};

// Packs two int8 values (held in int) as the int16 pair that _mm256_madd_epi16 multiplies.
inline int32_t pack_pair(int lo, int hi) {
  return static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint16_t>(lo)) |
                              (static_cast<uint32_t>(static_cast<uint16_t>(hi)) << 16));
}

inline int low_half(int32_t w) { return static_cast<int16_t>(static_cast<uint32_t>(w) & 0xFFFFu); }
inline int high_half(int32_t w) { return static_cast<int16_t>(static_cast<uint32_t>(w) >> 16); }

inline int quantize(float x, float inv_scale) {
  const float r = std::nearbyint(x * inv_scale);
  return static_cast<int>(std::min(127.0f, std::max(-127.0f, r)));
}

// ---------------------------------------------------------------------------------------
// The tiled CPU kernels work on the transposed score tile S^T [keys, queries], so that key
// rows are read where they lie (f32) or converted row by row (f16/bf16): K is never
// transposed. Layouts, all float32 unless said:
//   qt  Q^T in panels of 16 queries: [ceil(nq / 16)][D][16], scaled by log2(e) / sqrt(D)
//   k   key rows, row j at k + j * ldk (D values)
//   st  S^T [nk, ldst], scores in log2 units; after the softmax, P^T in place
//   vp  V in panels of 16 channels: [dp / 16][nk][16]
//   o   the output accumulator [nq, dp]; m, l, alpha: per query (running max, sum, rescale)
// dp is D rounded up to 16, ldst a multiple of 16. Sage replaces Q^T and k with int16 pairs
// of int8 values (qwt [panels][dh][16], kw [nk, dh], dh = ceil(D / 2)) and per-key and
// per-panel scales. The softmax of a 16-query panel runs right after its scores, while they
// are in L1.

struct Generic {
  static void qk_panel(const float* qt, int D, const float* k, int64_t ldk, int nk, float* st, int ldst) {
    for (int j = 0; j < nk; ++j) {
      float acc[kPanel] = {};
      const float* krow = k + j * ldk;
      for (int d = 0; d < D; ++d)
        for (int i = 0; i < kPanel; ++i) acc[i] += krow[d] * qt[d * kPanel + i];
      std::copy(acc, acc + kPanel, st + static_cast<int64_t>(j) * ldst);
    }
  }

  static void qk_int_panel(const int32_t* qwt, int dh, const int32_t* kw, int nk, const float* rowscale, float qscale,
                           float* st, int ldst) {
    for (int j = 0; j < nk; ++j) {
      int32_t acc[kPanel] = {};
      for (int p = 0; p < dh; ++p) {
        const int32_t kv = kw[static_cast<int64_t>(j) * dh + p];
        const int klo = low_half(kv), khi = high_half(kv);
        for (int i = 0; i < kPanel; ++i) {
          const int32_t qv = qwt[p * kPanel + i];
          acc[i] += klo * low_half(qv) + khi * high_half(qv);
        }
      }
      for (int i = 0; i < kPanel; ++i) st[static_cast<int64_t>(j) * ldst + i] = static_cast<float>(acc[i]) * (rowscale[j] * qscale);
    }
  }

  // The online softmax of one panel: m, l and alpha hold its 16 queries.
  static void softmax_panel(float* st, int ldst, int nk, float* m, float* l, float* alpha) {
    for (int i = 0; i < kPanel; ++i) {
      float mt = -std::numeric_limits<float>::infinity();
      for (int j = 0; j < nk; ++j) mt = std::max(mt, st[static_cast<int64_t>(j) * ldst + i]);
      const float m_new = std::max(m[i], mt);
      alpha[i] = std::exp2(m[i] - m_new);
      float sum = 0.0f;
      for (int j = 0; j < nk; ++j) {
        float& s = st[static_cast<int64_t>(j) * ldst + i];
        sum += (s = std::exp2(s - m_new));
      }
      l[i] = l[i] * alpha[i] + sum;
      m[i] = m_new;
    }
  }

  // vp: V in panels [dp / 16][nk][16].
  static void pv(const float* pt, int ldpt, int nq, int nk, const float* vp, int dp, float* o, int ldo) {
    for (int i = 0; i < nq; ++i) {
      float* orow = o + static_cast<int64_t>(i) * ldo;
      for (int c0 = 0; c0 < dp; c0 += kVec) {
        const float* panel = vp + static_cast<int64_t>(c0 / kVec) * nk * kVec;
        float acc[kVec] = {};  // the tile's sum, then added to O (see Avx2::pv_6)
        for (int j = 0; j < nk; ++j) {
          const float w = pt[static_cast<int64_t>(j) * ldpt + i];
          for (int c = 0; c < kVec; ++c) acc[c] += w * panel[j * kVec + c];
        }
        for (int c = 0; c < kVec; ++c) orow[c0 + c] += acc[c];
      }
    }
  }

  static void scale(float* x, int n, float a) {
    for (int j = 0; j < n; ++j) x[j] *= a;
  }
};

#ifdef WAN_ATTENTION_X86
// The micro-kernels keep their accumulators in named registers: GCC spills a __m256 array
// indexed in a loop to the stack on every iteration (measured: 3x slower).
#define WAN_FMA_ROW(r, w) \
  a##r##0 = _mm256_fmadd_ps(w, x0, a##r##0); \
  a##r##1 = _mm256_fmadd_ps(w, x1, a##r##1)
#define WAN_MADD_ROW(r, w) \
  a##r##0 = _mm256_add_epi32(a##r##0, _mm256_madd_epi16(w, x0)); \
  a##r##1 = _mm256_add_epi32(a##r##1, _mm256_madd_epi16(w, x1))

struct Avx2 {
  // 2^x for x <= 0 (softmax arguments): Cephes exp2f's polynomial on [-0.5, 0.5] (relative
  // error about 2e-7), times 2^n built in the exponent bits. Below -126 the result is 0, so
  // the -inf of a first tile's running max gives an exact 0.
  WAN_AVX2 static inline __m256 exp2(__m256 x) {
    const __m256 valid = _mm256_cmp_ps(x, _mm256_set1_ps(-126.0f), _CMP_GE_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-126.0f)), _mm256_set1_ps(126.0f));
    const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 f = _mm256_sub_ps(x, n);
    __m256 p = _mm256_set1_ps(1.535336188319500e-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339887440266574e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618437357674640e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550332471162809e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402264791363012e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472028550421e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), valid);
  }

  // S^T rows j..j+5 for one panel of 16 queries: 12 accumulators, 2 loads and 6 broadcasts
  // per 12 FMAs.
  WAN_AVX2 static void qk_6(const float* qt, int D, const float* k, int64_t ldk, float* st, int ldst) {
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00;
    __m256 a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
    const float *k0 = k, *k1 = k + ldk, *k2 = k + 2 * ldk, *k3 = k + 3 * ldk, *k4 = k + 4 * ldk, *k5 = k + 5 * ldk;
    for (int d = 0; d < D; ++d) {
      const __m256 x0 = _mm256_loadu_ps(qt + d * kPanel), x1 = _mm256_loadu_ps(qt + d * kPanel + 8);
      __m256 w = _mm256_broadcast_ss(k0 + d);
      WAN_FMA_ROW(0, w);
      w = _mm256_broadcast_ss(k1 + d);
      WAN_FMA_ROW(1, w);
      w = _mm256_broadcast_ss(k2 + d);
      WAN_FMA_ROW(2, w);
      w = _mm256_broadcast_ss(k3 + d);
      WAN_FMA_ROW(3, w);
      w = _mm256_broadcast_ss(k4 + d);
      WAN_FMA_ROW(4, w);
      w = _mm256_broadcast_ss(k5 + d);
      WAN_FMA_ROW(5, w);
    }
    const __m256 rows[12] = {a00, a01, a10, a11, a20, a21, a30, a31, a40, a41, a50, a51};
    for (int r = 0; r < 6; ++r) {
      _mm256_storeu_ps(st + static_cast<int64_t>(r) * ldst, rows[2 * r]);
      _mm256_storeu_ps(st + static_cast<int64_t>(r) * ldst + 8, rows[2 * r + 1]);
    }
  }

  WAN_AVX2 static void qk_1(const float* qt, int D, const float* k, float* st) {
    __m256 a00 = _mm256_setzero_ps(), a01 = a00;
    for (int d = 0; d < D; ++d) {
      const __m256 x0 = _mm256_loadu_ps(qt + d * kPanel), x1 = _mm256_loadu_ps(qt + d * kPanel + 8);
      const __m256 w = _mm256_broadcast_ss(k + d);
      WAN_FMA_ROW(0, w);
    }
    _mm256_storeu_ps(st, a00);
    _mm256_storeu_ps(st + 8, a01);
  }

  WAN_AVX2 static void qk_panel(const float* qt, int D, const float* k, int64_t ldk, int nk, float* st, int ldst) {
    int j = 0;
    for (; j + 6 <= nk; j += 6) qk_6(qt, D, k + j * ldk, ldk, st + static_cast<int64_t>(j) * ldst, ldst);
    for (; j < nk; ++j) qk_1(qt, D, k + j * ldk, st + static_cast<int64_t>(j) * ldst);
  }

  // int8 values as int16 pairs: _mm256_madd_epi16 multiplies a broadcast key word with 8
  // queries' words and adds each pair into an int32 lane (127 * 127 * D cannot overflow).
  WAN_AVX2 static void qk_int_6(const int32_t* qwt, int dh, const int32_t* kw, const float* rowscale, float qscale,
                                float* st, int ldst) {
    __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00;
    __m256i a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
    const int32_t *k0 = kw, *k1 = kw + dh, *k2 = kw + 2 * dh, *k3 = kw + 3 * dh, *k4 = kw + 4 * dh, *k5 = kw + 5 * dh;
    for (int p = 0; p < dh; ++p) {
      const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qwt + p * kPanel));
      const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qwt + p * kPanel + 8));
      __m256i w = _mm256_set1_epi32(k0[p]);
      WAN_MADD_ROW(0, w);
      w = _mm256_set1_epi32(k1[p]);
      WAN_MADD_ROW(1, w);
      w = _mm256_set1_epi32(k2[p]);
      WAN_MADD_ROW(2, w);
      w = _mm256_set1_epi32(k3[p]);
      WAN_MADD_ROW(3, w);
      w = _mm256_set1_epi32(k4[p]);
      WAN_MADD_ROW(4, w);
      w = _mm256_set1_epi32(k5[p]);
      WAN_MADD_ROW(5, w);
    }
    const __m256i rows[12] = {a00, a01, a10, a11, a20, a21, a30, a31, a40, a41, a50, a51};
    for (int r = 0; r < 6; ++r) {
      const __m256 sc = _mm256_set1_ps(rowscale[r] * qscale);
      _mm256_storeu_ps(st + static_cast<int64_t>(r) * ldst, _mm256_mul_ps(_mm256_cvtepi32_ps(rows[2 * r]), sc));
      _mm256_storeu_ps(st + static_cast<int64_t>(r) * ldst + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(rows[2 * r + 1]), sc));
    }
  }

  WAN_AVX2 static void qk_int_1(const int32_t* qwt, int dh, const int32_t* kw, const float* rowscale, float qscale,
                                float* st) {
    __m256i a00 = _mm256_setzero_si256(), a01 = a00;
    for (int p = 0; p < dh; ++p) {
      const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qwt + p * kPanel));
      const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qwt + p * kPanel + 8));
      const __m256i w = _mm256_set1_epi32(kw[p]);
      WAN_MADD_ROW(0, w);
    }
    const __m256 sc = _mm256_set1_ps(rowscale[0] * qscale);
    _mm256_storeu_ps(st, _mm256_mul_ps(_mm256_cvtepi32_ps(a00), sc));
    _mm256_storeu_ps(st + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(a01), sc));
  }

  WAN_AVX2 static void qk_int_panel(const int32_t* qwt, int dh, const int32_t* kw, int nk, const float* rowscale,
                                    float qscale, float* st, int ldst) {
    int j = 0;
    for (; j + 6 <= nk; j += 6)
      qk_int_6(qwt, dh, kw + static_cast<int64_t>(j) * dh, rowscale + j, qscale, st + static_cast<int64_t>(j) * ldst, ldst);
    for (; j < nk; ++j)
      qk_int_1(qwt, dh, kw + static_cast<int64_t>(j) * dh, rowscale + j, qscale, st + static_cast<int64_t>(j) * ldst);
  }

  WAN_AVX2 static void softmax_panel(float* st, int ldst, int nk, float* m, float* l, float* alpha) {
    __m256 t0 = _mm256_set1_ps(-std::numeric_limits<float>::infinity()), t1 = t0;
    for (int j = 0; j < nk; ++j) {
      const float* row = st + static_cast<int64_t>(j) * ldst;
      t0 = _mm256_max_ps(t0, _mm256_loadu_ps(row));
      t1 = _mm256_max_ps(t1, _mm256_loadu_ps(row + 8));
    }
    const __m256 m0 = _mm256_loadu_ps(m), m1 = _mm256_loadu_ps(m + 8);
    const __m256 n0 = _mm256_max_ps(m0, t0), n1 = _mm256_max_ps(m1, t1);
    const __m256 c0 = exp2(_mm256_sub_ps(m0, n0)), c1 = exp2(_mm256_sub_ps(m1, n1));
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    for (int j = 0; j < nk; ++j) {
      float* row = st + static_cast<int64_t>(j) * ldst;
      const __m256 e0 = exp2(_mm256_sub_ps(_mm256_loadu_ps(row), n0));
      const __m256 e1 = exp2(_mm256_sub_ps(_mm256_loadu_ps(row + 8), n1));
      _mm256_storeu_ps(row, e0);
      _mm256_storeu_ps(row + 8, e1);
      s0 = _mm256_add_ps(s0, e0);
      s1 = _mm256_add_ps(s1, e1);
    }
    _mm256_storeu_ps(l, _mm256_fmadd_ps(_mm256_loadu_ps(l), c0, s0));
    _mm256_storeu_ps(l + 8, _mm256_fmadd_ps(_mm256_loadu_ps(l + 8), c1, s1));
    _mm256_storeu_ps(m, n0);
    _mm256_storeu_ps(m + 8, n1);
    _mm256_storeu_ps(alpha, c0);
    _mm256_storeu_ps(alpha + 8, c1);
  }

  // O rows i..i+5, columns c..c+15 += P^T[:, i..i+5]^T V[:, c..c+15]. The tile's sum starts
  // from zero and is added to O at the end, as a GEMM adds its K blocks: one running sum over
  // all L keys loses about 3x more precision at L = 4096 (measured against float64).
  WAN_AVX2 static void pv_6(const float* pt, int ldpt, int nk, const float* v, float* o, int ldo) {
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00;
    __m256 a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
    for (int j = 0; j < nk; ++j) {
      const float* vrow = v + j * kVec;
      const float* prow = pt + static_cast<int64_t>(j) * ldpt;
      const __m256 x0 = _mm256_loadu_ps(vrow), x1 = _mm256_loadu_ps(vrow + 8);
      __m256 w = _mm256_broadcast_ss(prow);
      WAN_FMA_ROW(0, w);
      w = _mm256_broadcast_ss(prow + 1);
      WAN_FMA_ROW(1, w);
      w = _mm256_broadcast_ss(prow + 2);
      WAN_FMA_ROW(2, w);
      w = _mm256_broadcast_ss(prow + 3);
      WAN_FMA_ROW(3, w);
      w = _mm256_broadcast_ss(prow + 4);
      WAN_FMA_ROW(4, w);
      w = _mm256_broadcast_ss(prow + 5);
      WAN_FMA_ROW(5, w);
    }
    const __m256 rows[12] = {a00, a01, a10, a11, a20, a21, a30, a31, a40, a41, a50, a51};
    for (int r = 0; r < 6; ++r) {
      float* orow = o + static_cast<int64_t>(r) * ldo;
      _mm256_storeu_ps(orow, _mm256_add_ps(_mm256_loadu_ps(orow), rows[2 * r]));
      _mm256_storeu_ps(orow + 8, _mm256_add_ps(_mm256_loadu_ps(orow + 8), rows[2 * r + 1]));
    }
  }

  WAN_AVX2 static void pv_1(const float* pt, int ldpt, int nk, const float* v, float* o) {
    __m256 a00 = _mm256_setzero_ps(), a01 = a00;
    for (int j = 0; j < nk; ++j) {
      const float* vrow = v + j * kVec;
      const __m256 x0 = _mm256_loadu_ps(vrow), x1 = _mm256_loadu_ps(vrow + 8);
      const __m256 w = _mm256_broadcast_ss(pt + static_cast<int64_t>(j) * ldpt);
      WAN_FMA_ROW(0, w);
    }
    _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a00));
    _mm256_storeu_ps(o + 8, _mm256_add_ps(_mm256_loadu_ps(o + 8), a01));
  }

  // vp: V in panels [dp / 16][nk][16]; a panel (16 KiB at 256 keys) stays in L1 while every
  // strip of 6 queries passes over it.
  WAN_AVX2 static void pv(const float* pt, int ldpt, int nq, int nk, const float* vp, int dp, float* o, int ldo) {
    for (int c = 0; c < dp; c += kVec) {
      const float* panel = vp + static_cast<int64_t>(c / kVec) * nk * kVec;
      int i = 0;
      for (; i + 6 <= nq; i += 6) pv_6(pt + i, ldpt, nk, panel, o + static_cast<int64_t>(i) * ldo + c, ldo);
      for (; i < nq; ++i) pv_1(pt + i, ldpt, nk, panel, o + static_cast<int64_t>(i) * ldo + c);
    }
  }

  WAN_AVX2 static void scale(float* x, int n, float a) {
    const __m256 av = _mm256_set1_ps(a);
    for (int j = 0; j < n; j += 8) _mm256_storeu_ps(x + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), av));
  }
};

#undef WAN_FMA_ROW
#undef WAN_MADD_ROW

bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#endif

// ---------------------------------------------------------------------------------------
// One task = (batch, head, block of kBlockQ queries); at::parallel_for hands each thread a
// range of tasks, and each thread owns one Workspace for all of them.

struct Workspace {
  Workspace(int64_t D, bool sage)
      : dp(static_cast<int>(round_up(D, kVec))), dh(static_cast<int>((D + 1) / 2)),
        qt(sizeof(float) * kBlockQ * D), k(sage ? 0 : sizeof(float) * kBlockK * D), v(sizeof(float) * kBlockK * dp),
        st(sizeof(float) * kBlockK * kBlockQ), o(sizeof(float) * kBlockQ * dp), row(sizeof(float) * (D + 1)),
        stats(sizeof(float) * kBlockQ * 3), qwt(sage ? sizeof(int32_t) * kBlockQ * dh : 0),
        rowscale(sizeof(float) * kBlockK), panel_scale(sizeof(float) * (kBlockQ / kPanel)) {}
  int dp, dh;
  Buffer qt, k, v, st, o, row, stats, qwt, rowscale, panel_scale;
  float* m() const { return stats.as<float>(); }
  float* l() const { return stats.as<float>() + kBlockQ; }
  float* alpha() const { return stats.as<float>() + 2 * kBlockQ; }
};

struct Problem {
  Dims d;
  Rows q, k, v;
  float* out;           // [B, Lq, H, D] float32, contiguous
  const int64_t* lens;  // keys per batch entry
  // Sage: K centred and quantised once per call (quantize_keys): int16 pairs of int8 values
  // [B, H, Lk, dh] and one scale per block of kSageKeyBlock keys [B, H, k_blocks].
  const int32_t* k_words;
  const float* k_scales;
  int64_t k_blocks;
};

// Puts query rows q0..q0+nq (float, times `scale`) into 16-query panels [D][16], zero-padded.
void pack_q_panels(const Problem& pb, Workspace& ws, int64_t b, int64_t h, int64_t q0, int nq, float scale, float* qt) {
  const int D = static_cast<int>(pb.d.D);
  float* row = ws.row.as<float>();
  const int nqp = static_cast<int>(round_up(nq, kPanel));
  for (int i = 0; i < nqp; ++i) {
    if (i < nq) pb.q.load(b, q0 + i, h, D, scale, row);
    else std::fill(row, row + D, 0.0f);
    float* dst = qt + static_cast<int64_t>(i / kPanel) * D * kPanel + i % kPanel;
    for (int c = 0; c < D; ++c) dst[c * kPanel] = row[c];
  }
}

void begin_task(Workspace& ws, int nq) {
  std::fill(ws.m(), ws.m() + kBlockQ, -std::numeric_limits<float>::infinity());
  std::fill(ws.l(), ws.l() + kBlockQ, 0.0f);
  std::fill(ws.o.as<float>(), ws.o.as<float>() + static_cast<int64_t>(nq) * ws.dp, 0.0f);
}

// V rows of the tile, as float32 panels of 16 columns [dp / 16][nk][16] (zero-padded): a
// panel is contiguous, so the P.V kernel streams it from L1 for every strip of queries.
// Reading f32 rows in place is slower: at H * D floats apart they fall into 2 of L1's sets.
const float* pack_v_panels(const Problem& pb, Workspace& ws, int64_t b, int64_t h, int64_t k0, int nk) {
  const int D = static_cast<int>(pb.d.D);
  float* vp = ws.v.as<float>();
  float* row = ws.row.as<float>();
  const int64_t panel = static_cast<int64_t>(nk) * kVec;
  for (int j = 0; j < nk; ++j) {
    const float* src = row;
    if (pb.v.type == at::kFloat) src = pb.v.f32_row(b, k0 + j, h);
    else pb.v.load(b, k0 + j, h, D, 1.0f, row);
    float* dst = vp + static_cast<int64_t>(j) * kVec;
    int c = 0;
    for (; c + kVec <= D; c += kVec) std::memcpy(dst + (c / kVec) * panel, src + c, sizeof(float) * kVec);
    if (c < D) {
      float* tail = dst + (c / kVec) * panel;
      std::copy(src + c, src + D, tail);
      std::fill(tail + (D - c), tail + kVec, 0.0f);
    }
  }
  return vp;
}

// After the scores of a tile are in S^T and its softmax is done: rescale o by alpha (the
// change of running max) and add P V.
template <typename Isa>
void accumulate_tile(const Problem& pb, Workspace& ws, int64_t b, int64_t h, int64_t k0, int nq, int nk) {
  float* o = ws.o.as<float>();
  const float* alpha = ws.alpha();
  for (int i = 0; i < nq; ++i)
    if (alpha[i] != 1.0f) Isa::scale(o + static_cast<int64_t>(i) * ws.dp, ws.dp, alpha[i]);
  const float* vp = pack_v_panels(pb, ws, b, h, k0, nk);
  Isa::pv(ws.st.as<float>(), kBlockQ, nq, nk, vp, ws.dp, o, ws.dp);
}

void finish_task(const Problem& pb, Workspace& ws, int64_t b, int64_t h, int64_t q0, int nq) {
  const float* o = ws.o.as<float>();
  const float* l = ws.l();
  const int64_t D = pb.d.D;
  for (int i = 0; i < nq; ++i) {
    float* dst = pb.out + ((b * pb.d.Lq + q0 + i) * pb.d.H + h) * D;
    const float inv = 1.0f / l[i];
    for (int64_t c = 0; c < D; ++c) dst[c] = o[static_cast<int64_t>(i) * ws.dp + c] * inv;
  }
}

template <typename Isa>
void flash_task(const Problem& pb, Workspace& ws, int64_t b, int64_t h, int64_t q0, int nq) {
  const int D = static_cast<int>(pb.d.D);
  float* qt = ws.qt.as<float>();
  pack_q_panels(pb, ws, b, h, q0, nq, kLog2e / std::sqrt(static_cast<float>(D)), qt);
  begin_task(ws, nq);
  const int panels = static_cast<int>((nq + kPanel - 1) / kPanel);
  float* st = ws.st.as<float>();
  const int64_t kl = pb.lens[b];
  for (int64_t k0 = 0; k0 < kl; k0 += kBlockK) {
    const int nk = static_cast<int>(std::min<int64_t>(kBlockK, kl - k0));
    const float* k;
    int64_t ldk;
    if (pb.k.type == at::kFloat) {
      k = pb.k.f32_row(b, k0, h);
      ldk = pb.k.sl;
    } else {
      float* kb = ws.k.as<float>();
      for (int j = 0; j < nk; ++j) pb.k.load(b, k0 + j, h, D, 1.0f, kb + static_cast<int64_t>(j) * D);
      k = kb;
      ldk = D;
    }
    for (int p = 0; p < panels; ++p) {
      Isa::qk_panel(qt + static_cast<int64_t>(p) * D * kPanel, D, k, ldk, nk, st + p * kPanel, kBlockQ);
      Isa::softmax_panel(st + p * kPanel, kBlockQ, nk, ws.m() + p * kPanel, ws.l() + p * kPanel,
                         ws.alpha() + p * kPanel);
    }
    accumulate_tile<Isa>(pb, ws, b, h, k0, nq, nk);
  }
  finish_task(pb, ws, b, h, q0, nq);
}

// SageAttention (Zhang et al. 2024): K minus its mean over the keys (which adds the same
// q.mean to every score of a row, so softmax is unchanged) is centred; then Q per block of
// kSageQueryBlock rows and K per block of kSageKeyBlock keys are quantised to int8 with
// scale = absmax / 127, Q.K^T is summed in int32 and scaled back by the two block scales.
// Softmax and P.V stay in float32.
template <typename Isa>
void sage_task(const Problem& pb, Workspace& ws, int64_t b, int64_t h, int64_t q0, int nq) {
  const int D = static_cast<int>(pb.d.D);
  const int dh = ws.dh;
  const int panels = static_cast<int>((nq + kPanel - 1) / kPanel);
  float* qt = ws.qt.as<float>();
  pack_q_panels(pb, ws, b, h, q0, nq, 1.0f, qt);
  // One scale per block of kSageQueryBlock queries (whole panels; zero padding is harmless).
  constexpr int kGroup = kSageQueryBlock / kPanel;
  float* panel_scale = ws.panel_scale.as<float>();
  int32_t* qwt = ws.qwt.as<int32_t>();  // [panels][dh][16]
  const float score_scale = kLog2e / std::sqrt(static_cast<float>(D));
  for (int g = 0; g * kGroup < panels; ++g) {
    const int p1 = std::min(panels, (g + 1) * kGroup);
    const float* first = qt + static_cast<int64_t>(g) * kGroup * D * kPanel;
    const float* last = qt + static_cast<int64_t>(p1) * D * kPanel;
    float amax = 0.0f;
    for (const float* x = first; x < last; ++x) amax = std::max(amax, std::fabs(*x));
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int p = g * kGroup; p < p1; ++p) {
      panel_scale[p] = score_scale * (amax / 127.0f);
      for (int w = 0; w < dh; ++w)
        for (int i = 0; i < kPanel; ++i) {
          const float* src = qt + static_cast<int64_t>(p) * D * kPanel + i;
          qwt[(static_cast<int64_t>(p) * dh + w) * kPanel + i] =
              pack_pair(quantize(src[2 * w * kPanel], inv), 2 * w + 1 < D ? quantize(src[(2 * w + 1) * kPanel], inv) : 0);
        }
    }
  }
  begin_task(ws, nq);
  const int64_t bh = b * pb.d.H + h;
  const float* k_scales = pb.k_scales + bh * pb.k_blocks;
  float* rowscale = ws.rowscale.as<float>();
  float* st = ws.st.as<float>();
  const int64_t kl = pb.lens[b];
  for (int64_t k0 = 0; k0 < kl; k0 += kBlockK) {
    const int nk = static_cast<int>(std::min<int64_t>(kBlockK, kl - k0));
    const int32_t* kw = pb.k_words + (bh * pb.d.Lk + k0) * dh;
    for (int j = 0; j < nk; ++j) rowscale[j] = k_scales[(k0 + j) / kSageKeyBlock];
    for (int p = 0; p < panels; ++p) {
      Isa::qk_int_panel(qwt + static_cast<int64_t>(p) * dh * kPanel, dh, kw, nk, rowscale, panel_scale[p],
                        st + p * kPanel, kBlockQ);
      Isa::softmax_panel(st + p * kPanel, kBlockQ, nk, ws.m() + p * kPanel, ws.l() + p * kPanel,
                         ws.alpha() + p * kPanel);
    }
    accumulate_tile<Isa>(pb, ws, b, h, k0, nq, nk);
  }
  finish_task(pb, ws, b, h, q0, nq);
}

// SageAttention's K side, once per call: per (batch, head), the channel mean of the keys that
// take part (j < k_lens[b]) is subtracted, then each block of kSageKeyBlock keys is quantised
// with its own scale. Keys past k_lens[b] are neither read nor written, so padding cannot
// change the result. Memory: 2 bytes per element of K (int16 pairs), about half of an f32 K.
struct QuantizedKeys {
  at::Tensor words, scales;
};

QuantizedKeys quantize_keys(const Problem& pb, int dh) {
  const Dims& d = pb.d;
  const int64_t blocks = (d.Lk + kSageKeyBlock - 1) / kSageKeyBlock;
  QuantizedKeys out{at::empty({d.B, d.H, d.Lk, dh}, at::kInt), at::zeros({d.B, d.H, blocks}, at::kFloat)};
  int32_t* words = out.words.data_ptr<int32_t>();
  float* scales = out.scales.data_ptr<float>();
  at::parallel_for(0, d.B * d.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> mean(d.D), rows(static_cast<size_t>(kSageKeyBlock * d.D));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / d.H, h = t % d.H, kl = pb.lens[b];
      std::fill(mean.begin(), mean.end(), 0.0f);
      for (int64_t j = 0; j < kl; ++j) {
        pb.k.load(b, j, h, d.D, 1.0f, rows.data());
        for (int64_t c = 0; c < d.D; ++c) mean[c] += rows[c];
      }
      for (int64_t c = 0; c < d.D; ++c) mean[c] /= static_cast<float>(kl);
      for (int64_t j0 = 0; j0 < kl; j0 += kSageKeyBlock) {
        const int64_t n = std::min<int64_t>(kSageKeyBlock, kl - j0);
        float amax = 0.0f;
        for (int64_t j = 0; j < n; ++j) {
          float* r = rows.data() + j * d.D;
          pb.k.load(b, j0 + j, h, d.D, 1.0f, r);
          for (int64_t c = 0; c < d.D; ++c) amax = std::max(amax, std::fabs(r[c] -= mean[c]));
        }
        scales[t * blocks + j0 / kSageKeyBlock] = amax / 127.0f;
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        for (int64_t j = 0; j < n; ++j) {
          const float* r = rows.data() + j * d.D;
          int32_t* w = words + (t * d.Lk + j0 + j) * dh;
          for (int p = 0; p < dh; ++p)
            w[p] = pack_pair(quantize(r[2 * p], inv), 2 * p + 1 < d.D ? quantize(r[2 * p + 1], inv) : 0);
        }
      }
    }
  });
  return out;
}

template <typename Isa, bool kSage>
void run_tiles(const Problem& pb) {
  const Dims& d = pb.d;
  const int64_t q_blocks = (d.Lq + kBlockQ - 1) / kBlockQ;
  at::parallel_for(0, d.B * d.H * q_blocks, 1, [&](int64_t begin, int64_t end) {
    Workspace ws(d.D, kSage);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t qb = t % q_blocks, h = (t / q_blocks) % d.H, b = t / (q_blocks * d.H);
      const int64_t q0 = qb * kBlockQ;
      const int nq = static_cast<int>(std::min<int64_t>(kBlockQ, d.Lq - q0));
      if (kSage) sage_task<Isa>(pb, ws, b, h, q0, nq);
      else flash_task<Isa>(pb, ws, b, h, q0, nq);
    }
  });
}

at::Tensor tiled_cpu(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const Dims& d,
                     const at::Tensor& k_lens, bool sage) {
  at::Tensor out = at::empty({d.B, d.Lq, d.H, d.D}, q_in.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  // The kernels read rows of D contiguous values, whatever the other strides.
  const at::Tensor q = q_in.stride(3) == 1 ? q_in : q_in.contiguous();
  const at::Tensor k = k_in.stride(3) == 1 ? k_in : k_in.contiguous();
  const at::Tensor v = v_in.stride(3) == 1 ? v_in : v_in.contiguous();
  const std::vector<int64_t> lens = key_counts(d, k_lens);
  Problem pb{d, Rows(q), Rows(k), Rows(v), out.data_ptr<float>(), lens.data(), nullptr, nullptr, 0};
  QuantizedKeys keys;
  if (sage) {
    keys = quantize_keys(pb, static_cast<int>((d.D + 1) / 2));
    pb.k_words = keys.words.data_ptr<int32_t>();
    pb.k_scales = keys.scales.data_ptr<float>();
    pb.k_blocks = keys.scales.size(2);
  }
#ifdef WAN_ATTENTION_X86
  if (cpu_has_avx2()) {
    if (sage) run_tiles<Avx2, true>(pb);
    else run_tiles<Avx2, false>(pb);
    return out;
  }
#endif
  if (sage) run_tiles<Generic, true>(pb);
  else run_tiles<Generic, false>(pb);
  return out;
}


// libtorch's own SDPA on [B, H, L, D] views; k_lens becomes a boolean mask (true = attend).
#if WAN_TORCH_AT_LEAST(2, 1)
at::Tensor torch_sdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Dims& d,
                      const at::Tensor& k_lens) {
  const at::Tensor qt = q.transpose(1, 2), kt = k.transpose(1, 2), vt = v.transpose(1, 2);
  at::Tensor out;
  // A mask that keeps every key is left out: without one, a GPU's SDPA can take its flash kernel.
  const bool all_keys = k_lens.defined() && k_lens.is_cpu() &&
                        k_lens.to(at::kLong).eq(d.Lk).all().item<bool>();
  if (k_lens.defined() && !all_keys) {
    const at::Tensor lens = k_lens.to(q.device(), at::kLong).view({d.B, 1, 1, 1});
    const at::Tensor mask = at::arange(d.Lk, lens.options()).view({1, 1, 1, d.Lk}) < lens;  // [B, 1, 1, Lk]
    out = at::scaled_dot_product_attention(qt, kt, vt, mask);
  } else {
    out = at::scaled_dot_product_attention(qt, kt, vt);
  }
  return out.transpose(1, 2).contiguous();  // [B, Lq, H, D]
}
#endif

at::Tensor sdpa_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Dims& d,
                    const at::Tensor& k_lens) {
#if WAN_TORCH_AT_LEAST(2, 1)
  if (d.B * d.Lq * d.H * d.D == 0) return at::empty({d.B, d.Lq, d.H, d.D}, q.options().dtype(at::kFloat));
  return torch_sdpa(q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat), d, k_lens);
#else
  // libtorch 1.13 has only the private math SDPA, which builds [B, H, Lq, Lk] whole.
  return math_impl(q, k, v, d, k_lens);
#endif
}

#ifdef WAN_WITH_CUDA
at::Tensor attention_cuda(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                          AttentionMode mode, const Dims& d, const at::Tensor& k_lens) {
  const c10::cuda::CUDAGuard device_guard(q_in.device());
  if (d.B * d.Lq * d.H * d.D == 0) return at::empty({d.B, d.Lq, d.H, d.D}, q_in.options());
#if WAN_TORCH_AT_LEAST(2, 1)
  // libtorch's SDPA runs FlashAttention-2 (or cuDNN) kernels: 'flash' is that. Our own tiled
  // kernel is ~28x slower on an H100-class GPU (BENCHMARKS.md, GPU) and serves older libtorch.
  if (mode != AttentionMode::Sage || !cuda_attention_supports_head_dim(d.D))
    return torch_sdpa(q_in, k_in, v_in, d, k_lens);
#else
  if (mode == AttentionMode::Sdpa || !cuda_attention_supports_head_dim(d.D))
    return math_impl(q_in, k_in, v_in, d, k_lens).to(q_in.scalar_type());
#endif
  const at::Tensor q = q_in.stride(3) == 1 ? q_in : q_in.contiguous();
  const at::Tensor k = k_in.stride(3) == 1 ? k_in : k_in.contiguous();
  const at::Tensor v = v_in.stride(3) == 1 ? v_in : v_in.contiguous();
  at::Tensor out = at::empty({d.B, d.Lq, d.H, d.D}, q.options());
  at::Tensor lens;
  if (k_lens.defined()) lens = k_lens.to(q.device(), at::kLong).contiguous();

  AttentionProblem p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.k_lens = lens.defined() ? lens.data_ptr<int64_t>() : nullptr;
  p.batch = d.B;
  p.q_len = d.Lq;
  p.k_len = d.Lk;
  p.heads = d.H;
  p.head_dim = d.D;
  for (int i = 0; i < 3; ++i) {
    p.q_stride[i] = q.stride(i);
    p.k_stride[i] = k.stride(i);
    p.v_stride[i] = v.stride(i);
    p.out_stride[i] = out.stride(i);
  }
  p.dtype = static_cast<int>(q.scalar_type() == at::kBFloat16 ? AttentionDType::BF16
                             : q.scalar_type() == at::kHalf   ? AttentionDType::F16
                                                              : AttentionDType::F32);
  p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d.D)));
  void* stream = c10::cuda::getCurrentCUDAStream(q.device().index()).stream();
  int status;
  if (mode == AttentionMode::Flash) {
    status = launch_flash_attention(p, stream);
  } else {
    at::Tensor workspace = at::empty({d.B, d.H, d.D}, q.options().dtype(at::kFloat));
    status = launch_sage_attention(p, workspace.data_ptr<float>(), stream);
  }
  if (status != 0)
    throw Error(ErrorCode::Internal, std::string("attention: the ") + attention_mode_name(mode) +
                                         " CUDA kernel failed with CUDA error " + std::to_string(status));
  return out;
}
#endif

}  // namespace

AttentionMode attention_mode_from_name(const std::string& name) {
  if (name == "sdpa") return AttentionMode::Sdpa;
  if (name == "flash") return AttentionMode::Flash;
  if (name == "sageattn") return AttentionMode::Sage;
  throw Error(ErrorCode::InvalidOption,
              "attentionMode: expected one of sdpa, flash, sageattn but received '" + name + "'");
}

const char* attention_mode_name(AttentionMode mode) {
  switch (mode) {
    case AttentionMode::Sdpa: return "sdpa";
    case AttentionMode::Flash: return "flash";
    case AttentionMode::Sage: return "sageattn";
  }
  return "sdpa";
}

at::Tensor attention_math(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_lens) {
  return math_impl(q, k, v, check_inputs(q, k, v, k_lens), k_lens);
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, AttentionMode mode,
                     const at::Tensor& k_lens) {
  const Dims d = check_inputs(q, k, v, k_lens);
#ifdef WAN_WITH_CUDA
  if (q.is_cuda()) return attention_cuda(q, k, v, mode, d, k_lens);
#endif
  if (!q.device().is_cpu()) return math_impl(q, k, v, d, k_lens).to(q.scalar_type());
  switch (mode) {
    case AttentionMode::Sdpa: return sdpa_cpu(q, k, v, d, k_lens);
    case AttentionMode::Flash: return tiled_cpu(q, k, v, d, k_lens, /*sage=*/false);
    case AttentionMode::Sage: return tiled_cpu(q, k, v, d, k_lens, /*sage=*/true);
  }
  return sdpa_cpu(q, k, v, d, k_lens);
}

}  // namespace wan::ops
