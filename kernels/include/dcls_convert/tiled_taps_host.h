// Host-side planning of the tiled tap engine (tiled_taps.h): tile configurations, strides and buffers from
// tensors. Shared by the CUDA launchers and the CPU emulation, so both run the same plan.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <string>
#include <type_traits>
#include <unordered_map>

#include "dcls_convert/formats.h"
#include "dcls_convert/tiled_taps.h"
#include "dcls_convert/window_conv.h"
#include "dcls_convert/window_plane.h"
#include "dcls_convert/window_plane_corr.h"
#include "dcls_convert/window_corr.h"

namespace dcls_convert {

// Element strides (n, c, y, x) of a 1-D or 2-D activation; 1-D tensors have a single row.
inline void plane_strides(const at::Tensor& t, int64_t s[4]) {
  s[0] = t.stride(0);
  s[1] = t.stride(1);
  s[2] = t.dim() == 4 ? t.stride(2) : 0;
  s[3] = t.stride(-1);
}

// channels_last inputs stage a 32-byte run of channels per read.
inline int staged_planes(const at::Tensor& x) {
  return taps_memory_format(x) == at::MemoryFormat::ChannelsLast ? static_cast<int>(32 / x.element_size()) : 1;
}

inline bool pair_rows_mode();  // (below, with the other switches of DCLS_CONVERT_CUDA_TILES)

template <typename Plan, typename = void>
struct has_pairs : std::false_type {};
template <typename Plan>
struct has_pairs<Plan, std::void_t<decltype(Plan::pairs)>> : std::true_type {};

// The tap tables of one op call on the device of `like`, in one allocation: the tables' (C, capacity) entries,
// then their (C) counts. add() reserves the next table, bind() points a plan at one; builds lists them all for
// one launch.
template <typename acc_t>
struct TableBuffers {
  at::Tensor storage;
  TableBuilds<acc_t> builds;
  int64_t C = 0, per_table = 0;
  int tables = 0;
  TableBuffers(const at::Tensor& like, int64_t C_, int64_t K, int tables_) : C(C_), tables(tables_) {
    per_table = C * table_capacity(K);
    if (tables > 0)
      // one entry spare at the end: the forward fetches an entry past its table's last (forward_entries)
      storage = at::empty({tables * (per_table * int64_t(sizeof(TapEntry<acc_t>)) + 2 * C * 4) +
                               int64_t(sizeof(TapEntry<acc_t>))},
                          like.options().dtype(at::kByte));
  }
  int add(int kind, bool need_pos = false, int ry = 0, int rx = 0) {
    TORCH_CHECK(builds.n < tables && builds.n < kMaxTableBuilds, "TableBuffers: more tables than reserved");
    auto* entries = reinterpret_cast<TapEntry<acc_t>*>(storage.data_ptr<uint8_t>());
    auto* counts = reinterpret_cast<int*>(entries + tables * per_table);  // entry sizes are multiples of 8 bytes
    int* pairs = counts + tables * C;
    const int i = builds.n++;
    builds.job[i].kind = kind;
    builds.job[i].need_pos = need_pos;
    builds.job[i].pair_rows = kind != kCornerTable && pair_rows_mode();
    builds.job[i].ry = ry;
    builds.job[i].rx = rx;
    builds.job[i].table = entries + i * per_table;
    builds.job[i].count = counts + i * C;
    builds.job[i].pairs = pairs + i * C;
    return i;
  }
  // Points a plan (TiledConv or TiledCorr) at table i.
  template <typename Plan>
  void bind(Plan& plan, int i) const {
    plan.table = builds.job[i].table;
    plan.count = builds.job[i].count;
    if constexpr (has_pairs<Plan>::value) plan.pairs = builds.job[i].pairs;
  }
};

// DCLS_CONVERT_CUDA_TILES=first: the tiles the first GPU sessions measured (8 rows per thread where a plane has
// 6 or more, power-of-two widths, a block's small planes from neighbouring channels, outputs stored by their
// threads, staging with one load in flight per thread), so that a benchmark can time them against the chosen ones
// in one run (read at every call, as DCLS_CONVERT_CUDA_TAPS is). Each later change alone: =direct: outputs stored
// by their threads; =one-load: staging with one load in flight per thread; =unpaired: tables without paired rows
// (table_pair_rows); =runtime-pitch: the forward and correlation kernels with the row pitch read at run time
// everywhere (with_ry_pitch). And one candidate: =fitted-cl: fitted tile widths for channels_last inputs too
// (forward_tiles).
enum class TileMode { kChosen, kFirst, kDirect, kOneLoad, kFittedCl, kUnpaired, kRuntimePitch };
inline TileMode tile_mode() {
  const char* e = std::getenv("DCLS_CONVERT_CUDA_TILES");
  if (e == nullptr) return TileMode::kChosen;
  const std::string v(e);
  if (v == "first") return TileMode::kFirst;
  if (v == "direct") return TileMode::kDirect;
  if (v == "fitted-cl") return TileMode::kFittedCl;
  if (v == "unpaired") return TileMode::kUnpaired;
  if (v == "runtime-pitch") return TileMode::kRuntimePitch;
  return v == "one-load" ? TileMode::kOneLoad : TileMode::kChosen;
}
inline bool batched_staging(TileMode mode) { return mode != TileMode::kFirst && mode != TileMode::kOneLoad; }
inline bool pair_rows_mode() {
  const TileMode mode = tile_mode();
  return mode != TileMode::kFirst && mode != TileMode::kUnpaired;
}

// Tile configurations per plan shape, chosen once: the choice tries several candidates, each with a search for
// bank-conflict-free padding (tens of microseconds), which would otherwise be paid at every call.
struct TileKey {
  int64_t v[12];
  bool operator==(const TileKey& o) const { return std::equal(v, v + 12, o.v); }
};
struct TileKeyHash {
  size_t operator()(const TileKey& k) const {
    size_t h = 0;
    for (int64_t x : k.v) h = h * 1000003u ^ std::hash<int64_t>()(x);
    return h;
  }
};
template <typename Make>
TileConfig cached_tiles(const TileKey& key, Make make) {
  static std::mutex mutex;
  static std::unordered_map<TileKey, TileConfig, TileKeyHash> cache;
  {
    std::lock_guard<std::mutex> lock(mutex);
    const auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  const TileConfig t = make();
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() >= 4096) cache.clear();  // shapes of a model are few; anything else is bounded
  cache.emplace(key, t);
  return t;
}

// The forward's tiles for N images of C channels (also each input-gradient phase): the cheapest configuration
// (tile_work), idle image and channel slots included. Fitted widths (planes straddling warps take image groups
// as large as a block's groups, one channel per round) only for inputs not in channels_last, whose staging reads
// each plane on its own anyway: channels_last staging reads neighbouring channels together, and fitted tiles,
// larger per thread row, would stage fewer of them (56 x 28 tiles: 2 bfloat16 channels instead of 4), a cost
// this count does not see; to be weighed on a GPU (fitted_cl: fitted widths for every layout, the A/B's other arm).
inline TileConfig forward_tiles(int64_t N, int64_t C, int64_t K, int64_t out_h, int64_t out_w, int64_t Lh,
                                int64_t Lw, int64_t sh, int64_t sw, int min_planes, int64_t elem_bytes, bool first,
                                bool fitted_cl = false) {
  const TileKey key{{(first ? 2 : 0) + (fitted_cl ? 4 : 0), N, C, K, out_h, out_w, Lh, Lw, sh, sw, min_planes,
                     elem_bytes}};
  const bool fitted = min_planes == 1 || fitted_cl;
  return cached_tiles(key, [&] {
    return choose_tile_config(out_h, out_w, Lh, Lw, sh, sw, false, min_planes, elem_bytes, fitted, first,
                              [&](const TileConfig& t) {
                                const int images = forward_images(t, N);
                                if (images == 0) return -1.0;
                                const int channels = t.planes / images;
                                const int64_t blocks = (N + images - 1) / images * ((C + channels - 1) / channels) *
                                                       t.tiles_y * t.tiles_x;
                                return tile_work(t, K, blocks * (t.planes / t.groups), blocks * t.planes);
                              });
  });
}

// A forward-like plan's tiles (the forward, each input-gradient phase) for K taps over an Lh x Lw window at the
// plan's stride, its image groups (forward_images) and its store: outputs whose channels are neighbours in memory
// (channels_last) are written through shared memory when a block holds several channels, since a thread's
// outputs are one channel's column and stored directly each lane would write its own 32-byte sector.
template <typename scalar_t, typename acc_t>
void set_forward_tiles(TiledConv<scalar_t, acc_t>& c, int64_t K, int64_t Lh, int64_t Lw, int min_planes) {
  const TileMode mode = tile_mode();
  const bool first = mode == TileMode::kFirst;
  c.cfg = forward_tiles(c.N, c.C, K, c.Ho, c.Wo, Lh, Lw, c.sh, c.sw, min_planes, sizeof(acc_t), first,
                        mode == TileMode::kFittedCl);
  c.images = first ? 1 : std::max(1, forward_images(c.cfg, c.N));
  const bool transposed_stores = mode != TileMode::kFirst && mode != TileMode::kDirect;
  c.transposed = c.cfg.ok && c.os[1] == 1 && c.channels() > 1 && transposed_stores;
  c.batched = batched_staging(mode);
  c.fixed_pitch = mode != TileMode::kFirst && mode != TileMode::kRuntimePitch;
  c.cfg.ok = c.cfg.ok && K <= kMaxTiledTaps;
}

// Forward of the tap convolution described by `a` (its x may have any strides) into `out`.
template <typename scalar_t, typename acc_t>
TiledConv<scalar_t, acc_t> forward_plan(const at::Tensor& x, const at::Tensor& out, const TapsArgs<scalar_t, acc_t>& a) {
  TiledConv<scalar_t, acc_t> c;
  c.in = x.data_ptr<scalar_t>();
  c.out = out.data_ptr<scalar_t>();
  c.bias = a.bias;
  c.cap = table_capacity(a.K);
  c.N = a.N, c.C = a.C, c.H = a.H, c.W = a.W, c.Ho = a.Ho, c.Wo = a.Wo;
  plane_strides(x, c.is);
  plane_strides(out, c.os);
  c.sh = a.sh, c.sw = a.sw, c.ph = a.ph, c.pw = a.pw;
  set_forward_tiles(c, a.K, a.Lh, a.Lw, staged_planes(x));
  return c;
}

// Input gradient, phase (ry, rx) (PhaseAxis): the stride-1 forward of the output gradient with that phase's
// mirrored table, its outputs written every (sh, sw) input positions from (ry, rx). Empty phases have no outputs.
template <typename scalar_t, typename acc_t>
TiledConv<scalar_t, acc_t> grad_input_plan(const at::Tensor& g, const at::Tensor& gin, const TapsArgs<scalar_t, acc_t>& a,
                                           int ry, int rx) {
  TiledConv<scalar_t, acc_t> c;
  const PhaseAxis qy = phase_axis(a.Lh, a.sh, a.ph, ry, a.H), qx = phase_axis(a.Lw, a.sw, a.pw, rx, a.W);
  c.N = a.N, c.C = a.C, c.H = a.Ho, c.W = a.Wo, c.Ho = qy.out, c.Wo = qx.out;
  if (c.Ho == 0 || c.Wo == 0) return c;  // cfg.ok == false, nothing to write
  c.in = g.data_ptr<scalar_t>();
  plane_strides(g, c.is);
  plane_strides(gin, c.os);
  c.out = gin.data_ptr<scalar_t>() + ry * c.os[2] + rx * c.os[3];
  c.os[2] *= a.sh;
  c.os[3] *= a.sw;
  c.cap = table_capacity(a.K);
  c.ph = qy.padding;
  c.pw = qx.padding;
  if (qy.last < 0 || qx.last < 0) c.H = c.W = 0;  // no window offset feeds the phase: stage nothing, write zeros
  set_forward_tiles(c, a.K, qy.window, qx.window, staged_planes(g));  // (a stride-1 forward)
  return c;
}

// Weight and position gradients: correlations of g with x over tiles. The executor sets the slab count (it knows
// how many blocks the device holds) and allocates the workspace.
template <typename scalar_t, typename acc_t>
TiledCorr<scalar_t, acc_t> corr_plan(const at::Tensor& x, const at::Tensor& g, const TapsArgs<scalar_t, acc_t>& a) {
  TiledCorr<scalar_t, acc_t> c;
  c.x = x.data_ptr<scalar_t>();
  c.g = g.data_ptr<scalar_t>();
  c.cap = table_capacity(a.K);
  c.N = a.N, c.C = a.C, c.H = a.H, c.W = a.W, c.Ho = a.Ho, c.Wo = a.Wo;
  plane_strides(x, c.xs);
  plane_strides(g, c.gs);
  c.sh = a.sh, c.sw = a.sw, c.ph = a.ph, c.pw = a.pw;
  // one channel per block, (image, tile) jobs in rounds of `groups`: planes may straddle warps
  const int64_t N = a.N, C = a.C, K = a.K;
  const TileMode mode = tile_mode();
  const bool first = mode == TileMode::kFirst;
  c.batched = batched_staging(mode);
  c.fixed_pitch = mode != TileMode::kFirst && mode != TileMode::kRuntimePitch;
  const TileKey key{{first ? 3 : 1, N, C, K, a.Ho, a.Wo, a.Lh, a.Lw, a.sh, a.sw, 0, int64_t(sizeof(acc_t))}};
  c.cfg = cached_tiles(key, [&] {
    return choose_tile_config(a.Ho, a.Wo, a.Lh, a.Lw, a.sh, a.sw, true, 1, sizeof(acc_t), true, first,
                              [&](const TileConfig& t) {
                                const int64_t rounds = C * ((N * t.tiles_y * t.tiles_x + t.groups - 1) / t.groups);
                                return tile_work(t, K, rounds, rounds * t.groups);
                              });
  });
  c.cfg.ok = c.cfg.ok && a.K <= kMaxTiledTaps;
  if (c.cfg.ok && c.smem_elems() * int64_t(sizeof(acc_t)) > 2 * kMaxTileSmemBytes) c.cfg.ok = false;
  return c;
}

// What environment variable `var` (read at every call) says of `part` ("corr" or "conv"): unset or "auto", the
// cost rule decides; "all" or the part's name, on where it applies; anything else ("none", the other part), off.
enum class PartChoice { kAuto, kOn, kOff };
inline PartChoice part_choice(const char* var, const char* part) {
  const char* e = std::getenv(var);
  if (e == nullptr) return PartChoice::kAuto;
  const std::string v(e);
  if (v.empty() || v == "auto") return PartChoice::kAuto;
  return v == "all" || v == part ? PartChoice::kOn : PartChoice::kOff;
}

// The dtypes the tensor cores take (mma.m16n8k16: float16, bfloat16).
template <typename scalar_t>
constexpr bool window_corr_dtype() {
  return std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16>;
}
// The correlation also takes float32, as three tf32 products (window_corr.h; opt-in, tf32_wanted).
template <typename scalar_t>
constexpr bool window_corr_mma_dtype() {
  return window_corr_dtype<scalar_t>() || std::is_same_v<scalar_t, float>;
}

// DCLS_CONVERT_CUDA_TF32=corr|conv|all: float32 layers' parts on tensor cores, as 3xTF32 (about float32's
// accuracy; not yet timed on a GPU, so not a default): "corr", the weight and position gradients (window_plane_corr.h
// where it applies, rows up to 64 columns, taller planes in bands of rows; else window_corr.h's rows, and there
// everywhere with DCLS_CONVERT_CUDA_PLANE=none); "conv", the forward and input gradient, in strips of output rows
// (window_plane.h).
inline bool tf32_wanted(const char* part) { return part_choice("DCLS_CONVERT_CUDA_TF32", part) == PartChoice::kOn; }

// The most table entries a channel's taps make: their corners, 2 per axis for bilinear taps (4 in 2-D, 2 in 1-D,
// where the window is one row), 1 for nearest. The cost rule (mma_wanted) weighs the tensor cores' cells against
// it.
template <typename scalar_t, typename acc_t>
int64_t corner_bound(const TapsArgs<scalar_t, acc_t>& a) {
  return a.K * (a.interp == kBilinear ? (a.Lh > 1 ? 4 : 2) : 1);
}

// The cost rule of the tensor cores against the tables' kernels for a 16-bit stride-1 layer, from the H200's
// per-layer timings (RESULTS.md, ninth session; bfloat16 channels_last, window 17, batch 64, K = 34 at the four
// ConvNeXt-T stage planes, off-grid and on-grid taps). Per output, the tables' forward costs about 13.6 ps plus
// 0.07 ps per table entry (17.6 and 28 ps plus 0.08 on 14 x 14 and 7 x 7 planes), the tensor cores' a fixed
// 17.1 ps at 56 x 56 that grows as planes shrink (tiles of 16 x 8 outputs partly filled, fewer products per
// barrier): break-even at 53 entries at 56 x 56, 107 at 28 x 28, 162 at 14 x 14, 335 at 7 x 7, about
// 53 (3136 / plane)^0.45. The correlation's is lower (the tables spend a warp reduction per entry, and on-grid
// taps keep both rows for the position gradient): 3x faster at 56 x 56 with 4K = 136 entries, equal at 7 x 7,
// about 12 (3136 / plane)^0.6. Both scale with the window padded as the tensor cores take it against the
// 17 x 32 measured. The entries are the tables' bound, 4K bilinear (2K in 1-D), K nearest: what a layer in
// training has once its positions leave the grid (a freshly converted layer's on-grid taps make K, for which the
// tables' forward is up to 1.3x faster at 28 x 28 until the first step moves them).
inline double mma_break_even(double at_56, double slope, int64_t plane, int64_t Lh, int64_t Lw) {
  const double kw = 16.0 * double((Lw + 15) / 16);
  return at_56 * std::pow(3136.0 / double(std::max<int64_t>(plane, 1)), slope) * double(Lh) * kw / (17.0 * 32.0);
}

// Whether part ("conv": the forward, or with flip the input gradient; "corr": the weight and position gradients)
// of a 16-bit layer runs on the tensor cores: DCLS_CONVERT_CUDA_MMA=corr|conv|all|none forces it, unset (or
// "auto") the cost rule above decides. Whether the kernels apply (stride 1, windows up to 64, shared memory) is
// the plans' to say.
template <typename scalar_t, typename acc_t>
bool mma_wanted(const char* part, const TapsArgs<scalar_t, acc_t>& a, bool flip = false) {
  // (float32: opt-in by DCLS_CONVERT_CUDA_TF32; DCLS_CONVERT_CUDA_MMA can still keep the part off)
  if constexpr (std::is_same_v<scalar_t, float>)
    return tf32_wanted(part) && part_choice("DCLS_CONVERT_CUDA_MMA", part) != PartChoice::kOff;
  if constexpr (!window_corr_dtype<scalar_t>()) return false;  // (16-bit only: no work on the float64 path)
  const PartChoice choice = part_choice("DCLS_CONVERT_CUDA_MMA", part);
  if (choice != PartChoice::kAuto) return choice == PartChoice::kOn;
  const double entries = double(corner_bound(a));
  const int64_t plane = flip ? a.H * a.W : a.Ho * a.Wo;
  if (std::string(part) == "conv") return entries >= mma_break_even(53.0, 0.45, plane, a.Lh, a.Lw);
  return entries >= mma_break_even(12.0, 0.6, plane, a.Lh, a.Lw);
}

// DCLS_CONVERT_CUDA_PLANE=conv|corr|all: the parts of 16-bit stride-1 layers on small planes that run as one
// tensor-core product per channel instead of the cost rule's choice: "conv", the forward and input gradient
// (window_plane.h: input planes up to 256 pixels, larger ones with rows up to 64 columns in strips of output rows);
// "corr", the weight and position gradients (window_plane_corr.h:
// rows of up to 64 columns). DCLS_CONVERT_CUDA_MMA=none (or the other part) still keeps a part off the tensor
// cores. Opt-in until a GPU has timed them.
// float32's parts take them as 3xTF32 where DCLS_CONVERT_CUDA_TF32 opts the part in: the forward and input
// gradient the strips, the weight and position gradients the small-plane correlation (rows up to 64 columns, stage
// 1's 56 rows in bands of 32; the rows' correlation past them) (DCLS_CONVERT_CUDA_PLANE=none and DCLS_CONVERT_CUDA_MMA=none
// still keep them off).
template <typename scalar_t, typename acc_t>
bool plane_wanted(const char* part, const TapsArgs<scalar_t, acc_t>&) {
  const bool mma_on = part_choice("DCLS_CONVERT_CUDA_MMA", part) != PartChoice::kOff;
  if constexpr (std::is_same_v<scalar_t, float>)
    return tf32_wanted(part) && mma_on && part_choice("DCLS_CONVERT_CUDA_PLANE", part) != PartChoice::kOff;
  if constexpr (!window_corr_dtype<scalar_t>()) return false;
  return part_choice("DCLS_CONVERT_CUDA_PLANE", part) == PartChoice::kOn && mma_on;
}

// DCLS_CONVERT_CUDA_MMA_STAGING=scalar: the tensor-core kernels stage channels_last rows one element per load,
// none ahead, and store the convolution's results one element per store (the A/B arm of the 16-byte loads and
// stores; tests compare the two).
inline std::string staging_mode() {
  const char* e = std::getenv("DCLS_CONVERT_CUDA_MMA_STAGING");
  return e == nullptr ? std::string() : std::string(e);
}

// DCLS_CONVERT_CUDA_MMA_BAND=8|16|24|32: the most input rows the tensor-core convolution stages per round (the
// A/B arm of window_conv_band; 8 is one band of 8 rows, as the seventh session built it). Unset: 32.
inline int conv_band_cap() {
  const char* e = std::getenv("DCLS_CONVERT_CUDA_MMA_BAND");
  const int v = e == nullptr ? 0 : std::atoi(e) / kWindowConvBand * kWindowConvBand;  // whole bands of 8
  return v >= kWindowConvBand ? v : kWindowConvMaxBand;
}

// The tensor-core correlation of g with x, or ok = false where it does not apply (or its shared memory exceeds
// what a block of the device may have). The executor sets the slabs and the workspace.
template <typename scalar_t, typename acc_t>
WindowCorr<scalar_t> window_corr_plan(const at::Tensor& x, const at::Tensor& g, const TapsArgs<scalar_t, acc_t>& a,
                                      int64_t max_smem_bytes) {
  WindowCorr<scalar_t> w;
  if constexpr (window_corr_mma_dtype<scalar_t>()) {
    int64_t xs[4];
    plane_strides(x, xs);
    w = window_corr_shape<scalar_t>(a.N, a.C, a.H, a.W, a.Ho, a.Wo, a.Lh, a.Lw, a.sh, a.sw, a.ph, a.pw,
                                    xs[1] == 1 && a.C > 1);
    w.x = x.data_ptr<scalar_t>();
    w.g = g.data_ptr<scalar_t>();
    std::copy(xs, xs + 4, w.xs);
    plane_strides(g, w.gs);
    w.vec8 = sizeof(scalar_t) == 2 && w.cg == 8 && staging_vec(x.data_ptr(), w.xs, a.C) &&
             staging_vec(g.data_ptr(), w.gs, a.C) && staging_mode() != "scalar";
    w.ok = w.ok && w.smem_words() * 4 <= max_smem_bytes;
  }
  return w;
}

// What a whole-window convolution of x into out reads, writes and spans: the forward's planes, or with flip the
// input gradient's (x the output gradient, out the input's gradient, the window turned and the padding L - 1 - p).
struct WindowConvGeometry {
  int64_t H, W, Ho, Wo, ph, pw;
};
template <typename scalar_t, typename acc_t>
WindowConvGeometry window_conv_geometry(const TapsArgs<scalar_t, acc_t>& a, bool flip) {
  if (!flip) return {a.H, a.W, a.Ho, a.Wo, a.ph, a.pw};
  return {a.Ho, a.Wo, a.H, a.W, a.Lh - 1 - a.ph, a.Lw - 1 - a.pw};
}
// The tensors of a whole-window convolution's plan (WindowConv, WindowPlane): pointers, strides, the bias (none for
// the input gradient) and whether the input is channels_last.
template <typename Plan, typename scalar_t, typename acc_t>
void bind_window_conv(Plan& w, const at::Tensor& x, const at::Tensor& out, const TapsArgs<scalar_t, acc_t>& a,
                      bool flip) {
  w.x = x.data_ptr<scalar_t>();
  w.out = out.data_ptr<scalar_t>();
  w.bias = flip ? nullptr : a.bias;
  plane_strides(x, w.xs);
  plane_strides(out, w.os);
  w.x_cl = w.xs[1] == 1 && a.C > 1;
}

// The tensor-core convolutions' staging (WindowConv, WindowPlane): loads of a pixel's `run` channels (a block's:
// 8, or 4 for 4-channel strips) where x allows them, the output's channel order, stores of as many where out allows
// them (DCLS_CONVERT_CUDA_MMA_STAGING=scalar: neither).
// float32 (WindowPlane): 16-byte loads and stores of 4 channels, where a block's run of channels (8 or 4) is whole.
template <typename Plan>
void bind_mma_staging(Plan& w, const at::Tensor& x, const at::Tensor& out, int64_t C, int run = 8) {
  const bool f32 = x.element_size() == 4;
  const bool vec = staging_mode() != "scalar" && (!f32 || run % 4 == 0);
  const int access = f32 ? 16 : 0;
  w.vec8 = vec && staging_vec(x.data_ptr(), w.xs, C, run, access);
  w.out_cl = w.os[1] == 1 && C > 1;
  w.out_vec8 = vec && staging_vec(out.data_ptr(), w.os, C, run, access);
}

// The tensor-core convolution of x into out (flip as window_conv_geometry), or ok = false where it does not apply
// (or its shared memory exceeds what a block of the device may have).
template <typename scalar_t, typename acc_t>
WindowConv<scalar_t> window_conv_plan(const at::Tensor& x, const at::Tensor& out, const TapsArgs<scalar_t, acc_t>& a,
                                      bool flip, int64_t max_smem_bytes) {
  WindowConv<scalar_t> w;
  if constexpr (window_corr_dtype<scalar_t>()) {
    if (a.sh != 1 || a.sw != 1 || a.ph > a.Lh - 1 || a.pw > a.Lw - 1) return w;
    const WindowConvGeometry g = window_conv_geometry(a, flip);
    w = window_conv_shape<scalar_t>(a.N, a.C, g.H, g.W, g.Ho, g.Wo, a.Lh, a.Lw, g.ph, g.pw);
    bind_window_conv(w, x, out, a, flip);
    bind_mma_staging(w, x, out, a.C);
    // (the stores' offsets within a tile are 32-bit)
    w.out_vec8 = w.out_vec8 &&
                 (w.rows() - 1) * std::abs(w.os[2]) + (w.cols() - 1) * std::abs(w.os[3]) + 8 < (int64_t(1) << 31);
    if (w.ok) w.band = window_conv_band(w, max_smem_bytes, conv_band_cap());
    w.ok = w.ok && w.smem_words() * 4 <= max_smem_bytes;
  }
  return w;
}

// The tensor-core convolution of a small plane (window_plane.h) of x into out (flip as window_conv_geometry), or
// ok = false where it does not apply or its shared memory exceeds what a block of the device may have.
// float32: strips only (3xTF32), down to 2 channels a block (ConvNeXt-T's 56 x 56).
template <typename scalar_t, typename acc_t>
WindowPlane<scalar_t> window_plane_plan(const at::Tensor& x, const at::Tensor& out, const TapsArgs<scalar_t, acc_t>& a,
                                        bool flip, int64_t max_smem_bytes) {
  WindowPlane<scalar_t> w;
  if constexpr (window_corr_mma_dtype<scalar_t>()) {
    if (a.sh != 1 || a.sw != 1 || a.ph > a.Lh - 1 || a.pw > a.Lw - 1) return w;
    const WindowConvGeometry g = window_conv_geometry(a, flip);
    w = window_plane_shape<scalar_t>(a.N, a.C, g.H, g.W, g.Ho, g.Wo, a.Lh, a.Lw, g.ph, g.pw);
    // past 256 pixels (or not fitting): strips of as many output rows as fit, up to kPlaneMaxStrip, 8 channels a
    // block, else 4 (ConvNeXt-T's 56 x 56: 17 staged rows of 56 columns are 244 KiB for 8 channels)
    auto fits = [&] { return w.ok && w.smem_words() * 4 <= max_smem_bytes; };
    const int least_cpb = WindowPlane<scalar_t>::kE == 1 ? 2 : kWindowCorrWarps / 2;
    for (int cpb = kWindowCorrWarps; cpb >= least_cpb && !fits(); cpb /= 2)
      for (int R = std::min<int64_t>(kPlaneMaxStrip, g.Ho); R >= 1 && !fits(); --R)
        w = window_plane_shape<scalar_t>(a.N, a.C, g.H, g.W, g.Ho, g.Wo, a.Lh, a.Lw, g.ph, g.pw, R, cpb);
    bind_window_conv(w, x, out, a, flip);
    bind_mma_staging(w, x, out, a.C, w.cpb);
    // (the whole-plane kernels are compiled for 8 channels a block)
    TORCH_INTERNAL_ASSERT(w.strip > 0 || w.cpb == kWindowCorrWarps, "window_plane_plan: whole planes take 8 channels");
    w.ok = fits();
  }
  return w;
}

// The tensor-core correlation of g with x on small planes (window_plane_corr.h; float32 as 3xTF32), or ok = false
// where it does not apply. The executor sets the workspace.
template <typename scalar_t, typename acc_t>
PlaneCorr<scalar_t> plane_corr_plan(const at::Tensor& x, const at::Tensor& g, const TapsArgs<scalar_t, acc_t>& a,
                                    int64_t max_smem_bytes) {
  PlaneCorr<scalar_t> w;
  if constexpr (window_corr_mma_dtype<scalar_t>()) {
    w = plane_corr_shape<scalar_t>(a.N, a.C, a.H, a.W, a.Ho, a.Wo, a.Lh, a.Lw, a.sh, a.sw, a.ph, a.pw, max_smem_bytes);
    w.x = x.data_ptr<scalar_t>();
    w.g = g.data_ptr<scalar_t>();
    plane_strides(x, w.xs);
    plane_strides(g, w.gs);
    w.x_cl = w.xs[1] == 1 && a.C > 1;
    w.g_cl = w.gs[1] == 1 && a.C > 1;
    const int access = sizeof(scalar_t) == 4 ? 16 : 0;  // float32: 8 channels a block in two 16-byte loads
    w.vec8 = staging_vec(x.data_ptr(), w.xs, a.C, 8, access) && staging_vec(g.data_ptr(), w.gs, a.C, 8, access) &&
             staging_mode() != "scalar";
  }
  return w;
}

}  // namespace dcls_convert
