"""Host time per converted layer: what a training step costs the CPU that queues the work, apart from the
arithmetic. On a GPU a converted network's AMP step is bound by it (benchmarks/RESULTS.md, second GPU session), so
it is measured here on tiny inputs (x = 1x8x8x8: the arithmetic is negligible), one thread, training mode, for
each method's layer built from a 7x7 depthwise conv and for the tap op alone. Best of 3 rounds of 200 calls, us.
Run it with another version of the package on PYTHONPATH to compare versions.

    python benchmarks/bench_host.py
"""
from __future__ import annotations

import time

import torch
import torch.nn as nn

import dcls_convert as dc


def best_us(fn, calls: int = 200, rounds: int = 3) -> float:
    for _ in range(20):
        fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    return best


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 7, padding=3, groups=8)
    layers = {"nn.Conv2d 7x7 depthwise (PyTorch)": conv,
              "DclsConv2d K=34 (window 17)": dc.DclsConv2d.from_conv(conv, kernel_count=34),
              "PartialDilatedConv2d (7x7 island, window 19)": dc.PartialDilatedConv2d.from_conv(conv),
              "BloomConv2d (7 -> 15)": dc.BloomConv2d.from_conv(conv)}
    x = torch.randn(1, 8, 8, 8, requires_grad=True)
    rows = []
    for name, layer in layers.items():
        layer.train()
        rows.append((name, best_us(lambda: layer(x)), best_us(lambda: layer(x).sum().backward())))
    w = torch.randn(8, 1, 34, requires_grad=True)
    p = (torch.rand(2, 8, 1, 34) * 6 - 3).requires_grad_()
    xo = torch.randn(1, 8, 4, 4)
    op = lambda: dc.ops.taps_conv(xo, w, p, None, [7, 7], [1, 1], [3, 3])  # noqa: E731
    g = torch.ones_like(op())
    rows.append(("ops.taps_conv alone (x = 1x8x4x4)", best_us(op), best_us(lambda: torch.autograd.backward(op(), g))))
    print(f"dcls_convert from {dc.__file__}")
    print(f"{'layer':48} {'forward us':>11} {'fwd+bwd us':>11}")
    for name, f, fb in rows:
        print(f"{name:48} {f:11.1f} {fb:11.1f}")


if __name__ == "__main__":
    main()
