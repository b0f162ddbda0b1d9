// The GPU tap engine's ops, host side, written once: which kernel runs each part, the buffers, the fallbacks.
// A Launch<scalar_t, acc_t> policy runs the kernels: CUDA launches (cuda/taps_conv_cuda.cu) or the CPU
// emulation's block-by-block loops (emulation/emulate_cuda.cpp), so the tests run this very flow.
//
// Which path runs a part: the cost rule and the switches (tiled_taps_host.h), or, tuning (path_tuning.h), the
// fastest of those that apply, timed once per shape.
//
// Launches per call (the tiled engine): forward 2 (table, forward); backward 4 at stride 1 (the mirrored and
// corner tables in one launch, the input gradient, the correlation, its finish, which also writes the bias
// gradient); a strided layer's input gradient takes one launch per stride phase (PhaseAxis). The whole-window
// parts (tensor cores: DCLS_CONVERT_CUDA_MMA, _PLANE, _TF32) take 2 each: the window and the convolution, or the
// correlation and its finish; a backward mixing them with the tables' takes 4 or 5.
// Each gradient is written once (no zero fills), the taps' in the accumulation type: no casts for the float32
// parameters of a layer under autocast.
//
// Launch<scalar_t, acc_t> provides:
//   static bool gather_only();                                   kernels of taps_threads.h everywhere
//   static bool may_tune(const at::Tensor& like);                 whether paths may be timed now (path_tuning.h)
//   static auto timer(const at::Tensor& like);                    ms of a std::function<void()>'s launches
//   static void tables(const TapsArgs&, const TableBuilds&);     every listed table, one launch
//   static void forward(const TiledConv&);                       tiled forward (or mirrored: input gradient)
//   static void corr(TiledCorr, const TapsArgs&, const at::Tensor& like);  correlation + finish
//   static bool mma_supported(const at::Tensor& like);            tensor cores on like's device
//   static int64_t max_smem_bytes(const at::Tensor& like);        shared memory a block may opt into there
//   static void window_corr(WindowCorr, const TapsArgs&, const at::Tensor& like);  16-bit, float32: + finish
//   static void window_conv(WindowConv, const TapsArgs&, const at::Tensor& like, bool flip);  16-bit: window + conv
//   static void window_plane(WindowPlane, const TapsArgs&, const at::Tensor& like, bool flip);  16-bit, float32: window + plane
//   static void plane_corr(PlaneCorr, const TapsArgs&, const at::Tensor& like);  16-bit, float32: correlation + finish
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
#include "dcls_convert/path_tuning.h"
#include "dcls_convert/tiled_taps_host.h"

