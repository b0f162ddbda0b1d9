"""Functional conv call sites: `F.conv1d/2d/3d(x, weight, ...)` written in a module's own forward.

Each module whose forward is user code is traced alone with torch.fx, its children kept as leaves, so only its
own forward becomes a graph. A call whose weight (and bias) come from the module's parameters, directly or
through a deterministic transform such as weight standardisation, and whose geometry is constant, is
convertible: it is replaced by a plain nn.ConvNd that holds the weight as the call computes it now, and the
module becomes the GraphModule of its forward (keeping its children, parameters and buffers). The converter then
treats that conv like any other. A conv subclass whose forward is only the call (timm's StdConv2d) is replaced
by the plain conv itself. Everything here builds new objects; `Rewrite.apply` swaps them in, `undo` puts the
originals back, so a failed conversion leaves the model as it was."""
from __future__ import annotations

import copy
import functools
import inspect
import os
import re
import sys
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn

from .discovery import Site, carry_hooks, find_sites, swap

__all__ = ["CallSite", "OwnerTrace", "scan", "owner_trace", "rewrite_owner", "reads_of", "Rewrite", "functional_entries"]

CONV_FUNCTIONS = {torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3}  # F.convNd is torch.convNd
_CONV_CLASSES = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TYPES = tuple(_CONV_CLASSES.values())
_ARG_NAMES = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_RANDOM = re.compile(r"rand|dropout|bernoulli|normal_|uniform_|multinomial")
META_KEY = "dcls_convert"  # GraphModule.meta entry of a rewritten module: which calls became which convs
_PRESERVED = getattr(fx.graph_module, "_USER_PRESERVED_ATTRIBUTES_KEY", "_user_preserved_attributes")


@dataclass
class CallSite:
    """One conv call in a module's own forward."""

    owner: Site                 # the module whose forward makes the call
    node: str                   # the call's FX node name (stable for the same code)
    attr: str                   # the attribute its conv takes in the rewritten module ("": the conv replaces
                                #   the owner, a conv subclass whose forward is only this call)
    fn: str                     # "conv2d"
    where: str = ""             # "file.py:42"
    conv: nn.Module | None = None  # plain nn.ConvNd with the weight as the call computes it (None: not convertible)
    reason: str = ""            # why it is not convertible
    transform: str = ""         # ops between the parameter and the call ("" = the parameter itself)
    weight_params: list = field(default_factory=list)  # the parameters the weight is computed from
    shared: bool = False        # another converted call computes its weight from one of those too

    @property
    def names(self) -> list[str]:
        if not self.attr:
            return list(self.owner.names)
        return [f"{n}.{self.attr}" if n else self.attr for n in self.owner.names]

    def describe(self) -> str:
        where = f" at {self.where}" if self.where else ""
        if self.conv is None:
            return f"F.{self.fn}(...){where}"
        from .converter import describe_conv

        return f"F.{self.fn}{describe_conv(self.conv)[len(type(self.conv).__name__):]}{where}"

    def origin(self) -> str:
        """How the conv was obtained, for the report."""
        where = f" ({self.where})" if self.where else ""
        how = f"its weight through {self.transform}" if self.transform else "its weight parameter"
        if self.shared:
            how += " (a parameter another converted call also used: each conv now has its own copy)"
        if not self.attr:
            return (f"{type(self.owner.module).__name__}: its forward is one F.{self.fn} call{where}; converted from "
                    f"{how} as computed at conversion time")
        return (f"F.{self.fn} call in {self.owner.name or 'the root module'}'s forward{where}, converted from {how} "
                "as computed at conversion time")


@dataclass
class OwnerTrace:
    site: Site
    graph: fx.Graph | None
    calls: list[CallSite] = field(default_factory=list)
    error: str = ""
    constants: dict = field(default_factory=dict)  # tensors the forward creates, which the graph reads by name
    reads: dict = field(default_factory=dict)      # {submodule name: reader}: tensors read directly (self.conv.weight)


