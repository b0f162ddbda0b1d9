"""Call counts, input shapes and (a few samples of) the inputs of each conv, from one example forward (hooks).
Functional conv call sites are found by dcls_convert.functional."""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["record_calls", "run_eval", "relative_output_error"]

MAX_KEPT_INPUTS = 64  # example inputs kept per conv for data-aware starts (its first call's first 64 samples)


def record_calls(model: nn.Module, convs: list[nn.Module], example_inputs,
                 keep_inputs: bool = False) -> tuple[dict[int, tuple[int, tuple, torch.Tensor | None]], object]:
    """({id(conv): (calls, first input shape, first input or None)}, the model's output) from one no-grad eval
    forward; the model's mode is restored. keep_inputs: keep (up to MAX_KEPT_INPUTS samples of) each conv's first
    input."""
    facts = {id(c): [0, None, None] for c in convs}

    def hook(mod, args):
        entry = facts[id(mod)]
        entry[0] += 1
        if entry[1] is None and args and isinstance(args[0], torch.Tensor):
            entry[1] = tuple(args[0].shape)
            if keep_inputs:
                entry[2] = args[0][:MAX_KEPT_INPUTS].detach().clone()

    handles = [c.register_forward_pre_hook(hook) for c in convs]
    try:
        output = run_eval(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return {k: (v[0], v[1], v[2]) for k, v in facts.items()}, output


def run_eval(model: nn.Module, example_inputs):
    """model(*example_inputs) in eval mode without gradients; the model's mode is restored."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            return model(*(example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)))
    finally:
        model.train(was_training)


def relative_output_error(got, want) -> float | None:
    """||got - want|| / ||want|| over every floating tensor of two outputs of one structure (tensors, tuples,
    dicts), None when they hold none or differ in structure."""
    from torch.utils._pytree import tree_leaves

    pairs = [(g, w) for g, w in zip(tree_leaves(got), tree_leaves(want))
             if isinstance(g, torch.Tensor) and isinstance(w, torch.Tensor) and w.is_floating_point()
             and g.shape == w.shape]
    if not pairs or len(tree_leaves(got)) != len(tree_leaves(want)):
        return None
    num = sum(float((g.double() - w.double()).square().sum()) for g, w in pairs)
    den = sum(float(w.double().square().sum()) for _, w in pairs)
    return (num / den) ** 0.5 if den > 0 else None
