// Launch helpers: grid-stride launches (any problem size runs with a bounded grid, no grid-dimension overflow,
// e.g. at 64 x 768 x 112 x 112 elements), and device queries cached per device and kernel (a converted network's
// training step is bound by the host queueing kernels: each runtime query costs it time at every layer).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <utility>
#include <mutex>
#include <tuple>

namespace dcls_convert {

constexpr int kThreads = 256;

inline int grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65535 * 8)));
}

// The grid for `blocks` block jobs: at most 65535 x 8 blocks, which loop over the rest.
inline int grid_blocks(int64_t blocks) { return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65535 * 8))); }

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

// A device attribute, queried once per (attribute, device); `fallback` where the runtime will not say or says
// something not positive (the callers only size grids or pick a fallback path with it).
inline int device_attribute(cudaDeviceAttr attr, int device, int fallback) {
  static std::mutex m;
  static std::map<std::pair<int, int>, int> known;
  std::lock_guard<std::mutex> lock(m);
  auto it = known.find({int(attr), device});
  if (it != known.end()) return it->second;
  int v = 0;
  if (cudaDeviceGetAttribute(&v, attr, device) != cudaSuccess || v <= 0) {
    (void)cudaGetLastError();
    v = fallback;
  }
  return known[{int(attr), device}] = v;
}

// Streaming multiprocessors of a device (a guess is safe: it only sizes grids).
inline int sm_count(int device) { return device_attribute(cudaDevAttrMultiProcessorCount, device, 132); }

// Compute capability major of a device (0 if the runtime will not say: the callers then take their fallback).
inline int compute_major(int device) { return device_attribute(cudaDevAttrComputeCapabilityMajor, device, 0); }

// Shared memory a block may opt into on a device (48 KiB if the runtime will not say).
inline int64_t max_smem_optin(int device) {
  return device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, device, 48 * 1024);
}

// Opts a kernel into more than 48 KiB of dynamic shared memory on the current device (once per size it grows to).
inline void allow_smem(const void* kernel, int64_t bytes) {
  if (bytes <= 48 * 1024) return;
  static std::mutex m;
  static std::map<std::pair<const void*, int>, int64_t> granted;
  const int device = c10::cuda::current_device();
  std::lock_guard<std::mutex> lock(m);
  int64_t& g = granted[{kernel, device}];
  if (g >= bytes) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  g = bytes;
}

// Resident blocks per SM of a kernel at a block size and dynamic shared memory (at least 1).
inline int blocks_per_sm(const void* kernel, int threads, int64_t bytes, int device) {
  static std::mutex m;
  static std::map<std::tuple<const void*, int, int64_t, int>, int> known;
  std::lock_guard<std::mutex> lock(m);
  const auto key = std::make_tuple(kernel, threads, bytes, device);
  auto it = known.find(key);
  if (it != known.end()) return it->second;
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, static_cast<size_t>(bytes)) != cudaSuccess) {
    (void)cudaGetLastError();  // only sizes the grid: one block per SM is safe
    n = 1;
  }
  return known[key] = std::max(n, 1);
}

}  // namespace dcls_convert
