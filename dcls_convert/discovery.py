"""Finds modules in a tree by walking named_modules(): every name a module is reachable under (aliases)
and every (parent, attribute) slot that holds it, so a swap reaches all of them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

__all__ = ["Site", "find_sites", "swap"]


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
