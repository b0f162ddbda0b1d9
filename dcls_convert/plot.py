"""plot_kernels: a PNG of learned kernels and DCLS tap positions (matplotlib, optional dependency)."""
from __future__ import annotations


import torch
import torch.nn as nn

from .methods.base import ConvertedConv

__all__ = ["plot_kernels"]


def plot_kernels(module_or_model: nn.Module, path: str, *, max_layers: int = 6, channels: int = 8) -> str:
    """Draws the dense kernels of up to `max_layers` converted layers (first `channels` output channels,
    first input channel of each), with DCLS tap positions as dots. Returns `path`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plot_kernels needs matplotlib: pip install 'dcls-convert[plot]'") from exc
    if isinstance(module_or_model, ConvertedConv):
        layers = [("", module_or_model)]
    else:
        layers = [(n, m) for n, m in module_or_model.named_modules() if isinstance(m, ConvertedConv)]
    if not layers:
        raise ValueError("plot_kernels: no converted (DCLS/bloom/partial) module found")
    layers = layers[:max_layers]
    cols = min(channels, layers[0][1].out_channels)
    fig, axes = plt.subplots(len(layers), cols, figsize=(1.6 * cols, 1.8 * len(layers)), squeeze=False)
    for row, (name, m) in enumerate(layers):
        with torch.no_grad():
            k = m.dense_kernel().float().cpu()
        pos = getattr(m, "positions", None)
        for c in range(cols):
            ax = axes[row][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= k.shape[0]:
                ax.axis("off")
                continue
            img = k[c, 0]
            if img.dim() == 1:
                img = img[None]
            elif img.dim() == 3:
                img = img[img.shape[0] // 2]
            lim = float(img.abs().max()) or 1.0
            ax.imshow(img.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
            if pos is not None and m.ndim == 2:
                p = pos.detach().float().cpu()
                ax.scatter((p[1, c, 0] + m.window[1] // 2).numpy(), (p[0, c, 0] + m.window[0] // 2).numpy(), s=4, c="k")
            if c == 0:
                ax.set_ylabel((name or type(m).__name__)[-18:], fontsize=7)
    fig.suptitle(f"learned kernels ({len(layers)} layer(s), {cols} channel(s) each)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
