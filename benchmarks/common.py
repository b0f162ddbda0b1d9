"""Timing helpers for the side-by-side benchmarks: warm-up, interleaved repeats, medians, ratio tables."""
from __future__ import annotations

import platform
import statistics
import time
from typing import Callable

import torch

__all__ = ["time_interleaved", "machine_line", "print_table"]


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 2) -> dict[str, float]:
    """Median milliseconds per callable; the callables run round-robin so machine noise hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(v) for name, v in samples.items()}


def saved_bytes(fn: Callable[[], object]) -> int:
    """Bytes autograd keeps for the backward of what fn() computes (activation memory, any device): the storages
    of the saved tensors, each once (an expanded view costs its base, a tensor saved twice costs it once)."""
    storages = {}

    def pack(t):
        st = t.untyped_storage()
        storages[(st.device, st.data_ptr())] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def machine_line() -> str:
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {dev}, "
            f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print(" | ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return "" if v is None else str(v)
