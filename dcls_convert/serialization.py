"""save(model, dir) / load(dir, base_model): weights as safetensors plus a JSON recipe of which layers were
converted into what, so a fresh base model can be converted the same way and loaded. Loading never runs
code from the files: safetensors for tensors, a validated JSON recipe for structure."""
from __future__ import annotations

import copy
import json
import math
import os
from typing import Any

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_model, save_model

from .discovery import find_sites, swap
from .functional import functional_entries, owner_trace, rewrite_owner
from .methods.base import ConvertedConv
from .registry import list_methods, get_method

__all__ = ["save", "load", "recipe_of", "dense_recipe_of", "RECIPE_FILE", "WEIGHTS_FILE"]

RECIPE_FILE = "recipe.json"
WEIGHTS_FILE = "model.safetensors"
_FORMAT = 1


_PLAIN_CONVS = {"Conv1d": nn.Conv1d, "Conv2d": nn.Conv2d, "Conv3d": nn.Conv3d}


def _module_classes() -> dict[str, type]:
    """The classes a recipe may name: the converted modules, and plain convs (densified recipes)."""
    out = dict(_PLAIN_CONVS)
    for name in list_methods():
        for cls in get_method(name).modules.values():
            out[cls.__name__] = cls
    return out


def _plain_conv_entry(site, kernel_size, ndim: int) -> dict[str, Any]:
    """The recipe entry of the plain nn.ConvNd with this module's geometry and `kernel_size`."""
    m = site.module
    return {"class": f"Conv{ndim}d", "aliases": site.names[1:], "config": dict(
        in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=list(kernel_size), stride=list(m.stride),
        padding=m.padding if isinstance(m.padding, str) else list(m.padding), groups=m.groups,
        bias=m.bias is not None, padding_mode=m.padding_mode)}


