// The tiled correlation (tiled_corr.cuh) for float16 and bfloat16 inputs (float sums).
#include "tiled_corr.cuh"

namespace dcls_convert {

template void launch_tiled_corr(TiledCorr<c10::Half, float>, const TapsArgs<c10::Half, float>&, const at::Tensor&);
template void launch_tiled_corr(TiledCorr<c10::BFloat16, float>, const TapsArgs<c10::BFloat16, float>&,
                                const at::Tensor&);

}  // namespace dcls_convert
