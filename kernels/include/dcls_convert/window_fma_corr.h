// The GPU tap engine's weight and position gradients at stride 1 by scalar FMA: the correlation of the output
// gradient with the input at every window cell, G[dy][dx] = sum over (n, oy, ox) of g[n, oy, ox] *
// x[n, oy + dy - ph, ox + dx - pw], in the accumulation type (float32; float64 for tests) for any input dtype and
// on any GPU, then each tap's corners read from G by the tensor-core correlation's finish (window_corr.h).
//
// Why: the tables' correlation (tiled_corr.h) spends a warp reduction per table entry and runs at 6-11x its
// arithmetic floor on an H200. Here a thread holds an RY x RX block of cells for one output column, RY * RX sums in
// registers, and walks the input rows: per row it loads RX inputs and one new output-gradient value, and
// multiplies the gradient values of its last RY rows (held in registers, the walk unrolled by RY) with the RX
// inputs. 27 FMAs for 4 shared loads at 9 x 3, where the tables' kernels spend several instructions per product.
// The window costs Lh x Lw products per output against the tables' at most 4K, so it pays for dense windows
// (partial's, bloom's, DCLS's after fine-tuning) more than for a fresh DCLS layer with few merged corners. The
// blocks' cells past the reached ones multiply staged zeros: an infinite input or gradient makes NaN reach
// cells it does not touch (and, through them, the gradients of taps there), as in the tensor-core correlation.
//
// Cells: only those a product reaches (rows [ey0, ey1), columns [ex0, ex1): small planes leave the window's rim
// empty), in blocks of RY rows and kFmaRX columns; the blocks' overhang past ey1 or ex1 reads staged zeros or
// cells nobody writes out. Lanes take consecutive output columns (conflict-free loads); outputs narrower than 32
// pack several blocks per warp. A block job is cg channels (a warp group each) or, where a channel has more cell
// blocks than kFmaMaxWarps warps hold, one channel's share of them (splits), over a slab of images; per image,
// bands of input rows: stage the channels' band (inputs as the accumulation type, zero outside the input) and the
// output-gradient rows its cells read (zero outside), synchronise, walk. At the end of the job each cell's lane
// sums are added in a fixed order into the workspace (C, slabs, Lh * Lw + 1; the last value the bias gradient).
// No atomics: run to run identical. The CPU emulation runs this block algorithm over the whole grid.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "dcls_convert/taps_threads.h"

namespace dcls_convert {

constexpr int kFmaRX = 3;           // columns of cells per thread
constexpr int kFmaMinRY = 5;  // rows of cells per thread: 5 to 9
constexpr int kFmaMaxWarps = 12;  // two blocks per SM at up to 80 registers a thread (__launch_bounds__)
constexpr int kFmaMaxThreads = 32 * kFmaMaxWarps;
constexpr int kFmaMaxSplits = 8;
constexpr int kFmaMaxWindow = 64;
constexpr int64_t kFmaSmemTarget = int64_t(96) << 10;  // two blocks per SM where the planes allow
// The whole window is taken where its padded cells are at most kFmaCellsPerEntry per entry the tables could hold
// (4 corners a bilinear tap, 1 a nearest one). An estimate, not a measurement: on an H200 the tables' correlation
// took 0.61 ms at ConvNeXt-T stage 1 (float32, 136 entries a channel), and this kernel's loop issues 35
// instructions per input row for 27 cells, about 0.3-0.4 ms for 18 x 18 cells there: a cell costs about a quarter
// of an entry. The GPU benchmark's "GPU fma wgrad" column is what should set it.
constexpr int64_t kFmaCellsPerEntry = 4;

template <typename scalar_t, typename acc_t>
struct FmaCorr {
  const scalar_t* x = nullptr;
  const scalar_t* g = nullptr;
  acc_t* work = nullptr;       // (C, slabs, values())
  acc_t* grad_bias = nullptr;  // (C) or nullptr: written by the finish
  int64_t N = 0, C = 0, H = 1, W = 1, Ho = 1, Wo = 1, Lh = 1, Lw = 1, ph = 0, pw = 0;
  int64_t xs[4] = {0, 0, 0, 0}, gs[4] = {0, 0, 0, 0};
  int ry = 9;                          // rows of cells per thread (the kernel's RY)
  int ey0 = 0, ex0 = 0, ny = 1, nx = 1;  // cell blocks: rows ey0 + ry * i, columns ex0 + kFmaRX * j
  int span = 32, per_warp = 1;         // lanes per block of cells (a column each), blocks per warp
  int wpc = 1, splits = 1, cg = 1;     // warps per channel (in one split), splits per channel, channels per block
  int band = 1;                        // input rows per band
  int64_t slabs = 1;
  bool ok = false;

