// CPU emulation of the CUDA launch grids: runs the same per-thread and per-block functions the CUDA kernels
// run, over the full grid, driven by the same host flow (tiled_taps_ops.h), so tests check the device code and
// its launch sequence on machines without a GPU. Built by the tests only
// (tests/emulation.py compiles it with torch.utils.cpp_extension), never shipped in dcls_convert._C. Its ops live
// in their own namespace, dcls_convert_emulation; small shapes only, single-threaded on purpose.
#define DCLS_EMULATION  // the kernels' index checks (interpolation.h)
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "dcls_convert/args.h"
#include "dcls_convert/tiled_taps_ops.h"
#include "dcls_convert/window_build.h"

namespace dcls_convert {
namespace {

at::Tensor emulate_construct(const at::Tensor& weight, const at::Tensor& positions,
                             const c10::optional<at::Tensor>& sigma, at::IntArrayRef window,
                             c10::string_view interpolation, double sigma_min) {
  const int interp = parse_interp(std::string(interpolation));
  check_construct_args(weight, positions, sigma, window, interp);
  auto out = at::empty(construct_output_size(weight, window), weight.options());
  const ConstructInputs in(weight, positions, sigma, interp);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "emulate_construct", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = make_construct_args<scalar_t, acc_t>(in.weight, in.pos, in.sigma, window, interp, sigma_min);
    a.out = out.data_ptr<scalar_t>();
    if (gauss_profiles_fit(a)) {  // the CUDA block algorithm: phase by phase over a block of 64 threads
      constexpr int64_t kBlock = 64;
      std::vector<acc_t> prof(gauss_profile_count(a));
      for (int64_t p = 0; p < a.P; ++p) {
        for (int64_t tid = 0; tid < kBlock; ++tid) gauss_profiles_phase(p, tid, kBlock, a, prof.data());
        for (int64_t tid = 0; tid < kBlock; ++tid) gauss_gather_phase(p, tid, kBlock, a, prof.data());
      }
    } else {
      for (int64_t i = 0; i < out.numel(); ++i) construct_forward_thread(i, a);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> emulate_construct_backward(
    const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& positions,
    const c10::optional<at::Tensor>& sigma, at::IntArrayRef window, c10::string_view interpolation,
    double sigma_min) {
  const int interp = parse_interp(std::string(interpolation));
  check_construct_backward_args(grad, weight, positions, sigma, window, interp);
  const auto adt = acc_dtype(weight.scalar_type());
  auto gw = at::empty(weight.sizes(), weight.options().dtype(adt));
  auto gp = at::empty(positions.sizes(), weight.options().dtype(adt));
  auto gs = at::zeros(positions.sizes(), weight.options().dtype(adt));
  const ConstructInputs in(weight, positions, sigma, interp);
  const auto g = grad.to(weight.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "emulate_construct_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto a = make_construct_args<scalar_t, acc_t>(in.weight, in.pos, in.sigma, window, interp, sigma_min);
    a.grad = g.data_ptr<scalar_t>();
    a.grad_weight = gw.data_ptr<acc_t>();
    a.grad_pos = gp.data_ptr<acc_t>();
    a.grad_sigma = interp == kGaussian ? gs.data_ptr<acc_t>() : nullptr;
    for (int64_t i = 0; i < a.P * a.K; ++i) construct_backward_thread(i, a);
  });
  return {gw, gp, gs};
}

// Shared memory per block of the emulated device (an H100's or H200's opt-in limit).
constexpr int64_t kEmulatedSmemBytes = 227 * 1024;

// Blocks the emulated correlation aims for (small, so that small shapes still split into several slabs).
constexpr int64_t kEmulatedBlocks = 16;
// window_finish_kernel, phase by phase: a block per channel, its cells summed over the slabs into G, then its taps.
template <typename Corr, typename scalar_t, typename acc_t>
void emulate_window_finish(const Corr& w, const TapsArgs<scalar_t, acc_t>& a) {
  std::vector<acc_t> G(w.values(), std::numeric_limits<acc_t>::quiet_NaN());
  for (int64_t c = 0; c < a.C; ++c) {
    for (int64_t e = 0; e < w.values(); ++e) window_corr_finish_cell(c, e, w, G.data());
    for (int64_t k = 0; k < a.K; ++k) window_corr_finish_tap(c, k, w, a, G.data());
  }
}

// Blocks the emulated small-plane correlation aims for: two, so that a slab of small shapes takes several packs
// (on the device a pack a block, as the workspace allows).
constexpr int64_t kEmulatedPlaneBlocks = 2;

// Kernel launches the CUDA ops would make so far, and their kernels' names (tests read and reset them: the host
// flow's launch budget, and which path ran).
int64_t launches = 0;
std::vector<std::string> kernels_run;
void launch(std::initializer_list<const char*> names) {
  for (const char* n : names) kernels_run.emplace_back(n);
  launches += static_cast<int64_t>(names.size());
}
int64_t take_launches() {
  const int64_t n = launches;
  launches = 0;
  kernels_run.clear();
  return n;
}
// Tuning's timer here (path_tuning.h): the cost of the kernels a run launches, from set_kernel_costs (1 for a
// kernel it does not name), so that the tests decide which path is fastest; a kernel of negative cost fails as if
// out of device memory.
std::map<std::string, double> kernel_costs;
void set_kernel_costs(std::vector<std::string> names, std::vector<double> costs) {
  TORCH_CHECK(names.size() == costs.size(), "set_kernel_costs: as many costs as names");
  kernel_costs.clear();
  for (size_t i = 0; i < names.size(); ++i) kernel_costs[names[i]] = costs[i];
}
double emulated_ms(const std::function<void()>& run) {
  const size_t first = kernels_run.size();
  run();
  double ms = 0.0;
  for (size_t i = first; i < kernels_run.size(); ++i) {
    const auto it = kernel_costs.find(kernels_run[i]);
    const double cost = it == kernel_costs.end() ? 1.0 : it->second;
    TORCH_CHECK_WITH(OutOfMemoryError, cost >= 0.0, "emulated: ", kernels_run[i], " out of device memory");
    ms += cost;
  }
  return ms;
}

std::vector<std::string> take_kernels() {
  auto names = std::move(kernels_run);
  kernels_run.clear();
  launches = 0;
  return names;
}

// The launch policy of tiled_taps_ops.h on CPU: the tiled engine's blocks run one after another, each phase for
// every thread of the block before the next phase starts (the barriers of the CUDA kernels); warps exchange
// values as the shuffles do.
// Shared memory as a kernel finds it: whatever ran before. NaN, so that a cell that neither the clearing pass nor
// the staging writes shows in the results (a zero left from an earlier block would hide it). A cell the staging
// misses inside the input reads the clearing's zero instead, which the comparisons with the oracle catch.
template <typename acc_t>
void poison(std::vector<acc_t>& smem, int64_t n) {
  std::fill(smem.begin(), smem.begin() + n, std::numeric_limits<acc_t>::quiet_NaN());
}

// window_build_kernel, block by block and phase by phase: the window of a's taps into kern (C, Lh, kw); shared
// memory poisoned (0xff: NaN sums, -1 cells) at each block, so a tap or cell no phase wrote shows.
template <typename scalar_t, typename acc_t, typename out_t>
void emulate_window_build(const TapsArgs<scalar_t, acc_t>& a, int kw, bool flip, out_t* kern) {
  std::vector<unsigned char> smem(window_build_smem_bytes<acc_t>(a.Lh, kw));
  for (int64_t c = 0; c < a.C; ++c) {
    std::fill(smem.begin(), smem.end(), static_cast<unsigned char>(0xff));
    for (int t = 0; t < kWindowBuildThreads; ++t) window_build_zero(a, kw, smem.data(), t);
    for (int64_t k0 = 0; k0 < a.K; k0 += kWindowBuildChunk) {
      for (int t = 0; t < kWindowBuildThreads; ++t) window_build_stage(a, c, k0, smem.data(), t);
      for (int t = 0; t < kWindowBuildThreads; ++t) window_build_add(a, kw, flip, k0, smem.data(), t);
    }
    for (int t = 0; t < kWindowBuildThreads; ++t) window_build_write(a, kw, c, smem.data(), kern, t);
  }
}

// How the emulated mma rounds its float32 sums. Nearest (the default): each product added in turn, rounded to
// nearest, as the tests' bitwise comparisons of paths assume. Toward zero (set_mma_rounding("zero")): an mma's
// products and accumulator summed in double, then rounded toward zero once, as the tensor cores truncate (their
// order and internal width are not specified): the device tests' float32 tolerances are checked under it.
bool g_mma_round_zero = false;
void set_mma_rounding(std::string mode) {
  TORCH_CHECK(mode == "nearest" || mode == "zero", "set_mma_rounding: 'nearest' or 'zero', not '", mode, "'");
  g_mma_round_zero = mode == "zero";
}
// acc plus the n products a[k] * b[k] (k = 0 .. n - 1, with stride sb in b), rounded as set_mma_rounding says.
inline float mma_sum(float acc, const float* a, const float* b, int n, int sb) {
  if (!g_mma_round_zero) {
    for (int k = 0; k < n; ++k) acc += a[k] * b[k * sb];
    return acc;
  }
  double d = acc;
  for (int k = 0; k < n; ++k) d += double(a[k]) * double(b[k * sb]);
  float f = static_cast<float>(d);
  if (std::isfinite(f) && std::fabs(double(f)) > std::fabs(d)) f = std::nextafter(f, 0.0f);
  return f;
}

// A 16-bit value's float from its bits (the low or high half of a fragment register).
template <typename scalar_t>
float half_bits(uint32_t r, int high) {
  return static_cast<float>(scalar_t(static_cast<uint16_t>(high ? r >> 16 : r & 0xffffu), scalar_t::from_bits()));
}

// mma.m16n8k16 (row.col, float32 sums) over a warp's 32 lanes, from the fragment layouts of the PTX ISA
// ("Matrix Fragments for mma.m16n8k16 with floating point type"): lane = 4 groupID + threadID_in_group; A
// register r holds row groupID (+8 for r = 1, 3), columns 2 threadID + {0, 1} (+8 for r = 2, 3); B register r
// holds rows 2 threadID + {0, 1} (+8 for r = 1) of column groupID; accumulator q is row groupID (+8 for q >= 2),
// column 2 threadID + (q & 1). (CUTLASS's cute traits for SM80_16x8x16_F32BF16BF16F32_TN state the same layouts.)
template <typename scalar_t>
struct MmaEmulated {
  template <int NL, int NA, int NAR, int NBR>
  static void run(float (*acc)[NA], const uint32_t (*A)[NAR], const uint32_t (*B)[NBR], int tile, int i, int jn) {
    static_assert(NL == 32, "the emulated mma takes the whole warp");
    float a[16][16], b[16][8];
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane >> 2, t = lane & 3;
      const uint32_t* r = A[lane] + 4 * i;
      for (int h = 0; h < 2; ++h) {
        a[g][2 * t + h] = half_bits<scalar_t>(r[0], h);
        a[g + 8][2 * t + h] = half_bits<scalar_t>(r[1], h);
        a[g][2 * t + 8 + h] = half_bits<scalar_t>(r[2], h);
        a[g + 8][2 * t + 8 + h] = half_bits<scalar_t>(r[3], h);
        b[2 * t + h][g] = half_bits<scalar_t>(B[lane][2 * jn], h);
        b[2 * t + 8 + h][g] = half_bits<scalar_t>(B[lane][2 * jn + 1], h);
      }
    }
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane >> 2, t = lane & 3;
      for (int q = 0; q < 4; ++q) {
        const int row = g + 8 * (q >> 1), col = 2 * t + (q & 1);
        acc[lane][4 * tile + q] = mma_sum(acc[lane][4 * tile + q], a[row], &b[0][col], 16, 8);
      }
    }
  }
};

// float32 fragments: 3xTF32 over mma.m16n8k8 (row.col, tf32 in, float32 sums; the PTX ISA's "Matrix Fragments
// for mma.m16n8k8" with .tf32: A register r holds row groupID (+8 for r = 1, 3), column threadID (+4 for r = 2,
// 3); B register r row threadID (+4 for r = 1) of column groupID; the accumulators as for m16n8k16). Each value
// split as the device splits it (tf32_split: head and tail truncated); three products added as it adds them (tail
// x head, head x tail, head x head), each a k-sum in float32 (the hardware's own order within an mma is not
// specified: the tests allow for it).
template <>
struct MmaEmulated<float> {
  template <int NL, int NA, int NAR, int NBR>
  static void run(float (*acc)[NA], const uint32_t (*A)[NAR], const uint32_t (*B)[NBR], int tile, int i, int jn) {
    static_assert(NL == 32, "the emulated mma takes the whole warp");
    uint32_t ah[32][4], at[32][4];
    for (int lane = 0; lane < 32; ++lane)
      for (int q = 0; q < 4; ++q) tf32_split(A[lane][4 * i + q], ah[lane][q], at[lane][q]);
    run_split<NL, NA, 4, NBR>(acc, ah, at, B, tile, 0, jn);
  }
  // A already split, as the device's run_split
  template <int NL, int NA, int NAR, int NBR>
  static void run_split(float (*acc)[NA], const uint32_t (*AH)[NAR], const uint32_t (*AT)[NAR],
                        const uint32_t (*B)[NBR], int tile, int i, int jn) {
    static_assert(NL == 32, "the emulated mma takes the whole warp");
    float a[2][16][8], b[2][8][8];  // [head, tail]
    auto split = [](uint32_t r, float* head, float* tail) {
      uint32_t h, t;
      tf32_split(r, h, t);
      std::memcpy(head, &h, 4);
      std::memcpy(tail, &t, 4);
    };
    auto put = [](const uint32_t* h, const uint32_t* t, int q, float (*part)[16][8], int row, int col) {
      std::memcpy(&part[0][row][col], h + q, 4);
      std::memcpy(&part[1][row][col], t + q, 4);
    };
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane >> 2, t = lane & 3;
      const uint32_t *h = AH[lane] + 4 * i, *tl = AT[lane] + 4 * i;
      put(h, tl, 0, a, g, t);
      put(h, tl, 1, a, g + 8, t);
      put(h, tl, 2, a, g, t + 4);
      put(h, tl, 3, a, g + 8, t + 4);
      split(B[lane][2 * jn], &b[0][t][g], &b[1][t][g]);
      split(B[lane][2 * jn + 1], &b[0][t + 4][g], &b[1][t + 4][g]);
    }
    const int terms[3][2] = {{1, 0}, {0, 1}, {0, 0}};  // (a part, b part) per product, in the device's order
    for (const auto& term : terms)
      for (int lane = 0; lane < 32; ++lane) {
        const int g = lane >> 2, t = lane & 3;
        for (int q = 0; q < 4; ++q) {
          const int row = g + 8 * (q >> 1), col = 2 * t + (q & 1);
          acc[lane][4 * tile + q] = mma_sum(acc[lane][4 * tile + q], a[term[0]][row], &b[term[1]][0][col], 8, 8);
        }
      }
  }
};

