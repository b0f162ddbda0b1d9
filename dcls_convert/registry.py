"""Methods by name: the converter knows a method only through its MethodSpec (torchao/PEFT style); adding
one is a single `register_method` call. The built-in methods register themselves when dcls_convert.methods is
imported, which the first lookup does (this module does not import them at load time: they import it)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable

import torch
import torch.nn as nn

from .targeting import TargetRules

__all__ = ["MethodSpec", "BuiltLayer", "register_method", "get_method", "list_methods"]


@dataclass
class BuiltLayer:
    """A replacement built by convert, before it is swapped in (what a method's after_build hook sees)."""

    name: str                    # the conv's module path
    module: nn.Module            # the new module
    options: Any                 # its method options
    source: nn.Module            # the plain conv it was built from
    inputs: torch.Tensor | None  # example inputs the conv saw (convert's example_inputs), else None
    names: list[str] = field(default_factory=list)  # every name the conv is reachable under (name first)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    modules: dict[int, type]  # spatial dims -> module class with from_conv / to_conv
    options: type             # frozen dataclass of the method's options
    default_rules: TargetRules
    # Called once per conversion with every layer of this method, after all are built and before any swap:
    # where a method ties layers together (dcls: positions shared per stage). An error leaves the model untouched.
    after_build: Callable[[list[BuiltLayer]], None] | None = None

    def make_options(self, values: dict[str, Any], where: str = "convert"):
        valid = [f.name for f in fields(self.options)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise TypeError(f"{where}: unknown option(s) {unknown} for method {self.name!r}; valid: {valid}")
        return self.options(**values)


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, modules: dict[int, type], options: type, default_rules: TargetRules,
                    after_build: Callable[[list[BuiltLayer]], None] | None = None) -> MethodSpec:
    _load_builtin_methods()  # first, so a user's registration under a built-in name replaces the built-in
    spec = MethodSpec(name, dict(modules), options, default_rules, after_build)
    _REGISTRY[name] = spec
    return spec


def _load_builtin_methods() -> None:
    from . import methods  # noqa: F401  (registers dcls, bloom, partial on first import)


def get_method(name: str) -> MethodSpec:
    _load_builtin_methods()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def list_methods() -> list[str]:
    _load_builtin_methods()
    return sorted(_REGISTRY)
