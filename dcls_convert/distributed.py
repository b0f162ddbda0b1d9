"""Helpers for sharded training: FSDP2 (`fully_shard`) needs modules that share a parameter (positions
shared per stage) in one group."""
from __future__ import annotations

import torch.nn as nn

from .methods.base import ConvertedConv

__all__ = ["shard_groups"]


def shard_groups(model: nn.Module) -> list[list[nn.Module]]:
    """Converted modules grouped so that modules sharing positions are together, each module once.

    Example:
        >>> from torch.distributed.fsdp import fully_shard
        >>> for group in shard_groups(model):
        ...     fully_shard(group)
        >>> fully_shard(model)
    """
    groups: dict[int, list[nn.Module]] = {}
    seen: set[int] = set()
    for m in model.modules():
        if not isinstance(m, ConvertedConv) or id(m) in seen:
            continue
        seen.add(id(m))
        pos = getattr(m, "positions", None)
        groups.setdefault(id(pos) if pos is not None else id(m), []).append(m)
    return list(groups.values())
