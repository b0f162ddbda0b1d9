// The GPU tap engine's block algorithms, written once for the CUDA kernels and for the CPU emulation that
// runs them block by block and phase by phase in tests.
//
// Per channel, the taps become a short table of entries (tap_tables): an entry is a window column dx and two
// vertically adjacent window rows dy, dy + 1 with their merged weights c0, c1 (c1 = 0: one row). Bilinear taps
// give two such entries each (their two columns), on-grid taps one single-row entry; coincident entries merge
// and zero entries are dropped.
//
// Forward (tiled_forward_*): a block stages its planes' input tile plus halo in shared memory once, then each
// thread computes RY vertically adjacent outputs of one column in registers: per entry RY + 1 shared loads
// (RY for a single row) and 2 RY multiply-adds. Lanes of a warp own neighbouring columns, and the tile pitch is
// padded so that a warp's loads hit distinct banks. RY is 8 or 7 (7: planes of 7 * 2^k rows, every stage of a
// 224-pixel network, without a row past the plane), 1 for planes under 6 rows. Planes smaller than
// a warp, or straddling warps (fitted tile widths: 56 -> 2 x 28), are grouped by image, so that a warp's lanes
// share one channel's table (forward_images); tile_config.h picks rows, widths and groups by a cost model. A block
// computes its planes in rounds; channels_last outputs are kept in the round's staged planes and written with
// neighbouring channels together (TiledConv::transposed). The input gradient is the same forward run on the
// output gradient with the mirrored table, once per stride phase (one at stride 1; PhaseAxis in tap_tables.h).
//
// Weight and position gradients (tiled_corr_*): S[c, e, r] = sum over (n, oy, ox) of grad_out times the input
// under window cell (dy_e + r, dx_e). A block owns one channel and a slab of (image, tile) jobs; each thread
// multiplies its RY output gradients with the staged input, 16 entries (32 sums) at a time, then the warp
// transposes and reduces those 32 sums in 31 exchanges (lane l ends with sum l), added to the warp's row of
// a shared array; each thread also sums its output gradients (the bias gradient: one more value per warp).
// Blocks write their sums (warps added in order) to a workspace that a second kernel sums over slabs in a fixed
// order: no atomics anywhere, results are identical run to run.
//
// The parts: tap_tables.h (the tables), tile_config.h (tiles and staging), tiled_forward.h, tiled_corr.h.
#pragma once

#include "dcls_convert/tap_tables.h"
#include "dcls_convert/tile_config.h"
#include "dcls_convert/tiled_corr.h"
#include "dcls_convert/tiled_forward.h"
