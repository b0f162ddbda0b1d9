// Depthwise tap convolution on CUDA: the tiled engine of tiled_taps.h (forward, input gradient at stride 1 as
// the mirrored forward, weight/position gradients as tiled correlations reduced in a fixed order). Shapes the
// tiles cannot hold (shared memory) and strided input gradients take the gather kernels of taps_threads.h.
// No atomics: results are identical run to run.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

#include "dcls_convert/grad_buffers.h"
#include "dcls_convert/tiled_taps_host.h"
#include "launch.cuh"

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


extern __shared__ __align__(16) unsigned char tile_smem[];

// One block per channel, the phases of the table build (tiled_taps.h) in shared memory.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kTableThreads) build_tables_kernel(TapsArgs<scalar_t, acc_t> a, int kind,
                                                                      bool need_pos, TapEntry<acc_t>* table,
                                                                      int* count) {
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
  for (int64_t c = blockIdx.x; c < a.C; c += gridDim.x) {
    for (int64_t k = tid; k < a.K; k += kTableThreads) table_candidates(c, k, a, kind, need_pos, cand, valid);
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
    // Exclusive scan of the threads' kept counts: within warps by shuffles, then over the warp totals.
    const int kept = table_count_kept(tid, n, kTableThreads, keep);
    int inclusive = kept;
    for (int o = 1; o < 32; o *= 2) {
      const int v = __shfl_up_sync(0xffffffffu, inclusive, o);
      if (lane >= o) inclusive += v;
    }
    if (lane == 31) warp_total[warp] = inclusive;
    __syncthreads();
    int before = 0;
    for (int w = 0; w < warp; ++w) before += warp_total[w];
    table_write_kept(c, tid, n, kTableThreads, before + inclusive - kept, kind, a.Lh, a.Lw, merged, keep, table);
    if (tid == kTableThreads - 1) count[c] = before + inclusive;
    __syncthreads();
  }
}

template <int RY, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kTileThreads) tiled_forward_kernel(TiledConv<scalar_t, acc_t> a) {
  acc_t* smem = reinterpret_cast<acc_t*>(tile_smem);
  const int64_t blocks = a.blocks();
  for (int64_t bid = blockIdx.x; bid < blocks; bid += gridDim.x) {
    const ForwardJob j = forward_job(a, bid);
    tiled_forward_clear(a, smem, threadIdx.x);
    __syncthreads();
    tiled_forward_stage(a, j, smem, threadIdx.x);
    __syncthreads();
    tiled_forward_compute<RY>(a, j, smem, threadIdx.x);
    __syncthreads();
  }
}

// One step of the warp's transpose-reduction (tiled_taps.h), unrolled so the sums stay in registers.
template <int Width, typename acc_t>
__device__ __forceinline__ void transpose_step(acc_t* v, int lane) {
  DCLS_UNROLL
  for (int i = 0; i < Width; ++i) {
    const acc_t received = __shfl_xor_sync(0xffffffffu, transpose_send(v, lane, Width, i), Width);
    transpose_keep(v, lane, Width, i, received);
  }
}

template <int RY, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kTileThreads) tiled_corr_kernel(TiledCorr<scalar_t, acc_t> a) {
  acc_t* smem = reinterpret_cast<acc_t*>(tile_smem);
  const int tid = threadIdx.x, lane = tid % 32;
  const int64_t blocks = a.blocks();
  for (int64_t bid = blockIdx.x; bid < blocks; bid += gridDim.x) {
    const CorrJob j = corr_job(a, bid);
    const int ne = a.count[j.c];
    tiled_corr_clear(a, smem, tid);
    for (int64_t first = j.begin; first < j.end; first += a.cfg.groups) {
      __syncthreads();  // the previous round's tile (and the cleared sums) are done with
      tiled_corr_clear_tiles(a, smem, tid);
      __syncthreads();
      tiled_corr_stage(a, j, first, smem, tid);
      acc_t gv[RY];
      tiled_corr_load_grad<RY>(a, j, first, tid, gv);
      __syncthreads();
      for (int base = 0; base < ne; base += kCorrGroup) {
        acc_t v[2 * kCorrGroup];
        tiled_corr_products<RY>(a, j, smem, tid, gv, base, v);
        transpose_step<16>(v, lane);
        transpose_step<8>(v, lane);
        transpose_step<4>(v, lane);
        transpose_step<2>(v, lane);
        transpose_step<1>(v, lane);
        tiled_corr_accumulate(a, smem, tid, base, v[0]);
      }
    }
    __syncthreads();
    tiled_corr_write(a, j, smem, tid);
    __syncthreads();  // the next block job clears the sums
  }
}

