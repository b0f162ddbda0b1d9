// The GPU tap engine's block algorithms, written once for the CUDA kernels and for the CPU emulation that
// runs them block by block and phase by phase in tests.
//
// Per channel, the taps become a short table of entries (tap_tables): an entry is a window column dx and two
// vertically adjacent window rows dy, dy + 1 with their merged weights c0, c1 (c1 = 0: one row). Bilinear taps
// give two such entries each (their two columns), on-grid taps one single-row entry; coincident entries merge
// and zero entries are dropped.
//
// Forward (tiled_forward_*): a block stages its planes' input tile plus halo in shared memory once, then each
// thread computes RY vertically adjacent outputs of one column in registers: per entry RY + 1 shared loads
// (RY for a single row) and 2 RY multiply-adds. Lanes of a warp own neighbouring columns, and the tile pitch is
// padded so that a warp's loads hit distinct banks. The input gradient at stride 1 is the same forward run on
// the output gradient with the mirrored table.
//
// Weight and position gradients (tiled_corr_*): S[c, e, r] = sum over (n, oy, ox) of grad_out times the input
// under window cell (dy_e + r, dx_e). A block owns one channel and a slab of (image, tile) jobs; each thread
// multiplies its RY output gradients with the staged input, 16 entries (32 sums) at a time, then the warp
// transposes and reduces those 32 sums in 31 exchanges (lane l ends with sum l), added to the warp's row of
// a shared array; each thread also sums its output gradients (the bias gradient: one more value per warp).
// Blocks write their sums (warps added in order) to a workspace that a second kernel sums over slabs in a fixed
// order: no atomics anywhere, results are identical run to run.
#pragma once

#include <algorithm>
#include <cstdint>

#include "dcls_convert/taps_threads.h"

