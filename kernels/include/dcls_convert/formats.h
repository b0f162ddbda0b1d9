// Conventions of the ops' outputs, shared by the CPU, CUDA and emulation front functions: interpolation names,
// accumulation dtypes, output sizes and memory formats (ops/_fake.py states the same rules for torch.compile).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <string>
#include <vector>

#include "dcls_convert/interpolation.h"

namespace dcls_convert {

inline int parse_interp(const std::string& name) {
  if (name == "bilinear") return kBilinear;
  if (name == "gaussian") return kGaussian;
  if (name == "nearest") return kNearest;
  TORCH_CHECK(false, "dcls_convert: interpolation must be 'bilinear', 'gaussian' or 'nearest', got '", name, "'");
}

// Positions and sigma run in the accumulation type (float32 for 16-bit weights) for precision.
inline at::ScalarType acc_dtype(at::ScalarType t) { return at::toOpMathType(t); }

inline std::vector<int64_t> construct_output_size(const at::Tensor& weight, at::IntArrayRef window) {
  std::vector<int64_t> shape = {weight.size(0), weight.size(1)};
  shape.insert(shape.end(), window.begin(), window.end());
  return shape;
}

// Memory format of the tap convolution's output and input gradient: channels_last when the input is, as for
// PyTorch's convolutions. ops/_fake.py applies the same rule.
inline at::MemoryFormat taps_memory_format(const at::Tensor& x) {
  const bool cl = x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  return cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// `t` in the memory format `fmt` (contiguous or 2-D channels_last), with exactly the strides at::empty gives
// that format, as the fake kernels predict (Tensor::contiguous(fmt) keeps NCHW strides on 1 x 1 planes).
inline at::Tensor in_memory_format(const at::Tensor& t, at::MemoryFormat fmt) {
  if (fmt == at::MemoryFormat::Contiguous) return t.contiguous();
  if (t.strides() == at::IntArrayRef(c10::get_channels_last_strides_2d(t.sizes()))) return t;
  return at::empty(t.sizes(), t.options().memory_format(fmt)).copy_(t);
}

inline std::vector<int64_t> taps_output_size(const at::Tensor& x, at::IntArrayRef window, at::IntArrayRef stride,
                                             at::IntArrayRef padding) {
  std::vector<int64_t> out = {x.size(0), x.size(1)};
  for (size_t d = 0; d < window.size(); ++d)
    out.push_back((x.size(2 + d) + 2 * padding[d] - window[d]) / stride[d] + 1);
  return out;
}

}  // namespace dcls_convert
