"""The converter: convert(model, method, ...) discovers the convs, plans which to convert and how, builds every
replacement, then swaps them all (nothing is swapped unless everything built); densify(model) folds every
converted module back into its plain conv. (Not named convert.py: the package exports the functions under
those names, and a submodule of the same name would shadow them.)"""
from __future__ import annotations

import copy
import inspect
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from .discovery import carry_hooks, find_sites, swap
from .functional import Rewrite, reads_of, rewrite_owner, scan
from .methods.base import ConvertedConv
from .registry import BuiltLayer, get_method
from .report import ConversionError, ConversionReport, LayerRecord, NoTargetError
from .targeting import ConvertConfig, TargetRules

__all__ = ["convert", "densify", "source_conv_view", "describe_conv"]

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _is_conv(m: nn.Module) -> bool:
    return isinstance(m, _CONV_TYPES)


def describe_conv(conv: nn.Module) -> str:
    s = f"{type(conv).__name__}({conv.in_channels}, {conv.out_channels}, k={tuple(conv.kernel_size)}"
    if any(v != 1 for v in conv.stride):
        s += f", s={tuple(conv.stride)}"
    if any(v != 1 for v in conv.dilation):
        s += f", d={tuple(conv.dilation)}"
    if conv.groups != 1:
        s += f", g={conv.groups}"
    return s + ")"


def _weight_reparametrization(conv: nn.Module) -> str:
    """How the conv's weight is recomputed before each forward, if it is ('' when it is a plain parameter)."""
    for hook in conv._forward_pre_hooks.values():
        kind = type(hook).__name__
        if kind in ("WeightNorm", "SpectralNorm"):
            return f"torch.nn.utils.{'weight_norm' if kind == 'WeightNorm' else 'spectral_norm'}"
    if torch.nn.utils.parametrize.is_parametrized(conv):
        return "torch.nn.utils.parametrize (" + ", ".join(sorted(conv.parametrizations.keys())) + ")"
    return ""


def _plain_conv_subclass(conv: nn.Module) -> bool:
    """A subclass of nn.Conv1d/2d/3d that computes what its base computes (forward and _conv_forward inherited)."""
    base = next((b for b in _CONV_TYPES if isinstance(conv, b)), None)
    return base is not None and all(getattr(type(conv), f) is getattr(base, f) for f in ("forward", "_conv_forward"))


def _effective_view(conv: nn.Module, trainable: bool) -> nn.Module:
    """A plain conv of the same geometry holding the weight the conv computes now (its reparametrization applied)."""
    base = next(c for c in _CONV_TYPES if isinstance(conv, c))
    view = base(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                conv.groups, conv.bias is not None, conv.padding_mode, device="meta")
    view.weight = nn.Parameter(conv.weight.detach().clone(), trainable)
    bias = conv.bias
    view.bias = bias if bias is None or isinstance(bias, nn.Parameter) else nn.Parameter(bias.detach().clone(), trainable)
    return view


def source_conv_view(conv: nn.Module, effective: bool = False) -> tuple[nn.Module | None, str]:
    """The plain nn.ConvNd a conv computes, or (None, reason) when its semantics differ from one. effective: a conv
    whose weight is reparametrized (weight_norm, spectral_norm, parametrize) is seen through the weight it computes
    now (function-preserving at conversion time; the reparametrization is dropped)."""
    reparam = _weight_reparametrization(conv)
    if reparam and effective:
        trainable = any(p.requires_grad for n, p in conv.named_parameters() if n != "bias")
        return _effective_view(conv, trainable), ""
    if reparam:
        remove = ("torch.nn.utils.parametrize.remove_parametrizations(conv, 'weight')" if "parametrize" in reparam
                  else "torch.nn.utils.remove_" + reparam.rsplit(".", 1)[1] + "(conv)")
        return None, (f"its weight is recomputed each forward by {reparam}; converting would drop that: pass "
                      f"functional=True (or call {remove} first) to convert from the current weight")
    if type(conv) in _CONV_TYPES or _plain_conv_subclass(conv):
        return conv, ""
    cls_name = type(conv).__name__
    if cls_name.startswith("Conv2dSame"):  # timm: TF-style dynamic "same" padding == "same" at stride 1
        if any(s != 1 for s in conv.stride):
            return None, f"{cls_name} with stride {tuple(conv.stride)} pads by input size (TF 'SAME'); not a fixed padding"
        view = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, 1, "same", conv.dilation, conv.groups,
                         conv.bias is not None, device="meta")
        view.weight, view.bias = conv.weight, conv.bias
        return view, ""
    if "StdConv" in cls_name or "ScaledStd" in cls_name:
        return None, (f"{cls_name} standardises its weight in forward; pass functional=True to convert from the "
                      "standardised weight")
    if getattr(conv, "transposed", False):
        return None, "transposed convolution"
    return None, (f"{cls_name} overrides nn.ConvNd's forward; its semantics are unknown (functional=True converts the "
                  "conv calls in its forward)")


