"""The DCLS paper's own package (`pip install dcls==0.1.1`), used only by the benchmarks when importable."""
from __future__ import annotations

import warnings

__all__ = ["dcls_package_layer", "available"]


def available() -> bool:
    try:
        import DCLS.construct.modules  # noqa: F401
        return True
    except Exception:
        return False


def dcls_package_layer(cin, cout, K, window, groups, padding, version="v0", ndim=2):
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # it warns on the root logger, three times per layer
    from DCLS.construct.modules import Dcls1d, Dcls2d

    cls = Dcls2d if ndim == 2 else Dcls1d
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(cin, cout, kernel_count=K, dilated_kernel_size=window, padding=padding, groups=groups, version=version)
