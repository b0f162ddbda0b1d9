"""The op front-end: one typed function per op. Each runs the compiled op when it has a kernel for the
tensor's device, else the pure-PyTorch reference (same semantics, see reference.py)."""
from __future__ import annotations

from typing import Sequence

import torch

from . import reference
from ._autocast import cast_for_taps
from ._library import backend_info, compiled_for, has_compiled_ops

__all__ = ["construct", "taps_conv", "backend_info", "has_compiled_ops", "compiled_for", "tuned_paths",
           "clear_tuned_paths"]

if has_compiled_ops():  # (autograd is registered by the compiled library itself: kernels/autograd.cpp)
    from ._fake import register_fakes

    register_fakes()


def construct(weight: torch.Tensor, positions: torch.Tensor, sigma: torch.Tensor | None,
                window: Sequence[int], interpolation: str = "bilinear", sigma_min: float = 0.27) -> torch.Tensor:
    """Dense kernel (Cout, Cin/g, *window) from K taps per (out, in) pair.

    Args:
        weight: (Cout, Cin/g, K) tap weights.
        positions: (D, Cout, Cin/g, K) offsets from the window centre L_d // 2, in pixels; axis d follows the
            weight layout (d = 0 is height for 2-D). Clamped to the window inside the op.
        sigma: (D, Cout, Cin/g, K) for "gaussian" (standard deviation |sigma| + sigma_min), else None.
        window: the window size L_d per axis.

    Example: in a 5x5 window (centre 2), a tap at positions[:, o, i, k] = (-1.0, 0.5) sits at grid (1.0, 2.5):
    row 1, half its weight in column 2 and half in column 3 (bilinear). At (-1.0, 2.5) it would sit at column
    4.5, outside the window, so the op clamps it to column 4.
    """
    window = [int(L) for L in window]
    if compiled_for("construct", weight.device.type):
        return torch.ops.dcls_convert.construct(weight, positions, sigma, window, interpolation, float(sigma_min))
    return reference.construct(weight, positions, sigma, window, interpolation, sigma_min)


def taps_conv(x: torch.Tensor, weight: torch.Tensor, positions: torch.Tensor, bias: torch.Tensor | None,
              window: Sequence[int], stride: Sequence[int], padding: Sequence[int],
              interpolation: str = "bilinear") -> torch.Tensor:
    """Depthwise convolution (groups = C) with a K-tap kernel that never builds the dense kernel.

    Equal to F.convNd(x, construct(weight, positions, None, window, interpolation), bias, stride, padding,
    groups=C); 1-D and 2-D, interpolation "bilinear" or "nearest"; zero padding (other modes pad first).
    """
    window, stride, padding = ([int(v) for v in seq] for seq in (window, stride, padding))
    compiled = compiled_for("taps_conv", x.device.type)
    x, weight, bias = cast_for_taps(x, weight, bias, compiled)
    if compiled:
        return torch.ops.dcls_convert.taps_conv(x, weight, positions, bias, window, stride, padding, interpolation)
    return reference.taps_conv(x, weight, positions, bias, window, stride, padding, interpolation)


def tuned_paths() -> dict[str, str]:
    """The kernels each tuned part of a CUDA tap convolution runs: {what the choice depends on: path}.

    With tuning on (``DCLS_CONVERT_CUDA_TUNE=on``, or ``=benchmark`` with ``torch.backends.cudnn.benchmark = True``
    as timm's train.py sets it), the first call of each shape times every path that applies to the part
    (forward, input gradient, weight/position gradients) on the device and keeps the fastest: "plane" or "mma"
    (tensor cores) or "tables". Keys name the part, device, dtype, sizes and memory formats, e.g.
    "forward cuda:0 BFloat16 N64 C768 7x7->7x7 window 17x17 stride 1x1 padding 8x8 K34 bilinear cl cl".
    Empty without the compiled library, on CPU, or before any tuned call.
    """
    if not has_compiled_ops():
        return {}
    return dict(entry.split(" -> ") for entry in torch.ops.dcls_convert.tuned_paths())


def clear_tuned_paths() -> None:
    """Forgets the tuned choices: the next call of each shape times its paths again."""
    if has_compiled_ops():
        torch.ops.dcls_convert.clear_tuned_paths()