def dense_recipe_of(model: nn.Module, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipe of `densify(model)`: each converted module as the plain conv it folds into (its window as the
    kernel size), so `load(directory, base_model)` rebuilds the densified model on a fresh base model."""
    layers = {site.name: _plain_conv_entry(site, site.module.window, site.module.ndim)
              for site in find_sites(model, lambda m: isinstance(m, ConvertedConv))}
    return {"format": _FORMAT, "library": "dcls_convert", "base": base or {}, "layers": layers,
            "shared_parameters": [], "functional": functional_entries(model)}


def _check_plain_conv_config(name: str, config: dict) -> None:
    size = config.get("kernel_size")
    sizes = [size] if isinstance(size, int) else size
    if not isinstance(sizes, list) or not all(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 2**24
                                              for k in sizes) or math.prod(sizes) > 2**24:
        raise ValueError(f"load: recipe entry {name!r} has kernel_size {size!r}: ints in [1, 2**24], at most 2**24 "
                         "cells")


def recipe_of(model: nn.Module, base: dict[str, Any] | None = None) -> dict[str, Any]:
    layers, shared = {}, {}
    for site in find_sites(model, lambda m: getattr(m, "_dcls_convert_densified", False)):  # save(densify(model))
        layers[site.name] = _plain_conv_entry(site, site.module.kernel_size, len(site.module.kernel_size))
    for site in find_sites(model, lambda m: isinstance(m, ConvertedConv)):
        m = site.module
        layers[site.name] = {"class": type(m).__name__, "config": m.config(), "aliases": site.names[1:]}
        for pname, p in m.named_parameters(recurse=False):  # one tensor held by several layers (dcls: positions)
            shared.setdefault(id(p), (pname, []))[1].append(site.name)
    return {"format": _FORMAT, "library": "dcls_convert", "base": base or {}, "layers": layers,
            "shared_parameters": [{"parameter": pname, "layers": names} for pname, names in shared.values()
                                  if len(names) > 1],
            "functional": functional_entries(model)}


def save(model: nn.Module, directory: str, *, base: dict[str, Any] | None = None) -> None:
    """Writes `directory/model.safetensors` (all weights, shared tensors once) and `directory/recipe.json`."""
    os.makedirs(directory, exist_ok=True)
    save_model(model, os.path.join(directory, WEIGHTS_FILE))
    with open(os.path.join(directory, RECIPE_FILE), "w") as f:
        json.dump(recipe_of(model, base), f, indent=2)


def read_recipe(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, RECIPE_FILE)
    try:
        with open(path) as f:
            recipe = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"load: no {RECIPE_FILE} in {directory!r} (was it written by dcls_convert.save?)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"load: {path} is not valid JSON ({exc})") from None
    if not isinstance(recipe, dict) or recipe.get("format") != _FORMAT or not isinstance(recipe.get("layers"), dict):
        raise ValueError(f"load: {path} is not a dcls_convert recipe of format {_FORMAT}")
    return recipe


def _rewrite_functional(target: nn.Module, entries: Any) -> list[str]:
    """Rewrites the modules whose functional conv calls the recipe lists (deepest first, as convert did) so that
    the recipe's layers exist; returns their names."""
    if not isinstance(entries, list):
        raise ValueError("load: the recipe's functional entry must be a list")
    done = []
    for entry in entries:
        ok = (isinstance(entry, dict) and isinstance(entry.get("module"), str) and entry["module"]
              and isinstance(entry.get("calls"), list) and entry["calls"]
              and all(isinstance(c, dict) and isinstance(c.get("node"), str) and isinstance(c.get("attr"), str)
                      and c["attr"].isidentifier() for c in entry["calls"]))
        if not ok:
            raise ValueError(f"load: malformed functional entry {str(entry)[:200]}")
        name = entry["module"]
        site = next((s for s in find_sites(target, lambda m: True) if name in s.names), None)
        if site is None:
            raise ValueError(f"load: the base model has no module {name!r} (a module whose conv calls were converted)")
        trace = owner_trace(site)
        found = {c.node: c for c in trace.calls}
        calls = []
        for c in entry["calls"]:
            call = found.get(c["node"])
            if call is None or call.conv is None:
                why = trace.error or (call.reason if call else f"its forward has no conv call {c['node']!r}")
                raise ValueError(f"load: cannot rewrite {name!r} ({type(site.module).__name__}) as saved: {why}; is "
                                 "it the code that was converted?")
            if hasattr(site.module, c["attr"]):
                raise ValueError(f"load: functional entry of {name!r} names attribute {c['attr']!r}, which the module "
                                 "already has")
            call.attr = c["attr"]
            calls.append(call)
        swap(site, rewrite_owner(trace, calls))
        done.append(name)
    return done


def _tie_shared(by_name: dict[str, nn.Module], recipe: dict) -> None:
    """Makes the layers the recipe lists hold one tensor again (dcls positions shared per stage); recipes written
    before "shared_parameters" existed list positions groups under "shared_positions"."""
    legacy = recipe.get("shared_positions", [])
    if not isinstance(legacy, list) or not all(isinstance(g, list) and g for g in legacy):
        raise ValueError(f"load: shared_positions must be a list of non-empty lists of layer names, got {legacy!r}"[:300])
    entries = recipe.get("shared_parameters", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"load: shared_parameters must be a list of {{parameter, layers}}, got {entries!r}"[:300])
    groups = [("positions", g) for g in legacy] + [(e.get("parameter"), e.get("layers")) for e in entries]
    for pname, group in groups:
        if not isinstance(group, list) or not group or not all(isinstance(n, str) and n in by_name for n in group):
            raise ValueError(f"load: a shared-parameter group names unknown layers {group}"[:300])
        first = by_name[group[0]]
        params = dict(first.named_parameters(recurse=False))
        if not isinstance(pname, str) or pname not in params or not all(
                isinstance(dict(by_name[n].named_parameters(recurse=False)).get(pname), nn.Parameter)
                and getattr(by_name[n], pname).shape == params[pname].shape for n in group):
            raise ValueError(f"load: layers {group} do not all have a parameter {pname!r} of one shape")
        for other in group[1:]:
            setattr(by_name[other], pname, params[pname])


def load(directory: str, base_model: nn.Module, *, inplace: bool = False, strict: bool = True) -> nn.Module:
    """Re-applies the saved conversion to `base_model` (a fresh copy of the original architecture) and loads
    the saved weights. The work happens on a copy; with inplace=True the result is moved into `base_model` only
    once everything loaded, so a malformed recipe, checkpoint or mismatched model leaves it unchanged."""
    recipe = read_recipe(directory)
    weights = os.path.join(directory, WEIGHTS_FILE)
    try:  # header check before any work
        with safe_open(weights, framework="pt") as f:
            f.keys()
    except Exception as exc:
        raise ValueError(f"load: cannot read {weights}: {type(exc).__name__}: {exc}") from None
    classes = _module_classes()
    target = copy.deepcopy(base_model)
    functional = _rewrite_functional(target, recipe.get("functional", []))
    sites = {name: s for s in find_sites(target, lambda m: isinstance(m, nn.Module)) for name in s.names}
    built = []
    for name, entry in recipe["layers"].items():
        if not isinstance(entry, dict) or entry.get("class") not in classes or not isinstance(entry.get("config"), dict):
            raise ValueError(f"load: recipe entry {name!r} is malformed or names an unknown class "
                             f"(known: {sorted(classes)})")
        if name not in sites:
            raise ValueError(f"load: the base model has no module {name!r}; is it the architecture that was converted?")
        src = sites[name].module
        cls = classes[entry["class"]]
        config = entry["config"]
        for key in ("in_channels", "out_channels", "groups"):  # sizes come from the model, not from the file
            if hasattr(src, key) and key in config and config[key] != getattr(src, key):
                raise ValueError(f"load: recipe entry {name!r} has {key}={config[key]!r}, the base model's module "
                                 f"has {getattr(src, key)!r}")
        if cls in _PLAIN_CONVS.values():
            _check_plain_conv_config(name, config)
        try:
            new = cls(**config)
        except (TypeError, ValueError, RuntimeError, MemoryError, OverflowError) as exc:
            raise ValueError(f"load: cannot rebuild {name!r} as {cls.__name__}: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:300]}") from None
        if cls in _PLAIN_CONVS.values():
            new._dcls_convert_densified = True  # saved again, it is recorded again
        ref = next(iter(src.parameters()), None)
        if ref is not None:
            new = new.to(device=ref.device, dtype=ref.dtype)
        new.train(src.training)
        built.append((sites[name], new))
    by_name = {}
    for site, new in built:
        swap(site, new)
        for alias in site.names:  # a recipe may name a layer by any of its names
            by_name[alias] = new
    _tie_shared(by_name, recipe)
    try:
        missing, unexpected = load_model(target, weights, strict=False)
    except Exception as exc:  # keep the lines that name the offending keys, not only PyTorch's header line
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = "; ".join(lines[:4])
        raise ValueError(f"load: the weights do not fit the rebuilt model: {type(exc).__name__}: {detail[:600]}") from None
    if strict and (missing or unexpected):
        raise ValueError(f"load: weights do not match the rebuilt model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    for name, new in by_name.items():  # NaN positions would make every output of the layer NaN
        for pname in getattr(new, "position_param_names", ()):
            p = getattr(new, pname, None)
            if p is not None and not torch.isfinite(p).all():
                raise ValueError(f"load: {name}.{pname} in {weights} contains NaN/Inf")
    if not inplace:
        return target
    # Commit: move the rewritten and rebuilt modules into base_model, then copy every tensor of the loaded copy.
    for name in reversed(functional):  # outermost first: an inner one then already sits in its rewritten parent
        site = next(s for s in find_sites(base_model, lambda m: True) if name in s.names)
        swap(site, target.get_submodule(name))
    original = {name: s for s in find_sites(base_model, lambda m: isinstance(m, nn.Module)) for name in s.names}
    for site, new in built:
        swap(original[site.name], new)
    base_model.load_state_dict(target.state_dict(), strict=False)
    return base_model
