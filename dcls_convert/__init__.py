"""dcls-convert: convert the convolutions of a PyTorch model to DCLS (learnable spacings), bloomed
(interpolated dilation) or partially dilated kernels, backed by compiled ops, and fine-tune it."""
from .convert import convert as convert
from .densify import densify as densify
from .distributed import shard_groups as shard_groups
from .kernel_dilation import dilate_kernel as dilate_kernel
from .kernel_dilation import undilate_kernel as undilate_kernel
from .methods import BloomConv1d as BloomConv1d
from .methods import BloomConv2d as BloomConv2d
from .methods import BloomOptions as BloomOptions
from .methods import DclsConv1d as DclsConv1d
from .methods import DclsConv2d as DclsConv2d
from .methods import DclsConv3d as DclsConv3d
from .methods import DclsOptions as DclsOptions
from .methods import PartialDilatedConv1d as PartialDilatedConv1d
from .methods import PartialDilatedConv2d as PartialDilatedConv2d
from .methods import PartialOptions as PartialOptions
from .ops import backend_info as backend_info
from .plot import plot_kernels as plot_kernels
from .dcls_package import load_dcls_package_state_dict as load_dcls_package_state_dict
from .registry import list_methods as list_methods
from .registry import register_method as register_method
from .report import ConversionError as ConversionError
from .report import ConversionReport as ConversionReport
from .report import NoTargetError as NoTargetError
from .serialization import load as load
from .serialization import save as save
from .targeting import ConvertConfig as ConvertConfig
from .targeting import TargetRules as TargetRules
from .training import SigmaAnnealer as SigmaAnnealer
from .training import clamp_positions_ as clamp_positions_
from .training import freeze as freeze
from .training import keep_positions_in_range as keep_positions_in_range
from .training import param_groups as param_groups
from .training import round_positions_ as round_positions_

__all__ = [
    "convert", "densify", "save", "load", "param_groups", "dilate_kernel", "undilate_kernel", "backend_info",
    "DclsConv1d", "DclsConv2d", "DclsConv3d", "BloomConv1d", "BloomConv2d", "PartialDilatedConv1d",
    "PartialDilatedConv2d", "DclsOptions", "BloomOptions", "PartialOptions", "ConvertConfig", "TargetRules",
    "ConversionReport", "ConversionError", "NoTargetError", "register_method", "list_methods", "plot_kernels",
    "clamp_positions_", "keep_positions_in_range", "SigmaAnnealer", "freeze", "round_positions_",
    "load_dcls_package_state_dict", "shard_groups",
]
__version__ = "0.1.0"