  DCLS_HD int units() const { return ny * nx; }
  DCLS_HD int warps() const { return cg * wpc; }
  DCLS_HD int threads() const { return 32 * warps(); }
  DCLS_HD int64_t dy_last() const { return ey0 + int64_t(ny) * ry - 1; }  // the blocks' last row of cells
  // Staged column-major with odd column pitches: a thread's loads down its columns take immediate offsets, and 32
  // lanes on neighbouring columns hit 32 banks.
  DCLS_HD int64_t xe() const { return Wo + int64_t(nx) * kFmaRX - 1; }    // staged input columns
  DCLS_HD int64_t xrp() const { return int64_t(band) | 1; }               // their pitch (band rows)
  DCLS_HD int64_t g_rows() const { return band + int64_t(ny) * ry - 1; }  // staged output-gradient rows per band
  DCLS_HD int64_t grp() const { return g_rows() | 1; }                    // their column pitch
  DCLS_HD int64_t x_elems() const { return xe() * xrp(); }                // per channel: (xe, xrp)
  DCLS_HD int64_t channel_elems() const { return x_elems() + Wo * grp(); }
  DCLS_HD int64_t cells() const { return Lh * Lw; }
  DCLS_HD int64_t values() const { return cells() + 1; }
  DCLS_HD int64_t groups() const { return splits > 1 ? C * splits : (C + cg - 1) / cg; }
  DCLS_HD int64_t blocks() const { return groups() * slabs; }
  DCLS_HD int64_t red_elems() const { return int64_t(threads()) * (ry * kFmaRX + 1); }  // sums, then bias sums
  DCLS_HD int64_t smem_elems() const {
    const int64_t staged = cg * channel_elems();
    return staged > red_elems() ? staged : red_elems();
  }
  int64_t smem_bytes() const { return smem_elems() * int64_t(sizeof(acc_t)); }
};

// The window cells a product reaches: rows [y0, y0 + h), columns [x0, x0 + w). Cell dy meets the input where some
// output row oy has oy + dy - ph in [0, H) (stride 1).
struct ReachedCells {
  int64_t y0, h, x0, w;
};
inline ReachedCells reached_cells(int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t Lh, int64_t Lw, int64_t ph,
                                  int64_t pw) {
  const int64_t y0 = std::max<int64_t>(0, ph - Ho + 1), x0 = std::max<int64_t>(0, pw - Wo + 1);
  return {y0, std::min<int64_t>(Lh, ph + H) - y0, x0, std::min<int64_t>(Lw, pw + W) - x0};
}

// Rows per block of cells for `reached` rows, among those a kernel is compiled for (ascending): the fewest padded
// rows, then the tallest blocks.
inline int rows_per_block(int64_t reached, std::initializer_list<int> compiled) {
  int64_t best = INT64_MAX;
  int ry = 0;
  for (const int r : compiled) {
    const int64_t padded = (reached + r - 1) / r * r;
    if (padded <= best) best = padded, ry = r;
  }
  return ry;
}

// The shape of the correlation (no pointers), or ok = false where it does not apply: stride 1, windows up to
// kFmaMaxWindow per axis with padding inside them, at least kFmaMinRY x kFmaRX cells reached (1-D layers keep the
// tables), at most kFmaCellsPerEntry cells per table entry (`entries`: the most a channel's table could hold),
// and shared memory within max_smem_bytes.
template <typename scalar_t, typename acc_t>
FmaCorr<scalar_t, acc_t> fma_corr_shape(int64_t N, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t Lh,
                                        int64_t Lw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t entries,
                                        int64_t max_smem_bytes) {
  FmaCorr<scalar_t, acc_t> w;
  w.N = N, w.C = C, w.H = H, w.W = W, w.Ho = Ho, w.Wo = Wo, w.Lh = Lh, w.Lw = Lw, w.ph = ph, w.pw = pw;
  if (sh != 1 || sw != 1 || Lh > kFmaMaxWindow || Lw > kFmaMaxWindow || ph > Lh - 1 || pw > Lw - 1 || N * C == 0 ||
      Ho * Wo == 0)
    return w;
  const ReachedCells e = reached_cells(H, W, Ho, Wo, Lh, Lw, ph, pw);
  if (e.h < kFmaMinRY || e.w < kFmaRX) return w;
  w.ry = rows_per_block(e.h, {5, 6, 7, 8, 9});
  w.ey0 = static_cast<int>(e.y0), w.ex0 = static_cast<int>(e.x0);
  w.ny = static_cast<int>((e.h + w.ry - 1) / w.ry), w.nx = static_cast<int>((e.w + kFmaRX - 1) / kFmaRX);
  if (int64_t(w.ny) * w.ry * w.nx * kFmaRX > kFmaCellsPerEntry * entries) return w;
  w.span = 32;
  while (w.span / 2 >= Wo) w.span /= 2;
  w.per_warp = 32 / w.span;
  const int warps_all = (w.units() + w.per_warp - 1) / w.per_warp;
  w.wpc = std::min(warps_all, kFmaMaxWarps);
  w.splits = (warps_all + w.wpc - 1) / w.wpc;
  if (w.splits > kFmaMaxSplits) return w;
  // channels per block and rows per band: all of both that fit kFmaSmemTarget (else the device's limit), fewer
  // channels before fewer rows
  const int cg_max = w.splits > 1 ? 1 : static_cast<int>(std::min<int64_t>(C, kFmaMaxWarps / w.wpc));
  const int64_t per_row = w.xe() + Wo, halo = (int64_t(w.ny) * w.ry - 1) * Wo;
  for (const int64_t budget : {std::min(kFmaSmemTarget, max_smem_bytes), max_smem_bytes}) {
    w.band = static_cast<int>(std::min<int64_t>(H, 1 << 12));
    for (w.cg = cg_max; w.cg > 1 && w.smem_bytes() > budget; --w.cg) {
    }
    if (w.smem_bytes() > budget) {  // one channel: the rows that fit (the odd pitches may take one row more)
      const int64_t rows = (budget / int64_t(sizeof(acc_t)) - halo) / per_row;
      w.band = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(w.band, rows)));
      while (w.band > 1 && w.smem_bytes() > budget) --w.band;
    }
    if (w.smem_bytes() <= budget) break;
  }
  w.ok = w.smem_bytes() <= max_smem_bytes;
  return w;
}

