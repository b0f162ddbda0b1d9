"""Call counts, input shapes and (a few samples of) the inputs of each conv, from one example forward (hooks).
Functional conv call sites are found by dcls_convert.functional."""
from __future__ import annotations

import itertools

import torch
import torch.nn as nn

__all__ = ["record_calls", "input_of", "run_eval", "model_output_error"]

MAX_KEPT_INPUTS = 64  # example inputs kept per conv for data-aware starts (its first call's first 64 samples)


def record_calls(model: nn.Module, convs: list[nn.Module], example_inputs,
                 keep_inputs: bool = False) -> tuple[dict[int, tuple], object]:
    """({id(conv): (calls, first input shape, first input or None, rank of its first call)}, the model's output) from
    one no-grad eval forward; the model's mode is restored. keep_inputs: keep (up to MAX_KEPT_INPUTS samples of)
    each conv's first input."""
    facts = {id(c): [0, None, None, None] for c in convs}
    order = itertools.count()

    def hook(mod, args):
        entry = facts[id(mod)]
        entry[0] += 1
        if entry[1] is None and args and isinstance(args[0], torch.Tensor):
            entry[1], entry[3] = tuple(args[0].shape), next(order)
            if keep_inputs:
                entry[2] = args[0][:MAX_KEPT_INPUTS].detach().clone()

    handles = [c.register_forward_pre_hook(hook) for c in convs]
    try:
        output = run_eval(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return {k: tuple(v) for k, v in facts.items()}, output


def input_of(model: nn.Module, module: nn.Module, example_inputs) -> torch.Tensor | None:
    """The first input `module` receives in one eval forward of `model` (its first MAX_KEPT_INPUTS samples)."""
    got = []

    def hook(mod, args):
        if not got and args and isinstance(args[0], torch.Tensor):
            got.append(args[0][:MAX_KEPT_INPUTS].detach().clone())

    handle = module.register_forward_pre_hook(hook)
    try:
        run_eval(model, example_inputs)
    finally:
        handle.remove()
    return got[0] if got else None


def run_eval(model: nn.Module, example_inputs):
    """model(*example_inputs) in eval mode without gradients; every module's own mode is restored (a frozen
    BatchNorm inside a training model stays in eval)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            return model(*(example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)))
    finally:
        for m, mode in modes:
            m.training = mode


def model_output_error(got, want) -> float | None:
    """||got - want|| / ||want|| over every floating tensor of two outputs of one structure (tensors, tuples,
    dicts), over their finite entries (an inf or NaN both have at one place agrees; one only one has makes the
    error inf); None when they hold no tensors or differ in structure."""
    from torch.utils._pytree import tree_leaves

    pairs = [(g, w) for g, w in zip(tree_leaves(got), tree_leaves(want))
             if isinstance(g, torch.Tensor) and isinstance(w, torch.Tensor) and w.is_floating_point()
             and g.shape == w.shape]
    if not pairs or len(tree_leaves(got)) != len(tree_leaves(want)):
        return None
    num = den = 0.0
    for g, w in pairs:
        g, w = g.double(), w.double()
        finite = torch.isfinite(w)
        sign = lambda t: t[~finite].nan_to_num(0.0, posinf=1.0, neginf=-1.0)  # noqa: E731
        if not torch.equal(finite, torch.isfinite(g)) or not torch.equal(sign(w), sign(g)):
            return float("inf")  # an inf or NaN that one output has and the other does not: no finite error
        num += float((g[finite] - w[finite]).square().sum())
        den += float(w[finite].square().sum())
    return (num / den) ** 0.5 if den > 0 else (0.0 if num == 0 else float("inf"))
