// Grid-stride launch helpers: any problem size runs with a bounded grid (no grid-dimension overflow,
// e.g. at 64 x 768 x 112 x 112 elements).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

namespace dcls_convert {

constexpr int kThreads = 256;

inline int grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65535 * 8)));
}

template <typename Fn, typename Args>
__global__ void grid_stride_kernel(int64_t n, Args a) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)
    Fn::run(i, a);
}

template <typename Fn, typename Args>
void launch_grid_stride(int64_t n, const Args& a) {
  if (n == 0) return;
  auto stream = c10::cuda::getCurrentCUDAStream();
  grid_stride_kernel<Fn, Args><<<grid_for(n), kThreads, 0, stream>>>(n, a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace dcls_convert
