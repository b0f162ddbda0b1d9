// CPU emulation of the CUDA launch grids: runs the same per-thread and per-block functions the CUDA kernels
// run, over the full grid, so tests check the device code on machines without a GPU. Built by the tests only
// (tests/emulation.py compiles it with torch.utils.cpp_extension), never shipped in dcls_convert._C. Its ops live
// in their own namespace, dcls_convert_emulation; small shapes only, single-threaded on purpose.
#include <torch/library.h>

#include <vector>

#include "dcls_convert/args.h"
#include "dcls_convert/tiled_taps_host.h"

namespace dcls_convert {
namespace {

at::Tensor emulate_construct(const at::Tensor& weight, const at::Tensor& positions,
                             const c10::optional<at::Tensor>& sigma, at::IntArrayRef window,
                             c10::string_view interpolation, double sigma_min) {
  const int interp = parse_interp(std::string(interpolation));
  check_construct_args(weight, positions, sigma, window, interp);
  auto out = at::empty(construct_output_size(weight, window), weight.options());
  const ConstructInputs in(weight, positions, sigma, interp);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "emulate_construct", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = make_construct_args<scalar_t, acc_t>(in.weight, in.pos, in.sigma, window, interp, sigma_min);
    a.out = out.data_ptr<scalar_t>();
    if (gauss_profiles_fit(a)) {  // the CUDA block algorithm: phase by phase over a block of 64 threads
      constexpr int64_t kBlock = 64;
      std::vector<acc_t> prof(gauss_profile_count(a));
      for (int64_t p = 0; p < a.P; ++p) {
        for (int64_t tid = 0; tid < kBlock; ++tid) gauss_profiles_phase(p, tid, kBlock, a, prof.data());
        for (int64_t tid = 0; tid < kBlock; ++tid) gauss_gather_phase(p, tid, kBlock, a, prof.data());
      }
    } else {
      for (int64_t i = 0; i < out.numel(); ++i) construct_forward_thread(i, a);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> emulate_construct_backward(
    const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& positions,
    const c10::optional<at::Tensor>& sigma, at::IntArrayRef window, c10::string_view interpolation,
    double sigma_min) {
  const int interp = parse_interp(std::string(interpolation));
  check_construct_backward_args(grad, weight, positions, sigma, window, interp);
  const auto adt = acc_dtype(weight.scalar_type());
  auto gw = at::empty(weight.sizes(), weight.options().dtype(adt));
  auto gp = at::empty(positions.sizes(), weight.options().dtype(adt));
  auto gs = at::zeros(positions.sizes(), weight.options().dtype(adt));
  const ConstructInputs in(weight, positions, sigma, interp);
  const auto g = grad.to(weight.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "emulate_construct_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = make_construct_args<scalar_t, acc_t>(in.weight, in.pos, in.sigma, window, interp, sigma_min);
    a.grad = g.data_ptr<scalar_t>();
    a.grad_weight = gw.data_ptr<acc_t>();
    a.grad_pos = gp.data_ptr<acc_t>();
    a.grad_sigma = interp == kGaussian ? gs.data_ptr<acc_t>() : nullptr;
    for (int64_t i = 0; i < a.P * a.K; ++i) construct_backward_thread(i, a);
  });
  return {gw, gp, gs};
}

// The tiled engine's blocks run one after another, each phase for every thread of the block before the
// next phase starts (the barriers of the CUDA kernels); warps exchange values as the shuffles do.
template <typename scalar_t, typename acc_t>
void emulate_tables(const TapsArgs<scalar_t, acc_t>& a, int kind, bool need_pos, TableBuffers<acc_t>& tb) {
  const int n = table_capacity(a.K);
  const bool use_map = table_uses_map(a.Lh, a.Lw);
  const int cells = use_map ? static_cast<int>(a.Lh * a.Lw) : 0;
  std::vector<TapEntry<acc_t>> cand(n), merged(n);
  std::vector<unsigned char> valid(n), keep(n), dup(n);
  std::vector<int> slot(std::max(cells, 1)), offset(kTableThreads + 1);
  for (int64_t c = 0; c < a.C; ++c) {
    for (int64_t k = 0; k < a.K; ++k) table_candidates(c, k, a, kind, need_pos, cand.data(), valid.data());
    for (int i = 0; i < std::max(cells, n); ++i) table_clear(i, cells, n, slot.data(), dup.data());
    if (use_map) {
      for (int i = 0; i < n; ++i)  // the device's atomic minimum
        if (valid[i]) slot[table_cell(cand[i], a.Lw)] = std::min(slot[table_cell(cand[i], a.Lw)], i);
      for (int i = 0; i < n; ++i) table_flag(i, a.Lw, cand.data(), valid.data(), slot.data(), dup.data());
    }
    for (int i = 0; i < n; ++i)
      table_merge(i, n, kind, a.Lw, cand.data(), valid.data(), use_map ? slot.data() : nullptr, dup.data(),
                  merged.data(), keep.data());
    offset[0] = 0;
    for (int t = 0; t < kTableThreads; ++t) offset[t + 1] = offset[t] + table_count_kept(t, n, kTableThreads, keep.data());
    for (int t = 0; t < kTableThreads; ++t)
      table_write_kept(c, t, n, kTableThreads, offset[t], kind, a.Lh, a.Lw, merged.data(), keep.data(), tb.table());
    tb.counts()[c] = offset[kTableThreads];
  }
}

template <int RY, typename scalar_t, typename acc_t>
void emulate_tiled_forward(TiledConv<scalar_t, acc_t> c, const TapsArgs<scalar_t, acc_t>& a, int kind,
                           const at::Tensor& like) {
  TableBuffers<acc_t> tb(like, a.C, a.K);
  emulate_tables(a, kind, false, tb);
  tb.bind(c);
  std::vector<acc_t> smem(int64_t(c.cfg.planes) * c.cfg.plane_stride);
  for (int64_t bid = 0; bid < c.blocks(); ++bid) {
    const ForwardJob j = forward_job(c, bid);
    for (int tid = 0; tid < c.cfg.threads; ++tid) tiled_forward_clear(c, smem.data(), tid);
    for (int tid = 0; tid < c.cfg.threads; ++tid) tiled_forward_stage(c, j, smem.data(), tid);
    for (int tid = 0; tid < c.cfg.threads; ++tid) tiled_forward_compute<RY>(c, j, smem.data(), tid);
  }
}

// Blocks the emulated correlation aims for (small, so that small shapes still split into several slabs).
constexpr int64_t kEmulatedBlocks = 16;

template <int RY, typename scalar_t, typename acc_t>
void emulate_tiled_corr(TiledCorr<scalar_t, acc_t> w, const TapsArgs<scalar_t, acc_t>& a, bool need_pos,
                        const at::Tensor& like) {
  TableBuffers<acc_t> tb(like, a.C, a.K);
  emulate_tables(a, kCornerTable, need_pos, tb);
  tb.bind(w);
  w.slabs = corr_slabs(w.C, w.jobs(), w.cfg.groups, kEmulatedBlocks);
  std::vector<acc_t> work(w.C * w.slabs * w.values());
  w.work = work.data();
  std::vector<acc_t> smem(w.smem_elems());
  const int T = w.cfg.threads;
  std::vector<acc_t> gv(int64_t(T) * RY), v(int64_t(T) * 2 * kCorrGroup), sent(T);
  for (int64_t bid = 0; bid < w.blocks(); ++bid) {
    const CorrJob j = corr_job(w, bid);
    for (int tid = 0; tid < T; ++tid) tiled_corr_clear(w, smem.data(), tid);
    for (int64_t first = j.begin; first < j.end; first += w.cfg.groups) {
      for (int tid = 0; tid < T; ++tid) tiled_corr_clear_tiles(w, smem.data(), tid);
      for (int tid = 0; tid < T; ++tid) tiled_corr_stage(w, j, first, smem.data(), tid);
      for (int tid = 0; tid < T; ++tid) tiled_corr_load_grad<RY>(w, j, first, tid, &gv[tid * RY]);
      for (int base = 0; base < w.count[j.c]; base += kCorrGroup) {
        for (int tid = 0; tid < T; ++tid)
          tiled_corr_products<RY>(w, j, smem.data(), tid, &gv[tid * RY], base, &v[tid * 2 * kCorrGroup]);
        for (int width = kCorrGroup; width >= 1; width /= 2) {
          for (int i = 0; i < width; ++i) {
            for (int tid = 0; tid < T; ++tid) sent[tid] = transpose_send(&v[tid * 2 * kCorrGroup], tid % 32, width, i);
            for (int tid = 0; tid < T; ++tid)
              transpose_keep(&v[tid * 2 * kCorrGroup], tid % 32, width, i, sent[tid ^ width]);
          }
        }
        for (int tid = 0; tid < T; ++tid) tiled_corr_accumulate(w, smem.data(), tid, base, v[tid * 2 * kCorrGroup]);
      }
    }
    for (int tid = 0; tid < T; ++tid) tiled_corr_write(w, j, smem.data(), tid);
  }
  for (int64_t ck = 0; ck < a.C * a.K; ++ck) tiled_corr_finish_thread(ck, w, a);
}

at::Tensor emulate_taps_conv(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                             const c10::optional<at::Tensor>& bias, at::IntArrayRef window, at::IntArrayRef stride,
                             at::IntArrayRef padding, c10::string_view interpolation) {
  const int interp = parse_interp(std::string(interpolation));
  check_taps_args(input, weight, positions, window, stride, padding, interp, bias);
  auto out = at::empty(taps_output_size(input, window, stride, padding),
                       input.options().memory_format(taps_memory_format(input)));
  if (out.numel() == 0) return out;
  const TapsInputs in(input, weight, positions, bias, /*keep_input_layout=*/true);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "emulate_taps_conv", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = make_taps_args<scalar_t, acc_t>(in.x, in.weight, in.pos, window, stride, padding, interp);
    a.bias = in.bias.defined() ? in.bias.data_ptr<scalar_t>() : nullptr;
    const auto plan = forward_plan<scalar_t, acc_t>(in.x, out, a);
    if (plan.cfg.ok && plan.cfg.ry == 8) emulate_tiled_forward<8>(plan, a, kForwardTable, input);
    else if (plan.cfg.ok) emulate_tiled_forward<1>(plan, a, kForwardTable, input);
    else {  // the gather kernel (NCHW)
      const auto x = in.x.contiguous();
      auto o = at::empty(out.sizes(), out.options().memory_format(at::MemoryFormat::Contiguous));
      a.x = x.data_ptr<scalar_t>();
      a.out = o.data_ptr<scalar_t>();
      for (int64_t i = 0; i < o.numel(); ++i) taps_forward_thread(i, a);
      out.copy_(o);
    }
  });
  return out;
}

// Returns grad input, grad weight (C, 1, K) and grad positions (D, C, 1, K) in the accumulation type, each
// computed only where the mask asks (zeros elsewhere), as the CUDA backward decides.
std::tuple<at::Tensor, at::Tensor, at::Tensor> emulate_taps_conv_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
    at::IntArrayRef window, at::IntArrayRef stride, at::IntArrayRef padding, c10::string_view interpolation,
    at::IntArrayRef output_mask) {
  const int interp = parse_interp(std::string(interpolation));
  check_taps_backward_args(grad_output, input, weight, positions, window, stride, padding, interp);
  TORCH_CHECK(output_mask.size() == 3, "output_mask: (input, weight, positions)");
  const auto adt = acc_dtype(weight.scalar_type());
  const TapsInputs in(input, weight, positions, c10::nullopt, /*keep_input_layout=*/true);
  auto gin = at::zeros(input.sizes(), input.options().memory_format(taps_memory_format(input)));
  auto gw = at::zeros(weight.sizes(), weight.options().dtype(adt));
  auto gp = at::zeros(positions.sizes(), weight.options().dtype(adt));
  if (grad_output.numel() == 0) return {gin, gw, gp};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "emulate_taps_conv_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = make_taps_args<scalar_t, acc_t>(in.x, in.weight, in.pos, window, stride, padding, interp);
    if (output_mask[0]) {
      const auto plan = grad_input_plan<scalar_t, acc_t>(grad_output, gin, a);
      if (plan.cfg.ok && plan.cfg.ry == 8) emulate_tiled_forward<8>(plan, a, kMirroredTable, input);
      else if (plan.cfg.ok) emulate_tiled_forward<1>(plan, a, kMirroredTable, input);
      else {
        const auto g = grad_output.contiguous();
        auto gi = at::empty(input.sizes(), input.options().memory_format(at::MemoryFormat::Contiguous));
        a.grad_out = g.data_ptr<scalar_t>();
        a.grad_in = gi.data_ptr<scalar_t>();
        for (int64_t i = 0; i < gi.numel(); ++i) taps_grad_input_thread(i, a);
        gin.copy_(gi);
      }
    }
    if (output_mask[1] || output_mask[2]) {
      const bool two_d = window.size() == 2;
      a.grad_weight = output_mask[1] ? gw.data_ptr<acc_t>() : nullptr;
      a.grad_pos_h = (two_d && output_mask[2]) ? gp.data_ptr<acc_t>() : nullptr;
      a.grad_pos_w = output_mask[2] ? gp.data_ptr<acc_t>() + (two_d ? a.C * a.K : 0) : nullptr;
      const bool need_pos = output_mask[2] && interp == kBilinear;
      const auto plan = corr_plan<scalar_t, acc_t>(in.x, grad_output, a);
      if (plan.cfg.ok && plan.cfg.ry == 8) emulate_tiled_corr<8>(plan, a, need_pos, input);
      else if (plan.cfg.ok) emulate_tiled_corr<1>(plan, a, need_pos, input);
      else {  // the per-tap block reduction (wgrad_kernel), phase by phase
        const auto x = in.x.contiguous(), g = grad_output.contiguous();
        a.x = x.data_ptr<scalar_t>();
        a.grad_out = g.data_ptr<scalar_t>();
        const int64_t elems = a.N * a.Ho * a.Wo;
        std::vector<acc_t> block(4 * kWgradThreads);
        auto sums = reinterpret_cast<acc_t (*)[kWgradThreads]>(block.data());
        for (int64_t ck = 0; ck < a.C * a.K; ++ck) {
          const int64_t c = ck / a.K, k = ck % a.K;
          const TapCorners<acc_t> t = tap_corners(a, c, k);
          for (int tid = 0; tid < kWgradThreads; ++tid) {
            acc_t S[4] = {0, 0, 0, 0};
            for (int64_t e = tid; e < elems; e += kWgradThreads) taps_wgrad_partial(c, t, e, a, S);
            for (int q = 0; q < 4; ++q) sums[q][tid] = S[q];
          }
          for (int half = kWgradThreads / 2; half > 0; half /= 2)
            for (int tid = 0; tid < kWgradThreads; ++tid) wgrad_reduce_step(sums, tid, half);
          const acc_t total[4] = {sums[0][0], sums[1][0], sums[2][0], sums[3][0]};
          taps_wgrad_finish(c, k, t, total, a);
        }
      }
    }
  });
  return {gin, gw, gp};
}

}  // namespace

TORCH_LIBRARY(dcls_convert_emulation, m) {
  m.def("construct(Tensor weight, Tensor positions, Tensor? sigma, int[] window, str interpolation, "
        "float sigma_min) -> Tensor");
  m.def("construct_backward(Tensor grad, Tensor weight, Tensor positions, Tensor? sigma, int[] window, "
        "str interpolation, float sigma_min) -> (Tensor, Tensor, Tensor)");
  m.def("taps_conv(Tensor input, Tensor weight, Tensor positions, Tensor? bias, int[] window, int[] stride, "
        "int[] padding, str interpolation) -> Tensor");
  m.def("taps_conv_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor positions, int[] window, "
        "int[] stride, int[] padding, str interpolation, int[] output_mask) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dcls_convert_emulation, CPU, m) {
  m.impl("construct", &emulate_construct);
  m.impl("construct_backward", &emulate_construct_backward);
  m.impl("taps_conv", &emulate_taps_conv);
  m.impl("taps_conv_backward", &emulate_taps_conv_backward);
}

}  // namespace dcls_convert
