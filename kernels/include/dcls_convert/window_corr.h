// The GPU tap engine's weight and position gradients for 16-bit (and, opt-in, float32) inputs at stride 1, on
// tensor cores: the correlation of the output gradient with the input at every cell of the window,
// G[dy][dx] = sum over (n, oy, ox) of g[n, oy, ox] * x[n, oy + dy - ph, ox + dx - pw], then each tap's corners
// read from G (window_corr_finish_cell, window_corr_finish_tap).
//
// Why the whole window: for one input row iy, the products are a matrix product,
//   G[dy][dx] += sum over ox of A[dy][ox] * B[ox][dx],  A[dy][ox] = g[iy + ph - dy][ox],  B[ox][dx] = x[iy][ox + dx - pw],
// A made of output-gradient rows, B a Toeplitz matrix of one input row. mma.m16n8k16 (bfloat16 or float16 in,
// float32 sums) does 2048 multiply-adds per warp instruction, so the dense window (289 cells at 17x17) costs
// less than the table's few hundred scalar products per output did, and no table is built.
//
// Block: kWindowCorrWarps warps over `cg` channels (warps per channel `wpc`: one per window part of 16*mt x 8*nt
// cells), a slab of images. Per image, bands of `band` input rows: the block stages the
// band's input rows (twice: element e at e and, in the odd copy, at e - 1, so that every B fragment is one
// aligned 32-bit load per register whatever the parity of its column) and the output-gradient rows the band
// needs into a ring of `ring` rows (each row loaded once per image). A warp's sums stay in registers for the
// whole block job; then the warps' sums are added in a fixed order and written to the workspace (C, slabs,
// cells + 1), the last value the output-gradient sum (the bias gradient). No atomics: run to run identical.
//
// Rows of A past the window (dy >= Lh, the mma's 16-row granularity) read ring rows that may hold anything: they
// only reach rows of G that are never written. Columns past Lw read staged zeros or inputs. The products past Wo
// meet the ring's zero columns: 0 x Inf is NaN, so an infinite input or gradient makes NaN reach the cells of its
// 16 x 8 tiles, not only those it touches (the tables' kernels keep it to the cells it touches). The CPU emulation runs this block algorithm over the whole grid
// with every lane's fragments and an emulated mma (emulation/emulate_cuda.cpp).
//
// float32 inputs (opt-in, DCLS_CONVERT_CUDA_TF32=corr) run the same products as mma.m16n8k8 on tf32, each value
// split into a tf32 head and a tf32 tail and three products summed (tail x head, head x tail, head x head: the
// "3xTF32" of CUTLASS, about float32's accuracy; tf32_split). The fragments have the same registers per lane: a
// k-step takes 8 outputs of a row instead of 16, one element per 32-bit word, so the input rows are staged once
// (no shifted copy) and the word offsets of every fragment are those of the 16-bit kernel. An infinite input or gradient
// makes its cells NaN (the tail of an infinity is inf - inf), where the 16-bit kernel may keep an infinity.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "dcls_convert/taps_threads.h"
#include "dcls_convert/window_staging.h"

