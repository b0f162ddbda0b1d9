"""Autograd for the compiled ops: forward saves only its inputs (weight, positions, sigma, and the input
for the tap convolution), and the backward op computes only the gradients autograd asks for."""
from __future__ import annotations

import torch

__all__ = ["register_autograd"]


def _refuse_double_backward(op: str) -> None:
    """The backward ops have no derivative of their own: with create_graph=True autograd would silently treat
    them as constants (zero second-order gradients), so refuse with the way out instead."""
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        raise RuntimeError(
            f"dcls_convert.{op}: gradients of gradients (create_graph=True, e.g. a gradient penalty) are not "
            "implemented by the compiled ops. Set DCLS_CONVERT_FORCE_REFERENCE=1 before importing dcls_convert "
            "to run the pure-PyTorch reference ops, which are differentiable twice.")


def _construct_setup(ctx, inputs, output):
    weight, positions, sigma, window, interpolation, sigma_min = inputs
    ctx.save_for_backward(weight, positions, sigma)
    ctx.args = (window, interpolation, sigma_min)


def _construct_backward(ctx, grad):
    _refuse_double_backward("construct")
    weight, positions, sigma = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
    gw, gp, gs = torch.ops.dcls_convert.construct_backward(grad, weight, positions, sigma, *ctx.args, mask)
    return gw if mask[0] else None, gp if mask[1] else None, gs if mask[2] else None, None, None, None


def _taps_setup(ctx, inputs, output):
    x, weight, positions, bias, window, stride, padding, interpolation = inputs
    ctx.save_for_backward(x, weight, positions)
    ctx.args = (window, stride, padding, interpolation)
    ctx.has_bias = bias is not None


def _taps_backward(ctx, grad):
    _refuse_double_backward("taps_conv")
    x, weight, positions = ctx.saved_tensors
    need = ctx.needs_input_grad
    mask = [need[0], need[1], need[2], ctx.has_bias and need[3]]
    gx, gw, gp, gb = torch.ops.dcls_convert.taps_conv_backward(grad, x, weight, positions, *ctx.args, mask)
    return (gx if mask[0] else None, gw if mask[1] else None, gp if mask[2] else None, gb if mask[3] else None,
            None, None, None, None)


def register_autograd() -> None:
    torch.library.register_autograd("dcls_convert::construct", _construct_backward, setup_context=_construct_setup)
    torch.library.register_autograd("dcls_convert::taps_conv", _taps_backward, setup_context=_taps_setup)
