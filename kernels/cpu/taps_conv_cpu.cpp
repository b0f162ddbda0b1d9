// Depthwise tap convolution on CPU. Each channel's taps are merged into a short list of window
// offsets with their interpolation weight (at most 4K entries, never the L x L kernel); each output
// row is then a sum of shifted input rows, which the compiler vectorises along the width.
// Input is made contiguous NCHW first: the row kernels need unit-stride rows, and the copy of a
// channels_last tensor costs one pass over the data, small next to the K-tap work.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "dcls_convert/args.h"

namespace dcls_convert {
namespace {

template <typename acc_t>
struct ChannelEntries {
  std::vector<int64_t> oh, ow;    // window offsets of the entries
  std::vector<acc_t> coef;        // merged interpolation weights
  std::vector<int32_t> corner;    // (K, 4): entry of each in-window corner, -1 when outside
};

template <typename scalar_t, typename acc_t>
ChannelEntries<acc_t> merge_taps(const TapsArgs<scalar_t, acc_t>& a, int64_t c, std::vector<int32_t>& slot) {
  ChannelEntries<acc_t> e;
  e.corner.assign(a.K * 4, -1);
  for (int64_t k = 0; k < a.K; ++k) {
    const TapCorners<acc_t> t = tap_corners(a, c, k);
    const acc_t w = static_cast<acc_t>(a.weight[c * a.K + k]);
    for (int bh = 0; bh < t.n_h; ++bh) {
      for (int bw = 0; bw < t.n_w; ++bw) {
        const int64_t oh = t.h.cell + bh, ow = t.w.cell + bw, key = oh * a.Lw + ow;
        if (slot[key] < 0) {
          slot[key] = static_cast<int32_t>(e.coef.size());
          e.oh.push_back(oh);
          e.ow.push_back(ow);
          e.coef.push_back(acc_t(0));
        }
        e.coef[slot[key]] += w * axis_coef(t.h, bh, a.interp) * axis_coef(t.w, bw, a.interp);
        e.corner[k * 4 + bh * 2 + bw] = slot[key];
      }
    }
  }
  for (size_t i = 0; i < e.coef.size(); ++i) slot[e.oh[i] * a.Lw + e.ow[i]] = -1;  // reset for reuse
  return e;
}

template <typename scalar_t, typename acc_t>
std::vector<ChannelEntries<acc_t>> merge_all(const TapsArgs<scalar_t, acc_t>& a) {
  std::vector<ChannelEntries<acc_t>> all(a.C);
  at::parallel_for(0, a.C, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> slot(a.Lh * a.Lw, -1);
    for (int64_t c = begin; c < end; ++c) all[c] = merge_taps(a, c, slot);
  });
  return all;
}

// Output columns ox with 0 <= ox * sw + off < W, as [lo, hi).
inline void column_range(int64_t off, int64_t sw, int64_t W, int64_t Wo, int64_t& lo, int64_t& hi) {
  lo = std::max<int64_t>(0, -div_floor(off, sw));
  hi = std::min<int64_t>(Wo, div_floor(W - 1 - off, sw) + 1);
}

template <typename scalar_t, typename acc_t>
void forward_plane(const TapsArgs<scalar_t, acc_t>& a, const ChannelEntries<acc_t>& e, int64_t plane,
                   std::vector<acc_t>& row) {
  const int64_t c = plane % a.C;
  const scalar_t* xp = a.x + plane * a.H * a.W;
  scalar_t* op = a.out + plane * a.Ho * a.Wo;
  const acc_t b = a.bias ? static_cast<acc_t>(a.bias[c]) : acc_t(0);
  const int64_t n_entries = static_cast<int64_t>(e.coef.size());
  for (int64_t oy = 0; oy < a.Ho; ++oy) {
    acc_t* __restrict r = row.data();
    std::fill(r, r + a.Wo, b);
    for (int64_t i = 0; i < n_entries; ++i) {
      const int64_t iy = oy * a.sh + e.oh[i] - a.ph;
      if (iy < 0 || iy >= a.H || e.coef[i] == acc_t(0)) continue;
      const int64_t off = e.ow[i] - a.pw;
      int64_t lo, hi;
      column_range(off, a.sw, a.W, a.Wo, lo, hi);
      const scalar_t* __restrict xr = xp + iy * a.W + off;
      const acc_t cf = e.coef[i];
      if (a.sw == 1) {
#pragma omp simd
        for (int64_t ox = lo; ox < hi; ++ox) r[ox] += cf * static_cast<acc_t>(xr[ox]);
      } else {
        for (int64_t ox = lo; ox < hi; ++ox) r[ox] += cf * static_cast<acc_t>(xr[ox * a.sw]);
      }
    }
    for (int64_t ox = 0; ox < a.Wo; ++ox) op[oy * a.Wo + ox] = static_cast<scalar_t>(r[ox]);
  }
}

// One pass over a plane for the backward: scatters grad_out into the input gradient (gin, accumulation
// type) and accumulates S[entry] = sum grad_out * shifted input, from which every tap's weight and
// position gradients follow.
template <typename scalar_t, typename acc_t>
void backward_plane(const TapsArgs<scalar_t, acc_t>& a, const ChannelEntries<acc_t>& e, int64_t plane,
                    acc_t* gin, acc_t* S) {
  const scalar_t* xp = a.x + plane * a.H * a.W;
  const scalar_t* gp = a.grad_out + plane * a.Ho * a.Wo;
  const int64_t n_entries = static_cast<int64_t>(e.coef.size());
  std::vector<acc_t> grow(a.Wo);
  for (int64_t oy = 0; oy < a.Ho; ++oy) {
    acc_t* __restrict g = grow.data();
    for (int64_t ox = 0; ox < a.Wo; ++ox) g[ox] = static_cast<acc_t>(gp[oy * a.Wo + ox]);
    for (int64_t i = 0; i < n_entries; ++i) {
      const int64_t iy = oy * a.sh + e.oh[i] - a.ph;
      if (iy < 0 || iy >= a.H) continue;
      const int64_t off = e.ow[i] - a.pw;
      int64_t lo, hi;
      column_range(off, a.sw, a.W, a.Wo, lo, hi);
      if (gin && e.coef[i] != acc_t(0)) {
        acc_t* __restrict gr = gin + iy * a.W + off;
        const acc_t cf = e.coef[i];
        if (a.sw == 1) {
#pragma omp simd
          for (int64_t ox = lo; ox < hi; ++ox) gr[ox] += cf * g[ox];
        } else {
          for (int64_t ox = lo; ox < hi; ++ox) gr[ox * a.sw] += cf * g[ox];
        }
      }
      if (S) {
        const scalar_t* __restrict xr = xp + iy * a.W + off;
        acc_t s = 0;
        if (a.sw == 1) {
#pragma omp simd reduction(+ : s)
          for (int64_t ox = lo; ox < hi; ++ox) s += g[ox] * static_cast<acc_t>(xr[ox]);
        } else {
          for (int64_t ox = lo; ox < hi; ++ox) s += g[ox] * static_cast<acc_t>(xr[ox * a.sw]);
        }
        S[i] += s;
      }
    }
  }
}

at::Tensor taps_conv_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                         const c10::optional<at::Tensor>& bias, at::IntArrayRef window, at::IntArrayRef stride,
                         at::IntArrayRef padding, c10::string_view interpolation) {
  const int interp = parse_interp(std::string(interpolation));
  check_taps_args(input, weight, positions, window, stride, padding, interp);
  auto out = at::empty(taps_output_size(input, window, stride, padding), input.options());
  if (out.numel() == 0) return out;
  const auto x = input.contiguous();
  const auto w = weight.contiguous();
  const auto pos = positions.to(acc_dtype(weight.scalar_type())).contiguous();
  const auto b = bias.has_value() ? bias->to(weight.scalar_type()).contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "taps_conv_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = make_taps_args<scalar_t, acc_t>(x, w, pos, window, stride, padding, interp);
    a.bias = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    a.out = out.data_ptr<scalar_t>();
    const auto entries = merge_all(a);
    at::parallel_for(0, a.N * a.C, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> row(a.Wo);
      for (int64_t plane = begin; plane < end; ++plane) forward_plane(a, entries[plane % a.C], plane, row);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> taps_conv_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
    at::IntArrayRef window, at::IntArrayRef stride, at::IntArrayRef padding, c10::string_view interpolation,
    std::array<bool, 4> mask) {
  const int interp = parse_interp(std::string(interpolation));
  check_taps_args(input, weight, positions, window, stride, padding, interp);
  const auto adt = acc_dtype(weight.scalar_type());
  const auto x = input.contiguous();
  const auto w = weight.contiguous();
  const auto pos = positions.to(adt).contiguous();
  const auto g = grad_output.to(input.scalar_type()).contiguous();
  const bool want_taps = mask[1] || mask[2];
  auto gin = mask[0] ? at::empty(input.sizes(), input.options()) : at::empty({0}, input.options());
  auto gw = at::zeros(weight.sizes(), weight.options().dtype(adt));
  auto gp = at::zeros(positions.sizes(), weight.options().dtype(adt));
  const int64_t N = input.size(0), C = weight.size(0);
  if (g.numel() > 0 && (mask[0] || want_taps)) {
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "taps_conv_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      auto a = make_taps_args<scalar_t, acc_t>(x, w, pos, window, stride, padding, interp);
      a.grad_out = g.data_ptr<scalar_t>();
      a.grad_weight = gw.data_ptr<acc_t>();
      a.grad_pos_w = gp.data_ptr<acc_t>() + (window.size() == 2 ? C * a.K : 0);
      a.grad_pos_h = window.size() == 2 ? gp.data_ptr<acc_t>() : nullptr;
      const auto entries = merge_all(a);
      const int64_t HW = a.H * a.W;
      scalar_t* gin_ptr = mask[0] ? gin.data_ptr<scalar_t>() : nullptr;
      auto run_plane = [&](int64_t plane, std::vector<acc_t>& gbuf, acc_t* S) {
        const auto& e = entries[plane % C];
        if (gin_ptr) std::fill(gbuf.begin(), gbuf.end(), acc_t(0));
        backward_plane(a, e, plane, gin_ptr ? gbuf.data() : nullptr, S);
        if (gin_ptr)
          for (int64_t i = 0; i < HW; ++i) gin_ptr[plane * HW + i] = static_cast<scalar_t>(gbuf[i]);
      };
      if (want_taps) {
        // Channels in parallel, batch inside: the per-channel sums S need no reduction across threads.
        at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
          std::vector<acc_t> gbuf(gin_ptr ? HW : 0);
          for (int64_t c = begin; c < end; ++c) {
            const auto& e = entries[c];
            std::vector<acc_t> S(e.coef.size(), acc_t(0));
            for (int64_t n = 0; n < N; ++n) run_plane(n * C + c, gbuf, S.data());
            for (int64_t k = 0; k < a.K; ++k) {
              const TapCorners<acc_t> t = tap_corners(a, c, k);
              acc_t s4[4] = {0, 0, 0, 0};
              for (int j = 0; j < 4; ++j) {
                const int32_t idx = e.corner[k * 4 + j];
                if (idx >= 0) s4[j] = S[idx];
              }
              taps_wgrad_finish(c, k, t, s4, a);
            }
          }
        });
      } else {
        at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
          std::vector<acc_t> gbuf(HW);
          for (int64_t plane = begin; plane < end; ++plane) run_plane(plane, gbuf, nullptr);
        });
      }
    });
  } else if (mask[0]) {
    gin.zero_();
  }
  const std::vector<int64_t> sum_dims = window.size() == 2 ? std::vector<int64_t>{0, 2, 3} : std::vector<int64_t>{0, 2};
  auto gb = mask[3] ? grad_output.sum(sum_dims, false, adt).to(weight.scalar_type()) : at::empty({0}, weight.options());
  return {gin, mask[1] ? gw.to(weight.scalar_type()) : at::empty({0}, weight.options()),
          mask[2] ? gp.to(positions.scalar_type()) : at::empty({0}, positions.options()), gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(dcls_convert, CPU, m) {
  m.impl("taps_conv", &taps_conv_cpu);
  m.impl("taps_conv_backward", &taps_conv_backward_cpu);
}

}  // namespace dcls_convert