class _OwnForwardTracer(fx.Tracer):
    """Traces one module's own forward: every child stays a call_module leaf."""

    def __init__(self):
        wrap = ()
        if "timm" in sys.modules:  # a timm model is loaded: functions timm marks as not traceable stay calls
            try:
                from timm.models._features_fx import get_notrace_functions

                wrap = tuple(get_notrace_functions())
            except Exception:  # another timm version: trace them
                pass
        super().__init__(autowrap_functions=wrap, param_shapes_constant=True)
        self.record_stack_traces = True

    def is_leaf_module(self, m, qualname):
        return True


def _user_forward(m: nn.Module) -> bool:
    """A forward that is not PyTorch's or dcls_convert's own (those are handled as modules or are ours)."""
    mod = getattr(type(m).forward, "__module__", "") or ""
    return not (mod.startswith("torch.") or mod.startswith("dcls_convert."))


def _mentions_conv(m: nn.Module) -> bool:
    if isinstance(m, _CONV_TYPES):
        return True
    try:
        src = inspect.getsource(type(m).forward)
    except (OSError, TypeError):
        return False
    return re.search(r"conv[123]d|_conv_forward", src) is not None


def trace_owner(module: nn.Module, concrete_args: dict | None = None) -> tuple[fx.Graph, dict]:
    """The graph of `module`'s own forward, and the tensor constants it reads by name. Tracing runs the forward's
    Python code: whatever it stores on the module (the tracer's constants, a cached activation, a counter) is put
    back as it was, so the module is left unchanged."""
    state = dict(vars(module))
    registries = {k: dict(state[k]) for k in ("_parameters", "_buffers", "_modules") if k in state}
    constants = {}
    try:
        return _OwnForwardTracer().trace(module, concrete_args=concrete_args), constants
    finally:
        now = vars(module)
        for key in list(now):
            if key not in state:
                value = now.pop(key)
                if key.startswith("_tensor_constant"):
                    constants[key] = value
            elif now[key] is not state[key]:
                now[key] = state[key]
        for key, saved in registries.items():
            now[key].clear()
            now[key].update(saved)


def _code(graph: fx.Graph) -> str:
    return graph.python_code("self").src


def _ops(graph: fx.Graph) -> list[tuple[str, str]]:
    return [(n.op, str(n.target)) for n in graph.nodes if n.op not in ("placeholder", "output")
            and getattr(n.target, "__name__", "") != "_assert_is_none"]


def _trace_depends_on(module: nn.Module, graph: fx.Graph) -> str:
    """Why one trace of `module` does not stand for its forward in general ("" when it does): the forward reads
    self.training (the trace would fix the mode) or branches on an optional argument left at None."""
    was = module.training
    module.training = not was  # this module only: its children are leaves, their mode is not traced
    try:
        other, _ = trace_owner(module)
    except Exception:
        other = None
    finally:
        module.training = was
    if other is None or _code(other) != _code(graph):
        return ("its forward depends on self.training (dropout, batch statistics...): a traced rewrite would fix "
                "the mode")
    try:
        optional = [name for name, p in list(inspect.signature(module.forward).parameters.items())[1:]
                    if p.default is None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    except (TypeError, ValueError):
        optional = []
    if optional:
        try:
            specialised, _ = trace_owner(module, {name: None for name in optional})
        except Exception:  # the forward needs them: a trace with them given stands for it
            return ""
        if _ops(specialised) != _ops(graph):
            return f"its forward branches on the optional argument(s) {optional}: a traced rewrite would fix that"
    return ""


def _fetch(owner: nn.Module, target: str, constants: dict | None = None):
    if constants and target in constants:
        return constants[target]
    return functools.reduce(getattr, target.split("."), owner)


_TORCH_DIR = os.path.dirname(torch.__file__)


def _where(node: fx.Node) -> str:
    """file:line of the innermost frame of the call outside PyTorch."""
    found = [(f, line) for f, line in re.findall(r'File "([^"]+)", line (\d+)', node.stack_trace or "")
             if not f.startswith(_TORCH_DIR)]
    return f"{os.path.basename(found[-1][0])}:{found[-1][1]}" if found else ""


class _NotConvertible(Exception):
    pass


def _evaluate(node, owner: nn.Module, memo: dict, params: list, ops: list, constants: dict):
    """The value `node` has now, when it depends only on the owner's attributes (no inputs, no submodule calls)."""
    if not isinstance(node, fx.Node):
        return node
    if node.name in memo:
        return memo[node.name]
    if node.op == "placeholder":
        raise _NotConvertible("its weight is computed from the forward's inputs (dynamic weights)")
    if node.op == "call_module":
        raise _NotConvertible(f"its weight comes out of a submodule call ({node.target})")
    if node.op == "get_attr":
        value = _fetch(owner, node.target, constants)
        if isinstance(value, nn.Parameter):
            params.append(value)
    elif node.op in ("call_function", "call_method"):
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        if _RANDOM.search(name) or name.endswith("_") and not name.startswith("__"):
            raise _NotConvertible(f"its weight goes through {name}, which is random or in place")
        args = fx.node.map_arg(node.args, lambda n: _evaluate(n, owner, memo, params, ops, constants))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: _evaluate(n, owner, memo, params, ops, constants))
        with torch.no_grad():
            value = getattr(args[0], node.target)(*args[1:], **kwargs) if node.op == "call_method" \
                else node.target(*args, **kwargs)
        ops.append(name)
    else:
        raise _NotConvertible(f"its weight comes from a {node.op} node")
    memo[node.name] = value
    return value


