// The GPU tap engine's forward and input gradient for 16-bit inputs at stride 1, on tensor cores: the taps made
// into the dense window (window_build.h, rounded to the input's 16-bit type, as a dense convolution under
// autocast takes its weight), then the depthwise convolution with it as mma.m16n8k16 products.
//
// For one input row iy, the outputs it reaches are a matrix product:
//   out[oy][ox] += sum over dx of A[oy][dx] * B[dx][ox],  A[oy][dx] = kern[iy + ph - oy][dx],  B[dx][ox] = x[iy][ox + dx - pw],
// A made of the kernel's rows (zero past the window), B a Toeplitz matrix of one input row. A warp owns one
// channel's 16 * mt output rows by 8 * nt columns in registers and runs through the input rows they read; the
// input gradient is the same product on the output gradient with the kernel turned by 180 degrees and padding
// L - 1 - p (stride 1).
//
// Block: 8 warps, a warp per channel of a group of 8, a row tile, a slab of images. The block stages its
// channels' kernels once (with 16 zero rows above and below, so that the A fragments of rows past the window read
// zeros) and, per image, in bands of 8, the input rows (twice, as in window_corr.h: every B fragment an aligned
// 32-bit load). The results go through shared memory, so that the stores are coalesced in either memory format (8
// channels of a pixel together in channels_last). The CPU emulation runs it lane by lane with an emulated mma.
//
// The padding of the mma tiles (kernel columns past Lw, kernel rows past the window inside a live tile) multiplies
// inputs by zero: an infinite input makes NaN reach its whole 16 x 8 output tiles, where the tables' kernels and a
// dense convolution keep the NaN to the outputs it touches.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "dcls_convert/taps_threads.h"
#include "dcls_convert/window_corr.h"

namespace dcls_convert {

constexpr int kWindowConvBand = 8;      // input rows staged at a time: at least, and the step of larger bands
constexpr int kWindowConvMaxBand = 32;
constexpr int kWindowConvMaxWo = 1 << 16;  // in tiles of up to 64 columns
constexpr int kWindowConvMaxWindow = 64;
constexpr int kKernelPadRows = 16;

template <typename scalar_t>
struct WindowConv {
  const scalar_t* x = nullptr;     // (N, C, H, W): the input, or the output gradient for the input gradient
  const scalar_t* kern = nullptr;  // (C, Lh, kw), kw = 16 * ks: the dense window, zero past Lw (window_build.h)
  const float* bias = nullptr;     // (C) or nullptr
  scalar_t* out = nullptr;         // (N, C, Ho, Wo)
  int64_t N = 0, C = 0, H = 1, W = 1, Ho = 1, Wo = 1, Lh = 1, Lw = 1, ph = 0, pw = 0;
  int64_t xs[4] = {0, 0, 0, 0}, os[4] = {0, 0, 0, 0};
  bool x_cl = false, out_cl = false;  // channels fastest: staging and stores by 8 channels of a pixel
  bool vec8 = false;                  // input rows staged by 16-byte loads (staging_vec)
  bool out_vec8 = false;              // results stored by 16-byte stores of 8 channels (staging_vec of out)
  int mt = 1, nt = 1, ks = 1;
  int xw = 16, kp = 12;  // words per staged input row copy; per kernel row (4 mod 8: conflict-free A fragments)
  int64_t slabs = 1;     // of images per (group, row tile): the kernels are staged once per slab
  int band = kWindowConvBand;  // input rows staged per round (window_conv_band)
  bool ok = false;

