"""The partially dilated depthwise Conv1d of the PyTorch-forums thread "Partially dilated convolution": a depthwise Conv1d with a dense island and dilated wings, 101010101111101010101.

Builds the seed's layer (m=5 island, n=4 wing taps at spacing 2), shows its pattern, converts the seed's
original dense depthwise conv (WING * 2 + 1 taps) into it exactly, and compares it with the "two convs
summed" workaround suggested in the thread.

    python examples/partial_conv1d.py
"""
from __future__ import annotations

import torch
import torch.nn as nn

import dcls_convert as dc

IN_SIZE, WING = 16, 2

# The seed's starting point: nn.Conv1d(IN_SIZE, IN_SIZE, WING * 2 + 1, padding=WING, groups=IN_SIZE)
original = nn.Conv1d(IN_SIZE, IN_SIZE, WING * 2 + 1, padding=WING, groups=IN_SIZE)
layer = dc.PartialDilatedConv1d.from_conv(original, island=5, wing_taps=4, wing_spacing=2)
print(layer)
print("pattern:", layer.pattern(), f"({layer.kernel_count} trainable taps over a window of {layer.window[0]})")

x = torch.randn(4, IN_SIZE, 200)
with torch.no_grad():
    print("converted output == original output:", torch.allclose(layer(x), original(x), atol=1e-6))
print("forward path:", layer.engine_name(), "| island weight", tuple(layer.island_weight.shape),
      "| wing weight", tuple(layer.wing_weight.shape))

# The wings learn from the first step: their gradient is non-zero although they start at zero.
layer(x).square().mean().backward()
print("wing gradient norm after one backward:", f"{layer.wing_weight.grad.norm():.3e}")
print("dense plain conv for deployment:", layer.to_conv())