struct FmaCorrJob {
  int64_t c0, slab, n_begin, n_end;  // first channel, slab, its images [n_begin, n_end)
  int split;                         // which share of the channel's cell blocks (0 without splits)
};
template <typename scalar_t, typename acc_t>
DCLS_HD FmaCorrJob fma_corr_job(const FmaCorr<scalar_t, acc_t>& w, int64_t bid) {
  FmaCorrJob j;
  const int64_t group = bid % w.groups();
  j.slab = bid / w.groups();
  j.c0 = w.splits > 1 ? group / w.splits : group * w.cg;
  j.split = w.splits > 1 ? static_cast<int>(group % w.splits) : 0;
  j.n_begin = j.slab * w.N / w.slabs;
  j.n_end = (j.slab + 1) * w.N / w.slabs;
  return j;
}

// What a thread walks: channel ci of the block, cell block `unit` (first cell dy0, dx0), output columns ox0,
// ox0 + span, ...; live = false for lanes past the output's width or the channel's blocks.
struct FmaLane {
  int ci, unit, ox0, dy0, dx0;
  bool live;
};
template <typename scalar_t, typename acc_t>
DCLS_HD FmaLane fma_lane(const FmaCorr<scalar_t, acc_t>& w, const FmaCorrJob& j, int tid) {
  FmaLane l;
  const int warp = tid / 32, lane = tid % 32;
  l.ci = warp / w.wpc;
  l.unit = (j.split * w.wpc + warp % w.wpc) * w.per_warp + lane / w.span;
  l.ox0 = lane % w.span;
  l.dy0 = w.ey0 + (l.unit / w.nx) * w.ry;
  l.dx0 = w.ex0 + (l.unit % w.nx) * kFmaRX;
  l.live = l.unit < w.units() && l.ox0 < w.Wo && j.c0 + l.ci < w.C;
  return l;
}

