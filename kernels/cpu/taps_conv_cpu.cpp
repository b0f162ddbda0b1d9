// Depthwise tap convolution on CPU. Each channel's taps are merged into a short list of window offsets
// with their interpolation weight (at most 4K entries; the L x L kernel is never built). A plane is copied
// once into a zero-padded buffer in the accumulation type, after which every register tile of output
// (plane_kernels.h) is a sum over entries of shifted buffer rows: no bounds checks in the inner loop.
// Planes are read and written through their strides (PlaneLayout): channels_last, sliced and expanded
// tensors are never copied, and the output and input gradient keep the input's memory format.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "dcls_convert/grad_buffers.h"
#include "plane_kernels.h"

namespace dcls_convert {
namespace {

template <typename acc_t>
struct ChannelEntries {
  std::vector<int64_t> oh, ow;  // window offsets of the entries
  std::vector<acc_t> coef;      // merged interpolation weights
  std::vector<int32_t> corner;  // (K, 4): entry of each in-window corner, -1 when outside
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

// Element strides of a (N, C, [H,] W) tensor. The CPU kernels read and write every plane through them, so
// channels_last, sliced and expanded (stride 0: the gradient of a sum) tensors need no copy. Planes are
// visited channel after channel, so a channels_last plane's cache lines are still in L2 for the next one.
struct PlaneLayout {
  int64_t n = 0, c = 0, h = 0, w = 1;
  explicit PlaneLayout(const at::Tensor& t)
      : n(t.stride(0)), c(t.stride(1)), h(t.dim() == 4 ? t.stride(2) : 0), w(t.stride(-1)) {}
  int64_t at(int64_t plane, int64_t C) const { return plane / C * n + plane % C * c; }
};

// Padded-buffer geometry for reading the input at (oy * sh + oh, ox * sw + ow) over whole tiles.
template <typename scalar_t, typename acc_t>
void input_buffer_size(const TapsArgs<scalar_t, acc_t>& a, int64_t& Hp, int64_t& Wp) {
  Hp = std::max(a.H + 2 * a.ph, plane_rows_needed(a.Ho, a.sh, a.Lh));
  Wp = std::max(a.W + 2 * a.pw, plane_cols_needed<acc_t>(a.Wo, a.sw, a.Lw));
}

template <typename scalar_t, typename acc_t>
void forward_plane(const TapsArgs<scalar_t, acc_t>& a, const PlaneLayout& lx, const PlaneLayout& lo,
                   const ChannelEntries<acc_t>& e, int64_t plane, PaddedPlane<acc_t>& xpad, std::vector<acc_t>& rows) {
  int64_t Hp, Wp;
  input_buffer_size(a, Hp, Wp);
  const acc_t* buf = xpad.fill(a.x + lx.at(plane, a.C), lx.h, lx.w, a.H, a.W, a.ph, a.pw, Hp, Wp);
  const acc_t b = a.bias ? static_cast<acc_t>(a.bias[plane % a.C]) : acc_t(0);
  correlate_plane(buf, Wp, e.oh, e.ow, e.coef, a.sh, a.sw, b, a.Ho, a.Wo, a.out + lo.at(plane, a.C), lo.h, lo.w, rows);
}

// The entries that carry weight, optionally mirrored through the window centre (the input gradient at
// stride 1 correlates the output gradient with the mirrored ones). A tap on the grid puts exactly zero
// weight on its far corners (a freshly converted model: 3 of every 4 entries), and those add nothing to
// the output or the input gradient; only the tap sums need them. Built once per channel, not per plane.
template <typename acc_t>
std::vector<ChannelEntries<acc_t>> weighted(const std::vector<ChannelEntries<acc_t>>& all, bool flip, int64_t Lh,
                                            int64_t Lw) {
  std::vector<ChannelEntries<acc_t>> out(all.size());
  for (size_t c = 0; c < all.size(); ++c) {
    const ChannelEntries<acc_t>& e = all[c];
    ChannelEntries<acc_t>& f = out[c];
    for (size_t i = 0; i < e.coef.size(); ++i) {
      if (e.coef[i] == acc_t(0)) continue;
      f.oh.push_back(flip ? Lh - 1 - e.oh[i] : e.oh[i]);
      f.ow.push_back(flip ? Lw - 1 - e.ow[i] : e.ow[i]);
      f.coef.push_back(e.coef[i]);
    }
  }
  return out;
}

// Input gradient for stride 1: a correlation of the padded output gradient with the flipped entries.
template <typename scalar_t, typename acc_t>
void grad_input_plane_stride1(const TapsArgs<scalar_t, acc_t>& a, const PlaneLayout& lg, const PlaneLayout& li,
                              const ChannelEntries<acc_t>& flip, int64_t plane, PaddedPlane<acc_t>& gpad,
                              std::vector<acc_t>& rows, scalar_t* gin) {
  const int64_t Hp = plane_rows_needed(a.H, 1, a.Lh), Wp = plane_cols_needed<acc_t>(a.W, 1, a.Lw);
  const acc_t* buf = gpad.fill(a.grad_out + lg.at(plane, a.C), lg.h, lg.w, a.Ho, a.Wo, a.Lh - 1 - a.ph,
                               a.Lw - 1 - a.pw, Hp, Wp);
  correlate_plane(buf, Wp, flip.oh, flip.ow, flip.coef, 1, 1, acc_t(0), a.H, a.W, gin + li.at(plane, a.C), li.h,
                  li.w, rows);
}

// Input gradient for any stride: scatter of output-gradient rows (strided writes, accumulation buffer).
template <typename scalar_t, typename acc_t>
void grad_input_plane_strided(const TapsArgs<scalar_t, acc_t>& a, const PlaneLayout& lg, const PlaneLayout& li,
                              const ChannelEntries<acc_t>& e, int64_t plane, std::vector<acc_t>& buf, scalar_t* gin) {
  int64_t Hp, Wp;
  input_buffer_size(a, Hp, Wp);
  buf.assign(Hp * Wp, acc_t(0));
  const scalar_t* gp = a.grad_out + lg.at(plane, a.C);
  for (int64_t oy = 0; oy < a.Ho; ++oy)
    for (size_t i = 0; i < e.coef.size(); ++i) {
      acc_t* dst = buf.data() + (oy * a.sh + e.oh[i]) * Wp + e.ow[i];
      for (int64_t ox = 0; ox < a.Wo; ++ox) dst[ox * a.sw] += e.coef[i] * static_cast<acc_t>(gp[oy * lg.h + ox * lg.w]);
    }
  scalar_t* out = gin + li.at(plane, a.C);
  for (int64_t y = 0; y < a.H; ++y)
    for (int64_t x = 0; x < a.W; ++x) out[y * li.h + x * li.w] = static_cast<scalar_t>(buf[(y + a.ph) * Wp + x + a.pw]);
}

// S[e] += sum over the plane of grad_out * input shifted by entry e; the taps' weight and position
// gradients follow from the S of their corners.
template <typename scalar_t, typename acc_t>
void tap_sums_plane(const TapsArgs<scalar_t, acc_t>& a, const PlaneLayout& lx, const PlaneLayout& lg,
                    const ChannelEntries<acc_t>& e, int64_t plane, PaddedPlane<acc_t>& xpad, PaddedPlane<acc_t>& gpad,
                    acc_t* S) {
  int64_t Hp, Wp;
  input_buffer_size(a, Hp, Wp);
  const acc_t* xbuf = xpad.fill(a.x + lx.at(plane, a.C), lx.h, lx.w, a.H, a.W, a.ph, a.pw, Hp, Wp);
  using V = Lanes<acc_t>;
  constexpr int64_t T = V::tile, n = V::n;
  static_assert(T % n == 0, "tiles are whole vectors");
  const int64_t Wo_t = round_up(a.Wo, n);  // the input buffer is readable up to round_up(Wo, T) columns
  const acc_t* gbuf = gpad.fill(a.grad_out + lg.at(plane, a.C), lg.h, lg.w, a.Ho, a.Wo, 0, 0, a.Ho, Wo_t);  // zero tail
  const int64_t ne = static_cast<int64_t>(e.coef.size());
  if (a.sw == 1) {
    // Eight entries per pass share each load of the output gradient (9 loads per 8 FMAs, not 16).
    constexpr int G = 8;
    for (int64_t i0 = 0; i0 < ne; i0 += G) {
      const acc_t* src[G];
      for (int j = 0; j < G; ++j) {
        const int64_t i = std::min(i0 + j, ne - 1);
        src[j] = xbuf + e.oh[i] * Wp + e.ow[i];
      }
      typename V::vec acc[G] = {};
      for (int64_t oy = 0; oy < a.Ho; ++oy) {
        const acc_t* g = gbuf + oy * Wo_t;
        const int64_t row = oy * a.sh * Wp;
        for (int64_t ox0 = 0; ox0 < Wo_t; ox0 += n) {
          const typename V::vec gv = V::load(g + ox0);
          for (int j = 0; j < G; ++j) acc[j] += gv * V::load(src[j] + row + ox0);
        }
      }
      for (int j = 0; j < G && i0 + j < ne; ++j) {
        acc_t lanes[n];
        std::memcpy(lanes, &acc[j], sizeof(acc[j]));
        acc_t s = 0;
        for (int64_t l = 0; l < n; ++l) s += lanes[l];
        S[i0 + j] += s;
      }
    }
    return;
  }
  for (int64_t i = 0; i < ne; ++i) {
    acc_t s = 0;
    for (int64_t oy = 0; oy < a.Ho; ++oy) {
      const acc_t* g = gbuf + oy * Wo_t;
      const acc_t* src = xbuf + (oy * a.sh + e.oh[i]) * Wp + e.ow[i];
      for (int64_t ox = 0; ox < a.Wo; ++ox) s += g[ox] * src[ox * a.sw];
    }
    S[i] += s;
  }
}

at::Tensor taps_conv_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                         const c10::optional<at::Tensor>& bias, at::IntArrayRef window, at::IntArrayRef stride,
                         at::IntArrayRef padding, c10::string_view interpolation) {
  const int interp = parse_interp(std::string(interpolation));
  auto out = checked_taps_output(input, weight, positions, bias, window, stride, padding, interp);
  if (out.numel() == 0) return out;
  const TapsInputs in(input, weight, positions, bias, /*keep_input_layout=*/true);
  const PlaneLayout lx(in.x), lo(out);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "taps_conv_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = make_taps_args<scalar_t, acc_t>(in.x, in.weight, in.pos, window, stride, padding, interp);
    a.bias = in.bias.defined() ? in.bias.data_ptr<acc_t>() : nullptr;
    a.out = out.data_ptr<scalar_t>();
    const auto entries = weighted(merge_all(a), /*flip=*/false, a.Lh, a.Lw);
    at::parallel_for(0, a.N * a.C, 1, [&](int64_t begin, int64_t end) {
      PaddedPlane<acc_t> xpad;
      std::vector<acc_t> rows;
      for (int64_t plane = begin; plane < end; ++plane)
        forward_plane(a, lx, lo, entries[plane % a.C], plane, xpad, rows);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> taps_conv_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
    at::IntArrayRef window, at::IntArrayRef stride, at::IntArrayRef padding, c10::string_view interpolation,
    std::array<bool, 4> mask) {
  TapsBackward b(grad_output, input, weight, positions, window, stride, padding, interpolation, mask);
  const int interp = b.interp;
  const TapsInputs& in = b.in;
  const at::Tensor& g = b.g;
  TapsGrads& grads = b.grads;
  const bool want_taps = grads.want_taps();
  const int64_t N = input.size(0), C = weight.size(0);
  if (g.numel() > 0 && (mask[0] || want_taps)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "taps_conv_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      auto a = make_taps_args<scalar_t, acc_t>(in.x, in.weight, in.pos, window, stride, padding, interp);
      a.grad_out = g.data_ptr<scalar_t>();
      if (want_taps) grads.bind_taps(a, window.size() == 2);
      const auto entries = merge_all(a);
      const PlaneLayout lx(in.x), lg(g);
      if (mask[0]) {
        const PlaneLayout li(grads.gin);
        scalar_t* gin_ptr = grads.gin.data_ptr<scalar_t>();
        const bool unit = a.sh == 1 && a.sw == 1;
        const auto live = weighted(entries, /*flip=*/unit, a.Lh, a.Lw);
        at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
          PaddedPlane<acc_t> gpad;
          std::vector<acc_t> buf;
          for (int64_t plane = begin; plane < end; ++plane) {
            if (unit) grad_input_plane_stride1(a, lg, li, live[plane % C], plane, gpad, buf, gin_ptr);
            else grad_input_plane_strided(a, lg, li, live[plane % C], plane, buf, gin_ptr);
          }
        });
      }
      if (want_taps) {
        // Channels in parallel (the per-channel sums need no reduction across threads); inside a thread the
        // batch is the outer loop, so consecutive planes are neighbouring channels of one image.
        at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
          PaddedPlane<acc_t> xpad, gpad;
          std::vector<std::vector<acc_t>> sums(end - begin);
          for (int64_t c = begin; c < end; ++c) sums[c - begin].assign(entries[c].coef.size(), acc_t(0));
          for (int64_t n = 0; n < N; ++n)
            for (int64_t c = begin; c < end; ++c)
              tap_sums_plane(a, lx, lg, entries[c], n * C + c, xpad, gpad, sums[c - begin].data());
          for (int64_t c = begin; c < end; ++c) {
            const auto& e = entries[c];
            const auto& S = sums[c - begin];
            for (int64_t k = 0; k < a.K; ++k) {
              acc_t s4[4] = {0, 0, 0, 0};
              for (int j = 0; j < 4; ++j) {
                const int32_t idx = e.corner[k * 4 + j];
                if (idx >= 0) s4[j] = S[idx];
              }
              taps_wgrad_finish(c, k, tap_corners(a, c, k), s4, a);
            }
          }
        });
      }
    });
  }
  return grads.finish(grad_output, weight, positions);
}

}  // namespace

TORCH_LIBRARY_IMPL(dcls_convert, CPU, m) {
  m.impl("taps_conv", &taps_conv_cpu);
  m.impl("taps_conv_backward", &taps_conv_backward_cpu);
}

}  // namespace dcls_convert
