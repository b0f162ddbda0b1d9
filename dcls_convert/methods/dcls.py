"""DCLS (Khalfaoui Hassani, Pellegrini & Masquelier, "Dilated Convolution with Learnable Spacings", ICLR 2023,
arXiv:2112.03740; the authors' package: github.com/K-H-Ismail/Dilated-Convolution-with-Learnable-Spacings-PyTorch):
K taps per (out, in) pair at learned real-valued positions inside a window L,
spread onto the grid by bilinear or gaussian interpolation. Depthwise 1-D/2-D layers run the compiled tap
engine (reads only the taps); the rest build the dense kernel (compiled construct op) and convolve."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..finite_check import check_finite
from ..geometry import MAX_GEOMETRY, per_axis
from .base import (ConvertedConv, Engine, check_engine, check_source_conv, conv_forward, conv_kwargs, copy_bias,
                   grow_padding, relative_error, source_kernel)

__all__ = ["DclsOptions", "DclsConv1d", "DclsConv2d", "DclsConv3d", "default_window", "placed_source_kernel",
           "share_positions"]

# Refuse layers whose dense kernel alone would exceed this (checked before anything is allocated).
MAX_DENSE_KERNEL_BYTES = int(float(os.environ.get("DCLS_CONVERT_MAX_KERNEL_GIB", "8")) * 2**30)


@dataclass(frozen=True)
class DclsOptions:
    """Options of `convert(model, "dcls", ...)` and `DclsConvNd.from_conv(conv, ...)`.

    Args:
        window: window size L per axis (int or tuple); default max(extent, 2k + 3) per axis (17 for a 7x7),
            axes of size 1 stay 1.
        kernel_count: taps K per (out, in) pair; default prod(k) keeps every source tap (exact start).
        interpolation: "bilinear" (exact start) or "gaussian" (sigma learned; the start is approximate).
        sigma_min: gaussian standard deviation floor.
        engine: "auto" (cost rule), "taps" (depthwise tap engine) or "dense" (construct + conv).
        learn_axes: per axis, whether positions are learned there (e.g. (False, True): delays along time only);
            default all axes. Fixed axes keep their start (integer grid) positions.
        share_positions: converter only: "stage" shares one positions tensor among same-shaped layers of a stage.
    """

    window: int | tuple[int, ...] | None = None
    kernel_count: int | None = None
    interpolation: Literal["bilinear", "gaussian"] = "bilinear"
    sigma_min: float = 0.27
    engine: Engine = "auto"
    learn_axes: tuple[bool, ...] | None = None
    share_positions: Literal["stage"] | None = None

    def __post_init__(self):
        check_options("DclsOptions", self.kernel_count, self.interpolation, self.sigma_min, self.engine)
        if self.share_positions not in (None, "stage"):
            raise ValueError(f"DclsOptions: share_positions must be None or 'stage', got {self.share_positions!r}")


INTERPOLATIONS = ("bilinear", "gaussian")


def check_options(owner: str, kernel_count, interpolation, sigma_min, engine) -> None:
    """The checks options and modules share (kernel_count None = the default, prod(k))."""
    if kernel_count is not None and (isinstance(kernel_count, bool) or not isinstance(kernel_count, int)
                                     or kernel_count <= 0):
        raise ValueError(f"{owner}: kernel_count must be a positive int, got {kernel_count!r}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"{owner}: interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if not (isinstance(sigma_min, (int, float)) and 0 < sigma_min < math.inf):
        raise ValueError(f"{owner}: sigma_min must be a finite number > 0, got {sigma_min!r}")
    check_engine(owner, engine)


def _position_dtype(dtype: torch.dtype | None) -> torch.dtype | None:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def default_window(kernel_size: Sequence[int], extent: Sequence[int]) -> tuple[int, ...]:
    """max(extent, 2k + 3) per axis, of the extent's parity (so the output shape and alignment are kept with a
    symmetric padding: 17 for a 7x7, 8 for a 2x2, 12 for a 4x4); size-1 axes stay 1."""
    out = []
    for k, e in zip(kernel_size, extent):
        L = 1 if k == 1 else max(e, 2 * k + 3)
        out.append(L + (L - e) % 2)
    return tuple(out)


class _DclsConvNd(ConvertedConv):
    method = "dcls"
    position_param_names = ("positions", "sigma")

    def __init__(self, in_channels: int, out_channels: int, kernel_count: int, dilated_kernel_size,
                 stride=1, padding=0, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 interpolation: str = "bilinear", sigma_min: float = 0.27, device=None, dtype=None,
                 engine: Engine = "auto", learn_axes: Sequence[bool] | None = None):
        super().__init__()
        name = type(self).__name__
        factory_kwargs = {"device": device, "dtype": dtype}
        self._init_conv_args(in_channels, out_channels, stride, padding, groups, bias, padding_mode, factory_kwargs)
        if kernel_count is None:
            raise ValueError(f"{name}: kernel_count must be a positive int, got None")
        check_options(name, kernel_count, interpolation, sigma_min, engine)
        self.dilated_kernel_size = per_axis(dilated_kernel_size, self.ndim, "dilated_kernel_size", name)
        if math.prod(self.dilated_kernel_size) > MAX_GEOMETRY:
            raise ValueError(f"{name}: window {self.dilated_kernel_size} has more than 2**24 cells")
        if kernel_count > max(4 * math.prod(self.dilated_kernel_size), 4096):  # bounds what a recipe can allocate
            raise ValueError(f"{name}: kernel_count={kernel_count} exceeds max(4096, 4x the cells of the "
                             f"{self.dilated_kernel_size} window)")
        learn = tuple(bool(v) for v in learn_axes) if learn_axes is not None else (True,) * self.ndim
        if len(learn) != self.ndim:
            raise ValueError(f"{name}: learn_axes needs {self.ndim} booleans, got {learn_axes!r}")
        self.learn_axes = learn
        # Positions move only where asked and where the window has room: on a window-1 axis (a (k, 1) kernel) a
        # position cannot change the kernel, so it gets no gradient either.
        self._moving_axes = tuple(l and L > 1 for l, L in zip(learn, self.dilated_kernel_size))
        self.register_buffer("_learn_mask", torch.tensor(self._moving_axes, device=device).view(-1, 1, 1, 1),
                             persistent=False)
        kernel_bytes = out_channels * (in_channels // groups) * math.prod(self.dilated_kernel_size) * 4
        if kernel_bytes > MAX_DENSE_KERNEL_BYTES and not (engine != "dense" and groups == in_channels == out_channels
                                                          and self.ndim <= 2):
            raise MemoryError(f"{name}: a {self.dilated_kernel_size} window for {out_channels}x{in_channels // groups} "
                              f"channel pairs needs a {kernel_bytes / 2**30:.1f} GiB dense kernel (limit "
                              f"{MAX_DENSE_KERNEL_BYTES / 2**30:.0f} GiB, env DCLS_CONVERT_MAX_KERNEL_GIB); use a "
                              "smaller window, or a depthwise layer (tap engine, no dense kernel)")
        self.kernel_count, self.interpolation, self.sigma_min, self.engine = kernel_count, interpolation, sigma_min, engine
        shape = (out_channels, in_channels // groups, kernel_count)
        self.weight = nn.Parameter(torch.empty(shape, **factory_kwargs))
        # Positions (and sigma) are float32 at least, whatever the module's dtype: a 16-bit position lives on a
        # 1/16 px grid at window 17 and cannot learn small steps (as after model.half(), see _apply).
        pos_kwargs = dict(factory_kwargs, dtype=_position_dtype(dtype))
        self.positions = nn.Parameter(torch.empty((self.ndim, *shape), **pos_kwargs))
        self.sigma = nn.Parameter(torch.empty((self.ndim, *shape), **pos_kwargs)) if interpolation == "gaussian" else None
        self.init_error: float | None = None
        self.reset_parameters()

    @property
    def window(self) -> tuple[int, ...]:
        return self.dilated_kernel_size

    def _derived_buffers(self) -> dict[str, torch.Tensor]:
        return {"_learn_mask": torch.tensor(self._moving_axes).view(-1, 1, 1, 1)}

    def _apply(self, fn, recurse=True):
        # model.half() / .to(torch.bfloat16) would leave positions a 1/16 px grid; they stay float32.
        super()._apply(fn, recurse)
        for p in (self.positions, self.sigma):
            if p is not None and p.dtype in (torch.float16, torch.bfloat16):
                p.data = p.data.float()
                if p.grad is not None:
                    p.grad = p.grad.float()
        return self

    def reset_parameters(self) -> None:
        """Kaiming-uniform weights over the K taps (as nn.ConvNd over its k taps), positions uniform over the
        window, sigma 0.23 (the reference library's start)."""
        fan_in = (self.in_channels // self.groups) * self.kernel_count
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        with torch.no_grad():
            for d, L in enumerate(self.window):
                self.positions[d].uniform_(-(L // 2), L - 1 - L // 2)
                if not self.learn_axes[d]:
                    self.positions[d].round_()  # fixed axes sit on the integer grid
            if self.sigma is not None:
                self.sigma.fill_(0.23)
        self.reset_bias(fan_in)

    def _positions(self) -> torch.Tensor:
        if all(self._moving_axes):
            return self.positions
        return torch.where(self._learn_mask, self.positions, self.positions.detach())  # no gradient on fixed axes

    def dense_kernel(self) -> torch.Tensor:
        return ops.construct(self.weight, self._positions(), self.sigma, self.window, self.interpolation,
                               self.sigma_min)

    def uses_tap_engine(self, device_type: str | None = None) -> bool:
        """Cost rule, measured per device (benchmarks/RESULTS.md). The tap engine touches at most min(4K, prod(L))
        merged entries per output, the dense path prod(L) after building the kernel. Wherever it is compiled it
        wins: on CPU, PyTorch's depthwise backward is slow (15x at K = 80 and K = 150, window 17); on an H200 the
        tiled CUDA engine runs forward+backward 7x faster than construct + cuDNN at window 17 and 18x / 45x at
        windows 31 / 51 (K = 34, all four ConvNeXt-T stage shapes). Without a compiled engine the reference taps
        are used while 4K <= prod(L)."""
        if self.engine == "dense" or not self.is_depthwise or self.ndim > 2 or self.interpolation != "bilinear":
            return False
        if self.engine == "taps":
            return True
        device_type = device_type or self.weight.device.type
        if ops.compiled_for("taps_conv", device_type):
            return True
        return (2 ** self.ndim) * self.kernel_count <= math.prod(self.window)

    def engine_name(self) -> str:
        return "taps" if self.uses_tap_engine() else "construct+conv"

    def _extra_config(self) -> dict:
        return dict(kernel_count=self.kernel_count, dilated_kernel_size=list(self.window),
                    interpolation=self.interpolation, sigma_min=self.sigma_min, engine=self.engine,
                    learn_axes=list(self.learn_axes))

    def _check_finite(self) -> None:
        # Training forwards only (a NaN there would spread silently into every weight); eval and inference
        # skip it. On CUDA the check never waits for the device (finite_check.py): it reports one forward late.
        tensors = [self.positions] + ([self.sigma] if self.sigma is not None else [])
        check_finite(self, tensors, lambda: FloatingPointError(
            f"{type(self).__name__}: positions or sigma contain NaN/Inf (a diverged optimizer step?); lower the "
            "position learning rate or reload a checkpoint"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if self.training and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            self._check_finite()
        if self.uses_tap_engine(x.device.type):
            return self._taps_forward(x, self.weight, self._positions(), "bilinear")
        return conv_forward(x, self.dense_kernel(), self.bias, self.stride, self._pads(), self.padding_mode, self.groups)

    def extra_repr(self) -> str:
        s = self._conv_repr()
        s.insert(1, f"kernel_count={self.kernel_count}, window={self.window}")
        if self.interpolation != "bilinear":
            s.append(f"interpolation={self.interpolation!r}, sigma_min={self.sigma_min}")
        if not all(self.learn_axes):
            s.append(f"learn_axes={self.learn_axes}")
        return ", ".join(s)

    @classmethod
    def from_conv(cls, conv: nn.Module, *, inputs: torch.Tensor | None = None, **options) -> "_DclsConvNd":
        """A DCLS layer that starts as `conv`: every kept tap at its integer position.

        `init_error` on the result is the relative Frobenius error of the start kernel (0 when K >= prod(k)
        with bilinear interpolation). The output shape is kept (a 7x7 conv with padding 3 becomes a 17x17
        window with padding 8). With K < prod(k) and `inputs` (example inputs of this conv; convert passes them
        when given example_inputs), a depthwise layer's K taps sit on the source cells chosen greedily by their
        effect on the outputs, with the weights that minimise the output error on those inputs (output_fit.py),
        and `init_error` is that relative output error.
        """
        opts = options if isinstance(options, DclsOptions) else DclsOptions(**options)
        name = cls.__name__
        check_source_conv(conv, (cls.ndim,), name)
        target, extent = source_kernel(conv)
        ksize = tuple(conv.kernel_size)
        window = per_axis(opts.window, cls.ndim, "window", name) if opts.window is not None else default_window(ksize, extent)
        if any(L < e for L, e in zip(window, extent)):
            raise ValueError(f"{name}.from_conv: window {window} is smaller than the source kernel extent {extent}")
        padding, shift = grow_padding(conv, extent, window, name)
        taps = math.prod(ksize)
        K = opts.kernel_count or taps
        module = cls(conv.in_channels, conv.out_channels, K, window, padding=padding, interpolation=opts.interpolation,
                     sigma_min=opts.sigma_min, engine=opts.engine, learn_axes=opts.learn_axes, **conv_kwargs(conv))
        with torch.no_grad():
            _place_taps(module, conv.weight.detach(), tuple(conv.dilation), shift)
            copy_bias(module, conv)
            # Reported against the kernel the source conv really applies, placed in the new window. Too large a
            # dense kernel (a depthwise layer on the tap engine never builds one): bilinear taps sit on their
            # cells, so the error is the energy of the dropped taps (gaussian: unknown, None).
            dense_bytes = module.weight.shape[0] * module.weight.shape[1] * math.prod(window) * 8
            if inputs is not None and K < math.prod(ksize) and _refit_to_inputs(
                    module, placed_source_kernel(module, conv), inputs, choose=True):
                pass  # init_error set there (output space)
            elif dense_bytes <= MAX_DENSE_KERNEL_BYTES:
                module.init_error = relative_error(module.dense_kernel(), placed_source_kernel(module, conv))
            elif opts.interpolation == "bilinear" and not conv.weight.is_meta:
                flat = conv.weight.detach().double().flatten(2)
                dropped = max(flat.shape[-1] - K, 0)  # the smallest taps of each pair, summed directly
                lost = flat.abs().sort(dim=-1).values[..., :dropped].square().sum()
                total = flat.square().sum()
                module.init_error = float((lost / total).sqrt()) if total > 0 else 0.0
            else:
                module.init_error = None
        return module


def _choose_cells(qq: torch.Tensor, b: torch.Tensor, candidates: torch.Tensor, K: int) -> torch.Tensor:
    """Per channel, K of the candidate cells chosen greedily by their effect on the outputs (forward selection):
    each step adds the cell that most increases b_S^T (S_qq)_S^-1 b_S, the output energy the fitted taps explain
    (b = S_qo t). qq: (C, n, n), b: (C, n), candidates: (m,) cell indices. Returns (C, K) cells, in choice order."""
    C = qq.shape[0]
    A = qq[:, candidates][:, :, candidates]  # (C, m, m)
    r = b[:, candidates]  # (C, m)
    scale = A.diagonal(dim1=1, dim2=2).mean(-1, keepdim=True).clamp_min(1e-30)
    chosen = torch.empty(C, 0, dtype=torch.long, device=qq.device)
    taken = torch.zeros_like(r, dtype=torch.bool)
    rows = torch.arange(C, device=qq.device)
    for _ in range(K):
        if chosen.shape[1]:
            As = A.gather(1, chosen[:, :, None].expand(-1, -1, A.shape[2]))  # (C, s, m)
            Ass = As.gather(2, chosen[:, None, :].expand(-1, chosen.shape[1], -1))  # (C, s, s)
            eye = torch.eye(chosen.shape[1], dtype=A.dtype, device=A.device)
            w = torch.linalg.solve(Ass + 1e-9 * scale[:, :, None] * eye, As)  # (C, s, m): (A_SS)^-1 A_Sj
            denom = A.diagonal(dim1=1, dim2=2) - (As * w).sum(1)
            numer = r - (w * r.gather(1, chosen)[:, :, None]).sum(1)
        else:
            denom, numer = A.diagonal(dim1=1, dim2=2), r
        gain = numer.square() / denom.clamp_min(1e-12 * scale)
        gain = gain.masked_fill(taken, -1.0)
        pick = gain.argmax(dim=1)
        taken[rows, pick] = True
        chosen = torch.cat([chosen, pick[:, None]], dim=1)
    return candidates[chosen]


def _refit_to_inputs(module: _DclsConvNd, placed: torch.Tensor, inputs: torch.Tensor, choose: bool = False) -> bool:
    """Depthwise, bilinear, every tap on its integer cell (K <= k*k: all placed source taps, or a stage's shared
    cells): per channel, the taps' weights minimising the output error on the inputs' patches,
    w = S_qq[taps, taps]^-1 (S_qo t)[taps], t the source kernel `placed` in the window (output_fit.Moments: q what
    this layer sees, o what the original saw; one matrix unless the converted upstream is in place). choose: also
    pick which source cells the K taps sit on, per channel the better of greedy selection by their effect on the
    outputs (_choose_cells) and the largest-magnitude taps. False (kernel-space start kept) where it does not
    apply."""
    from ..output_fit import patch_moments, relative_output_error

    if not (module.is_depthwise and module.interpolation == "bilinear") or placed.is_meta:
        return False
    S = patch_moments(inputs, module, module.groups)  # (C, cells, cells) each
    if S is None:
        return False
    S = S.to(module.weight.device)
    target = placed.double().flatten(2)[:, 0]  # (C, cells)
    b = torch.einsum("cij,cj->ci", S.qo, target)  # (C, cells)
    cells = torch.zeros_like(module.positions[0, :, 0], dtype=torch.long)  # (C, K) row-major cell of each tap
    for d, L in enumerate(module.window):
        cells = cells * L + (module.positions[d, :, 0].round().long() + L // 2)
    w, err = _fit_cells(S, b, target, cells)
    candidates = target.ne(0).any(0).nonzero().flatten()  # the source kernel's cells in the window
    if choose and module.kernel_count < candidates.numel():
        # per channel, the better of the cells chosen by their effect on the outputs and the largest taps
        greedy = _choose_cells(S.qq, b, candidates, module.kernel_count)
        w2, err2 = _fit_cells(S, b, target, greedy)
        better = err2 < err
        cells, w = torch.where(better[:, None], greedy, cells), torch.where(better[:, None], w2, w)
        with torch.no_grad():
            rest = cells
            for d in reversed(range(len(module.window))):  # row-major cell -> offset from the window centre per axis
                L = module.window[d]
                module.positions[d, :, 0] = (rest % L - L // 2).to(module.positions.dtype)
                rest = rest // L
    with torch.no_grad():
        module.weight[:, 0] = w.to(module.weight.dtype)
        fitted = module.dense_kernel().double().flatten(2)[:, 0]
    module.init_error = relative_output_error(fitted[:, None], target[:, None], S)  # a group per channel
    return True


def _fit_cells(S, b: torch.Tensor, target: torch.Tensor, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel, the weights of taps on `cells` (C, K) minimising the output error, and that squared error."""
    Skk = S.qq.gather(1, cells[:, :, None].expand(-1, -1, S.qq.shape[-1])).gather(2, cells[:, None, :].expand(
        -1, cells.shape[1], -1))  # (C, K, K)
    ridge = 1e-9 * Skk.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-30)
    eye = torch.eye(Skk.shape[-1], dtype=Skk.dtype, device=Skk.device)
    bk = b.gather(1, cells)
    w = torch.linalg.solve(Skk + ridge[:, None, None] * eye, bk.unsqueeze(-1)).squeeze(-1)
    # E(f.q - t.o)^2 = w^T S_kk w - 2 w^T b_k + t^T S_oo t, per channel
    err = (torch.einsum("ck,ckl,cl->c", w, Skk, w) - 2 * (w * bk).sum(-1)
           + torch.einsum("ci,cij,cj->c", target, S.oo, target))
    return w, err


def placed_source_kernel(module: _DclsConvNd, conv: nn.Module) -> torch.Tensor:
    """The kernel `conv` applies (dilation folded in), placed where from_conv puts it in the module's window."""
    target, extent = source_kernel(conv)
    _, shift = grow_padding(conv, extent, module.window, type(module).__name__)
    pads = [v for s, e, L in reversed(list(zip(shift, extent, module.window))) for v in (s, L - e - s)]
    return F.pad(target.to(module.weight.dtype), pads)


def share_stage_positions(layers) -> None:
    """The converter's hook (share_positions="stage", the ConvNeXt-dcls recipe): one positions tensor per stage for
    layers of the same shape. A stage is the name up to "stage(s)N" / "layer(s)N", else the parent module."""
    groups: dict[tuple, list] = {}
    for layer in layers:
        if getattr(layer.options, "share_positions", None) != "stage":
            continue
        names = layer.names or [layer.name]  # a conv under several names: the first that names a stage decides
        m = next((m for m in (re.match(r"(.*?(?:stages?|layers?)[._]?\d+)", n) for n in names) if m), None)
        stage = m.group(1) if m else layer.name.rsplit(".", 1)[0]
        key = (stage, tuple(layer.module.positions.shape), layer.module.window)
        groups.setdefault(key, []).append(layer)
    for members in groups.values():
        share_positions([(lay.module, placed_source_kernel(lay.module, lay.source)) for lay in members],
                        [lay.inputs for lay in members])


def share_positions(members: Sequence[tuple[_DclsConvNd, torch.Tensor]],
                    inputs: Sequence[torch.Tensor | None] | None = None) -> None:
    """Ties the positions of layers of one shape to a single Parameter (the DCLS papers share them per stage)
    while keeping what each layer learned. `members`: (module, its source kernel placed in its window);
    `inputs`: each member's example inputs or None (then its weights at the shared cells are refitted in output
    space, as from_conv does).

    When the layers' positions already agree (K >= prod(k): every tap on its grid cell), the first layer's tensor
    is shared as is. Otherwise, per (out, in) pair, the K window cells that carry the most of the layers' kernels
    (each layer's kernel scaled to unit energy, so every layer counts alike) become the shared positions, and every
    layer takes its own source weights at those cells; `init_error` is measured again against its source kernel.
    """
    first = members[0][0]
    if all(torch.equal(m.positions, first.positions) for m, _ in members[1:]):
        for m, _ in members[1:]:
            m.positions = first.positions
        return
    window = first.window
    with torch.no_grad():
        flat = [t.detach().to(torch.float64).flatten(2) for _, t in members]  # (Cout, Cin/g, cells)
        score = sum(f.square() / f.square().sum(-1, keepdim=True).clamp_min(1e-300) for f in flat)
        keep = min(first.kernel_count, score.shape[-1])
        order = score.argsort(dim=-1, descending=True, stable=True)[..., :keep]
        shared = first.positions.detach().clone()  # extras beyond the window's cells keep the first layer's spots
        cell = order.clone()
        for d in reversed(range(len(window))):  # row-major cell index -> offset from the window centre per axis
            shared[d, ..., :keep] = (cell % window[d] - window[d] // 2).to(shared.dtype)
            cell = cell // window[d]
        positions = nn.Parameter(shared, requires_grad=first.positions.requires_grad)
        for i, ((m, target), f) in enumerate(zip(members, flat)):
            m.weight[..., :keep] = f.gather(-1, order).to(m.weight.dtype)
            m.weight[..., keep:] = 0
            m.positions = positions
            m.init_error = relative_error(m.dense_kernel(), target)
            seen = inputs[i] if inputs is not None else None
            if seen is not None and keep == m.kernel_count:
                _refit_to_inputs(m, target, seen)  # sets init_error in output space


def _place_taps(module: _DclsConvNd, weight: torch.Tensor, dilation: tuple[int, ...], shift: tuple[int, ...]) -> None:
    """Puts the K largest-magnitude source taps of each (out, in) pair at their integer positions; extra
    taps (K > prod(k)) get zero weight at spread positions."""
    Cout, Cin_g = weight.shape[:2]
    flat = weight.reshape(Cout, Cin_g, -1)
    taps = flat.shape[-1]
    K = module.kernel_count
    keep = min(K, taps)
    if K < taps:  # keep the largest-magnitude taps of each pair
        order = flat.abs().argsort(dim=-1, descending=True, stable=True)[..., :keep]
    else:  # every tap in grid order: positions then agree across layers (shareable per stage)
        order = torch.arange(taps, device=weight.device).expand(Cout, Cin_g, taps)
    module.weight.zero_()
    module.weight[..., :keep] = flat.gather(-1, order).to(module.weight.dtype)
    # Grid coordinates of tap index j in the source kernel, per axis (row-major over kernel_size).
    ksize = weight.shape[2:]
    coords = torch.stack(torch.meshgrid(*[torch.arange(k, device=weight.device) for k in ksize], indexing="ij"))
    coords = coords.reshape(len(ksize), -1)  # (D, taps)
    for d, L in enumerate(module.window):
        grid = coords[d] * dilation[d] + shift[d] - L // 2  # offset from the new window's centre
        module.positions[d, ..., :keep] = grid[order].to(module.positions.dtype)
        if K > taps:  # spread the zero-weight extras deterministically over the window
            gen = torch.Generator().manual_seed(d)
            extra = torch.rand(Cout, Cin_g, K - taps, generator=gen, dtype=torch.float64)
            module.positions[d, ..., taps:] = (extra * (L - 1) - L // 2).to(module.positions)
    if module.sigma is not None:
        module.sigma.zero_()  # narrowest gaussian (sigma_min): closest to the source taps


class DclsConv1d(_DclsConvNd):
    """DCLS over 1-D inputs (N, C, L): weight (Cout, Cin/g, K), positions (1, Cout, Cin/g, K)."""
    ndim = 1


class DclsConv2d(_DclsConvNd):
    """DCLS over 2-D inputs: weight (Cout, Cin/g, K), positions (2, Cout, Cin/g, K) as (row, column) offsets
    from the window centre L // 2. Example: positions[:, o, i, k] = (-2.0, 0.5) puts tap k two rows above the
    centre, halfway between the centre column and the next one (bilinear: half its weight on each)."""
    ndim = 2


class DclsConv3d(_DclsConvNd):
    """DCLS over 3-D inputs (N, C, D, H, W); always construct + dense conv."""
    ndim = 3
