"""Fake (meta) kernels so torch.compile and torch.export trace the compiled ops without graph breaks.
Registered only when the compiled library loaded (fakes for ops that do not exist would fail)."""
from __future__ import annotations

import torch

__all__ = ["register_fakes"]


def _out_size(size, window, stride, padding):
    return [(s + 2 * p - L) // st + 1 for s, L, st, p in zip(size, window, stride, padding)]


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """The compiled ops' rule (kernels/include/dcls_convert/checks.h): channels_last in, channels_last out."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def register_fakes() -> None:
    lib = "dcls_convert::"

    @torch.library.register_fake(lib + "dcls_construct")
    def _construct(weight, positions, sigma, window, interpolation, sigma_min):
        return weight.new_empty((weight.shape[0], weight.shape[1], *window))

    @torch.library.register_fake(lib + "dcls_construct_backward")
    def _construct_backward(grad, weight, positions, sigma, window, interpolation, sigma_min, output_mask):
        gw = weight.new_empty(weight.shape if output_mask[0] else (0,))
        gp = positions.new_empty(positions.shape if output_mask[1] else (0,))
        if output_mask[2] and sigma is not None:
            gs = sigma.new_empty(sigma.shape)
        else:
            gs = positions.new_empty(positions.shape if output_mask[2] else (0,))
        return gw, gp, gs

    @torch.library.register_fake(lib + "taps_conv")
    def _taps(input, weight, positions, bias, window, stride, padding, interpolation):
        shape = (input.shape[0], input.shape[1], *_out_size(input.shape[2:], window, stride, padding))
        return torch.empty(shape, dtype=input.dtype, device=input.device, memory_format=_memory_format(input))

    @torch.library.register_fake(lib + "taps_conv_backward")
    def _taps_backward(grad_output, input, weight, positions, window, stride, padding, interpolation, output_mask):
        return (
            torch.empty(input.shape, dtype=input.dtype, device=input.device, memory_format=_memory_format(input))
            if output_mask[0] else input.new_empty((0,)),
            weight.new_empty(weight.shape if output_mask[1] else (0,)),
            positions.new_empty(positions.shape if output_mask[2] else (0,)),
            weight.new_empty((weight.shape[0],) if output_mask[3] else (0,)),
        )
