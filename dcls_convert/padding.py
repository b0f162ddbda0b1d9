"""Padding as nn.ConvNd accepts it (ints, tuples, "same", "valid") and padding modes, resolved once for
every module kind: the zero-padded ops take symmetric ints, anything else is padded with F.pad first."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["PADDING_MODES", "normalize_padding", "side_pads", "pad_input"]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def normalize_padding(padding, ndim: int, owner: str = "module") -> str | tuple[int, ...]:
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"{owner}: padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
        return padding
    try:
        vals = (padding,) * ndim if isinstance(padding, int) else tuple(padding)
    except TypeError:
        vals = ()
    if len(vals) != ndim or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 2**24 for v in vals):
        raise ValueError(f"{owner}: padding must be an int in [0, 2**24] or {ndim} of them, got {padding!r}")
    return tuple(vals)


def side_pads(padding: str | tuple[int, ...], window: Sequence[int]) -> list[tuple[int, int]]:
    """(before, after) per axis; "same" splits L - 1 as nn.ConvNd does (the extra pixel after)."""
    if padding == "valid":
        return [(0, 0)] * len(window)
    if padding == "same":
        return [((L - 1) // 2, L - 1 - (L - 1) // 2) for L in window]
    return [(p, p) for p in padding]


def pad_input(x: torch.Tensor, pads: list[tuple[int, int]], padding_mode: str) -> tuple[torch.Tensor, list[int]]:
    """Returns (x, symmetric zero padding for the op): pads with F.pad where the op cannot."""
    if padding_mode != "zeros":
        flat = [v for before, after in reversed(pads) for v in (before, after)]
        return F.pad(x, flat, mode=padding_mode), [0] * len(pads)
    if all(b == a for b, a in pads):
        return x, [b for b, _ in pads]
    extra = [v for b, a in reversed(pads) for v in (0, a - b)]  # "same" with an even window
    return F.pad(x, extra), [b for b, _ in pads]
