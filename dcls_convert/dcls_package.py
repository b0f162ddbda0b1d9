"""Import checkpoints of the DCLS paper's own package (PyPI `dcls` 0.1.1, github.com/K-H-Ismail/Dilated-Convolution-
with-Learnable-Spacings-PyTorch: Dcls1d/2d/3d, versions v0, v1, gauss) into DclsConvNd. Its parameters are weight (Cout, Cin/g, K), P and SIG (ndim, Cout, Cin/g, K), bias; "v0" stores
P as (row, col) like ours, "v1" and "gauss" as (col, row) (axis order reversed), which this import fixes."""
from __future__ import annotations

from typing import Mapping

import torch

from .methods.dcls import _DclsConvNd

__all__ = ["load_dcls_package_state_dict", "DCLS_PACKAGE_VERSIONS"]

DCLS_PACKAGE_VERSIONS = {"v0": "bilinear", "v1": "bilinear", "gauss": "gaussian"}


def load_dcls_package_state_dict(module: _DclsConvNd, state_dict: Mapping[str, torch.Tensor], version: str = "gauss",
                                 prefix: str = "") -> _DclsConvNd:
    """Copies a `dcls` package `Dcls{1,2,3}d` state dict (keys weight, P, SIG, bias under `prefix`) into `module`.

    The module must have the `dcls` layer's channels, groups, kernel_count and window, and the interpolation
    of its version (v0/v1: "bilinear", gauss: "gaussian"). Returns `module`.
    """
    name = type(module).__name__
    if version not in DCLS_PACKAGE_VERSIONS:
        raise ValueError(f"{name}: `dcls` package version must be one of {sorted(DCLS_PACKAGE_VERSIONS)}, got {version!r} "
                         "('max' has no equivalent here)")
    if module.interpolation != DCLS_PACKAGE_VERSIONS[version]:
        raise ValueError(f"{name}: a `dcls` {version!r} checkpoint needs interpolation="
                         f"{DCLS_PACKAGE_VERSIONS[version]!r}, the module has {module.interpolation!r}")
    get = lambda key: state_dict.get(prefix + key)  # noqa: E731
    weight, P, SIG, bias = get("weight"), get("P"), get("SIG"), get("bias")
    if weight is None or P is None:
        raise ValueError(f"{name}: the state dict has no {prefix}weight / {prefix}P (is it a `dcls` package Dcls layer?)")
    if tuple(weight.shape) != tuple(module.weight.shape) or tuple(P.shape) != tuple(module.positions.shape):
        raise ValueError(f"{name}: shapes differ: `dcls` weight {tuple(weight.shape)}, P {tuple(P.shape)}; module "
                         f"weight {tuple(module.weight.shape)}, positions {tuple(module.positions.shape)}")
    if (bias is None) != (module.bias is None):
        raise ValueError(f"{name}: bias presence differs between the checkpoint and the module")
    if module.sigma is not None and SIG is None:
        raise ValueError(f"{name}: a gauss checkpoint needs {prefix}SIG")
    # Every shape checked before the first copy: an error leaves the module as it was, and copy_ never broadcasts.
    checks = [("SIG", SIG, module.sigma), ("bias", bias, module.bias)]
    for key, got, param in checks:
        if got is not None and param is not None and tuple(got.shape) != tuple(param.shape):
            raise ValueError(f"{name}: `dcls` {prefix}{key} has shape {tuple(got.shape)}, the module needs "
                             f"{tuple(param.shape)}")
    for key, got in (("weight", weight), ("P", P), ("SIG", SIG), ("bias", bias)):
        if got is not None and not torch.is_floating_point(got):
            raise ValueError(f"{name}: `dcls` {prefix}{key} must be floating point, got {got.dtype}")
    flip = version in ("v1", "gauss") and module.ndim > 1
    with torch.no_grad():
        module.weight.copy_(weight)
        module.positions.copy_(P.flip(0) if flip else P)
        if module.sigma is not None:
            module.sigma.copy_(SIG.flip(0) if flip else SIG)
        if bias is not None:
            module.bias.copy_(bias)
    return module
