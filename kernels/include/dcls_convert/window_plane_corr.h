// The GPU tap engine's weight and position gradients on tensor cores, for 16-bit inputs (and float32 as 3xTF32) at
// stride 1 on planes with rows of up to 64 columns, in and out (each of ConvNeXt-T's stages, 56 x 56 to 7 x 7).
// The correlation at every cell of the window,
//   G[ky][kx] = sum over (n, oy, ox) of g[n][oy][ox] x[n][oy + ky - ph][ox + kx - pw],
// then each tap's corners from G (window_corr_finish_cell and _tap, as for window_corr.h: the same workspace).
//
// Per window row ky, one product per channel with the images and input rows as its k dimension:
//   S_ky[ix][ox] = sum over (n, iy) of x[n][iy][ix] * g[n][iy - ky + ph][ox]   (input rows whose output row exists)
// and G[ky][kx] is the sum of S_ky's diagonal ix - ox = kx - pw. S_ky is cut into mma.m16n8k16 tiles (16 input
// columns by 8 output columns): one by two tiles where rows have up to 16 columns ("narrow"), two by four up to 32,
// four by eight up to 64 ("wide"). A tile none of whose diagonals is a window cell is not computed (under a 17 x 17
// window, 6 tiles of 8 are computed at 28 x 28 and 13 of 32 at 56 x 56). The k-steps run over (image, input row)
// pairs, 16 at a time: 128 a block job where narrow, 64 where wide (the A fragments stay in registers for every ky).
// Taller planes (float32 takes half those rows: ConvNeXt-T's stage 1) run one image a job in bands of as many input
// rows: a pack a band, in order, each adding its products to the workspace; the image's output gradient is staged
// once for its bands (a slab holds whole images), and the bias sum is taken at its first band.
//
// Why: window_corr.h runs an image at a time in rounds of input rows, and at 14 x 14 and 7 x 7 its time was the
// rounds' latencies and tiles mostly outside the plane (an H200: 0.146 ms at both stages, the tables' time; 0.208 ms
// at 28 x 28, 4x the arithmetic floor). Here a block stages its images once and each warp runs every window row from
// registers and shared memory.
//
// Shared memory per channel: the inputs transposed, xs[ix][n hp + iy] (rows padded to even hp, zero past the
// plane), so an A register is one 32-bit load; the output gradient as columns, e = m0 + ox oxs + n hz + oy (zero
// around and between the columns), twice (the second copy shifted by one element): a B register's two k values are
// neighbouring output rows of one column, one aligned 32-bit load from the copy of their parity, which is the same
// for every lane at a given ky. The rows of a k-step whose output row is outside the plane (iy - ky + ph < 0 or
// >= Ho) are masked to zero in A (their B reads land on neighbouring columns or the zero margins: finite for finite
// gradients; an infinite output gradient makes NaN reach cells a dense correlation keeps finite, as in
// window_corr.h).
// Rows of at most 8 columns (7 x 7) stage 8 input columns and compute one tile of S_ky: the other half is zero.
//
// float32 (kE = 1): mma.m16n8k8 on tf32, each value split into a tf32 head and tail and three products summed
// (window_corr.h's tf32_split). A word holds one element, so a k-step takes 8 k values (lane k values t and t + 4)
// with the 16-bit kernel's word offsets for A, the same registers a lane, and half the rows a job; B's register is
// one output-gradient element, read from the one copy of the columns (no parity); a row's mask is the whole word.
//
// The diagonals: a lane's accumulator q of tile (mi, nt) holds S_ky[16 mi + g + 8h][8 nt + 2t + b] (g = lane / 4,
// t = lane % 4, q = 2h + b), on diagonal d = 8 (2 mi - nt + h) + (g - 2t - b). So tiles of equal 2 mi - nt (a
// "class") share accumulators, and a lane sums its values per J = 2 mi - nt + h and b. For a diagonal d and a pair
// (t, b) exactly one J and g meet, so a per-warp scratch has 8 slots a window cell, slot 2t + b written by one lane
// (slots whose J the kernel does not hold stay zero), and the cell's lane sums its 8 slots in order: no atomics,
// run to run identical. The bias gradient is each channel's sum of the staged output gradient, lane by lane then in
// lane order.
#pragma once

#include <algorithm>
#include <cstdint>

#include "dcls_convert/window_plane.h"

