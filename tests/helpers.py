"""Shared test helpers: random DCLS op arguments and a dense-oracle comparison."""
import torch


def random_taps(D, Cout, Cin_g, K, window, dtype=torch.float64, device="cpu", spread=1.3, gen=None, sigma=False):
    w = torch.randn(Cout, Cin_g, K, dtype=dtype, device=device, generator=gen)
    scale = torch.tensor(window, dtype=dtype, device=device).view(D, 1, 1, 1)
    p = (torch.rand(D, Cout, Cin_g, K, dtype=dtype, device=device, generator=gen) - 0.5) * scale * spread
    s = torch.rand(D, Cout, Cin_g, K, dtype=dtype, device=device, generator=gen) * 2 - 0.5 if sigma else None
    return w, p, s


def max_rel(a, b):
    scale = b.abs().max().clamp_min(1e-30)
    return float((a - b).abs().max() / scale) if a.numel() else 0.0
