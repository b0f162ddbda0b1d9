// What the tiled engine's kernels share across their translation units (taps_conv_cuda.cu: the table build;
// tiled_forward.cu; tiled_corr_16.cu and tiled_corr_32.cu): the dynamic shared memory they view as their tiles,
// and their register bounds.
#pragma once

#include <cuda_runtime.h>

namespace dcls_convert {

extern __shared__ __align__(16) unsigned char tile_smem[];

// Resident blocks per SM the tiled kernels ask registers for: float accumulation fits (forward 64 registers,
// correlation 80); float64, for tests only, would spill under those bounds and asks for fewer blocks.
template <typename acc_t>
constexpr int tile_blocks_per_sm(int for_float) {
  return sizeof(acc_t) == 8 ? 1 : for_float;
}

}  // namespace dcls_convert
