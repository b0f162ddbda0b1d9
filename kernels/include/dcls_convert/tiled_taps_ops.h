// The GPU tap engine's ops, host side, written once: which kernel runs each part, the buffers, the fallbacks.
// A Launch<scalar_t, acc_t> policy runs the kernels: CUDA launches (cuda/taps_conv_cuda.cu) or the CPU
// emulation's block-by-block loops (emulation/emulate_cuda.cpp), so the tests run this very flow.
//
// Launches per call (the tiled engine): forward 2 (table, forward); backward 4 at stride 1 (the mirrored and
// corner tables in one launch, the input gradient, the correlation, its finish, which also writes the bias
// gradient); a strided layer's input gradient takes one launch per stride phase (PhaseAxis). The whole-window
// parts (tensor cores, DCLS_CONVERT_CUDA_MMA; FMA, DCLS_CONVERT_CUDA_FMA) take 2 each: the window and the
// convolution, or the correlation and its finish; a backward mixing them with the tables' takes 4 or 5.
// Each gradient is written once (no zero fills), the taps' in the accumulation type: no casts for the float32
// parameters of a layer under autocast.
//
// Launch<scalar_t, acc_t> provides:
//   static bool gather_only();                                   kernels of taps_threads.h everywhere
//   static void tables(const TapsArgs&, const TableBuilds&);     every listed table, one launch
//   static void forward(const TiledConv&);                       tiled forward (or mirrored: input gradient)
//   static void corr(TiledCorr, const TapsArgs&, const at::Tensor& like);  correlation + finish
//   static bool mma_supported(const at::Tensor& like);            tensor cores on like's device
//   static int64_t max_smem_bytes(const at::Tensor& like);        shared memory a block may opt into there
//   static void window_corr(WindowCorr, const TapsArgs&, const at::Tensor& like);  16-bit only: + finish
//   static void window_conv(WindowConv, const TapsArgs&, const at::Tensor& like, bool flip);  16-bit: window + conv
//   static void window_plane(WindowPlane, const TapsArgs&, const at::Tensor& like, bool flip);  16-bit: window + plane
//   static void plane_corr(PlaneCorr, const TapsArgs&, const at::Tensor& like);  16-bit: correlation + finish
//   static void fma_corr(FmaCorr, const TapsArgs&, const at::Tensor& like);  whole-window FMA correlation + finish
//   static void fma_conv(FmaConv, const TapsArgs&, const at::Tensor& like, bool flip);  float32/64: window + conv
//   static void gather_forward(const TapsArgs&, int64_t outputs);          NCHW, one thread per output
//   static void gather_grad_input(const TapsArgs&, int64_t inputs);        NCHW, one thread per input
//   static void tap_blocks(const TapsArgs&);                     weight/position gradients, one block per tap
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <array>
#include <string>
#include <tuple>
#include <vector>

#include "dcls_convert/args.h"
#include "dcls_convert/grad_buffers.h"
#include "dcls_convert/tiled_taps_host.h"

namespace dcls_convert {

// Bound on the stride phases' tables of one backward (each reserves a channel's full capacity, 2K entries).
constexpr int64_t kMaxTableBytes = int64_t(256) << 20;

template <template <typename, typename> class Launch>
at::Tensor tiled_taps_conv(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                           const c10::optional<at::Tensor>& bias, at::IntArrayRef window, at::IntArrayRef stride,
                           at::IntArrayRef padding, c10::string_view interpolation) {
  const int interp = parse_interp(std::string(interpolation));
  auto out = checked_taps_output(input, weight, positions, bias, window, stride, padding, interp);
  if (out.numel() == 0) return out;
  const TapsInputs in(input, weight, positions, bias, /*keep_input_layout=*/true);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "taps_conv", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using L = Launch<scalar_t, acc_t>;
    auto a = make_taps_args<scalar_t, acc_t>(in.x, in.weight, in.pos, window, stride, padding, interp);
    a.bias = in.bias.defined() ? in.bias.data_ptr<acc_t>() : nullptr;
    auto plan = forward_plan<scalar_t, acc_t>(in.x, out, a);
    const auto pv = !L::gather_only() && plane_wanted("conv", a) && L::mma_supported(input)
                        ? window_plane_plan<scalar_t, acc_t>(in.x, out, a, false, L::max_smem_bytes(input))
                        : WindowPlane<scalar_t>();
    const auto wv = !pv.ok && !L::gather_only() && mma_wanted("conv", a) && L::mma_supported(input)
                        ? window_conv_plan<scalar_t, acc_t>(in.x, out, a, false, L::max_smem_bytes(input))
                        : WindowConv<scalar_t>();
    const auto fv = !pv.ok && !wv.ok && !L::gather_only() && fma_mode("conv")
                        ? fma_conv_plan<scalar_t, acc_t>(in.x, out, a, false, L::max_smem_bytes(input))
                        : FmaConv<scalar_t, acc_t>();
    if (pv.ok) {
      if constexpr (window_corr_dtype<scalar_t>()) L::window_plane(pv, a, input, false);
    } else if (wv.ok) {
      if constexpr (window_corr_dtype<scalar_t>()) L::window_conv(wv, a, input, false);
    } else if (fv.ok) {
      L::fma_conv(fv, a, input, false);
    } else if (plan.cfg.ok && !L::gather_only()) {
      TableBuffers<acc_t> tb(input, a.C, a.K, 1);
      tb.bind(plan, tb.add(kForwardTable));
      L::tables(a, tb.builds);
      L::forward(plan);
    } else {  // the gather kernel indexes NCHW
      const auto x = in.x.contiguous();
      auto o = out.is_contiguous() ? out : at::empty(out.sizes(), out.options().memory_format(at::MemoryFormat::Contiguous));
      a.x = x.data_ptr<scalar_t>();
      a.out = o.data_ptr<scalar_t>();
      L::gather_forward(a, o.numel());
      if (!o.is_same(out)) out.copy_(o);
    }
  });
  return out;
}

