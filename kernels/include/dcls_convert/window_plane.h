// The GPU tap engine's forward and input gradient for 16-bit inputs (and, in strips, float32) at stride 1 on small
// planes (up to 256 input pixels: ConvNeXt-T's 14 x 14 and 7 x 7 stages), on tensor cores, as one matrix product
// per channel:
//   out[n][p] = sum over q of x[n][q] * M[q][p],  M[q][p] = kern[iy - oy + ph][ix - ox + pw] (zero off the window),
// the images n the rows of mma.m16n8k16 (16 a block job), the input pixels q (iy, ix) its k dimension, the output
// pixels p (oy, ox) its columns.
//
// Why: window_conv.h runs an image at a time in rounds of input rows (barrier, staging, products, results). At
// 14 x 14 and 7 x 7 a round is a handful of products per warp, so its time is the rounds' latencies (an H200 took
// 0.14 ms for about 4 us of mma). Here a block stages the whole planes of 16 images once, then each warp runs its
// channel's products from registers and shared memory with no barrier between them: one round per block job.
//
// M is never stored: its entry depends on (iy - oy, ix - ox) only, so M[q][p] = P[G(q) - F(p) + c0], P the window
// placed in a zero plane of pr x pc cells (rows: the staged input rows + Ho - 1; columns: wr + Wo - 1), G(q) =
// iy * pc + ix, F(p) = oy * pc + ox, c0 = (Ho - 1) * pc + Wo - 1. Input rows are staged at an even width wr, so a B
// register's two input pixels (2t, 2t + 1 of a k-step) are neighbours in a row, hence two neighbouring cells of P:
// the block stages P as its pairs, Q[e] = (P[e], P[e + 1]), and every B register is one 32-bit load at its e. The
// warp holds its channel's A fragments (16 images x the plane) in registers for the whole job, so the staged inputs'
// words then take its results (16 bits, plus the bias), which leave in the output's channel order (channels_last:
// 16-byte stores of 8 channels).
//
// Larger planes (rows up to 64 columns: ConvNeXt-T's 28 x 28) run in strips of output rows, a strip a block job:
// the rows a strip reads make a small-plane problem of their own (strip_view), but too many pixels for A in
// registers, so each k-step's A fragments are read from the staged inputs (window_strip_warp) and the results go to
// regions of their own. Strips take as many output rows (up to 8) as fit the shared memory: 4 at 28 x 28 under a
// 17 x 17 window (213 KiB, one block an SM). Where no strip fits with 8 channels a block, 4 channels (two warps a
// channel, each half its tiles): ConvNeXt-T's 56 x 56 in strips of 4 rows (211 KiB).
//
// float32 (opt-in, DCLS_CONVERT_CUDA_TF32=conv) runs the strips at every plane size as 3xTF32 on mma.m16n8k8: each
// value split into a tf32 head and tail, three products summed (window_corr.h's, about float32's accuracy). A word
// holds one pixel, so a k-step takes 8 input pixels (lane pixels t and t + 4) with the same word offsets for A and
// B as the 16-bit k-step of 16, and P is staged as itself (a B register is one cell). Twice the bytes a pixel: 8
// rows a strip at 14 x 14 (180 KiB), 6 at 28 x 28 with 4 channels a block and 6 at 56 x 56 with 2 (four warps a
// channel), one block an SM. Its window stays float32 (built as the 16-bit one, not rounded).
//
// The products past the plane (the k-steps' padding, the odd column of odd widths) meet staged zeros, and the
// window's zero cells meet inputs: an infinite input makes NaN reach every output of its image and channel (of its
// strip, or of the column blocks whose reach holds it where strips align with rows; a dense convolution keeps it to
// the outputs it touches), as in window_conv.h. The CPU emulation runs this block
// algorithm with every lane's fragments and an emulated mma (emulation/emulate_cuda.cpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "dcls_convert/window_conv.h"

