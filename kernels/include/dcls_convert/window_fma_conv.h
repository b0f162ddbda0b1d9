// The GPU tap engine's forward and input gradient at stride 1 by scalar FMA over the whole window, for float32
// (and float64, for tests): the taps summed into the dense window in the accumulation type (window_build.h;
// no rounding), then the depthwise convolution with it. The input gradient is the same convolution of the output
// gradient with the window turned by 180 degrees and padding L - 1 - p.
//
// Why: the tables' forward (tiled_forward.h) loads RY + 1 staged inputs per entry for 2 RY products, so shared
// memory and instruction issue bound it at 4-5x its floor on an H200. Here a thread holds RO output rows of one
// column (RO sums in registers) and, per window column dx and block of RY window rows, loads the RY weights and
// the RO + RY - 1 inputs that column meets and does RO x RY products: at RO = 32, RY = 9, 49 loads for 288 FMAs.
// The whole window costs Lh x Lw products per output where the tables spend one or two per entry, so it is taken
// for dense windows (kFmaConvCellsPerEntry). Rows of cells past the window (the last block of RY) have zero
// weights: an infinite input makes NaN reach up to RY - 1 output rows more than a dense convolution's, as in the
// tensor-core forward (window_conv.h).
//
// Cells: only those a product reaches (rows [ey0, ey1), columns [ex0, ex1), as in window_fma_corr.h). A task is
// one channel's block of RO output rows; a warp's lanes take its consecutive output columns (outputs narrower than
// 32 pack 2 or 4 tasks per warp). A block job is cg channels x bj row blocks x a slab of images: the channels'
// windows are staged once per job; per image, the rows the job's row blocks read (zero outside the input), then
// each task's sums go straight to the output (coalesced in NCHW; channels_last is written a value per lane). The
// CPU emulation runs this block algorithm over the whole grid.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "dcls_convert/taps_threads.h"
#include "dcls_convert/window_fma_corr.h"

namespace dcls_convert {

// The whole window is taken where its padded cells are at most this many per entry the tables could hold. An
// estimate: the tables' forward took 0.416 ms at ConvNeXt-T stage 1 (float32, 136 entries a channel) on an H200;
// this loop's SASS gives about 0.3 ms for 18 x 17 cells there, about 3 cells per entry.
constexpr int64_t kFmaConvCellsPerEntry = 3;

template <typename scalar_t>
constexpr bool fma_conv_dtype() {
  return std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>;
}

template <typename scalar_t, typename acc_t>
struct FmaConv {
  const scalar_t* x = nullptr;  // (N, C, H, W): the input, or the output gradient for the input gradient
  const acc_t* kern = nullptr;  // (C, Lh, Lw): the dense window (turned for the input gradient)
  const acc_t* bias = nullptr;  // (C) or nullptr
  scalar_t* out = nullptr;      // (N, C, Ho, Wo)
  int64_t N = 0, C = 0, H = 1, W = 1, Ho = 1, Wo = 1, Lh = 1, Lw = 1, ph = 0, pw = 0;
  int64_t xs[4] = {0, 0, 0, 0}, os[4] = {0, 0, 0, 0};
  int ro = 32, ry = 9;                   // output rows per task, window rows per block of cells (the kernel's)
  int ey0 = 0, ex0 = 0, ny = 1, ew = 1;  // cell rows ey0 + ry * i, columns ex0 .. ex0 + ew - 1
  int span = 32, per_warp = 1;           // lanes per task (a column each), tasks per warp
  int cg = 1, bj = 1, warps = 1;         // channels and row blocks per block job, warps per block
  bool x_cl = false;                     // channels fastest in x: staged by threads on neighbouring channels
  bool transposed = false;               // outputs through shared memory, stored by neighbouring channels
  int64_t slabs = 1;
  bool ok = false;

