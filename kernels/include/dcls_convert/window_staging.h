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

// channels_last inputs whose 8-channel runs are 16-byte aligned (C a multiple of 8, every stride a multiple of
// 8 elements, the data 16-byte aligned) stage one pixel's 8 channels with one 16-byte load.
inline bool staging_vec8(const void* data, const int64_t s[4], int64_t C) {
  return s[1] == 1 && C % 8 == 0 && s[0] % 8 == 0 && s[2] % 8 == 0 && s[3] % 8 == 0 &&
         reinterpret_cast<uintptr_t>(data) % 16 == 0;
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

// Input rows iy0 .. iy0 + rows - 1 (zero outside the input) of channels c0 .. c0 + 7 into 8 channel regions
// `stride` words apart, row r at word r * 2 * xw, each twice (the odd copy shifted by one element): a thread per
// (row, element), one 16-byte load for its 8 channels.
DCLS_HD void stage_rows_vec8(uint32_t* smem, int stride, int xw, const void* src, int elem_bytes, const int64_t xs[4],
                             int64_t iy0, int rows, int xe, int64_t H, int64_t W, int64_t pw, int tid, int threads) {
  const auto* base = static_cast<const unsigned char*>(src);
  for (int idx = tid; idx < rows * xe; idx += threads) {
    const int r = idx / xe, e = idx - r * xe;
    const int64_t iy = iy0 + r, col = e - pw;
    uint32_t v[4] = {0u, 0u, 0u, 0u};
    if (iy >= 0 && iy < H && col >= 0 && col < W) load8(base + (iy * xs[2] + col * xs[3]) * elem_bytes, v);
DCLS_UNROLL
    for (int k = 0; k < 8; ++k) {
      auto* row = reinterpret_cast<uint16_t*>(smem + int64_t(k) * stride + r * 2 * xw);
      const uint16_t h = half_of(v, k);
      row[e] = h;
      if (e >= 1) row[2 * xw + e - 1] = h;
    }
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

}  // namespace dcls_convert
