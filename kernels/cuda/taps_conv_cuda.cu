// Depthwise tap convolution on CUDA: one thread per output element (forward) and per input element
// (grad input), both gathers; weight/position gradients by one block per tap with a fixed-order
// block reduction. No atomics: results are deterministic run to run.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "dcls_convert/args.h"
#include "launch.cuh"

namespace dcls_convert {
namespace {

template <typename scalar_t, typename acc_t>
struct ForwardFn {
  __device__ static void run(int64_t i, const TapsArgs<scalar_t, acc_t>& a) { taps_forward_thread(i, a); }
};
template <typename scalar_t, typename acc_t>
struct GradInputFn {
  __device__ static void run(int64_t i, const TapsArgs<scalar_t, acc_t>& a) { taps_grad_input_thread(i, a); }
};

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kWgradThreads) wgrad_kernel(TapsArgs<scalar_t, acc_t> a) {
  __shared__ acc_t sums[4][kWgradThreads];
  const int tid = threadIdx.x;
  const int64_t elems = a.N * a.Ho * a.Wo;
  for (int64_t ck = blockIdx.x; ck < a.C * a.K; ck += gridDim.x) {
    const int64_t c = ck / a.K, k = ck % a.K;
    const TapCorners<acc_t> t = tap_corners(a, c, k);
    acc_t S[4] = {0, 0, 0, 0};
    for (int64_t e = tid; e < elems; e += kWgradThreads) taps_wgrad_partial(c, t, e, a, S);
    for (int j = 0; j < 4; ++j) sums[j][tid] = S[j];
    __syncthreads();
    for (int half = kWgradThreads / 2; half > 0; half /= 2) {
      wgrad_reduce_step(sums, tid, half);
      __syncthreads();
    }
    if (tid == 0) {
      const acc_t total[4] = {sums[0][0], sums[1][0], sums[2][0], sums[3][0]};
      taps_wgrad_finish(c, k, t, total, a);
    }
    __syncthreads();  // sums is rewritten by the next tap
  }
}

at::Tensor taps_conv_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                          const c10::optional<at::Tensor>& bias, at::IntArrayRef window, at::IntArrayRef stride,
                          at::IntArrayRef padding, c10::string_view interpolation) {
  const int interp = parse_interp(std::string(interpolation));
  check_taps_args(input, weight, positions, window, stride, padding, interp, bias);
  c10::cuda::CUDAGuard guard(input.device());
  auto out = at::empty(taps_output_size(input, window, stride, padding), input.options());
  const TapsInputs in(input, weight, positions, bias);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "taps_conv_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = make_taps_args<scalar_t, acc_t>(in.x, in.weight, in.pos, window, stride, padding, interp);
    a.bias = in.bias.defined() ? in.bias.data_ptr<scalar_t>() : nullptr;
    a.out = out.data_ptr<scalar_t>();
    launch_grid_stride<ForwardFn<scalar_t, acc_t>>(out.numel(), a);
  });
  return in_memory_format(out, taps_memory_format(input));  // the kernels index NCHW; keep the input's format
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> taps_conv_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
    at::IntArrayRef window, at::IntArrayRef stride, at::IntArrayRef padding, c10::string_view interpolation,
    std::array<bool, 4> mask) {
  const int interp = parse_interp(std::string(interpolation));
  check_taps_backward_args(grad_output, input, weight, positions, window, stride, padding, interp);
  c10::cuda::CUDAGuard guard(input.device());
  const TapsInputs in(input, weight, positions);
  const auto g = grad_output.to(input.scalar_type()).contiguous();
  TapsGrads grads(input, weight, positions, mask);
  const bool two_d = window.size() == 2;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "taps_conv_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = make_taps_args<scalar_t, acc_t>(in.x, in.weight, in.pos, window, stride, padding, interp);
    a.grad_out = g.data_ptr<scalar_t>();
    if (mask[0]) {
      a.grad_in = grads.gin.data_ptr<scalar_t>();
      launch_grid_stride<GradInputFn<scalar_t, acc_t>>(grads.gin.numel(), a);
    }
    if (grads.want_taps() && a.C * a.K > 0) {
      grads.bind_taps(a, two_d);
      const int blocks = static_cast<int>(std::min<int64_t>(a.C * a.K, 65535 * 8));
      wgrad_kernel<scalar_t, acc_t><<<blocks, kWgradThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return grads.finish(grad_output, weight, positions);
}

}  // namespace

TORCH_LIBRARY_IMPL(dcls_convert, CUDA, m) {
  m.impl("taps_conv", &taps_conv_cuda);
  m.impl("taps_conv_backward", &taps_conv_backward_cuda);
}

}  // namespace dcls_convert