// A thread's walk over the elements sub, sub + step, ... of a region `width` elements wide: the row and column of
// each, and its offset r * rs + e * es in a source with row stride rs and element stride es, without a division
// or a 64-bit product per element (the plan checks that a plane's offsets fit 31 bits).
struct RegionWalk {
  int r, e, dr, de, width, off, doff, wrap;
  DCLS_HD RegionWalk(int sub, int step, int width_, int rs, int es)
      : r(sub / width_), e(sub % width_), dr(step / width_), de(step % width_), width(width_) {
    off = r * rs + e * es;
    doff = dr * rs + de * es;
    wrap = rs - width * es;
  }
  DCLS_HD void next() {
    r += dr, e += de, off += doff;
    if (e >= width) e -= width, ++r, off += wrap;
  }
};

constexpr int kFmaStageLoads = 8;  // global loads a staging thread keeps in flight
// Rows past its region a staging walk may step (its last batch of loads, predicated off): the plans check that
// the offsets of a plane with this margin above and below fit 31 bits.
constexpr int64_t kFmaWalkMargin = 2 * kFmaMaxWindow + kFmaStageLoads * kFmaMaxThreads;

// Phase 1 (per band): channel ci's input rows iy0 .. iy0 + band - 1 (columns ex0 - pw ..), then the output-gradient
// rows from iy0 + ph - dy_last() on, column-major (read along rows, coalesced in NCHW); the values of rows from `lo` on (not yet counted by an earlier band) go to
// the thread's bias sum (split 0 only: every split stages them). kFmaStageLoads loads in flight per thread.
template <typename scalar_t, typename acc_t>
DCLS_HD void fma_corr_stage(const FmaCorr<scalar_t, acc_t>& w, const FmaCorrJob& j, int64_t n, int64_t iy0, int64_t lo,
                            acc_t* smem, int tid, acc_t& bias) {
  constexpr int B = kFmaStageLoads;
  const int nsub = 32 * w.wpc, ci = tid / nsub, sub = tid % nsub;
  const int64_t c = j.c0 + ci;
  const bool live = c < w.C;
  acc_t* xb = smem + ci * w.channel_elems();
  acc_t* gb = xb + w.x_elems();
  const int rows = static_cast<int>(std::min<int64_t>(w.band, w.H - iy0)), xe = static_cast<int>(w.xe());
  const int xrp = static_cast<int>(w.xrp()), grp = static_cast<int>(w.grp());
  const int x_total = rows * xe, ix0 = w.ex0 - static_cast<int>(w.pw), W = static_cast<int>(w.W);
  const int xs2 = static_cast<int>(w.xs[2]), xs3 = static_cast<int>(w.xs[3]), x_shift = ix0 * xs3;
  const scalar_t* xsrc = w.x + n * w.xs[0] + (live ? c : 0) * w.xs[1] + iy0 * w.xs[2];
  RegionWalk p(sub, nsub, xe, xs2, xs3);
  for (int i0 = sub; i0 < x_total; i0 += B * nsub) {
    acc_t v[B];
    int at[B];
DCLS_UNROLL
    for (int k = 0; k < B; ++k) {
      const int ix = p.e + ix0;
      v[k] = live && i0 + k * nsub < x_total && ix >= 0 && ix < W ? static_cast<acc_t>(xsrc[p.off + x_shift]) : acc_t(0);
      at[k] = p.e * xrp + p.r;
      p.next();
    }
DCLS_UNROLL
    for (int k = 0; k < B; ++k)
      if (i0 + k * nsub < x_total) xb[at[k]] = v[k];
  }
  const int Wo = static_cast<int>(w.Wo), g_total = static_cast<int>(w.g_rows()) * Wo;
  const int oy0 = static_cast<int>(iy0 + w.ph - w.dy_last()), Ho = static_cast<int>(w.Ho);
  const int gs2 = static_cast<int>(w.gs[2]), gs3 = static_cast<int>(w.gs[3]), g_shift = oy0 * gs2;
  const scalar_t* gsrc = w.g + n * w.gs[0] + (live ? c : 0) * w.gs[1];
  const bool count = j.split == 0;
  RegionWalk q(sub, nsub, Wo, gs2, gs3);
  for (int i0 = sub; i0 < g_total; i0 += B * nsub) {
    acc_t v[B];
    int at[B];
    bool fresh[B];
DCLS_UNROLL
    for (int k = 0; k < B; ++k) {
      const int oy = oy0 + q.r;
      v[k] = live && i0 + k * nsub < g_total && oy >= 0 && oy < Ho ? static_cast<acc_t>(gsrc[q.off + g_shift]) : acc_t(0);
      at[k] = q.e * grp + q.r;
      fresh[k] = count && oy >= lo;
      q.next();
    }
DCLS_UNROLL
    for (int k = 0; k < B; ++k) {
      if (i0 + k * nsub < g_total) gb[at[k]] = v[k];
      if (fresh[k]) bias += v[k];
    }
  }
}

