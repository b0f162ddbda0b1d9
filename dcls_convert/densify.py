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
    built = []  # every conv is built before the first swap: an error leaves the model untouched
    for site in find_sites(target, lambda m: isinstance(m, ConvertedConv)):
        conv = site.module.to_conv()
        if not torch.isfinite(conv.weight).all():
            raise ValueError(f"densify: {site.name} has a non-finite kernel (NaN/Inf weights or positions)")
        conv.train(site.module.training)
        # the kernel trains if any kernel parameter did; the bias keeps its own flag
        kernel_params = [p for n, p in site.module.named_parameters() if n != "bias"]
        conv.weight.requires_grad_(any(p.requires_grad for p in kernel_params))
        if conv.bias is not None and site.module.bias is not None:
            conv.bias.requires_grad_(site.module.bias.requires_grad)
        built.append((site, conv))
    for site, conv in built:
        swap(site, conv)
    return target
