// Autograd of the compiled ops, in C++: the forward saves only its inputs (weight, positions, sigma, and the input
// of the tap convolution where its weight or positions learn: the input gradient reads only the output gradient and
// the taps) and the backward op computes only the gradients autograd asks for. Written here rather
// than with torch.library.register_autograd because its Python wrapper doubled the op's host time
// (benchmarks/bench_host.py on the CPU VM: forward 50 -> 25 us, forward + backward 148 -> 97 us), and a converted
// ConvNeXt-T training step with AMP on an H200 is bound by the host queueing its work.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>
#include <vector>

namespace dcls_convert {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The backward ops have no derivative of their own: with create_graph=True autograd would silently treat them as
// constants (zero second-order gradients), so refuse with the way out instead. torch.compile traces the backward
// with grad mode on under its fake/functional dispatch modes (a Python mode in the thread's dispatch keys): not
// refused there. Tensor subclasses in eager carry the Python key on the tensor, not in the thread: refused.
void refuse_double_backward(const char* op) {
  TORCH_CHECK(!at::GradMode::is_enabled() || c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::Python),
              "dcls_convert.", op,
              ": gradients of gradients (create_graph=True, e.g. a gradient penalty) are not implemented by the "
              "compiled ops. Set DCLS_CONVERT_FORCE_REFERENCE=1 before importing dcls_convert to run the "
              "pure-PyTorch reference ops, which are differentiable twice.");
}

// The ops' C++ signatures (registration.cpp holds their schemas), and a handle per op looked up once.
using TapsConvSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const std::optional<at::Tensor>&, c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef,
                               c10::string_view);
using TapsConvBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::IntArrayRef, c10::IntArrayRef,
    c10::IntArrayRef, c10::string_view, std::array<bool, 4>);
using ConstructSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                c10::IntArrayRef, c10::string_view, double);
using ConstructBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::IntArrayRef,
    c10::string_view, double, std::array<bool, 3>);

template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

const c10::TypedOperatorHandle<TapsConvSig>& taps_conv_op() {
  static const auto op = find_op<TapsConvSig>("dcls_convert::taps_conv");
  return op;
}
const c10::TypedOperatorHandle<TapsConvBackwardSig>& taps_conv_backward_op() {
  static const auto op = find_op<TapsConvBackwardSig>("dcls_convert::taps_conv_backward");
  return op;
}
const c10::TypedOperatorHandle<ConstructSig>& construct_op() {
  static const auto op = find_op<ConstructSig>("dcls_convert::construct");
  return op;
}
const c10::TypedOperatorHandle<ConstructBackwardSig>& construct_backward_op() {
  static const auto op = find_op<ConstructBackwardSig>("dcls_convert::construct_backward");
  return op;
}

class TapsConvFunction : public torch::autograd::Function<TapsConvFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const at::Tensor& positions, const std::optional<at::Tensor>& bias,
                            c10::IntArrayRef window, c10::IntArrayRef stride, c10::IntArrayRef padding,
                            c10::string_view interpolation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    // Fixed taps (bloom's blur; a frozen layer) need no input in the backward: keeping it alive until then would
    // hold one more activation per layer than the dense convolution does.
    const bool keep_input = weight.requires_grad() || positions.requires_grad();
    ctx->save_for_backward({keep_input ? input : at::Tensor(), weight, positions});
    if (!keep_input) {
      ctx->saved_data["input_sizes"] = input.sizes().vec();
      ctx->saved_data["input_strides"] = input.strides().vec();
      ctx->saved_data["input_dtype"] = static_cast<int64_t>(input.scalar_type());
    }
    ctx->saved_data["window"] = window.vec();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["interpolation"] = std::string(interpolation);
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return taps_conv_op().call(input, weight, positions, bias, window, stride, padding, interpolation);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    refuse_double_backward("taps_conv");
    const auto saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    // needs_input_grad counts the tensor inputs only: input, weight, positions, then bias when it was given.
    const std::array<bool, 4> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2),
                                      has_bias && ctx->needs_input_grad(3)};
    const auto window = ctx->saved_data["window"].toIntVector();
    const auto stride = ctx->saved_data["stride"].toIntVector();
    const auto padding = ctx->saved_data["padding"].toIntVector();
    const std::string interpolation = ctx->saved_data["interpolation"].toStringRef();
    at::Tensor input = saved[0];
    if (!input.defined()) {  // its shape, layout and dtype only: the weight and position gradients are not asked for
      const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["input_dtype"].toInt());
      input = at::empty_strided(ctx->saved_data["input_sizes"].toIntVector(),
                                ctx->saved_data["input_strides"].toIntVector(), grads[0].options().dtype(dtype));
    }
    auto [gx, gw, gp, gb] = taps_conv_backward_op().call(grads[0], input, saved[1], saved[2], window, stride,
                                                         padding, interpolation, mask);
    return {mask[0] ? gx : at::Tensor(), mask[1] ? gw : at::Tensor(), mask[2] ? gp : at::Tensor(),
            mask[3] ? gb : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class ConstructFunction : public torch::autograd::Function<ConstructFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& weight, const at::Tensor& positions,
                            const std::optional<at::Tensor>& sigma, c10::IntArrayRef window,
                            c10::string_view interpolation, double sigma_min) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const bool has_sigma = sigma.has_value() && sigma->defined();
    ctx->save_for_backward({weight, positions, has_sigma ? *sigma : at::Tensor()});
    ctx->saved_data["window"] = window.vec();
    ctx->saved_data["interpolation"] = std::string(interpolation);
    ctx->saved_data["sigma_min"] = sigma_min;
    ctx->saved_data["has_sigma"] = has_sigma;
    return construct_op().call(weight, positions, sigma, window, interpolation, sigma_min);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    refuse_double_backward("construct");
    const auto saved = ctx->get_saved_variables();
    const bool has_sigma = ctx->saved_data["has_sigma"].toBool();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      has_sigma && ctx->needs_input_grad(2)};
    const auto window = ctx->saved_data["window"].toIntVector();
    const std::string interpolation = ctx->saved_data["interpolation"].toStringRef();
    const std::optional<at::Tensor> sigma = has_sigma ? std::optional<at::Tensor>(saved[2]) : std::nullopt;
    auto [gw, gp, gs] = construct_backward_op().call(grads[0], saved[0], saved[1], sigma, window, interpolation,
                                                     ctx->saved_data["sigma_min"].toDouble(), mask);
    return {mask[0] ? gw : at::Tensor(), mask[1] ? gp : at::Tensor(), mask[2] ? gs : at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

at::Tensor taps_conv_autograd(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                              const std::optional<at::Tensor>& bias, c10::IntArrayRef window, c10::IntArrayRef stride,
                              c10::IntArrayRef padding, c10::string_view interpolation) {
  return TapsConvFunction::apply(input, weight, positions, bias, window, stride, padding, interpolation);
}

at::Tensor construct_autograd(const at::Tensor& weight, const at::Tensor& positions,
                              const std::optional<at::Tensor>& sigma, c10::IntArrayRef window,
                              c10::string_view interpolation, double sigma_min) {
  return ConstructFunction::apply(weight, positions, sigma, window, interpolation, sigma_min);
}

}  // namespace
}  // namespace dcls_convert

TORCH_LIBRARY_IMPL(dcls_convert, Autograd, m) {
  m.impl("taps_conv", &dcls_convert::taps_conv_autograd);
  m.impl("construct", &dcls_convert::construct_autograd);
}
