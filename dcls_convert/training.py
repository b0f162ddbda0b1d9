"""Fine-tuning helpers after conversion, following the DCLS papers' recipe: positions (and sigma) in their
own parameter group with a larger learning rate and no weight decay, kept inside their window after every
optimizer step; gaussian sigma annealing; freezing policies; rounding positions for export."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from .methods.base import ConvertedConv

__all__ = ["param_groups", "clamp_positions_", "keep_positions_in_range", "SigmaAnnealer", "freeze",
           "round_positions_", "position_parameters"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def _converted(model: nn.Module) -> list[ConvertedConv]:
    return [m for m in model.modules() if isinstance(m, ConvertedConv)]


def position_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Position-like parameters of every converted module, each once (shared positions included once)."""
    seen, out = set(), []
    for m in _converted(model):
        for name in m.position_param_names:
            p = getattr(m, name, None)
            if isinstance(p, nn.Parameter) and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0, position_lr_scale: float = 5.0,
                 no_decay_norms_and_biases: bool = True) -> list[dict]:
    """Optimizer groups: [weights (decay), norms/biases (no decay), positions+sigma (lr x scale, no decay)].

    Frozen parameters are left out; every trainable parameter appears in exactly one group.

    Example:
        >>> opt = torch.optim.AdamW(param_groups(model, lr=1e-3, weight_decay=0.05))
    """
    pos_ids = {id(p) for p in position_parameters(model)}
    norm_ids = set()
    if no_decay_norms_and_biases:
        for m in model.modules():
            if isinstance(m, _NORMS):
                norm_ids.update(id(p) for p in m.parameters(recurse=False))
    decay, no_decay, positions, seen = [], [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in pos_ids:
            positions.append(p)
        elif id(p) in norm_ids or (no_decay_norms_and_biases and (p.dim() <= 1 or name.endswith(".bias"))):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay, "name": "weights"},
              {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": "no_decay"},
              {"params": positions, "lr": lr * position_lr_scale, "weight_decay": 0.0, "name": "positions"}]
    return [g for g in groups if g["params"]]


@torch.no_grad()
def clamp_positions_(model: nn.Module) -> None:
    """Clamps every DCLS position into its window [-L//2, L-1-L//2] (the op clamps anyway; this keeps the
    stored values meaningful and the gradients alive)."""
    for m in _converted(model):
        pos = getattr(m, "positions", None)
        if isinstance(pos, nn.Parameter):
            for d, L in enumerate(m.window):
                pos[d].clamp_(-(L // 2), L - 1 - L // 2)


def keep_positions_in_range(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Installs an optimizer step hook that clamps positions after every step; returns its handle."""
    return optimizer.register_step_post_hook(lambda opt, args, kwargs: clamp_positions_(model))


class SigmaAnnealer:
    """Linear annealing of the gaussian floor sigma_min from `start` to `end` over `steps` calls of step()
    (wide, smooth kernels early; nearly bilinear ones late)."""

    def __init__(self, model: nn.Module, start: float, end: float, steps: int):
        if steps <= 0 or start <= 0 or end <= 0:
            raise ValueError("SigmaAnnealer: steps, start and end must be > 0")
        self.modules = [m for m in _converted(model) if getattr(m, "interpolation", None) == "gaussian"]
        self.start, self.end, self.steps, self.count = start, end, steps, 0
        self._apply()

    def _apply(self) -> None:
        t = min(self.count / self.steps, 1.0)
        for m in self.modules:
            m.sigma_min = self.start + (self.end - self.start) * t

    def step(self) -> None:
        self.count += 1
        self._apply()


def freeze(model: nn.Module, policy: Literal["new", "all", "no_norms"] = "new") -> nn.Module:
    """"new": train only the converted modules; "all": train everything; "no_norms": everything but norms."""
    if policy not in ("new", "all", "no_norms"):
        raise ValueError(f"freeze: policy must be 'new', 'all' or 'no_norms', got {policy!r}")
    model.requires_grad_(policy != "new")
    if policy == "new":
        for m in _converted(model):
            m.requires_grad_(True)
    elif policy == "no_norms":
        for m in model.modules():
            if isinstance(m, _NORMS):
                m.requires_grad_(False)
    return model


@torch.no_grad()
def round_positions_(model: nn.Module) -> None:
    """Rounds DCLS positions to the integer grid (for export to a dilated/sparse form)."""
    for p in {id(m.positions): m.positions for m in _converted(model) if hasattr(m, "positions")}.values():
        p.round_()