def _refuse_wrappers(model: nn.Module) -> None:
    wrapped = isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel))
    compiled = type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod")
    if wrapped or compiled:
        kind = "torch.compile'd" if compiled else type(model).__name__
        raise TypeError(f"convert() got a {kind} model. Convert the plain model first, then wrap, then build the "
                        "optimizer, then compile: model, report = convert(model); model = DDP(model); "
                        "opt = torch.optim.AdamW(param_groups(model, lr)); model = torch.compile(model). "
                        f"(Pass model.{'_orig_mod' if compiled else 'module'} to convert it.)")


def _make_config(method, options, rules, include, exclude, by_type, by_regex, by_name) -> ConvertConfig:
    if isinstance(method, ConvertConfig):
        cfg = copy.copy(method)
        if options:
            cfg.options = {**cfg.options, **options}
    elif isinstance(method, str):
        cfg = ConvertConfig(method=method, options=dict(options))
    else:
        raise TypeError(f"convert: method must be a method name or a ConvertConfig, got {type(method).__name__}")
    spec = get_method(cfg.method)
    if rules is not None:
        cfg.rules = rules
    if include is not None or exclude is not None:
        base = cfg.rules or spec.default_rules
        changes = {}
        if include is not None:
            changes["include"] = (include,) if isinstance(include, str) else tuple(include)
        if exclude is not None:
            changes["exclude"] = (exclude,) if isinstance(exclude, str) else tuple(exclude)
        cfg.rules = base.replace(**changes)
    for attr, val in (("by_type", by_type), ("by_regex", by_regex), ("by_name", by_name)):
        if val is not None:
            setattr(cfg, attr, dict(val))
    cfg.__post_init__()
    spec.make_options(cfg.options)  # unknown keys fail before any work
    return cfg


