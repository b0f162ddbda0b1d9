"""dcls-convert: convert the convolutions of a PyTorch model to DCLS, bloomed or partially dilated kernels."""
from .ops import backend_info as backend_info

__all__ = ["backend_info"]
__version__ = "0.1.0"
