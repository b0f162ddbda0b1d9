// Launchers of the tiled engine's forward and correlation kernels, in their own translation units (tiled_forward.cu;
// tiled_corr.cuh in tiled_corr_16.cu and tiled_corr_32.cu) so that a build compiles them in parallel with the op
// flow (taps_conv_cuda.cu); instantiated for float16, bfloat16 and float32 (float sums) and float64.
#pragma once

#include <ATen/ATen.h>

#include "dcls_convert/tiled_taps_host.h"

namespace dcls_convert {

// The forward (or one stride phase of the input gradient) with c's tiles and tables.
template <typename scalar_t, typename acc_t>
void launch_tiled_forward(const TiledConv<scalar_t, acc_t>& c);
// The correlation into a workspace of about four waves of blocks, then its finish into a's gradients.
template <typename scalar_t, typename acc_t>
void launch_tiled_corr(TiledCorr<scalar_t, acc_t> w, const TapsArgs<scalar_t, acc_t>& a, const at::Tensor& like);

}  // namespace dcls_convert