// mask: (input, weight, positions, bias) gradients wanted; the others come back empty.
template <template <typename, typename> class Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tiled_taps_conv_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
    at::IntArrayRef window, at::IntArrayRef stride, at::IntArrayRef padding, c10::string_view interpolation,
    std::array<bool, 4> mask) {
  TapsBackward b(grad_output, input, weight, positions, window, stride, padding, interpolation, mask);
  const int interp = b.interp;
  const TapsInputs& in = b.in;
  const at::Tensor& g = b.g;
  TapsGrads& grads = b.grads;
  const bool empty = g.numel() == 0 || input.numel() == 0;
  if (mask[0] && empty) grads.gin.zero_();
  if (!empty) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "taps_conv_backward", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using L = Launch<scalar_t, acc_t>;
      auto a = make_taps_args<scalar_t, acc_t>(in.x, in.weight, in.pos, window, stride, padding, interp);
      const bool want_taps = grads.want_taps() && a.C * a.K > 0;
      // the input gradient: one tiled forward per stride phase with outputs (one at stride 1)
      struct Phase {
        int ry, rx;
        TiledConv<scalar_t, acc_t> plan;
      };
      std::vector<Phase> phases;
      // (and the phase tables, full capacity each, within kMaxTableBytes: else the gather kernel)
      // on tensor cores where they apply (16-bit, stride 1) and pay (mma_wanted), else the tables' stride phases
      const auto pg = mask[0] && !L::gather_only() && plane_wanted("conv", a) && L::mma_supported(input)
                          ? window_plane_plan<scalar_t, acc_t>(g, grads.gin, a, true, L::max_smem_bytes(input))
                          : WindowPlane<scalar_t>();
      const auto wg = !pg.ok && mask[0] && !L::gather_only() && mma_wanted("conv", a, true) && L::mma_supported(input)
                          ? window_conv_plan<scalar_t, acc_t>(g, grads.gin, a, true, L::max_smem_bytes(input))
                          : WindowConv<scalar_t>();
      // or, opted in, the FMA convolution (float32, float64)
      const auto fg = !pg.ok && !wg.ok && mask[0] && !L::gather_only() && fma_mode("conv")
                          ? fma_conv_plan<scalar_t, acc_t>(g, grads.gin, a, true, L::max_smem_bytes(input))
                          : FmaConv<scalar_t, acc_t>();
      bool tiled_gi = !pg.ok && !wg.ok && !fg.ok && mask[0] && a.sh * a.sw <= kMaxPhases && !L::gather_only() &&
                      a.sh * a.sw * a.C * table_capacity(a.K) * int64_t(sizeof(TapEntry<acc_t>)) <= kMaxTableBytes;
      for (int ry = 0; tiled_gi && ry < a.sh; ++ry) {
        for (int rx = 0; tiled_gi && rx < a.sw; ++rx) {
          const auto plan = grad_input_plan<scalar_t, acc_t>(g, grads.gin, a, ry, rx);
          if (plan.Ho == 0 || plan.Wo == 0) continue;  // no input position in this phase
          phases.push_back({ry, rx, plan});
          tiled_gi = plan.cfg.ok;
        }
      }
      // weight and position gradients: tensor cores where they apply (16-bit) and pay (mma_wanted), else the tables
      const auto pc = want_taps && !L::gather_only() && plane_wanted("corr", a) && L::mma_supported(input)
                          ? plane_corr_plan<scalar_t, acc_t>(in.x, g, a, L::max_smem_bytes(input))
                          : PlaneCorr<scalar_t>();
      const auto wc = !pc.ok && want_taps && !L::gather_only() && mma_wanted("corr", a) && L::mma_supported(input)
                          ? window_corr_plan<scalar_t, acc_t>(in.x, g, a, L::max_smem_bytes(input))
                          : WindowCorr<scalar_t>();
      // or, opted in, the FMA correlation where it applies
      const auto fc = want_taps && !pc.ok && !wc.ok && !L::gather_only() && fma_mode("corr")
                          ? fma_corr_plan<scalar_t, acc_t>(in.x, g, a, L::max_smem_bytes(input))
                          : FmaCorr<scalar_t, acc_t>();
      auto corr = want_taps && !pc.ok && !wc.ok && !fc.ok ? corr_plan<scalar_t, acc_t>(in.x, g, a) : TiledCorr<scalar_t, acc_t>();
      const bool tiled_corr = corr.cfg.ok && !L::gather_only();
      TableBuffers<acc_t> tb(input, a.C, a.K, (tiled_gi ? int(phases.size()) : 0) + int(tiled_corr));
      if (tiled_gi) {
        for (auto& p : phases) tb.bind(p.plan, tb.add(kMirroredTable, false, p.ry, p.rx));
      }
      if (tiled_corr) tb.bind(corr, tb.add(kCornerTable, mask[2] && interp == kBilinear));
      if (tb.builds.n > 0) L::tables(a, tb.builds);
      if (pg.ok) {
        if constexpr (window_corr_dtype<scalar_t>()) L::window_plane(pg, a, input, true);
      } else if (wg.ok) {
        if constexpr (window_corr_dtype<scalar_t>()) L::window_conv(wg, a, input, true);
      } else if (fg.ok) {
        L::fma_conv(fg, a, input, true);
      } else if (tiled_gi) {
        for (const auto& p : phases) L::forward(p.plan);
      } else if (mask[0]) {  // more than kMaxPhases phases, or tiles too large: the gather kernel, NCHW
        const auto x = in.x.contiguous(), gc = g.contiguous();
        auto gi = at::empty(input.sizes(), input.options().memory_format(at::MemoryFormat::Contiguous));
        a.x = x.data_ptr<scalar_t>();
        a.grad_out = gc.data_ptr<scalar_t>();
        a.grad_in = gi.data_ptr<scalar_t>();
        L::gather_grad_input(a, gi.numel());
        grads.gin.copy_(gi);
        a.x = in.x.data_ptr<scalar_t>();  // the temporaries die here
        a.grad_out = nullptr;
        a.grad_in = nullptr;
      }
      if (!want_taps) return;
      grads.bind_taps(a, window.size() == 2);
      if (pc.ok) {
        if constexpr (window_corr_dtype<scalar_t>()) {
          auto w = pc;
          if (mask[3]) w.grad_bias = grads.template bind_bias<float>(weight);  // (acc_t: float for 16-bit inputs)
          L::plane_corr(w, a, input);
        }
      } else if (wc.ok) {
        if constexpr (window_corr_mma_dtype<scalar_t>()) {
          auto w = wc;
          if (mask[3]) w.grad_bias = grads.template bind_bias<float>(weight);  // (acc_t: float for 16-bit inputs)
          L::window_corr(w, a, input);
        }
      } else if (fc.ok) {
        auto w = fc;
        if (mask[3]) w.grad_bias = grads.template bind_bias<acc_t>(weight);
        L::fma_corr(w, a, input);
      } else if (tiled_corr) {
        if (mask[3]) corr.grad_bias = grads.template bind_bias<acc_t>(weight);
        L::corr(corr, a, input);
      } else {  // one block per tap
        const auto x = in.x.contiguous(), gc = g.contiguous();
        a.x = x.data_ptr<scalar_t>();
        a.grad_out = gc.data_ptr<scalar_t>();
        L::tap_blocks(a);
      }
    });
  }
  return grads.finish(grad_output, weight, positions);
}

}  // namespace dcls_convert
