"""Depthwise bloom (7x7 -> 15x15, factor 2, fade) forward+backward: the tap engine through the blur identity
(9 fixed blur taps + 49 dilated taps) vs one nearest tap per window pixel (225), vs PyTorch's dense depthwise
15x15 and the plain 7x7 it replaces, timed interleaved in one run (medians).

    python benchmarks/bench_bloom.py [--shape 8 96 56 56] [--repeats 7]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_line, print_table, time_interleaved  # noqa: E402

from dcls_convert.methods.bloom import BloomConv2d  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=4, default=[8, 96, 56, 56])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    N, C, H, W = args.shape
    dev = args.device
    x = torch.randn(N, C, H, W, device=dev).contiguous(memory_format=torch.channels_last).requires_grad_()
    bloom = BloomConv2d.from_conv(nn.Conv2d(C, C, 7, padding=3, groups=C)).to(dev)
    w15 = torch.randn(C, 1, 15, 15, device=dev, requires_grad=True)
    w7 = torch.randn(C, 1, 7, 7, device=dev, requires_grad=True)

    def step(fn):
        def run():
            y = fn()
            y.backward(torch.ones_like(y))
        return run

    def per_pixel():  # the former path: nearest taps at every pixel of the bloomed 15x15 window
        from dcls_convert import ops
        from dcls_convert.methods.bloom import grid_offsets
        k = bloom.dense_kernel().flatten(2)
        pos = grid_offsets(bloom.window, k.dtype, k.device)[:, None, None, :].expand(2, *k.shape)
        return ops.taps_conv(x, k, pos, bloom.bias, bloom.window, [1, 1], [7, 7], "nearest")

    fns = {"bloom blur+dilated taps": step(lambda: bloom(x)), "bloom one tap per pixel": step(per_pixel),
           "dense 15x15 depthwise": step(lambda: F.conv2d(x, w15, padding=7, groups=C)),
           "plain 7x7 depthwise": step(lambda: F.conv2d(x, w7, padding=3, groups=C))}
    ms = time_interleaved(fns, repeats=args.repeats)
    print(machine_line(), f"x = {N}x{C}x{H}x{W} channels_last, float32, forward+backward, {bloom.engine_name()}")
    base = ms["bloom blur+dilated taps"]
    print_table([{"path": k, "ms": v, "x blur+dilated": v / base} for k, v in ms.items()], ["path", "ms", "x blur+dilated"])


if __name__ == "__main__":
    main()
