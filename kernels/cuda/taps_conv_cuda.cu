// Depthwise tap convolution on CUDA: the op flow of tiled_taps_ops.h over the CUDA launch policy, the tiled
// engine's table build and the gather fallback's kernels (taps_threads.h). The tiled forward and correlation
// (tiled_forward.cu; tiled_corr.cuh in tiled_corr_16.cu and tiled_corr_32.cu) and the whole-window kernels
// (window_mma.cu, window_mma_conv.cu) are compiled in their own translation units, in parallel. No floating-point
// atomics (the table build's atomicMin picks an index, whatever the order): results are identical run to run.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstdlib>
#include <functional>
#include <string>

#include "dcls_convert/tiled_taps_ops.h"
#include "launch.cuh"
#include "tiled_kernels.cuh"
#include "tiled_launch.h"
#include "window_launch.h"

namespace dcls_convert {
namespace {

template <typename scalar_t, typename acc_t>
struct ForwardFn {
  __device__ static void run(int64_t i, const TapsArgs<scalar_t, acc_t>& a) { taps_forward_thread(i, a); }
};
template <typename scalar_t, typename acc_t>
struct GradInputFn {
  __device__ static void run(int64_t i, const TapsArgs<scalar_t, acc_t>& a) { taps_grad_input_thread(i, a); }
};
// The fallback for shapes the tiles cannot hold: one block per tap streaming all outputs.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kWgradThreads) wgrad_kernel(TapsArgs<scalar_t, acc_t> a) {
  __shared__ acc_t sums[4][kWgradThreads];
  const int tid = threadIdx.x;
  const int64_t elems = a.N * a.Ho * a.Wo;
  for (int64_t ck = blockIdx.x; ck < a.C * a.K; ck += gridDim.x) {
    const int64_t c = ck / a.K, k = ck % a.K;
    const TapCorners<acc_t> t = tap_corners(a, c, k);
    acc_t S[4] = {0, 0, 0, 0};
    for (int64_t e = tid; e < elems; e += kWgradThreads) taps_wgrad_partial(c, t, e, a, S);
    for (int j = 0; j < 4; ++j) sums[j][tid] = S[j];
    __syncthreads();
    for (int half = kWgradThreads / 2; half > 0; half /= 2) {
      wgrad_reduce_step(sums, tid, half);
      __syncthreads();
    }
    if (tid == 0) {
      const acc_t total[4] = {sums[0][0], sums[1][0], sums[2][0], sums[3][0]};
      taps_wgrad_finish(c, k, t, total, a);
    }
    __syncthreads();  // sums is rewritten by the next tap
  }
}


// One block per channel, the phases of the table build (tiled_taps.h) in shared memory.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kTableThreads) build_tables_kernel(TapsArgs<scalar_t, acc_t> a,
                                                                      TableBuilds<acc_t> builds) {
  __shared__ int warp_total[kTableThreads / 32];
  const int n = table_capacity(a.K), tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const bool use_map = table_uses_map(a.Lh, a.Lw);
  const int cells = use_map ? static_cast<int>(a.Lh * a.Lw) : 0, span = cells > n ? cells : n;
  auto* cand = reinterpret_cast<TapEntry<acc_t>*>(tile_smem);
  TapEntry<acc_t>* merged = cand + n;
  auto* valid = reinterpret_cast<unsigned char*>(merged + n);
  unsigned char* keep = valid + n;
  unsigned char* dup = keep + n;
  int* slot = reinterpret_cast<int*>(tile_smem + 2 * n * sizeof(TapEntry<acc_t>) + (3 * n + 3) / 4 * 4);
  for (int64_t job = blockIdx.x; job < builds.n * a.C; job += gridDim.x) {
    const int64_t c = job % a.C;
    const TableBuild<acc_t> b = builds.job[job / a.C];
    const int kind = b.kind;
    for (int64_t k = tid; k < a.K; k += kTableThreads) table_candidates(c, k, a, b, cand, valid);
    for (int i = tid; i < span; i += kTableThreads) table_clear(i, cells, n, slot, dup);
    __syncthreads();
    if (use_map) {
      for (int i = tid; i < n; i += kTableThreads)
        if (valid[i]) atomicMin(&slot[table_cell(cand[i], a.Lw)], i);
      __syncthreads();
      for (int i = tid; i < n; i += kTableThreads) table_flag(i, a.Lw, cand, valid, slot, dup);
      __syncthreads();
    }
    for (int i = tid; i < n; i += kTableThreads)
      table_merge(i, n, kind, a.Lw, cand, valid, use_map ? slot : nullptr, dup, merged, keep);
    __syncthreads();
    if (table_pairs_rows(b, a)) {
      for (int i = tid; i < n; i += kTableThreads) table_pair_rows(i, a.Lh, a.Lw, valid, slot, merged, keep);
      __syncthreads();
    }
    // Per part (two-row entries, then single rows), an exclusive scan of the threads' kept counts: within warps
    // by shuffles, then over the warp totals.
    int start = 0;
    for (int part = 0; part < 2; ++part) {
      const int kept = table_count_kept(tid, n, kTableThreads, keep, merged, part, a, b);
      int inclusive = kept;
      for (int o = 1; o < 32; o *= 2) {
        const int v = __shfl_up_sync(0xffffffffu, inclusive, o);
        if (lane >= o) inclusive += v;
      }
      if (lane == 31) warp_total[warp] = inclusive;
      __syncthreads();
      int before = 0, total = 0;
      for (int w = 0; w < kTableThreads / 32; ++w) {
        if (w < warp) before += warp_total[w];
        total += warp_total[w];
      }
      table_write_kept(c, tid, n, kTableThreads, start + before + inclusive - kept, part, a, b, merged, keep);
      if (tid == 0 && part == 0) b.pairs[c] = total;
      start += total;
      __syncthreads();  // warp_total is read before the next part writes it
    }
    if (tid == 0) b.count[c] = start;
    __syncthreads();
  }
}

