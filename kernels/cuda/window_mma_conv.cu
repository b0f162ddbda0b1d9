// The tensor-core convolutions' launchers (window_launch.h): the window, then the convolution (the forward, or
// the input gradient with the window turned; window_conv.h, or window_plane.h for small planes), for float16 and
// bfloat16 (window_plane.h's strips also for float32, as 3xTF32); compiled apart from the correlation's
// (window_mma.cu), so that a build runs the two in parallel.
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include "launch.cuh"
#include "window_build.cuh"
#include "window_launch.h"
#include "window_mma.cuh"

namespace dcls_convert {

template <typename scalar_t>
void launch_window_conv(WindowConv<scalar_t> w, const TapsArgs<scalar_t, float>& a, const at::Tensor& like, bool flip) {
  auto kern = at::empty({w.kernel_elems()}, like.options());
  auto* k = static_cast<scalar_t*>(kern.data_ptr());
  w.kern = k;
  launch_window_build(a, w.kw(), flip, k);
  const int64_t bytes = w.smem_words() * 4;
  auto kernel = with_conv_tiles(w.mt, w.nt, [](auto m, auto n) {
    return window_conv_kernel<decltype(m)::value, decltype(n)::value, scalar_t>;
  });
  const void* kp = reinterpret_cast<const void*>(kernel);
  allow_smem(kp, bytes);
  const int device = like.get_device();
  w.slabs = window_conv_slabs(w, 4 * int64_t(blocks_per_sm(kp, kWindowCorrThreads, bytes, device)) * sm_count(device));
  kernel<<<grid_blocks(w.blocks()), kWindowCorrThreads, bytes, c10::cuda::getCurrentCUDAStream()>>>(w);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void launch_window_plane(WindowPlane<scalar_t> w, const TapsArgs<scalar_t, float>& a, const at::Tensor& like,
                         bool flip) {
  auto kern = at::empty({w.kernel_elems()}, like.options());
  auto* k = static_cast<scalar_t*>(kern.data_ptr());
  w.kern = k;
  launch_window_build(a, w.kw(), flip, k);
  const int64_t bytes = w.smem_words() * 4;
  auto kernel = window_strip_kernel<scalar_t>;  // (float32: strips only)
  if constexpr (WindowPlane<scalar_t>::kE == 2) {
    if (w.strip == 0)
      kernel = with_plane_steps(w.ks, [](auto s) { return window_plane_kernel<decltype(s)::value, scalar_t>; });
  }
  const void* kp = reinterpret_cast<const void*>(kernel);
  allow_smem(kp, bytes);
  kernel<<<grid_blocks(w.blocks()), kWindowCorrThreads, bytes, c10::cuda::getCurrentCUDAStream()>>>(w);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template void launch_window_plane(WindowPlane<c10::Half>, const TapsArgs<c10::Half, float>&, const at::Tensor&, bool);
template void launch_window_plane(WindowPlane<float>, const TapsArgs<float, float>&, const at::Tensor&, bool);
template void launch_window_plane(WindowPlane<c10::BFloat16>, const TapsArgs<c10::BFloat16, float>&,
                                  const at::Tensor&, bool);
template void launch_window_conv(WindowConv<c10::Half>, const TapsArgs<c10::Half, float>&, const at::Tensor&, bool);
template void launch_window_conv(WindowConv<c10::BFloat16>, const TapsArgs<c10::BFloat16, float>&, const at::Tensor&,
                                 bool);

}  // namespace dcls_convert
