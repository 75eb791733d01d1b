// The per-row arithmetic of the fused RMS norm + RoPE kernel (norm_rope_cuda.cu), shared with
// its CPU reference (ops::norm_rope_reference), so that the kernel's indexing (which grid
// position and which angle each pair takes) is checked on machines without a GPU against the
// eager rms_norm + rope_apply (test/native/norm-rope.test.ts).
#pragma once
#include <cstdint>

#include "ops/rounded.h"

namespace wan::ops::norm_rope {

using rounded::add;
using rounded::mul;
using rounded::sub;

// Where token l of a sample with grid {frames, height, width} sits: frame, row and column
// (all 0, and turn false, for a padding token past the grid or when RoPE is off).
struct Position {
  bool turn;
  int64_t frame, row, column;
};
WAN_HOST_DEVICE Position position(int64_t l, const int64_t* grid, bool rope) {
  const int64_t frames = grid[0], height = grid[1], width = grid[2];
  if (!rope || l >= frames * height * width) return Position{false, 0, 0, 0};
  return Position{true, l / (height * width), (l / width) % height, l % width};
}

// The row of the angle table that pair c of a head (c < head_dim / 2) turns by: its frame for
// the first parts[0] pairs, its row for the next parts[1], its column for the rest.
WAN_HOST_DEVICE int64_t table_row(const Position& p, int64_t c, const int64_t* parts) {
  return c < parts[0] ? p.frame : c < parts[0] + parts[1] ? p.row : p.column;
}

// Pair `pair` of a row (elements 2 pair and 2 pair + 1, c = pair % (head_dim / 2) within its
// head), normalised by inverse_rms and weighted, then turned: (re co - im si, re si + im co).
WAN_HOST_DEVICE void pair(float x0, float x1, float w0, float w1, float inverse_rms, const Position& p, int64_t c,
                          int64_t half, const int64_t* parts, const float* cos, const float* sin, float& out0,
                          float& out1) {
  const float re = mul(mul(x0, inverse_rms), w0), im = mul(mul(x1, inverse_rms), w1);
  if (!p.turn) {
    out0 = re;
    out1 = im;
    return;
  }
  const int64_t at = table_row(p, c, parts) * half + c;
  const float co = cos[at], si = sin[at];
  out0 = sub(mul(re, co), mul(im, si));
  out1 = add(mul(re, si), mul(im, co));
}

}  // namespace wan::ops::norm_rope
