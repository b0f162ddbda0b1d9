"""Call counts, input shapes and (a few samples of) the inputs of each conv, from one example forward (hooks).
Functional conv call sites are found by dcls_convert.functional."""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["record_calls"]

MAX_KEPT_INPUTS = 64  # example inputs kept per conv for data-aware starts (its first call's first 64 samples)


def record_calls(model: nn.Module, convs: list[nn.Module], example_inputs,
                 keep_inputs: bool = False) -> dict[int, tuple[int, tuple, torch.Tensor | None]]:
    """{id(conv): (calls, first input shape, first input or None)} from one no-grad forward; the model's mode is
    restored. keep_inputs: keep (up to MAX_KEPT_INPUTS samples of) each conv's first input."""
    facts = {id(c): [0, None, None] for c in convs}

    def hook(mod, args):
        entry = facts[id(mod)]
        entry[0] += 1
        if entry[1] is None and args and isinstance(args[0], torch.Tensor):
            entry[1] = tuple(args[0].shape)
            if keep_inputs:
                entry[2] = args[0][:MAX_KEPT_INPUTS].detach().clone()

    handles = [c.register_forward_pre_hook(hook) for c in convs]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
            model(*inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {k: (v[0], v[1], v[2]) for k, v in facts.items()}
