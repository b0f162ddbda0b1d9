"""Activation memory of a converted network: the bytes autograd keeps from a training forward to its backward
(saved-tensor hooks, so any device, CPU included), original vs each method, with the ratio to the original.
Parameters and optimizer state are left out: the conversions change them by a few KiB per layer.

    python benchmarks/bench_memory.py [--model convnext_tiny] [--batch 2] [--size 224]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_line, print_table, saved_bytes  # noqa: E402


def main() -> None:
    import timm

    import dcls_convert as dc

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="convnext_tiny")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    torch.manual_seed(0)
    dcls_options = {"kernel_count": 34, "share_positions": "stage"} if args.model.startswith("convnext") else {}
    variants = {"original": {}, "dcls": dict(method="dcls", **dcls_options), "partial": dict(method="partial"),
                "bloom": dict(method="bloom"), "bloom engine=dense": dict(method="bloom", engine="dense")}
    x = torch.randn(args.batch, 3, args.size, args.size)
    rows = []
    for name, options in variants.items():
        model = timm.create_model(args.model)
        if options:
            model = dc.convert(model, options.pop("method"), **options)[0]
        model.train()
        saved = saved_bytes(lambda: model(x))
        rows.append({"variant": name, "saved MiB": saved / 2**20})
    for r in rows:
        r["x original"] = r["saved MiB"] / rows[0]["saved MiB"]
    print(f"{args.model}, batch {args.batch}, {args.size}x{args.size}, float32, training forward; {machine_line()}")
    print_table(rows, ["variant", "saved MiB", "x original"])


if __name__ == "__main__":
    main()
