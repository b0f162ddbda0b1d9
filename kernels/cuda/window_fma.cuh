// The FMA kernels: the correlation (window_fma_corr.h: a block job's bands, each thread's walk, the fixed-order
// sums) and the convolution (window_fma_conv.h: windows once per job, each image's rows, each task's outputs).
#pragma once

#include <cuda_runtime.h>

#include <limits>

#include "dcls_convert/window_fma_conv.h"
#include "dcls_convert/window_fma_corr.h"

namespace dcls_convert {

extern __shared__ __align__(16) unsigned char window_fma_smem[];

template <int RY, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kFmaMaxThreads, 2) fma_corr_kernel(FmaCorr<scalar_t, acc_t> w) {
  acc_t* smem = reinterpret_cast<acc_t*>(window_fma_smem);
  const int tid = threadIdx.x;
  const int64_t blocks = w.blocks();
  for (int64_t bid = blockIdx.x; bid < blocks; bid += gridDim.x) {
    const FmaCorrJob j = fma_corr_job(w, bid);
    acc_t acc[RY * kFmaRX];
    DCLS_UNROLL
    for (int k = 0; k < RY * kFmaRX; ++k) acc[k] = acc_t(0);
    acc_t bias = acc_t(0);
    for (int64_t n = j.n_begin; n < j.n_end; ++n) {
      int64_t lo = std::numeric_limits<int64_t>::min();
      for (int64_t iy0 = 0; iy0 < w.H; iy0 += w.band) {
        __syncthreads();  // the previous band is read (or the previous job's sums)
        fma_corr_stage(w, j, n, iy0, lo, smem, tid, bias);
        __syncthreads();
        fma_corr_rows<RY>(w, j, smem, tid, iy0, acc);
        lo = iy0 + w.ph - w.dy_last() + w.g_rows();
      }
    }
    __syncthreads();  // the sums take the staging's place
    fma_corr_keep<RY>(w, smem, tid, acc, bias);
    __syncthreads();
    fma_corr_write(w, j, smem, tid);
  }
}

template <int RO, int RY, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kFmaMaxThreads, 2) fma_conv_kernel(FmaConv<scalar_t, acc_t> w) {
  acc_t* smem = reinterpret_cast<acc_t*>(window_fma_smem);
  const int tid = threadIdx.x;
  const int64_t blocks = w.blocks();
  for (int64_t bid = blockIdx.x; bid < blocks; bid += gridDim.x) {
    const FmaConvJob j = fma_conv_job(w, bid);
    __syncthreads();  // the previous job's windows and rows are read
    fma_conv_stage_kernels(w, j, smem, tid);
    for (int64_t n = j.n_begin; n < j.n_end; ++n) {
      __syncthreads();  // the previous image's rows (or kept outputs) are read, and the windows staged
      fma_conv_stage_rows(w, j, n, smem, tid);
      __syncthreads();
      acc_t acc[RO];  // (kept across the barrier for transposed stores)
      fma_conv_rows<RO, RY>(w, j, n, smem, tid, acc);
      if (w.transposed) {
        __syncthreads();  // the staged rows are read: the outputs take their place
        fma_conv_keep<RO>(w, j, smem, tid, acc);
        __syncthreads();
        fma_conv_store(w, j, n, smem, tid);
      }
    }
  }
}

}  // namespace dcls_convert
