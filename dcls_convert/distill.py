"""Distillation for the fine-tune after a conversion: the original network teaches its converted copy.

A lossy conversion (bloom, dcls with fewer taps than kernel cells, shared positions) starts close to the original
but not on it; fine-tuning on labels alone can drift further before it recovers. With the original as teacher the
student is pulled back towards the function the pretrained network computed (Hinton et al., "Distilling the
Knowledge in a Neural Network", arXiv:1503.02531): temperature-softened logits, and optionally intermediate
features matched module by module (FitNets-style hints; conversion keeps module names, so the same names work
in both networks)."""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Distiller"]


class Distiller(nn.Module):
    """loss = (1 - alpha) * task_loss(student, target) + alpha * T^2 * KL(teacher_T || student_T)
    + feature_weight * mean over `features` of ||s - t||^2 / ||t||^2.

    Args:
        teacher: the original network (frozen here: eval mode, no gradients).
        student: the converted network (its mode is left to the caller).
        alpha: weight of the distillation term (1 = teacher only, no labels needed).
        temperature: softening of both logit distributions (the T^2 factor keeps gradient scales comparable).
        features: module names whose outputs the student matches (relative squared error, scale-free), as the
            teacher names them (a DDP-wrapped student is looked up under `.module`); a module called several times
            per forward is matched on its last call.
        feature_weight: weight of the feature term.
        task_loss: the label loss (cross entropy by default).
        logits: picks the logits out of a model's output when it is not a tensor (e.g. `lambda out: out[0]`).

    The teacher runs in eval mode without gradients, on its own device and dtype (the batch is moved for it); it is
    not a submodule, so `distill.state_dict()` holds the student's tensors under "student.". Feature hooks exist only
    while `distill(...)` runs: the models stay picklable and other forwards are untouched.

    Example:
        >>> student, report = dc.convert(teacher, "bloom", example_inputs=x[:64])
        >>> distill = dc.Distiller(teacher, student, alpha=0.7, features=["stages.2"])
        >>> opt = torch.optim.AdamW(dc.param_groups(student, lr=1e-3))
        >>> loss, logits = distill(x, y); loss.backward(); opt.step()
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, *, alpha: float = 0.5, temperature: float = 2.0,
                 features: Sequence[str] = (), feature_weight: float = 1.0,
                 task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                 logits: Callable | None = None):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"Distiller: alpha must be in [0, 1], got {alpha!r}")
        if not temperature > 0:
            raise ValueError(f"Distiller: temperature must be > 0, got {temperature!r}")
        if teacher is student:
            raise ValueError("Distiller: the teacher and the student are the same object; convert a copy "
                             "(convert() returns one unless inplace=True)")
        names = [features] if isinstance(features, str) else list(features)
        self._modules_of = {"teacher": dict(teacher.named_modules()), "student": dict(_unwrapped(student).named_modules())}
        for who, have in self._modules_of.items():
            missing = [n for n in names if n not in have]
            if missing:
                raise ValueError(f"Distiller: the {who} has no module {missing[0]!r} (features must name modules "
                                 f"of both networks, e.g. {[n for n in list(have)[1:4]]})")
        self.student, self.alpha, self.temperature = student, float(alpha), float(temperature)
        self.feature_weight, self.task_loss, self.features = float(feature_weight), task_loss, names
        self.logits = logits
        object.__setattr__(self, "teacher", teacher)  # not a submodule: not trained, not in state_dict
        teacher.eval().requires_grad_(False)
        self.last: dict[str, float] = {}  # the loss terms of the last call, for logging

    def _logits(self, out, who: str) -> torch.Tensor:
        out = self.logits(out) if self.logits is not None else out
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"Distiller: the {who} returned a {type(out).__name__}, not a logits tensor; pass "
                             "logits=... to pick them (e.g. logits=lambda out: out[0])")
        return out.float()

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, student logits). `target` is needed unless alpha == 1."""
        if target is None and self.alpha < 1.0:
            raise ValueError("Distiller: a target is needed for the task loss (or use alpha=1.0)")
        seen: dict[str, dict[str, object]] = {"teacher": {}, "student": {}}
        handles = [self._modules_of[who][name].register_forward_hook(functools.partial(_keep, seen[who], name))
                   for who in ("teacher", "student") for name in self.features]
        try:
            self.teacher.eval()
            ref = next(iter(self.teacher.parameters()), None)
            tx = x.to(device=ref.device, dtype=ref.dtype) if ref is not None and x.is_floating_point() else x
            with torch.no_grad():
                teacher_logits = self._logits(self.teacher(tx), "teacher").to(x.device)
            logits = self.student(x)
        finally:
            for h in handles:
                h.remove()
        student_logits = self._logits(logits, "student")
        T = self.temperature
        kd = F.kl_div(F.log_softmax(student_logits / T, dim=-1), F.log_softmax(teacher_logits / T, dim=-1),
                      reduction="batchmean", log_target=True) * T * T
        loss = self.alpha * kd
        self.last = {"distill": float(kd.detach())}
        if self.alpha < 1.0:
            task = self.task_loss(logits if isinstance(logits, torch.Tensor) else student_logits, target)
            loss = loss + (1.0 - self.alpha) * task
            self.last["task"] = float(task.detach())
        if self.features:
            terms = []
            for name in self.features:
                s, t = seen["student"][name], seen["teacher"][name]
                if not isinstance(s, torch.Tensor) or not isinstance(t, torch.Tensor):
                    raise ValueError(f"Distiller: feature module {name!r} returns a {type(s).__name__}, not a tensor")
                t = t.detach().float().to(s.device)
                terms.append((s.float() - t).square().mean() / t.square().mean().clamp_min(1e-12))
            feat = torch.stack(terms).mean()
            loss = loss + self.feature_weight * feat
            self.last["features"] = float(feat.detach())
        return loss, logits if isinstance(logits, torch.Tensor) else student_logits


def _keep(store: dict, name: str, module, args, output) -> None:
    store[name] = output


def _unwrapped(model: nn.Module) -> nn.Module:
    """The module inside DataParallel / DistributedDataParallel (feature names are the inner model's)."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    return model.module if isinstance(model, wrappers) else model
