"""Autocast policy of the ops, in one place.

- taps_conv is a convolution: under autocast its input runs in the autocast dtype as F.convNd's does (float64
  left alone, as autocast leaves it). The compiled op keeps float32 weight and bias as they are: it reads them
  once per call into float32 tables, so a cast would only cost a kernel launch each way (and round the taps to
  16 bits), and a converted network's AMP step on a GPU is bound by the host queueing launches. The pure-PyTorch
  reference casts them as F.convNd does. Positions keep their own dtype (sub-pixel offsets need float32).
- construct builds a kernel from parameters: it runs in the parameters' dtype, and the convolution that consumes
  the kernel casts it as autocast casts any conv weight (so the interpolation itself is never done in 16 bits).
"""
from __future__ import annotations

import torch

__all__ = ["cast_for_taps"]


def cast_for_taps(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, compiled: bool):
    """(x, weight, bias) for taps_conv under the autocast state of x's device: as F.convNd sees them, except that
    the compiled op (`compiled`) takes float32 weight and bias with a 16-bit input as they are."""
    if not torch.is_autocast_enabled(x.device.type):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(x.device.type)
    x = x.to(dtype) if x.dtype != torch.float64 else x
    keep = compiled and x.dtype in (torch.float16, torch.bfloat16)

    def cast(t):
        if t is None or t.dtype == torch.float64 or (keep and t.dtype == torch.float32):
            return t
        return t.to(dtype)
    return x, cast(weight), cast(bias)
