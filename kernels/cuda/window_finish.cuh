// The whole-window correlations' finish (window_corr_finish_cell, window_corr_finish_tap: a block per channel): the
// tensor cores' rows (WindowCorr) and small planes (PlaneCorr) read each tap's corners from their workspace the
// same way.
#pragma once

#include "dcls_convert/window_corr.h"
#include "launch.cuh"

namespace dcls_convert {

constexpr int kFinishThreads = 256;

template <typename Corr, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kFinishThreads) window_finish_kernel(Corr w, TapsArgs<scalar_t, acc_t> a) {
  extern __shared__ __align__(16) unsigned char window_finish_smem[];
  acc_t* G = reinterpret_cast<acc_t*>(window_finish_smem);
  for (int64_t c = blockIdx.x; c < a.C; c += gridDim.x) {
    __syncthreads();  // the previous channel's G is read
    for (int64_t e = threadIdx.x; e < w.values(); e += kFinishThreads) window_corr_finish_cell(c, e, w, G);
    __syncthreads();
    for (int64_t k = threadIdx.x; k < a.K; k += kFinishThreads) window_corr_finish_tap(c, k, w, a, G);
  }
}

// After the correlation w has filled its workspace: a's weight, position and bias gradients.
template <typename Corr, typename scalar_t, typename acc_t>
void launch_window_finish(const Corr& w, const TapsArgs<scalar_t, acc_t>& a) {
  if (a.C == 0) return;
  const int64_t bytes = w.values() * static_cast<int64_t>(sizeof(acc_t));  // at most 64 x 64 cells + 1: 32 KiB
  window_finish_kernel<Corr, scalar_t, acc_t>
      <<<grid_blocks(a.C), kFinishThreads, bytes, c10::cuda::getCurrentCUDAStream()>>>(w, a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace dcls_convert
