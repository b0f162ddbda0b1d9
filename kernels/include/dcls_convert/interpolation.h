// Interpolation math of both ops (kernel construction and the tap convolution), written once for host and
// device: grid coordinates of a position, bilinear corners, normalised gaussians.
//
// Conventions (README, "Semantics"): a window of size L has centre c = L / 2; a position p is an
// offset from the centre, its grid coordinate is u = p + c, clamped to [0, L - 1] inside the op.
// The gradient passes the clamp only where the unclamped u lies inside [0, L - 1] (as torch.clamp).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DCLS_HD __host__ __device__ __forceinline__
// A device function kept out of line: its registers are then not the kernel's (nothing of it is hoisted out of
// the kernel's loops to stay live through them).
#define DCLS_HD_CALL __host__ __device__ __noinline__
#else
#define DCLS_HD inline
#define DCLS_HD_CALL inline
#endif

// Loop unrolling for the device compiler (host compilers warn on the pragma).
#if defined(__CUDACC__)
#define DCLS_UNROLL _Pragma("unroll")
#else
#define DCLS_UNROLL
#endif

// Index checks run by the CPU emulation alone (kernels/emulation/ defines DCLS_EMULATION; other builds compile them
// away): a shared-memory read past its region can return finite values that a masked product multiplies by zero,
// which no result would show.
#if defined(DCLS_EMULATION) && !defined(__CUDACC__)
#include <stdexcept>
#define DCLS_EMULATION_CHECK(cond)                                               \
  do {                                                                           \
    if (!(cond)) throw std::out_of_range("emulated kernel index check: " #cond); \
  } while (0)
#else
#define DCLS_EMULATION_CHECK(cond) \
  do {                             \
  } while (0)
#endif

namespace dcls_convert {

enum Interp : int { kBilinear = 0, kGaussian = 1, kNearest = 2 };

template <typename acc_t>
struct Coord {
  acc_t u;       // clamped grid coordinate
  int64_t cell;  // floor(u) for bilinear, round(u) for nearest
  acc_t frac;    // u - cell (bilinear only)
  acc_t pass;    // 1 where the gradient passes the clamp, else 0
};

// A NaN position gives a valid cell and NaN interpolation weights (bilinear, gaussian): outputs and gradients
// become NaN, as the reference implementation and any PyTorch op with NaN parameters give. +-Inf clamp to the
// window's edges (as torch.clamp). Nearest taps (fixed integer patterns) have no NaN path.
template <typename acc_t>
DCLS_HD Coord<acc_t> grid_coord(acc_t p, int64_t L, int interp) {
  Coord<acc_t> r;
  if (p != p) {
    r.u = p;
    r.cell = 0;
    r.frac = p;
    r.pass = acc_t(1);
    return r;
  }
  const acc_t hi = static_cast<acc_t>(L - 1);
  acc_t u = p + static_cast<acc_t>(L / 2);
  r.pass = (u >= acc_t(0) && u <= hi) ? acc_t(1) : acc_t(0);
  u = (u >= acc_t(0)) ? u : acc_t(0);
  u = (u <= hi) ? u : hi;
  r.u = u;
  if (interp == kNearest) {
    r.cell = static_cast<int64_t>(::floor(u + acc_t(0.5)));
    r.frac = acc_t(0);
  } else {
    r.cell = static_cast<int64_t>(::floor(u));
    r.frac = u - static_cast<acc_t>(r.cell);
  }
  return r;
}

// Bilinear: corner b (0 = floor cell, 1 = the next one) has weight 1 - frac or frac and
// derivative -1 or +1 with respect to u (one-sided at integers: the cell is floor(u)).
template <typename acc_t>
DCLS_HD acc_t corner_weight(const Coord<acc_t>& c, int b) {
  return b == 0 ? acc_t(1) - c.frac : c.frac;
}
DCLS_HD int corner_sign(int b) { return b == 0 ? -1 : 1; }

// Number of corners per axis for an interpolation (bilinear 2, nearest 1).
DCLS_HD int corners_per_axis(int interp) { return interp == kNearest ? 1 : 2; }

// Gaussian along one axis: n(t) = g(t) / Z with g(t) = exp(-(t - u)^2 / (2 s^2)), s = |sigma| + sigma_min.
// The exponent is shifted by the squared distance from u to the nearest grid point (it cancels in the
// normalisation), so the largest term is exp(0) = 1 and narrow gaussians never underflow to 0/0.
template <typename acc_t>
struct Gauss {
  acc_t u, s, inv_z, mean_d, mean_d2;  // mean_d = sum n (t-u), mean_d2 = sum n (t-u)^2
  acc_t sign;                            // d s / d sigma
  acc_t d2min;                           // min over t of (t - u)^2
};

template <typename acc_t>
DCLS_HD Gauss<acc_t> gauss_axis(acc_t u, acc_t sigma, acc_t sigma_min, int64_t L) {
  Gauss<acc_t> g;
  g.u = u;
  g.s = (sigma < acc_t(0) ? -sigma : sigma) + sigma_min;
  g.sign = sigma > acc_t(0) ? acc_t(1) : (sigma < acc_t(0) ? acc_t(-1) : acc_t(0));
  const acc_t inv2s2 = acc_t(0.5) / (g.s * g.s);
  const acc_t near = u - ::floor(u + acc_t(0.5));
  g.d2min = near * near;
  acc_t z = 0, m1 = 0, m2 = 0;
  for (int64_t t = 0; t < L; ++t) {
    const acc_t d = static_cast<acc_t>(t) - u;
    const acc_t e = ::exp(-(d * d - g.d2min) * inv2s2);
    z += e;
    m1 += e * d;
    m2 += e * d * d;
  }
  g.inv_z = acc_t(1) / z;
  g.mean_d = m1 * g.inv_z;
  g.mean_d2 = m2 * g.inv_z;
  return g;
}

template <typename acc_t>
DCLS_HD acc_t gauss_value(const Gauss<acc_t>& g, int64_t t) {
  const acc_t d = static_cast<acc_t>(t) - g.u;
  return ::exp(-(d * d - g.d2min) * (acc_t(0.5) / (g.s * g.s))) * g.inv_z;
}
// d n(t) / d u and d n(t) / d s, given n(t).
template <typename acc_t>
DCLS_HD acc_t gauss_du(const Gauss<acc_t>& g, int64_t t, acc_t n) {
  return n * ((static_cast<acc_t>(t) - g.u) - g.mean_d) / (g.s * g.s);
}
template <typename acc_t>
DCLS_HD acc_t gauss_ds(const Gauss<acc_t>& g, int64_t t, acc_t n) {
  const acc_t d = static_cast<acc_t>(t) - g.u;
  return n * (d * d - g.mean_d2) / (g.s * g.s * g.s);
}

}  // namespace dcls_convert
