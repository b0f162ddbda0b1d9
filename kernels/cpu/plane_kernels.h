// Vectorised plane kernels of the CPU tap convolution: a zero-padded plane buffer and the register-tiled
// sparse correlation out[oy, ox] = init + sum_e coef[e] * buf[oy * sh + dy[e], ox * sw + dx[e]].
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace dcls_convert {

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// 32-byte vectors through GCC/Clang vector extensions (AVX with -march=native, pairs of SSE registers
// otherwise). Accumulators are kept in vector registers, never in a memory array: an array round-trips
// through the store buffer on every entry.
template <typename acc_t>
struct Lanes {
  typedef acc_t vec __attribute__((vector_size(32)));
  typedef acc_t uvec __attribute__((vector_size(32), aligned(sizeof(acc_t))));  // unaligned access
  static constexpr int64_t n = 32 / sizeof(acc_t);
  static constexpr int64_t tile = 4 * n;  // widest tile: four vectors of one row
  static vec load(const acc_t* p) { return *reinterpret_cast<const uvec*>(p); }
  static void store(acc_t* p, vec v) { *reinterpret_cast<uvec*>(p) = v; }
  static vec splat(acc_t v) {
    vec r;
    for (int64_t i = 0; i < n; ++i) r[i] = v;
    return r;
  }
  // A broadcast straight from memory is a pure load (no shuffle on the FMA ports).
  static vec bcast(const acc_t* p) {
#if defined(__AVX__)
    if constexpr (sizeof(acc_t) == 4) return reinterpret_cast<vec>(_mm256_broadcast_ss(reinterpret_cast<const float*>(p)));
    if constexpr (sizeof(acc_t) == 8) return reinterpret_cast<vec>(_mm256_broadcast_sd(reinterpret_cast<const double*>(p)));
#endif
    return splat(*p);
  }
};

// A plane (H x W, element strides sH, sW: any layout, stride 0 included) placed at (top, left) inside an
// Hp x Wp frame of zeros (top/left may be negative: cropping). The frame is zeroed only when the geometry
// changes: every plane of one call writes the same interior.
template <typename acc_t>
class PaddedPlane {
 public:
  template <typename scalar_t>
  const acc_t* fill(const scalar_t* src, int64_t sH, int64_t sW, int64_t H, int64_t W, int64_t top, int64_t left,
                    int64_t Hp, int64_t Wp) {
    const std::array<int64_t, 6> geometry{H, W, top, left, Hp, Wp};
    if (geometry != geometry_) {
      buf_.assign(Hp * Wp, acc_t(0));
      geometry_ = geometry;
    }
    const int64_t x0 = std::max<int64_t>(0, -left), x1 = std::min<int64_t>(W, Wp - left);
    for (int64_t y = std::max<int64_t>(0, -top); y < H && y + top < Hp; ++y) {
      const scalar_t* s = src + y * sH;
      acc_t* d = buf_.data() + (y + top) * Wp + left;
      if (sW == 1) {
        for (int64_t x = x0; x < x1; ++x) d[x] = static_cast<acc_t>(s[x]);
      } else {
        for (int64_t x = x0; x < x1; ++x) d[x] = static_cast<acc_t>(s[x * sW]);
      }
    }
    return buf_.data();
  }

 private:
  std::vector<acc_t> buf_;
  std::array<int64_t, 6> geometry_{-1, -1, -1, -1, -1, -1};
};

// Rows per register tile: three rows of up to four vectors (12 accumulator chains hide the FMA latency).
constexpr int64_t kTileRows = 3;

// R rows x NV vectors of stride-1 output; rel[e] = dy[e] * row_step + dx[e]. The loops are unrolled in
// full so that the accumulators become registers and every load has a constant displacement.
template <int R, int NV, typename acc_t>
inline void tile_rows(const acc_t* base, const int64_t* rel, const acc_t* coef, int64_t ne, int64_t row_step,
                      acc_t init, acc_t* out, int64_t out_step) {
  using V = Lanes<acc_t>;
  typename V::vec acc[R * NV];
#pragma GCC unroll 16
  for (int j = 0; j < R * NV; ++j) acc[j] = V::splat(init);
  for (int64_t i = 0; i < ne; ++i) {
    const typename V::vec c = V::bcast(coef + i);
    const acc_t* s = base + rel[i];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r, s += row_step) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r * NV + v] += c * V::load(s + v * V::n);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) V::store(out + r * out_step + v * V::n, acc[r * NV + v]);
  }
}

