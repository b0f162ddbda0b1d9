"""The three module kinds; importing this package registers each with the converter's registry."""
from .bloom import BloomConv1d, BloomConv2d, BloomOptions
from .dcls import DclsConv1d, DclsConv2d, DclsConv3d, DclsOptions
from .partial import PartialDilatedConv1d, PartialDilatedConv2d, PartialOptions

__all__ = ["DclsConv1d", "DclsConv2d", "DclsConv3d", "DclsOptions", "BloomConv1d", "BloomConv2d", "BloomOptions",
           "PartialDilatedConv1d", "PartialDilatedConv2d", "PartialOptions"]