// Holds the stream for `cycles` clock cycles, so that the launches the host queues behind it run back to back.
__global__ void hold_stream_kernel(long long cycles) {
  const long long t0 = clock64();
  while (clock64() - t0 < cycles) {
  }
}

// Tuning's timer (path_tuning.h): the GPU time of `run`'s launches, the mean of 3 runs queued back to back behind
// a kernel that holds the stream (about 1 ms), so that the host's queueing (allocations, plans, launch calls) is
// not what is timed; one untimed run first pays for first launches (kernel attributes, module loading) and fills
// the caching allocator.
double time_launches_ms(const std::function<void()>& run) {
  constexpr int kRuns = 3;
  constexpr long long kHoldCycles = 2000000;
  struct Events {
    cudaEvent_t start = nullptr, stop = nullptr;
    ~Events() {
      if (start) cudaEventDestroy(start);
      if (stop) cudaEventDestroy(stop);
    }
  } ev;
  C10_CUDA_CHECK(cudaEventCreate(&ev.start));
  C10_CUDA_CHECK(cudaEventCreate(&ev.stop));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  run();
  hold_stream_kernel<<<1, 1, 0, stream>>>(kHoldCycles);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  C10_CUDA_CHECK(cudaEventRecord(ev.start, stream));
  for (int r = 0; r < kRuns; ++r) run();
  C10_CUDA_CHECK(cudaEventRecord(ev.stop, stream));
  C10_CUDA_CHECK(cudaEventSynchronize(ev.stop));
  float ms = 0.0f;
  C10_CUDA_CHECK(cudaEventElapsedTime(&ms, ev.start, ev.stop));
  return double(ms) / kRuns;
}