namespace dcls_convert {

constexpr int kPlaneImages = 16;     // images per block job: the mma's 16 rows
constexpr int kPlaneMaxSteps = 16;   // k-steps of 16 input pixels: planes up to 256 pixels (rows at even width)
constexpr int kPlaneBatch = 4;       // staging: loads in flight per thread (8 made ptxas spill, sm_90)
constexpr int kStripBatch = 8;       // the strips' staging (one block an SM: registers to spare)
constexpr int kPlaneMaxStripWidth = 64;  // strips: input rows (at even width) up to 64 pixels: ConvNeXt's 56 x 56
constexpr int kPlaneMaxStrip = 8;        // strips: the most output rows a block job computes

template <typename scalar_t>
struct WindowPlane {
  // Elements a 32-bit word holds, and input pixels a k-step takes: 16-bit inputs pair two in a word under
  // mma.m16n8k16; float32 ones take a word each under mma.m16n8k8 on tf32, as 3xTF32 (strips only: a strip's
  // fragments come from shared memory, and a float32 plane's would not fit in registers).
  static constexpr int kE = sizeof(scalar_t) == 2 ? 2 : 1;
  static constexpr int kKP = 8 * kE;
  const scalar_t* x = nullptr;     // (N, C, H, W): the input, or the output gradient for the input gradient
  const scalar_t* kern = nullptr;  // (C, Lh, kw), kw = 16 * ks of window_conv.h: the dense window (window_build.h)
  const float* bias = nullptr;     // (C) or nullptr
  scalar_t* out = nullptr;         // (N, C, Ho, Wo)
  int64_t N = 0, C = 0, H = 1, W = 1, Ho = 1, Wo = 1, Lh = 1, Lw = 1, ph = 0, pw = 0;
  int64_t xs[4] = {0, 0, 0, 0}, os[4] = {0, 0, 0, 0};
  bool x_cl = false, out_cl = false;
  // loads, stores of a pixel's cpb channels at once: 16 bytes for 8, 8 for 4 (staging_vec)
  bool vec8 = false, out_vec8 = false;
  int wr = 2;     // staged input row width: W rounded up to even
  int ks = 1;     // k-steps: kKP ks >= H wr
  int pitch = 4;  // words per image in a channel's region: its staged inputs, then its results (4 mod 8)
  int pr = 1, pc = 1;
  // Strips (planes past 256 pixels): a block job computes `strip` output rows from the inputs they read, with A
  // read from shared memory a k-step at a time (window_strip_warp); 0: the whole plane, A in registers.
  int strip = 0, strips = 1;
  int rpitch = 4;  // strips: words per image in a channel's results region (4 mod 8)
  int64_t r_off = 0, g_off = 0;  // strips: the results regions and the k-steps' G table, in words
  // Channels a block: a warp each, or (strips too large for 8) 4 or 2, the warps of a channel splitting the strip's
  // tiles (2: float32 only, its 56 x 56 strips).
  int cpb = kWindowCorrWarps;
  bool ok = false;

