"""densify(model): every converted module -> its exactly equivalent plain nn.ConvNd (for deployment)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .discovery import find_sites, swap
from .methods.base import ConvertedConv

__all__ = ["densify"]


def densify(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Replace every DCLS/bloom/partial module by `module.to_conv()`; outputs are unchanged (to float
    rounding), no dcls_convert module remains, and the result traces/exports like any plain model."""
    target = model if inplace else copy.deepcopy(model)
    if isinstance(target, ConvertedConv):
        return target.to_conv()
    for site in find_sites(target, lambda m: isinstance(m, ConvertedConv)):
        conv = site.module.to_conv()
        if not torch.isfinite(conv.weight).all():
            raise ValueError(f"densify: {site.name} has a non-finite kernel (NaN/Inf weights or positions)")
        conv.train(site.module.training)
        conv.requires_grad_(any(p.requires_grad for p in site.module.parameters()))
        swap(site, conv)
    return target