// The launch policy of tiled_taps_ops.h on the current CUDA stream.
template <typename scalar_t, typename acc_t>
struct CudaLaunch {
  // DCLS_CONVERT_CUDA_TAPS=gather runs the gather kernels everywhere (benchmarks and tests compare against them;
  // read at every call, so that they can switch it).
  static bool gather_only() {
    const char* e = std::getenv("DCLS_CONVERT_CUDA_TAPS");
    return e != nullptr && std::string(e) == "gather";
  }
  // no timing while the stream is being captured into a CUDA graph (it would end the capture)
  static bool may_tune(const at::Tensor&) {
    return c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None;
  }
  static auto timer(const at::Tensor&) { return time_launches_ms; }
  static void tables(const TapsArgs<scalar_t, acc_t>& a, const TableBuilds<acc_t>& builds) {
    if (a.C == 0) return;
    auto kernel = build_tables_kernel<scalar_t, acc_t>;
    const int64_t bytes = table_scratch_bytes<acc_t>(a.K, a.Lh, a.Lw);
    allow_smem(reinterpret_cast<const void*>(kernel), bytes);
    kernel<<<grid_blocks(builds.n * a.C), kTableThreads, bytes, c10::cuda::getCurrentCUDAStream()>>>(a, builds);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  // the tiled forward and correlation kernels live in their own translation units (tiled_forward.cu,
  // tiled_corr_16.cu, tiled_corr_32.cu), which a build compiles in parallel with this one
  static void forward(const TiledConv<scalar_t, acc_t>& c) { launch_tiled_forward(c); }
  static void corr(const TiledCorr<scalar_t, acc_t>& w, const TapsArgs<scalar_t, acc_t>& a, const at::Tensor& like) {
    launch_tiled_corr(w, a, like);
  }
  static int64_t max_smem_bytes(const at::Tensor& like) { return max_smem_optin(like.get_device()); }
  // the tensor-core kernels live in their own translation units (window_mma.cu, window_mma_conv.cu), so that a
  // build compiles them in parallel with this one
  static bool mma_supported(const at::Tensor& like) { return window_mma_supported(like); }
  static void window_corr(const WindowCorr<scalar_t>& w, const TapsArgs<scalar_t, acc_t>& a, const at::Tensor& like) {
    if constexpr (window_corr_mma_dtype<scalar_t>()) {
      launch_window_corr(w, a, like);
    } else {
      TORCH_INTERNAL_ASSERT(false, "window_corr: 16-bit and float32 inputs only");
    }
  }
  static void window_conv(const WindowConv<scalar_t>& w, const TapsArgs<scalar_t, acc_t>& a, const at::Tensor& like,
                          bool flip) {
    if constexpr (window_corr_dtype<scalar_t>()) {
      launch_window_conv(w, a, like, flip);
    } else {
      TORCH_INTERNAL_ASSERT(false, "window_conv: 16-bit inputs only");
    }
  }
  static void plane_corr(const PlaneCorr<scalar_t>& w, const TapsArgs<scalar_t, acc_t>& a, const at::Tensor& like) {
    if constexpr (window_corr_mma_dtype<scalar_t>()) {
      launch_plane_corr(w, a, like);
    } else {
      TORCH_INTERNAL_ASSERT(false, "plane_corr: 16-bit and float32 inputs only");
    }
  }
  static void window_plane(const WindowPlane<scalar_t>& w, const TapsArgs<scalar_t, acc_t>& a, const at::Tensor& like,
                           bool flip) {
    if constexpr (window_corr_mma_dtype<scalar_t>()) {
      launch_window_plane(w, a, like, flip);
    } else {
      TORCH_INTERNAL_ASSERT(false, "window_plane: 16-bit and float32 inputs only");
    }
  }
  static void gather_forward(const TapsArgs<scalar_t, acc_t>& a, int64_t n) {
    launch_grid_stride<ForwardFn<scalar_t, acc_t>>(n, a);
  }
  static void gather_grad_input(const TapsArgs<scalar_t, acc_t>& a, int64_t n) {
    launch_grid_stride<GradInputFn<scalar_t, acc_t>>(n, a);
  }
  static void tap_blocks(const TapsArgs<scalar_t, acc_t>& a) {
    const int blocks = static_cast<int>(std::min<int64_t>(a.C * a.K, 65535 * 8));
    wgrad_kernel<scalar_t, acc_t><<<blocks, kWgradThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

// The input's device made current; a CPU input (with a CUDA weight) is left to the argument checks' message.
struct DeviceOf {
  c10::cuda::OptionalCUDAGuard guard;
  explicit DeviceOf(const at::Tensor& t) {
    if (t.is_cuda()) guard.set_device(t.device());
  }
};

at::Tensor taps_conv_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                          const c10::optional<at::Tensor>& bias, at::IntArrayRef window, at::IntArrayRef stride,
                          at::IntArrayRef padding, c10::string_view interpolation) {
  const DeviceOf guard(input);
  return tiled_taps_conv<CudaLaunch>(input, weight, positions, bias, window, stride, padding, interpolation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> taps_conv_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
    at::IntArrayRef window, at::IntArrayRef stride, at::IntArrayRef padding, c10::string_view interpolation,
    std::array<bool, 4> mask) {
  const DeviceOf guard(input);
  return tiled_taps_conv_backward<CudaLaunch>(grad_output, input, weight, positions, window, stride, padding,
                                              interpolation, mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(dcls_convert, CUDA, m) {
  m.impl("taps_conv", &taps_conv_cuda);
  m.impl("taps_conv_backward", &taps_conv_backward_cuda);
}

}  // namespace dcls_convert
