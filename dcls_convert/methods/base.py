"""The contract every converted module meets: reproduce F.convNd(x, dense_kernel(), ...) exactly, build
itself from an existing conv (`from_conv`), fold back into one (`to_conv`)."""
from __future__ import annotations

import math
from typing import ClassVar, Literal, Sequence, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..geometry import per_axis
from ..padding import PADDING_MODES, normalize_padding, pad_input, side_pads

__all__ = ["ConvertedConv", "CONV_CLASSES", "conv_forward", "source_kernel", "check_source_conv",
           "grow_padding", "conv_kwargs", "copy_bias", "relative_error"]

CONV_CLASSES = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def conv_forward(x, kernel, bias, stride, pads, padding_mode, groups):
    x, sym = pad_input(x, pads, padding_mode)
    if any(sym) and any(k > n for k, n in zip(kernel.shape[2:], x.shape[2:])):
        # A kernel longer than its input with implicit padding sends PyTorch 2.14's CPU (oneDNN) weight gradient
        # into a hang or a crash; padding explicitly avoids it (wide windows in late layers do this).
        x = F.pad(x, [p for p in reversed(sym) for _ in range(2)])
        sym = [0] * len(sym)
    return _CONV_FN[kernel.dim() - 2](x, kernel, bias, stride, sym, 1, groups)


Engine = Literal["auto", "taps", "dense"]
ENGINES = get_args(Engine)


def check_engine(owner: str, engine) -> None:
    """engine: "auto" (the method's cost rule for the device), "taps" (the depthwise tap engine) or "dense"
    (PyTorch convolutions)."""
    if engine not in ENGINES:
        raise ValueError(f"{owner}: engine must be one of {ENGINES}, got {engine!r}")


class ConvertedConv(nn.Module):
    """Base of the three module kinds. Subclasses set `method`, `ndim`, build their parameters and
    implement `dense_kernel()` and `window`; `forward` may take a faster path that equals the oracle."""

    method: ClassVar[str] = ""
    ndim: ClassVar[int] = 2
    engine: str = "auto"  # set per instance; the class default lets modules pickled before the option load
    # Parameters that define where the kernel's mass sits (own optimizer group, no weight decay).
    position_param_names: ClassVar[tuple[str, ...]] = ()

    def _init_conv_args(self, in_channels, out_channels, stride, padding, groups, bias, padding_mode, factory_kwargs):
        owner = type(self).__name__
        if not isinstance(in_channels, int) or not isinstance(out_channels, int) or in_channels < 1 or out_channels < 1:
            raise ValueError(f"{owner}: in_channels and out_channels must be positive ints")
        if not isinstance(groups, int) or groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"{owner}: groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"{owner}: padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.stride = per_axis(stride, self.ndim, "stride", owner)
        self.padding = normalize_padding(padding, self.ndim, owner)
        if self.padding == "same" and any(s != 1 for s in self.stride):
            raise ValueError(f"{owner}: padding='same' needs stride 1 (as nn.ConvNd), got stride={self.stride}")
        self.padding_mode = padding_mode
        self.bias = nn.Parameter(torch.empty(out_channels, **factory_kwargs)) if bias else None

    def _derived_buffers(self) -> dict[str, torch.Tensor]:
        """Non-persistent buffers computed from the configuration, by name (rebuilt when the module leaves the
        meta device: to_empty gives them no values and state_dict does not carry them)."""
        return {}

    def _apply(self, fn, recurse=True):
        was_meta = {name for name, b in self.named_buffers(recurse=False) if b.is_meta}
        super()._apply(fn, recurse)
        if was_meta:
            with torch.no_grad():
                for name, value in self._derived_buffers().items():
                    buf = getattr(self, name)
                    if name in was_meta and not buf.is_meta:
                        buf.copy_(value.to(device=buf.device, dtype=buf.dtype))
        return self

    # --- the contract -------------------------------------------------------------------------------
    @property
    def window(self) -> tuple[int, ...]:
        raise NotImplementedError

    def dense_kernel(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def receptive_field(self) -> tuple[int, ...]:
        """Extent of the kernel in input pixels, per spatial axis."""
        return self.window

    @property
    def is_depthwise(self) -> bool:
        return self.groups == self.in_channels == self.out_channels

    def _pads(self) -> list[tuple[int, int]]:
        return side_pads(self.padding, self.window)

    def _taps_forward(self, x: torch.Tensor, weight: torch.Tensor, positions: torch.Tensor,
                      interpolation: str) -> torch.Tensor:
        """The layer through the tap engine (depthwise): pad as the module pads, then ops.taps_conv."""
        xp, sym = pad_input(x, self._pads(), self.padding_mode)
        return ops.taps_conv(xp, weight, positions, self.bias, self.window, self.stride, sym, interpolation)

    def _check_input(self, x: torch.Tensor) -> None:
        name = type(self).__name__
        if x.dim() != self.ndim + 2:
            raise ValueError(f"{name}: expected a {self.ndim + 2}-D input (N, C, {'x'.join('LHW'[-self.ndim:] if self.ndim < 3 else 'DHW')}), "
                             f"got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{name}: expected {self.in_channels} input channels, got {x.shape[1]}")
        if self.padding_mode in ("reflect", "circular"):
            for d, (before, after) in enumerate(self._pads()):
                size = x.shape[2 + d]
                if max(before, after) > size or (self.padding_mode == "reflect" and max(before, after) == size):
                    raise ValueError(f"{name}: {self.padding_mode} padding {max(before, after)} (window {self.window}) "
                                     f"needs a larger input than {size} along spatial axis {d}")
        w = next((p for p in self._parameters.values() if p is not None), None)  # own ones: no module walk
        if w is not None and x.dtype != w.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"{name}: input dtype {x.dtype} does not match the layer's {w.dtype}; convert one of them "
                            "(model.to(dtype) or x.to(dtype)) or run under torch.autocast")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return conv_forward(x, self.dense_kernel(), self.bias, self.stride, self._pads(), self.padding_mode, self.groups)

    def engine_name(self) -> str:
        return "construct+conv"

    def config(self) -> dict:
        """Constructor arguments (JSON-able): `type(self)(**self.config())` rebuilds the module's structure."""
        cfg = dict(in_channels=self.in_channels, out_channels=self.out_channels, stride=list(self.stride),
                   padding=self.padding if isinstance(self.padding, str) else list(self.padding), groups=self.groups,
                   bias=self.bias is not None, padding_mode=self.padding_mode)
        cfg.update(self._extra_config())
        return cfg

    def _extra_config(self) -> dict:
        raise NotImplementedError

    def to_conv(self) -> nn.Module:
        """An exactly equivalent plain nn.ConvNd (same stride, padding, padding_mode, groups, bias)."""
        kernel = self.dense_kernel().detach()
        conv = CONV_CLASSES[self.ndim](
            self.in_channels, self.out_channels, self.window, stride=self.stride, padding=self.padding,
            groups=self.groups, bias=self.bias is not None, padding_mode=self.padding_mode,
            device=kernel.device, dtype=kernel.dtype)
        with torch.no_grad():
            conv.weight.copy_(kernel)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def reset_bias(self, fan_in: int) -> None:
        if self.bias is not None:
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def _conv_repr(self) -> list[str]:
        s = [f"{self.in_channels}, {self.out_channels}"]
        if any(v != 1 for v in self.stride):
            s.append(f"stride={self.stride}")
        if self.padding not in ((0,) * self.ndim, "valid"):
            s.append(f"padding={self.padding!r}")
        if self.groups != 1:
            s.append(f"groups={self.groups}")
        if self.bias is None:
            s.append("bias=False")
        if self.padding_mode != "zeros":
            s.append(f"padding_mode={self.padding_mode!r}")
        if self.engine != "auto":
            s.append(f"engine={self.engine!r}")
        return s


