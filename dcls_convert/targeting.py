"""Which convs a conversion touches, and with which options.

Precedence, lowest to highest (torch.ao style): the method's default options < per module type < name regex
< exact name. Eligibility comes from `TargetRules` predicates; an exact-name entry selects its module even
where the predicates would not; an override of None excludes the target."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping, Sequence

import torch.nn as nn

__all__ = ["TargetRules", "ConvertConfig", "compile_patterns"]


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern | str:
    try:
        return re.compile(pattern)
    except re.error as exc:
        return str(exc)


def compile_patterns(patterns: Sequence[str] | str | None, what: str) -> list[re.Pattern]:
    """The patterns compiled once per process (every conv of every conversion matches against them)."""
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    out = []
    for p in patterns:
        compiled = _compiled(p) if isinstance(p, str) else f"not a string: {type(p).__name__}"
        if isinstance(compiled, str):
            raise ValueError(f"{what}: bad regular expression {p!r}: {compiled}") from None
        out.append(compiled)
    return out


@dataclass(frozen=True)
class TargetRules:
    """Predicates a conv must meet to be converted (None = any).

    Args:
        include / exclude: regexes matched (re.fullmatch) against module names; include=None means all.
        depthwise: True = only depthwise convs (groups == Cin == Cout), False = only the others.
        min_kernel / max_kernel: bounds on every kernel axis of size > 1; odd_kernel: every axis odd.
        stride, dilation, groups: required values (all axes); padding_modes: allowed padding modes.
        ndims: allowed numbers of spatial dims (1, 2, 3).
        filter_fn: extra predicate filter_fn(name, module) -> bool.
    """

    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    depthwise: bool | None = None
    min_kernel: int | None = None
    max_kernel: int | None = None
    odd_kernel: bool = False
    stride: int | None = None
    dilation: int | None = None
    groups: int | None = None
    padding_modes: tuple[str, ...] | None = None
    ndims: tuple[int, ...] | None = None
    filter_fn: Callable[[str, nn.Module], bool] | None = None

    def __post_init__(self):
        for name in ("include", "exclude"):
            val = getattr(self, name)
            if isinstance(val, str):
                object.__setattr__(self, name, (val,))
        compile_patterns(self.include, "TargetRules.include")
        compile_patterns(self.exclude, "TargetRules.exclude")

    def replace(self, **changes) -> "TargetRules":
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(changes)
        return TargetRules(**data)

    def skip_reason(self, name: str, conv: nn.Module, module: nn.Module | None = None) -> str | None:
        """None when `conv` is a target, else a short reason naming the rule it fails (`module`: the object in
        the model, given to filter_fn, when `conv` is a plain view of it)."""
        inc = compile_patterns(self.include, "include")
        if inc and not any(p.fullmatch(name) for p in inc):
            return f"name not in include={list(self.include)}"
        for p in compile_patterns(self.exclude, "exclude"):
            if p.fullmatch(name):
                return f"name matches exclude {p.pattern!r}"
        ndim = conv.weight.dim() - 2
        if self.ndims is not None and ndim not in self.ndims:
            return f"{ndim}-D conv (rule ndims={list(self.ndims)})"
        dw = conv.groups == conv.in_channels == conv.out_channels
        if self.depthwise is True and not dw:
            return "not depthwise (rule depthwise=True)"
        if self.depthwise is False and dw:
            return "depthwise (rule depthwise=False)"
        ks = [k for k in conv.kernel_size if k > 1]
        if not ks:
            return "1x1 kernel"
        if self.min_kernel is not None and min(ks) < self.min_kernel:
            return f"kernel {tuple(conv.kernel_size)} < min_kernel={self.min_kernel}"
        if self.max_kernel is not None and max(ks) > self.max_kernel:
            return f"kernel {tuple(conv.kernel_size)} > max_kernel={self.max_kernel}"
        if self.odd_kernel and any(k % 2 == 0 for k in ks):
            return f"even kernel {tuple(conv.kernel_size)} (rule odd_kernel=True)"
        if self.stride is not None and any(s != self.stride for s in conv.stride):
            return f"stride {tuple(conv.stride)} (rule stride={self.stride})"
        if self.dilation is not None and any(d != self.dilation for d in conv.dilation):
            return f"dilation {tuple(conv.dilation)} (rule dilation={self.dilation})"
        if self.groups is not None and conv.groups != self.groups:
            return f"groups={conv.groups} (rule groups={self.groups})"
        if self.padding_modes is not None and conv.padding_mode not in self.padding_modes:
            return f"padding_mode={conv.padding_mode!r} (rule padding_modes={list(self.padding_modes)})"
        if self.filter_fn is not None and not self.filter_fn(name, module if module is not None else conv):
            return "filter_fn returned False"
        return None


@dataclass
class ConvertConfig:
    """Everything a conversion needs, as one object (the keyword form of `convert` builds one).

    Args:
        method: registered method name ("dcls", "bloom", "partial").
        options: method options for every target (see DclsOptions, BloomOptions, PartialOptions).
        rules: eligibility predicates; None = the method's default rules.
        by_type: {module class: overrides}; by_regex: {name regex: overrides}; by_name: {exact name: overrides}.
            An override is a dict of options (it may also set "method"), or None to exclude the target.
    """

    method: str = "dcls"
    options: dict[str, Any] = field(default_factory=dict)
    rules: TargetRules | None = None
    by_type: Mapping[type, dict | None] = field(default_factory=dict)
    by_regex: Mapping[str, dict | None] = field(default_factory=dict)
    by_name: Mapping[str, dict | None] = field(default_factory=dict)

    def __post_init__(self):
        compile_patterns(list(self.by_regex), "ConvertConfig.by_regex")

    def resolve(self, names: Sequence[str], module: nn.Module, view: nn.Module,
                rules_for: Callable[[str], TargetRules]):
        """(method, options, skip_reason) for a conv known under `names` (aliases). `module` is the conv in the
        model (type overrides and filter_fn see it), `view` the plain nn.ConvNd it computes (geometry rules)."""
        layers: list[dict | None] = []
        for cls, ov in self.by_type.items():
            if isinstance(module, cls):
                layers.append(ov)
        for pattern, ov in self.by_regex.items():
            if any(_compiled(pattern).fullmatch(n) for n in names):
                layers.append(ov)
        named = [self.by_name[n] for n in names if n in self.by_name]
        layers.extend(named)
        merged: dict[str, Any] = dict(self.options)
        method, excluded = self.method, False
        for ov in layers:  # in precedence order: a later entry overrides an earlier one, None included
            if ov is None:
                excluded = True
                continue
            excluded = False
            ov = dict(ov)
            new_method = ov.pop("method", method)
            if new_method != method:  # options of the previous method do not carry over
                method, merged = new_method, {}
            merged.update(ov)
        if excluded:
            return method, merged, "excluded by an override of None"
        if named:  # named explicitly: selected even where the predicates would not
            return method, merged, None
        rules = self.rules if self.rules is not None else rules_for(method)
        for n in names:  # an alias that is excluded excludes the module under every name
            for p in compile_patterns(rules.exclude, "exclude"):
                if p.fullmatch(n):
                    return method, merged, f"name {n!r} matches exclude {p.pattern!r}"
        reasons = [rules.skip_reason(n, view, module) for n in names]
        return method, merged, (None if any(r is None for r in reasons) else reasons[0])
