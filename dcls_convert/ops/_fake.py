"""Fake (meta) kernels so torch.compile and torch.export trace the compiled ops without graph breaks.
Registered only when the compiled library loaded (fakes for ops that do not exist would fail)."""
from __future__ import annotations

import torch

__all__ = ["register_fakes"]


from ..geometry import MAX_GEOMETRY  # the compiled ops' limit per axis (kernels/include/dcls_convert/checks.h)


def _out_size(size, window, stride, padding):
    return [(s + 2 * p - L) // st + 1 for s, L, st, p in zip(size, window, stride, padding)]


def _check_window(op, window):
    cells = 1
    for d, L in enumerate(window):
        torch._check(1 <= L <= MAX_GEOMETRY, lambda: f"{op}: window[{d}] must be in [1, 2^24], got {L}")
        cells *= L
    torch._check(cells <= MAX_GEOMETRY, lambda: f"{op}: window {list(window)} has more than 2^24 cells")


def _check_taps(x, weight, positions, window, stride, padding, interpolation, bias=None):
    """The checks of check_taps_args (checks.h), so tracing fails where the compiled op would, with its words."""
    D = len(window)
    torch._check(D in (1, 2), lambda: f"taps_conv: 1-D or 2-D windows only, got {D} dims")
    torch._check(interpolation in ("bilinear", "nearest"),
                 lambda: f"taps_conv: interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
    torch._check(x.dim() == D + 2, lambda: f"taps_conv: input must be (N, C, spatial...) with {D} spatial dims, "
                                           f"got {tuple(x.shape)}")
    torch._check(len(stride) == D and len(padding) == D, lambda: f"taps_conv: stride and padding need {D} values")
    torch._check(weight.dim() == 3 and weight.shape[0] == x.shape[1] and weight.shape[1] == 1,
                 lambda: f"taps_conv: depthwise weight must be (C, 1, K) with C = {x.shape[1]}, got {tuple(weight.shape)}")
    torch._check(positions.dim() == 4 and tuple(positions.shape) == (D, weight.shape[0], 1, weight.shape[2]),
                 lambda: f"taps_conv: positions must be ({D}, C, 1, K), got {tuple(positions.shape)}")
    torch._check(x.dtype == weight.dtype or (weight.dtype == torch.float32 and x.dtype in (torch.float16, torch.bfloat16)),
                 lambda: f"taps_conv: input dtype {x.dtype} does not match weight dtype {weight.dtype} (16-bit inputs "
                         "also take float32 weights)")
    _check_window("taps_conv", window)
    for d in range(D):
        torch._check(1 <= stride[d] <= MAX_GEOMETRY, lambda: f"taps_conv: stride[{d}] must be in [1, 2^24], got {stride[d]}")
        torch._check(0 <= padding[d] <= MAX_GEOMETRY,
                     lambda: f"taps_conv: padding[{d}] must be in [0, 2^24], got {padding[d]}")
        torch._check(x.shape[2 + d] + 2 * padding[d] >= window[d],
                     lambda: f"taps_conv: padded input smaller than the window {window[d]} on axis {d}")
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == x.shape[1],
                     lambda: f"taps_conv: bias must be (C,) with C = {x.shape[1]}, got {tuple(bias.shape)}")
        torch._check(bias.dtype in (x.dtype, weight.dtype),
                     lambda: f"taps_conv: bias dtype {bias.dtype} matches neither the input's nor the weight's")


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """The compiled ops' rule (kernels/include/dcls_convert/checks.h): channels_last in, channels_last out."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def register_fakes() -> None:
    lib = "dcls_convert::"

    @torch.library.register_fake(lib + "construct")
    def _construct(weight, positions, sigma, window, interpolation, sigma_min):
        D = len(window)
        torch._check(1 <= D <= 3, lambda: f"construct: window must have 1 to 3 dims, got {D}")
        _check_window("construct", window)
        torch._check(weight.dim() == 3, lambda: f"construct: weight must be (Cout, Cin/g, K), got {tuple(weight.shape)}")
        torch._check(tuple(positions.shape) == (D, *weight.shape),
                     lambda: f"construct: positions must be ({D}, {tuple(weight.shape)}), got {tuple(positions.shape)}")
        return weight.new_empty((weight.shape[0], weight.shape[1], *window))

    @torch.library.register_fake(lib + "construct_backward")
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
        _check_taps(input, weight, positions, window, stride, padding, interpolation, bias)
        shape = (input.shape[0], input.shape[1], *_out_size(input.shape[2:], window, stride, padding))
        return torch.empty(shape, dtype=input.dtype, device=input.device, memory_format=_memory_format(input))

    @torch.library.register_fake(lib + "taps_conv_backward")
    def _taps_backward(grad_output, input, weight, positions, window, stride, padding, interpolation, output_mask):
        _check_taps(input, weight, positions, window, stride, padding, interpolation)
        return (
            torch.empty(input.shape, dtype=input.dtype, device=input.device, memory_format=_memory_format(input))
            if output_mask[0] else input.new_empty((0,)),
            weight.new_empty(weight.shape if output_mask[1] else (0,)),
            positions.new_empty(positions.shape if output_mask[2] else (0,)),
            weight.new_empty((weight.shape[0],) if output_mask[3] else (0,)),
        )
