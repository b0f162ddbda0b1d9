// Shared-memory layout and staging helpers of the tensor-core kernels (window_corr.h, window_conv.h): input rows
// staged twice (the odd copy shifted by one element, so that a Toeplitz B fragment is one aligned 32-bit load per
// register), channel regions padded against bank conflicts, 16-byte loads of 8 channels in channels_last.
#pragma once

#include <cstdint>
#include <cstring>

#include "dcls_convert/interpolation.h"

namespace dcls_convert {

// A word count at least n that is 16 mod 32: the odd copy of a row then sits 16 banks from the even one, and the
// B fragments' lanes (seven words of each copy) never share a bank.
inline int words_16_mod_32(int n) { return n <= 16 ? 16 : 16 + 32 * ((n - 16 + 31) / 32); }

// A channel's region of shared memory, padded to 4 mod 32 words: channels_last staging writes the same element
// of 8 channels' regions at once, which then fall in 8 different banks (4 apart) instead of one.
DCLS_HD int channel_words(int n) { return n + ((4 - n) % 32 + 32) % 32; }

// A staging thread's channel among `cg` and its place among that channel's threads (kThreads in the block):
// channels_last, channels fastest (8 consecutive threads read one pixel's 16 bytes); NCHW, a warp per channel
// (lanes along the row).
struct StageRole {
  int ci, sub, nsub;
};
template <int kThreads>
DCLS_HD StageRole stage_role(bool channels_last, int cg, int tid) {
  StageRole s;
  s.nsub = kThreads / cg;
  if (channels_last) {
    s.ci = tid % cg;
    s.sub = tid / cg;
  } else {
    s.ci = (tid / 32) % cg;
    s.sub = tid % 32 + 32 * ((tid / 32) / cg);
  }
  return s;
}

// Input rows iy0 .. iy0 + rows - 1 of one channel (src: its plane; zero outside the input, or everywhere where
// !live) into `band`, row r at element r * 4 * xw, each twice (the odd copy shifted by one element): the thread
// stages elements sub, sub + nsub, ... of each row. Element e is input column e - pw.
template <typename scalar_t>
DCLS_HD void stage_rows_scalar(scalar_t* band, int xw, const scalar_t* src, const int64_t xs[4], int64_t iy0,
                               int rows, int xe, int64_t H, int64_t W, int64_t pw, bool live, int sub, int nsub) {
  const int copy = 2 * xw;
  for (int r = 0; r < rows; ++r) {
    const int64_t iy = iy0 + r;
    const bool row_in = live && iy >= 0 && iy < H;
    scalar_t* dst = band + r * 2 * copy;
    for (int e = sub; e < xe; e += nsub) {
      const int64_t col = e - pw;
      const scalar_t v = (row_in && col >= 0 && col < W) ? src[iy * xs[2] + col * xs[3]] : scalar_t(0.f);
      dst[e] = v;
      if (e >= 1) dst[copy + e - 1] = v;
    }
  }
}

// put(i, load(i)) for i in [0, n), B loads in flight at a time: float32 rows come one element a load (tens a
// thread per band), and one at a time the staging waited on each (SASS: one LDG per loop trip).
template <int B, typename T, typename Load, typename Put>
DCLS_HD void batched(int n, Load&& load, Put&& put) {
  for (int first = 0; first < n; first += B) {
    T v[B];
DCLS_UNROLL
    for (int b = 0; b < B; ++b)
      if (first + b < n) v[b] = load(first + b);
DCLS_UNROLL
    for (int b = 0; b < B; ++b)
      if (first + b < n) put(first + b, v[b]);
  }
}

// channels_last 16-bit data whose runs of `run` channels are aligned (C a multiple of run, every stride a
// multiple of run elements, the data aligned to 2 run bytes) move one pixel's run with one load or store: 16 bytes
// for 8 channels (load8, store8), 8 for 4 (load4, store4). access: the bytes of one access where it is not the
// run's (float32 runs of 8 or 4 channels: 16 bytes, 4 channels).
inline bool staging_vec(const void* data, const int64_t s[4], int64_t C, int run = 8, int access = 0) {
  return s[1] == 1 && C % run == 0 && s[0] % run == 0 && s[2] % run == 0 && s[3] % run == 0 &&
         reinterpret_cast<uintptr_t>(data) % (access > 0 ? access : 2 * run) == 0;
}

// Eight 16-bit values (one pixel's 8 channels) as four words: element k in word k / 2, low half first.
DCLS_HD void load8(const void* p, uint32_t v[4]) {
#if defined(__CUDA_ARCH__)
  const uint4 q = *reinterpret_cast<const uint4*>(p);
  v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
#else
  std::memcpy(v, p, 16);
#endif
}
DCLS_HD uint16_t half_of(const uint32_t v[4], int k) { return static_cast<uint16_t>(v[k >> 1] >> (16 * (k & 1))); }
// The reverse of load8: four words (element k in word k / 2, low half first) as one 16-byte store.
DCLS_HD void store8(void* p, const uint32_t v[4]) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<uint4*>(p) = make_uint4(v[0], v[1], v[2], v[3]);
#else
  std::memcpy(p, v, 16);
#endif
}
// Four 16-bit values (one pixel's 4 channels) as two words, and back.
DCLS_HD void load4(const void* p, uint32_t v[2]) {
#if defined(__CUDA_ARCH__)
  const uint2 q = *reinterpret_cast<const uint2*>(p);
  v[0] = q.x, v[1] = q.y;
#else
  std::memcpy(v, p, 8);
#endif
}
DCLS_HD void store4(void* p, const uint32_t v[2]) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<uint2*>(p) = make_uint2(v[0], v[1]);
#else
  std::memcpy(p, v, 8);