  DCLS_HD int kw() const { return 16 * ks; }
  DCLS_HD int rows() const { return 16 * mt; }  // output rows per block job
  DCLS_HD int cols() const { return 8 * nt; }
  DCLS_HD int xe() const { return cols() + kw(); }  // staged elements per input row
  DCLS_HD int64_t groups() const { return (C + kWindowCorrWarps - 1) / kWindowCorrWarps; }
  DCLS_HD int64_t row_tiles() const { return (Ho + rows() - 1) / rows(); }
  DCLS_HD int64_t col_tiles() const { return (Wo + cols() - 1) / cols(); }
  DCLS_HD int64_t tiles() const { return row_tiles() * col_tiles(); }
  DCLS_HD int64_t blocks() const { return groups() * tiles() * slabs; }
  DCLS_HD int x_words() const { return channel_words(band * 2 * xw); }  // per channel
  DCLS_HD int k_rows() const { return static_cast<int>(Lh) + 2 * kKernelPadRows; }
  DCLS_HD int k_words() const { return channel_words(k_rows() * kp); }
  DCLS_HD int res_words() const { return channel_words(rows() * cols() / 2); }  // 16-bit results
  DCLS_HD int64_t results_offset() const { return int64_t(kWindowCorrWarps) * (x_words() + k_words()); }
  DCLS_HD int64_t smem_words() const { return results_offset() + int64_t(kWindowCorrWarps) * res_words(); }
  DCLS_HD int64_t kernel_elems() const { return C * Lh * kw(); }
};

// Columns per warp the kernels are compiled for (8 * nt output columns).
inline int window_conv_nt(int64_t Wo) {
  const int64_t n = (Wo + 7) / 8;
  return n <= 1 ? 1 : n <= 2 ? 2 : n <= 4 ? 4 : n <= 7 ? 7 : 8;
}

// The shape of the convolution of an (N, C, H, W) input into (N, C, Ho, Wo) with an Lh x Lw window and padding
// (ph, pw), or ok = false where it does not apply: stride 1, windows up to 64, padding inside the window.
template <typename scalar_t>
WindowConv<scalar_t> window_conv_shape(int64_t N, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t Lh,
                                       int64_t Lw, int64_t ph, int64_t pw) {
  WindowConv<scalar_t> w;
  w.N = N, w.C = C, w.H = H, w.W = W, w.Ho = Ho, w.Wo = Wo, w.Lh = Lh, w.Lw = Lw, w.ph = ph, w.pw = pw;
  if (Lh > kWindowConvMaxWindow || Lw > kWindowConvMaxWindow || Wo > kWindowConvMaxWo || ph > Lh - 1 ||
      pw > Lw - 1 || N * C == 0 || Ho * Wo == 0 || H * W == 0)
    return w;
  w.nt = window_conv_nt(Wo);
  w.mt = Ho > 16 && w.nt < 8 ? 2 : 1;  // (32 x 64 outputs would spill the accumulators past 128 registers)
  w.ks = static_cast<int>((Lw + 15) / 16);
  w.xw = words_16_mod_32((w.xe() + 1) / 2);
  w.kp = 8 * w.ks + 4;
  w.ok = true;
  return w;
}

// Input rows staged per round: each round of a block job's image is a barrier, a staging and the products of its
// rows, so the fewer rounds the better where the products are few (planes of 28 x 28 and less read 14-28 rows,
// 2-4 bands of 8), up to the rows a job reads (rounded up to 8) and kWindowConvMaxBand (or max_band, the A/B
// arm's: 8 is one band of 8 rows as before), while two blocks still fit an SM as the kernel's launch bounds ask
// (max_smem_bytes, a block's most, is the SM's less 1 KiB: 227 KiB on sm_90, 163 on sm_80; each block reserves 1).
template <typename scalar_t>
int window_conv_band(WindowConv<scalar_t> w, int64_t max_smem_bytes, int max_band = kWindowConvMaxBand) {
  const int64_t reads = std::min<int64_t>(w.rows() + w.Lh - 1, w.H);
  const int want = static_cast<int>(std::min<int64_t>((reads + 7) / 8 * 8, std::min(max_band, kWindowConvMaxBand)));
  const int64_t budget = (max_smem_bytes + 1024) / 2 - 1024;
  for (int b = want; b > kWindowConvBand; b -= kWindowConvBand) {
    w.band = b;
    if (w.smem_words() * 4 <= budget) return b;
  }
  return kWindowConvBand;
}

// The dense window of channel c, element i of (C, Lh, kw): the taps' corner weights summed at each cell (the
// corners in tap order, in the accumulation type: run to run the same), zero past Lw; flip: turned by 180 degrees
// (the input gradient's). out_t: the input's type (16-bit: rounded as autocast rounds a dense conv's weight; float32
// for the 3xTF32 strips, window_plane.h). One cell at a time: the reference the kernels' block build
// (window_build.h) is tested against, bitwise.
template <typename scalar_t, typename acc_t, typename out_t>
DCLS_HD void window_kernel_thread(int64_t i, const TapsArgs<scalar_t, acc_t>& a, int kw, bool flip, out_t* kern) {
  const int64_t per = a.Lh * kw, c = i / per, r = (i % per) / kw, q = i % kw;
  if (q >= a.Lw) {
    kern[i] = out_t(acc_t(0));
    return;
  }
  const int64_t dy = flip ? a.Lh - 1 - r : r, dx = flip ? a.Lw - 1 - q : q;
  acc_t s = 0;
  for (int64_t k = 0; k < a.K; ++k) {
    const TapCorners<acc_t> t = tap_corners(a, c, k);
    const int64_t bh = dy - t.h.cell, bw = dx - t.w.cell;
    if (bh < 0 || bh >= t.n_h || bw < 0 || bw >= t.n_w) continue;
    s += static_cast<acc_t>(a.weight[c * a.K + k]) * axis_coef(t.h, static_cast<int>(bh), a.interp) *
         axis_coef(t.w, static_cast<int>(bw), a.interp);
  }
  kern[i] = out_t(s);
}

// Slabs of images per (group, tile): about `target` blocks, at least one image each.
template <typename scalar_t>
int64_t window_conv_slabs(const WindowConv<scalar_t>& w, int64_t target) {
  const int64_t tiles = w.groups() * w.tiles();
  return std::max<int64_t>(1, std::min<int64_t>(w.N, (target + tiles - 1) / std::max<int64_t>(tiles, 1)));
}

struct WindowConvJob {
  int64_t c0, oy0, ox0, n_begin, n_end;
  int64_t n;  // the image being computed
};
template <typename scalar_t>
DCLS_HD WindowConvJob window_conv_job(const WindowConv<scalar_t>& w, int64_t bid) {
  WindowConvJob j;
  j.c0 = (bid % w.groups()) * kWindowCorrWarps;
  const int64_t rest = bid / w.groups(), slab = rest / w.tiles(), tile = rest % w.tiles();
  j.oy0 = (tile / w.col_tiles()) * w.rows();
  j.ox0 = (tile % w.col_tiles()) * w.cols();
  j.n_begin = slab * w.N / w.slabs;
  j.n_end = (slab + 1) * w.N / w.slabs;
  j.n = j.n_begin;
  return j;
}

// A staging thread's channel of the group of 8 and its place among that channel's 32 threads (stage_role).
DCLS_HD StageRole conv_stage_role(bool channels_last, int tid) {
  return stage_role<kWindowCorrThreads>(channels_last, kWindowCorrWarps, tid);
}

template <typename scalar_t>
DCLS_HD uint32_t* conv_kernel_smem(const WindowConv<scalar_t>& w, uint32_t* smem, int ci) {
  return smem + int64_t(kWindowCorrWarps) * w.x_words() + int64_t(ci) * w.k_words();
}

// Phase 1 (per block job): the group's kernels, rows r at r + kKernelPadRows, zero rows around them.
template <typename scalar_t>
DCLS_HD void window_conv_stage_kernels(const WindowConv<scalar_t>& w, const WindowConvJob& j, uint32_t* smem, int tid) {
  const StageRole s = conv_stage_role(false, tid);  // the kernels are (C, Lh, kw): a warp per channel reads rows
  const int64_t c = j.c0 + s.ci;
  auto* dst = reinterpret_cast<scalar_t*>(conv_kernel_smem(w, smem, s.ci));
  const int kw = w.kw();
  for (int r = 0; r < w.k_rows(); ++r) {
    const int64_t kr = r - kKernelPadRows;
    const bool in = c < w.C && kr >= 0 && kr < w.Lh;
    for (int q = s.sub; q < kw; q += s.nsub) dst[r * 2 * w.kp + q] = in ? w.kern[(c * w.Lh + kr) * kw + q] : scalar_t(0.f);
  }
}

// 16-byte loads a thread keeps in flight from one round (band) to the next (Prefetch): the most that the kernel
// of an MT x NT tile holds without spilling under the 128 registers of two blocks per SM (read from ptxas for
// sm_90, CUDA 13: `cuobjdump -res-usage` shows no stack frame where there was none; more spilled. sm_80 builds
// keep a few words on the stack in some tiles, as they did before).
template <int MT, int NT>
constexpr int window_conv_prefetch() {
  return MT * NT >= 14 ? 0 : NT >= 7 ? 2 : 4;
}

// The block job's rounds: image n, input rows iy0 .. iy0 + band - 1, for iy0 from conv_start_row by band below
// conv_end_row, image by image.
template <typename scalar_t>
DCLS_HD int64_t conv_start_row(const WindowConv<scalar_t>& w, const WindowConvJob& j) {
  return std::max<int64_t>(j.oy0 - w.ph, 0);
}
template <typename scalar_t>
DCLS_HD int64_t conv_end_row(const WindowConv<scalar_t>& w, const WindowConvJob& j) {
  return std::min<int64_t>(j.oy0 + w.rows() - 1 + w.Lh - w.ph, w.H);
}
// The round after (n, iy0); false past the job's last.
template <typename scalar_t>
DCLS_HD bool window_conv_next(const WindowConv<scalar_t>& w, const WindowConvJob& j, int64_t& n, int64_t& iy0) {
  iy0 += w.band;
  if (iy0 >= conv_end_row(w, j)) {
    ++n;
    iy0 = conv_start_row(w, j);
  }
  return n < j.n_end;
}

// A round's loads (channels_last inputs staged by 16-byte loads, w.vec8).
template <typename scalar_t>
DCLS_HD Vec8Round window_conv_round(const WindowConv<scalar_t>& w, const WindowConvJob& j, int64_t n, int64_t iy0) {
  const int64_t eb = sizeof(scalar_t);
  Vec8Round r;
  r.src[0].base = reinterpret_cast<const unsigned char*>(w.x + n * w.xs[0] + j.c0);
  r.src[0].ys = w.xs[2] * eb, r.src[0].ps = w.xs[3] * eb;
  r.src[0].y0 = iy0, r.src[0].x0 = j.ox0 - w.pw, r.src[0].H = w.H, r.src[0].W = w.W;
  r.src[0].rows = w.band, r.src[0].cols = w.xe();
  return r;
}

// Phase 2a (per round, before the previous round's products): the thread's first loads of round (n, iy0).
template <int PF, typename scalar_t>
DCLS_HD void window_conv_fetch(const WindowConv<scalar_t>& w, const WindowConvJob& j, int64_t n, int64_t iy0, int tid,
                               Prefetch<PF>& p) {
  if (w.vec8) prefetch_round(window_conv_round(w, j, n, iy0), tid, kWindowCorrThreads, p);
}

// Phase 2 (per round): input rows iy0 .. iy0 + band - 1 of image j.n of the group's channels, zero outside the
// input, both copies (channels_last: from the loads fetched, then the rest).
template <int PF, typename scalar_t>
DCLS_HD void window_conv_stage_rows(const WindowConv<scalar_t>& w, const WindowConvJob& j, int64_t iy0, uint32_t* smem,
                                    int tid, const Prefetch<PF>& p) {
  if (w.vec8) {
    const int stride = w.x_words(), xw = w.xw, cols = w.xe();
    stage_round(window_conv_round(w, j, j.n, iy0), tid, kWindowCorrThreads, p,
                [&](int, int idx, const uint32_t v[4]) { put_row_vec8(smem, stride, xw, cols, idx, v); });
    return;
  }
  const StageRole s = conv_stage_role(w.x_cl, tid);
  const int64_t c = j.c0 + s.ci;
  const bool live = c < w.C;
  stage_rows_scalar(reinterpret_cast<scalar_t*>(smem + int64_t(s.ci) * w.x_words()), w.xw,
                    w.x + j.n * w.xs[0] + (live ? c : 0) * w.xs[1], w.xs, iy0, w.band, w.xe(), w.H, w.W,
                    w.pw - j.ox0, live, s.sub, s.nsub);
}

// Phase 3 (per band): warp `warp`'s products for the band's input rows, lanes lane0 .. lane0 + NL - 1 (as
// window_corr_rows). An m-tile whose 16 kernel rows all lie outside the window is skipped (warp-uniform).
template <int MT, int NT, int NL, typename Mma, typename scalar_t>
DCLS_HD void window_conv_rows(const WindowConv<scalar_t>& w, const WindowConvJob& j, uint32_t* smem, int warp,
                              int lane0, int64_t iy0, float (*acc)[MT * NT * 4]) {
  const uint32_t* kern = conv_kernel_smem(w, smem, warp);
  const uint32_t* band = smem + int64_t(warp) * w.x_words();
  const int kp = w.kp, step = 2 * w.xw;
  // the band's rows inside the input (zero rows add nothing)
  const int first = static_cast<int>(std::max<int64_t>(0, -iy0));
  const int last = static_cast<int>(std::min<int64_t>(w.band, w.H - iy0));
  int base = static_cast<int>(iy0 + first + w.ph - j.oy0);  // the kernel row of output row oy0, at input row `first`
  // Word offsets of the lane's first A row (tile 0, rows gq) and B pair, moved by one row per input row: the row
  // gq + 8 is 8 kernel rows up, tile i 16 rows up. Offsets of a skipped tile may leave the kernel: never read.
  int aoff[NL], boff[NL];
  for (int l = 0; l < NL; ++l) {
    const int lane = lane0 + l, gq = lane >> 2, t = lane & 3, odd = gq & 1;
    aoff[l] = (base - gq + kKernelPadRows) * kp + t;
    boff[l] = first * step + odd * w.xw + (gq - odd) / 2 + t;
  }
  for (int rr = first; rr < last; ++rr, ++base) {
    bool live[MT];
    bool any = false;
DCLS_UNROLL
    for (int i = 0; i < MT; ++i) {
      live[i] = base - 16 * i >= 0 && base - 16 * i - 15 < w.Lh;
      any = any || live[i];
    }
    if (any) {
      uint32_t Wv[NL][NT + 1];  // the Toeplitz B fragments' words (toeplitz_words)
      for (int l = 0; l < NL; ++l) toeplitz_words<NT>(band + boff[l], Wv[l]);
      for (int s = 0; s < w.ks; ++s) {
        uint32_t A[NL][MT * 4], B[NL][NT * 2];
        for (int l = 0; l < NL; ++l) {
DCLS_UNROLL
          for (int i = 0; i < MT; ++i) {
            const int a = aoff[l] - 16 * i * kp + 8 * s;
            if (!live[i]) continue;
            A[l][4 * i + 0] = kern[a];
            A[l][4 * i + 1] = kern[a - 8 * kp];
            A[l][4 * i + 2] = kern[a + 4];
            A[l][4 * i + 3] = kern[a - 8 * kp + 4];
          }
          toeplitz_pairs<NT>(Wv[l], B[l]);
          if (s + 1 < w.ks) toeplitz_next<NT>(band + boff[l] + 8 * (s + 1), Wv[l]);
        }
DCLS_UNROLL
        for (int i = 0; i < MT; ++i) {
          if (!live[i]) continue;
DCLS_UNROLL
          for (int jn = 0; jn < NT; ++jn) Mma::template run<NL, MT * NT * 4, MT * 4, NT * 2>(acc, A, B, i * NT + jn, i, jn);
        }
      }
    }
    for (int l = 0; l < NL; ++l) {
      aoff[l] += kp;
      boff[l] += step;
    }
  }
}

// Phase 4 (per image): lane `lane` of warp `warp` puts its outputs (plus the bias) in 16 bits into
// the group's result tile (channel, row, column).
template <int MT, int NT, typename scalar_t>
DCLS_HD void window_conv_keep(const WindowConv<scalar_t>& w, const WindowConvJob& j, uint32_t* smem, int warp,
                              int lane, const float* acc) {
  auto* res = reinterpret_cast<scalar_t*>(smem + w.results_offset() + int64_t(warp) * w.res_words());
  const int64_t c = j.c0 + warp;
  const float b = (w.bias != nullptr && c < w.C) ? w.bias[c] : 0.f;
  const int gq = lane >> 2, t = lane & 3;
DCLS_UNROLL
  for (int i = 0; i < MT; ++i)
DCLS_UNROLL
    for (int jn = 0; jn < NT; ++jn)
DCLS_UNROLL
      for (int q = 0; q < 4; ++q) {
        const int row = 16 * i + gq + 8 * (q >> 1), col = 8 * jn + 2 * t + (q & 1);
        res[row * w.cols() + col] = scalar_t(acc[(i * NT + jn) * 4 + q] + b);
      }
}

// Whether the kernel of an MT x NT tile stores channels_last results by 16-byte stores: where its registers
// hold them beside the next round's loads without spilling (as window_conv_prefetch; the larger tiles spilled).
template <int MT, int NT>
constexpr bool window_conv_vec_store() {
  return MT * NT <= 4;
}

// Phase 5: the result tile to the output, in the output's channel order (channels_last runs of 8 channels that
// 16-byte stores can write, where Vec: a thread per pixel, its 8 channels from their 8 result regions).
template <bool Vec, typename scalar_t>
DCLS_HD void window_conv_store(const WindowConv<scalar_t>& w, const WindowConvJob& j, const uint32_t* smem, int tid) {
  static_assert(!Vec || sizeof(scalar_t) == 2, "16-byte stores of 8 channels: 16-bit outputs");
  if (Vec && w.out_vec8) {
    const int rows = static_cast<int>(std::min<int64_t>(w.rows(), w.Ho - j.oy0));
    const int cols = static_cast<int>(std::min<int64_t>(w.cols(), w.Wo - j.ox0));
    const auto* res = reinterpret_cast<const uint16_t*>(smem + w.results_offset());
    const int64_t region = 2 * int64_t(w.res_words());  // 16-bit elements between channels' results
    scalar_t* dst = w.out + j.n * w.os[0] + j.c0 + j.oy0 * w.os[2] + j.ox0 * w.os[3];
    const int ys = static_cast<int>(w.os[2]), ps = static_cast<int>(w.os[3]);  // (a tile's offsets fit: the plan)
#if defined(__CUDACC__)
#pragma unroll 1  // (the next round's loads hold registers meanwhile)
#endif
    for (int e = tid; e < rows * cols; e += kWindowCorrThreads) {
      const int row = e / cols, col = e - row * cols, at = row * w.cols() + col;
      uint32_t v[4];
DCLS_UNROLL
      for (int q = 0; q < 4; ++q)
        v[q] = uint32_t(res[2 * q * region + at]) | (uint32_t(res[(2 * q + 1) * region + at]) << 16);
      store8(dst + (row * ys + col * ps), v);
    }
    return;
  }
  const StageRole s = conv_stage_role(w.out_cl, tid);
  const int64_t c = j.c0 + s.ci;
  if (c >= w.C) return;
  const auto* res = reinterpret_cast<const scalar_t*>(smem + w.results_offset() + int64_t(s.ci) * w.res_words());
  const int rows = static_cast<int>(std::min<int64_t>(w.rows(), w.Ho - j.oy0));
  const int cols = static_cast<int>(std::min<int64_t>(w.cols(), w.Wo - j.ox0));
  scalar_t* dst = w.out + j.n * w.os[0] + c * w.os[1];
  for (int e = s.sub; e < rows * cols; e += s.nsub) {
    const int row = e / cols, col = e % cols;
    dst[(j.oy0 + row) * w.os[2] + (j.ox0 + col) * w.os[3]] = res[row * w.cols() + col];
  }
}

// The kernel for a shape's tiles.
template <typename Fn>
auto with_conv_tiles(int mt, int nt, Fn&& fn) {
  auto pick = [&](auto m) {
    constexpr int M = decltype(m)::value;
    switch (nt) {
      case 1: return fn(std::integral_constant<int, M>(), std::integral_constant<int, 1>());
      case 2: return fn(std::integral_constant<int, M>(), std::integral_constant<int, 2>());
      case 4: return fn(std::integral_constant<int, M>(), std::integral_constant<int, 4>());
      default: return fn(std::integral_constant<int, M>(), std::integral_constant<int, 7>());
    }
  };
  if (nt == 8) return fn(std::integral_constant<int, 1>(), std::integral_constant<int, 8>());  // mt 1 (shape)
  return mt == 1 ? pick(std::integral_constant<int, 1>()) : pick(std::integral_constant<int, 2>());
}

}  // namespace dcls_convert
