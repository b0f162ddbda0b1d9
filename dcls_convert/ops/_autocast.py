"""Autocast policy of the ops, in one place.

- taps_conv is a convolution: under autocast it runs as F.convNd does, input, weight and bias in the autocast
  dtype (float64 left alone, as autocast leaves it); positions keep their own dtype (sub-pixel offsets need
  float32 precision).
- construct builds a kernel from parameters: it runs in the parameters' dtype, and the convolution that consumes
  the kernel casts it as autocast casts any conv weight (so the interpolation itself is never done in 16 bits).
"""
from __future__ import annotations

import torch

__all__ = ["cast_like_conv"]


def cast_like_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """(x, weight, bias) as F.convNd sees them under the autocast state of x's device."""
    if not torch.is_autocast_enabled(x.device.type):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(x.device.type)
    return tuple(t.to(dtype) if t is not None and t.dtype != torch.float64 else t for t in (x, weight, bias))
