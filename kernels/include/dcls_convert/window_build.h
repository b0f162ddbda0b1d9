// The dense window the whole-window kernels convolve with (the tensor cores' window_conv.h and window_plane.h),
// built by a block per channel: the taps' corners computed once per block into shared memory, then each thread
// sums its cells over them in tap order, as window_kernel_thread does per cell (the sums and their order are the
// same, so the windows are bitwise equal). window_kernel_thread, which the kernels ran before, computes every tap's
// corners for every cell: C * cells * K corner computations, 4.6 ms of a convnext_tiny AMP training step with
// partial's layers on the tensor cores (H200, RESULTS.md, ninth session); here C * K of them, and a cell's loop is
// two compares per tap.
#pragma once

#include <cstdint>

#include "dcls_convert/taps_threads.h"

namespace dcls_convert {

constexpr int kWindowBuildThreads = 256;
constexpr int kWindowBuildChunk = 256;  // taps staged at a time
static_assert(kWindowBuildThreads >= kWindowBuildChunk, "a thread stages each tap of a chunk");

// One tap's corners: rows cell_h .. cell_h + n_h - 1 by columns cell_w .. cell_w + n_w - 1, the weight times the
// row coefficient (wh, the factor window_kernel_thread forms first) and the column coefficient (cw).
template <typename acc_t>
struct WindowTap {
  int cell_h, cell_w, n_h, n_w;
  acc_t wh[2], cw[2];
};

// Shared memory of a block: a chunk of taps, then the sums of the channel's Lh x kw cells.
template <typename acc_t>
DCLS_HD int64_t window_build_smem_bytes(int64_t Lh, int kw) {
  return int64_t(kWindowBuildChunk) * int64_t(sizeof(WindowTap<acc_t>)) + Lh * kw * int64_t(sizeof(acc_t));
}
template <typename acc_t>
DCLS_HD acc_t* window_build_sums(unsigned char* smem) {
  return reinterpret_cast<acc_t*>(smem + kWindowBuildChunk * sizeof(WindowTap<acc_t>));
}

// Phase 1 (per channel): the sums zeroed.
template <typename scalar_t, typename acc_t>
DCLS_HD void window_build_zero(const TapsArgs<scalar_t, acc_t>& a, int kw, unsigned char* smem, int tid) {
  acc_t* sums = window_build_sums<acc_t>(smem);
  for (int64_t i = tid; i < a.Lh * kw; i += kWindowBuildThreads) sums[i] = acc_t(0);
}

// Phase 2 (per chunk of taps k0 .. k0 + kWindowBuildChunk - 1): thread tid computes a tap's corners.
template <typename scalar_t, typename acc_t>
DCLS_HD void window_build_stage(const TapsArgs<scalar_t, acc_t>& a, int64_t c, int64_t k0, unsigned char* smem,
                                int tid) {
  auto* taps = reinterpret_cast<WindowTap<acc_t>*>(smem);
  const int64_t k = k0 + tid;
  if (tid >= kWindowBuildChunk || k >= a.K) return;
  const TapCorners<acc_t> t = tap_corners(a, c, k);
  const acc_t w = static_cast<acc_t>(a.weight[c * a.K + k]);
  WindowTap<acc_t> r;
  r.cell_h = static_cast<int>(t.h.cell), r.cell_w = static_cast<int>(t.w.cell), r.n_h = t.n_h, r.n_w = t.n_w;
  for (int b = 0; b < 2; ++b) {
    r.wh[b] = b < t.n_h ? w * axis_coef(t.h, b, a.interp) : acc_t(0);
    r.cw[b] = b < t.n_w ? axis_coef(t.w, b, a.interp) : acc_t(0);
  }
  taps[tid] = r;
}

// Phase 3 (per chunk): thread tid adds the chunk's taps to its cells (element i of (Lh, kw), flip: the window
// turned by 180 degrees), in tap order.
template <typename scalar_t, typename acc_t>
DCLS_HD void window_build_add(const TapsArgs<scalar_t, acc_t>& a, int kw, bool flip, int64_t k0,
                              unsigned char* smem, int tid) {
  const auto* taps = reinterpret_cast<const WindowTap<acc_t>*>(smem);
  acc_t* sums = window_build_sums<acc_t>(smem);
  const int n = static_cast<int>(a.K - k0 < kWindowBuildChunk ? a.K - k0 : kWindowBuildChunk);
  for (int64_t i = tid; i < a.Lh * kw; i += kWindowBuildThreads) {
    const int r = static_cast<int>(i / kw), q = static_cast<int>(i % kw);
    if (q >= a.Lw) continue;
    const int dy = flip ? static_cast<int>(a.Lh) - 1 - r : r, dx = flip ? static_cast<int>(a.Lw) - 1 - q : q;
    acc_t s = sums[i];
    for (int k = 0; k < n; ++k) {
      const WindowTap<acc_t>& t = taps[k];
      const unsigned bh = static_cast<unsigned>(dy - t.cell_h), bw = static_cast<unsigned>(dx - t.cell_w);
      if (bh < static_cast<unsigned>(t.n_h) && bw < static_cast<unsigned>(t.n_w)) s += t.wh[bh] * t.cw[bw];
    }
    sums[i] = s;
  }
}

// Phase 4 (per channel): the sums to channel c of the (C, Lh, kw) window, rounded to out_t (zero past Lw).
template <typename scalar_t, typename acc_t, typename out_t>
DCLS_HD void window_build_write(const TapsArgs<scalar_t, acc_t>& a, int kw, int64_t c, const unsigned char* smem,
                                out_t* kern, int tid) {
  const acc_t* sums = reinterpret_cast<const acc_t*>(smem + kWindowBuildChunk * sizeof(WindowTap<acc_t>));
  for (int64_t i = tid; i < a.Lh * kw; i += kWindowBuildThreads) kern[c * a.Lh * kw + i] = out_t(sums[i]);
}

}  // namespace dcls_convert