def _call_site(owner: Site, node: fx.Node, attr: str, constants: dict) -> CallSite:
    ndim = CONV_FUNCTIONS[node.target]
    site = CallSite(owner, node.name, attr, f"conv{ndim}d", _where(node))
    args = dict(zip(_ARG_NAMES, node.args))
    args.update(node.kwargs)
    module = owner.module
    try:
        if not owner.names[0]:
            raise _NotConvertible("called in the root module's own forward: convert keeps the root's class, so its "
                                  "forward is not rewritten; convert nn.Sequential(model) or move the call into a "
                                  "submodule")
        if not isinstance(args.get("input"), fx.Node):
            raise _NotConvertible("its input is not a tensor of the forward")
        geometry = {k: args.get(k, d) for k, d in (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1))}
        if any(isinstance(v, fx.Node) or (isinstance(v, (tuple, list)) and any(isinstance(e, fx.Node) for e in v))
               for v in geometry.values()):
            raise _NotConvertible("its stride, padding, dilation or groups are computed at run time")
        memo, params, ops = {}, [], []
        weight = _evaluate(args.get("weight"), module, memo, params, ops, constants)
        if not params:
            raise _NotConvertible("its weight is a buffer or constant, not a parameter of the model")
        weight_params, weight_ops = list(params), list(ops)
        bias = _evaluate(args.get("bias"), module, memo, params, ops, constants)
        if not isinstance(weight, torch.Tensor) or weight.dim() != ndim + 2 or weight.is_complex():
            raise _NotConvertible(f"its weight is not a real {ndim + 2}-D tensor")
        if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != weight.shape[:1]):
            raise _NotConvertible("its bias is not a tensor of out_channels values")
        groups = geometry["groups"]
        if not isinstance(groups, int) or groups < 1 or weight.shape[0] % groups:
            raise _NotConvertible(f"groups={groups!r} does not divide the weight's {weight.shape[0]} output channels")
        try:
            conv = _CONV_CLASSES[ndim](weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
                                       geometry["stride"], geometry["padding"], geometry["dilation"], groups,
                                       bias is not None, device="meta")
        except (TypeError, ValueError, RuntimeError) as exc:
            raise _NotConvertible(f"its arguments do not describe an nn.Conv{ndim}d ({exc})") from None
        conv.weight = nn.Parameter(weight.detach().clone(), any(p.requires_grad for p in weight_params))
        if bias is not None:
            bias_params = params[len(weight_params):]
            flag = any(p.requires_grad for p in bias_params) if bias_params else conv.weight.requires_grad
            conv.bias = nn.Parameter(bias.detach().clone().to(weight.dtype), flag)
        conv.train(module.training)
        site.conv, site.transform = conv, " -> ".join(dict.fromkeys(weight_ops))
        site.weight_params = weight_params
    except _NotConvertible as exc:
        site.reason = str(exc)
    except Exception as exc:  # a transform that fails on its own values: report, never fail the conversion
        site.reason = f"evaluating its weight failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    return site


