"""Optional analysis: call counts and input shapes from one example forward (hooks), and functional
F.conv* call sites from an FX trace (with timm's leaf modules when timm is present). Never raises."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["record_calls", "functional_conv_sites"]

_FUNCTIONAL = {F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d}


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


def _tracer():
    import torch.fx as fx

    leaf_types: tuple = ()
    try:  # timm's registry of modules that do not trace
        from timm.models._features_fx import _leaf_modules

        leaf_types = tuple(_leaf_modules)
    except Exception:
        pass

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, leaf_types) or super().is_leaf_module(m, qualname)

    return Tracer()


def functional_conv_sites(model: nn.Module) -> tuple[list[str], str | None]:
    """Names of the FX nodes that call F.conv* directly (outside any module), or ([], reason)."""
    try:
        graph = _tracer().trace(model)
    except Exception as exc:  # tracing is best effort: data-dependent control flow etc.
        return [], f"FX trace failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    found = []
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _FUNCTIONAL:
            stack = node.meta.get("nn_module_stack") or {}
            where = list(stack)[-1] if stack else ""
            found.append(f"{where}:{node.name}" if where else node.name)
    return found, None
