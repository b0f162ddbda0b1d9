"""Pure-PyTorch implementation of every op: the test oracle and the fallback when the compiled library is
missing. Memory is O(K * L) per (out, in) pair (per-axis factors contracted by einsum), not the
O(K * prod(L)) broadcast of the reference DCLS library."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["construct", "taps_conv", "axis_factors"]

_EINSUM = {1: "oik,oika->oia", 2: "oik,oika,oikb->oiab", 3: "oik,oika,oikb,oikc->oiabc"}


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def axis_factors(positions, sigma, window, interpolation, sigma_min):
    """Per-axis interpolation weights, one (Cout, Cin/g, K, L_d) tensor per axis d."""
    acc = positions.dtype
    factors = []
    for d, L in enumerate(window):
        t = torch.arange(L, device=positions.device, dtype=acc)
        raw = positions[d] + (L // 2)
        # Clamp with the gradient passing on the closed range [0, L-1] (torch.clamp's own backward stops
        # it at the bounds, which would pin a tap clamped onto the window edge there for good).
        inside = (raw >= 0) & (raw <= L - 1)
        u = torch.where(inside, raw, raw.detach().clamp(0, L - 1)).unsqueeze(-1)
        if interpolation == "bilinear":
            cell = torch.floor(u).detach()
            frac = u - cell
            factors.append((1 - frac) * (t == cell) + frac * (t == cell + 1))
        elif interpolation == "nearest":
            factors.append((t == torch.floor(u.detach() + 0.5)).to(acc))
        elif interpolation == "gaussian":
            s = sigma[d].abs().unsqueeze(-1) + sigma_min
            sq = (t - u) ** 2
            # shift by the smallest squared distance (cancels in the normalisation; avoids 0/0 for narrow s)
            g = torch.exp(-(sq - sq.detach().amin(-1, keepdim=True)) / (2 * s * s))
            factors.append(g / g.sum(-1, keepdim=True))
        else:
            raise ValueError(f"interpolation must be 'bilinear', 'gaussian' or 'nearest', got {interpolation!r}")
    return factors


def construct(weight, positions, sigma, window: Sequence[int], interpolation: str = "bilinear",
                   sigma_min: float = 0.27):
    acc = _acc_dtype(weight.dtype)
    sig = sigma.to(acc) if sigma is not None else None
    factors = axis_factors(positions.to(acc), sig, list(window), interpolation, sigma_min)
    out = torch.einsum(_EINSUM[len(window)], weight.to(acc), *factors)
    return out.to(weight.dtype)


def taps_conv(x, weight, positions, bias, window, stride, padding, interpolation: str = "bilinear"):
    """The dense oracle: F.convNd(x, construct(...), groups=C)."""
    kernel = construct(weight, positions, None, window, interpolation)
    conv = {1: F.conv1d, 2: F.conv2d}[len(window)]
    return conv(x, kernel, bias, tuple(stride), tuple(padding), 1, x.shape[1])
