"""dcls-convert: convert the convolutions of a PyTorch model to DCLS (learnable spacings), bloomed
(interpolated dilation) or partially dilated kernels, backed by compiled ops, and fine-tune it.

The names below load on first use (PEP 562), so the CLI's --help does not import torch. The compiled ops
(torch.ops.dcls_convert.*) are registered by `import dcls_convert` when torch is already imported, else by
`import dcls_convert.ops` or the first use of anything that needs them."""
from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

# public name -> the submodule that defines it
_EXPORTS = {
    "convert": "converter", "densify": "converter", "shard_groups": "distributed", "dilate_kernel": "kernel_dilation",
    "undilate_kernel": "kernel_dilation", "backend_info": "ops", "plot_kernels": "plot",
    "load_dcls_package_state_dict": "dcls_package", "list_methods": "registry", "register_method": "registry",
    "ConversionError": "report", "ConversionReport": "report", "NoTargetError": "report", "load": "serialization",
    "save": "serialization", "ConvertConfig": "targeting", "TargetRules": "targeting", "SigmaAnnealer": "training",
    "clamp_positions_": "training", "freeze": "training", "keep_positions_in_range": "training",
    "param_groups": "training", "round_positions_": "training", "Distiller": "distill", "refit_linear": "refit",
    **{name: "methods" for name in ("BloomConv1d", "BloomConv2d", "BloomOptions", "DclsConv1d", "DclsConv2d",
                                     "DclsConv3d", "DclsOptions", "PartialDilatedConv1d", "PartialDilatedConv2d",
                                     "PartialOptions")},
}
__all__ = [
    "convert", "densify", "save", "load", "param_groups", "dilate_kernel", "undilate_kernel", "backend_info",
    "DclsConv1d", "DclsConv2d", "DclsConv3d", "BloomConv1d", "BloomConv2d", "PartialDilatedConv1d",
    "PartialDilatedConv2d", "DclsOptions", "BloomOptions", "PartialOptions", "ConvertConfig", "TargetRules",
    "ConversionReport", "ConversionError", "NoTargetError", "register_method", "list_methods", "plot_kernels",
    "clamp_positions_", "keep_positions_in_range", "SigmaAnnealer", "freeze", "round_positions_",
    "load_dcls_package_state_dict", "shard_groups", "Distiller", "refit_linear",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    else:  # a submodule (dcls_convert.ops, dcls_convert.serialization, ...)
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if "torch" in sys.modules:  # torch is loaded already (any training script): register the ops now, as before, so
    from . import ops  # noqa: E402,F401  (torch.export.load / AOTInductor find torch.ops.dcls_convert.*)


if TYPE_CHECKING:  # what static tools see
    from .converter import convert, densify
    from .distill import Distiller
    from .distributed import shard_groups
    from .dcls_package import load_dcls_package_state_dict
    from .kernel_dilation import dilate_kernel, undilate_kernel
    from .methods import (BloomConv1d, BloomConv2d, BloomOptions, DclsConv1d, DclsConv2d, DclsConv3d, DclsOptions,
                          PartialDilatedConv1d, PartialDilatedConv2d, PartialOptions)
    from .ops import backend_info
    from .plot import plot_kernels
    from .registry import list_methods, register_method
    from .report import ConversionError, ConversionReport, NoTargetError
    from .serialization import load, save
    from .targeting import ConvertConfig, TargetRules
    from .training import (SigmaAnnealer, clamp_positions_, freeze, keep_positions_in_range, param_groups,
                           round_positions_)
