// The GPU tap engine's per-channel tables (see tiled_taps.h): entries of merged tap weights at window offsets,
// built by one block per channel and table in phases, for the forward, the input gradient's stride phases
// (mirrored) and the weight/position correlations (corner).
#pragma once

#include <cstdint>

#include "dcls_convert/taps_threads.h"

namespace dcls_convert {

// float entries are 16 bytes, aligned so that a kernel fetches one with a single vector load (load_entry).
template <typename acc_t>
struct alignas(sizeof(acc_t) == 4 ? 16 : alignof(acc_t)) TapEntry {
  int dy, dx;
  acc_t c0, c1;
};

// One entry from a table in global memory: on the device a float entry is one 16-byte load (four 4-byte loads
// otherwise, which the forward's loop paid per entry).
template <typename acc_t>
DCLS_HD TapEntry<acc_t> load_entry(const TapEntry<acc_t>* e) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(TapEntry<acc_t>) == 16) {
    const int4 r = __ldg(reinterpret_cast<const int4*>(e));
    return {r.x, r.y, __int_as_float(r.z), __int_as_float(r.w)};
  }
#endif
  return *e;
}

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
  bool pair_rows = false;  // kForwardTable, kMirroredTable at stride 1: single rows paired (table_pair_rows)
  int ry = 0, rx = 0;     // kMirroredTable: the phase
  TapEntry<acc_t>* table = nullptr;  // (C, capacity) entries
  int* count = nullptr;              // (C) entries kept per channel
  int* pairs = nullptr;              // (C) of which two-row entries, written first (table_write_kept)
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
// correlation with the output gradient is needed (need_pos: all in-window corners, else those with a nonzero
// interpolation weight); c0 unused, c1 nonzero where the cell's next row is needed too.
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
    // (a tap on the window's last row has one: its second row would lie outside the window and the cell map)
    const bool row1 = col && tc.n_h == 2 && offset_live(e.dy + 1, a.Ho, a.H, a.sh, a.ph) &&
                      (phase_y < 0 || (e.dy + 1) % a.sh == phase_y);
    if (kind == kCornerTable) {  // c1 flags a second row the gradients read (a two-row entry, table_part)
      e.c0 = acc_t(0);
      e.c1 = row1 ? acc_t(1) : acc_t(0);
      v = ((row0 || row1) && (b.need_pos || cw != acc_t(0))) ? 1 : 0;
      continue;
    }
    // Dead rows lose their weight, except a non-finite one in the forward, so that a NaN/Inf weight still turns
    // the outputs NaN, as a dense convolution's zero padding times it does.
    const acc_t c0 = w * h0 * cw, c1 = tc.n_h == 2 ? w * h1 * cw : acc_t(0);  // (NaN * 0 is NaN)
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

// Phase 5b (per candidate, after the merge; b.pair_rows and the cell map only): single-row entries of rows 2m and
// 2m + 1 of one column become one two-row entry (the even one's, the odd one dropped). A thread's outputs then
// read RY + 1 staged values for both instead of 2 RY: on-grid taps (a freshly converted layer, partial's island,
// bloom's blur) come as single rows, and a dense 7x7 island's 49 entries become 28 (21 pairs, 7 single rows).
// Pairs are fixed (rows 2m, 2m + 1), so each entry has one partner to look up and no two threads touch one entry.
// Whether a build pairs rows: asked for, with the cell map, and rows adjacent in the table's own window (a strided
// input-gradient phase keeps every s-th row, never two adjacent ones).
template <typename scalar_t, typename acc_t>
DCLS_HD bool table_pairs_rows(const TableBuild<acc_t>& b, const TapsArgs<scalar_t, acc_t>& a) {
  return b.pair_rows && table_uses_map(a.Lh, a.Lw) &&
         (b.kind == kForwardTable || (b.kind == kMirroredTable && a.sh == 1));
}

