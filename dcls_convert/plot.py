"""plot_kernels: a PNG of learned kernels and DCLS tap positions (matplotlib, optional dependency)."""
from __future__ import annotations

import torch
import torch.nn as nn

from .methods.base import ConvertedConv

__all__ = ["plot_kernels"]


def _layers(model: nn.Module) -> list[tuple[str, ConvertedConv]]:
    if isinstance(model, ConvertedConv):
        return [("", model)]
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ConvertedConv)]


def _grid_xy(positions: torch.Tensor, module: ConvertedConv, c: int):
    """Tap coordinates of output channel c (first input channel) in image axes: x = column, y = row."""
    p = positions.detach().float().cpu()[:, c, 0]
    if module.ndim == 1:
        return p[0] + module.window[0] // 2, torch.zeros_like(p[0])
    return p[1] + module.window[1] // 2, p[0] + module.window[0] // 2


def plot_kernels(module_or_model: nn.Module, path: str, *, max_layers: int = 6, channels: int = 8,
                 start: nn.Module | None = None) -> str:
    """Draws the dense kernels of up to `max_layers` converted layers (first `channels` output channels, first
    input channel of each) on one colour scale per layer, with DCLS taps as dots. `start`: the same model as it
    was when converted (e.g. a deep copy taken before fine-tuning): each tap is then linked to where it started,
    so the plot shows what training did to the spacings. Returns `path`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plot_kernels needs matplotlib: pip install 'dcls-convert[plot]'") from exc
    layers = _layers(module_or_model)[:max_layers]
    if not layers:
        raise ValueError("plot_kernels: no converted (DCLS/bloom/partial) module found")
    starts = dict(_layers(start)) if start is not None else {}
    cols = min(channels, max(m.out_channels for _, m in layers))
    fig, axes = plt.subplots(len(layers), cols + 1, figsize=(1.7 * cols + 0.6, 1.9 * len(layers)), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * cols + [0.08]})
    moved_any = False
    for row, (name, m) in enumerate(layers):
        with torch.no_grad():
            k = m.dense_kernel().float().cpu()
        imgs = []
        for c in range(min(cols, k.shape[0])):
            img = k[c, 0]
            imgs.append(img[None] if img.dim() == 1 else (img[img.shape[0] // 2] if img.dim() == 3 else img))
        lim = max(float(i.abs().max()) for i in imgs) or 1.0  # one scale per layer: channels comparable
        pos = getattr(m, "positions", None)
        pos0 = getattr(starts.get(name), "positions", None)
        image = None
        for c in range(cols):
            ax = axes[row][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(imgs):
                ax.axis("off")
                continue
            image = ax.imshow(imgs[c].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
            if pos is not None and m.ndim <= 2:
                x, y = _grid_xy(pos, m, c)
                if pos0 is not None and pos0.shape == pos.shape:
                    x0, y0 = _grid_xy(pos0, m, c)
                    for a, b, a0, b0 in zip(x.tolist(), y.tolist(), x0.tolist(), y0.tolist()):
                        ax.plot([a0, a], [b0, b], color="0.35", linewidth=0.6)
                    ax.scatter(x0.numpy(), y0.numpy(), s=9, facecolors="none", edgecolors="0.35", linewidths=0.6,
                               label="tap at conversion")
                    moved_any = True
                ax.scatter(x.numpy(), y.numpy(), s=5, c="k", label="tap now")
            if row == 0:
                ax.set_title(f"out ch {c}", fontsize=7)
            if c == 0:
                label = (name or type(m).__name__)[-20:]
                ax.set_ylabel(f"{label}\n{m.method}, {'x'.join(map(str, m.window))}", fontsize=7)
        if image is not None:
            bar = fig.colorbar(image, cax=axes[row][cols])
            bar.ax.tick_params(labelsize=6)
        else:
            axes[row][cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles[:2] if moved_any else handles[:1], labels[:2] if moved_any else labels[:1],
                   loc="lower center", ncol=2, fontsize=7, frameon=False)
    what = "dense kernels (input channel 0), colour = weight"
    fig.suptitle(f"{what}; {len(layers)} layer(s)" + ("; lines: tap moves since conversion" if moved_any else ""),
                 fontsize=8)
    fig.tight_layout(rect=(0, 0.04 if handles else 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
