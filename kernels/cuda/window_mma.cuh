// The tensor-core kernels: the correlation (window_corr.h) and the convolution (window_conv.h), their block jobs'
// bands and the warps' mma.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "dcls_convert/window_conv.h"
#include "dcls_convert/window_corr.h"
#include "dcls_convert/window_plane.h"
#include "dcls_convert/window_plane_corr.h"

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

// float32: 3xTF32 (window_corr.h's tf32_split); the tail products first, so that the head x head product is added
// to sums that already hold the small terms.
__device__ __forceinline__ void mma_tf32(float* d, const uint32_t a[4], const uint32_t b[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
template <>
struct MmaDevice<float> {
  template <int NL, int NA, int NAR, int NBR>
  __device__ __forceinline__ static void run(float (*acc)[NA], const uint32_t (*A)[NAR], const uint32_t (*B)[NBR],
                                             int tile, int i, int jn) {
    uint32_t ah[1][4], at[1][4];
    DCLS_UNROLL
    for (int q = 0; q < 4; ++q) tf32_split(A[0][4 * i + q], ah[0][q], at[0][q]);
    run_split<NL, NA, 4, NBR>(acc, ah, at, B, tile, 0, jn);
  }
  // A already split (AH heads, AT tails: tf32_split's), where a kernel's branches would otherwise split it per tile
  template <int NL, int NA, int NAR, int NBR>
  __device__ __forceinline__ static void run_split(float (*acc)[NA], const uint32_t (*AH)[NAR],
                                                   const uint32_t (*AT)[NAR], const uint32_t (*B)[NBR], int tile,
                                                   int i, int jn) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    float* d = acc[0] + 4 * tile;
    uint32_t bh[2], bt[2];
    DCLS_UNROLL
    for (int q = 0; q < 2; ++q) tf32_split(B[0][2 * jn + q], bh[q], bt[q]);
    mma_tf32(d, AT[0] + 4 * i, bh);
    mma_tf32(d, AH[0] + 4 * i, bt);
    mma_tf32(d, AH[0] + 4 * i, bh);
#else
    __trap();
#endif
  }
};

template <int MT, int NT, typename scalar_t>
__global__ void __launch_bounds__(kWindowCorrThreads, 2) window_corr_kernel(WindowCorr<scalar_t> w) {
  constexpr int PF = window_corr_prefetch<MT, NT, scalar_t>();
  uint32_t* smem = reinterpret_cast<uint32_t*>(window_corr_smem);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t blocks = w.blocks();
  for (int64_t bid = blockIdx.x; bid < blocks; bid += gridDim.x) {
    const WindowCorrJob j = window_corr_job(w, bid);
    float acc[1][MT * NT * 4];
    DCLS_UNROLL
    for (int q = 0; q < MT * NT * 4; ++q) acc[0][q] = 0.f;
    float bias[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    Prefetch<PF> pf;
    CorrRound r = corr_first_round(w, j.n_begin);
    window_corr_fetch(w, j, r, tid, pf);  // (a job has an image at least: slabs <= N)
    for (bool more = r.n < j.n_end; more;) {
      __syncthreads();  // the previous band's rows (or the previous job's sums) are read
      window_corr_stage(w, j, r, smem, tid, bias, pf);
      const int64_t iy0 = r.iy0;
      more = window_corr_next(w, j, r);
      if (more) window_corr_fetch(w, j, r, tid, pf);  // in flight during the products
      __syncthreads();
      window_corr_rows<MT, NT, 1, MmaDevice<scalar_t>>(w, smem, warp, lane, iy0, acc);
    }
    __syncthreads();  // the sums take the staging's place
    window_corr_keep<MT, NT>(w, smem, warp, lane, acc[0], tid, bias);
    __syncthreads();
    window_corr_write(w, j, smem, tid);
  }
}

template <int MT, int NT, typename scalar_t>
__global__ void __launch_bounds__(kWindowCorrThreads, 2) window_conv_kernel(WindowConv<scalar_t> w) {
  constexpr int PF = window_conv_prefetch<MT, NT>();
  uint32_t* smem = reinterpret_cast<uint32_t*>(window_corr_smem);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t blocks = w.blocks();
  for (int64_t bid = blockIdx.x; bid < blocks; bid += gridDim.x) {
    WindowConvJob j = window_conv_job(w, bid);
    const int64_t start = conv_start_row(w, j), end = conv_end_row(w, j);
    Prefetch<PF> pf;
    if (j.n_begin < j.n_end) window_conv_fetch(w, j, j.n_begin, start, tid, pf);  // in flight while the kernels are staged
    __syncthreads();  // the previous job's kernels are read
    window_conv_stage_kernels(w, j, smem, tid);
    for (j.n = j.n_begin; j.n < j.n_end; ++j.n) {
      float acc[1][MT * NT * 4];
      DCLS_UNROLL
      for (int q = 0; q < MT * NT * 4; ++q) acc[0][q] = 0.f;
      for (int64_t iy0 = start; iy0 < end; iy0 += w.band) {
        __syncthreads();  // the previous band is read (and the kernels staged)
        window_conv_stage_rows(w, j, iy0, smem, tid, pf);
        int64_t n = j.n, next = iy0;
        if (window_conv_next(w, j, n, next)) window_conv_fetch(w, j, n, next, tid, pf);  // during the products
        __syncthreads();
        window_conv_rows<MT, NT, 1, MmaDevice<scalar_t>>(w, j, smem, warp, lane, iy0, acc);
      }
      __syncthreads();  // the previous image's results are stored
      window_conv_keep<MT, NT>(w, j, smem, warp, lane, acc[0]);
      __syncthreads();
      window_conv_store<window_conv_vec_store<MT, NT>()>(w, j, smem, tid);
    }
  }
}

// window_plane.h: a block job stages its planes and windows (two phases), then each warp's products run with no
// barrier between them.
template <int KS, typename scalar_t>
__global__ void __launch_bounds__(kWindowCorrThreads, 2) window_plane_kernel(WindowPlane<scalar_t> w) {
  uint32_t* smem = reinterpret_cast<uint32_t*>(window_corr_smem);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t blocks = w.blocks();
  for (int64_t bid = blockIdx.x; bid < blocks; bid += gridDim.x) {
    const WindowPlaneJob j = window_plane_job(w, bid);
    __syncthreads();  // the previous job's results are stored
    window_plane_stage<kWindowCorrWarps, kPlaneBatch>(w, j, smem, tid);
    __syncthreads();
    window_plane_stage_window(w, j, smem, tid);
    __syncthreads();
    window_plane_warp<KS, 1, MmaDevice<scalar_t>>(w, j, smem, warp, lane);
    __syncthreads();
    window_plane_store<kWindowCorrWarps>(w, j, smem, tid);
  }
}

// window_plane.h's strips: per block job its strip as a plane of its own (strip_view), staged with the k-steps' G
// table, then each warp's products with A read from shared memory, then the results. One block an SM at ConvNeXt's
// 28 x 28 (213 KiB).
template <typename scalar_t>
__global__ void __launch_bounds__(kWindowCorrThreads, 1) window_strip_kernel(WindowPlane<scalar_t> w) {
  uint32_t* smem = reinterpret_cast<uint32_t*>(window_corr_smem);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t blocks = w.blocks();
  for (int64_t bid = blockIdx.x; bid < blocks; bid += gridDim.x) {
    const WindowPlaneJob j = window_plane_job(w, bid);
    const WindowPlane<scalar_t> v = strip_view(w, j);
    __syncthreads();  // the previous job's results are stored
    window_plane_stage<0, kStripBatch>(v, j, smem, tid);
    __syncthreads();
    window_plane_stage_window(v, j, smem, tid);
    window_strip_stage_g(v, smem, tid);
    __syncthreads();
    window_strip_warp<1, MmaDevice<scalar_t>>(v, j, smem, smem + v.r_off, warp, lane);
    __syncthreads();
    window_plane_store<0>(v, j, smem, tid);
  }
}

// window_plane_corr.h: per pack (of images, or an image's band of rows) a block clears and stages its planes (two
// phases; a band keeps the output gradient its image's previous band staged), then each warp runs every window row.
// (Rows past 32 columns: one block an SM, whose shared memory a job of one image already takes: 255 registers.)
template <int MT, int NT, typename scalar_t>
__global__ void __launch_bounds__(kWindowCorrThreads, MT >= 4 ? 1 : 2) plane_corr_kernel(PlaneCorr<scalar_t> w) {
  uint32_t* smem = reinterpret_cast<uint32_t*>(window_corr_smem);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t blocks = w.blocks();
  for (int64_t bid = blockIdx.x; bid < blocks; bid += gridDim.x) {
    PlaneCorrJob j = plane_corr_job(w, bid);
    for (; j.pack < j.pack_end; ++j.pack) {
      __syncthreads();  // the previous pack's planes are read
      plane_corr_clear(w, j, smem, tid);
      __syncthreads();
      plane_corr_stage<plane_corr_batch(MT)>(w, j, smem, tid);
      __syncthreads();
      plane_corr_warp<MT, NT, 1, MmaDevice<scalar_t>>(w, j, smem, warp, lane);
    }
  }
}

}  // namespace dcls_convert
