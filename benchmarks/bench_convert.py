"""Time of convert() on timm models (median of several runs, model built outside the timing).

    python benchmarks/bench_convert.py
"""
from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timm  # noqa: E402

from common import machine_line  # noqa: E402

import dcls_convert as dc  # noqa: E402


def main():
    print(machine_line())
    for name, kwargs in (("convnext_tiny", {}), ("convnext_tiny", {"kernel_count": 34, "share_positions": "stage"}),
                         ("resnet50", {"rules": dc.TargetRules(min_kernel=3, stride=1)})):
        model = timm.create_model(name)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            _, report = dc.convert(model, "dcls", **kwargs)
            times.append(time.perf_counter() - t0)
        opts = ", ".join(f"{k}={v}" for k, v in kwargs.items() if k != "rules") or "defaults"
        print(f"convert({name}, 'dcls', {opts}): {len(report.converted)} convs converted, median "
              f"{statistics.median(times) * 1e3:.0f} ms (min {min(times) * 1e3:.0f} ms)")


if __name__ == "__main__":
    main()
