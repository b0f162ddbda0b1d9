"""Shared test helpers: random DCLS op arguments, the tap-op property cases and the dense-oracle comparison."""
import pytest
import torch
from hypothesis import strategies as st

from dcls_convert import ops
from dcls_convert.ops import reference


def random_taps(D, Cout, Cin_g, K, window, dtype=torch.float64, device="cpu", spread=1.3, gen=None, sigma=False):
    w = torch.randn(Cout, Cin_g, K, dtype=dtype, device=device, generator=gen)
    scale = torch.tensor(window, dtype=dtype, device=device).view(D, 1, 1, 1)
    p = (torch.rand(D, Cout, Cin_g, K, dtype=dtype, device=device, generator=gen) - 0.5) * scale * spread
    s = torch.rand(D, Cout, Cin_g, K, dtype=dtype, device=device, generator=gen) * 2 - 0.5 if sigma else None
    return w, p, s


def max_rel(a, b):
    scale = b.abs().max().clamp_min(1e-30)
    return float((a - b).abs().max() / scale) if a.numel() else 0.0


@st.composite
def taps_cases(draw, batches=(0, 1, 2)):
    D = draw(st.integers(1, 2))
    window = draw(st.lists(st.integers(1, 51 if D == 1 else 21), min_size=D, max_size=D))
    stride = draw(st.lists(st.integers(1, 3), min_size=D, max_size=D))
    padding = [draw(st.integers(0, L)) for L in window]
    size = [draw(st.integers(max(1, L - 2 * p), max(1, L - 2 * p) + 12)) for L, p in zip(window, padding)]
    return dict(D=D, window=window, stride=stride, padding=padding, size=size,
                N=draw(st.sampled_from(list(batches))), C=draw(st.integers(1, 4)), K=draw(st.sampled_from([1, 3, 8])),
                interp=draw(st.sampled_from(["bilinear", "nearest"])), integer=draw(st.booleans()),
                bias=draw(st.booleans()), layout=draw(st.sampled_from(["contiguous", "channels_last", "strided"])),
                grad_layout=draw(st.sampled_from(["contiguous", "channels_last", "strided", "expanded"])),
                frozen=draw(st.sampled_from([(), ("input",), ("positions",), ("weight", "positions")])))


def grad_like(y, layout):
    """An output gradient in the given layout: the kernels read planes through strides, stride 0 included."""
    if layout == "expanded":  # what .sum().backward() hands over
        return torch.randn((), dtype=y.dtype).expand(y.shape)
    if layout == "channels_last" and y.dim() == 4:
        return torch.randn_like(y).contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        return torch.randn(*y.shape[:-1], 2 * y.shape[-1], dtype=y.dtype)[..., ::2]
    return torch.randn_like(y, memory_format=torch.contiguous_format)


def taps_inputs(c, dtype):
    x = torch.randn(c["N"], c["C"], *c["size"], dtype=dtype)
    if c["layout"] == "channels_last" and c["D"] == 2:
        x = x.to(memory_format=torch.channels_last)
    elif c["layout"] == "strided":
        x = torch.randn(c["N"], c["C"], *c["size"][:-1], 2 * c["size"][-1], dtype=dtype)[..., ::2]
    w, p, _ = random_taps(c["D"], c["C"], 1, c["K"], c["window"], dtype=dtype, spread=1.3)
    if c["integer"]:
        p = p.round()
    b = torch.randn(c["C"], dtype=dtype) if c["bias"] else None
    return x, w, p, b


def check_taps_against_oracle(c, device):
    """The tap op on `device` equals the float64 dense oracle on CPU: output, its memory format, and the gradient
    of every argument that requires one (frozen ones exercise the backward's partial masks)."""
    x, w, p, b = (t.to(device) if t is not None else None for t in taps_inputs(c, torch.float64))
    args = (c["window"], c["stride"], c["padding"], c["interp"])
    names = ["input", "weight", "positions", "bias"][: 3 + (b is not None)]
    leaves = [t.clone().requires_grad_(n not in c["frozen"]) for t, n in zip((x, w, p, b), names)]
    ref = [t.detach().cpu().clone().requires_grad_(t.requires_grad) for t in leaves]
    got = ops.taps_conv(leaves[0], leaves[1], leaves[2], leaves[3] if b is not None else None, *args)
    want = reference.taps_conv(ref[0], ref[1], ref[2], ref[3] if b is not None else None, *args)
    assert got.shape == want.shape
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-10)
    if got.numel() > 1 and got.dim() == 4 and min(got.shape[1:]) > 1:  # layouts are ambiguous otherwise
        # channels_last in, channels_last out (as PyTorch's convolutions)
        assert got.is_contiguous(memory_format=torch.channels_last) == want.is_contiguous(
            memory_format=torch.channels_last)
    g = grad_like(want, c["grad_layout"])
    trained = [i for i, t in enumerate(leaves) if t.requires_grad]
    g_got = torch.autograd.grad(got, [leaves[i] for i in trained], g.to(device), allow_unused=True)
    g_want = torch.autograd.grad(want, [ref[i] for i in trained], g, allow_unused=True)
    for a, e in zip(g_got, g_want):
        a = a.cpu()
        torch.testing.assert_close(a, torch.zeros_like(a) if e is None else e, rtol=0, atol=1e-10)


requires_compiled = pytest.mark.skipif(not ops.has_compiled_ops(), reason="compiled library not built")