// Geometry of the buffer correlate_plane reads: rows up to round_up(Ho, kTileRows) and whole tiles of columns.
inline int64_t plane_rows_needed(int64_t Ho, int64_t sh, int64_t Lh) { return (round_up(Ho, kTileRows) - 1) * sh + Lh; }
template <typename acc_t>
int64_t plane_cols_needed(int64_t Wo, int64_t sw, int64_t Lw) {
  return (round_up(Wo, Lanes<acc_t>::tile) - 1) * sw + Lw;
}

// out (Ho x Wo, element strides oH, oW) = init + sum_e coef[e] * buf[oy * sh + dy[e], ox * sw + dx[e]];
// buf has Wp columns and plane_rows_needed x plane_cols_needed readable. rows: per-thread scratch.
template <typename scalar_t, typename acc_t>
void correlate_plane(const acc_t* buf, int64_t Wp, const std::vector<int64_t>& dy, const std::vector<int64_t>& dx,
                     const std::vector<acc_t>& coef, int64_t sh, int64_t sw, acc_t init, int64_t Ho, int64_t Wo,
                     scalar_t* out, int64_t oH, int64_t oW, std::vector<acc_t>& rows) {
  using V = Lanes<acc_t>;
  constexpr int64_t T = V::tile, n = V::n, R = kTileRows;
  const int64_t ne = static_cast<int64_t>(coef.size()), Wt = round_up(Wo, T), row_step = sh * Wp;
  std::vector<int64_t> rel(ne);
  for (int64_t i = 0; i < ne; ++i) rel[i] = dy[i] * Wp + dx[i];
  rows.resize(R * Wt);
  for (int64_t oy = 0; oy < Ho; oy += R) {
    const acc_t* band = buf + oy * row_step;
    for (int64_t ox0 = 0; ox0 < Wo; ox0 += T) {
      acc_t* o = rows.data() + ox0;
      if (sw == 1) {
        // The last tile of a row uses only the vectors it needs (a 7-wide plane costs one, not four).
        switch (std::min<int64_t>(4, (Wo - ox0 + n - 1) / n)) {
          case 1: tile_rows<R, 1>(band + ox0, rel.data(), coef.data(), ne, row_step, init, o, Wt); break;
          case 2: tile_rows<R, 2>(band + ox0, rel.data(), coef.data(), ne, row_step, init, o, Wt); break;
          case 3: tile_rows<R, 3>(band + ox0, rel.data(), coef.data(), ne, row_step, init, o, Wt); break;
          default: tile_rows<R, 4>(band + ox0, rel.data(), coef.data(), ne, row_step, init, o, Wt); break;
        }
      } else {
        for (int64_t r = 0; r < R; ++r) {
          for (int64_t j = 0; j < T; ++j) o[r * Wt + j] = init;
          for (int64_t i = 0; i < ne; ++i) {
            const acc_t* s = band + r * row_step + ox0 * sw + rel[i];
            for (int64_t j = 0; j < T; ++j) o[r * Wt + j] += coef[i] * s[j * sw];
          }
        }
      }
    }
    for (int64_t r = 0; r < std::min(R, Ho - oy); ++r) {
      const acc_t* src = rows.data() + r * Wt;
      scalar_t* dst = out + (oy + r) * oH;
      if (oW == 1) {
        for (int64_t x = 0; x < Wo; ++x) dst[x] = static_cast<scalar_t>(src[x]);
      } else {
        for (int64_t x = 0; x < Wo; ++x) dst[x * oW] = static_cast<scalar_t>(src[x]);
      }
    }
  }
}

}  // namespace dcls_convert