def _free_attr(module: nn.Module, graph: fx.Graph, base: str, taken: set[str]) -> str:
    used = {n.target.split(".")[0] for n in graph.nodes if n.op in ("get_attr", "call_module")} | taken
    name, i = base, 0
    while hasattr(module, name) or name in used:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def reads_of(owner_names: list[str], graph: fx.Graph) -> dict[str, str]:
    """{module name: reader} for the submodules whose tensors this forward reads directly (self.conv.weight)."""
    out = {}
    for node in graph.nodes:
        if node.op == "get_attr" and "." in node.target:
            child = node.target.rsplit(".", 1)[0]
            for name in owner_names:
                out[f"{name}.{child}" if name else child] = f"{owner_names[0] or 'the root module'}"
    return out


def owner_trace(site: Site) -> OwnerTrace:
    """The conv calls in one module's own forward (empty when there are none)."""
    try:
        graph, constants = trace_owner(site.module)
    except Exception as exc:
        return OwnerTrace(site, None, error=f"FX trace failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})")
    trace = OwnerTrace(site, graph, constants=constants, reads=reads_of(site.names, graph))
    nodes = [n for n in graph.nodes if n.op == "call_function" and n.target in CONV_FUNCTIONS]
    if not nodes:
        return trace
    depends = _trace_depends_on(site.module, graph)
    taken: set[str] = set()
    for node in nodes:
        call = _call_site(site, node, _free_attr(site.module, graph, node.name, taken), constants)
        if depends and call.conv is not None:
            call.conv, call.reason = None, depends
        trace.calls.append(call)
    if len(trace.calls) == 1 and trace.calls[0].conv is not None and isinstance(site.module, _CONV_TYPES):
        graph = _replaced(trace, trace.calls)
        nodes = list(graph.nodes)
        if (len(nodes) == 3 and nodes[0].op == "placeholder" and nodes[1].op == "call_module"
                and nodes[1].args == (nodes[0],) and nodes[2].args[0] is nodes[1]):
            trace.calls[0].attr = ""  # a conv subclass whose forward is only the call: the conv replaces it
    return trace


def _depth(site: Site) -> int:
    """How deep the module sits under its deepest name (the root: 0)."""
    return max(n.count(".") + 1 if n else 0 for n in site.names)


def scan(model: nn.Module) -> list[OwnerTrace]:
    """Every module (root included) whose own forward calls a conv function or reads a submodule's tensors, or
    that could not be traced although its forward's source names a conv. Deepest first (by the deepest name a
    module has), so a module is rewritten before any parent that holds it."""
    user = {id(m) for m in model.modules() if _user_forward(m)}
    sites = [Site(model, [""], [])] if id(model) in user else []
    sites += find_sites(model, lambda m: id(m) in user)
    out = []
    for site in sites:
        trace = owner_trace(site)
        if trace.calls or trace.reads or (trace.error and _mentions_conv(site.module)):
            out.append(trace)
    return sorted(out, key=lambda t: -_depth(t.site))


def _drop_unused(graph: fx.Graph, candidates: set[str]) -> None:
    """Removes the replaced calls' weight and bias computations once nothing else uses them; every other node
    stays (in-place ops and side effects included)."""
    for node in reversed(list(graph.nodes)):
        if node.name in candidates and not node.users:
            graph.erase_node(node)