  DCLS_HD int threads() const { return 32 * warps; }
  DCLS_HD int64_t row_blocks() const { return (Ho + ro - 1) / ro; }
  DCLS_HD int64_t bands() const { return (row_blocks() + bj - 1) / bj; }
  DCLS_HD int64_t channel_groups() const { return (C + cg - 1) / cg; }
  DCLS_HD int64_t blocks() const { return channel_groups() * bands() * slabs; }
  // Staged column-major (a column's rows at consecutive addresses), so that a thread's loads down a column take
  // immediate offsets; the column pitch is odd, so that 32 lanes on neighbouring columns hit 32 banks.
  DCLS_HD int k_rows() const { return ny * ry; }                                   // staged window rows
  DCLS_HD int64_t k_elems() const { return int64_t(k_rows()) * ew; }              // per channel: (ew, k_rows)
  DCLS_HD int64_t sr() const { return int64_t(bj) * ro + k_rows() - 1; }          // staged input rows
  DCLS_HD int64_t srp() const { return sr() | 1; }                                 // their column pitch
  DCLS_HD int64_t sc() const { return Wo + ew - 1; }                               // staged input columns
  DCLS_HD int64_t x_elems() const { return srp() * sc(); }                         // per channel: (sc, srp)
  DCLS_HD int64_t smem_elems() const { return int64_t(cg) * (k_elems() + x_elems()); }
  int64_t smem_bytes() const { return smem_elems() * int64_t(sizeof(acc_t)); }
  DCLS_HD int64_t kernel_elems() const { return C * Lh * Lw; }
};

// The shape (no pointers), or ok = false where it does not apply: stride 1, windows up to kFmaMaxWindow per axis
// with padding inside them, at least kFmaMinRY x 3 cells reached, at most kFmaConvCellsPerEntry padded cells per
// table entry (`entries`), shared memory within max_smem_bytes. H, W, Ho, Wo, ph, pw: the convolution's own (the
// input gradient's: the output gradient's plane, the input's, L - 1 - p).
template <typename scalar_t, typename acc_t>
FmaConv<scalar_t, acc_t> fma_conv_shape(int64_t N, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                                        int64_t Lh, int64_t Lw, int64_t ph, int64_t pw, int64_t entries,
                                        int64_t max_smem_bytes) {
  FmaConv<scalar_t, acc_t> w;
  w.N = N, w.C = C, w.H = H, w.W = W, w.Ho = Ho, w.Wo = Wo, w.Lh = Lh, w.Lw = Lw, w.ph = ph, w.pw = pw;
  if (Lh > kFmaMaxWindow || Lw > kFmaMaxWindow || ph > Lh - 1 || pw > Lw - 1 || N * C == 0 || Ho * Wo == 0)
    return w;
  const ReachedCells e = reached_cells(H, W, Ho, Wo, Lh, Lw, ph, pw);
  if (e.h < kFmaMinRY || e.w < kFmaRX) return w;
  w.ry = rows_per_block(e.h, {5, 7, 9});
  w.ey0 = static_cast<int>(e.y0), w.ex0 = static_cast<int>(e.x0), w.ew = static_cast<int>(e.w);
  w.ny = static_cast<int>((e.h + w.ry - 1) / w.ry);
  if (int64_t(w.k_rows()) * w.ew > kFmaConvCellsPerEntry * entries) return w;
  // (32 rows of float64 sums would spill inside the loop at the 80 registers two blocks per SM allow)
  w.ro = Ho <= 8 ? 8 : Ho <= 16 || sizeof(acc_t) > 4 ? 16 : 32;
  w.span = 32;
  while (w.span / 2 >= Wo) w.span /= 2;
  w.per_warp = 32 / w.span;
  // channels and row blocks per job: every row block of as many channels as 12 warps and kFmaSmemTarget take, else
  // fewer row blocks of one channel; beyond the target, the device's limit
  const int64_t rb = w.row_blocks();
  for (const int64_t budget : {std::min(kFmaSmemTarget, max_smem_bytes), max_smem_bytes}) {
    w.bj = static_cast<int>(std::min<int64_t>(rb, kFmaMaxWarps * w.per_warp));
    const int tasks_max = kFmaMaxWarps * w.per_warp;
    w.cg = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(C, tasks_max / w.bj)));
    while (w.cg > 1 && w.smem_bytes() > budget) --w.cg;
    while (w.bj > 1 && w.smem_bytes() > budget) --w.bj;
    if (w.smem_bytes() <= budget) break;
  }
  w.warps = (w.cg * w.bj + w.per_warp - 1) / w.per_warp;
  w.ok = w.smem_bytes() <= max_smem_bytes && w.warps <= kFmaMaxWarps;
  return w;
}