template <typename scalar_t, typename acc_t>
struct EmulatedLaunch {
  static bool gather_only() { return false; }
  static bool may_tune(const at::Tensor&) { return true; }
  static auto timer(const at::Tensor&) { return emulated_ms; }

  static void tables(const TapsArgs<scalar_t, acc_t>& a, const TableBuilds<acc_t>& builds) {
    launch({"tables"});
    const int n = table_capacity(a.K);
    const bool use_map = table_uses_map(a.Lh, a.Lw);
    const int cells = use_map ? static_cast<int>(a.Lh * a.Lw) : 0;
    std::vector<TapEntry<acc_t>> cand(n), merged(n);
    std::vector<unsigned char> valid(n), keep(n), dup(n);
    std::vector<int> slot(std::max(cells, 1)), offset(kTableThreads + 1);
    for (int64_t job = 0; job < builds.n * a.C; ++job) {  // the CUDA grid's order: build, then channel
      const int64_t c = job % a.C;
      const TableBuild<acc_t>& b = builds.job[job / a.C];
      for (int64_t k = 0; k < a.K; ++k) table_candidates(c, k, a, b, cand.data(), valid.data());
      for (int i = 0; i < std::max(cells, n); ++i) table_clear(i, cells, n, slot.data(), dup.data());
      if (use_map) {
        for (int i = 0; i < n; ++i)  // the device's atomic minimum
          if (valid[i]) slot[table_cell(cand[i], a.Lw)] = std::min(slot[table_cell(cand[i], a.Lw)], i);
        for (int i = 0; i < n; ++i) table_flag(i, a.Lw, cand.data(), valid.data(), slot.data(), dup.data());
      }
      for (int i = 0; i < n; ++i)
        table_merge(i, n, b.kind, a.Lw, cand.data(), valid.data(), use_map ? slot.data() : nullptr, dup.data(),
                    merged.data(), keep.data());
      if (table_pairs_rows(b, a))
        for (int i = n - 1; i >= 0; --i)  // (reverse order: a pair read after its partner changed would show)
          table_pair_rows(i, a.Lh, a.Lw, valid.data(), slot.data(), merged.data(), keep.data());
      offset[0] = 0;
      for (int part = 0; part < 2; ++part) {  // two-row entries, then single rows (table_write_kept)
        const int start = offset[0];
        for (int t = 0; t < kTableThreads; ++t)
          offset[t + 1] = offset[t] + table_count_kept(t, n, kTableThreads, keep.data(), merged.data(), part, a, b);
        for (int t = 0; t < kTableThreads; ++t)
          table_write_kept(c, t, n, kTableThreads, offset[t], part, a, b, merged.data(), keep.data());
        if (part == 0) b.pairs[c] = offset[kTableThreads] - start;
        offset[0] = offset[kTableThreads];
      }
      b.count[c] = offset[0];
    }
  }