namespace dcls_convert {

// 3xTF32's split of a float32 (its bits) into a tf32 head, the top 10 bits of its mantissa, and a tail, the same
// truncation of the rest (v - head, exact in float32): a product's error is then about 2^-19 of it (2^-22 with
// round-to-nearest). Truncation, because cvt.rna.tf32.f32 is no single instruction on sm_90: with its test that
// keeps infinities and NaN it took about 8 instructions a value, two thirds of the float32 strips' inner loop
// (SASS), where a mask is one. A NaN stays NaN (a canonical NaN's top mantissa bits are set; one with only low bits
// set becomes an infinity whose tail, inf - inf, is NaN).
constexpr uint32_t kTf32Bits = 0xffffe000u;  // a float32's sign, exponent and top 10 mantissa bits
DCLS_HD void tf32_split(uint32_t bits, uint32_t& head, uint32_t& tail) {
  head = bits & kTf32Bits;
  float v, h, rest;
  std::memcpy(&v, &bits, 4);
  std::memcpy(&h, &head, 4);
  rest = v - h;
  std::memcpy(&tail, &rest, 4);
  tail &= kTf32Bits;
}

constexpr int kWindowCorrWarps = 8;
constexpr int kWindowCorrThreads = 32 * kWindowCorrWarps;
constexpr int kWindowCorrMaxWindow = 64;  // per axis: at most 2 x 2 parts of 32 x 32 cells
constexpr int kWindowCorrMaxBand = 8;
constexpr int kWindowCorrMaxWo = 256;
constexpr int kRingOffset = 1 << 12;  // added before the ring's mask, so that negative rows wrap as positive ones
constexpr int kCorrStageBatch = 8;    // float32 staging: loads in flight per thread (batched)

// Elements per 32-bit word of the staged rows (2 for 16-bit inputs, 1 for float32), and so per k-step (16, 8).
template <typename scalar_t>
DCLS_HD constexpr int corr_per_word() {
  return 4 / static_cast<int>(sizeof(scalar_t));
}
template <typename scalar_t>
DCLS_HD constexpr int corr_kstep() {
  return 8 * corr_per_word<scalar_t>();
}

template <typename scalar_t>
struct WindowCorr {
  const scalar_t* x = nullptr;
  const scalar_t* g = nullptr;
  float* work = nullptr;       // (C, slabs, values())
  float* grad_bias = nullptr;  // (C) or nullptr: written by the finish
  int64_t N = 0, C = 0, H = 1, W = 1, Ho = 1, Wo = 1, Lh = 1, Lw = 1, ph = 0, pw = 0;
  int64_t xs[4] = {0, 0, 0, 0}, gs[4] = {0, 0, 0, 0};
  bool channels_last = false;  // staging order: channels fastest (one 16-byte run of 8 channels per pixel)
  bool vec8 = false;           // channels_last input rows staged by 16-byte loads (staging_vec)
  int mt = 1, nt = 1;          // 16-row and 8-column mma tiles per window part
  int parts_y = 1, parts_x = 1, wpc = 1, cg = 8;
  int ks = 1;                  // k-steps over an output row (corr_kstep columns each)
  int band = 8, ring = 16;     // input rows per band; output-gradient rows held (a power of two)
  int xw = 16, gp = 12;        // words per staged input row copy (two 16-bit elements, or one float); per ring row
  int64_t slabs = 1;
  bool ok = false;

