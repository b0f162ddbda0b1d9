"""Time of convert() on timm models (median of several runs, model built outside the timing): with and without
the FX pass that finds conv calls in forward code (analyze), and converting those calls (functional=True, timm's
ScaledStdConv2d / StdConv2d networks).

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
    all_convs = dc.TargetRules(min_kernel=3)
    for name, kwargs in (("convnext_tiny", {}), ("convnext_tiny", {"kernel_count": 34, "share_positions": "stage"}),
                         ("convnext_tiny", {"analyze": False}),
                         ("resnet50", {"rules": dc.TargetRules(min_kernel=3, stride=1)}),
                         ("nf_regnet_b0", {"rules": all_convs, "functional": True}),
                         ("resnetv2_50x1_bit", {"rules": all_convs, "functional": True})):
        model = timm.create_model(name)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            _, report = dc.convert(model, "partial" if kwargs.get("functional") else "dcls", **kwargs)
            times.append(time.perf_counter() - t0)
        opts = ", ".join(f"{k}={v}" for k, v in kwargs.items() if k != "rules") or "defaults"
        method = "partial" if kwargs.get("functional") else "dcls"
        print(f"convert({name}, {method!r}, {opts}): {len(report.converted)} convs converted, median "
              f"{statistics.median(times) * 1e3:.0f} ms (min {min(times) * 1e3:.0f} ms)")


if __name__ == "__main__":
    main()
