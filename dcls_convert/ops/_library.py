"""Loads the compiled op library and records why when it cannot; says which backend runs each op."""
from __future__ import annotations

import glob
import os
import warnings

import torch

__all__ = ["has_compiled_ops", "compiled_for", "backend_info", "OPS"]

OPS = ("construct", "taps_conv")

def describe_load_error(exc: BaseException, package_dir: str) -> str:
    """Why the compiled library is unavailable, in the words a user needs: not built at all, or built but not
    loadable (an ABI mismatch with the torch that runs)."""
    if not glob.glob(os.path.join(package_dir, "_C.*")):
        return "the compiled library dcls_convert._C is not built"
    return f"dcls_convert._C failed to load ({type(exc).__name__}: {exc})"


_load_error: str | None = None
try:
    from .. import _C  # noqa: F401  (importing registers the ops)
except Exception as exc:  # ImportError if never built, OSError/ImportError on an ABI mismatch
    _load_error = describe_load_error(exc, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_forced_reference = os.environ.get("DCLS_CONVERT_FORCE_REFERENCE", "") == "1"
if _forced_reference:
    _load_error = "DCLS_CONVERT_FORCE_REFERENCE=1"

if _load_error is not None and not _forced_reference:
    warnings.warn(
        f"dcls_convert: {_load_error}; running the pure-PyTorch reference implementation (slower). Build it "
        "against the torch you run: `pip install --no-build-isolation -e .` in the source tree (or "
        "`python setup.py build_ext --inplace`).",
        RuntimeWarning,
        stacklevel=2,
    )


def has_compiled_ops() -> bool:
    return _load_error is None


def _has_kernel(op: str, key: str) -> bool:
    return _load_error is None and torch._C._dispatch_has_kernel_for_dispatch_key(f"dcls_convert::{op}", key)


# Looked up once: a plain dict read is traceable by torch.compile, the dispatcher query is not.
_KERNELS = {(op, dev): _has_kernel(op, key) for op in OPS for dev, key in (("cpu", "CPU"), ("cuda", "CUDA"))}


def compiled_for(op: str, device_type: str) -> bool:
    """True when the compiled `op` has a kernel for `device_type` ("cpu", "cuda")."""
    return _KERNELS.get((op, device_type), False)


def backend_info() -> dict:
    """Which implementation runs each op on each device: "compiled", "reference" or "no device"."""
    devices = {"cpu": True, "cuda": torch.cuda.is_available()}
    ops = {}
    for op in OPS:
        ops[op] = {}
        for dev, present in devices.items():
            kind = "compiled" if compiled_for(op, dev) else "reference"
            ops[op][dev] = kind if present else f"{kind} (no device)"
    return {"compiled_library": _load_error is None, "load_error": _load_error, "torch": torch.__version__, "ops": ops}
