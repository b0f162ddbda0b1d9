// The tensor-core correlations' launchers (window_launch.h): the correlation and its finish (window_corr.h: float16,
// bfloat16, and float32 as 3xTF32; window_plane_corr.h, small planes: the same), and whether a device runs the
// tensor-core kernels. The convolution's launcher is in window_mma_conv.cu, so that a build compiles the two in
// parallel.
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include <map>
#include <mutex>

#include "launch.cuh"
#include "window_finish.cuh"
#include "window_launch.h"
#include "window_mma.cuh"

namespace dcls_convert {

// (a build with only older architectures, JIT-compiled from their PTX, has the kernels' trap instead of the mma)
bool window_mma_supported(const at::Tensor& like) {
  if (!like.is_cuda()) return false;
  const int device = like.get_device();
  static std::mutex m;
  static std::map<int, bool> known;
  std::lock_guard<std::mutex> lock(m);
  auto it = known.find(device);
  if (it != known.end()) return it->second;
  bool ok = compute_major(device) >= 8;
  if (ok) {
    cudaFuncAttributes attr;
    const c10::cuda::CUDAGuard guard(device);
    ok = cudaFuncGetAttributes(&attr, window_corr_kernel<1, 1, c10::BFloat16>) == cudaSuccess && attr.ptxVersion >= 80;
    (void)cudaGetLastError();
  }
  return known[device] = ok;
}

template <typename scalar_t>
void launch_window_corr(WindowCorr<scalar_t> w, const TapsArgs<scalar_t, float>& a, const at::Tensor& like) {
  const int64_t bytes = w.smem_words() * 4;
  auto kernel = with_window_tiles(w.mt, w.nt, [](auto m, auto n) {
    return window_corr_kernel<decltype(m)::value, decltype(n)::value, scalar_t>;
  });
  const void* k = reinterpret_cast<const void*>(kernel);
  allow_smem(k, bytes);
  const int device = like.get_device();
  w.slabs = window_corr_slabs(w, 4 * int64_t(blocks_per_sm(k, kWindowCorrThreads, bytes, device)) * sm_count(device));
  auto work = at::empty({w.C * w.slabs * w.values()}, like.options().dtype(at::kFloat));
  w.work = static_cast<float*>(work.data_ptr());
  kernel<<<grid_blocks(w.blocks()), kWindowCorrThreads, bytes, c10::cuda::getCurrentCUDAStream()>>>(w);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_window_finish(w, a);
}

template <typename scalar_t>
void launch_plane_corr(PlaneCorr<scalar_t> w, const TapsArgs<scalar_t, float>& a, const at::Tensor& like) {
  // (the kernel's tiles, tile mask and J range come from plane_corr_shape: tile (0, 0) always holds diagonal 0)
  TORCH_INTERNAL_ASSERT(w.ok && (w.tiles & 1u), "launch_plane_corr: a plan from plane_corr_shape");
  const int64_t bytes = w.smem_words() * 4;
  auto kernel = with_plane_corr_tiles(
      w, [](auto m, auto n) { return plane_corr_kernel<decltype(m)::value, decltype(n)::value, scalar_t>; });
  const void* k = reinterpret_cast<const void*>(kernel);
  allow_smem(k, bytes);
  w.slabs = plane_corr_slabs(w, w.packs() * w.groups());  // an image pack a block (within the workspace's bound)
  auto work = at::empty({w.C * w.slabs * w.values()}, like.options().dtype(at::kFloat));
  w.work = static_cast<float*>(work.data_ptr());
  kernel<<<grid_blocks(w.blocks()), kWindowCorrThreads, bytes, c10::cuda::getCurrentCUDAStream()>>>(w);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_window_finish(w, a);
}

template void launch_plane_corr(PlaneCorr<c10::Half>, const TapsArgs<c10::Half, float>&, const at::Tensor&);
template void launch_plane_corr(PlaneCorr<c10::BFloat16>, const TapsArgs<c10::BFloat16, float>&, const at::Tensor&);
template void launch_plane_corr(PlaneCorr<float>, const TapsArgs<float, float>&, const at::Tensor&);

template void launch_window_corr(WindowCorr<c10::Half>, const TapsArgs<c10::Half, float>&, const at::Tensor&);
template void launch_window_corr(WindowCorr<float>, const TapsArgs<float, float>&, const at::Tensor&);
template void launch_window_corr(WindowCorr<c10::BFloat16>, const TapsArgs<c10::BFloat16, float>&, const at::Tensor&);

}  // namespace dcls_convert
