// Per-thread work of the kernel-construction op. The CUDA kernels call these over a grid-stride loop;
// the CPU emulation ops (cpu/emulate_cuda_cpu.cpp) call them over the same index range, so the tests
// check the device code path on machines without a GPU.
#pragma once

#include "dcls_convert/interpolation.h"

namespace dcls_convert {

// Largest gaussian window per axis that the separable backward handles with per-thread arrays.
constexpr int64_t kMaxSeparable = 128;

// Tensors are contiguous. weight (P, K), positions / sigma (D, P, K) in the accumulation type,
// dense kernel (P, L0, L1, L2) with unused trailing window dims set to 1.
template <typename scalar_t, typename acc_t>
struct ConstructArgs {
  const scalar_t* weight = nullptr;
  const acc_t* pos = nullptr;
  const acc_t* sigma = nullptr;  // gaussian only
  const scalar_t* grad = nullptr;  // backward: gradient of the dense kernel
  scalar_t* out = nullptr;         // forward: dense kernel
  acc_t* grad_weight = nullptr;    // backward outputs, nullptr when not requested
  acc_t* grad_pos = nullptr;
  acc_t* grad_sigma = nullptr;
  int64_t P = 0, K = 0, D = 0;
  int64_t L[3] = {1, 1, 1};
  int interp = kBilinear;
  acc_t sigma_min = acc_t(0.27);