// Slabs of images per (channel group, band): about `target` blocks, at least one image each.
template <typename scalar_t, typename acc_t>
int64_t fma_conv_slabs(const FmaConv<scalar_t, acc_t>& w, int64_t target) {
  const int64_t jobs = w.channel_groups() * w.bands();
  return std::max<int64_t>(1, std::min<int64_t>(w.N, (target + jobs - 1) / std::max<int64_t>(jobs, 1)));
}

struct FmaConvJob {
  int64_t c0, b0, n_begin, n_end;  // first channel, first row block, images [n_begin, n_end)
};
template <typename scalar_t, typename acc_t>
DCLS_HD FmaConvJob fma_conv_job(const FmaConv<scalar_t, acc_t>& w, int64_t bid) {
  FmaConvJob j;
  const int64_t groups = w.channel_groups();
  j.c0 = (bid % groups) * w.cg;
  bid /= groups;
  j.b0 = (bid % w.bands()) * w.bj;
  const int64_t slab = bid / w.bands();
  j.n_begin = slab * w.N / w.slabs;
  j.n_end = (slab + 1) * w.N / w.slabs;
  return j;
}

// Phase 1 (per job): the cg channels' windows, rows ey0 .. ey0 + k_rows() - 1 (zero past Lh) by columns
// ex0 .. ex0 + ew - 1, column-major.
template <typename scalar_t, typename acc_t>
DCLS_HD void fma_conv_stage_kernels(const FmaConv<scalar_t, acc_t>& w, const FmaConvJob& j, acc_t* smem, int tid) {
  const int64_t per = w.k_elems();
  for (int64_t i = tid; i < w.cg * per; i += w.threads()) {
    const int64_t ci = i / per, d = (i % per) / w.k_rows(), a = i % w.k_rows(), c = j.c0 + ci, dy = w.ey0 + a;
    smem[i] = c < w.C && dy < w.Lh ? w.kern[(c * w.Lh + dy) * w.Lw + w.ex0 + d] : acc_t(0);
  }
}

