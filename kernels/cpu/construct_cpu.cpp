// DCLS kernel construction on CPU: the forward scatters each tap onto its footprint (2^D corners for
// bilinear, 1 for nearest, the separable window for gaussian); the backward runs the same per-tap
// function as the CUDA kernel. Saved for backward: weight, positions, sigma only.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "dcls_convert/checks.h"
#include "dcls_convert/grad_buffers.h"

namespace dcls_convert {
namespace {

template <typename scalar_t, typename acc_t>
void scatter_plane(const ConstructArgs<scalar_t, acc_t>& a, int64_t p, acc_t* buf) {
  const int64_t vol = a.volume(), D = a.D;
  std::fill(buf, buf + vol, acc_t(0));
  for (int64_t k = 0; k < a.K; ++k) {
    const acc_t w = static_cast<acc_t>(a.weight[p * a.K + k]);
    Coord<acc_t> c[3];
    for (int64_t d = 0; d < D; ++d) c[d] = grid_coord(a.pos[a.at(d, p, k)], a.L[d], a.interp);
    if (a.interp == kGaussian) {
      std::vector<acc_t> n[3];
      for (int64_t d = 0; d < 3; ++d) {
        n[d].assign(a.L[d], acc_t(1));
        if (d >= D) continue;
        const Gauss<acc_t> g = gauss_axis(c[d].u, a.sigma[a.at(d, p, k)], a.sigma_min, a.L[d]);
        for (int64_t t = 0; t < a.L[d]; ++t) n[d][t] = gauss_value(g, t);
      }
      int64_t f = 0;
      for (int64_t t0 = 0; t0 < a.L[0]; ++t0)
        for (int64_t t1 = 0; t1 < a.L[1]; ++t1)
          for (int64_t t2 = 0; t2 < a.L[2]; ++t2, ++f) buf[f] += w * n[0][t0] * n[1][t1] * n[2][t2];
      continue;
    }
    for_each_corner(c, D, a.L, a.interp,
                    [&](int64_t f, const acc_t* cw, int) { buf[f] += w * cw[0] * cw[1] * cw[2]; });
  }
}

at::Tensor construct_cpu(const at::Tensor& weight, const at::Tensor& positions, const c10::optional<at::Tensor>& sigma,
                         at::IntArrayRef window, c10::string_view interpolation, double sigma_min) {
  const int interp = parse_interp(std::string(interpolation));
  check_construct_args(weight, positions, sigma, window, interp);
  auto out = at::empty(construct_output_size(weight, window), weight.options());
  if (out.numel() == 0) return out.zero_();
  const ConstructInputs in(weight, positions, sigma, interp);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "construct_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = make_construct_args<scalar_t, acc_t>(in.weight, in.pos, in.sigma, window, interp, sigma_min);
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t vol = a.volume();
    at::parallel_for(0, a.P, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> buf(vol);
      for (int64_t p = begin; p < end; ++p) {
        scatter_plane(a, p, buf.data());
        for (int64_t f = 0; f < vol; ++f) o[p * vol + f] = static_cast<scalar_t>(buf[f]);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> construct_backward_cpu(
    const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& positions,
    const c10::optional<at::Tensor>& sigma, at::IntArrayRef window, c10::string_view interpolation,
    double sigma_min, std::array<bool, 3> mask) {
  const int interp = parse_interp(std::string(interpolation));
  check_construct_backward_args(grad, weight, positions, sigma, window, interp);
  ConstructGrads grads(weight, positions, interp, mask);
  const auto g = grad.to(weight.scalar_type()).contiguous();
  const ConstructInputs in(weight, positions, sigma, interp);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "construct_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = make_construct_args<scalar_t, acc_t>(in.weight, in.pos, in.sigma, window, interp, sigma_min);
    a.grad = g.data_ptr<scalar_t>();
    grads.bind(a);
    at::parallel_for(0, a.P * a.K, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) construct_backward_thread(i, a);
    });
  });
  return grads.finish(weight, positions, sigma);
}

}  // namespace

TORCH_LIBRARY_IMPL(dcls_convert, CPU, m) {
  m.impl("construct", &construct_cpu);
  m.impl("construct_backward", &construct_backward_cpu);
}

}  // namespace dcls_convert