def convert(model: nn.Module, method: str | ConvertConfig = "dcls", *, inplace: bool = False,
            rules: TargetRules | None = None, include: str | Sequence[str] | None = None,
            exclude: str | Sequence[str] | None = None, by_type: Mapping[type, dict | None] | None = None,
            by_regex: Mapping[str, dict | None] | None = None, by_name: Mapping[str, dict | None] | None = None,
            example_inputs: Any = None, sequential: bool = False, functional: bool = False, analyze: bool = True,
            progress: bool = False,
            **options) -> tuple[nn.Module, ConversionReport]:
    """Replace a model's convs by DCLS, bloomed or partially dilated modules, initialised from their weights.

    Args:
        model: any nn.Module (a timm model, a checkpointed network...). Not a DDP/DataParallel/compiled wrapper.
        method: "dcls", "bloom", "partial", or a ConvertConfig.
        inplace: swap inside `model` itself instead of a deep copy.
        rules / include / exclude: targeting (see TargetRules); default: the method's rules.
        by_type / by_regex / by_name: per-target option overrides ({...} or None to exclude).
        example_inputs: optional input (or tuple) run once to record call counts and input shapes; methods with
            a data-aware start (bloom) also fit each layer to what it sees there (output space, not kernel space).
        sequential: with example_inputs, fit the lossy layers (bloom, dcls with fewer taps than kernel cells) one
            by one in call order, each on what it sees with the converted layers before it in place, to reproduce
            what the original layer computed on the original inputs (one forward per layer; errors do not
            accumulate down the network as they do when every layer is fitted on the original's inputs).
        functional: also convert conv calls written in a module's forward (F.conv2d(x, self.weight, ...), timm's
            StdConv2d / ScaledStdConv2d, convs behind weight_norm / parametrize): each from the weight the call
            computes at conversion time (function-preserving then; a weight transform is not applied afterwards).
            The module making the call becomes the torch.fx GraphModule of its forward; the root keeps its class.
        analyze: trace each module's own forward with torch.fx to report functional conv call sites (never fails
            a conversion; implied by functional=True).
        progress: show a progress bar while building replacements.
        **options: method options (DclsOptions, BloomOptions, PartialOptions fields).

    Returns:
        (model, report): the converted model (same class, methods, mode, device, dtype) and a ConversionReport.

    Example:
        >>> model, report = convert(timm.create_model("convnext_tiny"), "dcls", kernel_count=34)
        >>> print(report)
    """
    _refuse_wrappers(model)
    if sequential and example_inputs is None:
        raise ValueError("convert: sequential=True fits each layer on example inputs: pass example_inputs")
    cfg = _make_config(method, options, rules, include, exclude, by_type, by_regex, by_name)
    try:
        target = model if inplace else copy.deepcopy(model)
    except RuntimeError as exc:  # old-style weight_norm / spectral_norm keep a computed (non-leaf) weight
        hooked = [n or "the model" for n, m in model.named_modules() if _weight_reparametrization(m)]
        raise ValueError(f"convert: the model cannot be copied ({str(exc).splitlines()[0][:120]}); "
                         f"{', '.join(hooked[:5]) or 'a module'} use(s) torch.nn.utils.weight_norm / spectral_norm: "
                         "remove them (torch.nn.utils.remove_weight_norm / remove_spectral_norm), use "
                         "torch.nn.utils.parametrizations, or pass inplace=True") from None
    report = ConversionReport(method=cfg.method)
    if isinstance(target, _CONV_TYPES):
        raise TypeError("convert: pass the model that contains the conv; for a lone conv use "
                        "DclsConv2d.from_conv(conv) (or the Bloom/Partial equivalents)")
    traces = scan(target) if (functional or analyze) else []
    report.trace_error = "; ".join(f"{t.site.name or type(t.site.module).__name__}: {t.error}"
                                   for t in traces if t.error) or None
    rewrite = Rewrite()
    try:  # every change to `target` below is undone on error (it is the user's model with inplace=True)
        if functional:
            origins = _rewrite_calls(traces, cfg, report, rewrite)
        else:
            origins = {}
            report.functional_convs = [f"{c.names[0]}: {c.describe()}" for t in traces for c in t.calls]
        _convert_modules(target, cfg, report, origins, traces, functional, example_inputs, progress, sequential,
                         rewrite)
    except BaseException:
        rewrite.undo()
        raise
    return target, report


def _rewrite_calls(traces, cfg: ConvertConfig, report: ConversionReport, rewrite: Rewrite) -> dict[int, tuple]:
    """Functional conv calls chosen by the rules become plain convs in their module's rewritten forward.
    Returns {id(conv): (call site, the module type overrides and filter_fn see)}."""
    origins = {}
    for trace in traces:  # deepest first: a rewritten child is in place before its parent is rebuilt
        chosen = []
        for call in trace.calls:
            reason, seen_as = call.reason, trace.site.module if not call.attr else call.conv
            if not reason:
                method_name, _, reason = cfg.resolve(call.names, seen_as, call.conv,
                                                     lambda m: get_method(m).default_rules)
                if not reason and call.conv.weight.dim() - 2 not in get_method(method_name).modules:
                    reason = f"method {method_name!r} has no {call.conv.weight.dim() - 2}-D module"
            if reason:
                report.layers.append(LayerRecord(name=call.names[0], aliases=call.names[1:], conv=call.describe(),
                                                 status="skipped", reason=reason, origin=call.origin()))
            else:
                chosen.append(call)
                origins[id(call.conv)] = (call, seen_as)
        if chosen:
            new = rewrite_owner(trace, chosen)
            rewrite.apply(trace.site, new)
            trace.reads = _reads_after(trace, new)
    uses: dict[int, int] = {}
    for call, _ in origins.values():
        for p in call.weight_params:
            uses[id(p)] = uses.get(id(p), 0) + 1
    for call, _ in origins.values():  # say where a tie between calls is cut
        call.shared = any(uses[id(p)] > 1 for p in call.weight_params)
    return origins


