"""Interpolated dilation (the PyTorch-forums question "Is interpolated-dilation convolution a thing?"): the CIFAR-10 tutorial network with its first conv bloomed (3x3 -> 7x7, fade, 9 weights).

The seed's author saw a worse plateau with bloom_2x applied to a default-initialised weight. Here the same
network is trained on the MNIST digits (resized to 32x32 RGB, the tutorial's input) three ways: plain, bloomed
from the default initialisation (the seed's set-up), and bloomed by least squares from a trained plain conv.

    python examples/bloom_tutorial_net.py --epochs 2
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dcls_convert as dc  # noqa: E402
from digits import accuracy, batches, load_digits  # noqa: E402


class Net(nn.Module):
    """The seed's network (35 channels, 3x3 convs, pooling, one linear layer)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 35, 3, stride=1, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(35, 35, 3, stride=1, padding=1)
        self.fc1 = nn.Linear(35 * 8 * 8, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        return self.fc1(torch.flatten(x, 1))


def fit(model, data, epochs, lr=2e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        model.train()
        for xb, yb in batches(*data, 64, epoch):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--samples", type=int, default=3000)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    xtr, ytr, xte, yte = load_digits(args.samples, size=32, channels=3)

    plain = fit(Net(), (xtr, ytr), args.epochs)
    seed_style = Net()
    seed_style.conv1 = dc.BloomConv2d(3, 35, 3, factor=2, fade=True, padding=3)  # default init, as in the seed
    fit(seed_style, (xtr, ytr), args.epochs)
    from_trained = copy.deepcopy(plain)
    from_trained.conv1 = dc.BloomConv2d.from_conv(plain.conv1, factor=2, fade=True)
    err = from_trained.conv1.init_error
    acc_start = accuracy(from_trained, xte, yte)
    fit(from_trained, (xtr, ytr), args.epochs, lr=5e-4)
    print(f"{'variant':48} {'test acc':>8}")
    print(f"{'plain 3x3':48} {accuracy(plain, xte, yte):8.4f}")
    print(f"{'bloomed 7x7, default init (the forum post set-up)':48} {accuracy(seed_style, xte, yte):8.4f}")
    print(f"{'bloomed 7x7, least squares from trained 3x3':48} {accuracy(from_trained, xte, yte):8.4f}"
          f"   (start {acc_start:.4f}, fit error {err:.2f})")
    print(f"bloomed kernel: {tuple(from_trained.conv1.window)} window, {from_trained.conv1.weight[0, 0].numel()} weights "
          f"per (out, in) pair, forward path: {from_trained.conv1.engine_name()}")


if __name__ == "__main__":
    main()