template <typename acc_t>
DCLS_HD void table_pair_rows(int i, int64_t Lh, int64_t Lw, const unsigned char* valid, const int* slot,
                             TapEntry<acc_t>* merged, unsigned char* keep) {
  if (!valid[i] || !keep[i] || merged[i].c1 != acc_t(0) || merged[i].dy % 2 != 0 || merged[i].dy + 1 >= Lh) return;
  const int j = slot[(merged[i].dy + 1) * static_cast<int>(Lw) + merged[i].dx];
  if (j == kNoOwner || !keep[j] || merged[j].c1 != acc_t(0)) return;
  merged[i].c1 = merged[j].c0;
  keep[j] = 0;
}

// Phase 6, compaction: thread t owns candidates [t * chunk, (t + 1) * chunk); it counts its kept entries of each
// part, the block scans the counts (exact integers: any order gives the same offsets), then each thread writes its
// kept entries from its offsets, in candidate order within a part, mirrored for kMirroredTable. Part 0, the
// two-row entries (c1 != 0), comes first and part 1, the single rows, after it: the forward then runs each part
// in a loop of its own, with no test per entry of which kind it is.
DCLS_HD int table_chunk(int n, int threads) { return (n + threads - 1) / threads; }

// Entry i as the table holds it: kMirroredTable maps offset d -> (last - d) / s, and a two-row entry (stride 1
// only) flips its rows.
template <typename scalar_t, typename acc_t>
DCLS_HD TapEntry<acc_t> table_written(const TapEntry<acc_t>& m, const TapsArgs<scalar_t, acc_t>& a,
                                      const TableBuild<acc_t>& b) {
  TapEntry<acc_t> e = m;
  if (b.kind != kMirroredTable) return e;
  const PhaseAxis qy = phase_axis(a.Lh, a.sh, a.ph, b.ry, a.H), qx = phase_axis(a.Lw, a.sw, a.pw, b.rx, a.W);
  const bool two = e.c1 != acc_t(0);
  e.dy = static_cast<int>((qy.last - (two ? e.dy + 1 : e.dy)) / a.sh);
  e.dx = static_cast<int>((qx.last - e.dx) / a.sw);
  if (two) {
    const acc_t tmp = e.c0;
    e.c0 = e.c1;
    e.c1 = tmp;
  }
  return e;
}

// The part of a written entry: 0 with two rows (c1 != 0), 1 with one. (Decided on the written entry: a mirrored
// entry whose first row's weights cancelled has one row once flipped.)
template <typename acc_t>
DCLS_HD int table_part(const TapEntry<acc_t>& e) { return e.c1 != acc_t(0) ? 0 : 1; }

template <typename scalar_t, typename acc_t>
DCLS_HD int table_count_kept(int t, int n, int threads, const unsigned char* keep, const TapEntry<acc_t>* merged,
                             int part, const TapsArgs<scalar_t, acc_t>& a, const TableBuild<acc_t>& b) {
  const int chunk = table_chunk(n, threads);
  int kept = 0;
  for (int i = t * chunk; i < n && i < (t + 1) * chunk; ++i)
    kept += keep[i] && table_part(table_written(merged[i], a, b)) == part;
  return kept;
}

template <typename scalar_t, typename acc_t>
DCLS_HD void table_write_kept(int64_t c, int t, int n, int threads, int offset, int part,
                              const TapsArgs<scalar_t, acc_t>& a, const TableBuild<acc_t>& b,
                              const TapEntry<acc_t>* merged, const unsigned char* keep) {
  const int chunk = table_chunk(n, threads);
  TapEntry<acc_t>* out = b.table + c * n + offset;
  for (int i = t * chunk; i < n && i < (t + 1) * chunk; ++i) {
    if (!keep[i]) continue;
    const TapEntry<acc_t> e = table_written(merged[i], a, b);
    if (table_part(e) == part) *out++ = e;
  }
}

// Shared memory of the table build: candidates, merged entries, flags, and the cell map.
template <typename acc_t>
DCLS_HD int64_t table_scratch_bytes(int64_t K, int64_t Lh, int64_t Lw) {
  const int64_t n = 2 * K;
  const int64_t entries = 2 * n * int64_t(sizeof(TapEntry<acc_t>)), flags = (3 * n + 3) / 4 * 4;
  return entries + flags + (table_uses_map(Lh, Lw) ? Lh * Lw * 4 : 0);
}

}  // namespace dcls_convert
