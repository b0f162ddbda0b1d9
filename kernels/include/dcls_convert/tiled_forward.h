// The GPU tap engine's forward (see tiled_taps.h), also the input gradient per stride phase.
// Forward: out[n, c, oy, ox] = bias[c] + sum over entries of c0 in[oy*sh + dy - ph, ox*sw + dx - pw] + c1 (row + 1).
#pragma once

#include <cstdint>

#include "dcls_convert/tap_tables.h"
#include "dcls_convert/tile_config.h"

namespace dcls_convert {

template <typename scalar_t, typename acc_t>
struct TiledConv {
  const scalar_t* in = nullptr;
  scalar_t* out = nullptr;
  const acc_t* bias = nullptr;
  const TapEntry<acc_t>* table = nullptr;
  const int* count = nullptr;
  const int* pairs = nullptr;  // two-row entries per channel, first in its table (table_write_kept)
  int cap = 0;
  int64_t N = 0, C = 0, H = 1, W = 1, Ho = 1, Wo = 1;
  int64_t is[4] = {0, 0, 0, 0}, os[4] = {0, 0, 0, 0};  // element strides (n, c, y, x) of in and out
  int64_t sh = 1, sw = 1, ph = 0, pw = 0;
  TileConfig cfg;
  // A block stages cfg.planes = channels() x images planes: plane p is channel c0 + p / images of image
  // n0 + p % images (forward_images).
  int images = 1;
  bool transposed = false;  // outputs kept in shared memory, then written neighbouring channels together
  bool batched = true;      // staging with several loads in flight per thread (stage_planes_batched)
  bool fixed_pitch = true;  // kernels compiled for the tile's row pitch where there is one (with_ry_pitch)
  DCLS_HD int channels() const { return cfg.planes / images; }
  DCLS_HD int kernel_pitch() const { return fixed_pitch ? cfg.pitch : -1; }  // for with_ry_pitch
  DCLS_HD int rounds() const { return cfg.planes / cfg.groups; }
  DCLS_HD int64_t channel_groups() const { return (C + channels() - 1) / channels(); }
  DCLS_HD int64_t image_groups() const { return (N + images - 1) / images; }
  DCLS_HD int64_t blocks() const { return image_groups() * channel_groups() * cfg.tiles_y * cfg.tiles_x; }
};

// Thread tid's place in a block's round r: its group, column and thread row in the group's tile, and the plane
// it computes (group + r * groups).
struct ForwardSlot {
  int group, lx, ly, p;
};
DCLS_HD ForwardSlot forward_slot(const TileConfig& t, int tid, int r) {
  const int per_plane = t.tw * t.thread_rows;
  const int group = tid / per_plane;
  return {group, tid % t.tw, (tid % per_plane) / t.tw, group + r * t.groups};
}

struct ForwardJob {
  int64_t n0, c0, ty, tx;  // first image, first channel, tile row, tile column
};

// Channel groups vary fastest, so blocks running together read neighbouring channels of one region.
template <typename scalar_t, typename acc_t>
DCLS_HD ForwardJob forward_job(const TiledConv<scalar_t, acc_t>& a, int64_t bid) {
  ForwardJob j;
  const int64_t cg = a.channel_groups();
  j.c0 = (bid % cg) * a.channels();
  bid /= cg;
  j.tx = bid % a.cfg.tiles_x;
  bid /= a.cfg.tiles_x;
  j.ty = bid % a.cfg.tiles_y;
  j.n0 = bid / a.cfg.tiles_y * a.images;
  return j;
}

// Phase 1: zero the block's planes.
template <typename scalar_t, typename acc_t>
DCLS_HD void tiled_forward_clear(const TiledConv<scalar_t, acc_t>& a, acc_t* smem, int tid) {
  stage_clear(smem, int64_t(a.cfg.planes) * a.cfg.plane_stride, tid, a.cfg.threads);
}

// Phase 2: load the planes' input tiles and halos (the parts inside the input).
template <typename scalar_t, typename acc_t>
DCLS_HD void tiled_forward_stage(const TiledConv<scalar_t, acc_t>& a, const ForwardJob& j, acc_t* smem, int tid) {
  const TileConfig& t = a.cfg;
  const int64_t y0 = j.ty * t.th() * a.sh - a.ph, x0 = j.tx * t.tw * a.sw - a.pw;
  const int channels = static_cast<int>(a.C - j.c0 < a.channels() ? a.C - j.c0 : a.channels());
  const StageRect R = stage_rect(y0, x0, t.in_h, t.in_w, a.H, a.W);
  if (a.channels() == 1 && a.images > 1) {
    // One channel of several images (small planes of inputs not in channels_last): the images are the planes of
    // one staging call, so that its threads share them all (per image, 7x7 planes left most threads idle: the
    // H200 ran 64x768x7x7 1.9x slower than with 32 channels of one image per block).
    const int images = static_cast<int>(a.N - j.n0 < a.images ? a.N - j.n0 : a.images);
    const scalar_t* src = a.in + j.n0 * a.is[0] + j.c0 * a.is[1];
    stage_planes_any(a.batched, smem, t.pitch, t.plane_stride, src, a.is[0], a.is[2], a.is[3], y0, x0, images, R,
                     false, tid, t.threads);
    return;
  }
  for (int i = 0; i < a.images && j.n0 + i < a.N; ++i) {  // each image's channels, neighbouring channels together
    acc_t* planes = smem + i * t.plane_stride;
    const scalar_t* src = a.in + (j.n0 + i) * a.is[0] + j.c0 * a.is[1];
    const bool channel_fastest = a.is[1] == 1 && channels > 1;
    stage_planes_any(a.batched, planes, t.pitch, a.images * t.plane_stride, src, a.is[1], a.is[2], a.is[3], y0, x0,
                     channels, R, channel_fastest, tid, t.threads);
  }
}

// fn(entry) for the entries e[0, ne) in order, each entry's successor fetched while fn runs; the fetch past the
// last entry stays inside the table's allocation (TableBuffers keeps one entry spare) and is not used.
template <typename acc_t, typename Fn>
DCLS_HD void for_each_entry(const TapEntry<acc_t>* e, int ne, Fn fn) {
  const TapEntry<acc_t>* const end = e + ne;
  TapEntry<acc_t> next_entry = load_entry(e);
#if defined(__CUDACC__)
#pragma unroll 2
#endif
  for (const TapEntry<acc_t>* p = e; p < end; ++p) {
    const TapEntry<acc_t> en = next_entry;
    next_entry = load_entry(p + 1);
    fn(en);
  }
}

// The products of entries e[0, ne), each of two rows, for one thread's RY outputs of a column: s is its first
// output's staged input, row the staged elements between its output rows (stride x pitch), pitch those between
// staged rows. Stride1 (row == pitch): rows i and i + 1 of the staged tile serve outputs i - 1 and i, so an
// entry's two rows share loads.
template <int RY, bool Stride1, typename acc_t>
DCLS_HD void forward_two_row_entries(const TapEntry<acc_t>* e, int ne, const acc_t* s, int row, int pitch,
                                     acc_t acc[RY]) {
  for_each_entry(e, ne, [&](const TapEntry<acc_t>& en) {
    const acc_t* q = s + (en.dy * pitch + en.dx);
    if (Stride1) {
      acc_t prev = q[0];
DCLS_UNROLL
      for (int i = 0; i < RY; ++i) {
        const acc_t next = q[(i + 1) * pitch];
        acc[i] += en.c0 * prev;
        acc[i] += en.c1 * next;
        prev = next;
      }
    } else {
DCLS_UNROLL
      for (int i = 0; i < RY; ++i) {
        acc[i] += en.c0 * q[i * row];
        acc[i] += en.c1 * q[i * row + pitch];
      }
    }
  });
}

// The same for single-row entries (c1 == 0).
template <int RY, bool Stride1, typename acc_t>
DCLS_HD void forward_one_row_entries(const TapEntry<acc_t>* e, int ne, const acc_t* s, int row, int pitch,
                                     acc_t acc[RY]) {
  for_each_entry(e, ne, [&](const TapEntry<acc_t>& en) {
    const acc_t* q = s + (en.dy * pitch + en.dx);
DCLS_UNROLL
    for (int i = 0; i < RY; ++i) acc[i] += en.c0 * q[i * (Stride1 ? pitch : row)];
  });
}

// Phase 3 (per round r): thread tid computes RY outputs of one column of plane group + r * groups into acc; false
// when that plane lies past the batch or the channels. P: the tile's row pitch if compiled in, else 0.
template <int RY, int P, typename scalar_t, typename acc_t>
DCLS_HD bool tiled_forward_round(const TiledConv<scalar_t, acc_t>& a, const ForwardJob& j, const acc_t* smem,
                                 int tid, int r, acc_t acc[RY]) {
  const TileConfig& t = a.cfg;
  const auto [group, lx, ly, p] = forward_slot(t, tid, r);
  // groups is a multiple of images: a thread's planes share one image
  const int64_t n = j.n0 + group % a.images, c = j.c0 + p / a.images;
  if (n >= a.N || c >= a.C) return false;
  // 32-bit shared-memory offsets: the loads below then need one integer add each.
  // (P > 0: the pitch as a compile-time constant, with_ry_pitch)
  const int pitch = P > 0 ? P : t.pitch, row = static_cast<int>(a.sh) * pitch;  // staged elements between rows
  const acc_t* s = smem + (p * t.plane_stride + ly * RY * row + lx * static_cast<int>(a.sw));
  const acc_t b = a.bias ? static_cast<acc_t>(a.bias[c]) : acc_t(0);
  for (int i = 0; i < RY; ++i) acc[i] = b;
  const TapEntry<acc_t>* e = a.table + c * a.cap;
  const int ne = a.count[c], two = a.pairs[c];
  // The loops are issue-bound (Nsight, H200: 85 % of issue slots at stage 1), so each entry's overhead counts:
  // the entry's kind and the stride test are hoisted out of them (the tables hold two-row entries first), entries
  // come as one vector load each, and two entries per trip share the loop's bookkeeping.
  if (row == pitch) {
    forward_two_row_entries<RY, true>(e, two, s, pitch, pitch, acc);
    forward_one_row_entries<RY, true>(e + two, ne - two, s, pitch, pitch, acc);
  } else {
    forward_two_row_entries<RY, false>(e, two, s, row, pitch, acc);
    forward_one_row_entries<RY, false>(e + two, ne - two, s, row, pitch, acc);
  }
  return true;
}

// Phase 4 (per round, after compute; when a.transposed, after a barrier): the outputs go to global memory, or,
// transposed, into the plane's own staged region (no thread reads it after its round) at (row, column) of the
// tile, for phase 5.
template <int RY, typename scalar_t, typename acc_t>
DCLS_HD void tiled_forward_keep(const TiledConv<scalar_t, acc_t>& a, const ForwardJob& j, acc_t* smem, int tid, int r,
                                const acc_t acc[RY]) {
  const TileConfig& t = a.cfg;
  const auto [group, lx, ly, p] = forward_slot(t, tid, r);
  if (a.transposed) {
    acc_t* o = smem + (p * t.plane_stride + ly * RY * t.pitch + lx);
    for (int i = 0; i < RY; ++i) o[i * t.pitch] = acc[i];
    return;
  }
  const int64_t n = j.n0 + group % a.images, c = j.c0 + p / a.images;
  const int64_t ox = j.tx * t.tw + lx, oy0 = j.ty * t.th() + ly * RY;
  if (ox >= a.Wo) return;
  scalar_t* o = a.out + n * a.os[0] + c * a.os[1] + ox * a.os[3];
  for (int i = 0; i < RY; ++i)
    if (oy0 + i < a.Ho) o[(oy0 + i) * a.os[2]] = static_cast<scalar_t>(acc[i]);
}

// Phase 5 (a.transposed, after a barrier): the block's output tiles to global memory, neighbouring channels
// together (channels_last outputs: a warp writes runs of channels instead of one element per lane).
template <typename scalar_t, typename acc_t>
DCLS_HD void tiled_forward_store_tiles(const TiledConv<scalar_t, acc_t>& a, const ForwardJob& j, const acc_t* smem,
                                       int tid) {
  const TileConfig& t = a.cfg;
  const int64_t oy0 = j.ty * t.th(), ox0 = j.tx * t.tw;
  const int channels = static_cast<int>(a.C - j.c0 < a.channels() ? a.C - j.c0 : a.channels());
  const StageRect R{0, clamp_int(a.Ho - oy0, 0, t.th()), 0, clamp_int(a.Wo - ox0, 0, t.tw)};
  for (int i = 0; i < a.images && j.n0 + i < a.N; ++i)
    unstage_planes(smem + i * t.plane_stride, t.pitch, a.images * t.plane_stride,
                   a.out + (j.n0 + i) * a.os[0] + j.c0 * a.os[1], a.os[1], a.os[2], a.os[3], oy0, ox0, channels, R,
                   true, tid, t.threads);
}

}  // namespace dcls_convert
