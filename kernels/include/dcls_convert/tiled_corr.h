// The GPU tap engine's weight, position and bias gradients (see tiled_taps.h).
// Correlations for the weight and position gradients.
#pragma once

#include <algorithm>
#include <cstdint>

#include "dcls_convert/tap_tables.h"
#include "dcls_convert/tile_config.h"

namespace dcls_convert {

template <typename scalar_t, typename acc_t>
struct TiledCorr {
  const scalar_t* x = nullptr;
  const scalar_t* g = nullptr;
  const TapEntry<acc_t>* table = nullptr;  // kCornerTable
  const int* count = nullptr;
  const int* pairs = nullptr;  // two-row entries per channel, first in its table (table_write_kept)
  int cap = 0;
  acc_t* work = nullptr;  // (C, slabs, values)
  acc_t* grad_bias = nullptr;  // (C): the bias gradient, summed from the staged output gradients; or nullptr
  int64_t N = 0, C = 0, H = 1, W = 1, Ho = 1, Wo = 1;
  int64_t xs[4] = {0, 0, 0, 0}, gs[4] = {0, 0, 0, 0};
  int64_t sh = 1, sw = 1, ph = 0, pw = 0;
  int64_t slabs = 1;
  TileConfig cfg;  // planes == groups: each group's plane is one (image, tile) job of the block's channel
  bool batched = true;  // staging with several loads in flight per thread (stage_planes_batched)
  bool fixed_pitch = true;  // kernels compiled for the tile's row pitch where there is one (with_ry_pitch)
  // Sums per block: two rows per entry, padded to whole groups of 16 entries, then the output-gradient sum.
  DCLS_HD int entry_values() const { return 2 * kCorrGroup * ((cap + kCorrGroup - 1) / kCorrGroup); }
  DCLS_HD int bias_value() const { return entry_values(); }
  DCLS_HD int values() const { return entry_values() + 1; }
  DCLS_HD int warps() const { return (cfg.threads + 31) / 32; }
  DCLS_HD int kernel_pitch() const { return fixed_pitch ? cfg.pitch : -1; }  // for with_ry_pitch
  DCLS_HD int64_t jobs() const { return N * cfg.tiles_y * cfg.tiles_x; }  // per channel
  DCLS_HD int64_t blocks() const { return C * slabs; }
  DCLS_HD int64_t smem_elems() const { return int64_t(cfg.planes) * cfg.plane_stride + int64_t(warps()) * values(); }
};

// Slabs per channel: enough blocks to fill the GPU, never more than the channel has rounds of jobs.
inline int64_t corr_slabs(int64_t C, int64_t jobs, int groups, int64_t target_blocks) {
  const int64_t rounds = std::max<int64_t>(1, (jobs + groups - 1) / groups);
  return std::max<int64_t>(1, std::min<int64_t>(rounds, (target_blocks + C - 1) / std::max<int64_t>(C, 1)));
}

struct CorrJob {
  int64_t c, slab, begin, end;  // channel, slab, its (image, tile) jobs [begin, end)
};

template <typename scalar_t, typename acc_t>
DCLS_HD CorrJob corr_job(const TiledCorr<scalar_t, acc_t>& a, int64_t bid) {
  CorrJob j;
  j.c = bid % a.C;
  j.slab = bid / a.C;
  const int64_t J = a.jobs();
  j.begin = j.slab * J / a.slabs;
  j.end = (j.slab + 1) * J / a.slabs;
  return j;
}

// Phase 0 (once per block job): zero the warps' sums.
template <typename scalar_t, typename acc_t>
DCLS_HD void tiled_corr_clear(const TiledCorr<scalar_t, acc_t>& a, acc_t* smem, int tid) {
  acc_t* red = smem + int64_t(a.cfg.planes) * a.cfg.plane_stride;
  for (int i = tid; i < a.warps() * a.values(); i += a.cfg.threads) red[i] = acc_t(0);
}

// Phase 1 (per round): zero the staged planes.
template <typename scalar_t, typename acc_t>
DCLS_HD void tiled_corr_clear_tiles(const TiledCorr<scalar_t, acc_t>& a, acc_t* smem, int tid) {
  stage_clear(smem, int64_t(a.cfg.planes) * a.cfg.plane_stride, tid, a.cfg.threads);
}

// Phase 2 (per round): each group's threads load the input region of its job, first + group.
template <typename scalar_t, typename acc_t>
DCLS_HD void tiled_corr_stage(const TiledCorr<scalar_t, acc_t>& a, const CorrJob& j, int64_t first, acc_t* smem,
                              int tid) {
  const TileConfig& t = a.cfg;
  const int per_plane = t.tw * t.thread_rows, group = tid / per_plane;
  const int64_t job = first + group, tiles = t.tiles_y * t.tiles_x;
  if (group >= t.groups || job >= j.end) return;
  const int64_t n = job / tiles, tile = job % tiles;
  const int64_t y0 = (tile / t.tiles_x) * t.th() * a.sh - a.ph, x0 = (tile % t.tiles_x) * t.tw * a.sw - a.pw;
  acc_t* plane = smem + group * t.plane_stride;
  const scalar_t* src = a.x + n * a.xs[0] + j.c * a.xs[1];
  const StageRect R = stage_rect(y0, x0, t.in_h, t.in_w, a.H, a.W);
  if (stage_batched(a.batched, R, 1, per_plane))
    stage_planes_batched(plane, t.pitch, t.plane_stride, src, a.xs[1], a.xs[2], a.xs[3], y0, x0, 1, R, false,
                         tid % per_plane, per_plane);
  else
    stage_planes(plane, t.pitch, t.plane_stride, src, a.xs[1], a.xs[2], a.xs[3], y0, x0, 1, R, false, tid % per_plane,
                 per_plane);
}

// The output gradients a thread multiplies in a round (zero outside the plane or past the slab's jobs).
template <int RY, typename scalar_t, typename acc_t>
DCLS_HD void tiled_corr_load_grad(const TiledCorr<scalar_t, acc_t>& a, const CorrJob& j, int64_t first, int tid,
                                  acc_t gv[RY]) {
  const TileConfig& t = a.cfg;
  const int per_plane = t.tw * t.thread_rows;
  const int group = tid / per_plane, lx = tid % t.tw, ly = (tid % per_plane) / t.tw;
  const int64_t job = first + group, tiles = t.tiles_y * t.tiles_x;
  const int64_t n = job / tiles, tile = job % tiles;
  const int64_t ox = (tile % t.tiles_x) * t.tw + lx, oy0 = (tile / t.tiles_x) * t.th() + ly * RY;
  for (int i = 0; i < RY; ++i) {
    const int64_t oy = oy0 + i;
    gv[i] = (job < j.end && ox < a.Wo && oy < a.Ho)
                ? static_cast<acc_t>(a.g[n * a.gs[0] + j.c * a.gs[1] + oy * a.gs[2] + ox * a.gs[3]])
                : acc_t(0);
  }
}

// The thread's running sum of its output gradients (the bias gradient), round after round.
template <int RY, typename acc_t>
DCLS_HD void tiled_corr_grad_sum(const acc_t gv[RY], acc_t& sum) {
  for (int i = 0; i < RY; ++i) sum += gv[i];
}

// Phase 3 (per round, per group of 16 two-row entries): the thread's 32 partial sums v[2m + r] for entries
// base + m < a.pairs[c], rows r = 0, 1.
template <int RY, int P, typename scalar_t, typename acc_t>
DCLS_HD void tiled_corr_products(const TiledCorr<scalar_t, acc_t>& a, const CorrJob& j, const acc_t* smem, int tid,
                                 const acc_t gv[RY], int base, acc_t v[2 * kCorrGroup]) {
  const TileConfig& t = a.cfg;
  const int per_plane = t.tw * t.thread_rows;
  const int group = tid / per_plane, lx = tid % t.tw, ly = (tid % per_plane) / t.tw;
  // 32-bit offsets, as in the forward; P > 0: the pitch as a compile-time constant (with_ry_pitch)
  const int pitch = P > 0 ? P : t.pitch, row = static_cast<int>(a.sh) * pitch;
  const acc_t* s = smem + (group * t.plane_stride + ly * RY * row + lx * static_cast<int>(a.sw));
  const TapEntry<acc_t>* e = a.table + j.c * a.cap;
  const int ne = a.pairs[j.c];
DCLS_UNROLL
  for (int m = 0; m < kCorrGroup; ++m) {
    acc_t s0 = acc_t(0), s1 = acc_t(0);
    if (base + m < ne) {
      const TapEntry<acc_t> en = e[base + m];
      const acc_t* q = s + (en.dy * pitch + en.dx);
      if (row == pitch) {
        acc_t prev = q[0];
DCLS_UNROLL
        for (int i = 0; i < RY; ++i) {
          const acc_t next = q[(i + 1) * pitch];
          s0 += gv[i] * prev;
          s1 += gv[i] * next;
          prev = next;
        }
      } else {
DCLS_UNROLL
        for (int i = 0; i < RY; ++i) {
          s0 += gv[i] * q[i * row];
          s1 += gv[i] * q[i * row + pitch];
        }
      }
    }
    v[2 * m] = s0;
    v[2 * m + 1] = s1;
  }
}

// Phase 3' (per round, per group of 32 single-row entries, after the two-row ones): v[m] for entry base + m <
// a.count[c], its one row. The corners whose second row no gradient reads (nearest taps: partial's and bloom's)
// are single rows in the corner table, so a warp's reduction then serves 32 entries instead of 16 and their
// products are half as many.
template <int RY, int P, typename scalar_t, typename acc_t>
DCLS_HD void tiled_corr_products_one_row(const TiledCorr<scalar_t, acc_t>& a, const CorrJob& j, const acc_t* smem,
                                         int tid, const acc_t gv[RY], int base, acc_t v[2 * kCorrGroup]) {
  const TileConfig& t = a.cfg;
  const int per_plane = t.tw * t.thread_rows;
  const int group = tid / per_plane, lx = tid % t.tw, ly = (tid % per_plane) / t.tw;
  const int pitch = P > 0 ? P : t.pitch, row = static_cast<int>(a.sh) * pitch;
  const acc_t* s = smem + (group * t.plane_stride + ly * RY * row + lx * static_cast<int>(a.sw));
  const TapEntry<acc_t>* e = a.table + j.c * a.cap;
  const int ne = a.count[j.c];
DCLS_UNROLL
  for (int m = 0; m < 2 * kCorrGroup; ++m) {
    acc_t s0 = acc_t(0);
    if (base + m < ne) {
      const TapEntry<acc_t> en = e[base + m];
      const acc_t* q = s + (en.dy * pitch + en.dx);
DCLS_UNROLL
      for (int i = 0; i < RY; ++i) s0 += gv[i] * q[i * row];
    }
    v[m] = s0;
  }
}

// One step of the warp's transpose-reduction of 32 values (width 16, 8, 4, 2, 1): a lane keeps the half of
// its values selected by bit `width` of its lane index and sends the other half to lane ^ width, which adds
// it. After the five steps lane l holds, in v[0], the warp's total of value l.
template <typename acc_t>
DCLS_HD acc_t transpose_send(const acc_t* v, int lane, int width, int i) {
  return (lane & width) ? v[i] : v[i + width];
}
template <typename acc_t>
DCLS_HD void transpose_keep(acc_t* v, int lane, int width, int i, acc_t received) {
  v[i] = ((lane & width) ? v[i + width] : v[i]) + received;
}

// Phase 4 (after each reduction): the lane's total joins the warp's row of sums (entry i's rows in slots 2i,
// 2i + 1). one_row: the lane's total is entry base + lane's only row.
template <typename scalar_t, typename acc_t>
DCLS_HD void tiled_corr_accumulate(const TiledCorr<scalar_t, acc_t>& a, const CorrJob& j, acc_t* smem, int tid,
                                   int base, bool one_row, acc_t total) {
  acc_t* red = smem + int64_t(a.cfg.planes) * a.cfg.plane_stride + (tid / 32) * a.values();
  const int lane = tid % 32;
  if (!one_row)
    red[2 * base + lane] += total;
  else if (base + lane < a.count[j.c])
    red[2 * (base + lane)] += total;
}

// Phase 4b (end of the block job, grad_bias only): lane 0 stores its warp's butterfly-reduced gradient sum.
template <typename scalar_t, typename acc_t>
DCLS_HD void tiled_corr_store_grad_sum(const TiledCorr<scalar_t, acc_t>& a, acc_t* smem, int tid, acc_t warp_sum) {
  if (tid % 32 == 0) smem[int64_t(a.cfg.planes) * a.cfg.plane_stride + (tid / 32) * a.values() + a.bias_value()] = warp_sum;
}

// Phase 5 (end of the block job): warps' sums added in warp order, written to the workspace.
template <typename scalar_t, typename acc_t>
DCLS_HD void tiled_corr_write(const TiledCorr<scalar_t, acc_t>& a, const CorrJob& j, const acc_t* smem, int tid) {
  const acc_t* red = smem + int64_t(a.cfg.planes) * a.cfg.plane_stride;
  const int V = a.values();
  for (int i = tid; i < V; i += a.cfg.threads) {
    acc_t s = acc_t(0);
    for (int w = 0; w < a.warps(); ++w) s += red[w * V + i];
    a.work[(j.c * a.slabs + j.slab) * V + i] = s;
  }
}

// Second kernel, one thread per tap (c, k): each corner's correlation summed over slabs in order, then mapped to
// the weight and position gradients (taps_wgrad_finish); thread (c, 0) also writes the bias gradient.
template <typename scalar_t, typename acc_t>
DCLS_HD void tiled_corr_finish_thread(int64_t ck, const TiledCorr<scalar_t, acc_t>& w,
                                      const TapsArgs<scalar_t, acc_t>& a) {
  const int64_t c = ck / a.K, k = ck % a.K;
  const TapCorners<acc_t> t = tap_corners(a, c, k);
  const TapEntry<acc_t>* e = w.table + c * w.cap;
  const int ne = w.count[c], V = w.values();
  acc_t S[4] = {0, 0, 0, 0};
  for (int bw = 0; bw < t.n_w; ++bw) {
    const int dy = static_cast<int>(t.h.cell), dx = static_cast<int>(t.w.cell) + bw;
    int i = 0;
    while (i < ne && (e[i].dy != dy || e[i].dx != dx)) ++i;
    if (i == ne) continue;  // a corner of zero weight whose position is frozen: not needed
    for (int bh = 0; bh < t.n_h; ++bh) {
      acc_t s = acc_t(0);
      for (int64_t sl = 0; sl < w.slabs; ++sl) s += w.work[(c * w.slabs + sl) * V + 2 * i + bh];
      S[bh * 2 + bw] = s;
    }
  }
  taps_wgrad_finish(c, k, t, S, a);
  if (w.grad_bias != nullptr && k == 0) {
    acc_t s = acc_t(0);
    for (int64_t sl = 0; sl < w.slabs; ++sl) s += w.work[(c * w.slabs + sl) * V + w.bias_value()];
    w.grad_bias[c] = s;
  }
}

}  // namespace dcls_convert