namespace dcls_convert {

// Bound on the stride phases' tables of one backward (each reserves a channel's full capacity, 2K entries).
constexpr int64_t kMaxTableBytes = int64_t(256) << 20;

// Whether the switches leave path p a candidate of tuning for part ("conv" or "corr"); whether it applies to a
// layer is its plan's to say. Tensor cores: 16-bit, or float32 as 3xTF32 (the correlation on rows or small planes,
// the forward and input gradient in strips).
template <typename scalar_t>
bool tuning_allows(Path p, const char* part) {
  const bool mma_off = part_choice("DCLS_CONVERT_CUDA_MMA", part) == PartChoice::kOff;
  switch (p) {
    case Path::kPlane:
      if constexpr (std::is_same_v<scalar_t, float>)
        return !mma_off && part_choice("DCLS_CONVERT_CUDA_PLANE", part) != PartChoice::kOff &&
               part_choice("DCLS_CONVERT_CUDA_TF32", part) != PartChoice::kOff;
      return window_corr_dtype<scalar_t>() && !mma_off &&
             part_choice("DCLS_CONVERT_CUDA_PLANE", part) != PartChoice::kOff;
    case Path::kMma:
      if constexpr (std::is_same_v<scalar_t, float>)
        return std::string(part) == "corr" && !mma_off &&
               part_choice("DCLS_CONVERT_CUDA_TF32", part) != PartChoice::kOff;
      return window_corr_dtype<scalar_t>() && !mma_off;
    default:
      return true;
  }
}

// A switch that forces a path on for part where it can apply to scalar_t: the part keeps the forced path, untuned.
template <typename scalar_t>
bool path_forced(const char* part) {
  const bool on_16 = window_corr_dtype<scalar_t>() && (part_choice("DCLS_CONVERT_CUDA_MMA", part) == PartChoice::kOn ||
                                                       part_choice("DCLS_CONVERT_CUDA_PLANE", part) == PartChoice::kOn);
  const bool on_32 = std::is_same_v<scalar_t, float> && tf32_wanted(part);
  return on_16 || on_32;
}

// How part ("conv" or "corr") of a scalar_t layer picks its path (path_tuning.h): the cost rule, unless tuning is
// on. key(): the part's TuneKey.
template <typename L, typename scalar_t, typename KeyFn>
PathSelect select_path(const char* part, const at::Tensor& input, KeyFn key) {
  if (L::gather_only()) return PathSelect();
  return path_select([part] { return path_forced<scalar_t>(part); }, key, [&input] { return L::may_tune(input); },
                     [part](Path p) { return tuning_allows<scalar_t>(p, part); });
}

// Whether path p of part is planned: what the cost rule wants (rule(), asked under the rule only), the cached path
// alone, or, tuning, every path the switches allow.
template <typename scalar_t, typename RuleFn>
bool consider(const PathSelect& sel, Path p, const char* part, RuleFn rule) {
  if (sel.mode == PathSelect::kRule) return rule();
  if (sel.mode == PathSelect::kCached) return p == sel.cached;
  return tuning_allows<scalar_t>(p, part);
}

// The plans of the paths not chosen switched off, so that the run below takes the chosen one.
template <typename P, typename W>
void keep_only(Path chosen, P& plane, W& mma) {
  plane.ok = plane.ok && chosen == Path::kPlane;
  mma.ok = mma.ok && chosen == Path::kMma;
}

// a's positions pointed at pos (D, C, 1, K), as make_taps_args lays them out.
template <typename scalar_t, typename acc_t>
void point_positions(TapsArgs<scalar_t, acc_t>& a, const at::Tensor& pos) {
  const acc_t* p = pos.data_ptr<acc_t>();
  const bool two_d = a.pos_h != nullptr;
  a.pos_h = two_d ? p : nullptr;
  a.pos_w = two_d ? p + a.C * a.K : p;
}

// The whole-window paths of a convolution part (the forward, or with flip the input gradient) whose plans apply,
// as tuning's candidates (the plans, a and input outlive them).
template <typename L, typename scalar_t, typename acc_t>
void add_window_candidates(std::vector<Candidate>& cands, const WindowPlane<scalar_t>& pv,
                           const WindowConv<scalar_t>& wv, const TapsArgs<scalar_t, acc_t>& a,
                           const at::Tensor& input, bool flip) {
  if (pv.ok) cands.push_back({Path::kPlane, [&pv, &a, &input, flip] {
    if constexpr (window_corr_mma_dtype<scalar_t>()) L::window_plane(pv, a, input, flip);
  }});
  if (wv.ok) cands.push_back({Path::kMma, [&wv, &a, &input, flip] {
    if constexpr (window_corr_dtype<scalar_t>()) L::window_conv(wv, a, input, flip);
  }});
}

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
    const bool whole = !L::gather_only() && L::mma_supported(input);  // the tensor-core kernels may run
    const auto sel =
        select_path<L, scalar_t>("conv", input, [&] { return tune_key(kTuneForward, 0, a, input, out); });
    auto pv = whole && consider<scalar_t>(sel, Path::kPlane, "conv", [&] { return plane_wanted("conv", a); })
                  ? window_plane_plan<scalar_t, acc_t>(in.x, out, a, false, L::max_smem_bytes(input))
                  : WindowPlane<scalar_t>();
    auto wv = sel.after(pv.ok) && whole &&
                      consider<scalar_t>(sel, Path::kMma, "conv", [&] { return mma_wanted("conv", a); })
                  ? window_conv_plan<scalar_t, acc_t>(in.x, out, a, false, L::max_smem_bytes(input))
                  : WindowConv<scalar_t>();
    // the tables' forward: its table and the convolution, for the positions `at` points at
    auto tables_forward = [&](const TapsArgs<scalar_t, acc_t>& at, TiledConv<scalar_t, acc_t> p) {
      TableBuffers<acc_t> tb(input, a.C, a.K, 1);
      tb.bind(p, tb.add(kForwardTable));
      L::tables(at, tb.builds);
      L::forward(p);
    };
    if (sel.mode == PathSelect::kTune) {  // every path that applies, timed; the tables' with moved positions
      std::vector<Candidate> cands;
      add_window_candidates<L>(cands, pv, wv, a, input, false);
      at::Tensor moved;
      auto am = a;
      if (plan.cfg.ok) {
        moved = between_cells(in.pos, window);
        point_positions(am, moved);
        cands.push_back({Path::kTables, [&] { tables_forward(am, forward_plan<scalar_t, acc_t>(in.x, out, am)); }});
      }
      keep_only(tune_paths(sel, cands, L::timer(input)), pv, wv);
    }
    if (pv.ok) {
      if constexpr (window_corr_mma_dtype<scalar_t>()) L::window_plane(pv, a, input, false);
    } else if (wv.ok) {
      if constexpr (window_corr_dtype<scalar_t>()) L::window_conv(wv, a, input, false);
    } else if (plan.cfg.ok && !L::gather_only()) {
      tables_forward(a, plan);
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
      using Args = TapsArgs<scalar_t, acc_t>;
      auto a = make_taps_args<scalar_t, acc_t>(in.x, in.weight, in.pos, window, stride, padding, interp);
      const bool want_taps = grads.want_taps() && a.C * a.K > 0;
      if (want_taps) grads.bind_taps(a, window.size() == 2);
      const bool whole = !L::gather_only() && L::mma_supported(input);  // the tensor-core kernels may run
      at::Tensor moved;  // (tuning: the positions the tables' paths are timed with, between grid cells)
      auto moved_args = [&] {
        if (!moved.defined()) moved = between_cells(in.pos, window);
        auto am = a;
        point_positions(am, moved);
        return am;
      };

      // The input gradient: on tensor cores where they apply (16-bit, stride 1; float32 opted in) and pay
      // (plane_wanted, mma_wanted), else one tiled forward of the tables per stride phase with
      // outputs (one at stride 1: the mirrored taps), the phase tables within kMaxTableBytes, else the gather kernel.
      const auto gsel = !mask[0] ? PathSelect()
                                 : select_path<L, scalar_t>(
                                       "conv", input, [&] { return tune_key(kTuneGradInput, 0, a, input, g); });
      auto pg = mask[0] && whole &&
                        consider<scalar_t>(gsel, Path::kPlane, "conv", [&] { return plane_wanted("conv", a); })
                    ? window_plane_plan<scalar_t, acc_t>(g, grads.gin, a, true, L::max_smem_bytes(input))
                    : WindowPlane<scalar_t>();
      auto wg = gsel.after(pg.ok) && mask[0] && whole &&
                        consider<scalar_t>(gsel, Path::kMma, "conv", [&] { return mma_wanted("conv", a, true); })
                    ? window_conv_plan<scalar_t, acc_t>(g, grads.gin, a, true, L::max_smem_bytes(input))
                    : WindowConv<scalar_t>();
      struct Phase {
        int ry, rx;
        TiledConv<scalar_t, acc_t> plan;
      };
      // the stride phases' plans for the positions `at` points at; false where the tables cannot run them
      auto phase_plans = [&](const Args& at, std::vector<Phase>& out) {
        bool ok = mask[0] && a.sh * a.sw <= kMaxPhases && !L::gather_only() &&
                  a.sh * a.sw * a.C * table_capacity(a.K) * int64_t(sizeof(TapEntry<acc_t>)) <= kMaxTableBytes;
        for (int ry = 0; ok && ry < a.sh; ++ry) {
          for (int rx = 0; ok && rx < a.sw; ++rx) {
            const auto plan = grad_input_plan<scalar_t, acc_t>(g, grads.gin, at, ry, rx);
            if (plan.Ho == 0 || plan.Wo == 0) continue;  // no input position in this phase
            out.push_back({ry, rx, plan});
            ok = plan.cfg.ok;
          }
        }
        return ok;
      };
      if (gsel.mode == PathSelect::kTune) {
        std::vector<Candidate> cands;
        add_window_candidates<L>(cands, pg, wg, a, input, true);
        const Args am = moved_args();
        std::vector<Phase> mp;
        if (phase_plans(am, mp)) cands.push_back({Path::kTables, [&] {
          TableBuffers<acc_t> tb(input, a.C, a.K, int(mp.size()));
          for (auto& p : mp) tb.bind(p.plan, tb.add(kMirroredTable, false, p.ry, p.rx));
          L::tables(am, tb.builds);
          for (const auto& p : mp) L::forward(p.plan);
        }});
        keep_only(tune_paths(gsel, cands, L::timer(input)), pg, wg);
      }
      std::vector<Phase> phases;
      const bool tiled_gi = !pg.ok && !wg.ok && phase_plans(a, phases);

      // The weight and position gradients (and the bias's): tensor cores where they apply (16-bit; float32 opted
      // in) and pay (plane_wanted, mma_wanted), else the tables' correlation, else one block per tap.
      // Each path's correlation and finish write every asked gradient once.
      const int64_t asked = int64_t(mask[1]) | int64_t(mask[2]) << 1 | int64_t(mask[3]) << 2;
      const auto csel = !want_taps ? PathSelect()
                                   : select_path<L, scalar_t>(
                                         "corr", input, [&] { return tune_key(kTuneGradTaps, asked, a, input, g); });
      auto pc = want_taps && whole &&
                        consider<scalar_t>(csel, Path::kPlane, "corr", [&] { return plane_wanted("corr", a); })
                    ? plane_corr_plan<scalar_t, acc_t>(in.x, g, a, L::max_smem_bytes(input))
                    : PlaneCorr<scalar_t>();
      auto wc = csel.after(pc.ok) && want_taps && whole &&
                        consider<scalar_t>(csel, Path::kMma, "corr", [&] { return mma_wanted("corr", a); })
                    ? window_corr_plan<scalar_t, acc_t>(in.x, g, a, L::max_smem_bytes(input))
                    : WindowCorr<scalar_t>();
      auto plane_corr = [&](PlaneCorr<scalar_t> w) {
        if constexpr (window_corr_mma_dtype<scalar_t>()) {
          if (mask[3]) w.grad_bias = grads.template bind_bias<float>(weight);  // (acc_t: float for 16-bit inputs)
          L::plane_corr(w, a, input);
        }
      };
      auto window_corr = [&](WindowCorr<scalar_t> w) {
        if constexpr (window_corr_mma_dtype<scalar_t>()) {
          if (mask[3]) w.grad_bias = grads.template bind_bias<float>(weight);  // (acc_t: float for 16-bit inputs)
          L::window_corr(w, a, input);
        }
      };
      auto tables_corr = [&](const Args& at, TiledCorr<scalar_t, acc_t> w) {
        if (mask[3]) w.grad_bias = grads.template bind_bias<acc_t>(weight);
        L::corr(w, at, input);
      };
      if (csel.mode == PathSelect::kTune) {
        std::vector<Candidate> cands;
        if (pc.ok) cands.push_back({Path::kPlane, [&] { plane_corr(pc); }});
        if (wc.ok) cands.push_back({Path::kMma, [&] { window_corr(wc); }});
        const Args am = moved_args();
        auto cm = corr_plan<scalar_t, acc_t>(in.x, g, am);
        if (cm.cfg.ok && !L::gather_only()) cands.push_back({Path::kTables, [&] {
          TableBuffers<acc_t> tb(input, a.C, a.K, 1);
          tb.bind(cm, tb.add(kCornerTable, mask[2] && interp == kBilinear));
          L::tables(am, tb.builds);
          tables_corr(am, cm);
        }});
        keep_only(tune_paths(csel, cands, L::timer(input)), pc, wc);
      }
      auto corr = want_taps && !pc.ok && !wc.ok ? corr_plan<scalar_t, acc_t>(in.x, g, a) : TiledCorr<scalar_t, acc_t>();
      const bool tiled_corr = corr.cfg.ok && !L::gather_only();

      // The run: every table of the tables' paths in one launch, then the input gradient, then the correlation.
      TableBuffers<acc_t> tb(input, a.C, a.K, (tiled_gi ? int(phases.size()) : 0) + int(tiled_corr));
      if (tiled_gi) {
        for (auto& p : phases) tb.bind(p.plan, tb.add(kMirroredTable, false, p.ry, p.rx));
      }
      if (tiled_corr) tb.bind(corr, tb.add(kCornerTable, mask[2] && interp == kBilinear));
      if (tb.builds.n > 0) L::tables(a, tb.builds);
      if (pg.ok) {
        if constexpr (window_corr_mma_dtype<scalar_t>()) L::window_plane(pg, a, input, true);
      } else if (wg.ok) {
        if constexpr (window_corr_dtype<scalar_t>()) L::window_conv(wg, a, input, true);
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
      if (pc.ok) {
        plane_corr(pc);
      } else if (wc.ok) {
        window_corr(wc);
      } else if (tiled_corr) {
        tables_corr(a, corr);
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