  static void forward(const TiledConv<scalar_t, acc_t>& c) {
    launch({"tiled_forward"});
    with_ry_pitch(c.cfg.ry, c.kernel_pitch(), [&](auto ry, auto p) {
      forward_ry<decltype(ry)::value, decltype(p)::value>(c);
    });
  }
  template <int RY, int P>
  static void forward_ry(const TiledConv<scalar_t, acc_t>& c) {
    std::vector<acc_t> smem(int64_t(c.cfg.planes) * c.cfg.plane_stride), acc(int64_t(c.cfg.threads) * RY);
    std::vector<char> live(c.cfg.threads);
    for (int64_t bid = 0; bid < c.blocks(); ++bid) {
      const ForwardJob j = forward_job(c, bid);
      poison(smem, int64_t(smem.size()));  // what the block's previous job (or another kernel) left: no cell read may come from it
      for (int tid = 0; tid < c.cfg.threads; ++tid) tiled_forward_clear(c, smem.data(), tid);
      for (int tid = 0; tid < c.cfg.threads; ++tid) tiled_forward_stage(c, j, smem.data(), tid);
      for (int r = 0; r < c.rounds(); ++r) {  // (a barrier between compute and keep when transposed)
        for (int tid = 0; tid < c.cfg.threads; ++tid)
          live[tid] = tiled_forward_round<RY, P>(c, j, smem.data(), tid, r, &acc[int64_t(tid) * RY]);
        for (int tid = 0; tid < c.cfg.threads; ++tid)
          if (live[tid]) tiled_forward_keep<RY>(c, j, smem.data(), tid, r, &acc[int64_t(tid) * RY]);
      }
      if (c.transposed)
        for (int tid = 0; tid < c.cfg.threads; ++tid) tiled_forward_store_tiles(c, j, smem.data(), tid);
    }
  }