// Phase 2 (per image): channel ci's staged rows sr = 0 .. sr() - 1 (input row j.b0 * ro + ey0 - ph + sr), columns
// sc = 0 .. sc() - 1 (input column sc + ex0 - pw), zero outside the input, column-major; kFmaStageLoads loads in
// flight, written down columns (an odd pitch: no bank conflicts). Reads: along rows, every thread on each
// channel in turn (NCHW: coalesced); channels_last, a thread per channel, neighbouring threads on neighbouring
// channels of a pixel (runs of cg channels instead of one value per 32-byte sector).
template <typename scalar_t, typename acc_t>
DCLS_HD void fma_conv_stage_rows(const FmaConv<scalar_t, acc_t>& w, const FmaConvJob& j, int64_t n, acc_t* smem,
                                 int tid) {
  constexpr int B = kFmaStageLoads;
  const int T = w.threads(), sc = static_cast<int>(w.sc()), srp = static_cast<int>(w.srp());
  const int total = static_cast<int>(w.sr()) * sc;
  const int64_t iy0 = j.b0 * w.ro + w.ey0 - w.ph;
  const int ix0 = w.ex0 - static_cast<int>(w.pw), H = static_cast<int>(w.H), W = static_cast<int>(w.W);
  const int xs2 = static_cast<int>(w.xs[2]), xs3 = static_cast<int>(w.xs[3]);
  const bool by_channel = w.x_cl && w.cg > 1;
  const int nsub = by_channel ? T / w.cg : T, sub = by_channel ? tid / w.cg : tid;
  if (sub >= nsub) return;
  for (int ci = by_channel ? tid % w.cg : 0; ci < w.cg; ci += by_channel ? w.cg : 1) {
    const int64_t c = j.c0 + ci;
    const bool live = c < w.C;
    acc_t* dst = smem + w.cg * w.k_elems() + ci * w.x_elems();
    // offsets from the plane's origin, 31-bit (the plan checks); rows may start above it (iy0 < 0)
    const scalar_t* src = w.x + n * w.xs[0] + (live ? c : 0) * w.xs[1];
    const int shift = static_cast<int>(iy0) * xs2 + ix0 * xs3;
    RegionWalk p(sub, nsub, sc, xs2, xs3);
    for (int i0 = sub; i0 < total; i0 += B * nsub) {
      acc_t v[B];
      int at[B];
DCLS_UNROLL
      for (int k = 0; k < B; ++k) {
        const int iy = static_cast<int>(iy0) + p.r, ix = ix0 + p.e;
        v[k] = live && i0 + k * nsub < total && iy >= 0 && iy < H && ix >= 0 && ix < W
                   ? static_cast<acc_t>(src[p.off + shift])
                   : acc_t(0);
        at[k] = p.e * srp + p.r;
        p.next();
      }
DCLS_UNROLL
      for (int k = 0; k < B; ++k)
        if (i0 + k * nsub < total) dst[at[k]] = v[k];
    }
  }
}

// What a thread computes: channel ci of the job, row block b of its band, columns ox0, ox0 + span, ...
struct FmaConvLane {
  int ci, b, ox0;
  bool live;
};
template <typename scalar_t, typename acc_t>
DCLS_HD FmaConvLane fma_conv_lane(const FmaConv<scalar_t, acc_t>& w, const FmaConvJob& j, int tid) {
  FmaConvLane l;
  const int task = (tid / 32) * w.per_warp + (tid % 32) / w.span;
  l.ci = task / w.bj, l.b = task % w.bj, l.ox0 = (tid % 32) % w.span;
  l.live = task < w.cg * w.bj && j.c0 + l.ci < w.C && j.b0 + l.b < w.row_blocks() && l.ox0 < w.Wo;
  return l;
}

// Phase 3 (per image): the thread's RO outputs of each of its columns, from every cell, summed in acc[RO] and
// stored straight to the output, or (w.transposed: one column per thread) kept there for phase 4. Row i of a (block of cells, column) pass is
// staged row b * RO + yc * RY + i; it meets output row r at window row a = i - r of the block. Both loops' loads
// are down staged columns: immediate offsets.
template <int RO, int RY, typename scalar_t, typename acc_t>
DCLS_HD void fma_conv_rows(const FmaConv<scalar_t, acc_t>& w, const FmaConvJob& j, int64_t n, const acc_t* smem,
                           int tid, acc_t* acc) {
  const FmaConvLane l = fma_conv_lane(w, j, tid);
  if (!l.live) return;
  const int64_t c = j.c0 + l.ci, oy0 = (j.b0 + l.b) * RO;
  const int srp = static_cast<int>(w.srp()), kr = w.k_rows(), ew = w.ew, Wo = static_cast<int>(w.Wo);
  const acc_t* kb = smem + l.ci * w.k_elems();
  const acc_t* xb = smem + w.cg * w.k_elems() + l.ci * w.x_elems() + l.b * RO;
  const acc_t bias = w.bias != nullptr ? w.bias[c] : acc_t(0);
  scalar_t* o = w.out + n * w.os[0] + c * w.os[1];
  for (int ox = l.ox0; ox < Wo; ox += w.span) {
DCLS_UNROLL
    for (int r = 0; r < RO; ++r) acc[r] = bias;
    for (int yc = 0; yc < w.ny; ++yc) {
      const acc_t* kc = kb + yc * RY;            // column d at kc + d * kr
      const acc_t* xc = xb + yc * RY + ox * srp;  // staged column ox + d at xc + d * srp
      for (int d = 0; d < ew; ++d, kc += kr, xc += srp) {
        acc_t wv[RY];
DCLS_UNROLL
        for (int a = 0; a < RY; ++a) wv[a] = kc[a];
DCLS_UNROLL
        for (int i = 0; i < RO + RY - 1; ++i) {
          const acc_t xv = xc[i];
DCLS_UNROLL
          for (int r = 0; r < RO; ++r)
            if (i - r >= 0 && i - r < RY) acc[r] += wv[i - r] * xv;
        }
      }
    }
    if (w.transposed) continue;
DCLS_UNROLL
    for (int r = 0; r < RO; ++r)
      if (oy0 + r < w.Ho) o[(oy0 + r) * w.os[2] + ox * w.os[3]] = static_cast<scalar_t>(acc[r]);
  }
}