// DCLS_CONVERT_CUDA_TAPS=gather runs the gather kernels everywhere (benchmarks compare against them).
bool gather_forced() {
  const char* e = std::getenv("DCLS_CONVERT_CUDA_TAPS");
  return e != nullptr && std::string(e) == "gather";
}

int sm_count(int device) {
  static int cached[64] = {};
  if (device < 0 || device >= 64) return 132;
  if (cached[device] == 0) {
    int n = 0;
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n <= 0) {
      (void)cudaGetLastError();
      n = 132;
    }
    cached[device] = n;
  }
  return cached[device];
}

inline int grid_blocks(int64_t blocks) { return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65535 * 8))); }

// Opts a kernel into more than 48 KiB of dynamic shared memory when it needs it.
template <typename Kernel>
void allow_smem(Kernel kernel, int64_t bytes) {
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

template <typename scalar_t, typename acc_t>
void build_tables(const TapsArgs<scalar_t, acc_t>& a, int kind, bool need_pos, TableBuffers<acc_t>& tb) {
  if (a.C == 0) return;
  const int64_t bytes = table_scratch_bytes<acc_t>(a.K, a.Lh, a.Lw);
  allow_smem(build_tables_kernel<scalar_t, acc_t>, bytes);
  build_tables_kernel<scalar_t, acc_t><<<grid_blocks(a.C), kTableThreads, bytes, c10::cuda::getCurrentCUDAStream()>>>(
      a, kind, need_pos, tb.table(), tb.counts());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename acc_t>
void run_tiled_forward(TiledConv<scalar_t, acc_t> c, const TapsArgs<scalar_t, acc_t>& a, int kind,
                       const at::Tensor& like) {
  TableBuffers<acc_t> tb(like, a.C, a.K);
  build_tables(a, kind, false, tb);
  tb.bind(c);
  const int64_t bytes = int64_t(c.cfg.planes) * c.cfg.plane_stride * sizeof(acc_t);
  auto kernel = c.cfg.ry == 8 ? tiled_forward_kernel<8, scalar_t, acc_t> : tiled_forward_kernel<1, scalar_t, acc_t>;
  allow_smem(kernel, bytes);
  kernel<<<grid_blocks(c.blocks()), c.cfg.threads, bytes, c10::cuda::getCurrentCUDAStream()>>>(c);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename acc_t>
void run_tiled_corr(TiledCorr<scalar_t, acc_t> w, const TapsArgs<scalar_t, acc_t>& a, bool need_pos,
                    const at::Tensor& like) {
  TableBuffers<acc_t> tb(like, a.C, a.K);
  build_tables(a, kCornerTable, need_pos, tb);
  tb.bind(w);
  const int64_t bytes = w.smem_elems() * sizeof(acc_t);
  auto kernel = w.cfg.ry == 8 ? tiled_corr_kernel<8, scalar_t, acc_t> : tiled_corr_kernel<1, scalar_t, acc_t>;
  allow_smem(kernel, bytes);
  // About four waves of resident blocks: enough to balance the SMs, few enough to keep each block's rounds long.
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, w.cfg.threads, bytes) != cudaSuccess) {
    (void)cudaGetLastError();
    per_sm = 1;
  }
  w.slabs = corr_slabs(w.C, w.jobs(), w.cfg.groups, 4 * int64_t(std::max(per_sm, 1)) * sm_count(like.get_device()));
  auto work = at::empty({w.C * w.slabs * w.values()}, like.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  w.work = static_cast<acc_t*>(work.data_ptr());
  kernel<<<grid_blocks(w.blocks()), w.cfg.threads, bytes, c10::cuda::getCurrentCUDAStream()>>>(w);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_grid_stride<FinishFn<scalar_t, acc_t>>(a.C * a.K, FinishArgs<scalar_t, acc_t>{w, a});
}

at::Tensor taps_conv_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                          const c10::optional<at::Tensor>& bias, at::IntArrayRef window, at::IntArrayRef stride,
                          at::IntArrayRef padding, c10::string_view interpolation) {
  const int interp = parse_interp(std::string(interpolation));
  check_taps_args(input, weight, positions, window, stride, padding, interp, bias);
  c10::cuda::CUDAGuard guard(input.device());
  auto out = at::empty(taps_output_size(input, window, stride, padding),
                       input.options().memory_format(taps_memory_format(input)));
  if (out.numel() == 0) return out;
  const TapsInputs in(input, weight, positions, bias, /*keep_input_layout=*/true);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "taps_conv_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = make_taps_args<scalar_t, acc_t>(in.x, in.weight, in.pos, window, stride, padding, interp);
    a.bias = in.bias.defined() ? in.bias.data_ptr<scalar_t>() : nullptr;
    const auto plan = forward_plan<scalar_t, acc_t>(in.x, out, a);
    if (plan.cfg.ok && !gather_forced()) {
      run_tiled_forward(plan, a, kForwardTable, input);
    } else {  // the gather kernel indexes NCHW
      const auto x = in.x.contiguous();
      auto o = out.is_contiguous() ? out : at::empty(out.sizes(), out.options().memory_format(at::MemoryFormat::Contiguous));
      a.x = x.data_ptr<scalar_t>();
      a.out = o.data_ptr<scalar_t>();
      launch_grid_stride<ForwardFn<scalar_t, acc_t>>(o.numel(), a);
      if (!o.is_same(out)) out.copy_(o);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> taps_conv_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
    at::IntArrayRef window, at::IntArrayRef stride, at::IntArrayRef padding, c10::string_view interpolation,
    std::array<bool, 4> mask) {
  const int interp = parse_interp(std::string(interpolation));
  check_taps_backward_args(grad_output, input, weight, positions, window, stride, padding, interp);
  c10::cuda::CUDAGuard guard(input.device());
  const TapsInputs in(input, weight, positions, c10::nullopt, /*keep_input_layout=*/true);
  const auto g = grad_output.to(input.scalar_type());
  TapsGrads grads(input, weight, positions, mask, /*strided_writes=*/true);
  const bool two_d = window.size() == 2;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "taps_conv_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = make_taps_args<scalar_t, acc_t>(in.x, in.weight, in.pos, window, stride, padding, interp);
    const bool empty = g.numel() == 0 || input.numel() == 0;
    if (mask[0] && empty) grads.gin.zero_();
    if (mask[0] && !empty) {
      const auto plan = grad_input_plan<scalar_t, acc_t>(g, grads.gin, a);
      if (plan.cfg.ok && !gather_forced()) {
        run_tiled_forward(plan, a, kMirroredTable, input);
      } else {  // strided layers: the gather kernel, NCHW
        const auto x = in.x.contiguous(), gc = g.contiguous();
        auto gi = at::empty(input.sizes(), input.options().memory_format(at::MemoryFormat::Contiguous));
        a.x = x.data_ptr<scalar_t>();
        a.grad_out = gc.data_ptr<scalar_t>();
        a.grad_in = gi.data_ptr<scalar_t>();
        launch_grid_stride<GradInputFn<scalar_t, acc_t>>(gi.numel(), a);
        grads.gin.copy_(gi);
      }
    }
    if (grads.want_taps() && a.C * a.K > 0) {
      grads.bind_taps(a, two_d);
      if (!mask[1]) a.grad_weight = nullptr;
      if (!mask[2]) a.grad_pos_h = a.grad_pos_w = nullptr;
      const auto plan = empty ? TiledCorr<scalar_t, acc_t>() : corr_plan<scalar_t, acc_t>(in.x, g, a);
      if (empty) {
        // no outputs: every correlation is zero (the buffers start at zero)
      } else if (plan.cfg.ok && !gather_forced()) {
        run_tiled_corr(plan, a, mask[2] && interp == kBilinear, input);
      } else {  // one block per tap
        const auto x = in.x.contiguous(), gc = g.contiguous();
        a.x = x.data_ptr<scalar_t>();
        a.grad_out = gc.data_ptr<scalar_t>();
        const int blocks = static_cast<int>(std::min<int64_t>(a.C * a.K, 65535 * 8));
        wgrad_kernel<scalar_t, acc_t><<<blocks, kWgradThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(a);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  });
  return grads.finish(grad_output, weight, positions);
}

}  // namespace

TORCH_LIBRARY_IMPL(dcls_convert, CUDA, m) {
  m.impl("taps_conv", &taps_conv_cuda);
  m.impl("taps_conv_backward", &taps_conv_backward_cuda);
}

}  // namespace dcls_convert
