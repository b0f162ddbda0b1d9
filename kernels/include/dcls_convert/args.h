// Host-side packing of tensors into the argument structs of the per-thread functions, shared by the
// CPU ops, the CPU emulation of the CUDA grid and the CUDA launchers.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>
#include <vector>

#include "dcls_convert/checks.h"
#include "dcls_convert/construct_threads.h"
#include "dcls_convert/taps_threads.h"

namespace dcls_convert {

template <typename scalar_t, typename acc_t>
ConstructArgs<scalar_t, acc_t> make_construct_args(const at::Tensor& w, const at::Tensor& pos, const at::Tensor& sig,
                                                   at::IntArrayRef window, int interp, double sigma_min) {
  ConstructArgs<scalar_t, acc_t> a;
  a.weight = w.data_ptr<scalar_t>();
  a.pos = pos.data_ptr<acc_t>();
  a.sigma = sig.defined() ? sig.data_ptr<acc_t>() : nullptr;
  a.P = w.size(0) * w.size(1);
  a.K = w.size(2);
  a.D = static_cast<int64_t>(window.size());
  for (int64_t d = 0; d < a.D; ++d) a.L[d] = window[d];
  a.interp = interp;
  a.sigma_min = static_cast<acc_t>(sigma_min);
  return a;
}

// Contiguous inputs of the construct op in the layout the thread functions expect.
struct ConstructInputs {
  at::Tensor weight, pos, sigma;
  ConstructInputs(const at::Tensor& weight_, const at::Tensor& positions, const c10::optional<at::Tensor>& sigma_,
                  int interp) {
    const auto adt = acc_dtype(weight_.scalar_type());
    weight = weight_.contiguous();
    pos = positions.to(adt).contiguous();
    if (interp == kGaussian) sigma = sigma_->to(adt).contiguous();
  }
};

// Contiguous inputs of the tap convolution; weight, positions and bias in the accumulation type (no copy for the
// float32 parameters of a layer under autocast).
struct TapsInputs {
  at::Tensor x, weight, pos, bias;
  // keep_input_layout: the CPU kernels read planes through strides; the CUDA kernels index NCHW.
  TapsInputs(const at::Tensor& input, const at::Tensor& weight_, const at::Tensor& positions,
             const c10::optional<at::Tensor>& bias_ = c10::nullopt, bool keep_input_layout = false) {
    x = keep_input_layout ? input : input.contiguous();
    const auto adt = acc_dtype(input.scalar_type());
    weight = weight_.to(adt).contiguous();
    pos = positions.to(adt).contiguous();
    if (bias_.has_value()) bias = bias_->to(adt).contiguous();
  }
};

// The forward's arguments checked and its output allocated (in the input's memory format), for every engine.
inline at::Tensor checked_taps_output(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                                      const c10::optional<at::Tensor>& bias, at::IntArrayRef window,
                                      at::IntArrayRef stride, at::IntArrayRef padding, int interp) {
  check_taps_args(input, weight, positions, window, stride, padding, interp, bias);
  return at::empty(taps_output_size(input, window, stride, padding),
                   input.options().memory_format(taps_memory_format(input)));
}

// x (N, C, [H,] W) in scalar_t; weight (C, 1, K) and positions (D, C, 1, K) contiguous in the accumulation type.
template <typename scalar_t, typename acc_t>
TapsArgs<scalar_t, acc_t> make_taps_args(const at::Tensor& x, const at::Tensor& w, const at::Tensor& pos,
                                         at::IntArrayRef window, at::IntArrayRef stride, at::IntArrayRef padding,
                                         int interp) {
  TapsArgs<scalar_t, acc_t> a;
  const bool two_d = window.size() == 2;
  a.x = x.data_ptr<scalar_t>();
  a.weight = w.data_ptr<acc_t>();
  const acc_t* p = pos.data_ptr<acc_t>();
  a.C = w.size(0);
  a.K = w.size(2);
  a.pos_h = two_d ? p : nullptr;
  a.pos_w = two_d ? p + a.C * a.K : p;
  a.N = x.size(0);
  a.H = two_d ? x.size(2) : 1;
  a.W = x.size(-1);
  a.Lh = two_d ? window[0] : 1;
  a.Lw = window.back();
  a.sh = two_d ? stride[0] : 1;
  a.sw = stride.back();
  a.ph = two_d ? padding[0] : 0;
  a.pw = padding.back();
  a.Ho = (a.H + 2 * a.ph - a.Lh) / a.sh + 1;
  a.Wo = (a.W + 2 * a.pw - a.Lw) / a.sw + 1;
  // One output along an axis reads the same input whatever the stride: stride 1 keeps every engine's
  // geometry (buffers sized by Ho * stride) bounded by the input.
  if (a.Ho == 1) a.sh = 1;
  if (a.Wo == 1) a.sw = 1;
  a.interp = interp;
  return a;
}

}  // namespace dcls_convert
