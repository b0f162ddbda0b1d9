"""Data-aware starts: fit a converted kernel in output space on example inputs, not in kernel space.

A kernel-space least-squares fit treats every kernel cell alike, so a trained (non-smooth) kernel that a bloom
cannot represent loses most of what it computes. What matters is the output: for input patches p of the layer,
E[((W' - W) . p)^2] = (W' - W)^T S (W' - W) with S = E[p p^T], the patches' second moments. With W' = B v (B linear:
the bloom operator), the best v is a weighted least-squares solution, one small system per group of channels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .padding import pad_input, side_pads

__all__ = ["Moments", "patch_moments", "fit_in_output_space", "relative_output_error"]

MAX_PATCH_DIM = 4096  # Cin/g x window cells; beyond, the moments matrix is too large to be worth it
MAX_PATCHES = 4096


@dataclass
class Moments:
    """Second moments of a layer's input patches, per group (groups, dim, dim), float64. `qq`: of the patches the
    converted layer sees, `qo`: their cross moments with the patches the original layer saw, `oo`: of those. When
    both see the same inputs (each layer fitted on the original network's inputs) the three are one matrix; when
    the converted upstream is in place (sequential calibration) they differ, and the fit maps what the converted
    layer sees onto what the original layer computed."""

    qq: torch.Tensor
    qo: torch.Tensor
    oo: torch.Tensor

    def to(self, device) -> "Moments":
        return Moments(self.qq.to(device), self.qo.to(device), self.oo.to(device))


def _patches(x: torch.Tensor, module, groups: int) -> torch.Tensor:
    """(groups, M, Cin/g * cells): the patches the module's window sees in x (its padding, mode and stride), a fixed
    subsample of at most MAX_PATCHES (the same positions for inputs of one shape)."""
    window, ndim = tuple(module.window), module.ndim
    dim = x.shape[1] // groups * int(torch.tensor(window).prod())
    x = x.detach().to(torch.float64)
    xp, sym = pad_input(x, side_pads(module.padding, window), module.padding_mode)
    if any(sym):
        xp = F.pad(xp, [p for p in reversed(sym) for _ in range(2)])
    for d in range(ndim):  # (N, Cin, *outputs, *window): every patch as a view, any number of dims
        xp = xp.unfold(2 + d, window[d], module.stride[d])
    order = [0, *range(2, 2 + ndim), 1, *range(2 + ndim, 2 + 2 * ndim)]
    cols = xp.permute(order).reshape(-1, groups * dim)  # (N * outputs, Cin * cells)
    if cols.shape[0] > MAX_PATCHES:  # a fixed subsample: the same start every run
        idx = torch.randperm(cols.shape[0], generator=torch.Generator().manual_seed(0))[:MAX_PATCHES]
        cols = cols[idx.to(cols.device)]
    return cols.reshape(cols.shape[0], groups, dim).transpose(0, 1)


def patch_moments(inputs, module, groups: int) -> Moments | None:
    """Moments of the patches in `inputs`: a tensor (N x Cin x ...: what the layer sees, converted or not), or a
    pair (what the converted layer sees, what the original layer saw), of one shape. None when the patches are too
    large to be worth it or the inputs do not fit the module."""
    seen, original = inputs if isinstance(inputs, tuple) else (inputs, None)
    cin = seen.shape[1]
    dim = cin // groups * int(torch.tensor(tuple(module.window)).prod())
    if dim > MAX_PATCH_DIM or seen.dim() != module.ndim + 2:
        return None
    if original is not None and original.shape != seen.shape:
        return None
    q = _patches(seen, module, groups)
    m = max(q.shape[1], 1)
    qq = q.transpose(1, 2) @ q / m
    if original is None:
        return Moments(qq, qq, qq)
    o = _patches(original, module, groups)
    return Moments(qq, q.transpose(1, 2) @ o / m, o.transpose(1, 2) @ o / m)


def relative_output_error(fitted: torch.Tensor, target: torch.Tensor, moments: Moments) -> float:
    """sqrt(E((f . q - t . o)^2) / E((t . o)^2)): the relative output error of kernel f on what the converted
    layer sees against target t on what the original saw. fitted / target: (groups, outputs per group, dim)."""
    err = (torch.einsum("goi,gij,goj->", fitted, moments.qq, fitted)
           - 2 * torch.einsum("goi,gij,goj->", fitted, moments.qo, target)
           + torch.einsum("goi,gij,goj->", target, moments.oo, target))
    ref = torch.einsum("goi,gij,goj->", target, moments.oo, target)
    return float((err / ref).clamp_min(0).sqrt()) if ref > 0 else 0.0


def fit_in_output_space(target: torch.Tensor, operator: torch.Tensor, moments: Moments,
                        groups: int) -> tuple[torch.Tensor, float]:
    """v minimising E((B v_o . q - w_o . o)^2) summed over outputs o, B = I_(Cin/g) (x) A: the normal equations
    (B^T S_qq B) v = B^T S_qo w, one system per group.

    target: (Cout, Cin/g, cells) the source kernel in the window; operator: A, (cells, taps); moments per group of
    dim Cin/g * cells. Returns v (Cout, Cin/g, taps) and the relative output error (relative_output_error).
    """
    cout, cin_g, cells = target.shape
    taps = operator.shape[1]
    A = operator.to(torch.float64)
    shape = (groups, cin_g, cells, cin_g, cells)
    Sqq, Sqo = moments.qq.reshape(shape), moments.qo.reshape(shape)
    W = target.to(torch.float64).reshape(groups, cout // groups, cin_g, cells)
    M = torch.einsum("ia,gcidj,jb->gcadb", A, Sqq, A).reshape(groups, cin_g * taps, cin_g * taps)
    rhs = torch.einsum("ia,gcidj,godj->goca", A, Sqo, W).reshape(groups, cout // groups, cin_g * taps)
    ridge = 1e-9 * M.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-30)  # keeps unseen directions solvable
    M = M + ridge[:, None, None] * torch.eye(cin_g * taps, dtype=M.dtype, device=M.device)
    v = torch.linalg.solve(M, rhs.transpose(1, 2)).transpose(1, 2)  # (groups, Cout/g, Cin/g * taps)
    v = v.reshape(groups, cout // groups, cin_g, taps)
    fitted = torch.einsum("ia,goca->goci", A, v)
    flat = lambda t: t.reshape(groups, cout // groups, cin_g * cells)  # noqa: E731
    return v.reshape(cout, cin_g, taps), relative_output_error(flat(fitted), flat(W), moments)
