// The dense window's build (window_build.h) as a kernel and its launch, for the tensor cores' window (in the
// input's type: 16-bit, or float32 for the 3xTF32 strips): a block per channel.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include "dcls_convert/window_build.h"
#include "launch.cuh"

namespace dcls_convert {

template <typename scalar_t, typename acc_t, typename out_t>
__global__ void __launch_bounds__(kWindowBuildThreads) window_build_kernel(TapsArgs<scalar_t, acc_t> a, int kw,
                                                                           bool flip, out_t* kern) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int tid = threadIdx.x;
  for (int64_t c = blockIdx.x; c < a.C; c += gridDim.x) {
    window_build_zero(a, kw, smem, tid);  // (a thread's cells are its own in every phase)
    for (int64_t k0 = 0; k0 < a.K; k0 += kWindowBuildChunk) {
      __syncthreads();  // the previous chunk's (or channel's) taps are read
      window_build_stage(a, c, k0, smem, tid);
      __syncthreads();
      window_build_add(a, kw, flip, k0, smem, tid);
    }
    window_build_write(a, kw, c, smem, kern, tid);
  }
}

// The (C, Lh, kw) window of a's taps into kern (flip: turned by 180 degrees); Lh and kw up to 64, so that the
// shared memory stays within the 48 KiB every block may have.
template <typename scalar_t, typename acc_t, typename out_t>
void launch_window_build(const TapsArgs<scalar_t, acc_t>& a, int kw, bool flip, out_t* kern) {
  const int64_t bytes = window_build_smem_bytes<acc_t>(a.Lh, kw);
  TORCH_CHECK(bytes <= 48 * 1024, "window build: a ", a.Lh, " x ", kw, " window exceeds its shared memory");
  window_build_kernel<scalar_t, acc_t, out_t><<<grid_blocks(a.C), kWindowBuildThreads, bytes,
                                                c10::cuda::getCurrentCUDAStream()>>>(a, kw, flip, kern);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace dcls_convert