namespace dcls_convert {

template <typename acc_t>
struct TapEntry {
  int dy, dx;
  acc_t c0, c1;
};

enum TableKind : int { kForwardTable = 0, kMirroredTable = 1, kCornerTable = 2 };

// The input gradient at stride s splits into s phases per axis: input rows r, r + s, r + 2s, ... (phase r) are fed
// by the window rows d = r + p (mod s) alone, each reading the output gradient at a whole offset (r + p - d) / s.
// A phase is then a stride-1 forward over the output gradient (with that phase's mirrored table) whose outputs
// land s apart in the input gradient. At stride 1 there is one phase: the forward flipped, padding L - 1 - p.
struct PhaseAxis {
  int64_t first = 0, last = -1;              // the phase's window offsets first, first + s, ..., last (none: last < 0)
  int64_t window = 1, padding = 0, out = 0;  // its stride-1 forward: window, padding, outputs (input positions)
};
// Axis of window L, stride s, padding p, phase r, over an input of `in` positions.
DCLS_HD PhaseAxis phase_axis(int64_t L, int64_t s, int64_t p, int64_t r, int64_t in) {
  PhaseAxis q;
  q.first = (r + p) % s;
  q.out = in > r ? (in - r + s - 1) / s : 0;
  if (q.first >= L) return q;  // no window offset feeds this phase: its outputs are zeros
  q.last = q.first + (L - 1 - q.first) / s * s;
  q.window = (q.last - q.first) / s + 1;
  q.padding = (q.last - r - p) / s;  // exact (last = r + p mod s), negative when the phase starts past its reads
  return q;
}
constexpr int64_t kMaxPhases = 16;  // sh * sw phases at most (4x4, 8x2, 16x1; more: the gather kernel)

// The tables one launch builds (the backward: every phase's mirrored table and the corner table in one launch).
constexpr int kMaxTableBuilds = kMaxPhases + 1;
template <typename acc_t>
struct TableBuild {
  int kind = kForwardTable;
  bool need_pos = false;  // kCornerTable: every in-window corner (positions learn), else nonzero ones only
  int ry = 0, rx = 0;     // kMirroredTable: the phase
  TapEntry<acc_t>* table = nullptr;  // (C, capacity) entries
  int* count = nullptr;              // (C) entries kept per channel
};
template <typename acc_t>
struct TableBuilds {
  TableBuild<acc_t> job[kMaxTableBuilds];
  int n = 0;
};

// Entries per channel at most: two per tap (bilinear's two columns).
DCLS_HD int table_capacity(int64_t K) { return static_cast<int>(2 * K); }

// Channel c's table is built by one block in three phases (barriers between them), all in shared memory:
// candidates (one thread per tap: its two columns), merge (one thread per candidate: the first candidate of
// each cell sums that cell's candidates in index order), compaction (one thread: kept entries in candidate
// order). kForwardTable: merged weights, zero entries dropped. kMirroredTable: the rows and columns of one phase
// (PhaseAxis), flipped into the phase's stride-1 window (the input gradient). kCornerTable: every window cell whose
// correlation with the output gradient
// is needed (need_pos: all in-window corners, else those with a nonzero interpolation weight); c0 / c1 unused.
// Offsets that never meet the input are dropped from every kind (offset_live).
constexpr int64_t kMaxTiledTaps = 1024;  // beyond, the gather kernels run (tables and sums outgrow shared memory)
constexpr int kTableThreads = 128;       // threads of the table-building block

// Whether window offset d along an axis ever meets the input: some output o in [0, out) reads o * s + d - p inside
// [0, in). Entries at dead offsets only ever read the zero padding (small planes under large windows: at 7x7 with
// window 17, offsets 0, 1, 15 and 16 of each axis), so the tables drop them; a corner dropped from the corner
// table has a zero correlation, which is what the finish gives a corner it does not find (a dense convolution's
// would be NaN where the output gradient holds NaN; the channel's live corners carry that NaN anyway).
DCLS_HD bool offset_live(int64_t d, int64_t out, int64_t in, int64_t s, int64_t p) {
  const int64_t need = p - d;
  const int64_t o = need <= 0 ? 0 : (need + s - 1) / s;
  return o < out && o * s + d - p < in;
}

template <typename acc_t>
DCLS_HD bool is_finite_value(acc_t v) {
  return v - v == acc_t(0);  // false for NaN and +-Inf; no <cmath> on the device side needed
}

template <typename scalar_t, typename acc_t>
DCLS_HD void table_candidates(int64_t c, int64_t k, const TapsArgs<scalar_t, acc_t>& a, const TableBuild<acc_t>& b,
                              TapEntry<acc_t>* cand, unsigned char* valid) {
  const int kind = b.kind;
  // a mirrored table keeps its phase's rows and columns: d = r + p (mod s)
  const int64_t phase_y = kind == kMirroredTable ? (b.ry + a.ph) % a.sh : -1;
  const int64_t phase_x = kind == kMirroredTable ? (b.rx + a.pw) % a.sw : -1;
  const TapCorners<acc_t> tc = tap_corners(a, c, k);
  const acc_t w = static_cast<acc_t>(a.weight[c * a.K + k]);
  const acc_t h0 = axis_coef(tc.h, 0, a.interp), h1 = tc.n_h == 2 ? axis_coef(tc.h, 1, a.interp) : acc_t(0);
  for (int bw = 0; bw < 2; ++bw) {
    TapEntry<acc_t>& e = cand[2 * k + bw];
    unsigned char& v = valid[2 * k + bw];
    v = 0;
    if (bw >= tc.n_w) continue;
    const acc_t cw = axis_coef(tc.w, bw, a.interp);
    e.dy = static_cast<int>(tc.h.cell);
    e.dx = static_cast<int>(tc.w.cell) + bw;
    const bool col = offset_live(e.dx, a.Wo, a.W, a.sw, a.pw) && (phase_x < 0 || e.dx % a.sw == phase_x);
    const bool row0 = col && offset_live(e.dy, a.Ho, a.H, a.sh, a.ph) && (phase_y < 0 || e.dy % a.sh == phase_y);
    const bool row1 = col && offset_live(e.dy + 1, a.Ho, a.H, a.sh, a.ph) && (phase_y < 0 || (e.dy + 1) % a.sh == phase_y);
    if (kind == kCornerTable) {
      e.c0 = e.c1 = acc_t(0);
      v = ((row0 || row1) && (b.need_pos || cw != acc_t(0))) ? 1 : 0;
      continue;
    }
    // Dead rows lose their weight, except a non-finite one in the forward, so that a NaN/Inf weight still turns
    // the outputs NaN, as a dense convolution's zero padding times it does.
    const acc_t c0 = w * h0 * cw, c1 = w * h1 * cw;
    const bool forward = kind == kForwardTable;
    e.c0 = (row0 || (forward && !is_finite_value(c0))) ? c0 : acc_t(0);
    e.c1 = (row1 || (forward && !is_finite_value(c1))) ? c1 : acc_t(0);
    if (e.c0 == acc_t(0) && e.c1 == acc_t(0)) continue;
    if (e.c0 == acc_t(0)) {  // only the lower row carries weight
      e.dy += 1;
      e.c0 = e.c1;
      e.c1 = acc_t(0);
    }
    v = 1;
  }
}

// Merge, for windows of up to kTableMapCells cells: a cell map in shared memory names each cell's first
// candidate (the smallest index, by an atomic minimum: the same whatever the order), other candidates flag
// that owner, and only flagged owners walk the list to add their cell's candidates in index order.
constexpr int64_t kTableMapCells = 8192;
constexpr int kNoOwner = 0x7fffffff;

DCLS_HD bool table_uses_map(int64_t Lh, int64_t Lw) { return Lh * Lw <= kTableMapCells; }

template <typename acc_t>
DCLS_HD int table_cell(const TapEntry<acc_t>& e, int64_t Lw) { return e.dy * static_cast<int>(Lw) + e.dx; }

// Phase 2 (one thread per cell and per candidate): empty map, no flags.
DCLS_HD void table_clear(int i, int cells, int n, int* slot, unsigned char* dup) {
  if (i < cells) slot[i] = kNoOwner;
  if (i < n) dup[i] = 0;
}

// Phase 4 (per candidate, after the claims): flag the owner of a cell that has more than one candidate.
template <typename acc_t>
DCLS_HD void table_flag(int i, int64_t Lw, const TapEntry<acc_t>* cand, const unsigned char* valid, const int* slot,
                        unsigned char* dup) {
  if (!valid[i]) return;
  const int owner = slot[table_cell(cand[i], Lw)];
  if (owner != i) dup[owner] = 1;
}

// Phase 5 (per candidate): the owner's merged entry and whether the table keeps it. slot == nullptr: no map
// (large windows), the first-of-its-cell test walks the candidates instead.
template <typename acc_t>
DCLS_HD void table_merge(int i, int n, int kind, int64_t Lw, const TapEntry<acc_t>* cand, const unsigned char* valid,
                         const int* slot, const unsigned char* dup, TapEntry<acc_t>* merged, unsigned char* keep) {
  keep[i] = 0;
  if (!valid[i]) return;
  const int dy = cand[i].dy, dx = cand[i].dx;
  bool others = true;
  if (slot != nullptr) {
    if (slot[table_cell(cand[i], Lw)] != i) return;
    others = dup[i] != 0;
  } else {
    for (int j = 0; j < i; ++j)
      if (valid[j] && cand[j].dy == dy && cand[j].dx == dx) return;  // not the first of its cell
  }
  TapEntry<acc_t> m = cand[i];
  for (int j = i + 1; others && j < n; ++j) {
    if (valid[j] && cand[j].dy == dy && cand[j].dx == dx) {
      m.c0 += cand[j].c0;
      m.c1 += cand[j].c1;
    }
  }
  merged[i] = m;
  keep[i] = (kind == kCornerTable || m.c0 != acc_t(0) || m.c1 != acc_t(0)) ? 1 : 0;
}

// Phase 6, compaction: thread t owns candidates [t * chunk, (t + 1) * chunk); it counts its kept entries, the
// block scans the counts (exact integers: any order gives the same offsets), then each thread writes its kept
// entries from its offset, in candidate order, mirrored for kMirroredTable.
DCLS_HD int table_chunk(int n, int threads) { return (n + threads - 1) / threads; }

DCLS_HD int table_count_kept(int t, int n, int threads, const unsigned char* keep) {
  const int chunk = table_chunk(n, threads);
  int kept = 0;
  for (int i = t * chunk; i < n && i < (t + 1) * chunk; ++i) kept += keep[i];
  return kept;
}

template <typename scalar_t, typename acc_t>
DCLS_HD void table_write_kept(int64_t c, int t, int n, int threads, int offset, const TapsArgs<scalar_t, acc_t>& a,
                              const TableBuild<acc_t>& b, const TapEntry<acc_t>* merged, const unsigned char* keep) {
  const int chunk = table_chunk(n, threads);
  TapEntry<acc_t>* out = b.table + c * n + offset;
  const PhaseAxis qy = phase_axis(a.Lh, a.sh, a.ph, b.ry, a.H), qx = phase_axis(a.Lw, a.sw, a.pw, b.rx, a.W);
  for (int i = t * chunk; i < n && i < (t + 1) * chunk; ++i) {
    if (!keep[i]) continue;
    TapEntry<acc_t> e = merged[i];
    if (b.kind == kMirroredTable) {  // offset d -> (last - d) / s; a two-row entry (stride 1 only) flips its rows
      const bool two = e.c1 != acc_t(0);
      e.dy = static_cast<int>((qy.last - (two ? e.dy + 1 : e.dy)) / a.sh);
      e.dx = static_cast<int>((qx.last - e.dx) / a.sw);
      if (two) {
        const acc_t tmp = e.c0;
        e.c0 = e.c1;
        e.c1 = tmp;
      }
    }
    *out++ = e;
  }
}

// Shared memory of the table build: candidates, merged entries, flags, and the cell map.
template <typename acc_t>
DCLS_HD int64_t table_scratch_bytes(int64_t K, int64_t Lh, int64_t Lw) {
  const int64_t n = 2 * K;
  const int64_t entries = 2 * n * int64_t(sizeof(TapEntry<acc_t>)), flags = (3 * n + 3) / 4 * 4;
  return entries + flags + (table_uses_map(Lh, Lw) ? Lh * Lw * 4 : 0);
}

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

// out_h x out_w outputs per plane from a window Lh x Lw at stride (sh, sw); extra_row: one more staged row
// (the correlation reads row dy + 1 of every entry). min_planes: planes to stage together (channels_last).
inline TileConfig make_tile_config(int64_t out_h, int64_t out_w, int64_t Lh, int64_t Lw, int64_t sh, int64_t sw,
                                   bool extra_row, int min_planes, int64_t elem_bytes) {
  TileConfig t;
  t.ry = out_h >= 6 ? 8 : 1;
  t.tw = out_w <= 8 ? 8 : (out_w <= 16 ? 16 : 32);
  const int64_t rows_needed = (out_h + t.ry - 1) / t.ry;
  t.thread_rows = static_cast<int>(std::min<int64_t>(rows_needed, kTileThreads / t.tw));
  for (; t.thread_rows >= 1; t.thread_rows = t.thread_rows > 1 ? t.thread_rows / 2 : 0) {
    // Whole warps only (the correlation's warp reduction needs all 32 lanes): a plane of 32 threads or more
    // gets its rows rounded up to whole warps, smaller planes are grouped in multiples of a warp.
    const int warp_rows = 32 / t.tw;
    if (t.tw * t.thread_rows >= 32) t.thread_rows = (t.thread_rows + warp_rows - 1) / warp_rows * warp_rows;
    const int per_plane = t.tw * t.thread_rows;
    t.groups = kTileThreads / per_plane;
    while ((t.groups * per_plane) % 32 != 0) --t.groups;
    t.threads = t.groups * per_plane;
    const int64_t in_h = (t.th() - 1) * sh + Lh + (extra_row ? 1 : 0), in_w = (t.tw - 1) * sw + Lw;
    if (in_h * in_w > (int64_t(1) << 24)) continue;
    t.in_h = static_cast<int>(in_h);
    t.in_w = static_cast<int>(in_w);
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
  return t;
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

// Thread tid of `threads` loads its share of rectangle R of `planes` planes: element (p, r, q) comes from
// src[p * cs + (y0 + r) * ys + (x0 + q) * xs]. The fastest index runs across threads (channels for channels_last,
// so a warp reads a run of neighbouring channels; else columns), the others advance without divisions.
template <typename scalar_t, typename acc_t>
DCLS_HD void stage_planes(acc_t* smem, int pitch, int plane_stride, const scalar_t* src, int64_t cs, int64_t ys,
                          int64_t xs, int64_t y0, int64_t x0, int planes, StageRect R, bool channel_fastest, int tid,
                          int threads) {
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
    for (int f = tid % lanes; f < nf; f += lanes) {
      const int p = channel_fastest ? f : slow;
      const int r = R.r0 + (channel_fastest ? slow : mid), q = R.q0 + (channel_fastest ? mid : f);
      smem[p * plane_stride + r * pitch + q] = static_cast<acc_t>(src[p * cs + (y0 + r) * ys + (x0 + q) * xs]);
    }
    mid += per;
    while (mid >= n_mid) {
      mid -= n_mid;
      ++slow;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Forward: out[n, c, oy, ox] = bias[c] + sum over entries of c0 in[oy*sh + dy - ph, ox*sw + dx - pw] + c1 (row + 1).

template <typename scalar_t, typename acc_t>
struct TiledConv {
  const scalar_t* in = nullptr;
  scalar_t* out = nullptr;
  const acc_t* bias = nullptr;
  const TapEntry<acc_t>* table = nullptr;
  const int* count = nullptr;
  int cap = 0;
  int64_t N = 0, C = 0, H = 1, W = 1, Ho = 1, Wo = 1;
  int64_t is[4] = {0, 0, 0, 0}, os[4] = {0, 0, 0, 0};  // element strides (n, c, y, x) of in and out
  int64_t sh = 1, sw = 1, ph = 0, pw = 0;
  TileConfig cfg;
  DCLS_HD int64_t channel_groups() const { return (C + cfg.planes - 1) / cfg.planes; }
  DCLS_HD int64_t blocks() const { return N * channel_groups() * cfg.tiles_y * cfg.tiles_x; }
};

struct ForwardJob {
  int64_t n, c0, ty, tx;  // image, first channel, tile row, tile column
};

// Channel groups vary fastest, so blocks running together read neighbouring channels of one region.
template <typename scalar_t, typename acc_t>
DCLS_HD ForwardJob forward_job(const TiledConv<scalar_t, acc_t>& a, int64_t bid) {
  ForwardJob j;
  const int64_t cg = a.channel_groups();
  j.c0 = (bid % cg) * a.cfg.planes;
  bid /= cg;
  j.tx = bid % a.cfg.tiles_x;
  bid /= a.cfg.tiles_x;
  j.ty = bid % a.cfg.tiles_y;
  j.n = bid / a.cfg.tiles_y;
  return j;
}

// Phase 1: zero the block's planes.
template <typename scalar_t, typename acc_t>
DCLS_HD void tiled_forward_clear(const TiledConv<scalar_t, acc_t>& a, acc_t* smem, int tid) {
  stage_clear(smem, int64_t(a.cfg.planes) * a.cfg.plane_stride, tid, a.cfg.threads);
}

// Phase 2: load the planes' input tiles and halos (the parts inside the input).
template <typename scalar_t, typename acc_t>
DCLS_HD void tiled_forward_stage(const TiledConv<scalar_t, acc_t>& a, const ForwardJob& j, acc_t* smem, int tid) {
  const TileConfig& t = a.cfg;
  const int64_t y0 = j.ty * t.th() * a.sh - a.ph, x0 = j.tx * t.tw * a.sw - a.pw;
  const int planes = static_cast<int>(a.C - j.c0 < t.planes ? a.C - j.c0 : t.planes);
  stage_planes(smem, t.pitch, t.plane_stride, a.in + j.n * a.is[0] + j.c0 * a.is[1], a.is[1], a.is[2], a.is[3], y0, x0,
               planes, stage_rect(y0, x0, t.in_h, t.in_w, a.H, a.W), a.is[1] == 1 && planes > 1, tid, t.threads);
}

// Phase 3: thread tid computes RY outputs of one column for each plane of its group.
template <int RY, typename scalar_t, typename acc_t>
DCLS_HD void tiled_forward_compute(const TiledConv<scalar_t, acc_t>& a, const ForwardJob& j, const acc_t* smem,
                                   int tid) {
  const TileConfig& t = a.cfg;
  const int per_plane = t.tw * t.thread_rows;
  const int group = tid / per_plane, lx = tid % t.tw, ly = (tid % per_plane) / t.tw;
  const int64_t ox = j.tx * t.tw + lx, oy0 = j.ty * t.th() + ly * RY;
  // 32-bit shared-memory offsets: the loads below then need one integer add each.
  const int row = static_cast<int>(a.sh) * t.pitch, pitch = t.pitch;  // staged elements between output rows
  for (int p = group; p < t.planes; p += t.groups) {
    const int64_t c = j.c0 + p;
    if (c >= a.C) break;
    const acc_t* s = smem + (p * t.plane_stride + ly * RY * row + lx * static_cast<int>(a.sw));
    const acc_t b = a.bias ? static_cast<acc_t>(a.bias[c]) : acc_t(0);
    acc_t acc[RY];
    for (int i = 0; i < RY; ++i) acc[i] = b;
    const TapEntry<acc_t>* e = a.table + c * a.cap;
    const int ne = a.count[c];
    TapEntry<acc_t> next_entry = ne > 0 ? e[0] : TapEntry<acc_t>{};
    for (int m = 0; m < ne; ++m) {
      const TapEntry<acc_t> en = next_entry;
      if (m + 1 < ne) next_entry = e[m + 1];  // in flight while this entry's products run
      const acc_t* q = s + (en.dy * pitch + en.dx);
      if (en.c1 == acc_t(0)) {
DCLS_UNROLL
        for (int i = 0; i < RY; ++i) acc[i] += en.c0 * q[i * row];
      } else if (row == pitch) {  // stride 1: rows i and i + 1 of the staged tile serve outputs i - 1 and i
        acc_t prev = q[0];
DCLS_UNROLL
        for (int i = 0; i < RY; ++i) {
          const acc_t next = q[(i + 1) * pitch];
          acc[i] += en.c0 * prev;
          acc[i] += en.c1 * next;
          prev = next;
        }
      } else {
DCLS_UNROLL
        for (int i = 0; i < RY; ++i) {
          acc[i] += en.c0 * q[i * row];
          acc[i] += en.c1 * q[i * row + pitch];
        }
      }
    }
    if (ox < a.Wo) {
      scalar_t* o = a.out + j.n * a.os[0] + c * a.os[1] + ox * a.os[3];
      for (int i = 0; i < RY; ++i)
        if (oy0 + i < a.Ho) o[(oy0 + i) * a.os[2]] = static_cast<scalar_t>(acc[i]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Correlations for the weight and position gradients.

template <typename scalar_t, typename acc_t>
struct TiledCorr {
  const scalar_t* x = nullptr;
  const scalar_t* g = nullptr;
  const TapEntry<acc_t>* table = nullptr;  // kCornerTable
  const int* count = nullptr;
  int cap = 0;
  acc_t* work = nullptr;  // (C, slabs, values)
  acc_t* grad_bias = nullptr;  // (C): the bias gradient, summed from the staged output gradients; or nullptr
  int64_t N = 0, C = 0, H = 1, W = 1, Ho = 1, Wo = 1;
  int64_t xs[4] = {0, 0, 0, 0}, gs[4] = {0, 0, 0, 0};
  int64_t sh = 1, sw = 1, ph = 0, pw = 0;
  int64_t slabs = 1;
  TileConfig cfg;  // planes == groups: each group's plane is one (image, tile) job of the block's channel
  // Sums per block: two rows per entry, padded to whole groups of 16 entries, then the output-gradient sum.
  DCLS_HD int entry_values() const { return 2 * kCorrGroup * ((cap + kCorrGroup - 1) / kCorrGroup); }
  DCLS_HD int bias_value() const { return entry_values(); }
  DCLS_HD int values() const { return entry_values() + 1; }
  DCLS_HD int warps() const { return (cfg.threads + 31) / 32; }
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
  stage_planes(smem + group * t.plane_stride, t.pitch, t.plane_stride, a.x + n * a.xs[0] + j.c * a.xs[1], a.xs[1],
               a.xs[2], a.xs[3], y0, x0, 1, stage_rect(y0, x0, t.in_h, t.in_w, a.H, a.W), false, tid % per_plane,
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

// Phase 3 (per round, per group of 16 entries): the thread's 32 partial sums v[2m + r] for entries
// base + m, rows r = 0, 1.
template <int RY, typename scalar_t, typename acc_t>
DCLS_HD void tiled_corr_products(const TiledCorr<scalar_t, acc_t>& a, const CorrJob& j, const acc_t* smem, int tid,
                                 const acc_t gv[RY], int base, acc_t v[2 * kCorrGroup]) {
  const TileConfig& t = a.cfg;
  const int per_plane = t.tw * t.thread_rows;
  const int group = tid / per_plane, lx = tid % t.tw, ly = (tid % per_plane) / t.tw;
  const int row = static_cast<int>(a.sh) * t.pitch, pitch = t.pitch;  // 32-bit offsets, as in the forward
  const acc_t* s = smem + (group * t.plane_stride + ly * RY * row + lx * static_cast<int>(a.sw));
  const TapEntry<acc_t>* e = a.table + j.c * a.cap;
  const int ne = a.count[j.c];
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

// Phase 4 (after each reduction): the lane's total joins the warp's row of sums.
template <typename scalar_t, typename acc_t>
DCLS_HD void tiled_corr_accumulate(const TiledCorr<scalar_t, acc_t>& a, acc_t* smem, int tid, int base, acc_t total) {
  acc_t* red = smem + int64_t(a.cfg.planes) * a.cfg.plane_stride;
  red[(tid / 32) * a.values() + 2 * base + (tid % 32)] += total;
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
