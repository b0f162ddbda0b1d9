// Argument checks shared by the CPU, CUDA and emulation front functions. User-facing validation
// with module names lives in Python; these guard the op boundary with short, specific messages.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <algorithm>
#include <string>

#include "dcls_convert/formats.h"

namespace dcls_convert {

// Geometry limits, checked before any size is derived from them: every product the engines form then fits
// in int64, and no argument (or recipe file) can make an op allocate without bound. The Python modules enforce
// the same per-axis limit (methods/base.py, MAX_GEOMETRY).
constexpr int64_t kMaxGeometry = int64_t(1) << 24;     // window, stride and padding, per axis
constexpr int64_t kMaxWindowCells = int64_t(1) << 24;  // window cells, all axes
constexpr int64_t kMaxPaddedPlane = int64_t(1) << 26;  // padded-plane elements allowed beyond 4x the input plane

inline void check_window(const char* op, at::IntArrayRef window) {
  int64_t cells = 1;
  for (size_t d = 0; d < window.size(); ++d) {
    TORCH_CHECK(window[d] >= 1 && window[d] <= kMaxGeometry, op, ": window[", d, "] must be in [1, 2^24], got ",
                window[d]);
    cells *= window[d];
    TORCH_CHECK(cells <= kMaxWindowCells, op, ": window ", window, " has more than 2^24 cells");
  }
}

inline void check_taps_geometry(const at::Tensor& x, at::IntArrayRef window, at::IntArrayRef stride,
                                at::IntArrayRef padding) {
  check_window("taps_conv", window);
  long double padded = 1, plane = 1;  // products of tensor sizes may exceed int64
  for (size_t d = 0; d < window.size(); ++d) {
    TORCH_CHECK(stride[d] >= 1 && stride[d] <= kMaxGeometry, "taps_conv: stride[", d, "] must be in [1, 2^24], got ",
                stride[d]);
    TORCH_CHECK(padding[d] >= 0 && padding[d] <= kMaxGeometry, "taps_conv: padding[", d,
                "] must be in [0, 2^24], got ", padding[d]);
    TORCH_CHECK(x.size(2 + d) + 2 * padding[d] >= window[d], "taps_conv: padded input (", x.size(2 + d), " + 2 x ",
                padding[d], ") smaller than the window ", window[d], " on axis ", d);
    padded *= static_cast<long double>(x.size(2 + d) + 2 * padding[d]);
    plane *= static_cast<long double>(x.size(2 + d));
  }
  TORCH_CHECK(padded <= std::max<long double>(kMaxPaddedPlane, 4 * plane), "taps_conv: padding ", padding,
              " makes a padded plane of ", static_cast<double>(padded), " elements from a plane of ",
              static_cast<double>(plane), " (at most max(2^26, 4x) is allowed)");
}

inline void check_construct_args(const at::Tensor& weight, const at::Tensor& positions,
                                 const c10::optional<at::Tensor>& sigma, at::IntArrayRef window, int interp) {
  const int64_t D = static_cast<int64_t>(window.size());
  TORCH_CHECK(D >= 1 && D <= 3, "construct: window must have 1 to 3 dims, got ", D);
  check_window("construct", window);
  TORCH_CHECK(weight.dim() == 3, "construct: weight must be (Cout, Cin/groups, K), got ", weight.sizes());
  TORCH_CHECK(positions.dim() == 4 && positions.size(0) == D && positions.size(1) == weight.size(0) &&
                  positions.size(2) == weight.size(1) && positions.size(3) == weight.size(2),
              "construct: positions must be (", D, ", ", weight.sizes(), "), got ", positions.sizes());
  TORCH_CHECK(positions.device() == weight.device(), "construct: positions and weight on different devices");
  TORCH_CHECK(at::isFloatingType(weight.scalar_type()) && at::isFloatingType(positions.scalar_type()),
              "construct: weight and positions must be floating point");
  if (interp == kGaussian) {
    TORCH_CHECK(sigma.has_value() && sigma->sizes() == positions.sizes(),
                "construct: gaussian interpolation needs sigma shaped like positions");
    TORCH_CHECK(sigma->device() == weight.device(), "construct: sigma and weight on different devices");
  }
}

inline void check_taps_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& positions,
                            at::IntArrayRef window, at::IntArrayRef stride, at::IntArrayRef padding, int interp,
                            const c10::optional<at::Tensor>& bias = c10::nullopt) {
  const int64_t D = static_cast<int64_t>(window.size());
  TORCH_CHECK(D == 1 || D == 2, "taps_conv: 1-D or 2-D windows only, got ", D, " dims");
  TORCH_CHECK(interp != kGaussian, "taps_conv: gaussian runs through construct + dense conv");
  TORCH_CHECK(x.dim() == D + 2, "taps_conv: input must be (N, C, spatial...) with ", D, " spatial dims, got ", x.sizes());
  TORCH_CHECK(stride.size() == static_cast<size_t>(D) && padding.size() == static_cast<size_t>(D),
              "taps_conv: stride and padding need ", D, " values");
  TORCH_CHECK(weight.dim() == 3 && weight.size(0) == x.size(1) && weight.size(1) == 1,
              "taps_conv: depthwise weight must be (C, 1, K) with C = ", x.size(1), ", got ", weight.sizes());
  TORCH_CHECK(positions.dim() == 4 && positions.size(0) == D && positions.size(1) == weight.size(0) &&
                  positions.size(2) == 1 && positions.size(3) == weight.size(2),
              "taps_conv: positions must be (", D, ", C, 1, K), got ", positions.sizes());
  // 16-bit inputs may come with float32 weights (a layer under autocast keeps them: no casts)
  TORCH_CHECK(x.scalar_type() == weight.scalar_type() ||
                  (weight.scalar_type() == at::kFloat && at::toOpMathType(x.scalar_type()) == at::kFloat),
              "taps_conv: input dtype ", x.scalar_type(), " does not match weight dtype ", weight.scalar_type(),
              " (16-bit inputs also take float32 weights)");
  TORCH_CHECK(x.device() == weight.device() && positions.device() == weight.device(),
              "taps_conv: input, weight and positions must be on one device");
  check_taps_geometry(x, window, stride, padding);
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == x.size(1), "taps_conv: bias must be (C,) with C = ", x.size(1),
                ", got ", bias->sizes());
    TORCH_CHECK(bias->device() == x.device(), "taps_conv: bias on ", bias->device(), ", input on ", x.device());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type() || bias->scalar_type() == weight.scalar_type(),
                "taps_conv: bias dtype ", bias->scalar_type(), " matches neither the input's nor the weight's");
  }
}

// Autograd hands the backward ops a gradient of the right shape; direct torch.ops calls may not, and a
// wrong one would be read out of bounds.
inline void check_grad(const char* op, const at::Tensor& grad, at::IntArrayRef expected, const at::Device& device) {
  TORCH_CHECK(grad.sizes() == expected, op, ": gradient must be ", expected, ", got ", grad.sizes());
  TORCH_CHECK(grad.device() == device, op, ": gradient on ", grad.device(), ", inputs on ", device);
}

inline void check_construct_backward_args(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& positions,
                                          const c10::optional<at::Tensor>& sigma, at::IntArrayRef window, int interp) {
  check_construct_args(weight, positions, sigma, window, interp);
  check_grad("construct_backward", grad, construct_output_size(weight, window), weight.device());
}

inline void check_taps_backward_args(const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& weight,
                                     const at::Tensor& positions, at::IntArrayRef window, at::IntArrayRef stride,
                                     at::IntArrayRef padding, int interp) {
  check_taps_args(x, weight, positions, window, stride, padding, interp);
  check_grad("taps_conv_backward", grad_output, taps_output_size(x, window, stride, padding), x.device());
}

}  // namespace dcls_convert
