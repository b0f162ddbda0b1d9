"""Bloom (interpolated dilation, after the PyTorch-forums question "Is interpolated-dilation convolution a thing?"): a compact kernel v of k taps per axis spread onto a grid
`factor` times finer by linear interpolation, optionally fading out past the edge taps. Same parameter count
as the compact kernel; the forward uses conv(x, bloom(v)) == conv(tent_blur(x), v dilated by s) when cheaper."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..geometry import per_axis
from ..padding import pad_input
from .base import (ConvertedConv, Engine, check_engine, check_source_conv, conv_kwargs, copy_bias, grow_padding,
                   relative_error, source_kernel)

__all__ = ["BloomOptions", "BloomConv1d", "BloomConv2d", "tent", "tent_nd", "bloom_matrix", "bloom_kernel"]

_CONV = {1: F.conv1d, 2: F.conv2d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d}


class _FixedBlur(torch.autograd.Function):
    """The depthwise tent blur on PyTorch's convolutions (zero padding). Their autograd would keep the input for a
    weight gradient the fixed tent never needs; here the backward is the transposed blur, which keeps only the
    tent."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kern: torch.Tensor, padding: list[int]) -> torch.Tensor:
        ctx.save_for_backward(kern)
        ctx.padding = padding
        return _CONV[x.dim() - 2](x, kern, padding=padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (kern,) = ctx.saved_tensors  # (under autocast the forward ran in 16 bits, and so does its gradient)
        blurred = _CONV_T[grad.dim() - 2](grad, kern.to(grad.dtype), padding=ctx.padding, groups=grad.shape[1])
        return blurred, None, None


@dataclass(frozen=True)
class BloomOptions:
    """Options of `convert(model, "bloom", ...)` and `BloomConvNd.from_conv(conv, ...)`.

    Args:
        factor: integer spreading factor s >= 2.
        fade: bloom past the edge taps (3 -> 7 for s=2) or crop there (3 -> 5).
        keep: "kernel" keeps the source kernel size as the compact size (larger receptive field, same
            parameters); "size" picks the compact size whose bloom is the source size (fewer parameters).
        engine: "auto" (cost rule per device), "taps" (depthwise tap engine) or "dense" (PyTorch convolutions:
            the tent blur then the compact kernel dilated, or the bloomed kernel).
    """

    factor: int = 2
    fade: bool = True
    keep: Literal["kernel", "size"] = "kernel"
    engine: Engine = "auto"

    def __post_init__(self):
        if not isinstance(self.factor, int) or self.factor < 2:
            raise ValueError(f"BloomOptions: factor must be an int >= 2, got {self.factor!r}")
        if not isinstance(self.fade, bool):
            raise ValueError(f"BloomOptions: fade must be True or False, got {self.fade!r}")
        if self.keep not in ("kernel", "size"):
            raise ValueError(f"BloomOptions: keep must be 'kernel' or 'size', got {self.keep!r}")
        check_engine("BloomOptions", self.engine)


# Depthwise bloom on CUDA: the tap engine (blur taps + dilated taps) when True, else cuDNN's depthwise
# convolutions (tent blur, then the compact kernel dilated). Set from benchmarks/bench_gpu.py (RESULTS.md).
TAPS_ON_CUDA = True
# Device types whose depthwise bloom runs the fixed blur on PyTorch's convolution (cuDNN: one kernel each way, no
# table; the tent in the input's dtype, inexact in 16 bits for factors 3 and 5) and the dilated taps on the tap
# engine, instead of both on the tap engine (a table build and a tiled kernel each way for each). CUDA since an
# H200 measured a convnext_tiny training step at 37.8 ms this way against 50.8 on the tap engine alone (AMP
# bfloat16; 67.6 against 70.0 in float32: benchmarks/RESULTS.md, sixth session).
CONV_BLUR_DEVICES: set[str] = {"cuda"}


def tent(s: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """t_s[j] = 1 - |j - (s - 1)| / s for j = 0 .. 2s - 2 (s = 2: [0.5, 1, 0.5])."""
    j = torch.arange(2 * s - 1, dtype=dtype, device=device)
    return 1 - (j - (s - 1)).abs() / s


def bloomed_size(k: int, s: int, fade: bool) -> int:
    return s * (k + 1) - 1 if fade else s * (k - 1) + 1


def bloom_matrix(k: int, s: int, fade: bool, dtype=torch.float64, device=None) -> torch.Tensor:
    """The 1-D bloom operator A (bloomed_size x k): bloom(v) = A v along one axis."""
    t = tent(s, dtype, device)
    full = torch.zeros(s * (k + 1) - 1, k, dtype=dtype, device=device)
    for j in range(k):
        full[s * j: s * j + 2 * s - 1, j] = t
    return full if fade else full[s - 1: full.shape[0] - (s - 1)]


def per_axis_factors(s, ndim: int) -> tuple[int, ...]:
    return (s,) * ndim if isinstance(s, int) else tuple(s)


def tent_nd(s, ndim: int, dtype, device) -> torch.Tensor:
    """The separable tent t_s0 x ... x t_s(D-1) as a (1, 1, 2s0-1, ...) conv kernel (s: int or one per axis;
    a factor of 1 is the identity [1] on that axis)."""
    factors = per_axis_factors(s, ndim)
    kern = tent(factors[0], dtype, device)
    for f in factors[1:]:
        kern = kern[..., None] * tent(f, dtype, device)
    return kern.reshape(1, 1, *kern.shape)


def bloom_kernel(v: torch.Tensor, s, fade: bool) -> torch.Tensor:
    """(Cout, Cin/g, *k) -> (Cout, Cin/g, *bloomed) as conv_transpose(v, tent x ... x tent, stride=s); s is an int
    or one factor per axis."""
    ndim = v.dim() - 2
    factors = per_axis_factors(s, ndim)
    flat = v.reshape(-1, 1, *v.shape[2:])
    out = _CONV_T[ndim](flat, tent_nd(factors, ndim, v.dtype, v.device), stride=factors)
    if not fade:
        out = out[(slice(None), slice(None), *(slice(f - 1, n - (f - 1)) for f, n in zip(factors, out.shape[2:])))]
    return out.reshape(*v.shape[:2], *out.shape[2:])


def grid_offsets(window, dtype, device, spacing=1) -> torch.Tensor:
    """(D, prod(window)) offsets from the centre of every window pixel, row-major (nearest taps); with spacing s
    (int or per axis), the pixels of a kernel of `window` taps dilated by s, in a window of s (window - 1) + 1."""
    spacings = per_axis_factors(spacing, len(window))
    axes = [torch.arange(L, dtype=dtype, device=device) * sp - (sp * (L - 1) + 1) // 2 for L, sp in zip(window, spacings)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")).reshape(len(window), -1)


class _BloomConvNd(ConvertedConv):
    method = "bloom"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, factor: int = 2, fade: bool = True,
                 stride=1, padding=0, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 engine: str = "auto", device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        factory_kwargs = {"device": device, "dtype": dtype}
        self._init_conv_args(in_channels, out_channels, stride, padding, groups, bias, padding_mode, factory_kwargs)
        check_engine(name, engine)
        self.engine = engine
        if not isinstance(factor, int) or factor < 2:
            raise ValueError(f"{name}: factor must be an int >= 2 (1 would be the plain conv), got {factor!r}")
        self.kernel_size = per_axis(kernel_size, self.ndim, "kernel_size", name)
        if not isinstance(fade, bool):
            raise ValueError(f"{name}: fade must be True or False, got {fade!r}")
        self.factor, self.fade = factor, fade
        self.weight = nn.Parameter(torch.empty((out_channels, in_channels // groups, *self.kernel_size), **factory_kwargs))
        self.init_error: float | None = None
        self.reset_parameters()

    @property
    def factors(self) -> tuple[int, ...]:
        """The factor per axis: 1 on axes of one tap (a (7, 1) kernel blooms to (15, 1), factorised stays so)."""
        return tuple(1 if k == 1 else self.factor for k in self.kernel_size)

    @property
    def blur_window(self) -> list[int]:
        """The fixed tent's size per axis (2s - 1): the blur of the blur + dilated identity."""
        return [2 * f - 1 for f in self.factors]

    @property
    def window(self) -> tuple[int, ...]:
        return tuple(bloomed_size(k, f, self.fade) for k, f in zip(self.kernel_size, self.factors))

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.reset_bias((self.in_channels // self.groups) * math.prod(self.kernel_size))

    def dense_kernel(self) -> torch.Tensor:
        return bloom_kernel(self.weight, self.factors, self.fade)

    def uses_tap_engine(self, device_type: str | None = None) -> bool:
        """Depthwise 1-D/2-D layers, cost rule measured per device (benchmarks/RESULTS.md): on CPU the compiled
        tap engine beats PyTorch's depthwise conv (whose weight gradient is a slow generic path) and its dilated
        form; on CUDA see TAPS_ON_CUDA."""
        if self.engine == "dense" or not self.is_depthwise or self.ndim > 2:
            return False
        device_type = device_type or self.weight.device.type
        return self.engine == "taps" or (ops.compiled_for("taps_conv", device_type)
                                          and (device_type != "cuda" or TAPS_ON_CUDA))

    def uses_blur_path(self, device_type: str | None = None) -> bool:
        """Cost rule (multiply-adds per output pixel): blur (Cin x tent) + dilated compact conv vs the dense
        bloomed conv. The identity needs the fade (the cropped kernel is not a plain blur of a dilated one)."""
        if not self.fade or self.uses_tap_engine(device_type):
            return False
        cin_g = self.in_channels // self.groups
        blur = self.in_channels * math.prod(self.blur_window) / self.out_channels  # a list: dynamo
        return blur + cin_g * math.prod(self.kernel_size) < cin_g * math.prod(self.window)

    def engine_name(self) -> str:
        if self.uses_tap_engine():
            return "taps(blur+dilated)" if self.fade else "taps(dense grid)"
        return "blur+dilated" if self.uses_blur_path() else "bloom+conv"

    def _extra_config(self) -> dict:
        return dict(kernel_size=list(self.kernel_size), factor=self.factor, fade=self.fade, engine=self.engine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        taps = self.uses_tap_engine(x.device.type)
        if taps and self.fade:
            return self._blur_taps_forward(x)
        if taps:
            kernel = self.dense_kernel()
            w = kernel.flatten(2)
            pos = grid_offsets(self.window, w.dtype, w.device)[:, None, None, :].expand(self.ndim, *w.shape)
            return self._taps_forward(x, w, pos, "nearest")
        if not self.uses_blur_path(x.device.type):
            return super().forward(x)
        s, ndim = self.factors, self.ndim
        # Pad as the bloomed conv would, blur with the fixed tent (valid), then the compact kernel dilated by s
        # (the padding split between the two: _blur_padding).
        pads = self._pads()
        xp, sym = pad_input(x, pads, self.padding_mode)
        blur_pad, rest = self._blur_padding(sym)
        tent = self._blur_constants(x.dtype, torch.promote_types(x.dtype, torch.float32), x.device)[0]
        kern = tent.view(1, 1, *self.blur_window)
        z = _FixedBlur.apply(xp, kern.expand(self.in_channels, *kern.shape[1:]), blur_pad)
        return _CONV[ndim](z, self.weight, self.bias, self.stride, rest, s, self.groups)

    def _blur_padding(self, padding: list[int]) -> tuple[list[int], list[int]]:
        """Splits the bloomed conv's zero padding P (per axis) between the blur and the dilated conv. The tent
        reaches s - 1 pixels, so the blur of the padded input is zero beyond 2(s - 1) of padding: the blur takes
        min(P, 2(s - 1)) and the dilated conv the rest, which it pads without storing. The blurred input, which the
        dilated conv keeps for its weight gradient, then spans H + 2(s - 1) instead of H + 2P - 2(s - 1) pixels
        (ConvNeXt-T's 7x7 planes, 7 -> 15: 9x9 instead of 19x19)."""
        blur = [min(p, 2 * (f - 1)) for p, f in zip(padding, self.factors)]
        return blur, [p - b for p, b in zip(padding, blur)]

    def _blur_constants(self, dtype: torch.dtype, pdt: torch.dtype, device: torch.device):
        """The fixed tent taps (1, T) and both convolutions' on-grid positions (D, 1, 1, n), built once per
        (device, dtypes): rebuilding them cost every forward a dozen small kernel launches, and a converted
        network's CUDA training step is bound by the host queueing work. Not cached while compiling (the graph
        holds them) or under inference mode (inference tensors cannot be saved for a later backward)."""
        key = (device, dtype, pdt)
        cache = self.__dict__.setdefault("_blur_cache", {})  # a plain attribute: not in the state_dict
        if key in cache and not torch.compiler.is_compiling():
            return cache[key]
        s = self.factors
        consts = (tent_nd(s, self.ndim, dtype, device).flatten(1),
                  grid_offsets(self.blur_window, pdt, device)[:, None, None, :],
                  grid_offsets(self.kernel_size, pdt, device, spacing=s)[:, None, None, :])
        if (not torch.compiler.is_compiling() and not torch.is_inference_mode_enabled()
                and all(type(t) is torch.Tensor for t in consts)):  # not fake / meta-traced tensors either
            cache[key] = consts
        return consts

    def __getstate__(self):
        # torch.save(module) and deepcopy leave the cache out: a pickled entry would keep its device key after
        # torch.load(map_location=...) moved its tensors
        state = dict(super().__getstate__())
        state.pop("_blur_cache", None)
        return state

    def _blur_taps_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Depthwise, with the fade: conv(x, bloom(v)) == conv(tent_blur(x), v dilated by s), both on the tap
        engine with on-grid nearest taps: (2s-1)^D fixed blur taps + prod(k) taps instead of prod(window)
        (9 + 49 instead of 225 for 7x7 -> 15x15)."""
        s, C = self.factors, self.in_channels
        xp, sym = pad_input(x, self._pads(), self.padding_mode)
        # Positions in float32 at least (16-bit inputs: the op accumulates in float32 anyway); the tent too where
        # the compiled op runs (it takes float32 taps with 16-bit inputs: factors 3 and 5 are inexact in 16 bits),
        # else in the input's dtype (the reference convolves in one dtype).
        pdt = torch.promote_types(self.weight.dtype, torch.float32)
        low = xp.dtype in (torch.float16, torch.bfloat16)
        tdt = pdt if low and ops.compiled_for("taps_conv", xp.device.type) else xp.dtype
        tent, tent_pos, pos = self._blur_constants(tdt, pdt, xp.device)
        blur_pad, rest = self._blur_padding(sym)
        if xp.device.type in CONV_BLUR_DEVICES:
            kern = tent.to(xp.dtype).view(1, 1, *self.blur_window)
            z = _FixedBlur.apply(xp, kern.expand(C, *kern.shape[1:]), blur_pad)
        else:
            z = ops.taps_conv(xp, tent.expand(C, 1, -1), tent_pos.expand(self.ndim, C, 1, -1), None,
                              self.blur_window, [1] * self.ndim, blur_pad, "nearest")
        w = self.weight.flatten(2)
        dilated = [f * (k - 1) + 1 for f, k in zip(s, self.kernel_size)]
        return ops.taps_conv(z, w, pos.expand(self.ndim, *w.shape), self.bias, dilated, self.stride, rest, "nearest")

    def extra_repr(self) -> str:
        s = self._conv_repr()
        s.insert(1, f"kernel_size={self.kernel_size}, factor={self.factor}, window={self.window}")
        if not self.fade:
            s.append("fade=False")
        return ", ".join(s)

    @classmethod
    def from_conv(cls, conv: nn.Module, *, inputs: torch.Tensor | None = None, **options) -> "_BloomConvNd":
        """Least-squares start. Without `inputs`: v minimises ||bloom(v) - W||_F with W the source kernel centred
        in the bloomed window (separable, a pseudo-inverse per axis); `init_error` = that relative residual.
        With `inputs` (example inputs of this conv, N x Cin x ...; convert passes them when given
        example_inputs): v minimises the output error on those inputs' patches instead (output_fit.py), which keeps
        far more of a trained kernel; `init_error` = the relative output error there."""
        opts = options if isinstance(options, BloomOptions) else BloomOptions(**options)
        name = cls.__name__
        check_source_conv(conv, (cls.ndim,), name)
        target, extent = source_kernel(conv)
        s = opts.factor
        if opts.keep == "kernel":
            ksize = tuple(conv.kernel_size)
        else:  # bloomed size closest to the extent from below/above, at least one tap
            ksize = tuple(1 if e == 1 else max(1, round((e + 1) / s - 1) if opts.fade else round((e - 1) / s + 1))
                          for e in extent)
        factors = tuple(1 if k == 1 else s for k in ksize)
        window = tuple(bloomed_size(k, f, opts.fade) for k, f in zip(ksize, factors))
        if conv.padding != "same" and any((L - e) % 2 for L, e in zip(window, extent)):
            raise ValueError(f"{name}.from_conv: factor {s} blooms the {tuple(extent)} kernel to {window}, whose "
                             "size differs from the kernel's by an odd number, so no symmetric padding keeps the "
                             "output shape; use an odd factor (factor=3 blooms a 2x2 to 8x8) or a padding='same' "
                             "source conv")
        padding, shift = grow_padding(conv, extent, window, name)
        module = cls(conv.in_channels, conv.out_channels, ksize, factor=s, fade=opts.fade, padding=padding,
                     engine=opts.engine, **conv_kwargs(conv))
        if inputs is not None and all(sh >= 0 for sh in shift) and _fit_to_inputs(module, target, shift, factors,
                                                                                     inputs):
            copy_bias(module, conv)
            return module
        with torch.no_grad():
            # One frame holding both the source kernel (at `shift` in window coordinates) and the window.
            lo = [min(0, sh) for sh in shift]
            big = [max(L, sh + e) - l for L, sh, e, l in zip(window, shift, extent, lo)]
            frame = target.new_zeros((*target.shape[:2], *big), dtype=torch.float64)
            frame[(slice(None), slice(None), *(slice(sh - l, sh - l + e) for sh, l, e in zip(shift, lo, extent)))] = \
                target.double()
            w_at = [slice(-l, -l + L) for l, L in zip(lo, window)]
            v = frame  # least squares per axis against the bloom operator embedded in the frame
            for d, (k, b) in enumerate(zip(ksize, big)):
                A = target.new_zeros((b, k), dtype=torch.float64)
                A[w_at[d]] = bloom_matrix(k, factors[d], opts.fade, device=target.device)
                v = torch.movedim(torch.movedim(v, 2 + d, -1) @ torch.linalg.pinv(A).T, -1, 2 + d)
            module.weight.copy_(v.to(module.weight.dtype))
            copy_bias(module, conv)
            fitted = frame.new_zeros(frame.shape)
            fitted[(slice(None), slice(None), *w_at)] = bloom_kernel(v, factors, opts.fade)
            module.init_error = relative_error(fitted, frame)
        return module


def _fit_to_inputs(module: _BloomConvNd, target: torch.Tensor, shift, factors, inputs: torch.Tensor) -> bool:
    """The output-space start (output_fit.py); False when the patches are too large, leaving the kernel fit."""
    from ..output_fit import fit_in_output_space, patch_moments

    moments = patch_moments(inputs, module, module.groups)
    if moments is None:
        return False
    placed = target.new_zeros((*target.shape[:2], *module.window), dtype=torch.float64)
    placed[(slice(None), slice(None), *(slice(sh, sh + e) for sh, e in zip(shift, target.shape[2:])))] = target.double()
    A = None
    for k, f in zip(module.kernel_size, factors):  # row-major cells x row-major taps: kron over axes
        a = bloom_matrix(k, f, module.fade, device=target.device)
        A = a if A is None else torch.kron(A, a)
    v, err = fit_in_output_space(placed.flatten(2), A, moments.to(target.device), module.groups)
    with torch.no_grad():
        module.weight.copy_(v.reshape(module.weight.shape).to(module.weight.dtype))
    module.init_error = err
    return True


class BloomConv1d(_BloomConvNd):
    """Bloomed conv over (N, C, L): weight (Cout, Cin/g, k), window s(k+1)-1 with fade, s(k-1)+1 without."""
    ndim = 1


class BloomConv2d(_BloomConvNd):
    """Bloomed conv over (N, C, H, W); the forum post's 3x3 -> 7x7 with the off-edge fade is factor=2, fade=True."""
    ndim = 2
