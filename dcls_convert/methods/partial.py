"""Partially dilated kernels (the PyTorch-forums thread "Partially dilated convolution"): per axis a dense island of m taps in the middle and n taps on each
side at spacing r beyond it (m=5, n=4, r=2: 101010101111101010101); in 2-D the support is the outer product
of the axis patterns. The kernel is assembled by the compiled construct op with nearest taps at fixed
integer positions; depthwise 1-D/2-D layers run the tap engine on those taps instead."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from .. import ops
from ..geometry import per_axis
from .base import (ConvertedConv, Engine, check_engine, check_source_conv, conv_forward, conv_kwargs, copy_bias,
                   grow_padding, source_kernel)

__all__ = ["PartialOptions", "PartialDilatedConv1d", "PartialDilatedConv2d", "axis_pattern"]


@dataclass(frozen=True)
class PartialOptions:
    """Options of `convert(model, "partial", ...)` and `PartialDilatedConvNd.from_conv(conv, ...)`.

    Args:
        island: dense island size m per axis (odd, >= the source extent); default the source extent.
        wing_taps: n taps per wing; default max(1, extent // 2).
        wing_spacing: spacing r of the wing taps (>= 1).
        engine: "auto" (depthwise 1-D/2-D layers on the tap engine), "taps" or "dense" (construct + conv).
    """

    island: int | tuple[int, ...] | None = None
    wing_taps: int | tuple[int, ...] | None = None
    wing_spacing: int | tuple[int, ...] = 2
    engine: Engine = "auto"

    def __post_init__(self):
        check_engine("PartialOptions", self.engine)


def axis_pattern(m: int, n: int, r: int) -> list[int]:
    """Offsets from the centre of the support along one axis, ascending."""
    h = m // 2
    wings = [h + j * r for j in range(1, n + 1)]
    return sorted([-w for w in wings] + list(range(-h, h + 1)) + wings)


class _PartialDilatedConvNd(ConvertedConv):
    method = "partial"

    def __init__(self, in_channels: int, out_channels: int, island, wing_taps, wing_spacing,
                 stride=1, padding=0, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 engine: str = "auto", device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        factory_kwargs = {"device": device, "dtype": dtype}
        self._init_conv_args(in_channels, out_channels, stride, padding, groups, bias, padding_mode, factory_kwargs)
        check_engine(name, engine)
        self.engine = engine
        self.island = per_axis(island, self.ndim, "island", name)
        if any(m % 2 == 0 for m in self.island):
            raise ValueError(f"{name}: island must be odd on every axis (it is centred), got {self.island}")
        self.wing_taps = per_axis(wing_taps, self.ndim, "wing_taps", name, minimum=0)
        self.wing_spacing = per_axis(wing_spacing, self.ndim, "wing_spacing", name)
        offsets = self._tap_offsets_value()
        self.register_buffer("tap_offsets", offsets.to(device=device, dtype=dtype or torch.get_default_dtype()),
                             persistent=False)
        cin_g = in_channels // groups
        n_wing = offsets.shape[1] - math.prod(self.island)
        self.island_weight = nn.Parameter(torch.empty((out_channels, cin_g, *self.island), **factory_kwargs))
        self.wing_weight = nn.Parameter(torch.empty((out_channels, cin_g, n_wing), **factory_kwargs))
        self.init_error: float | None = None
        self.reset_parameters()

    def _tap_offsets_value(self) -> torch.Tensor:
        """(D, taps) offsets from the centre: island taps first (row-major, so island_weight reshapes to the dense
        island), then the wing taps."""
        patterns = [axis_pattern(m, n, r) for m, n, r in zip(self.island, self.wing_taps, self.wing_spacing)]
        grid = torch.stack(torch.meshgrid(*[torch.tensor(p, dtype=torch.float64) for p in patterns], indexing="ij"))
        grid = grid.reshape(self.ndim, -1)
        in_island = torch.ones(grid.shape[1], dtype=torch.bool)
        for d, m in enumerate(self.island):
            in_island &= grid[d].abs() <= m // 2
        order = torch.cat([in_island.nonzero().flatten(), (~in_island).nonzero().flatten()])
        return grid[:, order]

    def _derived_buffers(self) -> dict[str, torch.Tensor]:
        return {"tap_offsets": self._tap_offsets_value()}

    @property
    def window(self) -> tuple[int, ...]:
        return tuple(m + 2 * n * r for m, n, r in zip(self.island, self.wing_taps, self.wing_spacing))

    @property
    def kernel_count(self) -> int:
        return self.tap_offsets.shape[1]

    def reset_parameters(self) -> None:
        fan_in = (self.in_channels // self.groups) * self.kernel_count
        bound = 1 / math.sqrt(fan_in)
        nn.init.uniform_(self.island_weight, -bound, bound)
        nn.init.uniform_(self.wing_weight, -bound, bound)
        self.reset_bias(fan_in)

    def _taps(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.cat([self.island_weight.flatten(2), self.wing_weight], dim=-1)
        pos = self.tap_offsets.to(w.dtype)[:, None, None, :].expand(self.ndim, *w.shape)
        return w, pos

    def dense_kernel(self) -> torch.Tensor:
        w, pos = self._taps()
        return ops.construct(w, pos, None, self.window, "nearest")

    def uses_tap_engine(self) -> bool:
        # Nearest taps touch kernel_count <= prod(window) entries, so the engine is never costlier than dense
        # (on an H200, cuDNN's 17x17 depthwise bfloat16 channels_last runs 10x slower than its 7x7).
        return self.engine != "dense" and self.is_depthwise and self.ndim <= 2

    def engine_name(self) -> str:
        return "taps(nearest)" if self.uses_tap_engine() else "construct+conv"

    def _extra_config(self) -> dict:
        return dict(island=list(self.island), wing_taps=list(self.wing_taps), wing_spacing=list(self.wing_spacing),
                    engine=self.engine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if self.uses_tap_engine():
            return self._taps_forward(x, *self._taps(), "nearest")
        return conv_forward(x, self.dense_kernel(), self.bias, self.stride, self._pads(), self.padding_mode, self.groups)

    def pattern(self) -> str:
        """The support along the last axis as 0/1 (the notation of the forum thread: 101010101111101010101)."""
        m, n, r = self.island[-1], self.wing_taps[-1], self.wing_spacing[-1]
        offs = set(axis_pattern(m, n, r))
        L = self.window[-1]
        return "".join("1" if i - L // 2 in offs else "0" for i in range(L))

    def extra_repr(self) -> str:
        s = self._conv_repr()
        s.insert(1, f"island={self.island}, wing_taps={self.wing_taps}, wing_spacing={self.wing_spacing}, "
                    f"window={self.window}")
        return ", ".join(s)

    @classmethod
    def from_conv(cls, conv: nn.Module, **options) -> "_PartialDilatedConvNd":
        """Island <- the source kernel (centred), wings <- 0: the same output from the first step."""
        opts = options if isinstance(options, PartialOptions) else PartialOptions(**options)
        name = cls.__name__
        check_source_conv(conv, (cls.ndim,), name)
        target, extent = source_kernel(conv)
        if any(e % 2 == 0 for e in extent):
            raise ValueError(f"{name}.from_conv: the source kernel extent {extent} must be odd to sit in a centred island")
        island = per_axis(opts.island, cls.ndim, "island", name) if opts.island is not None else extent
        if any(m < e for m, e in zip(island, extent)):
            raise ValueError(f"{name}.from_conv: island {island} is smaller than the source kernel extent {extent}")
        wing_taps = opts.wing_taps if opts.wing_taps is not None else tuple(max(1, e // 2) for e in extent)
        module = cls(conv.in_channels, conv.out_channels, island, wing_taps, opts.wing_spacing, **conv_kwargs(conv),
                     padding=0, engine=opts.engine)
        padding, _ = grow_padding(conv, extent, module.window, name)
        module.padding = padding
        with torch.no_grad():
            module.island_weight.zero_()
            off = [(m - e) // 2 for m, e in zip(island, extent)]
            module.island_weight[(slice(None), slice(None), *(slice(o, o + e) for o, e in zip(off, extent)))] = target
            module.wing_weight.zero_()
            copy_bias(module, conv)
        module.init_error = 0.0
        return module


class PartialDilatedConv1d(_PartialDilatedConvNd):
    """Partially dilated conv over (N, C, L): island_weight (Cout, Cin/g, m), wing_weight (Cout, Cin/g, 2n)."""
    ndim = 1


class PartialDilatedConv2d(_PartialDilatedConvNd):
    """Partially dilated conv over (N, C, H, W): dense m x m island, dilated grid outside it."""
    ndim = 2
