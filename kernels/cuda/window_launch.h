// Launchers of the whole-window kernels, each in its own translation unit so that a build compiles them in
// parallel with the tables' kernels (taps_conv_cuda.cu): the tensor cores' (window_mma.cu, the correlation for
// float16, bfloat16 and float32; window_mma_conv.cu, the convolutions). Each launches the kernel and its companion
// (the window, or the finish).
#pragma once

#include <ATen/ATen.h>

#include "dcls_convert/tiled_taps_host.h"

namespace dcls_convert {

// mma.m16n8k16 with bfloat16 on like's device: compute capability 8.0 or newer running code built for one.
bool window_mma_supported(const at::Tensor& like);

template <typename scalar_t>
void launch_window_corr(WindowCorr<scalar_t> w, const TapsArgs<scalar_t, float>& a, const at::Tensor& like);
template <typename scalar_t>
void launch_window_conv(WindowConv<scalar_t> w, const TapsArgs<scalar_t, float>& a, const at::Tensor& like, bool flip);

template <typename scalar_t>
void launch_plane_corr(PlaneCorr<scalar_t> w, const TapsArgs<scalar_t, float>& a, const at::Tensor& like);
template <typename scalar_t>
void launch_window_plane(WindowPlane<scalar_t> w, const TapsArgs<scalar_t, float>& a, const at::Tensor& like,
                         bool flip);

}  // namespace dcls_convert
