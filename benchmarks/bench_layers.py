"""Converted layers vs plain PyTorch convs, forward+backward, side by side (three comparisons: bloom vs the plain conv, partial vs a dense span and the forum thread's workaround, dcls vs dense).

    python benchmarks/bench_layers.py
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import saved_bytes  # noqa: E402
from common import machine_line, print_table, time_interleaved  # noqa: E402
from dcls_package import available, dcls_package_layer  # noqa: E402

import dcls_convert as dc  # noqa: E402


def fwd_bwd(module, x):
    xg = x.clone().requires_grad_()
    return lambda: module(xg).sum().backward()


def bloom_rows(repeats):
    x = torch.randn(8, 64, 56, 56)
    plain = nn.Conv2d(64, 64, 3, padding=1)
    bloom = dc.BloomConv2d.from_conv(plain)  # 3x3 -> 7x7 with fade, blur + dilated path
    naive = dc.BloomConv2d.from_conv(plain)
    naive.uses_blur_path = lambda: False  # construct the 7x7 kernel + dense conv
    ms = time_interleaved({"plain3x3": fwd_bwd(plain, x), "bloom": fwd_bwd(bloom, x), "naive7x7": fwd_bwd(naive, x)},
                          repeats=repeats)
    return [{"case": "bloom 3x3->7x7 (fade), 64->64, 8x64x56x56", "ours_ms": ms["bloom"], "baseline": "plain 3x3",
             "baseline_ms": ms["plain3x3"], "ratio_ours/baseline": ms["bloom"] / ms["plain3x3"],
             "other": "naive construct+7x7", "other_ms": ms["naive7x7"]}]


class TwoConvsSummed(nn.Module):
    """The forum thread's workaround: a dense conv for the island plus a dilated conv for the wings, summed."""

    def __init__(self, c):
        super().__init__()
        self.dense = nn.Conv1d(c, c, 5, padding=2, groups=c)
        self.dilated = nn.Conv1d(c, c, 11, padding=10, dilation=2, groups=c)

    def forward(self, x):
        return self.dense(x) + self.dilated(x)


def partial_rows(repeats):
    x = torch.randn(8, 128, 4096)
    partial = dc.PartialDilatedConv1d(128, 128, 5, 4, 2, padding=10, groups=128)
    dense = nn.Conv1d(128, 128, 21, padding=10, groups=128)
    two = TwoConvsSummed(128)
    ms = time_interleaved({"partial": fwd_bwd(partial, x), "dense21": fwd_bwd(dense, x), "two": fwd_bwd(two, x)},
                          repeats=repeats)
    return [{"case": "partial 1-D 101010101111101010101, 8x128x4096", "ours_ms": ms["partial"],
             "baseline": "dense dw conv1d span 21", "baseline_ms": ms["dense21"],
             "ratio_ours/baseline": ms["partial"] / ms["dense21"], "other": "two convs summed (forum thread)",
             "other_ms": ms["two"]}]


def dcls_dense_rows(repeats):
    x = torch.randn(8, 64, 56, 56)
    ours = dc.DclsConv2d(64, 64, 9, 7, padding=3)
    fns = {"ours": fwd_bwd(ours, x)}
    row = {"case": "dcls dense 64->64, window 7, K=9, 8x64x56x56", "ours_ms": None}
    if available():
        ref = dcls_package_layer(64, 64, 9, 7, 1, 3, "v0")
        fns["ref"] = fwd_bwd(ref, x)
    ms = time_interleaved(fns, repeats=repeats)
    row["ours_ms"] = ms["ours"]
    ours_saved = saved_bytes(lambda: ours.dense_kernel()) / 2**20
    row.update(other="saved MiB ours (kernel construction)", other_ms=ours_saved)
    if "ref" in ms:
        ref_saved = saved_bytes(lambda: ref.DCK(ref.weight, ref.P, None)) / 2**20
        row.update(baseline="dcls package v0", baseline_ms=ms["ref"], **{"ratio_ours/baseline": ms["ours"] / ms["ref"]},
                   ref_saved_MiB=ref_saved)
    return [row]


def main():
    repeats = int(os.environ.get("REPEATS", "7"))
    print(machine_line())
    rows = bloom_rows(repeats) + partial_rows(repeats) + dcls_dense_rows(repeats)
    print("\nConverted layers, forward+backward, float32 (median ms)")
    print_table(rows, ["case", "ours_ms", "baseline", "baseline_ms", "ratio_ours/baseline", "other", "other_ms",
                       "ref_saved_MiB"])


if __name__ == "__main__":
    main()
