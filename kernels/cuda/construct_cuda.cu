// DCLS kernel construction on CUDA: one thread per dense-kernel element (gather over taps) for the
// forward (gaussian: one block per plane with the taps' profiles in shared memory), one thread per tap for the
// backward; no atomics, so both are deterministic.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "dcls_convert/grad_buffers.h"
#include "launch.cuh"

namespace dcls_convert {
namespace {

template <typename scalar_t, typename acc_t>
struct ForwardFn {
  __device__ static void run(int64_t i, const ConstructArgs<scalar_t, acc_t>& a) { construct_forward_thread(i, a); }
};
template <typename scalar_t, typename acc_t>
struct BackwardFn {
  __device__ static void run(int64_t i, const ConstructArgs<scalar_t, acc_t>& a) { construct_backward_thread(i, a); }
};

// Gaussian forward: one block per plane, the taps' 1-D profiles in shared memory (construct_threads.h).
template <typename scalar_t, typename acc_t>
__global__ void gauss_construct_kernel(ConstructArgs<scalar_t, acc_t> a) {
  extern __shared__ __align__(16) unsigned char smem[];
  acc_t* prof = reinterpret_cast<acc_t*>(smem);
  for (int64_t p = blockIdx.x; p < a.P; p += gridDim.x) {
    gauss_profiles_phase(p, threadIdx.x, blockDim.x, a, prof);
    __syncthreads();
    gauss_gather_phase(p, threadIdx.x, blockDim.x, a, prof);
    __syncthreads();  // the next plane overwrites the profiles
  }
}

at::Tensor construct_cuda(const at::Tensor& weight, const at::Tensor& positions, const c10::optional<at::Tensor>& sigma,
                          at::IntArrayRef window, c10::string_view interpolation, double sigma_min) {
  const int interp = parse_interp(std::string(interpolation));
  check_construct_args(weight, positions, sigma, window, interp);
  c10::cuda::CUDAGuard guard(weight.device());
  auto out = at::empty(construct_output_size(weight, window), weight.options());
  const ConstructInputs in(weight, positions, sigma, interp);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "construct_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = make_construct_args<scalar_t, acc_t>(in.weight, in.pos, in.sigma, window, interp, sigma_min);
    a.out = out.data_ptr<scalar_t>();
    if (gauss_profiles_fit(a) && a.P > 0) {
      const int threads = static_cast<int>(std::min<int64_t>(kThreads, std::max<int64_t>(32, (a.volume() + 31) / 32 * 32)));
      const int blocks = static_cast<int>(std::min<int64_t>(a.P, 65535 * 8));
      const size_t bytes = static_cast<size_t>(gauss_profile_count(a)) * sizeof(acc_t);
      gauss_construct_kernel<scalar_t, acc_t><<<blocks, threads, bytes, c10::cuda::getCurrentCUDAStream()>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      launch_grid_stride<ForwardFn<scalar_t, acc_t>>(out.numel(), a);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> construct_backward_cuda(
    const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& positions,
    const c10::optional<at::Tensor>& sigma, at::IntArrayRef window, c10::string_view interpolation,
    double sigma_min, std::array<bool, 3> mask) {
  const int interp = parse_interp(std::string(interpolation));
  check_construct_backward_args(grad, weight, positions, sigma, window, interp);
  c10::cuda::CUDAGuard guard(weight.device());
  ConstructGrads grads(weight, positions, interp, mask);
  const ConstructInputs in(weight, positions, sigma, interp);
  const auto g = grad.to(weight.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "construct_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = make_construct_args<scalar_t, acc_t>(in.weight, in.pos, in.sigma, window, interp, sigma_min);
    a.grad = g.data_ptr<scalar_t>();
    grads.bind(a);
    launch_grid_stride<BackwardFn<scalar_t, acc_t>>(a.P * a.K, a);
  });
  return grads.finish(weight, positions, sigma);
}

}  // namespace

TORCH_LIBRARY_IMPL(dcls_convert, CUDA, m) {
  m.impl("construct", &construct_cuda);
  m.impl("construct_backward", &construct_backward_cuda);
}

}  // namespace dcls_convert