def _reads_after(trace, new: nn.Module) -> dict[str, str]:
    """What the rewritten module still reads of its submodules' tensors (a replaced call's reads are gone)."""
    return reads_of(trace.site.names, new.graph) if isinstance(new, torch.fx.GraphModule) else {}


def _convert_modules(target, cfg, report, origins, traces, functional, example_inputs, progress, sequential,
                     rewrite) -> None:
    sites = find_sites(target, _is_conv)
    # conv subclasses whose forward was traced for its calls are reported through those calls
    call_owners = {id(t.site.module) for t in traces if t.calls} if functional else set()
    untraced = {id(t.site.module): t.error for t in traces if t.error} if functional else {}
    read_by = {name: reader for t in traces for name, reader in t.reads.items()}
    sites = [s for s in sites if id(s.module) not in call_owners]
    known = {n for site in sites for n in site.names} | {r.name for r in report.layers}
    unknown = [n for n in cfg.by_name if n not in known]
    if unknown:  # an exact name that matches no conv is a typo, not a choice
        calls = {n for t in traces for c in t.calls for n in c.names}
        hint = "; functional call sites are converted with functional=True" if set(unknown) & calls else ""
        raise ValueError(f"convert: by_name names no conv in the model: {unknown[:5]}; convs are named like "
                         f"{sorted(known)[:5]}{hint}")
    facts, reference_output = _record_calls(target, sites, example_inputs) if example_inputs is not None else ({}, None)

    plan = []
    for site in sites:
        conv = site.module
        call, seen_as = origins.get(id(conv), (None, conv))
        rec = LayerRecord(name=site.name, aliases=site.names[1:], conv=call.describe() if call else describe_conv(conv),
                          status="skipped", kernel_size=tuple(conv.kernel_size), origin=call.origin() if call else "",
                          rewrote=call.owner.name if call is not None and call.attr else "",
                          params_before=sum(p.numel() for p in (seen_as if call else conv).parameters()))
        rec.calls, rec.input_shape = facts.get(id(conv), (None, None))[:2]
        report.layers.append(rec)
        source, why = (conv, "") if call else source_conv_view(conv, effective=functional)
        reader = next((read_by[n] for n in site.names if n in read_by), None)
        if reader is not None:
            source, why = None, (f"{reader}'s forward reads its tensors directly (e.g. self.conv.weight); converting it "
                                 "would break that")
        if source is None:
            rec.reason = why + (f"; its forward could not be traced: {untraced[id(conv)]}" if id(conv) in untraced else "")
            continue
        method_name, opts, reason = cfg.resolve(site.names, seen_as, source, lambda m: get_method(m).default_rules)
        if reason:
            rec.reason = reason
            continue
        spec = get_method(method_name)
        ndim = source.weight.dim() - 2
        if ndim not in spec.modules:
            rec.reason = f"method {method_name!r} has no {ndim}-D module"
            continue
        if rec.calls == 0 and call is None:  # a rewritten call is converted: its module already changed
            rec.reason = "never called in the example forward"
            continue
        plan.append((site, source, spec, spec.make_options(opts, f"convert ({site.name})"), rec))

    if not plan:
        reasons = sorted({r.reason for r in report.layers})
        rules_used = cfg.rules or get_method(cfg.method).default_rules
        raise NoTargetError(f"convert: no conv matched for method {cfg.method!r} with rules {rules_used} and "
                            f"overrides by_name={list(cfg.by_name)}, by_regex={list(cfg.by_regex)}; "
                            f"{len(report.layers)} conv(s) seen, skip reasons: {reasons or ['no convs in the model']}")

    if sequential:  # in call order: each layer is fitted with the ones before it in place
        plan.sort(key=lambda item: _fact(facts, item[0].module, 3) if _fact(facts, item[0].module, 3) is not None
                  else float("inf"))
    built = []
    for site, source, spec, opts, rec in _progress(plan, progress):
        cls = spec.modules[source.weight.dim() - 2]
        kwargs = {k: v for k, v in vars(opts).items() if k != "share_positions"}
        seen = _fact(facts, site.module, 2)
        if seen is not None and "inputs" in inspect.signature(cls.from_conv).parameters:
            kwargs["inputs"] = seen  # a data-aware start where the method has one
            if sequential and getattr(opts, "share_positions", None) is None:
                from .analysis import input_of

                now = input_of(target, site.module, example_inputs)  # with the converted upstream in place
                if now is not None and now.shape == seen.shape:
                    kwargs["inputs"] = (now, seen)  # fit what it sees now to what the original computed
        try:
            new = cls.from_conv(source, **kwargs)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise ConversionError(f"convert: building {cls.__name__} for {site.name!r} failed, model left untouched: "
                                  f"{exc}") from exc
        new.train(site.module.training)
        _keep_requires_grad(new, source)
        carry_hooks(site.module, new)
        built.append((site, new, opts, rec, source))
        if sequential:
            rewrite.apply(site, new)  # in place for the layers after it (undone with the rest on any error)

    layers = [BuiltLayer(site.name, new, opts, source, _fact(facts, site.module, 2), list(site.names))
              for site, new, opts, rec, source in built]
    for name in dict.fromkeys(new.method for _, new, *_ in built):  # each method's hook, once, in build order
        hook = get_method(name).after_build
        if hook is not None:
            hook([layer for layer in layers if layer.module.method == name])
    for site, new, opts, rec, _ in built:
        rewrite.apply(site, new)  # recorded: an error in what follows (the output check) still restores the model
        rec.status, rec.method, rec.module = "converted", new.method, type(new).__name__
        rec.receptive_field = tuple(new.receptive_field)
        rec.params_after = sum(p.numel() for p in new.parameters())
        rec.init_error = new.init_error
        rec.engine = new.engine_name()
    if reference_output is not None:  # the whole model on the example inputs, before vs after
        from .analysis import model_output_error, run_eval

        report.output_error = model_output_error(run_eval(target, example_inputs), reference_output)