// Phase 4 (w.transposed, after a barrier: the staged rows are read): the thread's kept outputs into its channel's
// staged region, as (row of the job, column).
template <int RO, typename scalar_t, typename acc_t>
DCLS_HD void fma_conv_keep(const FmaConv<scalar_t, acc_t>& w, const FmaConvJob& j, acc_t* smem, int tid,
                           const acc_t* kept) {
  const FmaConvLane l = fma_conv_lane(w, j, tid);
  if (!l.live) return;
  acc_t* o = smem + w.cg * w.k_elems() + l.ci * w.x_elems() + (l.b * RO) * w.Wo + l.ox0;
DCLS_UNROLL
  for (int r = 0; r < RO; ++r) o[r * w.Wo] = kept[r];
}

// Phase 5 (w.transposed, after a barrier): the job's outputs to global memory, a thread per channel and
// neighbouring threads on neighbouring channels of a pixel (channels_last: runs of cg channels per store).
template <typename scalar_t, typename acc_t>
DCLS_HD void fma_conv_store(const FmaConv<scalar_t, acc_t>& w, const FmaConvJob& j, int64_t n, const acc_t* smem,
                            int tid) {
  const int T = w.threads(), nsub = T / w.cg, sub = tid / w.cg, ci = tid % w.cg;
  const int64_t c = j.c0 + ci, oy0 = j.b0 * w.ro;
  if (sub >= nsub || c >= w.C) return;
  const int Wo = static_cast<int>(w.Wo);
  const int rows = static_cast<int>(std::min<int64_t>(int64_t(w.bj) * w.ro, w.Ho - oy0));
  const acc_t* src = smem + w.cg * w.k_elems() + ci * w.x_elems();
  scalar_t* o = w.out + n * w.os[0] + c * w.os[1] + oy0 * w.os[2];
  RegionWalk p(sub, nsub, Wo, 0, 0);
  for (int i = sub; i < rows * Wo; i += nsub, p.next())
    o[p.r * w.os[2] + p.e * w.os[3]] = static_cast<scalar_t>(src[i]);
}

// The kernel for a shape's output rows per task and window rows per block (acc_t: 32 rows only for float32 sums,
// as the plan chooses).
template <typename acc_t, typename Fn>
auto with_fma_conv_tiles(int ro, int ry, Fn&& fn) {
  auto pick = [&](auto o) {
    constexpr int O = decltype(o)::value;
    switch (ry) {
      case 5: return fn(std::integral_constant<int, O>(), std::integral_constant<int, 5>());
      case 7: return fn(std::integral_constant<int, O>(), std::integral_constant<int, 7>());
      default: return fn(std::integral_constant<int, O>(), std::integral_constant<int, 9>());
    }
  };
  if (ro == 8) return pick(std::integral_constant<int, 8>());
  if constexpr (sizeof(acc_t) > 4) {
    return pick(std::integral_constant<int, 16>());
  } else {
    return ro == 16 ? pick(std::integral_constant<int, 16>()) : pick(std::integral_constant<int, 32>());
  }
}

}  // namespace dcls_convert