#endif
}

// One source of a staging round of channels_last runs of 8 channels (16 bytes a pixel): rows y0 .. y0 + rows - 1
// of one image, cols pixels per row from column x0 on. Item idx (row idx / cols, pixel idx % cols) is one 16-byte
// load, zero outside the H x W plane.
struct Vec8Rows {
  const unsigned char* base = nullptr;  // the image's pixel (0, 0), the group's first channel
  int64_t ys = 0, ps = 0;               // bytes between rows, between pixels
  int64_t y0 = 0, x0 = 0, H = 0, W = 0;
  int rows = 0, cols = 0;
  DCLS_HD int items() const { return rows * cols; }
  DCLS_HD void load(int idx, uint32_t v[4]) const {
    const int r = idx / cols, e = idx - r * cols;
    const int64_t y = y0 + r, x = x0 + e;
    v[0] = v[1] = v[2] = v[3] = 0u;
    if (y >= 0 && y < H && x >= 0 && x < W) load8(base + y * ys + x * ps, v);
  }
};

// A block's staging round: up to two sources (the correlation's input rows, then its output-gradient rows), items
// numbered across both. (So a thread's output-gradient items, and the values in its bias sums, follow from the
// input rows' count: the correlation's bias gradient is run to run the same, its per-thread grouping not that of
// each source staged on its own. Numbering the second source from a whole pass of threads kept that grouping
// but made ptxas spill in the stage shapes' correlation tile.)
struct Vec8Round {
  Vec8Rows src[2];
  DCLS_HD int items() const { return src[0].items() + src[1].items(); }
  DCLS_HD void load(int idx, uint32_t v[4]) const {
    const int n0 = src[0].items();
    if (idx < n0)
      src[0].load(idx, v);
    else
      src[1].load(idx - n0, v);
  }
};

// A thread's first PF loads of the next round, issued before the current round's products so that they are in
// flight while the tensor cores run: at small planes a block's rounds are few and short, and with one load in
// flight per thread the kernels waited on memory between them. PF is what the tile's registers leave.
template <int PF>
struct Prefetch {
  uint32_t v[PF > 0 ? PF : 1][4];
};

template <int PF>
DCLS_HD void prefetch_round(const Vec8Round& r, int tid, int threads, Prefetch<PF>& p) {
DCLS_UNROLL
  for (int i = 0; i < PF; ++i) {
    const int idx = tid + i * threads;
    if (idx < r.items()) r.load(idx, p.v[i]);
  }
}