  DCLS_HD int parts() const { return parts_y * parts_x; }
  DCLS_HD int xe() const { return corr_kstep<scalar_t>() * ks + parts_x * nt * 8; }  // staged elements per input row
  DCLS_HD int copies() const { return corr_per_word<scalar_t>(); }  // of each input row (16-bit: a shifted one)
  DCLS_HD int64_t cells() const { return Lh * Lw; }
  DCLS_HD int64_t values() const { return cells() + 1; }
  DCLS_HD int64_t groups() const { return (C + cg - 1) / cg; }
  DCLS_HD int64_t blocks() const { return groups() * slabs; }
  DCLS_HD int x_words() const { return channel_words(band * copies() * xw); }  // per channel
  DCLS_HD int g_words() const { return channel_words(ring * gp); }
  DCLS_HD int part_cells() const { return 16 * mt * 8 * nt; }
  // the warps' sums, then each thread's bias sums (8: one per channel of its 16-byte loads, or its one channel)
  DCLS_HD int red_words() const { return kWindowCorrWarps * part_cells() + 8 * kWindowCorrThreads; }
  DCLS_HD int64_t smem_words() const {
    const int64_t staged = int64_t(cg) * (x_words() + g_words());
    return staged > red_words() ? staged : red_words();
  }
};

// The shape of the correlation (no pointers), or ok = false where it does not apply: stride 1, windows up to 64
// per axis, padding inside the window, rows up to kWindowCorrMaxWo outputs (the caller checks the dtype).
template <typename scalar_t>
WindowCorr<scalar_t> window_corr_shape(int64_t N, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t Lh,
                                       int64_t Lw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, bool channels_last) {
  WindowCorr<scalar_t> w;
  w.N = N, w.C = C, w.H = H, w.W = W, w.Ho = Ho, w.Wo = Wo, w.Lh = Lh, w.Lw = Lw, w.ph = ph, w.pw = pw;
  w.channels_last = channels_last;
  // (padding past the window would leave output rows no band loads: their bias sums would be missed)
  if (sh != 1 || sw != 1 || Lh > kWindowCorrMaxWindow || Lw > kWindowCorrMaxWindow || Wo > kWindowCorrMaxWo ||
      ph > Lh - 1 || pw > Lw - 1 || N * C == 0 || Ho * Wo == 0)
    return w;
  w.mt = Lh <= 16 ? 1 : 2;
  w.nt = static_cast<int>(std::min<int64_t>(4, (Lw + 7) / 8));
  w.parts_y = static_cast<int>((Lh + 16 * w.mt - 1) / (16 * w.mt));
  w.parts_x = static_cast<int>((Lw + 8 * w.nt - 1) / (8 * w.nt));
  w.wpc = w.parts();  // 1, 2 or 4: a warp per part
  // channels_last reads 8 channels (16 bytes) per pixel; NCHW keeps 8 channels too (one warp each, rows
  // contiguous) unless the window has parts
  w.cg = kWindowCorrWarps / w.wpc;
  w.ks = static_cast<int>((Wo + corr_kstep<scalar_t>() - 1) / corr_kstep<scalar_t>());
  w.band = static_cast<int>(std::min<int64_t>(kWindowCorrMaxBand, H));
  w.ring = 16;
  while (w.ring < w.band + Lh - 1) w.ring *= 2;
  // (two copies: 16 mod 32 words apart, so that their B fragments never share a bank; one copy: its length)
  w.xw = w.copies() == 2 ? words_16_mod_32((w.xe() + 1) / 2) : w.xe();
  w.gp = 8 * w.ks + 4;  // 4 mod 8: the A fragments' 8 rows fall in distinct banks
  w.ok = true;
  return w;
}

// Slabs of images per channel group: about `target` blocks, at least one image per slab, and a workspace of at
// most 2^24 values.
template <typename Corr>
int64_t window_corr_slabs(const Corr& w, int64_t target) {
  const int64_t by_blocks = (target + w.groups() - 1) / std::max<int64_t>(w.groups(), 1);
  const int64_t by_work = (int64_t(1) << 24) / std::max<int64_t>(w.C * w.values(), 1);
  return std::max<int64_t>(1, std::min<int64_t>({w.N, by_blocks, by_work}));
}

struct WindowCorrJob {
  int64_t c0, slab, n_begin, n_end;  // first channel of the group, slab, its images [n_begin, n_end)
};
template <typename scalar_t>
DCLS_HD WindowCorrJob window_corr_job(const WindowCorr<scalar_t>& w, int64_t bid) {
  WindowCorrJob j;
  j.c0 = (bid % w.groups()) * w.cg;
  j.slab = bid / w.groups();
  j.n_begin = j.slab * w.N / w.slabs;
  j.n_end = (j.slab + 1) * w.N / w.slabs;
  return j;
}

// What a warp computes: channel ci of the group, window part (dy0, dx0), every row of a band.
struct WarpRole {
  int ci, dy0, dx0;
};
template <typename scalar_t>
DCLS_HD WarpRole warp_role(const WindowCorr<scalar_t>& w, int warp) {
  WarpRole r;
  r.ci = warp / w.wpc;
  const int part = warp % w.wpc;
  r.dy0 = (part / w.parts_x) * 16 * w.mt;
  r.dx0 = (part % w.parts_x) * 8 * w.nt;
  return r;
}

template <typename scalar_t>
DCLS_HD StageRole stage_role(const WindowCorr<scalar_t>& w, int tid) {
  return stage_role<kWindowCorrThreads>(w.channels_last, w.cg, tid);
}

template <typename scalar_t>
DCLS_HD scalar_t* x_band(const WindowCorr<scalar_t>& w, uint32_t* smem, int ci) {
  return reinterpret_cast<scalar_t*>(smem + int64_t(ci) * w.x_words());
}
template <typename scalar_t>
DCLS_HD uint32_t* g_ring(const WindowCorr<scalar_t>& w, uint32_t* smem, int ci) {
  return smem + int64_t(w.cg) * w.x_words() + int64_t(ci) * w.g_words();
}
DCLS_HD int ring_slot(int64_t oy, int ring) { return static_cast<int>((oy + kRingOffset) & (ring - 1)); }

// 16-byte loads a thread keeps in flight from one round (band) to the next (Prefetch): the most that the kernel
// of an MT x NT tile holds without spilling under the 128 registers of two blocks per SM (read from ptxas for
// sm_90, CUDA 13: `cuobjdump -res-usage` shows no stack frame where there was none; more spilled. sm_80 builds
// keep a few words on the stack in some tiles, as they did before).
template <int MT, int NT, typename scalar_t>
constexpr int window_corr_prefetch() {
  if (sizeof(scalar_t) != 2) return 0;  // (float32 rows are staged one element a load: no 16-byte runs)
  return MT * NT == 8 || (MT == 1 && NT >= 3) ? 2 : 4;
}

// A block job's rounds, image by image: input rows iy0 .. iy0 + band - 1 (iy0 = 0, band, ... below H) and the
// ring's new output-gradient rows [lo, hi), hi = iy0 + band + ph (the previous round's hi, at first the first row
// any band reads).
struct CorrRound {
  int64_t n, iy0, lo;
};
template <typename scalar_t>
DCLS_HD CorrRound corr_first_round(const WindowCorr<scalar_t>& w, int64_t n) {
  return {n, 0, w.ph - w.Lh + 1};
}
template <typename scalar_t>
DCLS_HD int64_t corr_hi(const WindowCorr<scalar_t>& w, const CorrRound& r) {
  return r.iy0 + w.band + w.ph;
}
// The round after r; false past the job's last.
template <typename scalar_t>
DCLS_HD bool window_corr_next(const WindowCorr<scalar_t>& w, const WindowCorrJob& j, CorrRound& r) {
  r.lo = corr_hi(w, r);
  r.iy0 += w.band;
  if (r.iy0 >= w.H) r = corr_first_round(w, r.n + 1);
  return r.n < j.n_end;
}

// A round's loads (channels_last inputs staged by 16-byte loads, w.vec8): the input rows, then the
// output-gradient rows (16 * ks columns, zero past Wo).
template <typename scalar_t>
DCLS_HD Vec8Round window_corr_round(const WindowCorr<scalar_t>& w, const WindowCorrJob& j, const CorrRound& r) {
  const int64_t eb = sizeof(scalar_t);
  Vec8Round v;
  Vec8Rows& x = v.src[0];
  x.base = reinterpret_cast<const unsigned char*>(w.x + r.n * w.xs[0] + j.c0);
  x.ys = w.xs[2] * eb, x.ps = w.xs[3] * eb, x.y0 = r.iy0, x.x0 = -w.pw, x.H = w.H, x.W = w.W;
  x.rows = static_cast<int>(std::min<int64_t>(w.band, w.H - r.iy0)), x.cols = w.xe();
  Vec8Rows& g = v.src[1];
  g.base = reinterpret_cast<const unsigned char*>(w.g + r.n * w.gs[0] + j.c0);
  g.ys = w.gs[2] * eb, g.ps = w.gs[3] * eb, g.y0 = r.lo, g.x0 = 0, g.H = w.Ho, g.W = w.Wo;
  g.rows = static_cast<int>(corr_hi(w, r) - r.lo), g.cols = corr_kstep<scalar_t>() * w.ks;
  return v;
}

// Phase 1a (per round, before the previous round's products): the thread's first loads of round r.
template <int PF, typename scalar_t>
DCLS_HD void window_corr_fetch(const WindowCorr<scalar_t>& w, const WindowCorrJob& j, const CorrRound& r, int tid,
                               Prefetch<PF>& p) {
  if (w.vec8) prefetch_round(window_corr_round(w, j, r), tid, kWindowCorrThreads, p);
}

// Phase 1 (per round): the band's input rows iy0 .. iy0 + band - 1 of the thread's channel, zero outside the
// input, into both copies; then the ring's new output-gradient rows [lo, hi) (zero outside the output gradient),
// whose values the thread adds to its bias sum (channels_last: a thread per (row, column), its 8 channels from
// one 16-byte load, each into its bias sum).
template <int PF, typename scalar_t>
DCLS_HD void window_corr_stage(const WindowCorr<scalar_t>& w, const WindowCorrJob& j, const CorrRound& r,
                               uint32_t* smem, int tid, float bias[8], const Prefetch<PF>& p) {
  const int cols = corr_kstep<scalar_t>() * w.ks;
  if constexpr (sizeof(scalar_t) == 2) {  // (16-byte runs of 8 channels: 16-bit inputs, the plan's vec8)
    if (w.vec8) {
      const int stride = w.x_words(), xw = w.xw, xe = w.xe(), ring = w.ring, gp = w.gp;
      const int64_t lo = r.lo;
      stage_round(window_corr_round(w, j, r), tid, kWindowCorrThreads, p, [&](int src, int idx, const uint32_t v[4]) {
        if (src == 0) {
          put_row_vec8(smem, stride, xw, xe, idx, v);
          return;
        }
        const int row = idx / cols, ox = idx - row * cols, slot = ring_slot(lo + row, ring);
DCLS_UNROLL
        for (int k = 0; k < 8; ++k) {
          auto* dst = reinterpret_cast<uint16_t*>(g_ring(w, smem, k)) + int64_t(slot) * 2 * gp;
          const uint16_t h = half_of(v, k);
          dst[ox] = h;
          bias[k] += static_cast<float>(scalar_t(h, scalar_t::from_bits()));
        }
      });
      return;
    }
  }
  const StageRole s = stage_role(w, tid);
  const int64_t c = j.c0 + s.ci, n = r.n;
  const bool live = c < w.C;
  const int rows = static_cast<int>(std::min<int64_t>(w.band, w.H - r.iy0));
  const scalar_t* xsrc = w.x + n * w.xs[0] + (live ? c : 0) * w.xs[1];
  auto* ring = reinterpret_cast<scalar_t*>(g_ring(w, smem, s.ci));
  const scalar_t* gsrc = w.g + n * w.gs[0] + (live ? c : 0) * w.gs[1];
  if constexpr (sizeof(scalar_t) == 4) {  // float32: the same cells and sums, kCorrStageBatch loads in flight
    // the thread's elements e = sub, sub + nsub, ... of each row: per_x of an input row, per_g of a ring row
    const int per_x = (w.xe() - s.sub + s.nsub - 1) / s.nsub, per_g = (cols - s.sub + s.nsub - 1) / s.nsub;
    auto* xband = x_band(w, smem, s.ci);
    batched<kCorrStageBatch, scalar_t>(
        rows * per_x,
        [&](int i) {
          const int64_t iy = r.iy0 + i / per_x, col = s.sub + (i % per_x) * s.nsub - w.pw;
          const bool in = live && iy >= 0 && iy < w.H && col >= 0 && col < w.W;
          return in ? xsrc[iy * w.xs[2] + col * w.xs[3]] : scalar_t(0);
        },
        [&](int i, scalar_t v) { xband[(i / per_x) * w.xw + s.sub + (i % per_x) * s.nsub] = v; });
    batched<kCorrStageBatch, scalar_t>(
        static_cast<int>(corr_hi(w, r) - r.lo) * per_g,
        [&](int i) {
          const int64_t oy = r.lo + i / per_g;
          const int ox = s.sub + (i % per_g) * s.nsub;
          return (live && oy >= 0 && oy < w.Ho && ox < w.Wo) ? gsrc[oy * w.gs[2] + ox * w.gs[3]] : scalar_t(0);
        },
        [&](int i, scalar_t v) {
          ring[int64_t(ring_slot(r.lo + i / per_g, w.ring)) * w.gp + s.sub + (i % per_g) * s.nsub] = v;
          bias[0] += static_cast<float>(v);
        });
  } else {  // 16-bit rows not in 16-byte runs: both copies, an element a load
    stage_rows_scalar(x_band(w, smem, s.ci), w.xw, xsrc, w.xs, r.iy0, rows, w.xe(), w.H, w.W, w.pw, live, s.sub,
                      s.nsub);
    for (int64_t oy = r.lo; oy < corr_hi(w, r); ++oy) {
      const bool row_in = live && oy >= 0 && oy < w.Ho;
      scalar_t* dst = ring + int64_t(ring_slot(oy, w.ring)) * 2 * w.gp;
      for (int ox = s.sub; ox < cols; ox += s.nsub) {
        const scalar_t v = (row_in && ox < w.Wo) ? gsrc[oy * w.gs[2] + ox * w.gs[3]] : scalar_t(0);
        dst[ox] = v;
        bias[0] += static_cast<float>(v);
      }
    }
  }
}

// Phase 2 (per band): a warp's products for its rows of the band, lanes lane0 .. lane0 + NL - 1 (the device runs
// NL = 1, its own lane; the emulation NL = 32, the whole warp, so that its mma sees every lane's fragments).
// acc[l][(i * NT + jn) * 4 + q]: lane l's accumulator q of tile (i, jn), in the mma's C layout.
template <int MT, int NT, int NL, typename Mma, typename scalar_t>
DCLS_HD void window_corr_rows(const WindowCorr<scalar_t>& w, uint32_t* smem, int warp, int lane0, int64_t iy0,
                              float (*acc)[MT * NT * 4]) {
  const WarpRole r = warp_role(w, warp);
  const int rows = static_cast<int>(std::min<int64_t>(w.band, w.H - iy0));
  const uint32_t* ring = g_ring(w, smem, r.ci);
  const uint32_t* band = smem + int64_t(r.ci) * w.x_words();
  for (int rr = 0; rr < rows; ++rr) {
    const int64_t iy = iy0 + rr;
    const uint32_t* arow[NL][MT][2];
    const uint32_t* brow[NL];
    for (int l = 0; l < NL; ++l) {
      const int lane = lane0 + l, gq = lane >> 2, t = lane & 3;
      for (int i = 0; i < MT; ++i)
        for (int h = 0; h < 2; ++h) {
          const int64_t oy = iy + w.ph - (r.dy0 + 16 * i + gq + 8 * h);
          arow[l][i][h] = ring + ring_slot(oy, w.ring) * w.gp + t;
        }
      if (corr_per_word<scalar_t>() == 1) {  // float32: element dx0 + gq + t of the row, one copy
        brow[l] = band + rr * w.xw + r.dx0 + gq + t;
      } else {  // pairs: the copy whose pair starts at element dx0 + gq + 2t
        const int odd = gq & 1;
        brow[l] = band + rr * 2 * w.xw + odd * w.xw + (r.dx0 + gq - odd) / 2 + t;
      }
    }
    // The Toeplitz B fragments share their words: tile jn's second register is tile jn + 1's first, and the next
    // k-step's words are these moved by two tiles. NT + 1 words per row, then two per k-step (toeplitz_words;
    // float32: 2 NT words, toeplitz32_words).
    constexpr bool k32 = corr_per_word<scalar_t>() == 1;
    uint32_t Wv[NL][k32 ? 2 * NT : NT + 1];
    for (int l = 0; l < NL; ++l) {
      if constexpr (k32)
        toeplitz32_words<NT>(brow[l], Wv[l]);
      else
        toeplitz_words<NT>(brow[l], Wv[l]);
    }
    for (int s = 0; s < w.ks; ++s) {
      uint32_t A[NL][MT * 4], B[NL][NT * 2];
      for (int l = 0; l < NL; ++l) {
DCLS_UNROLL
        for (int i = 0; i < MT; ++i) {
          A[l][4 * i + 0] = arow[l][i][0][8 * s];
          A[l][4 * i + 1] = arow[l][i][1][8 * s];
          A[l][4 * i + 2] = arow[l][i][0][8 * s + 4];
          A[l][4 * i + 3] = arow[l][i][1][8 * s + 4];
        }
        if constexpr (k32) {
DCLS_UNROLL
          for (int m = 0; m < 2 * NT; ++m) B[l][m] = Wv[l][m];
          if (s + 1 < w.ks) toeplitz32_next<NT>(brow[l] + 8 * (s + 1), Wv[l]);
        } else {
          toeplitz_pairs<NT>(Wv[l], B[l]);
          if (s + 1 < w.ks) toeplitz_next<NT>(brow[l] + 8 * (s + 1), Wv[l]);
        }
      }
DCLS_UNROLL
      for (int i = 0; i < MT; ++i)
DCLS_UNROLL
        for (int jn = 0; jn < NT; ++jn) Mma::template run<NL, MT * NT * 4, MT * 4, NT * 2>(acc, A, B, i * NT + jn, i, jn);
    }
  }
}

// Phase 3 (end of the block job): lane l's accumulators to the warp's slice of the reduction area, as G's
// part-local [dy][dx]; the thread's bias sum beside them.
template <int MT, int NT, typename scalar_t>
DCLS_HD void window_corr_keep(const WindowCorr<scalar_t>& w, uint32_t* smem, int warp, int lane,
                              const float* acc, int tid, const float bias[8]) {
  float* red = reinterpret_cast<float*>(smem) + warp * w.part_cells();
  const int gq = lane >> 2, t = lane & 3, cols = 8 * NT;
DCLS_UNROLL
  for (int i = 0; i < MT; ++i)
DCLS_UNROLL
    for (int jn = 0; jn < NT; ++jn)
DCLS_UNROLL
      for (int q = 0; q < 4; ++q) {
        const int row = 16 * i + gq + 8 * (q >> 1), col = 8 * jn + 2 * t + (q & 1);
        red[row * cols + col] = acc[(i * NT + jn) * 4 + q];
      }
  float* b = reinterpret_cast<float*>(smem) + kWindowCorrWarps * w.part_cells() + 8 * tid;
DCLS_UNROLL
  for (int k = 0; k < 8; ++k) b[k] = bias[k];
}

// Phase 4: each window cell of each channel of the group from its part's warp, and each channel's
// bias sums over its staging threads in order, written to the workspace.
template <typename scalar_t>
DCLS_HD void window_corr_write(const WindowCorr<scalar_t>& w, const WindowCorrJob& j, const uint32_t* smem, int tid) {
  const float* red = reinterpret_cast<const float*>(smem);
  const int64_t cells = w.cells(), V = w.values();
  const int py = 16 * w.mt, px = 8 * w.nt;
  for (int64_t i = tid; i < int64_t(w.cg) * V; i += kWindowCorrThreads) {
    const int ci = static_cast<int>(i / V);
    const int64_t cell = i % V, c = j.c0 + ci;
    if (c >= w.C) continue;
    float s = 0.f;
    if (cell < cells) {
      const int dy = static_cast<int>(cell / w.Lw), dx = static_cast<int>(cell % w.Lw);
      const int part = (dy / py) * w.parts_x + dx / px, local = (dy % py) * px + dx % px;
      s = red[(ci * w.wpc + part) * w.part_cells() + local];
    } else {
      const float* b = red + kWindowCorrWarps * w.part_cells();
      for (int t = 0; t < kWindowCorrThreads; ++t) {
        if (w.vec8)
          s += b[8 * t + ci];
        else if (stage_role(w, t).ci == ci)
          s += b[8 * t];
      }
    }
    w.work[(c * w.slabs + j.slab) * V + cell] = s;
  }
}

// Second kernel, a block per channel, in two phases. Phase 1: each of the channel's cells (and its bias sum) summed
// over the slabs in order, by a thread per cell (neighbouring threads read neighbouring cells), into the block's G.
// Phase 2: a thread per tap (c, k) maps its corners' sums from G to the weight and position gradients
// (taps_wgrad_finish); tap 0 also writes the bias gradient. Corr: this correlation or the small-plane one
// (window_plane_corr.h), whose workspaces have the same layout.
// (A thread per tap summing its own corners over the slabs read them scattered, one slab after another: at 64
// slabs, 256 loads a thread on a grid of a few blocks.)
template <typename Corr, typename acc_t>
DCLS_HD void window_corr_finish_cell(int64_t c, int64_t e, const Corr& w, acc_t* G) {
  const int64_t V = w.values();
  acc_t s = 0;
  for (int64_t sl = 0; sl < w.slabs; ++sl) s += w.work[(c * w.slabs + sl) * V + e];
  G[e] = s;
}
template <typename Corr, typename scalar_t, typename acc_t>
DCLS_HD void window_corr_finish_tap(int64_t c, int64_t k, const Corr& w, const TapsArgs<scalar_t, acc_t>& a,
                                    const acc_t* G) {
  const TapCorners<acc_t> t = tap_corners(a, c, k);
  acc_t S[4] = {0, 0, 0, 0};
  for (int bh = 0; bh < t.n_h; ++bh)
    for (int bw = 0; bw < t.n_w; ++bw) S[bh * 2 + bw] = G[(t.h.cell + bh) * a.Lw + t.w.cell + bw];
  taps_wgrad_finish(c, k, t, S, a);
  if (w.grad_bias != nullptr && k == 0) w.grad_bias[c] = G[w.cells()];
}

// The kernel for a shape's tiles per part.
template <typename Fn>
auto with_window_tiles(int mt, int nt, Fn&& fn) {
  auto pick = [&](auto m) {
    constexpr int M = decltype(m)::value;
    switch (nt) {
      case 1: return fn(std::integral_constant<int, M>(), std::integral_constant<int, 1>());
      case 2: return fn(std::integral_constant<int, M>(), std::integral_constant<int, 2>());
      case 3: return fn(std::integral_constant<int, M>(), std::integral_constant<int, 3>());
      default: return fn(std::integral_constant<int, M>(), std::integral_constant<int, 4>());
    }
  };
  return mt == 1 ? pick(std::integral_constant<int, 1>()) : pick(std::integral_constant<int, 2>());
}

}  // namespace dcls_convert
