// Per-thread work of the depthwise tap convolution (1-D inputs are 2-D with H = 1, window height 1).
// The CUDA kernels call these; the CPU emulation ops drive them over the whole launch grid in tests.
#pragma once

#include "dcls_convert/interpolation.h"

namespace dcls_convert {

// Activations in scalar_t; the taps' parameters and their gradients in the accumulation type acc_t (a layer
// under autocast keeps its float32 weight and bias: the engine reads them once per call into float32 tables).
template <typename scalar_t, typename acc_t>
struct TapsArgs {
  const scalar_t* x = nullptr;        // (N, C, H, W)
  const acc_t* weight = nullptr;      // (C, K)
  const acc_t* pos_h = nullptr;       // (C, K), nullptr for 1-D
  const acc_t* pos_w = nullptr;       // (C, K)
  const acc_t* bias = nullptr;        // (C) or nullptr
  const scalar_t* grad_out = nullptr; // (N, C, Ho, Wo)
  scalar_t* out = nullptr;            // forward output (N, C, Ho, Wo)
  scalar_t* grad_in = nullptr;        // (N, C, H, W)
  acc_t* grad_weight = nullptr;       // (C, K), each entry written once
  acc_t* grad_pos_h = nullptr;        // (C, K)
  acc_t* grad_pos_w = nullptr;        // (C, K)
  int64_t N = 0, C = 0, H = 1, W = 0, Ho = 1, Wo = 0, K = 0;
  int64_t Lh = 1, Lw = 1, sh = 1, sw = 1, ph = 0, pw = 0;
  int interp = kBilinear;
};

// The (up to) four corners of tap (c, k): window offsets, interpolation weights, gradient signs.
template <typename acc_t>
struct TapCorners {
  Coord<acc_t> h, w;
  int n_h, n_w;  // corners per axis that lie inside the window
};

template <typename scalar_t, typename acc_t>
DCLS_HD TapCorners<acc_t> tap_corners(const TapsArgs<scalar_t, acc_t>& a, int64_t c, int64_t k) {
  TapCorners<acc_t> r;
  const acc_t ph = a.pos_h ? a.pos_h[c * a.K + k] : acc_t(0);
  r.h = grid_coord(ph, a.Lh, a.interp);
  r.w = grid_coord(a.pos_w[c * a.K + k], a.Lw, a.interp);
  const int per_axis = corners_per_axis(a.interp);
  r.n_h = (r.h.cell + per_axis - 1 < a.Lh) ? per_axis : 1;
  r.n_w = (r.w.cell + per_axis - 1 < a.Lw) ? per_axis : 1;
  return r;
}

template <typename acc_t>
DCLS_HD acc_t axis_coef(const Coord<acc_t>& c, int b, int interp) {
  return interp == kNearest ? acc_t(1) : corner_weight(c, b);
}

// Floor division for possibly negative numerators.
DCLS_HD int64_t div_floor(int64_t a, int64_t b) { return (a >= 0) ? a / b : -((-a + b - 1) / b); }

// One thread per output element (n, c, oy, ox).
template <typename scalar_t, typename acc_t>
DCLS_HD void taps_forward_thread(int64_t idx, const TapsArgs<scalar_t, acc_t>& a) {
  const int64_t ox = idx % a.Wo, oy = (idx / a.Wo) % a.Ho, nc = idx / (a.Wo * a.Ho), c = nc % a.C;
  const scalar_t* xp = a.x + nc * a.H * a.W;
  acc_t acc = a.bias ? static_cast<acc_t>(a.bias[c]) : acc_t(0);
  for (int64_t k = 0; k < a.K; ++k) {
    const TapCorners<acc_t> t = tap_corners(a, c, k);
    const acc_t w = static_cast<acc_t>(a.weight[c * a.K + k]);
    for (int bh = 0; bh < t.n_h; ++bh) {
      const int64_t iy = oy * a.sh + t.h.cell + bh - a.ph;
      const bool row_in = iy >= 0 && iy < a.H;
      const acc_t wh = w * axis_coef(t.h, bh, a.interp);
      for (int bw = 0; bw < t.n_w; ++bw) {
        const int64_t ix = ox * a.sw + t.w.cell + bw - a.pw;
        const acc_t coef = wh * axis_coef(t.w, bw, a.interp);
        if (coef == acc_t(0)) continue;  // far corners of an on-grid tap
        if (!row_in || ix < 0 || ix >= a.W) {
          acc += coef * acc_t(0);  // the zero padding: a NaN/Inf weight still makes the output NaN, as a dense conv
          continue;
        }
        acc += coef * static_cast<acc_t>(xp[iy * a.W + ix]);
      }
    }
  }
  a.out[idx] = static_cast<scalar_t>(acc);
}

// The output index o with o * s == v, or -1 when there is none in [0, n). 64-bit division is slow on a
// GPU, so stride 1 (the common case, uniform across a warp) skips it.
DCLS_HD int64_t strided_index(int64_t v, int64_t s, int64_t n) {
  if (v < 0) return -1;
  if (s != 1) {
    if (v % s != 0) return -1;
    v /= s;
  }
  return v < n ? v : -1;
}

// One thread per input element (n, c, iy, ix): gathers the output gradients that read it.
template <typename scalar_t, typename acc_t>
DCLS_HD void taps_grad_input_thread(int64_t idx, const TapsArgs<scalar_t, acc_t>& a) {
  const int64_t ix = idx % a.W, iy = (idx / a.W) % a.H, nc = idx / (a.W * a.H), c = nc % a.C;
  const scalar_t* gp = a.grad_out + nc * a.Ho * a.Wo;
  acc_t acc = 0;
  for (int64_t k = 0; k < a.K; ++k) {
    const TapCorners<acc_t> t = tap_corners(a, c, k);
    const acc_t w = static_cast<acc_t>(a.weight[c * a.K + k]);
    for (int bh = 0; bh < t.n_h; ++bh) {
      const int64_t oy = strided_index(iy + a.ph - t.h.cell - bh, a.sh, a.Ho);
      if (oy < 0) continue;
      const acc_t wh = w * axis_coef(t.h, bh, a.interp);
      for (int bw = 0; bw < t.n_w; ++bw) {
        const int64_t ox = strided_index(ix + a.pw - t.w.cell - bw, a.sw, a.Wo);
        const acc_t coef = wh * axis_coef(t.w, bw, a.interp);
        if (ox < 0 || coef == acc_t(0)) continue;
        acc += coef * static_cast<acc_t>(gp[oy * a.Wo + ox]);
      }
    }
  }
  a.grad_in[idx] = static_cast<scalar_t>(acc);
}

// Weight and position gradients of tap (c, k): S[b] = sum over (n, oy, ox) of grad_out times the input
// under corner b. One CUDA block of kWgradThreads per tap: thread t sums outputs t, t + kWgradThreads, ...
// (taps_wgrad_partial), the block reduces the partial sums by halving steps (wgrad_reduce_step, between
// barriers), then calls the finish step. The CPU emulation runs the same phases, so it reproduces the
// kernel's summation order.
constexpr int kWgradThreads = 256;

template <typename acc_t>
DCLS_HD void wgrad_reduce_step(acc_t (*sums)[kWgradThreads], int tid, int half) {
  if (tid < half)
    for (int j = 0; j < 4; ++j) sums[j][tid] += sums[j][tid + half];
}

template <typename scalar_t, typename acc_t>
DCLS_HD void taps_wgrad_partial(int64_t c, const TapCorners<acc_t>& t, int64_t e,
                                const TapsArgs<scalar_t, acc_t>& a, acc_t S[4]) {
  const int64_t ox = e % a.Wo, oy = (e / a.Wo) % a.Ho, n = e / (a.Wo * a.Ho);
  const int64_t plane = n * a.C + c;
  const acc_t g = static_cast<acc_t>(a.grad_out[(plane * a.Ho + oy) * a.Wo + ox]);
  const scalar_t* xp = a.x + plane * a.H * a.W;
  for (int bh = 0; bh < t.n_h; ++bh) {
    const int64_t iy = oy * a.sh + t.h.cell + bh - a.ph;
    if (iy < 0 || iy >= a.H) continue;
    for (int bw = 0; bw < t.n_w; ++bw) {
      const int64_t ix = ox * a.sw + t.w.cell + bw - a.pw;
      if (ix < 0 || ix >= a.W) continue;
      S[bh * 2 + bw] += g * static_cast<acc_t>(xp[iy * a.W + ix]);
    }
  }
}

template <typename scalar_t, typename acc_t>
DCLS_HD void taps_wgrad_finish(int64_t c, int64_t k, const TapCorners<acc_t>& t, const acc_t S[4],
                               const TapsArgs<scalar_t, acc_t>& a) {
  const acc_t w = static_cast<acc_t>(a.weight[c * a.K + k]);
  acc_t gw = 0, gh = 0, gwp = 0;
  for (int bh = 0; bh < t.n_h; ++bh) {
    for (int bw = 0; bw < t.n_w; ++bw) {
      const acc_t s = S[bh * 2 + bw];
      const acc_t ch = axis_coef(t.h, bh, a.interp), cw = axis_coef(t.w, bw, a.interp);
      gw += ch * cw * s;
      gh += static_cast<acc_t>(corner_sign(bh)) * cw * s;
      gwp += ch * static_cast<acc_t>(corner_sign(bw)) * s;
    }
  }
  const bool learn = a.interp == kBilinear;
  if (a.grad_weight) a.grad_weight[c * a.K + k] = gw;
  if (a.grad_pos_h) a.grad_pos_h[c * a.K + k] = learn ? w * gh * t.h.pass : acc_t(0);
  if (a.grad_pos_w) a.grad_pos_w[c * a.K + k] = learn ? w * gwp * t.w.pass : acc_t(0);
}

}  // namespace dcls_convert
