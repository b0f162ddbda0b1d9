"""Refit unconverted linear layers after a lossy conversion, so that they map what they now receive onto what the
original network's same layers computed: the post-training-quantization remedy of fitting the layers downstream
of a change in output space. A bloomed kernel is smooth and a trained one is not, so no bloom layer can
reproduce a trained one; the classifier head can still undo much of the resulting shift in the features
(benchmarks/RESULTS.md, fine-tuning demo: bloom's start 84.8 % -> 92.9 % against the original's 94.7 %).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn as nn

from .analysis import record_calls, run_eval

__all__ = ["refit_linear"]

# Ridge strength relative to the mean diagonal of X^T X: keeps the solve stable when features are collinear
# (ReLU features often are) while changing a well-posed fit by far less than its residual.
RIDGE = 1e-4


def _is_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1
                                        and m.stride == (1, 1) and m.padding in ((0, 0), "valid"))


def _rows(t: torch.Tensor, conv: bool) -> torch.Tensor:
    """Samples as rows: (..., features) for a Linear, (N, C, H, W) -> (N*H*W, C) for a 1x1 conv."""
    return (t.movedim(1, -1) if conv else t).reshape(-1, t.shape[1] if conv else t.shape[-1]).double()


def refit_linear(model: nn.Module, original: nn.Module, inputs, names: Sequence[str] | None = None) -> dict[str, float]:
    """Least-squares refit of linear layers of `model` (nn.Linear, and 1x1 convs) against `original`.

    Each named layer of `model`, in call order, takes the weight and bias that best map its input in `model` (the
    refits before it in place) onto the output of the module of the same name in `original`, over one eval forward
    of `inputs` (a tensor or a tuple of positional inputs: a few batches of real data). `original` is left as it
    is. names: default the last nn.Linear `model` calls (the classifier head). A layer keeps its weights where
    they already fit at least as well (after an exact conversion, say). Returns each layer's relative output error
    on `inputs` after its refit.

    A layer without bias keeps none. Raises ValueError naming what is wrong (an unknown name, a layer of
    another kind, one the forward never calls or calls more than once, the same module object in both models,
    features or targets that are not finite); nothing is changed then.
    """
    if isinstance(names, str):
        names = [names]
    model_mods, orig_mods = dict(model.named_modules()), dict(original.named_modules())
    if names is None:  # the last nn.Linear the forward calls
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        facts = record_calls(model, [model_mods[n] for n in linear], inputs)[0]  # (calls, shape, -, rank)
        called = [n for n in linear if facts[id(model_mods[n])][0]]
        if not called:
            raise ValueError("refit_linear: the model calls no nn.Linear; name the layers to refit")
        names = [max(called, key=lambda n: _rank(facts, model_mods[n]))]
    for n in names:
        if n not in model_mods or n not in orig_mods:
            raise ValueError(f"refit_linear: no module {n!r} in {'model' if n not in model_mods else 'original'}")
        if not _is_linear(model_mods[n]) or type(orig_mods[n]) is not type(model_mods[n]):
            raise ValueError(f"refit_linear: {n!r} is a {type(model_mods[n]).__name__}; only nn.Linear and 1x1 "
                             "nn.Conv2d layers (the same type in both models) can be refitted")
        if model_mods[n] is orig_mods[n]:
            raise ValueError(f"refit_linear: {n!r} is the same module object in both models; pass the original "
                             "network as it was before conversion (convert returns a copy unless inplace=True)")
    facts = record_calls(model, [model_mods[n] for n in names], inputs)[0]
    for n in names:
        calls = facts[id(model_mods[n])][0]
        if calls == 0:
            raise ValueError(f"refit_linear: the forward never calls {n!r}")
        if calls > 1:
            # each call's output feeds the rest of the network differently: one least-squares fit over all calls
            # can make the model worse (measured on a head shared by two feature sets), so refuse
            raise ValueError(f"refit_linear: {n!r} is called {calls} times in one forward; only layers called "
                             "once can be refitted")
    backup = {n: [p.detach().clone() for p in model_mods[n].parameters(recurse=False)] for n in names}
    errors = {}
    try:
        for n in sorted(names, key=lambda n: _rank(facts, model_mods[n])):
            errors[n] = _refit(model, original, model_mods[n], orig_mods[n], inputs)
    except BaseException:
        with torch.no_grad():  # all or nothing
            for n, saved in backup.items():
                for p, v in zip(model_mods[n].parameters(recurse=False), saved):
                    p.copy_(v)
        raise
    return errors


def _refit(model: nn.Module, original: nn.Module, layer: nn.Module, source: nn.Module, inputs) -> float:
    conv = isinstance(layer, nn.Conv2d)
    x = _rows(_capture(model, layer, inputs, want="input"), conv)
    y = _rows(_capture(original, source, inputs, want="output"), conv).to(x.device)
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("refit_linear: the layer's inputs in the model or its outputs in the original are not "
                         "finite on these inputs; nothing was changed")
    if len(x) <= x.shape[1]:
        warnings.warn(f"refit_linear: {len(x)} samples for {x.shape[1]} input features: the fit is "
                      "underdetermined and will not generalise; pass more inputs", stacklevel=3)
    if layer.bias is not None:
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1)
    gram = x.T @ x
    gram += RIDGE * gram.diagonal().mean().clamp_min(1e-12) * torch.eye(len(gram), dtype=gram.dtype,
                                                                         device=gram.device)
    sol = torch.linalg.solve(gram, x.T @ y)  # (in [+ 1], out)
    current = layer.weight.detach().reshape(layer.weight.shape[0], -1).T.double()
    if layer.bias is not None:
        current = torch.cat([current, layer.bias.detach().double()[None]], 0)
    scale = y.norm().clamp_min(1e-30)
    new_error, old_error = float((x @ sol - y).norm() / scale), float((x @ current - y).norm() / scale)
    if not new_error < old_error:  # already as good (an exact conversion upstream), or no finite fit: keep it
        return old_error
    with torch.no_grad():
        layer.weight.copy_(sol[: layer.weight.shape[1]].T.reshape(layer.weight.shape).to(layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.copy_(sol[-1].to(layer.bias.dtype))
    return new_error


def _capture(model: nn.Module, module: nn.Module, inputs, want: str) -> torch.Tensor:
    """The input (or output) of the one call of `module` in an eval forward of `model`."""
    got = []
    if want == "input":
        def hook(m, args, kwargs):
            got.append((args[0] if args else next(iter(kwargs.values()))).detach())
        handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    else:
        handle = module.register_forward_hook(lambda m, args, out: got.append(out.detach()))
    try:
        run_eval(model, inputs)
    finally:
        handle.remove()
    return got[0]


def _rank(facts: dict, module: nn.Module) -> float:
    rank = facts[id(module)][3]
    return rank if rank is not None else float("inf")  # called with keyword arguments only: last
