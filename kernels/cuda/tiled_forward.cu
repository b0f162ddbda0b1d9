// The tiled engine's forward kernel (tiled_forward.h; also the input gradient, one launch per stride phase) and
// its launch, compiled apart from the op flow (taps_conv_cuda.cu) so that a build runs them in parallel.
#include <c10/core/ScalarType.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "launch.cuh"
#include "tiled_kernels.cuh"
#include "tiled_launch.h"

namespace dcls_convert {
namespace {

template <int RY, int P, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kTileThreads, tile_blocks_per_sm<acc_t>(4))
    tiled_forward_kernel(TiledConv<scalar_t, acc_t> a) {
  acc_t* smem = reinterpret_cast<acc_t*>(tile_smem);
  const int64_t blocks = a.blocks();
  for (int64_t bid = blockIdx.x; bid < blocks; bid += gridDim.x) {
    const ForwardJob j = forward_job(a, bid);
    tiled_forward_clear(a, smem, threadIdx.x);
    __syncthreads();
    tiled_forward_stage(a, j, smem, threadIdx.x);
    __syncthreads();
    for (int r = 0; r < a.rounds(); ++r) {
      acc_t acc[RY];
      const bool live = tiled_forward_round<RY, P>(a, j, smem, threadIdx.x, r, acc);
      if (a.transposed) __syncthreads();  // the round's planes are read: their regions take the outputs
      if (live) tiled_forward_keep<RY>(a, j, smem, threadIdx.x, r, acc);
    }
    if (a.transposed) {
      __syncthreads();
      tiled_forward_store_tiles(a, j, smem, threadIdx.x);
    }
    __syncthreads();
  }
}
}  // namespace

template <typename scalar_t, typename acc_t>
void launch_tiled_forward(const TiledConv<scalar_t, acc_t>& c) {
  const int64_t bytes = int64_t(c.cfg.planes) * c.cfg.plane_stride * sizeof(acc_t);
  // float64 (tests only) runs the run-time pitch alone: fewer kernels to compile
  const int pitch = std::is_same_v<acc_t, double> ? -1 : c.kernel_pitch();
  auto kernel = with_ry_pitch(c.cfg.ry, pitch, [](auto ry, auto p) {
    return tiled_forward_kernel<decltype(ry)::value, decltype(p)::value, scalar_t, acc_t>;
  });
  allow_smem(reinterpret_cast<const void*>(kernel), bytes);
  kernel<<<grid_blocks(c.blocks()), c.cfg.threads, bytes, c10::cuda::getCurrentCUDAStream()>>>(c);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template void launch_tiled_forward(const TiledConv<c10::Half, float>&);
template void launch_tiled_forward(const TiledConv<c10::BFloat16, float>&);
template void launch_tiled_forward(const TiledConv<float, float>&);
template void launch_tiled_forward(const TiledConv<double, double>&);

}  // namespace dcls_convert