def _weight_path(node: fx.Node) -> set[str]:
    """Names of the nodes that compute a conv call's weight and bias (attribute reads and pure calls only)."""
    out, todo = set(), [a for a in list(node.args[1:3]) + [node.kwargs.get("weight"), node.kwargs.get("bias")]
                        if isinstance(a, fx.Node)]
    while todo:
        n = todo.pop()
        if n.name not in out and n.op in ("get_attr", "call_function", "call_method"):
            out.add(n.name)
            todo.extend(n.all_input_nodes)
    return out


def _replaced(trace: OwnerTrace, calls: list[CallSite]) -> fx.Graph:
    graph = copy.deepcopy(trace.graph)
    nodes = {n.name: n for n in graph.nodes}
    candidates: set[str] = set()
    for call in calls:
        node = nodes[call.node]
        candidates |= _weight_path(node)
        x = node.args[0] if node.args else node.kwargs["input"]
        with graph.inserting_before(node):
            new = graph.call_module(call.attr or "_", (x,))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    _drop_unused(graph, candidates)
    graph.lint()
    return graph


def rewrite_owner(trace: OwnerTrace, calls: list[CallSite]) -> nn.Module:
    """The owner with `calls` replaced by their convs: the GraphModule of its forward, or the conv itself when
    the owner is a conv subclass whose forward is only that call. Builds new objects; the owner is not modified."""
    owner = trace.site.module
    if len(calls) == 1 and not calls[0].attr:
        carry_hooks(owner, calls[0].conv)  # and on to the converted module, as for any conv
        return calls[0].conv
    graph = _replaced(trace, calls)
    before = {n.target for n in trace.graph.nodes if n.op in ("get_attr", "call_module")}
    convs = {c.attr: c.conv for c in calls}
    root = {n.target: convs[n.target] if n.target in convs else _fetch(owner, n.target, trace.constants)
            for n in graph.nodes if n.op in ("get_attr", "call_module")}
    gm = fx.GraphModule(root, graph, class_name=type(owner).__name__)
    consumed = before - set(root)
    for name, child in owner.named_children():  # children keep their classes, used or not
        setattr(gm, name, child)
    for name, p in owner.named_parameters(recurse=False):
        if name not in consumed and not hasattr(gm, name):
            gm.register_parameter(name, p)
    for name, b in owner.named_buffers(recurse=False):
        if name not in consumed and not hasattr(gm, name):
            gm.register_buffer(name, b, persistent=name not in owner._non_persistent_buffers_set)
    plain = {k: v for k, v in vars(owner).items()  # ints, floats, strings... the rest of the model may read them
             if not k.startswith("_") and k != "training" and not isinstance(v, (nn.Module, torch.Tensor))
             and not hasattr(gm, k)}
    for k, v in plain.items():
        setattr(gm, k, v)
    gm.meta[_PRESERVED] = dict(plain)  # GraphModule's deepcopy restores these
    carry_hooks(owner, gm)
    gm.train(owner.training)
    gm.meta[META_KEY] = {"class": f"{type(owner).__module__}.{type(owner).__qualname__}",
                         "calls": [{"node": c.node, "attr": c.attr} for c in calls]}
    return gm


class Rewrite:
    """Swaps rewritten owners into the model, deepest first; `undo` restores every slot in reverse order."""

    def __init__(self):
        self.done: list[tuple[Site, nn.Module]] = []

    def apply(self, site: Site, new: nn.Module) -> None:
        swap(site, new)
        self.done.append((site, new))

    def undo(self) -> None:
        for site, _ in reversed(self.done):
            swap(site, site.module)
        self.done.clear()


def functional_entries(model: nn.Module) -> list[dict]:
    """Recipe entries of the rewritten modules in `model`: {"module", "class", "calls": [{"node", "attr"}]},
    deepest first (the order `load` rebuilds them in)."""
    out = []
    for site in sorted(find_sites(model, lambda m: isinstance(m, fx.GraphModule) and META_KEY in getattr(m, "meta", {})),
                       key=lambda site: -_depth(site)):
        meta = site.module.meta[META_KEY]
        deepest = max(site.names, key=lambda n: n.count("."))
        out.append({"module": deepest, "class": meta["class"], "calls": [dict(c) for c in meta["calls"]]})
    return out