// Phase 2 (per band): the thread's walk over the band's input rows, acc[a * kFmaRX + b] the sum of cell
// (dy0 + a, dx0 + b). gw[t % RY] holds the output-gradient value of the thread's column in the row that meets
// input row t of the band at cell row dy0 (row t + dy_last() - dy0 of the staged rows); cell row dy0 + a takes
// the one loaded a steps earlier.
template <int RY, typename scalar_t, typename acc_t>
DCLS_HD void fma_corr_rows(const FmaCorr<scalar_t, acc_t>& w, const FmaCorrJob& j, const acc_t* smem, int tid,
                           int64_t iy0, acc_t* acc) {
  const FmaLane l = fma_lane(w, j, tid);
  if (!l.live) return;
  const int rows = static_cast<int>(std::min<int64_t>(w.band, w.H - iy0));
  const int Wo = static_cast<int>(w.Wo), xrp = static_cast<int>(w.xrp()), grp = static_cast<int>(w.grp());
  const acc_t* xb = smem + l.ci * w.channel_elems();
  const acc_t* gb = xb + w.x_elems();
  for (int ox = l.ox0; ox < Wo; ox += w.span) {
    const acc_t* xr[kFmaRX];  // the thread's staged input columns
DCLS_UNROLL
    for (int b = 0; b < kFmaRX; ++b) xr[b] = xb + (ox + l.dx0 - w.ex0 + b) * xrp;
    const acc_t* gr = gb + ox * grp + (w.dy_last() - l.dy0);  // its output-gradient column, at input row 0
    acc_t gw[RY];
    gw[0] = acc_t(0);
DCLS_UNROLL
    for (int a = 1; a < RY; ++a) gw[RY - a] = gr[-a];
    auto step = [&](int t, int u) {  // input row t of the band, t % RY == u
      gw[u] = gr[t];
      acc_t xv[kFmaRX];
DCLS_UNROLL
      for (int b = 0; b < kFmaRX; ++b) xv[b] = xr[b][t];
DCLS_UNROLL
      for (int a = 0; a < RY; ++a) {
        const acc_t gv = gw[(u - a + RY) % RY];
DCLS_UNROLL
        for (int b = 0; b < kFmaRX; ++b) acc[a * kFmaRX + b] += gv * xv[b];
      }
    };
    int t = 0;
    for (; t + RY <= rows; t += RY) {
DCLS_UNROLL
      for (int u = 0; u < RY; ++u) step(t + u, u);
    }
DCLS_UNROLL
    for (int u = 0; u < RY; ++u)
      if (t + u < rows) step(t + u, u);
  }
}