  DCLS_HD int kw() const { return static_cast<int>(16 * ((Lw + 15) / 16)); }
  DCLS_HD int64_t outputs() const { return Ho * Wo; }
  DCLS_HD int ntiles() const { return static_cast<int>((outputs() + 7) / 8); }
  DCLS_HD int64_t groups() const { return (C + cpb - 1) / cpb; }
  DCLS_HD int64_t slabs() const { return (N + kPlaneImages - 1) / kPlaneImages; }
  DCLS_HD int64_t blocks() const { return groups() * slabs() * strips; }
  DCLS_HD int c0() const { return static_cast<int>((Ho - 1) * pc + Wo - 1); }
  DCLS_HD int x_words() const { return channel_words(kPlaneImages * pitch); }  // per channel
  DCLS_HD int q_words() const { return channel_words(pr * pc); }
  DCLS_HD int64_t q_offset() const { return int64_t(cpb) * x_words(); }
  DCLS_HD int r_words() const { return channel_words(kPlaneImages * rpitch); }  // strips: per channel
  DCLS_HD int64_t smem_words() const {
    return strip > 0 ? g_off + 4 * ks : q_offset() + int64_t(cpb) * q_words();
  }
  DCLS_HD int64_t kernel_elems() const { return C * Lh * kw(); }
};

// The shape of the convolution of an (N, C, H, W) input into (N, C, Ho, Wo) with an Lh x Lw window and padding
// (ph, pw), or ok = false where it does not apply: windows up to 64, padding inside the window, input planes up to
// 256 pixels (rows at even width), the cells of P numbered in 16 bits. (Shared memory: the plan's to check.)
// strip_rows: 0 for the whole plane (up to 256 pixels; 16-bit only), else strips of that many output rows (any plane
// whose rows are at most kPlaneMaxStripWidth wide, at even width), cpb channels a block (8 or 4; float32 also 2).
template <typename scalar_t>
WindowPlane<scalar_t> window_plane_shape(int64_t N, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                                         int64_t Lh, int64_t Lw, int64_t ph, int64_t pw, int strip_rows = 0,
                                         int cpb = kWindowCorrWarps) {
  using Plane = WindowPlane<scalar_t>;
  constexpr int KP = Plane::kKP;
  Plane w;
  w.N = N, w.C = C, w.H = H, w.W = W, w.Ho = Ho, w.Wo = Wo, w.Lh = Lh, w.Lw = Lw, w.ph = ph, w.pw = pw;
  const int64_t wr = W + (W & 1);
  if (Lh > kWindowConvMaxWindow || Lw > kWindowConvMaxWindow || ph > Lh - 1 || pw > Lw - 1 || ph < 0 || pw < 0 ||
      N * C == 0 || Ho * Wo == 0 || H * W == 0 || Ho * Wo > (int64_t(1) << 16))
    return w;
  w.wr = static_cast<int>(wr);
  w.pc = w.wr + static_cast<int>(Wo) - 1;
  if (H * wr <= 16 * kPlaneMaxSteps && strip_rows == 0 && Plane::kE == 2) {  // the whole plane, A in registers
    w.ks = static_cast<int>((H * wr + 15) / 16);
    const int words = std::max(8 * w.ks, 4 * w.ntiles());
    w.pitch = words + ((4 - words) % 8 + 8) % 8;
    w.pr = (16 * w.ks + w.wr - 1) / w.wr + static_cast<int>(Ho) - 1;
    w.ok = int64_t(w.pr) * w.pc < (int64_t(1) << 16);
    return w;
  }
  const bool cpb_ok = cpb == kWindowCorrWarps || cpb == kWindowCorrWarps / 2 || (cpb == 2 && Plane::kE == 1);
  if (strip_rows <= 0 || wr > kPlaneMaxStripWidth || !cpb_ok) return w;
  w.cpb = cpb;
  // strips of R output rows: sizes of the largest (the staged rows of a strip reach R + Lh - 1)
  const int R = static_cast<int>(std::min<int64_t>(strip_rows, Ho));
  const int64_t rows = std::min<int64_t>(H, R + Lh - 1);
  w.strip = R;
  w.strips = static_cast<int>((Ho + R - 1) / R);
  w.ks = static_cast<int>((rows * wr + KP - 1) / KP);
  w.pitch = 8 * w.ks + ((4 - 8 * w.ks) % 8 + 8) % 8;
  const int rwords = (8 / Plane::kE) * static_cast<int>((R * Wo + 7) / 8);  // a tile's 8 results a row
  w.rpitch = rwords + ((4 - rwords) % 8 + 8) % 8;
  w.pr = (KP * w.ks + w.wr - 1) / w.wr + R - 1;
  w.r_off = w.q_offset() + int64_t(w.cpb) * w.q_words();
  w.g_off = w.r_off + int64_t(w.cpb) * w.r_words();
  w.ok = int64_t(w.pr) * w.pc < (int64_t(1) << 16);
  return w;
}

struct WindowPlaneJob {
  int64_t c0, n0;
  int images;  // of the 16 rows, those with an image (the rest compute what is never stored)
  int strip;   // strips: which (0 for the whole plane)
};
template <typename scalar_t>
DCLS_HD WindowPlaneJob window_plane_job(const WindowPlane<scalar_t>& w, int64_t bid) {
  WindowPlaneJob j;
  const int64_t per_strip = w.groups() * w.slabs();
  j.strip = static_cast<int>(bid / per_strip);
  bid -= int64_t(j.strip) * per_strip;
  j.c0 = (bid % w.groups()) * w.cpb;
  j.n0 = (bid / w.groups()) * kPlaneImages;
  j.images = static_cast<int>(std::min<int64_t>(kPlaneImages, w.N - j.n0));
  return j;
}

// A strip as a small-plane problem of its own: output rows oy0 .. oy0 + Ho' - 1 read input rows iy0 = max(0, oy0 -
// ph) .. (those their window rows reach), whose window row for (iy, oy) is iy - oy + ph = (iy - iy0) - (oy - oy0) +
// ph', ph' = ph + iy0 - oy0: the same geometry with the pointers moved to those rows, so that the phases of the
// whole plane run it unchanged. The layout's sizes (pitch, the regions) stay those of the largest strip.
template <typename scalar_t>
DCLS_HD WindowPlane<scalar_t> strip_view(const WindowPlane<scalar_t>& w, const WindowPlaneJob& j) {
  if (w.strip == 0) return w;
  WindowPlane<scalar_t> v = w;
  const int64_t oy0 = int64_t(j.strip) * w.strip;
  const int64_t iy0 = std::max<int64_t>(0, oy0 - w.ph);
  v.Ho = std::min<int64_t>(w.strip, w.Ho - oy0);
  // (none where the strip's output rows reach no input row: an input gradient whose layer kept one output row of
  // a large stride, which the op runs at stride 1; those outputs are the bias alone)
  v.H = std::max<int64_t>(0, std::min<int64_t>(w.H, oy0 + v.Ho - 1 - w.ph + w.Lh) - iy0);
  v.ph = w.ph + iy0 - oy0;
  v.x = w.x + iy0 * w.xs[2];
  v.out = w.out + oy0 * w.os[2];
  constexpr int KP = WindowPlane<scalar_t>::kKP;
  v.ks = static_cast<int>((v.H * w.wr + KP - 1) / KP);
  v.pr = (KP * v.ks + w.wr - 1) / w.wr + static_cast<int>(v.Ho) - 1;
  return v;
}

struct Words4 {
  uint32_t v[4];
};

// The thread's items tid, tid + threads, ... of n: put(item, load(item)), Batch loads in flight.
template <typename T, int Batch = kPlaneBatch, typename Load, typename Put>
DCLS_HD void plane_items(int n, int tid, Load&& load, Put&& put) {
  const int mine = tid < n ? (n - tid + kWindowCorrThreads - 1) / kWindowCorrThreads : 0;
  batched<Batch, T>(
      mine, [&](int i) { return load(tid + i * kWindowCorrThreads); },
      [&](int i, const T& v) { put(tid + i * kWindowCorrThreads, v); });
}

// Item idx of a job's elements one at a time, span per channel: its channel ci of `channels` (channels fastest in
// channels_last, so that neighbouring threads touch one pixel's channels together) and its place among the
// channel's.
DCLS_HD int plane_channel(int idx, bool channels_last, int span, int& ci, int channels = kWindowCorrWarps) {
  if (channels_last) {
    ci = idx % channels;
    return idx / channels;
  }
  ci = idx / span;
  return idx - ci * span;
}

// Phase 1 (per block job): P's pairs cleared, and the job's input planes staged, channel by channel, image row by
// row (image i's pixel q at element kE i pitch + q: 16-bit elements, or float32 words), zero past the input up to
// the kKP ks pixels the k-steps read.
// Channels: the channels a block where the kernel knows them (8: the whole plane's), else 0 (the plan's, cpb).
// Batch: loads in flight a thread (the strips' kernel, one block an SM with registers to spare, takes more: its
// staging is not hidden behind another block's products).
template <int Channels, int Batch, typename scalar_t>
DCLS_HD void window_plane_stage(const WindowPlane<scalar_t>& w, const WindowPlaneJob& j, uint32_t* smem, int tid) {
  constexpr int E = WindowPlane<scalar_t>::kE;
  const int cpb = Channels > 0 ? Channels : w.cpb;
  const int64_t qw = int64_t(cpb) * w.q_words();
  for (int64_t e = tid; e < qw; e += kWindowCorrThreads) smem[w.q_offset() + e] = 0u;
  const int per = WindowPlane<scalar_t>::kKP * w.ks, stride = w.x_words(), wr = w.wr;
  auto pixel = [&](int q, int64_t& iy, int64_t& ix) {
    iy = q / wr;
    ix = q - iy * wr;
    return iy < w.H && ix < w.W;
  };
  if (w.vec8 && E == 1) {  // float32: a thread per (image, pixel, 4 channels), one 16-byte load (cpb 8 or 4)
    const int quads = cpb / 4;
    plane_items<Words4, Batch>(
        j.images * per * quads, tid,
        [&](int idx) {
          const int rest = idx / quads, i = rest / per;
          int64_t iy, ix;
          Words4 v{{0u, 0u, 0u, 0u}};
          if (pixel(rest - i * per, iy, ix))
            load8(w.x + (j.n0 + i) * w.xs[0] + j.c0 + 4 * (idx - rest * quads) + iy * w.xs[2] + ix * w.xs[3], v.v);
          return v;
        },
        [&](int idx, const Words4& v) {
          const int rest = idx / quads, i = rest / per, q = rest - i * per, c4 = 4 * (idx - rest * quads);
DCLS_UNROLL
          for (int k = 0; k < 4; ++k) smem[int64_t(c4 + k) * stride + i * w.pitch + q] = v.v[k];
        });
    return;
  }
  if (w.vec8) {  // a thread per (image, pixel): its cpb channels in one load
    auto stage = [&](auto nch) {
      constexpr int NC = decltype(nch)::value;
      plane_items<Words4, Batch>(
          j.images * per, tid,
          [&](int idx) {
            const int i = idx / per;
            int64_t iy, ix;
            Words4 v{{0u, 0u, 0u, 0u}};
            if (pixel(idx - i * per, iy, ix)) {
              const scalar_t* p = w.x + (j.n0 + i) * w.xs[0] + j.c0 + iy * w.xs[2] + ix * w.xs[3];
              if (NC == 8) load8(p, v.v); else load4(p, v.v);
            }
            return v;
          },
          [&](int idx, const Words4& v) {
            const int i = idx / per, q = idx - i * per;
DCLS_UNROLL
            for (int k = 0; k < NC; ++k)
              reinterpret_cast<uint16_t*>(smem + int64_t(k) * stride)[2 * i * w.pitch + q] = half_of(v.v, k);
          });
    };
    if (cpb == kWindowCorrWarps) stage(std::integral_constant<int, kWindowCorrWarps>());
    else stage(std::integral_constant<int, kWindowCorrWarps / 2>());
    return;
  }
  // one element a load: channels fastest in channels_last, pixels fastest otherwise
  const int n = cpb * j.images * per;
  auto where = [&](int idx, int& ci, int& i, int& q) {
    const int rest = plane_channel(idx, w.x_cl, j.images * per, ci, cpb);
    i = rest / per;
    q = rest - i * per;
  };
  plane_items<scalar_t, Batch>(
      n, tid,
      [&](int idx) {
        int ci, i, q;
        where(idx, ci, i, q);
        int64_t iy, ix;
        const int64_t c = j.c0 + ci;
        return c < w.C && pixel(q, iy, ix) ? w.x[(j.n0 + i) * w.xs[0] + c * w.xs[1] + iy * w.xs[2] + ix * w.xs[3]]
                                           : scalar_t(0.f);
      },
      [&](int idx, const scalar_t& v) {
        int ci, i, q;
        where(idx, ci, i, q);
        reinterpret_cast<scalar_t*>(smem + int64_t(ci) * stride)[E * i * w.pitch + q] = v;
      });
}

// Phase 2 (per block job): the group's windows into P's pairs, 8 cells a 16-byte load (the window's rows are 16 kw
// bytes, kw a multiple of 16): cell e is the low half of word e and the high half of word e - 1. Cells outside P
// can meet no (input, output) pair of the planes. float32: P itself (cell e is word e), 4 cells a load.
template <typename scalar_t>
DCLS_HD void window_plane_stage_window(const WindowPlane<scalar_t>& w, const WindowPlaneJob& j, uint32_t* smem,
                                       int tid) {
  constexpr int E = WindowPlane<scalar_t>::kE, CELLS = 4 * E;  // cells a 16-byte load
  const int chunks = w.kw() / CELLS, per = static_cast<int>(w.Lh) * chunks;
  const int64_t live = std::min<int64_t>(w.cpb, w.C - j.c0);
  plane_items<Words4>(
      static_cast<int>(live) * per, tid,
      [&](int idx) {
        const int ci = idx / per, r = idx - ci * per;
        Words4 v;
        load8(w.kern + ((j.c0 + ci) * w.Lh + r / chunks) * w.kw() + CELLS * (r % chunks), v.v);
        return v;
      },
      [&](int idx, const Words4& v) {
        const int ci = idx / per, r = idx - ci * per, ky = r / chunks, kx0 = CELLS * (r % chunks);
        uint32_t* q32 = smem + w.q_offset() + int64_t(ci) * w.q_words();
        auto* q = reinterpret_cast<uint16_t*>(q32);
        const int64_t a = ky - w.ph + w.Ho - 1;
        if (a < 0 || a >= w.pr) return;
DCLS_UNROLL
        for (int k = 0; k < CELLS; ++k) {
          const int64_t b = kx0 + k - w.pw + w.Wo - 1;
          if (kx0 + k >= w.Lw || b < 0 || b >= w.pc) continue;
          const int64_t e = a * w.pc + b;
          if (E == 1) {
            q32[e] = v.v[k];
            continue;
          }
          q[2 * e] = half_of(v.v, k);
          if (e >= 1) q[2 * e - 1] = half_of(v.v, k);
        }
      });
}

template <typename scalar_t>
DCLS_HD uint16_t bits_of(scalar_t v) {
  return v.x;
}
template <typename scalar_t>
DCLS_HD uint32_t pack16(scalar_t lo, scalar_t hi) {
  return uint32_t(bits_of(lo)) | (uint32_t(bits_of(hi)) << 16);
}

// Lane `lane`'s A fragment of k-step s (images g and g + 8, input pixels 2t, 2t + 1 and 2t + 8, 2t + 9 of the
// step) from a channel's staged inputs, `pitch` words an image.
DCLS_HD void plane_a_fragment(const uint32_t* region, int pitch, int lane, int s, uint32_t* a4) {
  const int a = (lane >> 2) * pitch + 8 * s + (lane & 3);
  a4[0] = region[a];
  a4[1] = region[a + 8 * pitch];
  a4[2] = region[a + 4];
  a4[3] = region[a + 8 * pitch + 4];
}

// G(q) = iy pc + ix of a lane's two input pixels of k-step s (KP of them: 16-bit, 2t and 2t + 8; float32, t and
// t + 4), 16 bits each, rows staged wr pixels wide.
template <int KP = 16>
DCLS_HD uint32_t plane_g_pair(int s, int t, int wr, int pc) {
  const int q0 = KP * s + (KP / 8) * t, q1 = q0 + KP / 2, y0 = q0 / wr, y1 = q1 / wr;
  return uint32_t(y0 * pc + q0 - y0 * wr) | (uint32_t(y1 * pc + q1 - y1 * wr) << 16);
}

// Output tile nt (8 output pixels) of a warp: the k-steps holding the input rows that reach its output rows
// (warp-uniform), each lane's F(p) - c0 (past the plane: the last pixel's, never stored), its accumulators cleared.
template <int NL, typename scalar_t>
struct PlaneTile {
  int s_lo, s_hi;
  int F[NL];
  float acc[NL][8];  // two accumulators: two chains of dependent mma instead of one
  PlaneTile() = default;  // (a group's tiles, assigned before use)
  DCLS_HD PlaneTile(const WindowPlane<scalar_t>& w, int nt, int lane0) {
    constexpr int KP = WindowPlane<scalar_t>::kKP;
    const int outputs = static_cast<int>(w.outputs()), Wo = static_cast<int>(w.Wo), wr = w.wr;
    const int oy_a = 8 * nt / Wo, oy_b = std::min(8 * nt + 7, outputs - 1) / Wo;
    const int iy_lo = static_cast<int>(std::max<int64_t>(0, oy_a - w.ph));
    const int iy_hi = static_cast<int>(std::min<int64_t>(w.H - 1, oy_b + w.Lh - 1 - w.ph));
    s_lo = iy_lo * wr / KP;
    s_hi = iy_hi < iy_lo ? -1 : std::min(w.ks - 1, ((iy_hi + 1) * wr - 1) / KP);
    for (int l = 0; l < NL; ++l) {
      const int p = std::min(8 * nt + ((lane0 + l) >> 2), outputs - 1), oy = p / Wo;
      F[l] = oy * w.pc + p - oy * Wo - w.c0();
      for (int q = 0; q < 8; ++q) acc[l][q] = 0.f;
    }
  }
  // the tile's results (16 bits, plus the bias) at words 4 nt + t of rows g and g + 8 of `out` (pitch words a row);
  // float32: at words 8 nt + 2t and the next
  DCLS_HD void write(uint32_t* out, int pitch, int nt, float bias, int lane0) const {
    for (int l = 0; l < NL; ++l) {
      const int lane = lane0 + l, g = lane >> 2, t = lane & 3;
      float v[4];
      for (int q = 0; q < 4; ++q) v[q] = acc[l][q] + acc[l][4 + q] + bias;
      if constexpr (WindowPlane<scalar_t>::kE == 1) {
        float* o = reinterpret_cast<float*>(out) + 8 * nt + 2 * t;
        o[g * pitch] = v[0], o[g * pitch + 1] = v[1];
        o[(g + 8) * pitch] = v[2], o[(g + 8) * pitch + 1] = v[3];
      } else {
        out[g * pitch + 4 * nt + t] = pack16(scalar_t(v[0]), scalar_t(v[1]));
        out[(g + 8) * pitch + 4 * nt + t] = pack16(scalar_t(v[2]), scalar_t(v[3]));
      }
    }
  }
};

// Phase 3 (per block job): warp `warp`'s channel, lanes lane0 .. lane0 + NL - 1 (the device: NL = 1, its own lane;
// the emulation: the whole warp): its A fragments for every k-step into registers, then per tile of 8 output
// pixels the products of the k-steps whose input rows reach it, and the tile's results (16 bits, plus the bias)
// into the channel's region, in the staged inputs' place (the warp alone reads them, all before its first write).
template <int KS, int NL, typename Mma, typename scalar_t>
DCLS_HD void window_plane_warp(const WindowPlane<scalar_t>& w, const WindowPlaneJob& j, uint32_t* smem, int warp,
                               int lane0) {
  uint32_t* region = smem + int64_t(warp) * w.x_words();
  const uint32_t* Q = smem + w.q_offset() + int64_t(warp) * w.q_words();
  const int pitch = w.pitch, ks = w.ks, wr = w.wr, pc = w.pc;
  uint32_t A[NL][4 * KS];
  uint32_t G[NL][KS];  // G(q) of the lane's two input pixels a k-step (2t, 2t + 8), 16 bits each
  for (int l = 0; l < NL; ++l) {
    const int lane = lane0 + l, t = lane & 3;
DCLS_UNROLL
    for (int s = 0; s < KS; ++s) {
      if (s >= ks) continue;
      plane_a_fragment(region, pitch, lane, s, &A[l][4 * s]);
      G[l][s] = plane_g_pair<16>(s, t, wr, pc);
    }
  }
#if defined(__CUDA_ARCH__)
  __syncwarp();  // every lane's fragments are loaded before any lane's results take their words
#endif
  const int64_t c = j.c0 + warp;
  const float bias = (w.bias != nullptr && c < w.C) ? w.bias[c] : 0.f;
  for (int nt = 0; nt < w.ntiles(); ++nt) {
    PlaneTile<NL, scalar_t> tile(w, nt, lane0);
DCLS_UNROLL
    for (int s = 0; s < KS; ++s) {
      if (s < tile.s_lo || s > tile.s_hi) continue;
      uint32_t B[NL][2];
      for (int l = 0; l < NL; ++l) {
        B[l][0] = Q[int(G[l][s] & 0xffffu) - tile.F[l]];
        B[l][1] = Q[int(G[l][s] >> 16) - tile.F[l]];
      }
      Mma::template run<NL, 8, 4 * KS, 2>(tile.acc, A, B, s & 1, s, 0);
    }
    tile.write(region, pitch, nt, bias, lane0);
  }
}

// Strips, phase 2b (per block job): the k-steps' G table, G(q) of each lane's two input pixels (2t, 2t + 8) a
// k-step, 16 bits each (word 4 s + t): the same for every strip and job, staged so that no lane divides by wr.
template <typename scalar_t>
DCLS_HD void window_strip_stage_g(const WindowPlane<scalar_t>& w, uint32_t* smem, int tid) {
  for (int e = tid; e < 4 * w.ks; e += kWindowCorrThreads)
    smem[w.g_off + e] = plane_g_pair<WindowPlane<scalar_t>::kKP>(e / 4, e % 4, w.wr, w.pc);
}

// Strips, phase 3 (per block job): warp `warp`'s channel over the strip's tiles of 8 output pixels, lanes lane0 ..
// lane0 + NL - 1 (the device: NL = 1; the emulation: 32), as window_plane_warp but with each k-step's A fragments
// read from the staged inputs (a strip's k-steps do not fit in registers) and the results into the channel's own
// results region (the inputs stay live until the last tile). The tiles go kStripTiles at a time, so that a k-step's
// A fragments (four shared loads a lane) and G feed the products of every tile of the group: about 3.3 shared loads
// a product instead of 7 (each tile has its own two B loads). A group runs the k-steps any of its tiles needs, with
// no branch in the loop: every (input, output) pair of a strip lies inside P, so a tile whose output rows a k-step's
// input rows do not reach reads P's zero cells there and its sums do not change (an infinite input then reaches
// outputs it does not touch, as the whole plane's padding products already let it). (Testing each tile's range
// instead, to load zeros, cost 11 instructions a tile and k-step in the SASS, a third of the loop.)
// Where tiles align with output rows and k-steps with input rows (Wo a multiple of 8, rows staged at a multiple of
// kKP pixels: float32's 56 x 56), a group is instead up to kStripTiles tiles of one column block in consecutive
// output rows, run over only the k-steps of the input columns their window reaches: under a 17 x 17 window 2 or 3
// of a 56-pixel row's 7, so float32's stage 1 takes 21.6 million products instead of 50.2 (by count).
constexpr int kStripTiles = 4;

template <int NL, typename Mma, typename scalar_t>
DCLS_HD void window_strip_warp(const WindowPlane<scalar_t>& w, const WindowPlaneJob& j, const uint32_t* smem,
                               uint32_t* results, int warp, int lane0) {
  // the warp's channel, and which of its warps (with 4 or 2 channels a block, 2 or 4 warps share a channel, each
  // taking a share of the strip's tiles)
  const int wpc = kWindowCorrWarps / w.cpb, ci = warp / wpc, part = warp - ci * wpc;
  const uint32_t* region = smem + int64_t(ci) * w.x_words();
  const uint32_t* Q = smem + w.q_offset() + int64_t(ci) * w.q_words();
  const uint32_t* Gt = smem + w.g_off;
  uint32_t* out = results + int64_t(ci) * w.r_words();
  const int pitch = w.pitch, ntiles = w.ntiles();
  const int64_t c = j.c0 + ci;
  const float bias = (w.bias != nullptr && c < w.C) ? w.bias[c] : 0.f;
  constexpr int KP = WindowPlane<scalar_t>::kKP;
  const int kpr = w.wr / KP, tpr = static_cast<int>(w.Wo / 8);  // k-steps an input row, tiles an output row
  const bool aligned = w.Wo % 8 == 0 && w.wr % KP == 0;
  // aligned: the input columns column block cb's window reaches inside the plane (an input row's)
  auto reach = [&](int cb, int& ix0, int& ix1) {
    ix0 = static_cast<int>(std::max<int64_t>(0, 8 * cb - w.pw));
    ix1 = static_cast<int>(std::min<int64_t>(w.W - 1, 8 * cb + 6 + w.Lw - w.pw));
  };
  // tiles nt0, nt0 + nstep, .. (TG of them, all in the strip)
  auto group = [&](int nt0, int nstep, auto tg) {
    constexpr int TG = decltype(tg)::value;
    PlaneTile<NL, scalar_t> tiles[TG];
    int lo = w.ks, hi = -1;  // the k-steps any tile of the group needs (warp-uniform)
DCLS_UNROLL
    for (int i = 0; i < TG; ++i) {
      tiles[i] = PlaneTile<NL, scalar_t>(w, nt0 + i * nstep, lane0);
      if (tiles[i].s_lo <= tiles[i].s_hi) lo = std::min(lo, tiles[i].s_lo), hi = std::max(hi, tiles[i].s_hi);
    }
    // even k-steps into each tile's first accumulator, odd ones into its second, as window_plane_warp (a constant
    // index each: the accumulators stay in registers)
    auto step = [&](int s, auto half) {
      uint32_t A[NL][4], B[TG][NL][2];
      for (int l = 0; l < NL; ++l) {
        plane_a_fragment(region, pitch, lane0 + l, s, A[l]);
        const uint32_t G = Gt[4 * s + ((lane0 + l) & 3)];
DCLS_UNROLL
        for (int i = 0; i < TG; ++i) {
          B[i][l][0] = Q[int(G & 0xffffu) - tiles[i].F[l]];
          B[i][l][1] = Q[int(G >> 16) - tiles[i].F[l]];
        }
      }
DCLS_UNROLL
      for (int i = 0; i < TG; ++i) Mma::template run<NL, 8, 4, 2>(tiles[i].acc, A, B[i], decltype(half)::value, 0, 0);
    };
    using h0 = std::integral_constant<int, 0>;
    using h1 = std::integral_constant<int, 1>;
    if (!aligned) {
      int s = lo & ~1;
      for (; s + 1 <= hi; s += 2) {
        if (s >= lo) step(s, h0());
        step(s + 1, h1());
      }
      if (s <= hi && s >= lo) step(s, h0());
    } else if (lo <= hi) {
      int ix0, ix1;
      reach(nt0 % tpr, ix0, ix1);
      for (int r = lo / kpr; ix0 <= ix1 && r <= hi / kpr; ++r) {
        const int s1 = r * kpr + ix1 / KP;
        int s = r * kpr + ix0 / KP;
        for (; s + 1 <= s1; s += 2) step(s, h0()), step(s + 1, h1());
        if (s <= s1) step(s, h0());
      }
    }
DCLS_UNROLL
    for (int i = 0; i < TG; ++i) tiles[i].write(out, w.rpitch, nt0 + i * nstep, bias, lane0);
  };
  using g4 = std::integral_constant<int, kStripTiles>;
  using g2 = std::integral_constant<int, 2>;
  using g1 = std::integral_constant<int, 1>;
  if (aligned) {
    // units of up to kStripTiles output rows of one column block, row blocks fastest; a part takes a run of units
    // of an even share of their cost (the units whose cost's midpoint falls in its share: each unit one part's).
    // A unit's cost: per group, the input rows it runs x (2 tiles + 1) (a tile's B loads and products, a k-step's
    // A fragments), x the k-steps a row its column block reaches, + 1 (its writes). (An even share of the units
    // left the slowest of a float32 channel's four warps at 56 x 56 with 1.26x the mean's products; by cost, 1.07x.)
    const int rows = static_cast<int>(w.Ho), rblocks = (rows + kStripTiles - 1) / kStripTiles, units = rblocks * tpr;
    // unit u's groups: fn(column block, first output row, TG), of 4 rows, else of 2 and 1
    auto unit_groups = [&](int u, auto&& fn) {
      const int cb = u / rblocks, r0 = (u - cb * rblocks) * kStripTiles, n = std::min(rows - r0, int(kStripTiles));
      if (n == kStripTiles) {
        fn(cb, r0, g4());
      } else {
        if (n >= 2) fn(cb, r0, g2());
        if (n % 2 == 1) fn(cb, r0 + n - 1, g1());
      }
    };
    auto unit_cost = [&](int u) {
      int c = 1;
      unit_groups(u, [&](int cb, int a, auto tg) {
        constexpr int TG = decltype(tg)::value;
        int ix0, ix1;
        reach(cb, ix0, ix1);
        const int64_t lo = std::max<int64_t>(0, a - w.ph), hi = std::min<int64_t>(w.H - 1, a + TG - 2 + w.Lh - w.ph);
        if (ix0 <= ix1 && lo <= hi) c += static_cast<int>(hi - lo + 1) * (2 * TG + 1) * (ix1 / KP - ix0 / KP + 1);
      });
      return c;
    };
    int64_t total = 0, before = 0;
    for (int u = 0; u < units; ++u) total += unit_cost(u);
    for (int u = 0; u < units; ++u) {
      const int c = unit_cost(u);
      const int64_t mid = 2 * before + c;  // twice the midpoint, in (0, 2 total)
      before += c;
      if (mid * wpc < 2 * total * part || mid * wpc >= 2 * total * (part + 1)) continue;
      unit_groups(u, [&](int cb, int a, auto tg) { group(a * tpr + cb, tpr, tg); });
    }
    return;
  }
  // the part's tiles: an even share of the strip's (28 at 56 x 56: 14 a warp, groups of 4, 4, 4, 2)
  const int end = (part + 1) * ntiles / wpc;
  int nt = part * ntiles / wpc;
  for (; nt + kStripTiles <= end; nt += kStripTiles) group(nt, 1, g4());
  for (; nt + 2 <= end; nt += 2) group(nt, 1, g2());
  if (nt < end) group(nt, 1, g1());
}

// Phase 4 (per block job): the results to the output, in its channel order (channels_last runs of the block's
// channels by one store where out_vec8: a thread per (image, pixel), its 8 (or 4) channels from their regions).
template <int Channels, typename scalar_t>
DCLS_HD void window_plane_store(const WindowPlane<scalar_t>& w, const WindowPlaneJob& j, const uint32_t* smem_all,
                                int tid) {
  const int cpb = Channels > 0 ? Channels : w.cpb;  // (as window_plane_stage)
  // the results: in the staged inputs' place (the whole plane), or in their own regions (strips)
  constexpr int E = WindowPlane<scalar_t>::kE;
  const uint32_t* smem = smem_all + (w.strip > 0 ? w.r_off : 0);
  const int stride = w.strip > 0 ? w.r_words() : w.x_words(), pitch = w.strip > 0 ? w.rpitch : w.pitch;
  const int outputs = static_cast<int>(w.outputs()), Wo = static_cast<int>(w.Wo);
  if (w.out_vec8 && E == 1) {  // float32: a thread per (image, pixel, 4 channels), one 16-byte store
    const int quads = cpb / 4;
    for (int idx = tid; idx < j.images * outputs * quads; idx += kWindowCorrThreads) {
      const int rest = idx / quads, c4 = 4 * (idx - rest * quads), i = rest / outputs, p = rest - i * outputs;
      const int oy = p / Wo, ox = p - oy * Wo;
      uint32_t v[4];
DCLS_UNROLL
      for (int k = 0; k < 4; ++k) v[k] = smem[int64_t(c4 + k) * stride + i * pitch + p];
      store8(w.out + (j.n0 + i) * w.os[0] + j.c0 + c4 + oy * w.os[2] + ox * w.os[3], v);
    }
    return;
  }
  if (w.out_vec8) {  // a thread per (image, pixel): its cpb channels in one store
    const int words = cpb / 2;
    for (int idx = tid; idx < j.images * outputs; idx += kWindowCorrThreads) {
      const int i = idx / outputs, p = idx - i * outputs, oy = p / Wo, ox = p - oy * Wo;
      uint32_t v[4];
DCLS_UNROLL
      for (int k = 0; k < 4; ++k) {
        if (k >= words) break;
        const auto* lo = reinterpret_cast<const uint16_t*>(smem + int64_t(2 * k) * stride);
        const auto* hi = reinterpret_cast<const uint16_t*>(smem + int64_t(2 * k + 1) * stride);
        v[k] = uint32_t(lo[2 * i * pitch + p]) | (uint32_t(hi[2 * i * pitch + p]) << 16);
      }
      scalar_t* q = w.out + (j.n0 + i) * w.os[0] + j.c0 + oy * w.os[2] + ox * w.os[3];
      if (words == 4) store8(q, v); else store4(q, v);
    }
    return;
  }
  const int n = cpb * j.images * outputs;
  for (int idx = tid; idx < n; idx += kWindowCorrThreads) {
    int ci;
    const int rest = plane_channel(idx, w.out_cl, j.images * outputs, ci, cpb), i = rest / outputs;
    const int64_t c = j.c0 + ci;
    if (c >= w.C) continue;
    const int p = rest - i * outputs, oy = p / Wo, ox = p - oy * Wo;
    w.out[(j.n0 + i) * w.os[0] + c * w.os[1] + oy * w.os[2] + ox * w.os[3]] =
        reinterpret_cast<const scalar_t*>(smem + int64_t(ci) * stride)[E * i * pitch + p];
  }
}

// The kernel for a plane's k-steps (4: 7 x 7; 8; 16: 14 x 14).
template <typename Fn>
auto with_plane_steps(int ks, Fn&& fn) {
  if (ks <= 4) return fn(std::integral_constant<int, 4>());
  if (ks <= 8) return fn(std::integral_constant<int, 8>());
  return fn(std::integral_constant<int, 16>());
}

}  // namespace dcls_convert
