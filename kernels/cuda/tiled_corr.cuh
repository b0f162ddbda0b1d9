// The tiled engine's correlation kernel (tiled_corr.h: the weight, position and bias gradients, block sums to a
// workspace) and its finish, with their launch: instantiated in two translation units (tiled_corr_16.cu for the
// 16-bit types, tiled_corr_32.cu for float32 and float64), compiled apart from the op flow (taps_conv_cuda.cu).
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "launch.cuh"
#include "tiled_kernels.cuh"
#include "tiled_launch.h"

namespace dcls_convert {
namespace tiled_corr_detail {

template <typename scalar_t, typename acc_t>
struct FinishArgs {
  TiledCorr<scalar_t, acc_t> corr;
  TapsArgs<scalar_t, acc_t> taps;
};
template <typename scalar_t, typename acc_t>
struct FinishFn {
  __device__ static void run(int64_t i, const FinishArgs<scalar_t, acc_t>& a) {
    tiled_corr_finish_thread(i, a.corr, a.taps);
  }
};

// One step of the warp's transpose-reduction (tiled_taps.h), unrolled so the sums stay in registers.
template <int Width, typename acc_t>
__device__ __forceinline__ void transpose_step(acc_t* v, int lane) {
  DCLS_UNROLL
  for (int i = 0; i < Width; ++i) {
    const acc_t received = __shfl_xor_sync(0xffffffffu, transpose_send(v, lane, Width, i), Width);
    transpose_keep(v, lane, Width, i, received);
  }
}

template <int RY, int P, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kTileThreads, tile_blocks_per_sm<acc_t>(3))
    tiled_corr_kernel(TiledCorr<scalar_t, acc_t> a) {
  acc_t* smem = reinterpret_cast<acc_t*>(tile_smem);
  const int tid = threadIdx.x, lane = tid % 32;
  const int64_t blocks = a.blocks();
  for (int64_t bid = blockIdx.x; bid < blocks; bid += gridDim.x) {
    const CorrJob j = corr_job(a, bid);
    const int ne = a.count[j.c], two = a.pairs[j.c];
    acc_t grad_sum = acc_t(0);
    tiled_corr_clear(a, smem, tid);
    for (int64_t first = j.begin; first < j.end; first += a.cfg.groups) {
      __syncthreads();  // the previous round's tile (and the cleared sums) are done with
      tiled_corr_clear_tiles(a, smem, tid);
      __syncthreads();
      tiled_corr_stage(a, j, first, smem, tid);
      acc_t gv[RY];
      tiled_corr_load_grad<RY>(a, j, first, tid, gv);
      if (a.grad_bias) tiled_corr_grad_sum<RY>(gv, grad_sum);
      __syncthreads();
      // two-row entries 16 per reduction, then single-row ones 32 per reduction
      auto reduce = [&](acc_t* v, int base, bool one_row) {
        transpose_step<16>(v, lane);
        transpose_step<8>(v, lane);
        transpose_step<4>(v, lane);
        transpose_step<2>(v, lane);
        transpose_step<1>(v, lane);
        tiled_corr_accumulate(a, j, smem, tid, base, one_row, v[0]);
      };
      for (int base = 0; base < two; base += kCorrGroup) {
        acc_t v[2 * kCorrGroup];
        tiled_corr_products<RY, P>(a, j, smem, tid, gv, base, v);
        reduce(v, base, false);
      }
      for (int base = two; base < ne; base += 2 * kCorrGroup) {
        acc_t v[2 * kCorrGroup];
        tiled_corr_products_one_row<RY, P>(a, j, smem, tid, gv, base, v);
        reduce(v, base, true);
      }
    }
    if (a.grad_bias) {  // the warp's butterfly: every lane ends with the same total
      for (int o = 16; o > 0; o /= 2) grad_sum += __shfl_xor_sync(0xffffffffu, grad_sum, o);
      tiled_corr_store_grad_sum(a, smem, tid, grad_sum);
    }
    __syncthreads();
    tiled_corr_write(a, j, smem, tid);
    __syncthreads();  // the next block job clears the sums
  }
}

}  // namespace tiled_corr_detail

template <typename scalar_t, typename acc_t>
void launch_tiled_corr(TiledCorr<scalar_t, acc_t> w, const TapsArgs<scalar_t, acc_t>& a, const at::Tensor& like) {
  const int64_t bytes = w.smem_elems() * sizeof(acc_t);
  const int pitch = std::is_same_v<acc_t, double> ? -1 : w.kernel_pitch();
  auto kernel = with_ry_pitch(w.cfg.ry, pitch, [](auto ry, auto p) {
    return tiled_corr_detail::tiled_corr_kernel<decltype(ry)::value, decltype(p)::value, scalar_t, acc_t>;
  });
  const void* k = reinterpret_cast<const void*>(kernel);
  allow_smem(k, bytes);
  // About four waves of resident blocks: enough to balance the SMs, few enough to keep each block's rounds long.
  const int device = like.get_device();
  const int64_t target = 4 * int64_t(blocks_per_sm(k, w.cfg.threads, bytes, device)) * sm_count(device);
  w.slabs = corr_slabs(w.C, w.jobs(), w.cfg.groups, target);
  // every block job runs at least one round: its barrier orders the cleared sums before the bias slot's store
  TORCH_INTERNAL_ASSERT(w.slabs >= 1 && w.slabs <= w.jobs());
  auto work = at::empty({w.C * w.slabs * w.values()}, like.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  w.work = static_cast<acc_t*>(work.data_ptr());
  kernel<<<grid_blocks(w.blocks()), w.cfg.threads, bytes, c10::cuda::getCurrentCUDAStream()>>>(w);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  using Args = tiled_corr_detail::FinishArgs<scalar_t, acc_t>;
  launch_grid_stride<tiled_corr_detail::FinishFn<scalar_t, acc_t>>(a.C * a.K, Args{w, a});
}

}  // namespace dcls_convert
