"""Per-layer init error of dcls with K = 34 and positions shared per stage (the ConvNeXt-T-dcls setting), against
each layer on its own positions: convnext_tiny at random init, and convnext_atto briefly trained on MNIST digits
(32x32, 3 channels) so that its kernels carry learned structure. Prints one JSON line per model; run it with any
version of the package on PYTHONPATH to compare versions (RESULTS.md).

    python benchmarks/shared_positions.py [--train-steps 300]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
import dcls_convert as dc  # noqa: E402


def trained_atto(steps: int) -> torch.nn.Module:
    from digits import batches, load_digits

    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=10)
    x, y, _, _ = load_digits(size=32, channels=3)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    done = 0
    while done < steps:
        for xb, yb in batches(x, y, 64, seed=done):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return model.eval()


def errors(model: torch.nn.Module, shared: bool) -> dict[str, float]:
    options = {"kernel_count": 34, **({"share_positions": "stage"} if shared else {})}
    _, report = dc.convert(model, "dcls", **options)
    return {r.name: r.init_error for r in report.layers if r.status == "converted"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-steps", type=int, default=300)
    args = ap.parse_args()
    torch.manual_seed(0)
    models = {"convnext_tiny (random init)": timm.create_model("convnext_tiny"),
              f"convnext_atto (trained {args.train_steps} steps on digits)": trained_atto(args.train_steps)}
    for name, model in models.items():
        own, shared = errors(model, False), errors(model, True)
        print(json.dumps({"model": name, "own": own, "shared": shared}), flush=True)


if __name__ == "__main__":
    main()