  static void corr(TiledCorr<scalar_t, acc_t> w, const TapsArgs<scalar_t, acc_t>& a, const at::Tensor&) {
    launch({"tiled_corr", "tiled_corr_finish"});  // the correlation and its finish
    w.slabs = corr_slabs(w.C, w.jobs(), w.cfg.groups, kEmulatedBlocks);
    std::vector<acc_t> work(w.C * w.slabs * w.values());
    w.work = work.data();
    with_ry_pitch(w.cfg.ry, w.kernel_pitch(), [&](auto ry, auto p) {
      corr_ry<decltype(ry)::value, decltype(p)::value>(w);
    });
    for (int64_t ck = 0; ck < a.C * a.K; ++ck) tiled_corr_finish_thread(ck, w, a);
  }
  template <int RY, int P>
  static void corr_ry(const TiledCorr<scalar_t, acc_t>& w) {
    std::vector<acc_t> smem(w.smem_elems());
    const int T = w.cfg.threads;
    std::vector<acc_t> gv(int64_t(T) * RY), v(int64_t(T) * 2 * kCorrGroup), sent(T), gsum(T), gnext(T);
    for (int64_t bid = 0; bid < w.blocks(); ++bid) {
      const CorrJob j = corr_job(w, bid);
      std::fill(gsum.begin(), gsum.end(), acc_t(0));
      for (int tid = 0; tid < T; ++tid) tiled_corr_clear(w, smem.data(), tid);
      for (int64_t first = j.begin; first < j.end; first += w.cfg.groups) {
        poison(smem, int64_t(w.cfg.planes) * w.cfg.plane_stride);  // (the sums after the planes carry over)
        for (int tid = 0; tid < T; ++tid) tiled_corr_clear_tiles(w, smem.data(), tid);
        for (int tid = 0; tid < T; ++tid) tiled_corr_stage(w, j, first, smem.data(), tid);
        for (int tid = 0; tid < T; ++tid) {
          tiled_corr_load_grad<RY>(w, j, first, tid, &gv[tid * RY]);
          if (w.grad_bias) tiled_corr_grad_sum<RY>(&gv[tid * RY], gsum[tid]);
        }
        // two-row entries 16 per reduction, then single-row ones 32 per reduction (the kernel's order)
        const int ne = w.count[j.c], two = w.pairs[j.c];
        for (int base = 0; base < ne; base = base < two ? std::min(base + kCorrGroup, two) : base + 2 * kCorrGroup) {
          const bool one_row = base >= two;
          for (int tid = 0; tid < T; ++tid) {
            if (one_row)
              tiled_corr_products_one_row<RY, P>(w, j, smem.data(), tid, &gv[tid * RY], base, &v[tid * 2 * kCorrGroup]);
            else
              tiled_corr_products<RY, P>(w, j, smem.data(), tid, &gv[tid * RY], base, &v[tid * 2 * kCorrGroup]);
          }
          for (int width = kCorrGroup; width >= 1; width /= 2) {
            for (int i = 0; i < width; ++i) {
              for (int tid = 0; tid < T; ++tid) sent[tid] = transpose_send(&v[tid * 2 * kCorrGroup], tid % 32, width, i);
              for (int tid = 0; tid < T; ++tid)
                transpose_keep(&v[tid * 2 * kCorrGroup], tid % 32, width, i, sent[tid ^ width]);
            }
          }
          for (int tid = 0; tid < T; ++tid)
            tiled_corr_accumulate(w, j, smem.data(), tid, base, one_row, v[tid * 2 * kCorrGroup]);
        }
      }
      if (w.grad_bias) {  // the butterfly of __shfl_xor_sync: lane l adds lane l ^ o's value
        for (int o = 16; o > 0; o /= 2) {
          for (int tid = 0; tid < T; ++tid) gnext[tid] = gsum[tid] + gsum[tid ^ o];
          gsum.swap(gnext);
        }
        for (int tid = 0; tid < T; ++tid) tiled_corr_store_grad_sum(w, smem.data(), tid, gsum[tid]);
      }
      for (int tid = 0; tid < T; ++tid) tiled_corr_write(w, j, smem.data(), tid);
    }
  }

