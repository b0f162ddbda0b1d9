// The tiled correlation (tiled_corr.cuh) for float32 and float64 inputs.
#include "tiled_corr.cuh"

namespace dcls_convert {

template void launch_tiled_corr(TiledCorr<float, float>, const TapsArgs<float, float>&, const at::Tensor&);
template void launch_tiled_corr(TiledCorr<double, double>, const TapsArgs<double, double>&, const at::Tensor&);

}  // namespace dcls_convert