def _fact(facts, module, i):
    """Item i of what the example forward recorded for `module` (calls, input shape, inputs, call rank), or None."""
    entry = facts.get(id(module))
    return entry[i] if entry is not None else None


def _progress(items, enabled):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="dcls_convert", unit="conv")


def _keep_requires_grad(new: nn.Module, source: nn.Module) -> None:
    """Per parameter, as the source conv had it: the bias follows the source bias, everything that makes the
    kernel (weights, positions, sigma) follows the source weight. A frozen kernel with a trainable bias stays so."""
    weight_flag = source.weight.requires_grad
    bias_flag = source.bias.requires_grad if getattr(source, "bias", None) is not None else weight_flag
    for name, p in new.named_parameters():
        p.requires_grad_(bias_flag if name == "bias" else weight_flag)


def _record_calls(model, sites, example_inputs) -> tuple[dict[int, tuple[int | None, tuple | None, Any]], Any]:
    from .analysis import record_calls

    return record_calls(model, [s.module for s in sites], example_inputs, keep_inputs=True)


def densify(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Replace every DCLS/bloom/partial module by `module.to_conv()`; outputs are unchanged (to float
    rounding), no dcls_convert module remains, and the result traces/exports like any plain model."""
    target = model if inplace else copy.deepcopy(model)
    if isinstance(target, ConvertedConv):
        return target.to_conv()
    built = []  # every conv is built before the first swap: an error leaves the model untouched
    for site in find_sites(target, lambda m: isinstance(m, ConvertedConv)):
        conv = site.module.to_conv()
        if not torch.isfinite(conv.weight).all():
            raise ValueError(f"densify: {site.name} has a non-finite kernel (NaN/Inf weights or positions)")
        conv.train(site.module.training)
        conv._dcls_convert_densified = True  # save() records it in the recipe: load rebuilds it with this kernel size
        # the kernel trains if any kernel parameter did; the bias keeps its own flag
        kernel_params = [p for n, p in site.module.named_parameters() if n != "bias"]
        conv.weight.requires_grad_(any(p.requires_grad for p in kernel_params))
        if conv.bias is not None and site.module.bias is not None:
            conv.bias.requires_grad_(site.module.bias.requires_grad)
        built.append((site, conv))
    for site, conv in built:
        swap(site, conv)
    return target