  static bool mma_supported(const at::Tensor&) { return true; }
  static int64_t max_smem_bytes(const at::Tensor&) { return kEmulatedSmemBytes; }
  static void window_corr(WindowCorr<scalar_t> w, const TapsArgs<scalar_t, acc_t>& a, const at::Tensor&) {
    if constexpr (window_corr_mma_dtype<scalar_t>()) {
      launch({"window_corr", "window_corr_finish"});  // the correlation and its finish
      w.slabs = window_corr_slabs(w, kEmulatedBlocks);
      std::vector<float> work(w.C * w.slabs * w.values());
      w.work = work.data();
      with_window_tiles(w.mt, w.nt, [&](auto m, auto n) { window_corr_blocks<decltype(m)::value, decltype(n)::value>(w); });
      emulate_window_finish(w, a);
    }
  }
  static void window_conv(const WindowConv<scalar_t>& w, const TapsArgs<scalar_t, acc_t>& a, const at::Tensor&,
                          bool flip) {
    if constexpr (window_corr_dtype<scalar_t>()) {
      launch({"window_kernel", "window_conv"});  // the window and the convolution
      std::vector<scalar_t> kern(w.kernel_elems());
      emulate_window_build(a, w.kw(), flip, kern.data());
      auto c = w;
      c.kern = kern.data();
      with_conv_tiles(c.mt, c.nt, [&](auto m, auto n) { window_conv_blocks<decltype(m)::value, decltype(n)::value>(c); });
    }
  }
  static void plane_corr(PlaneCorr<scalar_t> w, const TapsArgs<scalar_t, acc_t>& a, const at::Tensor&) {
    if constexpr (window_corr_mma_dtype<scalar_t>()) {
      TORCH_INTERNAL_ASSERT(w.ok && (w.tiles & 1u), "plane_corr: a plan from plane_corr_shape");
      launch({"plane_corr", "window_corr_finish"});  // the correlation and its finish
      w.slabs = plane_corr_slabs(w, kEmulatedPlaneBlocks);
      std::vector<float> work(w.C * w.slabs * w.values(), std::numeric_limits<float>::quiet_NaN());
      w.work = work.data();
      std::vector<uint32_t> smem(w.smem_words());
      for (int64_t bid = 0; bid < w.blocks(); ++bid) {  // plane_corr_kernel, phase by phase; smem poisoned per job
        PlaneCorrJob j = plane_corr_job(w, bid);
        for (; j.pack < j.pack_end; ++j.pack) {
          const bool keep_g = plane_corr_pack_of(w, j).keep_g;  // (a band's kept output gradient is not poisoned)
          for (int64_t e = 0; e < w.smem_words(); ++e)
            if (!keep_g || e < w.g_offset() || e >= w.scratch_offset()) smem[e] = 0xffffffffu;
          for (int tid = 0; tid < kWindowCorrThreads; ++tid) plane_corr_clear(w, j, smem.data(), tid);
          with_plane_corr_tiles(w, [&](auto mt, auto nt) {
            for (int tid = 0; tid < kWindowCorrThreads; ++tid)
              plane_corr_stage<plane_corr_batch(decltype(mt)::value)>(w, j, smem.data(), tid);
            for (int warp = 0; warp < kWindowCorrWarps; ++warp)
              plane_corr_warp<decltype(mt)::value, decltype(nt)::value, 32, MmaEmulated<scalar_t>>(w, j, smem.data(),
                                                                                                     warp, 0);
          });
        }
      }
      emulate_window_finish(w, a);
    }
  }
  static void window_plane(const WindowPlane<scalar_t>& w, const TapsArgs<scalar_t, acc_t>& a, const at::Tensor&,
                           bool flip) {
    if constexpr (window_corr_mma_dtype<scalar_t>()) {
      launch({"window_kernel", "window_plane"});  // the window and the convolution
      std::vector<scalar_t> kern(w.kernel_elems());
      emulate_window_build(a, w.kw(), flip, kern.data());
      auto c = w;
      c.kern = kern.data();
      if (c.strip > 0) {
        window_strip_blocks(c);
      } else if constexpr (WindowPlane<scalar_t>::kE == 2) {
        with_plane_steps(c.ks, [&](auto s) { window_plane_blocks<decltype(s)::value>(c); });
      }
    }
  }
  // A block's product phase warp by warp, each on its own copy of the staged state, so that what a warp writes is
  // seen apart from the others' (run in turn on one copy, two warps writing a word alike would pass unseen): a word
  // it changes must lie in its own region [first(warp), first(warp) + words) and be changed by no other warp. Then
  // the writes merged, as the device's warps leave them. (A write of the value already there goes unseen: the
  // regions start as poison or as staged inputs, which a result seldom equals.)
  template <typename Run, typename First>
  static void warps_apart(std::vector<uint32_t>& smem, const char* what, Run&& run, First&& first, int64_t words) {
    const std::vector<uint32_t> staged = smem;
    std::vector<int> owner(smem.size(), -1);
    for (int warp = 0; warp < kWindowCorrWarps; ++warp) {
      std::vector<uint32_t> mine = staged;
      run(warp, mine.data());
      const int64_t lo = first(warp), hi = lo + words;
      for (size_t e = 0; e < mine.size(); ++e) {
        if (mine[e] == staged[e]) continue;
        TORCH_CHECK(int64_t(e) >= lo && int64_t(e) < hi, what, ": warp ", warp, " wrote shared word ", e,
                    " outside its region [", lo, ", ", hi, ")");
        TORCH_CHECK(owner[e] < 0, what, ": shared word ", e, " written by warps ", owner[e], " and ", warp);
        owner[e] = warp;
        smem[e] = mine[e];
      }
    }
  }
  // window_plane_kernel, phase by phase; shared memory poisoned with NaN (all bits set) at each block job, so that
  // a staged word no phase wrote (an input, a pair of P, a result) shows in the outputs.
  // strips: each block job's strip as a plane of its own (strip_view), A read from shared memory
  static void window_strip_blocks(const WindowPlane<scalar_t>& w) {
    std::vector<uint32_t> smem(w.smem_words());
    for (int64_t bid = 0; bid < w.blocks(); ++bid) {
      const WindowPlaneJob j = window_plane_job(w, bid);
      const WindowPlane<scalar_t> v = strip_view(w, j);
      std::fill(smem.begin(), smem.end(), 0xffffffffu);
      for (int tid = 0; tid < kWindowCorrThreads; ++tid) window_plane_stage<0, kStripBatch>(v, j, smem.data(), tid);
      for (int tid = 0; tid < kWindowCorrThreads; ++tid) window_plane_stage_window(v, j, smem.data(), tid);
      for (int tid = 0; tid < kWindowCorrThreads; ++tid) window_strip_stage_g(v, smem.data(), tid);
      const int wpc = kWindowCorrWarps / v.cpb;
      warps_apart(
          smem, "window_strip_warp",
          [&](int warp, uint32_t* mine) {
            window_strip_warp<32, MmaEmulated<scalar_t>>(v, j, mine, mine + v.r_off, warp, 0);
          },
          [&](int warp) { return v.r_off + int64_t(warp / wpc) * v.r_words(); }, v.r_words());
      for (int tid = 0; tid < kWindowCorrThreads; ++tid) window_plane_store<0>(v, j, smem.data(), tid);
    }
  }
  template <int KS>
  static void window_plane_blocks(const WindowPlane<scalar_t>& w) {
    std::vector<uint32_t> smem(w.smem_words());
    for (int64_t bid = 0; bid < w.blocks(); ++bid) {
      const WindowPlaneJob j = window_plane_job(w, bid);
      std::fill(smem.begin(), smem.end(), 0xffffffffu);
      for (int tid = 0; tid < kWindowCorrThreads; ++tid) window_plane_stage<kWindowCorrWarps, kPlaneBatch>(w, j, smem.data(), tid);
      for (int tid = 0; tid < kWindowCorrThreads; ++tid) window_plane_stage_window(w, j, smem.data(), tid);
      warps_apart(
          smem, "window_plane_warp",
          [&](int warp, uint32_t* mine) { window_plane_warp<KS, 32, MmaEmulated<scalar_t>>(w, j, mine, warp, 0); },
          [&](int warp) { return int64_t(warp) * w.x_words(); }, w.x_words());
      for (int tid = 0; tid < kWindowCorrThreads; ++tid) window_plane_store<kWindowCorrWarps>(w, j, smem.data(), tid);
    }
  }
  // window_conv_kernel, phase by phase; shared memory poisoned with NaN at each block job (the kernels' zero rows
  // must come from their staging) and each image's bands (no row of an earlier image may be read).
  template <int MT, int NT>
  static void window_conv_blocks(WindowConv<scalar_t> w) {
    constexpr int NA = MT * NT * 4, PF = window_conv_prefetch<MT, NT>();
    w.slabs = window_conv_slabs(w, kEmulatedBlocks);
    std::vector<uint32_t> smem(w.smem_words());
    std::vector<float> acc(int64_t(kWindowCorrThreads) * NA);
    std::vector<Prefetch<PF>> pf(kWindowCorrThreads);
    for (int64_t bid = 0; bid < w.blocks(); ++bid) {
      WindowConvJob j = window_conv_job(w, bid);
      const int64_t start = conv_start_row(w, j), end = conv_end_row(w, j);
      poison_prefetch(pf);
      for (int tid = 0; tid < kWindowCorrThreads; ++tid) window_conv_fetch(w, j, j.n_begin, start, tid, pf[tid]);
      std::fill(smem.begin(), smem.end(), 0xffffffffu);
      for (int tid = 0; tid < kWindowCorrThreads; ++tid) window_conv_stage_kernels(w, j, smem.data(), tid);
      for (j.n = j.n_begin; j.n < j.n_end; ++j.n) {
        std::fill(acc.begin(), acc.end(), 0.f);
        std::fill(smem.begin(), smem.begin() + kWindowCorrWarps * w.x_words(), 0xffffffffu);
        std::fill(smem.begin() + w.results_offset(), smem.end(), 0xffffffffu);
        for (int64_t iy0 = start; iy0 < end; iy0 += w.band) {
          for (int tid = 0; tid < kWindowCorrThreads; ++tid) window_conv_stage_rows(w, j, iy0, smem.data(), tid, pf[tid]);
          poison_prefetch(pf);  // a round's registers serve it alone
          int64_t n = j.n, next = iy0;
          if (window_conv_next(w, j, n, next))
            for (int tid = 0; tid < kWindowCorrThreads; ++tid) window_conv_fetch(w, j, n, next, tid, pf[tid]);
          for (int warp = 0; warp < kWindowCorrWarps; ++warp)
            window_conv_rows<MT, NT, 32, MmaEmulated<scalar_t>>(
                w, j, smem.data(), warp, 0, iy0, reinterpret_cast<float (*)[NA]>(&acc[int64_t(warp) * 32 * NA]));
        }
        for (int tid = 0; tid < kWindowCorrThreads; ++tid)
          window_conv_keep<MT, NT>(w, j, smem.data(), tid / 32, tid % 32, &acc[int64_t(tid) * NA]);
        for (int tid = 0; tid < kWindowCorrThreads; ++tid) window_conv_store<window_conv_vec_store<MT, NT>()>(w, j, smem.data(), tid);
      }
    }
  }
  // window_corr_kernel, phase by phase; shared memory poisoned with NaN (all bits set: NaN in bfloat16, float16
  // and float32) at each image, so that a ring row a band reads before staging it shows.
  template <int MT, int NT>
  static void window_corr_blocks(const WindowCorr<scalar_t>& w) {
    constexpr int NA = MT * NT * 4, PF = window_corr_prefetch<MT, NT, scalar_t>();
    std::vector<uint32_t> smem(w.smem_words());
    std::vector<float> acc(int64_t(kWindowCorrThreads) * NA), bias(8 * kWindowCorrThreads);
    std::vector<Prefetch<PF>> pf(kWindowCorrThreads);
    for (int64_t bid = 0; bid < w.blocks(); ++bid) {
      const WindowCorrJob j = window_corr_job(w, bid);
      std::fill(acc.begin(), acc.end(), 0.f);
      std::fill(bias.begin(), bias.end(), 0.f);
      CorrRound r = corr_first_round(w, j.n_begin);
      poison_prefetch(pf);
      for (int tid = 0; tid < kWindowCorrThreads; ++tid) window_corr_fetch(w, j, r, tid, pf[tid]);
      int64_t image = -1;
      for (bool more = r.n < j.n_end; more;) {
        if (r.n != image) std::fill(smem.begin(), smem.end(), 0xffffffffu);
        image = r.n;
        for (int tid = 0; tid < kWindowCorrThreads; ++tid)
          window_corr_stage(w, j, r, smem.data(), tid, &bias[8 * tid], pf[tid]);
        poison_prefetch(pf);
        const int64_t iy0 = r.iy0;
        more = window_corr_next(w, j, r);
        if (more)
          for (int tid = 0; tid < kWindowCorrThreads; ++tid) window_corr_fetch(w, j, r, tid, pf[tid]);
        for (int warp = 0; warp < kWindowCorrWarps; ++warp)
          window_corr_rows<MT, NT, 32, MmaEmulated<scalar_t>>(
              w, smem.data(), warp, 0, iy0, reinterpret_cast<float (*)[NA]>(&acc[int64_t(warp) * 32 * NA]));
      }
      std::fill(smem.begin(), smem.end(), 0xffffffffu);
      for (int tid = 0; tid < kWindowCorrThreads; ++tid)
        window_corr_keep<MT, NT>(w, smem.data(), tid / 32, tid % 32, &acc[int64_t(tid) * NA], tid, &bias[8 * tid]);
      for (int tid = 0; tid < kWindowCorrThreads; ++tid) window_corr_write(w, j, smem.data(), tid);
    }
  }
  // Prefetched registers a round has consumed hold NaN (all bits set) until the next fetch.
  template <int PF>
  static void poison_prefetch(std::vector<Prefetch<PF>>& pf) {
    for (auto& p : pf) std::memset(p.v, 0xff, sizeof(p.v));
  }

