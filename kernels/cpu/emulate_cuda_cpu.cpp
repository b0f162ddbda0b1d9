// CPU emulation of the CUDA launch grids: runs the same per-thread functions the CUDA kernels run,
// one index at a time over the full grid, so tests check the device code on machines without a GPU.
// Private ops (leading underscore), small shapes only, single-threaded on purpose.
#include <torch/library.h>

#include <vector>

#include "dcls_convert/args.h"

namespace dcls_convert {
namespace {

at::Tensor emulate_construct(const at::Tensor& weight, const at::Tensor& positions,
                             const c10::optional<at::Tensor>& sigma, at::IntArrayRef window,
                             c10::string_view interpolation, double sigma_min) {
  const int interp = parse_interp(std::string(interpolation));
  check_construct_args(weight, positions, sigma, window, interp);
  auto out = at::empty(construct_output_size(weight, window), weight.options());
  const ConstructInputs in(weight, positions, sigma, interp);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "emulate_construct", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = make_construct_args<scalar_t, acc_t>(in.weight, in.pos, in.sigma, window, interp, sigma_min);
    a.out = out.data_ptr<scalar_t>();
    for (int64_t i = 0; i < out.numel(); ++i) construct_forward_thread(i, a);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> emulate_construct_backward(
    const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& positions,
    const c10::optional<at::Tensor>& sigma, at::IntArrayRef window, c10::string_view interpolation,
    double sigma_min) {
  const int interp = parse_interp(std::string(interpolation));
  check_construct_backward_args(grad, weight, positions, sigma, window, interp);
  const auto adt = acc_dtype(weight.scalar_type());
  auto gw = at::empty(weight.sizes(), weight.options().dtype(adt));
  auto gp = at::empty(positions.sizes(), weight.options().dtype(adt));
  auto gs = at::zeros(positions.sizes(), weight.options().dtype(adt));
  const ConstructInputs in(weight, positions, sigma, interp);
  const auto g = grad.to(weight.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "emulate_construct_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = make_construct_args<scalar_t, acc_t>(in.weight, in.pos, in.sigma, window, interp, sigma_min);
    a.grad = g.data_ptr<scalar_t>();
    a.grad_weight = gw.data_ptr<acc_t>();
    a.grad_pos = gp.data_ptr<acc_t>();
    a.grad_sigma = interp == kGaussian ? gs.data_ptr<acc_t>() : nullptr;
    for (int64_t i = 0; i < a.P * a.K; ++i) construct_backward_thread(i, a);
  });
  return {gw, gp, gs};
}

at::Tensor emulate_taps_conv(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                             const c10::optional<at::Tensor>& bias, at::IntArrayRef window, at::IntArrayRef stride,
                             at::IntArrayRef padding, c10::string_view interpolation) {
  const int interp = parse_interp(std::string(interpolation));
  check_taps_args(input, weight, positions, window, stride, padding, interp, bias);
  auto out = at::empty(taps_output_size(input, window, stride, padding), input.options());
  const TapsInputs in(input, weight, positions, bias);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "emulate_taps_conv", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = make_taps_args<scalar_t, acc_t>(in.x, in.weight, in.pos, window, stride, padding, interp);
    a.bias = in.bias.defined() ? in.bias.data_ptr<scalar_t>() : nullptr;
    a.out = out.data_ptr<scalar_t>();
    for (int64_t i = 0; i < out.numel(); ++i) taps_forward_thread(i, a);
  });
  return out;
}

// Returns grad input, grad weight (C, K) and grad positions (D, C, K) in the accumulation type.
std::tuple<at::Tensor, at::Tensor, at::Tensor> emulate_taps_conv_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
    at::IntArrayRef window, at::IntArrayRef stride, at::IntArrayRef padding, c10::string_view interpolation) {
  const int interp = parse_interp(std::string(interpolation));
  check_taps_backward_args(grad_output, input, weight, positions, window, stride, padding, interp);
  const auto adt = acc_dtype(weight.scalar_type());
  const TapsInputs in(input, weight, positions);
  const auto g = grad_output.contiguous();
  auto gin = at::empty(input.sizes(), input.options());
  auto gw = at::zeros(weight.sizes(), weight.options().dtype(adt));
  auto gp = at::zeros(positions.sizes(), weight.options().dtype(adt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "emulate_taps_conv_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = make_taps_args<scalar_t, acc_t>(in.x, in.weight, in.pos, window, stride, padding, interp);
    a.grad_out = g.data_ptr<scalar_t>();
    a.grad_in = gin.data_ptr<scalar_t>();
    a.grad_weight = gw.data_ptr<acc_t>();
    const bool two_d = window.size() == 2;
    a.grad_pos_h = two_d ? gp.data_ptr<acc_t>() : nullptr;
    a.grad_pos_w = gp.data_ptr<acc_t>() + (two_d ? a.C * a.K : 0);
    for (int64_t i = 0; i < gin.numel(); ++i) taps_grad_input_thread(i, a);
    // One CUDA block per tap (c, k), phase by phase as wgrad_kernel runs them: every thread's strided
    // partial sums, then the halving steps of the block reduction, then the finish step.
    const int64_t elems = a.N * a.Ho * a.Wo;
    std::vector<acc_t> block(4 * kWgradThreads);
    auto sums = reinterpret_cast<acc_t (*)[kWgradThreads]>(block.data());
    for (int64_t ck = 0; ck < a.C * a.K; ++ck) {
      const int64_t c = ck / a.K, k = ck % a.K;
      const TapCorners<acc_t> t = tap_corners(a, c, k);
      for (int tid = 0; tid < kWgradThreads; ++tid) {
        acc_t S[4] = {0, 0, 0, 0};
        for (int64_t e = tid; e < elems; e += kWgradThreads) taps_wgrad_partial(c, t, e, a, S);
        for (int j = 0; j < 4; ++j) sums[j][tid] = S[j];
      }
      for (int half = kWgradThreads / 2; half > 0; half /= 2)
        for (int tid = 0; tid < kWgradThreads; ++tid) wgrad_reduce_step(sums, tid, half);
      const acc_t total[4] = {sums[0][0], sums[1][0], sums[2][0], sums[3][0]};
      taps_wgrad_finish(c, k, t, total, a);
    }
  });
  return {gin, gw, gp};
}

}  // namespace

TORCH_LIBRARY_IMPL(dcls_convert, CPU, m) {
  m.impl("_emulate_cuda_dcls_construct", &emulate_construct);
  m.impl("_emulate_cuda_dcls_construct_backward", &emulate_construct_backward);
  m.impl("_emulate_cuda_taps_conv", &emulate_taps_conv);
  m.impl("_emulate_cuda_taps_conv_backward", &emulate_taps_conv_backward);
}

}  // namespace dcls_convert
