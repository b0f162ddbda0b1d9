// The whole-window correlations' finish (window_corr_finish_thread, a thread per tap): the tensor cores'
// (WindowCorr) and the FMA one (FmaCorr) read each tap's corners from their workspace the same way.
#pragma once

#include "dcls_convert/window_corr.h"
#include "launch.cuh"

namespace dcls_convert {

template <typename Corr, typename Taps>
struct WindowFinishArgs {
  Corr corr;
  Taps taps;
};
template <typename Corr, typename Taps>
struct WindowFinishFn {
  __device__ static void run(int64_t i, const WindowFinishArgs<Corr, Taps>& a) {
    window_corr_finish_thread(i, a.corr, a.taps);
  }
};

// After the correlation w has filled its workspace: a's weight, position and bias gradients.
template <typename Corr, typename Taps>
void launch_window_finish(const Corr& w, const Taps& a) {
  launch_grid_stride<WindowFinishFn<Corr, Taps>>(a.C * a.K, WindowFinishArgs<Corr, Taps>{w, a});
}

}  // namespace dcls_convert