def check_source_conv(conv: nn.Module, ndim_allowed: Sequence[int], owner: str) -> int:
    """Validates a conv to convert from; returns its number of spatial dims."""
    if isinstance(conv, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) or getattr(conv, "transposed", False):
        raise ValueError(f"{owner}.from_conv: transposed convolutions are not supported ({type(conv).__name__})")
    if not isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        raise TypeError(f"{owner}.from_conv: expected an nn.Conv1d/2d/3d, got {type(conv).__name__}")
    ndim = conv.weight.dim() - 2
    if ndim not in ndim_allowed:
        raise ValueError(f"{owner}.from_conv: {ndim}-D convolutions are not supported (supports {list(ndim_allowed)})")
    if conv.weight.is_meta:
        return ndim  # no values to check yet
    if not torch.isfinite(conv.weight).all() or (conv.bias is not None and not torch.isfinite(conv.bias).all()):
        raise ValueError(f"{owner}.from_conv: the source conv has non-finite weights (NaN or Inf)")
    return ndim


def source_kernel(conv: nn.Module) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The conv's kernel as the dense kernel it really applies (dilation folded in) and its extent."""
    from ..kernel_dilation import dilate_kernel

    w = conv.weight.detach()
    if any(d != 1 for d in conv.dilation):
        w = dilate_kernel(w, conv.dilation)
    return w, tuple(w.shape[2:])


def grow_padding(conv: nn.Module, extent: Sequence[int], window: Sequence[int], owner: str):
    """Padding for a window L that keeps the source conv's output shape and alignment, and the shift that maps
    a source kernel index g to the new window index g + shift (negative when L is smaller than the extent)."""
    pad = conv.padding
    if pad == "same":
        return "same", tuple((L - 1) // 2 - (e - 1) // 2 for e, L in zip(extent, window))
    if any((L - e) % 2 for e, L in zip(extent, window)):
        raise ValueError(f"{owner}.from_conv: window {tuple(window)} minus the source extent {tuple(extent)} must be "
                         "even on every axis to keep the output shape; pick a window of the same parity")
    shift = tuple((L - e) // 2 for e, L in zip(extent, window))
    base = (0,) * len(window) if pad == "valid" else tuple(pad)
    out = tuple(p + s for p, s in zip(base, shift))
    if any(p < 0 for p in out):
        raise ValueError(f"{owner}.from_conv: a {tuple(window)} window cannot keep the output shape of a "
                         f"{tuple(extent)} kernel with padding {pad}")
    return out, shift


def conv_kwargs(conv: nn.Module) -> dict:
    """Everything of the source conv a converted module keeps, on its device and dtype."""
    return dict(stride=tuple(conv.stride), groups=conv.groups, bias=conv.bias is not None,
                padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)


def copy_bias(module: ConvertedConv, conv: nn.Module) -> None:
    if conv.bias is not None:
        with torch.no_grad():
            module.bias.copy_(conv.bias)


def relative_error(kernel: torch.Tensor, target: torch.Tensor) -> float | None:
    """||kernel - target|| / ||target|| (Frobenius, accumulated in float64); None on the meta device (no values
    yet: a model built on meta gets its weights later)."""
    if kernel.is_meta or target.is_meta:
        return None
    norm = torch.linalg.vector_norm(target, dtype=torch.float64)
    return float(torch.linalg.vector_norm(kernel - target, dtype=torch.float64) / norm) if norm > 0 else 0.0