  static void gather_forward(const TapsArgs<scalar_t, acc_t>& a, int64_t n) {
    launch({"gather_forward"});
    for (int64_t i = 0; i < n; ++i) taps_forward_thread(i, a);
  }
  static void gather_grad_input(const TapsArgs<scalar_t, acc_t>& a, int64_t n) {
    launch({"gather_grad_input"});
    for (int64_t i = 0; i < n; ++i) taps_grad_input_thread(i, a);
  }
  // wgrad_kernel, phase by phase: one block per tap, partial sums then halving steps.
  static void tap_blocks(const TapsArgs<scalar_t, acc_t>& a) {
    launch({"tap_blocks"});
    const int64_t elems = a.N * a.Ho * a.Wo;
    std::vector<acc_t> block(4 * kWgradThreads);
    auto sums = reinterpret_cast<acc_t (*)[kWgradThreads]>(block.data());
    for (int64_t ck = 0; ck < a.C * a.K; ++ck) {
      const int64_t c = ck / a.K, k = ck % a.K;
      const TapCorners<acc_t> t = tap_corners(a, c, k);
      for (int tid = 0; tid < kWgradThreads; ++tid) {
        acc_t S[4] = {0, 0, 0, 0};
        for (int64_t e = tid; e < elems; e += kWgradThreads) taps_wgrad_partial(c, t, e, a, S);
        for (int q = 0; q < 4; ++q) sums[q][tid] = S[q];
      }
      for (int half = kWgradThreads / 2; half > 0; half /= 2)
        for (int tid = 0; tid < kWgradThreads; ++tid) wgrad_reduce_step(sums, tid, half);
      const acc_t total[4] = {sums[0][0], sums[1][0], sums[2][0], sums[3][0]};
      taps_wgrad_finish(c, k, t, total, a);
    }
  }
};

