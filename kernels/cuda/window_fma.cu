// The FMA kernels' launchers (window_launch.h): the correlation and its finish for every dtype, the window and
// the convolution for float32 and float64.
#include <c10/core/ScalarType.h>
#include <cuda_runtime.h>

#include "launch.cuh"
#include "window_build.cuh"
#include "window_finish.cuh"
#include "window_fma.cuh"
#include "window_launch.h"

namespace dcls_convert {

template <typename scalar_t, typename acc_t>
void launch_fma_conv(FmaConv<scalar_t, acc_t> w, const TapsArgs<scalar_t, acc_t>& a, const at::Tensor& like, bool flip) {
  auto kern = at::empty({w.kernel_elems()}, like.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  auto* k = static_cast<acc_t*>(kern.data_ptr());
  launch_window_build(a, static_cast<int>(a.Lw), flip, k);
  w.kern = k;
  const int64_t bytes = w.smem_bytes();
  auto kernel = with_fma_conv_tiles<acc_t>(w.ro, w.ry, [](auto o, auto r) {
    return fma_conv_kernel<decltype(o)::value, decltype(r)::value, scalar_t, acc_t>;
  });
  const void* kp = reinterpret_cast<const void*>(kernel);
  allow_smem(kp, bytes);
  const int device = like.get_device();
  w.slabs = fma_conv_slabs(w, 4 * int64_t(blocks_per_sm(kp, w.threads(), bytes, device)) * sm_count(device));
  kernel<<<grid_blocks(w.blocks()), w.threads(), bytes, c10::cuda::getCurrentCUDAStream()>>>(w);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename acc_t>
void launch_fma_corr(FmaCorr<scalar_t, acc_t> w, const TapsArgs<scalar_t, acc_t>& a, const at::Tensor& like) {
  const int64_t bytes = w.smem_bytes();
  auto kernel = with_fma_rows(w.ry, [](auto r) { return fma_corr_kernel<decltype(r)::value, scalar_t, acc_t>; });
  const void* k = reinterpret_cast<const void*>(kernel);
  allow_smem(k, bytes);
  const int device = like.get_device();
  w.slabs = window_corr_slabs(w, 4 * int64_t(blocks_per_sm(k, w.threads(), bytes, device)) * sm_count(device));
  auto work = at::empty({w.C * w.slabs * w.values()}, like.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  w.work = static_cast<acc_t*>(work.data_ptr());
  kernel<<<grid_blocks(w.blocks()), w.threads(), bytes, c10::cuda::getCurrentCUDAStream()>>>(w);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_window_finish(w, a);
}

template void launch_fma_conv(FmaConv<float, float>, const TapsArgs<float, float>&, const at::Tensor&, bool);
template void launch_fma_conv(FmaConv<double, double>, const TapsArgs<double, double>&, const at::Tensor&, bool);
template void launch_fma_corr(FmaCorr<float, float>, const TapsArgs<float, float>&, const at::Tensor&);
template void launch_fma_corr(FmaCorr<double, double>, const TapsArgs<double, double>&, const at::Tensor&);
template void launch_fma_corr(FmaCorr<c10::Half, float>, const TapsArgs<c10::Half, float>&, const at::Tensor&);
template void launch_fma_corr(FmaCorr<c10::BFloat16, float>, const TapsArgs<c10::BFloat16, float>&, const at::Tensor&);

}  // namespace dcls_convert
