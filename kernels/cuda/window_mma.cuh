// The tensor-core kernels: the correlation (window_corr.h) and the convolution (window_conv.h), their block jobs'
// bands and the warps' mma.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "dcls_convert/window_conv.h"
#include "dcls_convert/window_corr.h"

namespace dcls_convert {

extern __shared__ __align__(16) unsigned char window_corr_smem[];

// One mma.m16n8k16 of the lane's fragments into accumulator tile `tile` (NL = 1: the device's lane is its own).
template <typename scalar_t>
struct MmaDevice {
  template <int NL, int NA, int NAR, int NBR>
  __device__ __forceinline__ static void run(float (*acc)[NA], const uint32_t (*A)[NAR], const uint32_t (*B)[NBR],
                                             int tile, int i, int jn) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    float* d = acc[0] + 4 * tile;
    const uint32_t* a = A[0] + 4 * i;
    const uint32_t* b = B[0] + 2 * jn;
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
      asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
          "{%0,%1,%2,%3};"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
      asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
          "{%0,%1,%2,%3};"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
#else
    __trap();  // the host runs this kernel only on compute capability 8.0 and newer
#endif
  }
};

template <int MT, int NT, typename scalar_t>
__global__ void __launch_bounds__(kWindowCorrThreads, 2) window_corr_kernel(WindowCorr<scalar_t> w) {
  uint32_t* smem = reinterpret_cast<uint32_t*>(window_corr_smem);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t blocks = w.blocks();
  for (int64_t bid = blockIdx.x; bid < blocks; bid += gridDim.x) {
    const WindowCorrJob j = window_corr_job(w, bid);
    float acc[1][MT * NT * 4];
    DCLS_UNROLL
    for (int q = 0; q < MT * NT * 4; ++q) acc[0][q] = 0.f;
    float bias[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int64_t n = j.n_begin; n < j.n_end; ++n) {
      int64_t lo = w.ph - w.Lh + 1;  // the image's first output-gradient row any band reads
      for (int64_t iy0 = 0; iy0 < w.H; iy0 += w.band) {
        const int64_t hi = iy0 + w.band + w.ph;
        __syncthreads();  // the previous band's rows (or the previous job's sums) are read
        window_corr_stage(w, j, n, iy0, lo, hi, smem, tid, bias);
        __syncthreads();
        window_corr_rows<MT, NT, 1, MmaDevice<scalar_t>>(w, smem, warp, lane, iy0, acc);
        lo = hi;
      }
    }
    __syncthreads();  // the sums take the staging's place
    window_corr_keep<MT, NT>(w, smem, warp, lane, acc[0], tid, bias);
    __syncthreads();
    window_corr_write(w, j, smem, tid);
  }
}

template <int MT, int NT, typename scalar_t>
__global__ void __launch_bounds__(kWindowCorrThreads, 2) window_conv_kernel(WindowConv<scalar_t> w) {
  uint32_t* smem = reinterpret_cast<uint32_t*>(window_corr_smem);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t blocks = w.blocks();
  for (int64_t bid = blockIdx.x; bid < blocks; bid += gridDim.x) {
    WindowConvJob j = window_conv_job(w, bid);
    __syncthreads();  // the previous job's kernels are read
    window_conv_stage_kernels(w, j, smem, tid);
    for (j.n = j.n_begin; j.n < j.n_end; ++j.n) {
      float acc[1][MT * NT * 4];
      DCLS_UNROLL
      for (int q = 0; q < MT * NT * 4; ++q) acc[0][q] = 0.f;
      const int64_t end = conv_end_row(w, j);
      for (int64_t iy0 = std::max<int64_t>(conv_first_row(w, j), 0); iy0 < end; iy0 += w.band) {
        __syncthreads();  // the previous band is read (and the kernels staged)
        window_conv_stage_rows(w, j, iy0, smem, tid);
        __syncthreads();
        window_conv_rows<MT, NT, 1, MmaDevice<scalar_t>>(w, j, smem, warp, lane, iy0, acc);
      }
      __syncthreads();  // the previous image's results are stored
      window_conv_keep<MT, NT>(w, j, smem, warp, lane, acc[0]);
      __syncthreads();
      window_conv_store(w, j, smem, tid);
    }
  }
}

}  // namespace dcls_convert