at::Tensor emulate_taps_conv(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                             const c10::optional<at::Tensor>& bias, at::IntArrayRef window, at::IntArrayRef stride,
                             at::IntArrayRef padding, c10::string_view interpolation) {
  return tiled_taps_conv<EmulatedLaunch>(input, weight, positions, bias, window, stride, padding, interpolation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> emulate_taps_conv_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
    at::IntArrayRef window, at::IntArrayRef stride, at::IntArrayRef padding, c10::string_view interpolation,
    std::array<bool, 4> mask) {
  return tiled_taps_conv_backward<EmulatedLaunch>(grad_output, input, weight, positions, window, stride, padding,
                                                  interpolation, mask);
}

// Entries per channel of one kind of tap table (0 forward, 1 mirrored: phase (0, 0), 2 corner with every
// in-window corner).
// One table of `kind` as the device builds it (need_pos: corner tables keep every in-window corner): its entries
// (C, capacity, 4) as (dy, dx, c0, c1) in float64, the entries kept per channel and how many of them, first in the
// table, have two rows.
std::tuple<at::Tensor, at::Tensor, at::Tensor> emulate_table_entries(
    const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions, at::IntArrayRef window,
    at::IntArrayRef stride, at::IntArrayRef padding, c10::string_view interpolation, int64_t kind) {
  const int interp = parse_interp(std::string(interpolation));
  check_taps_args(input, weight, positions, window, stride, padding, interp, c10::nullopt);
  TORCH_CHECK(kind >= kForwardTable && kind <= kCornerTable, "table_entries: kind must be 0, 1 or 2");
  const TapsInputs in(input, weight, positions, c10::nullopt, /*keep_input_layout=*/true);
  at::Tensor entries, counts, pairs;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "emulate_table_entries", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto a = make_taps_args<scalar_t, acc_t>(in.x, in.weight, in.pos, window, stride, padding, interp);
    TableBuffers<acc_t> tb(input, a.C, a.K, 1);
    const int i = tb.add(static_cast<int>(kind), /*need_pos=*/true);
    EmulatedLaunch<scalar_t, acc_t>::tables(a, tb.builds);
    const int cap = table_capacity(a.K);
    counts = at::from_blob(tb.builds.job[i].count, {a.C}, at::kInt).clone();
    pairs = at::from_blob(tb.builds.job[i].pairs, {a.C}, at::kInt).clone();
    entries = at::zeros({a.C, cap, 4}, at::kDouble);
    auto E = entries.accessor<double, 3>();
    for (int64_t c = 0; c < a.C; ++c)
      for (int m = 0; m < tb.builds.job[i].count[c]; ++m) {
        const TapEntry<acc_t>& e = tb.builds.job[i].table[c * cap + m];
        E[c][m][0] = e.dy, E[c][m][1] = e.dx, E[c][m][2] = e.c0, E[c][m][3] = e.c1;
      }
  });
  return {entries, counts, pairs};
}

at::Tensor emulate_table_counts(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                                at::IntArrayRef window, at::IntArrayRef stride, at::IntArrayRef padding,
                                c10::string_view interpolation, int64_t kind) {
  return std::get<1>(emulate_table_entries(input, weight, positions, window, stride, padding, interpolation, kind));
}

// The tile configuration a plan picks (0 forward, 1 input gradient phase (0, 0), 2 correlation): ok, rows per
// thread, tile width, thread rows, groups, planes, threads, tile rows, tile columns, images per block, whether
// the outputs are stored transposed.
std::vector<int64_t> emulate_tile_config(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                                         at::IntArrayRef window, at::IntArrayRef stride, at::IntArrayRef padding,
                                         c10::string_view interpolation, int64_t kind) {
  const int interp = parse_interp(std::string(interpolation));
  auto out = checked_taps_output(input, weight, positions, c10::nullopt, window, stride, padding, interp);
  const TapsInputs in(input, weight, positions, c10::nullopt, /*keep_input_layout=*/true);
  TileConfig t;
  int images = 1;
  bool transposed = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "emulate_tile_config", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto a = make_taps_args<scalar_t, acc_t>(in.x, in.weight, in.pos, window, stride, padding, interp);
    if (kind == 2) {
      t = corr_plan<scalar_t, acc_t>(in.x, out, a).cfg;
      return;
    }
    const auto plan = kind == 0 ? forward_plan<scalar_t, acc_t>(in.x, out, a)
                                : grad_input_plan<scalar_t, acc_t>(out, in.x, a, 0, 0);
    t = plan.cfg;
    images = plan.images;
    transposed = plan.transposed;
  });
  return {t.ok, t.ry, t.tw, t.thread_rows, t.groups, t.planes, t.threads, t.tiles_y, t.tiles_x, images, transposed,
          t.pitch, t.plane_stride};
}

