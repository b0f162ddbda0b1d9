"""Finds modules in a tree by walking named_modules(): every name a module is reachable under (aliases)
and every (parent, attribute) slot that holds it, so a swap reaches all of them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

__all__ = ["Site", "find_sites", "swap", "carry_hooks"]


@dataclass
class Site:
    module: nn.Module
    names: list[str] = field(default_factory=list)
    slots: list[tuple[nn.Module, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.names[0]


def find_sites(model: nn.Module, predicate: Callable[[nn.Module], bool]) -> list[Site]:
    """Sites of the modules below `model` that satisfy `predicate`, in first-seen order."""
    sites: dict[int, Site] = {}
    seen_slots: set[tuple[int, str]] = set()
    for parent_name, parent in model.named_modules(remove_duplicate=False):
        for attr, child in parent._modules.items():
            if child is None or not predicate(child):
                continue
            site = sites.setdefault(id(child), Site(child))
            name = f"{parent_name}.{attr}" if parent_name else attr
            if name not in site.names:
                site.names.append(name)
            if (id(parent), attr) not in seen_slots:
                seen_slots.add((id(parent), attr))
                site.slots.append((parent, attr))
    return list(sites.values())


def swap(site: Site, new: nn.Module) -> None:
    for parent, attr in site.slots:
        setattr(parent, attr, new)


_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


def carry_hooks(old: nn.Module, new: nn.Module) -> None:
    """Forward, pre-forward and backward hooks registered on the conv keep firing on its replacement: the new
    module shares the conv's hook dictionaries, so the handles the user holds still remove them."""
    for attr in _HOOK_DICTS:
        if hasattr(old, attr) and hasattr(new, attr):
            setattr(new, attr, getattr(old, attr))
    if getattr(old, "_is_full_backward_hook", None) is not None:
        new._is_full_backward_hook = old._is_full_backward_hook