  DCLS_HD int64_t volume() const { return L[0] * L[1] * L[2]; }
  DCLS_HD int64_t at(int64_t d, int64_t p, int64_t k) const { return (d * P + p) * K + k; }
};

// Visits the in-window grid corners of one tap (2^D for bilinear, 1 for nearest): fn(f, cw, b) with f the flat
// index in the (L0, L1, L2) window, cw[d] the corner weight along axis d (1 for nearest and on axes >= D) and b
// the corner's bits (bit d set: the upper cell along axis d). The CPU scatter and the backward share it.
template <typename acc_t, typename Fn>
DCLS_HD void for_each_corner(const Coord<acc_t>* c, int64_t D, const int64_t* L, int interp, Fn&& fn) {
  const int per_axis = corners_per_axis(interp);
  int ncorners = 1;
  for (int64_t d = 0; d < D; ++d) ncorners *= per_axis;
  for (int b = 0; b < ncorners; ++b) {
    int64_t f = 0;
    bool inside = true;
    acc_t cw[3] = {1, 1, 1};
    for (int64_t d = 0; d < D; ++d) {
      const int bit = (b >> d) & 1;
      const int64_t t = c[d].cell + bit;
      inside = inside && t < L[d];
      cw[d] = interp == kNearest ? acc_t(1) : corner_weight(c[d], bit);
      f = f * L[d] + t;
    }
    if (!inside) continue;
    for (int64_t d = D; d < 3; ++d) f *= L[d];
    fn(f, cw, b);
  }
}

// Interpolation weight of tap (p, k) at grid index t along axis d.
template <typename scalar_t, typename acc_t>
DCLS_HD acc_t axis_weight(const ConstructArgs<scalar_t, acc_t>& a, int64_t d, int64_t p, int64_t k, int64_t t) {
  const Coord<acc_t> c = grid_coord(a.pos[a.at(d, p, k)], a.L[d], a.interp);
  if (a.interp == kGaussian) {
    const Gauss<acc_t> g = gauss_axis(c.u, a.sigma[a.at(d, p, k)], a.sigma_min, a.L[d]);
    return gauss_value(g, t);
  }
  if (t == c.cell) return a.interp == kNearest ? acc_t(1) : corner_weight(c, 0);
  if (a.interp == kBilinear && t == c.cell + 1) return corner_weight(c, 1);
  return acc_t(0);
}

// One thread per dense-kernel element (p, t): gathers the contribution of every tap, in tap order.
template <typename scalar_t, typename acc_t>
DCLS_HD void construct_forward_thread(int64_t idx, const ConstructArgs<scalar_t, acc_t>& a) {
  const int64_t vol = a.volume();
  const int64_t p = idx / vol;
  int64_t r = idx % vol;
  int64_t t[3];
  t[2] = r % a.L[2];
  r /= a.L[2];
  t[1] = r % a.L[1];
  t[0] = r / a.L[1];
  acc_t acc = 0;
  for (int64_t k = 0; k < a.K; ++k) {
    acc_t coef = static_cast<acc_t>(a.weight[p * a.K + k]);
    for (int64_t d = 0; d < a.D && coef != acc_t(0); ++d) coef *= axis_weight(a, d, p, k, t[d]);
    acc += coef;
  }
  a.out[idx] = static_cast<scalar_t>(acc);
}

// Gaussian forward, one block per plane p (the CUDA kernel; the emulation runs the same phases). Phase 1: the
// block computes the K x D normalised 1-D profiles once into shared memory; phase 2: every dense element is a sum
// over taps of products of profile values. K * sum(L) exponentials per plane instead of vol * K * D * (L + 1) in
// the per-element gather, with the same arithmetic, so the result is bitwise the gather's.
// Shared layout: axis d's profiles at offset K * (L_0 + ... + L_{d-1}), tap k's row at + k * L_d.
constexpr int64_t kGaussProfileBytes = 48 * 1024;  // the default shared memory of a block

template <typename scalar_t, typename acc_t>
DCLS_HD int64_t gauss_profile_count(const ConstructArgs<scalar_t, acc_t>& a) {
  int64_t n = 0;
  for (int64_t d = 0; d < a.D; ++d) n += a.L[d];
  return a.K * n;
}

template <typename scalar_t, typename acc_t>
DCLS_HD bool gauss_profiles_fit(const ConstructArgs<scalar_t, acc_t>& a) {
  return a.interp == kGaussian && gauss_profile_count(a) * static_cast<int64_t>(sizeof(acc_t)) <= kGaussProfileBytes;
}

template <typename scalar_t, typename acc_t>
DCLS_HD void gauss_profiles_phase(int64_t p, int64_t tid, int64_t nthreads, const ConstructArgs<scalar_t, acc_t>& a,
                                  acc_t* prof) {
  for (int64_t i = tid; i < a.K * a.D; i += nthreads) {
    const int64_t d = i / a.K, k = i % a.K;
    int64_t off = 0;
    for (int64_t e = 0; e < d; ++e) off += a.K * a.L[e];
    acc_t* row = prof + off + k * a.L[d];
    const Coord<acc_t> c = grid_coord(a.pos[a.at(d, p, k)], a.L[d], a.interp);
    const Gauss<acc_t> g = gauss_axis(c.u, a.sigma[a.at(d, p, k)], a.sigma_min, a.L[d]);
    for (int64_t t = 0; t < a.L[d]; ++t) row[t] = gauss_value(g, t);
  }
}

template <typename scalar_t, typename acc_t>
DCLS_HD void gauss_gather_phase(int64_t p, int64_t tid, int64_t nthreads, const ConstructArgs<scalar_t, acc_t>& a,
                                const acc_t* prof) {
  const int64_t vol = a.volume();
  const int64_t off[3] = {0, a.K * a.L[0], a.K * (a.L[0] + a.L[1])};
  for (int64_t f = tid; f < vol; f += nthreads) {
    const int64_t t[3] = {f / (a.L[1] * a.L[2]), (f / a.L[2]) % a.L[1], f % a.L[2]};
    acc_t acc = 0;
    for (int64_t k = 0; k < a.K; ++k) {
      acc_t coef = static_cast<acc_t>(a.weight[p * a.K + k]);
      for (int64_t d = 0; d < a.D && coef != acc_t(0); ++d) coef *= prof[off[d] + k * a.L[d] + t[d]];
      acc += coef;
    }
    a.out[p * vol + f] = static_cast<scalar_t>(acc);
  }
}

// One thread per tap (p, k): reads the dense gradient on the tap's footprint and writes the
// gradients of its weight, position and sigma (no atomics, deterministic).
template <typename scalar_t, typename acc_t>
DCLS_HD void construct_backward_thread(int64_t idx, const ConstructArgs<scalar_t, acc_t>& a) {
  const int64_t p = idx / a.K, k = idx % a.K;
  const int64_t D = a.D;
  const scalar_t* G = a.grad + p * a.volume();
  const acc_t w = static_cast<acc_t>(a.weight[idx]);
  Coord<acc_t> c[3];
  for (int64_t d = 0; d < D; ++d) c[d] = grid_coord(a.pos[a.at(d, p, k)], a.L[d], a.interp);
  acc_t gw = 0, gu[3] = {0, 0, 0}, gs[3] = {0, 0, 0};

  if (a.interp == kGaussian && D <= 2 && a.L[0] <= kMaxSeparable && a.L[1] <= kMaxSeparable) {
    // Separable contraction: v = G n1 and u = G^T n0, then every gradient is a dot product of length L
    // (2 L0 L1 multiply-adds per tap and 3 (L0 + L1) exponentials, instead of exponentials per element).
    Gauss<acc_t> g0 = gauss_axis(c[0].u, a.sigma[a.at(0, p, k)], a.sigma_min, a.L[0]);
    Gauss<acc_t> g1 = g0;
    if (D == 2) g1 = gauss_axis(c[1].u, a.sigma[a.at(1, p, k)], a.sigma_min, a.L[1]);
    // Two per-thread arrays, not three (n0 is used once per row): the stack frame sets the local memory a
    // GPU reserves for every resident thread.
    acc_t n1[kMaxSeparable], u[kMaxSeparable];
    for (int64_t t = 0; t < a.L[1]; ++t) {
      n1[t] = D == 2 ? gauss_value(g1, t) : acc_t(1);
      u[t] = 0;
    }
    for (int64_t t0 = 0; t0 < a.L[0]; ++t0) {
      const acc_t n0 = gauss_value(g0, t0);
      acc_t v = 0;
      for (int64_t t1 = 0; t1 < a.L[1]; ++t1) {
        const acc_t gv = static_cast<acc_t>(G[t0 * a.L[1] + t1]);
        v += gv * n1[t1];
        u[t1] += gv * n0;
      }
      gw += n0 * v;
      gu[0] += gauss_du(g0, t0, n0) * v;
      gs[0] += gauss_ds(g0, t0, n0) * v;
    }
    if (D == 2) {
      for (int64_t t1 = 0; t1 < a.L[1]; ++t1) {
        gu[1] += gauss_du(g1, t1, n1[t1]) * u[t1];
        gs[1] += gauss_ds(g1, t1, n1[t1]) * u[t1];
      }
    }
  } else if (a.interp == kGaussian) {
    Gauss<acc_t> g[3];
    for (int64_t d = 0; d < D; ++d) g[d] = gauss_axis(c[d].u, a.sigma[a.at(d, p, k)], a.sigma_min, a.L[d]);
    const int64_t vol = a.volume();
    for (int64_t f = 0; f < vol; ++f) {
      const int64_t t[3] = {f / (a.L[1] * a.L[2]), (f / a.L[2]) % a.L[1], f % a.L[2]};
      acc_t n[3] = {1, 1, 1};
      for (int64_t d = 0; d < D; ++d) n[d] = gauss_value(g[d], t[d]);
      const acc_t gv = static_cast<acc_t>(G[f]);
      gw += gv * n[0] * n[1] * n[2];
      for (int64_t d = 0; d < D; ++d) {
        const acc_t rest = gv * n[(d + 1) % 3] * n[(d + 2) % 3];
        gu[d] += rest * gauss_du(g[d], t[d], n[d]);
        gs[d] += rest * gauss_ds(g[d], t[d], n[d]);
      }
    }
  } else {
    for_each_corner(c, D, a.L, a.interp, [&](int64_t f, const acc_t* cw, int b) {
      const acc_t gv = static_cast<acc_t>(G[f]);
      gw += gv * cw[0] * cw[1] * cw[2];
      if (a.interp == kBilinear) {
        for (int64_t d = 0; d < D; ++d) {
          const acc_t rest = gv * cw[(d + 1) % 3] * cw[(d + 2) % 3];
          gu[d] += rest * static_cast<acc_t>(corner_sign((b >> d) & 1));
        }
      }
    });
  }
  if (a.grad_weight) a.grad_weight[idx] = gw;
  for (int64_t d = 0; d < D; ++d) {
    if (a.grad_pos) a.grad_pos[a.at(d, p, k)] = w * gu[d] * c[d].pass;
    if (a.grad_sigma) {
      const Gauss<acc_t> g = gauss_axis(c[d].u, a.sigma[a.at(d, p, k)], a.sigma_min, a.L[d]);
      a.grad_sigma[a.at(d, p, k)] = w * gs[d] * g.sign;
    }
  }
}

}  // namespace dcls_convert