namespace dcls_convert {

constexpr int kPlaneCorrCols = 16;      // narrow rows: one tile of 16 input columns, two of 8 output columns
constexpr int kPlaneCorrMaxCols = 64;   // wide rows: two by four tiles up to 32 columns, four by eight up to 64
constexpr int kPlaneCorrMaxImages = 16;
constexpr int kPlaneCorrMaxRows = 256;  // input rows, bands padded: a k value's row is held in 8 bits

// The kernel's tiles of S_ky (input-column tiles MT, output-column tiles NT), its k-steps a block job, and its
// staging's loads in flight a thread (rows past 32 columns: one block an SM with registers to spare, as the strips).
constexpr int plane_corr_steps(int mt) { return mt == 1 ? 8 : 4; }
constexpr int plane_corr_batch(int mt) { return mt >= 4 ? kStripBatch : kPlaneBatch; }

template <typename scalar_t>
struct PlaneCorr {
  // Elements a 32-bit word and k values a k-step: 16-bit inputs two and 16 (mma.m16n8k16), float32 one and 8
  // (mma.m16n8k8 on tf32, as 3xTF32): the same words per lane and k-step, so A's and B's word offsets are the
  // 16-bit kernel's.
  static constexpr int kE = sizeof(scalar_t) == 2 ? 2 : 1;
  static constexpr int kKP = 8 * kE;
  const scalar_t* x = nullptr;
  const scalar_t* g = nullptr;
  float* work = nullptr;       // (C, slabs, values()), as window_corr.h's
  float* grad_bias = nullptr;  // (C) or nullptr: written by the finish
  int64_t N = 0, C = 0, H = 1, W = 1, Ho = 1, Wo = 1, Lh = 1, Lw = 1, ph = 0, pw = 0;
  int64_t xs[4] = {0, 0, 0, 0}, gs[4] = {0, 0, 0, 0};
  bool x_cl = false, g_cl = false;
  bool vec8 = false;  // both read by 16-byte loads: 8 channels (16-bit), or two of 4 (float32) (staging_vec)
  int images = 1;     // per block job
  int hp = 2, hz = 2; // input rows a job stages per image, at even count (a band's); output rows per column, even
  int bands = 1;      // row bands an image (> 1: one image a job, hp rows a band, the output gradient whole)
  int ks = 1;         // k-steps: kKP ks >= images hp
  int xp = 4;         // words per staged input column (4 mod 8)
  int oxs = 8;        // elements between output-gradient columns (kE times a word count 4 mod 8)
  int m0 = 0;         // zero elements before the first column: the reads of window row Lh - 1
  int mt = 1;         // the kernel's input-column tiles: 1 (narrow rows), 2 or 4 (wide)
  int xcols = 16;     // input columns staged: 8 where W <= 8 (the A rows past them are zero, not loaded), 16 mt wide
  int ntiles = 2;     // output-column tiles of 8 holding the plane's columns (the others are not computed)
  uint32_t tiles = 0; // the tiles computed, bit mi * nt_k() + nt: inside the plane, holding a window cell's diagonal
  int jlo = 0, jhi = 0;  // the J = 2 mi - nt + h whose diagonals hold window cells (within the kernel's tiles)
  int64_t slabs = 1;  // of image packs (groups of `images` images) per channel group: the workspace's partial sums
  bool ok = false;

