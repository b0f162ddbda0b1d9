"""A dense kernel <-> the dilated kernel with zero holes (the PyTorch-forums thread "Expand dense kernel into a dilated one with zero holes"), for any number of spatial dims."""
from __future__ import annotations

from typing import Sequence

import torch

from .geometry import per_axis

__all__ = ["dilate_kernel", "undilate_kernel", "dilated_extent"]


def dilated_extent(kernel_size: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
    """L = k + (k - 1)(d - 1) per axis."""
    return tuple(k + (k - 1) * (d - 1) for k, d in zip(kernel_size, dilation))


def dilate_kernel(weight: torch.Tensor, dilation: int | Sequence[int]) -> torch.Tensor:
    """(Cout, Cin/g, *k) -> (Cout, Cin/g, *L) with the taps every `dilation` pixels and zeros between.

    `F.convNd(x, dilate_kernel(w, d))` equals `F.convNd(x, w, dilation=d)` (same padding and stride).

    Example:
        >>> dilate_kernel(torch.ones(1, 1, 3), 2)
        tensor([[[1., 0., 1., 0., 1.]]])
    """
    ndim = weight.dim() - 2
    dil = per_axis(dilation, ndim, "dilation", "dilate_kernel")
    out = weight.new_zeros((*weight.shape[:2], *dilated_extent(weight.shape[2:], dil)))
    out[(slice(None), slice(None), *(slice(None, None, d) for d in dil))] = weight
    return out


def undilate_kernel(weight: torch.Tensor, dilation: int | Sequence[int]) -> torch.Tensor:
    """Inverse of `dilate_kernel`: keeps every `dilation`-th tap (the holes are dropped, not checked)."""
    ndim = weight.dim() - 2
    dil = per_axis(dilation, ndim, "dilation", "undilate_kernel")
    for L, d in zip(weight.shape[2:], dil):
        if (L - 1) % d:
            raise ValueError(f"a dilated extent of {L} is not k + (k-1)(d-1) for dilation {d}")
    return weight[(slice(None), slice(None), *(slice(None, None, d) for d in dil))].clone()
