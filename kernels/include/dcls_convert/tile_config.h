// The GPU tap engine's tiles (see tiled_taps.h): launch geometry (TileConfig: threads, outputs per thread, staged
// planes, bank-conflict-free pitch) and the staging of input tiles with their halo into shared memory.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "dcls_convert/taps_threads.h"

namespace dcls_convert {

// Launch geometry shared by the CUDA launchers and the emulation. A block holds `groups` groups of
// tw x thread_rows threads; a group computes one plane tile of (thread_rows * RY) x tw outputs. `planes`
// planes are staged per block (a multiple of groups; more than groups for channels_last inputs, so that
// staging reads neighbouring channels together).
struct TileConfig {
  bool ok = false;
  int ry = 8, tw = 32, thread_rows = 1, groups = 1, planes = 1, threads = 32;
  int in_h = 0, in_w = 0, pitch = 0, plane_stride = 0;  // staged region per plane, in elements
  int64_t tiles_y = 1, tiles_x = 1;
  DCLS_HD int th() const { return thread_rows * ry; }
};

constexpr int kTileThreads = 256;
constexpr int kCorrGroup = 16;                    // entries per warp reduction (32 sums)
constexpr int64_t kMaxTileSmemBytes = 96 * 1024;  // keeps two blocks per SM on current GPUs
// Extra planes staged together (channels_last) only while four blocks still fit an SM's 228 KiB: measured on an
// H200, 7 planes at 94 KiB (two blocks) made bfloat16 channels_last 1.45x slower than float32 NCHW.
constexpr int64_t kExtraPlanesSmemBytes = 56 * 1024;

// Bank-conflict-aware padding: the first warp's base addresses (thread (group, row, lane) at
// group * plane_stride + row * ry * sh * pitch + lane * sw) should fall in distinct banks.
inline int bank_spread(const TileConfig& t, int64_t sh, int64_t sw) {
  bool used[32] = {};
  int distinct = 0;
  for (int lane = 0; lane < 32 && lane < t.threads; ++lane) {
    const int per_plane = t.tw * t.thread_rows;
    const int g = lane / per_plane, r = (lane % per_plane) / t.tw, x = lane % t.tw;
    const int64_t addr = g * t.plane_stride + r * t.ry * sh * t.pitch + x * sw;
    const int bank = static_cast<int>(addr % 32);
    if (!used[bank]) ++distinct;
    used[bank] = true;
  }
  return distinct;
}

// Rows per thread the kernels are compiled for: 8, 7 (planes of 7 * 2^k rows, as every stage of a 224-pixel
// network has, fit whole tiles without a wasted row) and 1 (planes under 6 rows).
template <typename F>
decltype(auto) with_ry(int ry, F&& f) {
  if (ry == 8) return f(std::integral_constant<int, 8>{});
  if (ry == 7) return f(std::integral_constant<int, 7>{});
  return f(std::integral_constant<int, 1>{});
}

// Row pitches (staged elements between rows) the forward kernels are also compiled for, per rows per thread: the
// ones ConvNeXt-T's stages get at window 17 (fitted 28-, 14- and 7-wide tiles of inputs not in channels_last: 68,
// 30, 23; channels_last: 48, 24). With the pitch a constant an entry's shared loads take immediate offsets: 7
// address instructions fewer per two-row entry (a small kernel's SASS: 78 -> 64 per two entries). Any other
// pitch runs the kernel compiled for a pitch read at run time (P = 0); the results are the same to the bit.
template <typename F>
decltype(auto) with_ry_pitch(int ry, int pitch, F&& f) {
  return with_ry(ry, [&](auto ry_c) -> decltype(auto) {
    using P0 = std::integral_constant<int, 0>;
    constexpr int RY = decltype(ry_c)::value;
    if constexpr (RY == 7) {
      if (pitch == 23) return f(ry_c, std::integral_constant<int, 23>{});
      if (pitch == 24) return f(ry_c, std::integral_constant<int, 24>{});
      if (pitch == 30) return f(ry_c, std::integral_constant<int, 30>{});
      if (pitch == 48) return f(ry_c, std::integral_constant<int, 48>{});
      if (pitch == 68) return f(ry_c, std::integral_constant<int, 68>{});
    } else if constexpr (RY == 8) {
      if (pitch == 48) return f(ry_c, std::integral_constant<int, 48>{});
    }
    return f(ry_c, P0{});
  });
}

// One candidate configuration: ry rows per thread over tiles tw wide. whole_warp_planes: a plane of 32 threads or
// more gets its rows rounded up to whole warps and a smaller one must divide a warp (tw a power of two), so that
// no warp mixes planes unless they are small; otherwise warps may straddle planes, which the kernels allow only
// where a block's planes (per round) are one channel's: the correlation always, the forward by image groups.
inline TileConfig tile_config_for(int ry, int tw, bool whole_warp_planes, int64_t out_h, int64_t out_w, int64_t Lh,
                                  int64_t Lw, int64_t sh, int64_t sw, bool extra_row, int min_planes,
                                  int64_t elem_bytes) {
  TileConfig t;
  t.ry = ry;
  t.tw = tw;
  const int64_t rows_needed = (out_h + t.ry - 1) / t.ry;
  const int max_rows = static_cast<int>(std::min<int64_t>(rows_needed, kTileThreads / t.tw));
  // power-of-two widths: halving the rows (as first measured); fitted widths: every row count, since only some
  // make whole warps (28 x 8 does, 28 x 7 does not)
  for (int rows = max_rows; rows >= 1; rows = whole_warp_planes ? t.thread_rows / 2 : rows - 1) {
    t.thread_rows = rows;
    // Whole warps only (the correlation's warp reduction needs all 32 lanes).
    if (whole_warp_planes && t.tw * t.thread_rows >= 32) {
      const int warp_rows = 32 / t.tw;
      t.thread_rows = (t.thread_rows + warp_rows - 1) / warp_rows * warp_rows;
    }
    const int per_plane = t.tw * t.thread_rows;
    t.groups = kTileThreads / per_plane;
    while (t.groups > 0 && (t.groups * per_plane) % 32 != 0) --t.groups;
    if (t.groups == 0) continue;  // no whole number of warps within the block size
    t.threads = t.groups * per_plane;
    const int64_t in_h = (t.th() - 1) * sh + Lh + (extra_row ? 1 : 0), in_w = (t.tw - 1) * sw + Lw;
    if (in_h * in_w > (int64_t(1) << 24)) continue;
    t.in_h = static_cast<int>(in_h);
    t.in_w = static_cast<int>(in_w);
    // (the padding search below is the costly part: skip it where even unpadded planes exceed shared memory)
    if (int64_t(t.groups) * in_h * in_w * elem_bytes > kMaxTileSmemBytes) continue;
    int planes = t.groups;
    while (planes < min_planes) planes += t.groups;
    // (the padding below only grows plane_stride, so the check runs again after it)
    // Smallest padding (up to one bank row each) that spreads the first warp over the most banks.
    int best = -1;
    for (int dp = 0; dp < 32 && best < 32; ++dp) {
      for (int ds = 0; ds < 32 && best < 32; ++ds) {
        TileConfig c = t;
        c.pitch = t.in_w + dp;
        c.plane_stride = t.in_h * c.pitch + ds;
        const int spread = bank_spread(c, sh, sw);
        if (spread > best) {
          best = spread;
          t.pitch = c.pitch;
          t.plane_stride = c.plane_stride;
        }
      }
    }
    for (; planes > t.groups; planes -= t.groups) {
      if (int64_t(planes) * t.plane_stride * elem_bytes <= kExtraPlanesSmemBytes) break;
    }
    if (int64_t(planes) * t.plane_stride * elem_bytes > kMaxTileSmemBytes) planes = 0;
    if (planes < t.groups) continue;
    t.planes = planes;
    t.tiles_y = (out_h + t.th() - 1) / t.th();
    t.tiles_x = (out_w + t.tw - 1) / t.tw;
    t.ok = true;
    return t;
  }
  t.ok = false;
  return t;
}

// Tile widths: a power of two (8, 16 or 32) and, where it differs, the width that splits the plane into equal
// tiles of at most 32 columns (56 -> 2 x 28, 14, 7): no column computed past the plane, but its planes straddle
// warps.
inline int pow2_tile_width(int64_t out_w) { return out_w <= 8 ? 8 : (out_w <= 16 ? 16 : 32); }
inline int fitted_tile_width(int64_t out_w) {
  const int64_t tiles = (std::max<int64_t>(out_w, 1) + 31) / 32;
  return static_cast<int>((out_w + tiles - 1) / tiles);
}

// Rows per thread: 1 for planes under 6 rows, else 8 and 7, each tried.
inline int ry_candidates(int64_t out_h, int ry[2]) {
  if (out_h < 6) {
    ry[0] = 1;
    return 1;
  }
  ry[0] = 8;
  ry[1] = 7;
  return 2;
}

// Shared-memory operations per thread and staged cell, the unit of the plans' costs: a thread loads ry + 1 staged
// values per table entry (entries: about the taps' count, K for on-grid taps, up to 2K), and staging a cell
// costs a clearing store, a load and a store.
inline double tile_work(const TileConfig& t, int64_t K, int64_t thread_rounds, int64_t staged_planes) {
  return double(thread_rounds) * t.threads * double(K) * (t.ry + 1) + 3.0 * double(staged_planes) * t.in_h * t.in_w;
}

// out_h x out_w outputs per plane from a window Lh x Lw at stride (sh, sw); extra_row: one more staged row
// (the correlation reads row dy + 1 of every entry). min_planes: planes to stage together (channels_last).
// fitted: whether to try fitted tile widths too (their planes may straddle warps). cost(config): the plan's
// work for a candidate (tile_work, idle rows and slots included; negative: refused): the cheapest wins, the
// first candidate (8 rows, power-of-two width, as measured first) on a tie. first_only: that candidate alone.
template <typename Cost>
TileConfig choose_tile_config(int64_t out_h, int64_t out_w, int64_t Lh, int64_t Lw, int64_t sh, int64_t sw,
                              bool extra_row, int min_planes, int64_t elem_bytes, bool fitted, bool first_only,
                              Cost cost) {
  int rys[2];
  const int n_ry = ry_candidates(out_h, rys);
  const int tw_pow2 = pow2_tile_width(out_w), tw_fit = fitted_tile_width(out_w);
  TileConfig best;
  double best_cost = 0;
  for (int w = 0; w < (fitted && !first_only && tw_fit != tw_pow2 ? 2 : 1); ++w) {
    for (int i = 0; i < (first_only ? 1 : n_ry); ++i) {
      const TileConfig t = tile_config_for(rys[i], w == 0 ? tw_pow2 : tw_fit, w == 0, out_h, out_w, Lh, Lw, sh, sw,
                                           extra_row, min_planes, elem_bytes);
      if (!t.ok) continue;
      const double c = cost(t);
      if (c < 0) continue;  // refused by the caller
      if (!best.ok || c < best_cost) {
        best = t;
        best_cost = c;
      }
    }
  }
  return best;
}

// A plane smaller than a warp shares the warp with other planes. In the forward they would be other channels',
// whose tables differ (the warp runs through every lane's entries, reading several tables at once), so when the
// batch allows, the forward stages this many images of each of its channels instead: a warp's groups are then one
// channel's planes, the entries the same for all its lanes. Groups and planes are multiples of it (whole warps).
// Planes straddling warps take images = groups (every group of a round one channel's) where the batch has that
// many; else a fitted width is refused (0: the power-of-two candidate runs instead), while a power-of-two width
// (8 x 3 threads) keeps its warps mixing channels as the first tiles did: slower, never wrong.
inline int forward_images(const TileConfig& t, int64_t N) {
  const int per_plane = t.tw * t.thread_rows;
  if (!t.ok || per_plane % 32 == 0) return 1;
  if (32 % per_plane == 0) return N >= 32 / per_plane ? 32 / per_plane : 1;
  if (N >= t.groups) return t.groups;
  return (t.tw & (t.tw - 1)) == 0 ? 1 : 0;
}

// Staging, in two phases with a barrier between: zero the staged planes (padding, and whatever lies outside the
// input), then load the part of each plane that lies inside the input.
template <typename acc_t>
DCLS_HD void stage_clear(acc_t* smem, int64_t n, int tid, int threads) {
  for (int64_t i = tid; i < n; i += threads) smem[i] = acc_t(0);
}

// Rows [r0, r1) and columns [q0, q1) of a staged plane with origin (y0, x0) that lie inside an H x W input.
struct StageRect {
  int r0, r1, q0, q1;
};
DCLS_HD int clamp_int(int64_t v, int lo, int hi) { return static_cast<int>(v < lo ? lo : (v > hi ? hi : v)); }
DCLS_HD StageRect stage_rect(int64_t y0, int64_t x0, int in_h, int in_w, int64_t H, int64_t W) {
  StageRect r;
  r.r0 = clamp_int(-y0, 0, in_h);
  r.r1 = clamp_int(H - y0, r.r0, in_h);
  r.q0 = clamp_int(-x0, 0, in_w);
  r.q1 = clamp_int(W - x0, r.q0, in_w);
  return r;
}

// Thread tid of `threads` visits its share of rectangle R of `planes` planes, f(p, r, q) per element. The fastest
// index runs across threads (channels for channels_last, so a warp touches a run of neighbouring channels; else
// columns), the others advance without divisions.
template <typename F>
DCLS_HD void for_each_staged(int planes, StageRect R, bool channel_fastest, int tid, int threads, F&& f) {
  const int rows = R.r1 - R.r0, cols = R.q1 - R.q0;
  if (rows <= 0 || cols <= 0 || planes <= 0) return;
  const int nf = channel_fastest ? planes : cols;
  const int lanes = nf < threads ? nf : threads, per = threads / lanes;
  if (tid >= lanes * per) return;
  const int n_mid = channel_fastest ? cols : rows, n_slow = channel_fastest ? rows : planes;
  int mid = tid / lanes, slow = 0;
  while (mid >= n_mid) {
    mid -= n_mid;
    ++slow;
  }
  while (slow < n_slow) {
    for (int fi = tid % lanes; fi < nf; fi += lanes) {
      const int p = channel_fastest ? fi : slow;
      f(p, R.r0 + (channel_fastest ? slow : mid), R.q0 + (channel_fastest ? mid : fi));
    }
    mid += per;
    while (mid >= n_mid) {
      mid -= n_mid;
      ++slow;
    }
  }
}

// Staging: element (p, r, q) of the staged planes comes from src[p * cs + (y0 + r) * ys + (x0 + q) * xs].
template <typename scalar_t, typename acc_t>
DCLS_HD void stage_planes(acc_t* smem, int pitch, int plane_stride, const scalar_t* src, int64_t cs, int64_t ys,
                          int64_t xs, int64_t y0, int64_t x0, int planes, StageRect R, bool channel_fastest, int tid,
                          int threads) {
  for_each_staged(planes, R, channel_fastest, tid, threads, [&](int p, int r, int q) {
    smem[p * plane_stride + r * pitch + q] = static_cast<acc_t>(src[p * cs + (y0 + r) * ys + (x0 + q) * xs]);
  });
}

// The same staging with several loads in flight per thread (the default; TiledConv::batched, TiledCorr::batched):
// a thread issues kStageBatch loads before it stores them. Staging waits on global memory, and one load in flight
// per thread left that wait exposed (measured on an H200 in a sibling kernel: 4 loads in flight made the tap ops
// 7 % faster). Eight: a block of bfloat16 channels_last stages 3 planes of 80 x 48 cells at ConvNeXt-T's stage 1,
// 45 per thread. As in for_each_staged, the index fastest in the source's memory runs across threads (channels
// for channels_last, else columns); a thread keeps its fast index and walks the others (and its offsets) by
// constant steps, without divisions. Kept out of line (DCLS_HD_CALL): inlined, its setup was hoisted out of the
// kernels' loops and made them spill; out of line, the forward saves a few registers around the call (8-24 bytes
// of local memory per thread, outside its loops).
constexpr int kStageBatch = 8;

// Whether a staging call of `planes` planes over R by `threads` threads runs batched (when the plan allows it):
// with fewer than 4 elements per thread the batches stay empty and the out-of-line call only costs (H200,
// bfloat16 channels_last 64x768x7x7, 1.5 per thread: forward 0.102 ms batched, 0.097 with one load in flight;
// every plan with 6 or more per thread ran faster batched).
DCLS_HD bool stage_batched(bool allowed, const StageRect& R, int planes, int threads) {
  return allowed && int64_t(planes) * (R.r1 - R.r0) * (R.q1 - R.q0) >= int64_t(4) * threads;
}

template <typename scalar_t, typename acc_t>
DCLS_HD_CALL void stage_planes_batched(acc_t* smem, int pitch, int plane_stride, const scalar_t* src, int64_t cs,
                                       int64_t ys, int64_t xs, int64_t y0, int64_t x0, int planes, StageRect R,
                                       bool channel_fastest, int tid, int threads) {
  const bool cf = channel_fastest;
  const int rows = R.r1 - R.r0, cols = R.q1 - R.q0;
  const int nf = cf ? planes : cols, n_mid = cf ? cols : rows, n_slow = cf ? rows : planes;
  if (nf <= 0 || n_mid <= 0 || n_slow <= 0) return;
  const int lanes = nf < threads ? nf : threads, per = threads / lanes;
  if (tid >= lanes * per) return;
  const int per_mid = per % n_mid, per_slow = per / n_mid;
  // staged and source strides of the fast, middle and slow indices; steps of the offsets per cell and per wrap of
  // the middle index
  const int sf = cf ? plane_stride : 1, s_mid = cf ? 1 : pitch, s_slow = cf ? pitch : plane_stride;
  const int64_t gf = cf ? cs : xs, g_mid = cf ? xs : ys, g_slow = cf ? ys : cs;
  const int step_at = per_mid * s_mid + per_slow * s_slow, wrap_at = s_slow - n_mid * s_mid;
  const int64_t step_off = per_mid * g_mid + per_slow * g_slow, wrap_off = g_slow - n_mid * g_mid;
  const scalar_t* origin = src + ((y0 + R.r0) * ys + (x0 + R.q0) * xs);  // the rectangle's first cell
  acc_t* first = smem + (R.r0 * pitch + R.q0);
  const int mid0 = (tid / lanes) % n_mid, slow0 = tid / lanes / n_mid;  // the thread's first cell
  for (int f = tid % lanes; f < nf; f += lanes) {
    const scalar_t* from = origin + f * gf;
    acc_t* to = first + f * sf;
    int mid = mid0, slow = slow0;
    int at = mid * s_mid + slow * s_slow;
    int64_t off = mid * g_mid + slow * g_slow;
    while (slow < n_slow) {
      acc_t v[kStageBatch];
      int to_at[kStageBatch];
DCLS_UNROLL
      for (int k = 0; k < kStageBatch; ++k) {
        to_at[k] = -1;
        v[k] = acc_t(0);
        if (slow < n_slow) {
          to_at[k] = at;
          v[k] = static_cast<acc_t>(from[off]);
          mid += per_mid;
          slow += per_slow;
          at += step_at;
          off += step_off;
          if (mid >= n_mid) {
            mid -= n_mid;
            ++slow;
            at += wrap_at;
            off += wrap_off;
          }
        }
      }
DCLS_UNROLL
      for (int k = 0; k < kStageBatch; ++k)
        if (to_at[k] >= 0) to[to_at[k]] = v[k];
    }
  }
}

// A staging call, batched where the plan allows it and the call has the elements for it (stage_batched), else one
// load at a time: the same cells staged either way.
template <typename scalar_t, typename acc_t>
DCLS_HD void stage_planes_any(bool batched, acc_t* smem, int pitch, int plane_stride, const scalar_t* src, int64_t cs,
                              int64_t ys, int64_t xs, int64_t y0, int64_t x0, int planes, StageRect R,
                              bool channel_fastest, int tid, int threads) {
  if (stage_batched(batched, R, planes, threads))
    stage_planes_batched(smem, pitch, plane_stride, src, cs, ys, xs, y0, x0, planes, R, channel_fastest, tid,
                         threads);
  else
    stage_planes(smem, pitch, plane_stride, src, cs, ys, xs, y0, x0, planes, R, channel_fastest, tid, threads);
}

// The reverse, for output tiles kept in shared memory: element (p, r, q) goes to dst[p * cs + (y0 + r) * ys +
// (x0 + q) * xs].
template <typename scalar_t, typename acc_t>
DCLS_HD void unstage_planes(const acc_t* smem, int pitch, int plane_stride, scalar_t* dst, int64_t cs, int64_t ys,
                            int64_t xs, int64_t y0, int64_t x0, int planes, StageRect R, bool channel_fastest,
                            int tid, int threads) {
  for_each_staged(planes, R, channel_fastest, tid, threads, [&](int p, int r, int q) {
    dst[p * cs + (y0 + r) * ys + (x0 + q) * xs] = static_cast<scalar_t>(smem[p * plane_stride + r * pitch + q]);
  });
}

}  // namespace dcls_convert