// The round into shared memory: put(source, item, v) for the thread's items tid, tid + threads, ... in order, the
// prefetched ones first, then the rest with max(PF, 1) loads in flight at a time.
template <int PF, typename Put>
DCLS_HD void stage_round(const Vec8Round& r, int tid, int threads, const Prefetch<PF>& p, Put&& put) {
  const int n0 = r.src[0].items(), n = r.items();
  auto place = [&](int idx, const uint32_t v[4]) {
    if (idx < n0)
      put(0, idx, v);
    else
      put(1, idx - n0, v);
  };
DCLS_UNROLL
  for (int i = 0; i < PF; ++i) {
    const int idx = tid + i * threads;
    if (idx < n) place(idx, p.v[i]);
  }
  constexpr int B = PF > 0 ? PF : 1;
  for (int first = tid + PF * threads; first < n; first += B * threads) {
    uint32_t v[B][4];
DCLS_UNROLL
    for (int b = 0; b < B; ++b)
      if (first + b * threads < n) r.load(first + b * threads, v[b]);
DCLS_UNROLL
    for (int b = 0; b < B; ++b)
      if (first + b * threads < n) place(first + b * threads, v[b]);
  }
}

// Item idx of input rows staged cols elements a row (a Vec8Rows' item) into 8 channel regions `stride` words
// apart, row r at word r * 2 * xw, twice (the odd copy shifted by one element).
DCLS_HD void put_row_vec8(uint32_t* smem, int stride, int xw, int cols, int idx, const uint32_t v[4]) {
  const int r = idx / cols, e = idx - r * cols;
DCLS_UNROLL
  for (int k = 0; k < 8; ++k) {
    auto* row = reinterpret_cast<uint16_t*>(smem + int64_t(k) * stride + r * 2 * xw);
    const uint16_t h = half_of(v, k);
    row[e] = h;
    if (e >= 1) row[2 * xw + e - 1] = h;
  }
}

// A lane's Toeplitz B fragments over NT tiles of 8 columns: tile jn's registers at k-step s are the words
// W[2s + jn] and W[2s + jn + 1], W[m] the word 4m past the lane's first (elements 8m on). So NT + 1 words serve a
// k-step (toeplitz_words, toeplitz_pairs), and the next k-step needs two new ones (toeplitz_next).
template <int NT>
DCLS_HD void toeplitz_words(const uint32_t* row, uint32_t W[NT + 1]) {
DCLS_UNROLL
  for (int m = 0; m <= NT; ++m) W[m] = row[4 * m];
}
template <int NT>
DCLS_HD void toeplitz_pairs(const uint32_t W[NT + 1], uint32_t B[2 * NT]) {
DCLS_UNROLL
  for (int jn = 0; jn < NT; ++jn) {
    B[2 * jn] = W[jn];
    B[2 * jn + 1] = W[jn + 1];
  }
}
// row: the lane's first word of the next k-step (8 words on).
template <int NT>
DCLS_HD void toeplitz_next(const uint32_t* row, uint32_t W[NT + 1]) {
DCLS_UNROLL
  for (int m = 0; m + 2 <= NT; ++m) W[m] = W[m + 2];
  if (NT >= 1) W[NT - 1] = row[4 * (NT - 1)];
  W[NT] = row[4 * NT];
}

// The same for float32 rows and mma.m16n8k8 on tf32 (B register 0 holds row t of column g, register 1 row t + 4):
// tile jn's registers are the words V[2 jn] and V[2 jn + 1], V[m] the word 4m past the lane's first (element
// 4m on), 2 NT words a k-step of 8; the next k-step's are these moved by two, with two new (row: 8 words on).
template <int NT>
DCLS_HD void toeplitz32_words(const uint32_t* row, uint32_t V[2 * NT]) {
DCLS_UNROLL
  for (int m = 0; m < 2 * NT; ++m) V[m] = row[4 * m];
}
template <int NT>
DCLS_HD void toeplitz32_next(const uint32_t* row, uint32_t V[2 * NT]) {
DCLS_UNROLL
  for (int m = 0; m + 2 < 2 * NT; ++m) V[m] = V[m + 2];
  V[2 * NT - 2] = row[4 * (2 * NT - 2)];
  V[2 * NT - 1] = row[4 * (2 * NT - 1)];
}

}  // namespace dcls_convert
