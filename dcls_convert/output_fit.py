"""Data-aware starts: fit a converted kernel in output space on example inputs, not in kernel space.

A kernel-space least-squares fit treats every kernel cell alike, so a trained (non-smooth) kernel that a bloom
cannot represent loses most of what it computes. What matters is the output: for input patches p of the layer,
E[((W' - W) . p)^2] = (W' - W)^T S (W' - W) with S = E[p p^T], the patches' second moments. With W' = B v (B linear:
the bloom operator), the best v is a weighted least-squares solution, one small system per group of channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .padding import pad_input, side_pads

__all__ = ["patch_moments", "fit_in_output_space", "relative_output_error"]

MAX_PATCH_DIM = 4096  # Cin/g x window cells; beyond, the moments matrix is too large to be worth it
MAX_PATCHES = 4096


def patch_moments(x: torch.Tensor, module, groups: int) -> torch.Tensor | None:
    """S per group, (groups, Cin/g * cells, Cin/g * cells) in float64, from the patches the module's window sees
    in `x` (its padding, padding mode and stride); None when the patches are too large to be worth it."""
    window, ndim = tuple(module.window), module.ndim
    cin = x.shape[1]
    dim = cin // groups * int(torch.tensor(window).prod())
    if dim > MAX_PATCH_DIM or x.dim() != ndim + 2:
        return None
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
    u = cols.reshape(cols.shape[0], groups, dim).transpose(0, 1)  # (groups, M, dim)
    return u.transpose(1, 2) @ u / max(cols.shape[0], 1)


def relative_output_error(fitted: torch.Tensor, target: torch.Tensor, moments: torch.Tensor) -> float:
    """sqrt(sum (f - t)^T S (f - t) / sum t^T S t): the relative output error of a kernel on the patches whose
    moments are S. fitted / target: (groups, outputs per group, dim); moments: (groups, dim, dim)."""
    diff = fitted - target
    err = torch.einsum("goi,gij,goj->", diff, moments, diff)
    ref = torch.einsum("goi,gij,goj->", target, moments, target)
    return float((err / ref).clamp_min(0).sqrt()) if ref > 0 else 0.0


def fit_in_output_space(target: torch.Tensor, operator: torch.Tensor, moments: torch.Tensor,
                        groups: int) -> tuple[torch.Tensor, float]:
    """v minimising sum_o (B v_o - w_o)^T S_g (B v_o - w_o), B = I_(Cin/g) (x) A.

    target: (Cout, Cin/g, cells) the source kernel in the window; operator: A, (cells, taps); moments: S per group
    (groups, Cin/g * cells, Cin/g * cells). Returns v (Cout, Cin/g, taps) and the relative output error
    sqrt(sum (Bv - w)^T S (Bv - w) / sum w^T S w) on those patches.
    """
    cout, cin_g, cells = target.shape
    taps = operator.shape[1]
    A = operator.to(torch.float64)
    S = moments.reshape(groups, cin_g, cells, cin_g, cells)
    W = target.to(torch.float64).reshape(groups, cout // groups, cin_g, cells)
    M = torch.einsum("ia,gcidj,jb->gcadb", A, S, A).reshape(groups, cin_g * taps, cin_g * taps)
    rhs = torch.einsum("ia,gcidj,godj->goca", A, S, W).reshape(groups, cout // groups, cin_g * taps)
    ridge = 1e-9 * M.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-30)  # keeps unseen directions solvable
    M = M + ridge[:, None, None] * torch.eye(cin_g * taps, dtype=M.dtype, device=M.device)
    v = torch.linalg.solve(M, rhs.transpose(1, 2)).transpose(1, 2)  # (groups, Cout/g, Cin/g * taps)
    v = v.reshape(groups, cout // groups, cin_g, taps)
    fitted = torch.einsum("ia,goca->goci", A, v)
    flat = lambda t: t.reshape(groups, cout // groups, cin_g * cells)  # noqa: E731
    return v.reshape(cout, cin_g, taps), relative_output_error(flat(fitted), flat(W), moments)
