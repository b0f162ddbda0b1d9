// Gradient buffers of the backward ops (accumulation type, allocated only where requested) and their
// conversion back to the parameters' dtypes; shared by the CPU and CUDA backward ops.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <string>
#include <tuple>
#include <vector>

#include "dcls_convert/args.h"

namespace dcls_convert {

// Gradient buffers of the construct backward (accumulation type), allocated only where requested, and the
// conversion back to the parameters' dtypes; shared by the CPU and CUDA backward ops.
struct ConstructGrads {
  at::Tensor gw, gp, gs;
  std::array<bool, 3> mask;
  bool want_sigma;
  ConstructGrads(const at::Tensor& weight, const at::Tensor& positions, int interp, std::array<bool, 3> mask_)
      : mask(mask_), want_sigma(mask_[2] && interp == kGaussian) {
    const auto opts = weight.options().dtype(acc_dtype(weight.scalar_type()));
    gw = mask[0] ? at::empty(weight.sizes(), opts) : at::empty({0}, weight.options());
    gp = mask[1] ? at::empty(positions.sizes(), opts) : at::empty({0}, positions.options());
    gs = want_sigma ? at::empty(positions.sizes(), opts) : at::empty({0}, positions.options());
  }
  template <typename scalar_t, typename acc_t>
  void bind(ConstructArgs<scalar_t, acc_t>& a) {
    a.grad_weight = mask[0] ? gw.data_ptr<acc_t>() : nullptr;
    a.grad_pos = mask[1] ? gp.data_ptr<acc_t>() : nullptr;
    a.grad_sigma = want_sigma ? gs.data_ptr<acc_t>() : nullptr;
  }
  std::tuple<at::Tensor, at::Tensor, at::Tensor> finish(const at::Tensor& weight, const at::Tensor& positions,
                                                        const c10::optional<at::Tensor>& sigma) {
    if (mask[2] && !want_sigma) gs = at::zeros(positions.sizes(), positions.options());
    return {mask[0] ? gw.to(weight.scalar_type()) : gw, mask[1] ? gp.to(positions.scalar_type()) : gp,
            (mask[2] && sigma.has_value()) ? gs.to(sigma->scalar_type()) : gs};
  }
};

// Gradient buffers of the tap-convolution backward, allocated only where the mask asks. The weight and position
// gradients are written in the accumulation type, each entry once by the kernel that bind_taps armed (else zeros:
// no outputs), and returned in the parameters' dtypes (no conversion for float32 parameters under autocast). The
// bias gradient comes from a kernel that bind_bias armed, else a plain reduction. The input gradient comes back
// in the input's memory format: written in place by kernels that take strides (strided_writes), else computed
// NCHW and converted at the end.
struct TapsGrads {
  at::Tensor gin, gw, gp, gb;
  std::array<bool, 4> mask;
  at::MemoryFormat gin_format;
  bool taps_written = false;
  TapsGrads(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions, std::array<bool, 4> mask_,
            bool strided_writes = false)
      : mask(mask_), gin_format(taps_memory_format(input)) {
    if (!mask[0]) gin = at::empty({0}, input.options());
    else if (strided_writes) gin = at::empty(input.sizes(), input.options().memory_format(gin_format));
    else gin = at::zeros(input.sizes(), input.options());
    const auto acc = weight.options().dtype(acc_dtype(input.scalar_type()));
    gw = at::empty(mask[1] ? weight.sizes() : at::IntArrayRef{0}, acc);
    gp = at::empty(mask[2] ? positions.sizes() : at::IntArrayRef{0}, acc);
  }
  bool want_taps() const { return mask[1] || mask[2]; }
  // The caller runs a kernel that writes every requested weight and position gradient entry.
  template <typename scalar_t, typename acc_t>
  void bind_taps(TapsArgs<scalar_t, acc_t>& a, bool two_d) {
    taps_written = true;
    a.grad_weight = mask[1] ? gw.data_ptr<acc_t>() : nullptr;
    acc_t* p = mask[2] ? gp.data_ptr<acc_t>() : nullptr;
    a.grad_pos_h = two_d ? p : nullptr;
    a.grad_pos_w = p == nullptr ? nullptr : p + (two_d ? a.C * a.K : 0);
  }
  // The caller runs a kernel that writes the bias gradient (C) in the accumulation type.
  template <typename acc_t>
  acc_t* bind_bias(const at::Tensor& weight) {
    gb = at::empty({weight.size(0)}, weight.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    return gb.template data_ptr<acc_t>();
  }
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> finish(const at::Tensor& grad_output,
                                                                    const at::Tensor& weight,
                                                                    const at::Tensor& positions) {
    if (!taps_written) {  // no outputs: the asked gradients are zero
      if (mask[1]) gw.zero_();
      if (mask[2]) gp.zero_();
    }
    if (mask[3] && !gb.defined()) {
      std::vector<int64_t> sum_dims = {0};
      for (int64_t d = 2; d < grad_output.dim(); ++d) sum_dims.push_back(d);
      gb = grad_output.sum(sum_dims, false, gw.scalar_type());
    }
    return {mask[0] ? in_memory_format(gin, gin_format) : gin,
            mask[1] ? gw.to(weight.scalar_type()) : at::empty({0}, weight.options()),
            mask[2] ? gp.to(positions.scalar_type()) : at::empty({0}, positions.options()),
            mask[3] ? gb.to(weight.scalar_type()) : at::empty({0}, weight.options())};
  }
};

// A tap-convolution backward's start, for every engine: the arguments checked, the inputs in the engines'
// layout, the output gradient in the input's dtype, and the gradient buffers of the mask.
struct TapsBackward {
  int interp;
  TapsInputs in;
  at::Tensor g;
  TapsGrads grads;
  TapsBackward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
               const at::Tensor& positions, at::IntArrayRef window, at::IntArrayRef stride, at::IntArrayRef padding,
               c10::string_view interpolation, std::array<bool, 4> mask)
      : interp(checked_interp(grad_output, input, weight, positions, window, stride, padding, interpolation)),
        in(input, weight, positions, c10::nullopt, /*keep_input_layout=*/true),
        g(grad_output.to(input.scalar_type())),
        grads(input, weight, positions, mask, /*strided_writes=*/true) {}

 private:
  static int checked_interp(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                            const at::Tensor& positions, at::IntArrayRef window, at::IntArrayRef stride,
                            at::IntArrayRef padding, c10::string_view interpolation) {
    const int interp = parse_interp(std::string(interpolation));
    check_taps_backward_args(grad_output, input, weight, positions, window, stride, padding, interp);
    return interp;
  }
};

}  // namespace dcls_convert
