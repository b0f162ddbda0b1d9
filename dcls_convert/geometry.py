"""Per-axis geometry arguments (window, stride, padding, dilation) as ints, checked once for every module and
helper."""
from __future__ import annotations

__all__ = ["MAX_GEOMETRY", "per_axis"]

# Largest window, stride or padding per axis, as the compiled ops check it (kernels/include/dcls_convert/checks.h):
# every size derived from them then fits in int64, so no argument or recipe file can crash the process.
MAX_GEOMETRY = 2**24


def per_axis(value, ndim: int, name: str, owner: str, minimum: int = 1) -> tuple[int, ...]:
    """`value` (an int or `ndim` ints, each in [minimum, 2**24]) as a tuple of `ndim` ints, else a ValueError naming
    `owner` and `name`."""
    try:
        vals = (value,) * ndim if isinstance(value, int) else tuple(value)
    except TypeError:
        vals = ()
    if len(vals) != ndim or any(isinstance(v, bool) or not isinstance(v, int) or not minimum <= v <= MAX_GEOMETRY
                                for v in vals):
        raise ValueError(f"{owner}: {name} must be an int in [{minimum}, 2**24] or {ndim} of them, got {value!r}")
    return tuple(vals)