  DCLS_HD int64_t image_packs() const { return (N + images - 1) / images; }
  DCLS_HD int64_t packs() const { return image_packs() * bands; }  // (image pack, band), bands fastest
  DCLS_HD int hreach() const { return bands * hp; }                // the input rows' extent, bands padded
  DCLS_HD int64_t cells() const { return Lh * Lw; }
  DCLS_HD int64_t values() const { return cells() + 1; }
  DCLS_HD int64_t groups() const { return (C + kWindowCorrWarps - 1) / kWindowCorrWarps; }
  DCLS_HD int64_t blocks() const { return groups() * slabs; }
  // How far past the last column the k-steps' padding pairs (images past the job's, A zero there) read: their B
  // values need only be finite, but must stay in the channel's region.
  DCLS_HD int pad_reach() const {
    const int r = ((kKP * ks + hp - 1) / hp) * hz - oxs;
    return r > 0 ? r : 0;
  }
  DCLS_HD int nt_k() const { return mt > 1 ? 2 * mt : ntiles; }  // the kernel's output-column tiles
  DCLS_HD int scratch_words() const { return 8 * static_cast<int>(Lw) + 32; }  // per warp: 8 slots a cell, 32 sums
  DCLS_HD int glen() const { return m0 + 8 * ntiles * oxs + hreach() + static_cast<int>(ph) + 2 + pad_reach(); }
  DCLS_HD int x_words() const { return channel_words(xcols * xp); }
  DCLS_HD int copy_words() const { return (glen() + 1) / 2; }  // 16-bit: two copies (float32: one, of glen words)
  DCLS_HD int g_words() const { return channel_words(kE == 2 ? 2 * copy_words() : glen()); }
  DCLS_HD int64_t g_offset() const { return int64_t(kWindowCorrWarps) * x_words(); }
  DCLS_HD int64_t scratch_offset() const { return g_offset() + int64_t(kWindowCorrWarps) * g_words(); }
  DCLS_HD int64_t smem_words() const { return scratch_offset() + int64_t(kWindowCorrWarps) * scratch_words(); }
};

template <typename scalar_t>
PlaneCorr<scalar_t> plane_corr_sized(PlaneCorr<scalar_t> w, int images) {
  constexpr int E = PlaneCorr<scalar_t>::kE, KP = PlaneCorr<scalar_t>::kKP;
  w.images = images;
  w.ks = (images * w.hp + KP - 1) / KP;
  const int xw = 8 * w.ks;
  w.xp = xw + ((4 - xw) % 8 + 8) % 8;
  const int cw = (images * w.hz + E - 1) / E;
  w.oxs = E * (cw + ((4 - cw) % 8 + 8) % 8);
  return w;
}

// The tiles of S_ky a kernel computes and the J its scratch holds (plane_corr_shape). A tile (mi, nt) covers the
// diagonals ix - ox of its columns inside the plane; it is computed where one of them is a window cell.
template <typename scalar_t>
void plane_corr_tiles(PlaneCorr<scalar_t>& w) {
  const int dlo = -static_cast<int>(w.pw), dhi = static_cast<int>(w.Lw - 1 - w.pw);
  const int W = static_cast<int>(w.W), Wo = static_cast<int>(w.Wo), NT = w.nt_k();
  w.tiles = 0;
  for (int mi = 0; mi < w.mt; ++mi)
    for (int nt = 0; nt < NT; ++nt) {
      if (16 * mi >= W || 8 * nt >= Wo) continue;
      const int lo = 16 * mi - std::min(8 * nt + 7, Wo - 1), hi = std::min(16 * mi + 15, W - 1) - 8 * nt;
      if (hi >= dlo && lo <= dhi) w.tiles |= 1u << (mi * NT + nt);
    }
  // J's values lie on diagonals 8 J - 7 .. 8 J + 7; the kernel's J run from 1 - NT to 2 mt - 1
  w.jlo = std::max(1 - NT, -static_cast<int>(div_floor(7 - dlo, 8)));  // the least J with 8 J + 7 >= dlo
  w.jhi = std::min(2 * w.mt - 1, static_cast<int>(div_floor(dhi + 7, 8)));
}

// The shape of the correlation, or ok = false where it does not apply: stride 1, input and output rows of up to 64
// columns, input planes up to 256 rows, windows up to 64, padding inside the window; as many images a job as the
// k-steps hold (16 at most) while two blocks fit an SM, else one (max_smem_bytes: a block's most, as
// window_conv_band's). Planes of more rows than the k-steps hold (128 narrow, 64 wide; float32: half those) take
// one image a job in bands of that many rows.
template <typename scalar_t>
PlaneCorr<scalar_t> plane_corr_shape(int64_t N, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t Lh,
                                     int64_t Lw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t max_smem_bytes) {
  PlaneCorr<scalar_t> w;
  w.N = N, w.C = C, w.H = H, w.W = W, w.Ho = Ho, w.Wo = Wo, w.Lh = Lh, w.Lw = Lw, w.ph = ph, w.pw = pw;
  if (sh != 1 || sw != 1 || W > kPlaneCorrMaxCols || Wo > kPlaneCorrMaxCols || Lh > kWindowConvMaxWindow ||
      Lw > kWindowConvMaxWindow || ph > Lh - 1 || pw > Lw - 1 || ph < 0 || pw < 0 || N * C == 0 || Ho * Wo == 0 ||
      H * W == 0)
    return w;
  const int64_t cols = std::max(W, Wo);
  w.mt = cols > 2 * kPlaneCorrCols ? 4 : cols > kPlaneCorrCols ? 2 : 1;
  const int steps = plane_corr_steps(w.mt), KP = PlaneCorr<scalar_t>::kKP;
  // planes past the k-steps' rows: bands of them, an image a job (absolute input rows held in 8 bits)
  w.bands = static_cast<int>((H + KP * steps - 1) / (KP * steps));
  if (w.bands * KP * steps > kPlaneCorrMaxRows) return w;
  w.hp = w.bands > 1 ? KP * steps : static_cast<int>(H + (H & 1));
  w.hz = static_cast<int>(Ho + (Ho & 1));
  w.m0 = static_cast<int>(Lh - 1 - ph);
  w.xcols = w.mt > 1 ? kPlaneCorrCols * w.mt : W <= 8 ? 8 : kPlaneCorrCols;
  w.ntiles = static_cast<int>((Wo + 7) / 8);
  plane_corr_tiles(w);
  const int most = static_cast<int>(std::min<int64_t>({kPlaneCorrMaxImages, KP * steps / w.hp, N}));  // bands: 1
  const int64_t budget = (max_smem_bytes + 1024) / 2 - 1024;
  for (int s = most; s >= 1; --s) {
    w = plane_corr_sized(w, s);
    if (w.smem_words() * 4 <= budget) break;
  }
  w.ok = w.smem_words() * 4 <= max_smem_bytes;
  return w;
}

// Slabs per channel group: an image pack each (all its bands) up to `target` blocks, within a workspace of at most
// 2^24 values (more packs a slab: its block sums them in order).
template <typename scalar_t>
int64_t plane_corr_slabs(const PlaneCorr<scalar_t>& w, int64_t target) {
  const int64_t by_blocks = (target + w.groups() - 1) / std::max<int64_t>(w.groups(), 1);
  const int64_t by_work = (int64_t(1) << 24) / std::max<int64_t>(w.C * w.values(), 1);
  return std::max<int64_t>(1, std::min<int64_t>({w.image_packs(), by_blocks, by_work}));
}

// A block job: a channel group, a slab (packs [pack_begin, pack_end): whole image packs, so an image's bands share
// its staged output gradient), and the pack being computed (from pack_begin).
// (32-bit and few: it is live through the warps' products, where registers are short; channels and images are
// < 2^31)
struct PlaneCorrJob {
  int c0, slab, pack_begin, pack_end, pack;
};
// The pack's images [n0, n0 + images), its input rows [r0, r0 + rows) (a band's: the last band's rows past H are not
// staged), and whether the previous pack staged the same output gradient (keep_g); worked out where used.
struct PlaneCorrPack {
  int n0, images, r0, rows;
  bool keep_g;
};
template <typename scalar_t>
DCLS_HD PlaneCorrPack plane_corr_pack_of(const PlaneCorr<scalar_t>& w, const PlaneCorrJob& j) {
  PlaneCorrPack p;  // (32-bit: bands hold one image and at most 256 rows)
  const bool banded = w.bands > 1;
  p.n0 = banded ? j.pack / w.bands : j.pack * w.images;
  p.images = banded ? 1 : static_cast<int>(std::min<int64_t>(w.images, w.N - p.n0));
  p.r0 = banded ? (j.pack - p.n0 * w.bands) * w.hp : 0;
  p.rows = banded ? std::min(w.hp, static_cast<int>(w.H) - p.r0) : static_cast<int>(w.H);
  p.keep_g = j.pack > j.pack_begin && p.r0 > 0;
  return p;
}
template <typename scalar_t>
DCLS_HD PlaneCorrJob plane_corr_job(const PlaneCorr<scalar_t>& w, int64_t bid) {
  PlaneCorrJob j;
  j.c0 = static_cast<int>((bid % w.groups()) * kWindowCorrWarps);
  j.slab = static_cast<int>(bid / w.groups());
  j.pack_begin = static_cast<int>(j.slab * w.image_packs() / w.slabs) * w.bands;
  j.pack_end = static_cast<int>((j.slab + 1) * w.image_packs() / w.slabs) * w.bands;
  j.pack = j.pack_begin;
  return j;
}

// A pack's k-steps (a band's rows; packs of images: the plan's).
template <typename scalar_t>
DCLS_HD int plane_corr_ks(const PlaneCorr<scalar_t>& w, const PlaneCorrPack& p) {
  constexpr int KP = PlaneCorr<scalar_t>::kKP;
  return w.bands > 1 ? (p.rows + KP - 1) / KP : w.ks;
}

// Phase 1 (per pack): the staged inputs and output gradients cleared (what the staging leaves is zero), and the
// scratch (its slots no lane writes read as zero); the output gradient kept where the pack shares it (keep_g).
template <typename scalar_t>
DCLS_HD void plane_corr_clear(const PlaneCorr<scalar_t>& w, const PlaneCorrJob& j, uint32_t* smem, int tid) {
  auto clear = [&](int64_t lo, int64_t hi) {
    for (int64_t e = lo + tid; e < hi; e += kWindowCorrThreads) smem[e] = 0u;
  };
  if (plane_corr_pack_of(w, j).keep_g) {
    clear(0, w.g_offset());
    clear(w.scratch_offset(), w.smem_words());
  } else {
    clear(0, w.smem_words());
  }
}

// Where a channel's staged elements go (T: the element's bits or value, of its size): input (n, iy, ix) (iy: the
// row in the pack's band), and output-gradient (n, oy, ox), in both copies where 16-bit.
template <typename T, typename scalar_t>
DCLS_HD void plane_corr_put_x(const PlaneCorr<scalar_t>& w, uint32_t* smem, int ci, int n, int64_t iy, int64_t ix,
                              T v) {
  static_assert(sizeof(T) == sizeof(scalar_t), "an element's bits");
  DCLS_EMULATION_CHECK(ix >= 0 && ix < w.xcols && iy >= 0 && iy < w.hp &&
                       n * w.hp + iy < PlaneCorr<scalar_t>::kKP * w.ks);
  reinterpret_cast<T*>(smem + int64_t(ci) * w.x_words())[ix * PlaneCorr<scalar_t>::kE * w.xp + n * w.hp + iy] = v;
}
template <typename T, typename scalar_t>
DCLS_HD void plane_corr_put_g(const PlaneCorr<scalar_t>& w, uint32_t* smem, int ci, int n, int64_t oy, int64_t ox,
                              T v) {
  static_assert(sizeof(T) == sizeof(scalar_t), "an element's bits");
  auto* y = reinterpret_cast<T*>(smem + w.g_offset() + int64_t(ci) * w.g_words());
  const int64_t e = w.m0 + ox * w.oxs + n * w.hz + oy;
  DCLS_EMULATION_CHECK(oy >= 0 && oy < w.hz && n < w.images && e < w.glen());
  y[e] = v;
  if (PlaneCorr<scalar_t>::kE == 2 && e >= 1) y[2 * w.copy_words() + e - 1] = v;
}

// An element as staged: a 16-bit value's bits, float32's value.
template <typename scalar_t>
DCLS_HD auto plane_corr_elem(scalar_t v) {
  if constexpr (sizeof(scalar_t) == 2) return bits_of(v);
  else return v;
}

// Phase 2 (per pack): its input rows and output-gradient planes (the images [n0, n0 + images); the input rows of
// its band, the output gradient unless the previous pack staged it), Batch loads in flight a thread
// (plane_corr_batch).
template <int Batch, typename scalar_t>
DCLS_HD void plane_corr_stage(const PlaneCorr<scalar_t>& w, const PlaneCorrJob& j, uint32_t* smem, int tid) {
  constexpr int E = PlaneCorr<scalar_t>::kE;
  const PlaneCorrPack pk = plane_corr_pack_of(w, j);
  const int rows = pk.rows, xin = pk.images * rows * static_cast<int>(w.W);
  const int gin = pk.keep_g ? 0 : pk.images * static_cast<int>(w.Ho * w.Wo);
  // item -> (image, row, column) of the input (item < xin; the row in the band) or the output gradient
  auto place = [&](int item, int& n, int64_t& r, int64_t& col) {
    const bool is_x = item < xin;
    const int64_t width = is_x ? w.W : w.Wo, plane = is_x ? rows * w.W : w.Ho * w.Wo;
    const int64_t i = is_x ? item : item - xin;
    n = static_cast<int>(i / plane);
    r = (i % plane) / width;
    col = i % width;
    return is_x;
  };
  const int64_t r0 = pk.r0, n0 = pk.n0;  // the pack's first row (a band's) and image
  if (w.vec8) {  // a thread per (pixel, run of channels): 16 bytes, 8 channels (16-bit) or 4 (float32, two a pixel)
    constexpr int Q = 3 - E, NC = 8 / Q;  // loads a pixel, channels a load
    auto elem = [](const Words4& v, int k) {  // channel k's bits
      if constexpr (E == 1) return v.v[k];
      else return half_of(v.v, k);
    };
    plane_items<Words4, Batch>(
        Q * (xin + gin), tid,
        [&](int idx) {
          int n;
          int64_t r, col;
          Words4 v;
          const int64_t c = j.c0 + NC * (idx % Q);
          if (place(idx / Q, n, r, col))
            load8(w.x + (n0 + n) * w.xs[0] + c + (r0 + r) * w.xs[2] + col * w.xs[3], v.v);
          else
            load8(w.g + (n0 + n) * w.gs[0] + c + r * w.gs[2] + col * w.gs[3], v.v);
          return v;
        },
        [&](int idx, const Words4& v) {
          int n;
          int64_t r, col;
          const bool is_x = place(idx / Q, n, r, col);
          const int c0 = NC * (idx % Q);
DCLS_UNROLL
          for (int k = 0; k < NC; ++k) {
            if (is_x)
              plane_corr_put_x(w, smem, c0 + k, n, r, col, elem(v, k));
            else
              plane_corr_put_g(w, smem, c0 + k, n, r, col, elem(v, k));
          }
        });
    return;
  }
  // one element a load: channels fastest where the tensor is channels_last, pixels fastest otherwise
  auto where = [&](int idx, int& ci, int& item) {
    if (idx < kWindowCorrWarps * xin) {
      item = plane_channel(idx, w.x_cl, xin, ci);
    } else {
      item = xin + plane_channel(idx - kWindowCorrWarps * xin, w.g_cl, gin, ci);
    }
  };
  plane_items<scalar_t, Batch>(
      kWindowCorrWarps * (xin + gin), tid,
      [&](int idx) {
        int ci, item, n;
        int64_t r, col;
        where(idx, ci, item);
        const int64_t c = j.c0 + ci;
        if (c >= w.C) return scalar_t(0.f);
        return place(item, n, r, col) ? w.x[(n0 + n) * w.xs[0] + c * w.xs[1] + (r0 + r) * w.xs[2] + col * w.xs[3]]
                                      : w.g[(n0 + n) * w.gs[0] + c * w.gs[1] + r * w.gs[2] + col * w.gs[3]];
      },
      [&](int idx, const scalar_t& v) {
        int ci, item, n;
        int64_t r, col;
        where(idx, ci, item);
        if (place(item, n, r, col))
          plane_corr_put_x(w, smem, ci, n, r, col, plane_corr_elem(v));
        else
          plane_corr_put_g(w, smem, ci, n, r, col, plane_corr_elem(v));
      });
}

// Phase 3 (per pack): warp `warp`'s channel, lanes lane0 .. lane0 + NL - 1 (the device: NL = 1; the emulation: the
// whole warp). Its A fragments once, then per window row ky the S_ky tiles into the class accumulators, their
// values per J through the scratch, and the row's cells to the workspace (the slab's first pack writes them, the
// others add to them: each cell by the same lane, packs in order); last the bias sum.
template <int MT, int NT, int NL, typename Mma, typename scalar_t>
DCLS_HD void plane_corr_warp(const PlaneCorr<scalar_t>& w, const PlaneCorrJob& j, uint32_t* smem, int warp, int lane0) {
  constexpr int KS = plane_corr_steps(MT), E = PlaneCorr<scalar_t>::kE, KP = PlaneCorr<scalar_t>::kKP;
  constexpr int ND = 2 * MT + NT - 2;  // classes 2 mi - nt, from 1 - NT to 2 MT - 2 (accumulator c: class c + 1 - NT)
  const uint32_t* xs = smem + int64_t(warp) * w.x_words();
  const uint32_t* y = smem + w.g_offset() + int64_t(warp) * w.g_words();
  float* blk = reinterpret_cast<float*>(smem + w.scratch_offset()) + warp * w.scratch_words();
  float* sums = blk + 8 * w.Lw;
  const int xp = w.xp, hp = w.hp, hz = w.hz, oxs = w.oxs, cw = w.copy_words(), jlo = w.jlo, jhi = w.jhi;
  const PlaneCorrPack pack = plane_corr_pack_of(w, j);
  // k-steps: a band's own in float32's wide kernel (its 56 x 56 bands take 4 and 3, not 4 and 4); elsewhere the
  // plan's, a constant: held in a register through the window-row loop, it cost the other loops up to 14 % more
  // instructions (SASS, sm_90), and rows past a band's are zero either way
  const int ks = E == 1 && MT == 4 ? plane_corr_ks(w, pack) : w.ks, r0 = pack.r0;
  const uint32_t tiles = w.tiles;
  uint32_t A[NL][4 * MT * KS];  // k-step s, input-column tile mi: registers 4 (s MT + mi) ..
  uint32_t off[NL][KS];  // the lane's two k values a step (E t, E t + KP / 2) as n hz + iy, 16 bits each
  uint32_t rows[NL][(KS + 1) / 2];  // and their input rows iy (in the plane), 8 bits each, two k-steps a word
  for (int l = 0; l < NL; ++l) {
    const int lane = lane0 + l, g = lane >> 2, t = lane & 3;
DCLS_UNROLL
    for (int s = 0; s < KS; ++s) {
      if (s >= ks) continue;
DCLS_UNROLL
      for (int mi = 0; mi < MT; ++mi) {
        const int a = (16 * mi + g) * xp + 8 * s + t;
        DCLS_EMULATION_CHECK(8 * s + t + 4 < xp && 16 * mi + g + (w.xcols > 8 ? 8 : 0) < w.xcols);
        uint32_t* r = A[l] + 4 * (s * MT + mi);
        r[0] = xs[a];
        r[1] = w.xcols > 8 ? xs[a + 8 * xp] : 0u;
        r[2] = xs[a + 4];
        r[3] = w.xcols > 8 ? xs[a + 8 * xp + 4] : 0u;
      }
      const int k0 = KP * s + E * t, k1 = k0 + KP / 2, n0 = k0 / hp, n1 = k1 / hp;
      const int iy0 = r0 + k0 - n0 * hp, iy1 = r0 + k1 - n1 * hp;
      off[l][s] = uint32_t(n0 * hz + iy0) | (uint32_t(n1 * hz + iy1) << 16);
      if (s % 2 == 0) rows[l][s / 2] = 0u;
      rows[l][s / 2] |= (uint32_t(iy0) | (uint32_t(iy1) << 8)) << (16 * (s % 2));
    }
  }
  int col[NL][NT];  // the lane's output column in each tile, as an element offset
  for (int l = 0; l < NL; ++l)
    for (int nt = 0; nt < NT; ++nt) col[l][nt] = (8 * nt + ((lane0 + l) >> 2)) * oxs;
  const int64_t c = j.c0 + warp, V = w.values();
  float* work = c < w.C ? w.work + (c * w.slabs + j.slab) * V : nullptr;
  const bool first = j.pack == j.pack_begin;
  for (int ky = 0; ky < w.Lh; ++ky) {
    // the input rows whose output row iy - ky + ph is in the plane; pk: the output-gradient element offset
    const int lo = static_cast<int>(std::max<int64_t>(0, ky - w.ph));
    const int hi = static_cast<int>(std::min<int64_t>(w.H, w.Ho + ky - w.ph));
    const int pk = w.m0 + static_cast<int>(w.ph) - ky, u = ky + static_cast<int>(w.Ho - 1 - w.ph);
    // B's words: 16-bit, the copy whose words start at this parity (element e in word e / 2); float32, the one copy
    const uint32_t* yc = E == 1 ? y : y + (pk & 1) * cw;
    float acc[NL][4 * ND];
    for (int l = 0; l < NL; ++l)
      for (int q = 0; q < 4 * ND; ++q) acc[l][q] = 0.f;
DCLS_UNROLL
    for (int s = 0; s < KS; ++s) {
      if (s >= ks || lo >= hi) continue;
      uint32_t Am[NL][4 * MT], B[NL][2 * NT];
      for (int l = 0; l < NL; ++l) {
        // row r has its output row r - ky + ph in the plane iff (unsigned)(u - r) < Ho, u = ky - ph + Ho - 1
        // (rows past H hold zeros); a 16-bit register's second row is r + 1
        auto keep = [&](int r) {
          const uint32_t d = uint32_t(u - r);
          if constexpr (E == 1) return d < uint32_t(w.Ho) ? 0xffffffffu : 0u;
          return (d < uint32_t(w.Ho) ? 0xffffu : 0u) | (d - 1u < uint32_t(w.Ho) ? 0xffff0000u : 0u);
        };
        const uint32_t rw = rows[l][s / 2] >> (16 * (s % 2));
        const uint32_t m0 = keep(int(rw & 0xffu)), m1 = keep(int((rw >> 8) & 0xffu));
DCLS_UNROLL
        for (int mi = 0; mi < MT; ++mi) {
          const uint32_t* r = A[l] + 4 * (s * MT + mi);
          Am[l][4 * mi + 0] = r[0] & m0;
          Am[l][4 * mi + 1] = r[1] & m0;
          Am[l][4 * mi + 2] = r[2] & m1;
          Am[l][4 * mi + 3] = r[3] & m1;
        }
        const int e0 = int(off[l][s] & 0xffffu) + pk, e1 = int(off[l][s] >> 16) + pk;
DCLS_UNROLL
        for (int nt = 0; nt < NT; ++nt) {
          const bool in = NT <= 2 || nt < w.ntiles;  // (the wide kernel's tiles past the plane: not computed)
          // (B's words inside the channel's copy, or its one region)
          DCLS_EMULATION_CHECK(!in || (col[l][nt] + std::min(e0, e1) >= 0 &&
                                       ((col[l][nt] + std::max(e0, e1)) >> (E - 1)) < (E == 1 ? w.glen() : cw)));
          B[l][2 * nt] = in ? yc[(col[l][nt] + e0) >> (E - 1)] : 0u;
          B[l][2 * nt + 1] = in ? yc[(col[l][nt] + e1) >> (E - 1)] : 0u;
        }
      }
      // float32: A's 3xTF32 split once a k-step (split per call, the tile mask's branches kept the compiler from
      // sharing it between a row's tiles: twice to four times the splits, SASS)
      [[maybe_unused]] uint32_t Ah[E == 1 ? NL : 1][4 * MT], At[E == 1 ? NL : 1][4 * MT];
      if constexpr (E == 1) {
        for (int l = 0; l < NL; ++l)
DCLS_UNROLL
          for (int q = 0; q < 4 * MT; ++q) tf32_split(Am[l][q], Ah[l][q], At[l][q]);
      }
DCLS_UNROLL
      for (int mi = 0; mi < MT; ++mi)
DCLS_UNROLL
        for (int nt = 0; nt < NT; ++nt)
          if ((tiles >> (mi * NT + nt)) & 1u) {
            if constexpr (E == 1)
              Mma::template run_split<NL, 4 * ND, 4 * MT, 2 * NT>(acc, Ah, At, B, 2 * mi - nt + NT - 1, mi, nt);
            else
              Mma::template run<NL, 4 * ND, 4 * MT, 2 * NT>(acc, Am, B, 2 * mi - nt + NT - 1, mi, nt);
          }
    }
    // a lane's values per J (class J, h = 0; class J - 1, h = 1) and b to its slots (2t + b) of the cells on their
    // diagonals, then each cell's 8 slots in order
    for (int l = 0; l < NL; ++l) {
      const int lane = lane0 + l, e0 = (lane >> 2) - 2 * (lane & 3) + static_cast<int>(w.pw), slot = 2 * (lane & 3);
DCLS_UNROLL
      for (int J = 1 - NT; J <= 2 * MT - 1; ++J) {
        if (J < jlo || J > jhi) continue;
        float v0 = 0.f, v1 = 0.f;
        if (J <= 2 * MT - 2) v0 += acc[l][4 * (J + NT - 1)], v1 += acc[l][4 * (J + NT - 1) + 1];
        if (J - 1 >= 1 - NT) v0 += acc[l][4 * (J + NT - 2) + 2], v1 += acc[l][4 * (J + NT - 2) + 3];
        const int kx = 8 * J + e0;  // the cell of b = 0; b = 1's is kx - 1
        if (kx >= 0 && kx < w.Lw) blk[8 * kx + slot] = v0;
        if (kx >= 1 && kx <= w.Lw) blk[8 * (kx - 1) + slot + 1] = v1;
      }
    }
#if defined(__CUDA_ARCH__)
    __syncwarp();
#endif
    for (int l = 0; l < NL; ++l) {
      for (int64_t kx = lane0 + l; work != nullptr && kx < w.Lw; kx += 32) {
        float v = 0.f;
        for (int q = 0; q < 8; ++q) v += blk[8 * kx + q];
        work[ky * w.Lw + kx] = first ? v : work[ky * w.Lw + kx] + v;
      }
    }
#if defined(__CUDA_ARCH__)
    __syncwarp();  // the scratch is read before the next row's values take it
#endif
  }
  // the bias gradient's part: the staged output gradient (zero around its columns), lane by lane, then in lane order
  // (an image's first band alone)
  const auto* g0 = reinterpret_cast<const scalar_t*>(y);
  const bool bias = plane_corr_pack_of(w, j).r0 == 0;  // (worked out again: r0 is not held through the loop)
  for (int l = 0; l < NL; ++l) {
    float s = 0.f;
    for (int e = lane0 + l; bias && e < 8 * w.ntiles * oxs; e += 32) s += static_cast<float>(g0[w.m0 + e]);
    sums[lane0 + l] = s;
  }
#if defined(__CUDA_ARCH__)
  __syncwarp();
#endif
  for (int l = 0; l < NL; ++l) {
    if (lane0 + l != 0 || work == nullptr) continue;
    float s = 0.f;
    for (int i = 0; i < 32; ++i) s += sums[i];
    work[w.cells()] = first ? s : work[w.cells()] + s;
  }
}

// The kernel for a plane's tiles (MT, NT): narrow rows of up to 8 output columns (1, 1) or 16 (1, 2); wide, up to
// 32 columns (2, 4) or 64 (4, 8).
template <typename scalar_t, typename Fn>
auto with_plane_corr_tiles(const PlaneCorr<scalar_t>& w, Fn&& fn) {
  using one = std::integral_constant<int, 1>;
  using two = std::integral_constant<int, 2>;
  if (w.mt == 4) return fn(std::integral_constant<int, 4>(), std::integral_constant<int, 8>());
  if (w.mt == 2) return fn(two(), std::integral_constant<int, 4>());
  if (w.ntiles == 1) return fn(one(), one());
  return fn(one(), two());
}

}  // namespace dcls_convert
