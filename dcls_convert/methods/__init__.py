"""The three module kinds, registered with the converter's method registry (one call each)."""
from ..registry import register_method
from ..targeting import TargetRules
from .bloom import BloomConv1d, BloomConv2d, BloomOptions
from .dcls import DclsConv1d, DclsConv2d, DclsConv3d, DclsOptions, share_stage_positions
from .partial import PartialDilatedConv1d, PartialDilatedConv2d, PartialOptions

__all__ = ["DclsConv1d", "DclsConv2d", "DclsConv3d", "DclsOptions", "BloomConv1d", "BloomConv2d", "BloomOptions",
           "PartialDilatedConv1d", "PartialDilatedConv2d", "PartialOptions"]

# Defaults per method: dcls targets depthwise convs (the DCLS papers' recipe), the others any odd kernel >= 3.
register_method("dcls", {1: DclsConv1d, 2: DclsConv2d, 3: DclsConv3d}, DclsOptions,
                TargetRules(depthwise=True, min_kernel=3, odd_kernel=True, stride=1), after_build=share_stage_positions)
register_method("bloom", {1: BloomConv1d, 2: BloomConv2d}, BloomOptions,
                TargetRules(min_kernel=3, odd_kernel=True, ndims=(1, 2)))
register_method("partial", {1: PartialDilatedConv1d, 2: PartialDilatedConv2d}, PartialOptions,
                TargetRules(min_kernel=3, odd_kernel=True, ndims=(1, 2)))