// Phase 3 (end of the block job): the thread's sums to the reduction area, cell-major (red[k * threads + tid]),
// its bias sum after them.
template <int RY, typename scalar_t, typename acc_t>
DCLS_HD void fma_corr_keep(const FmaCorr<scalar_t, acc_t>& w, acc_t* smem, int tid, const acc_t* acc, acc_t bias) {
  const int T = w.threads();
DCLS_UNROLL
  for (int k = 0; k < RY * kFmaRX; ++k) smem[k * T + tid] = acc[k];
  smem[RY * kFmaRX * T + tid] = bias;
}

// Phase 4: each cell of each channel from its block's lanes in lane order (split 0 also writes the cells no
// block covers, zero, and the bias sums of the channel's threads in thread order), to the workspace.
template <typename scalar_t, typename acc_t>
DCLS_HD void fma_corr_write(const FmaCorr<scalar_t, acc_t>& w, const FmaCorrJob& j, const acc_t* smem, int tid) {
  const int T = w.threads(), in_split = w.wpc * w.per_warp;
  const int64_t V = w.values(), cells = w.cells();
  for (int64_t i = tid; i < int64_t(w.cg) * V; i += T) {
    const int ci = static_cast<int>(i / V);
    const int64_t cell = i % V, c = j.c0 + ci;
    if (c >= w.C) continue;
    acc_t s = acc_t(0);
    if (cell == cells) {
      if (j.split != 0) continue;
      for (int t = ci * 32 * w.wpc; t < (ci + 1) * 32 * w.wpc; ++t) s += smem[w.ry * kFmaRX * T + t];
    } else {
      const int64_t yr = cell / w.Lw - w.ey0, xr = cell % w.Lw - w.ex0;
      if (yr >= 0 && yr < int64_t(w.ny) * w.ry && xr >= 0 && xr < int64_t(w.nx) * kFmaRX) {
        const int unit = static_cast<int>((yr / w.ry) * w.nx + xr / kFmaRX) - j.split * in_split;
        if (unit < 0 || unit >= in_split) continue;  // another split's
        const int k = static_cast<int>((yr % w.ry) * kFmaRX + xr % kFmaRX);
        const int t0 = (ci * w.wpc + unit / w.per_warp) * 32 + (unit % w.per_warp) * w.span;
        for (int t = t0; t < t0 + w.span; ++t) s += smem[k * T + t];
      } else if (j.split != 0) {
        continue;
      }
    }
    w.work[(c * w.slabs + j.slab) * V + cell] = s;
  }
}

// The kernel for a shape's rows of cells per thread.
template <typename Fn>
auto with_fma_rows(int ry, Fn&& fn) {
  switch (ry) {
    case 5: return fn(std::integral_constant<int, 5>());
    case 6: return fn(std::integral_constant<int, 6>());
    case 7: return fn(std::integral_constant<int, 7>());
    case 8: return fn(std::integral_constant<int, 8>());
    default: return fn(std::integral_constant<int, 9>());
  }
}

}  // namespace dcls_convert