// The tensor-core plans of a layer (16-bit; float32: the correlation's and the small-plane forward's): the
// forward's (ok, shared memory bytes), the correlation's (ok, bytes), the forward's band, the small-plane forward's
// (ok, bytes, k-steps), the small-plane correlation's (ok, bytes, images a block job), the small-plane forward's
// strip rows and channels a block, the small-plane correlation's input-column tiles, tile mask and J range, the
// small-plane forward's vector loads and stores, the small-plane correlation's 16-byte staging and its row bands an
// image, under the emulated device's shared memory.
std::vector<int64_t> emulate_window_plans(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                                          at::IntArrayRef window, at::IntArrayRef stride, at::IntArrayRef padding,
                                          c10::string_view interpolation) {
  const int interp = parse_interp(std::string(interpolation));
  auto out = checked_taps_output(input, weight, positions, c10::nullopt, window, stride, padding, interp);
  const TapsInputs in(input, weight, positions, c10::nullopt, /*keep_input_layout=*/true);
  std::vector<int64_t> r{0, 0, 0, 0, 0};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "emulate_window_plans", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto a = make_taps_args<scalar_t, acc_t>(in.x, in.weight, in.pos, window, stride, padding, interp);
    const auto v = window_conv_plan<scalar_t, acc_t>(in.x, out, a, false, kEmulatedSmemBytes);
    const auto c = window_corr_plan<scalar_t, acc_t>(in.x, out, a, kEmulatedSmemBytes);
    const auto pl = window_plane_plan<scalar_t, acc_t>(in.x, out, a, false, kEmulatedSmemBytes);
    const auto pc = plane_corr_plan<scalar_t, acc_t>(in.x, out, a, kEmulatedSmemBytes);
    r = {v.ok, v.smem_words() * 4, c.ok, c.smem_words() * 4, v.band, pl.ok, pl.smem_words() * 4, pl.ks,
         pc.ok, pc.smem_words() * 4, pc.images, pl.strip, pl.cpb, pc.mt, pc.tiles, pc.jlo, pc.jhi, pl.vec8,
         pl.out_vec8, pc.vec8, pc.bands};
  });
  return r;
}

// The dense window as the whole-window kernels take it: 16-bit inputs (the tensor cores) in their type, kw the
// width rounded up to 16; float32 and float64 in the accumulation type, kw = Lw (the build tests'; the 3xTF32 strips
// build float32 with kw rounded to 16, WindowPlane::kw()). reference: by
// window_kernel_thread, one cell at a time, else by the block build the kernels run (window_build.h).
template <typename scalar_t, typename acc_t>
at::Tensor window_kernel_of(const TapsArgs<scalar_t, acc_t>& a, bool flip, bool reference,
                            const at::TensorOptions& options) {
  auto build = [&](auto* kern, int kw) {
    if (reference) {
      for (int64_t i = 0; i < a.C * a.Lh * kw; ++i) window_kernel_thread(i, a, kw, flip, kern);
    } else {
      emulate_window_build(a, kw, flip, kern);
    }
  };
  if constexpr (window_corr_dtype<scalar_t>()) {
    const int kw = static_cast<int>(16 * ((a.Lw + 15) / 16));
    auto out = at::empty({a.C, a.Lh, kw}, options);
    build(static_cast<scalar_t*>(out.data_ptr()), kw);
    return out.narrow(2, 0, a.Lw).contiguous();
  } else {
    auto out = at::empty({a.C, a.Lh, a.Lw}, options.dtype(c10::CppTypeToScalarType<acc_t>::value));
    build(static_cast<acc_t*>(out.data_ptr()), static_cast<int>(a.Lw));
    return out;
  }
}

// The dense window the whole-window convolutions take (window_kernel_of): (C, Lh, Lw); flip: turned by 180
// degrees (the input gradient's).
at::Tensor emulate_window_kernel(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                                 at::IntArrayRef window, at::IntArrayRef stride, at::IntArrayRef padding,
                                 c10::string_view interpolation, bool flip, bool reference) {
  const int interp = parse_interp(std::string(interpolation));
  check_taps_args(input, weight, positions, window, stride, padding, interp, c10::nullopt);
  const TapsInputs in(input, weight, positions, c10::nullopt, /*keep_input_layout=*/true);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "emulate_window_kernel", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto a = make_taps_args<scalar_t, acc_t>(in.x, in.weight, in.pos, window, stride, padding, interp);
    out = window_kernel_of(a, flip, reference, input.options());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(dcls_convert_emulation, m) {
  m.def("construct(Tensor weight, Tensor positions, Tensor? sigma, int[] window, str interpolation, "
        "float sigma_min) -> Tensor");
  m.def("construct_backward(Tensor grad, Tensor weight, Tensor positions, Tensor? sigma, int[] window, "
        "str interpolation, float sigma_min) -> (Tensor, Tensor, Tensor)");
  m.def("taps_conv(Tensor input, Tensor weight, Tensor positions, Tensor? bias, int[] window, int[] stride, "
        "int[] padding, str interpolation) -> Tensor");
  m.def("taps_conv_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor positions, int[] window, "
        "int[] stride, int[] padding, str interpolation, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("table_counts(Tensor input, Tensor weight, Tensor positions, int[] window, int[] stride, int[] padding, "
        "str interpolation, int kind) -> Tensor");
  m.def("table_entries(Tensor input, Tensor weight, Tensor positions, int[] window, int[] stride, int[] padding, "
        "str interpolation, int kind) -> (Tensor, Tensor, Tensor)");
  m.def("tile_config(Tensor input, Tensor weight, Tensor positions, int[] window, int[] stride, int[] padding, "
        "str interpolation, int kind) -> int[]");
  m.def("window_plans(Tensor input, Tensor weight, Tensor positions, int[] window, int[] stride, int[] padding, "
        "str interpolation) -> int[]");
  m.def("window_kernel(Tensor input, Tensor weight, Tensor positions, int[] window, int[] stride, int[] padding, "
        "str interpolation, bool flip, bool reference=False) -> Tensor");
  m.def("take_launches() -> int", &take_launches);
  m.def("take_kernels() -> str[]", &take_kernels);
  m.def("set_kernel_costs(str[] names, float[] costs) -> ()", &set_kernel_costs);
  m.def("tuned_paths() -> str[]", &tuned_paths);
  m.def("clear_tuned_paths() -> ()", &clear_tuned_paths);
  m.def("set_mma_rounding(str mode) -> ()", &set_mma_rounding);
  m.def("between_cells(Tensor positions, int[] window) -> Tensor");
}

TORCH_LIBRARY_IMPL(dcls_convert_emulation, CPU, m) {
  m.impl("construct", &emulate_construct);
  m.impl("construct_backward", &emulate_construct_backward);
  m.impl("taps_conv", &emulate_taps_conv);
  m.impl("taps_conv_backward", &emulate_taps_conv_backward);
  m.impl("table_counts", &emulate_table_counts);
  m.impl("table_entries", &emulate_table_entries);
  m.impl("tile_config", &emulate_tile_config);
  m.impl("window_plans", &emulate_window_plans);
  m.impl("window_kernel", &emulate_window_kernel);
  m.impl("between_cells", &between_cells);
}

}  // namespace dcls_convert
