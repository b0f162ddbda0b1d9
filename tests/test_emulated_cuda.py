"""The CUDA kernels' per-thread functions, driven on CPU over the whole launch grid, agree with the reference."""
import pytest
import torch

from dcls_convert.ops import reference
from helpers import random_taps
from conftest import requires_compiled

pytestmark = requires_compiled
E = torch.ops.dcls_convert


@pytest.mark.parametrize("interp", ["bilinear", "gaussian", "nearest"])
@pytest.mark.parametrize("window", [[9], [6, 5], [3, 4, 5]])
@pytest.mark.parametrize("integer", [False, True])
def test_construct_threads(interp, window, integer):
    D = len(window)
    w, p, s = random_taps(D, 3, 2, 7, window, spread=1.4, sigma=interp == "gaussian")
    if integer:
        p = p.round()
    torch.testing.assert_close(E._emulate_cuda_dcls_construct(w, p, s, window, interp, 0.27),
                               reference.dcls_construct(w, p, s, window, interp), rtol=0, atol=1e-12)
    leaves = [w.clone().requires_grad_(), p.clone().requires_grad_()] + ([s.clone().requires_grad_()] if s is not None else [])
    out = reference.dcls_construct(leaves[0], leaves[1], leaves[2] if s is not None else None, window, interp)
    g = torch.randn_like(out)
    want = torch.autograd.grad(out, leaves, g, allow_unused=True)
    gw, gp, gs = E._emulate_cuda_dcls_construct_backward(g, w, p, s, window, interp, 0.27)
    torch.testing.assert_close(gw, want[0], rtol=0, atol=1e-11)
    torch.testing.assert_close(gp, want[1] if want[1] is not None else torch.zeros_like(p), rtol=0, atol=1e-11)
    if s is not None:
        torch.testing.assert_close(gs, want[2], rtol=0, atol=1e-11)


@pytest.mark.parametrize("interp", ["bilinear", "nearest"])
@pytest.mark.parametrize("case", [
    dict(size=[11, 12], window=[7, 6], stride=[1, 1], padding=[3, 2]),
    dict(size=[9, 10], window=[5, 5], stride=[2, 3], padding=[0, 5]),
    dict(size=[17], window=[9], stride=[2], padding=[4]),
    dict(size=[6, 7], window=[1, 3], stride=[1, 2], padding=[0, 1]),
])
def test_taps_threads(interp, case):
    D = len(case["window"])
    x = torch.randn(2, 3, *case["size"], dtype=torch.float64)
    w, p, _ = random_taps(D, 3, 1, 5, case["window"], spread=1.4)
    b = torch.randn(3, dtype=torch.float64)
    args = (case["window"], case["stride"], case["padding"], interp)
    want = reference.taps_conv(x, w, p, b, *args)
    torch.testing.assert_close(E._emulate_cuda_taps_conv(x, w, p, b, *args), want, rtol=0, atol=1e-12)
    leaves = [t.clone().requires_grad_() for t in (x, w, p)]
    out = reference.taps_conv(*leaves, None, *args)
    g = torch.randn_like(out)
    want_g = torch.autograd.grad(out, leaves, g, allow_unused=True)
    gx, gw, gp = E._emulate_cuda_taps_conv_backward(g, x, w, p, *args)
    torch.testing.assert_close(gx, want_g[0], rtol=0, atol=1e-11)
    torch.testing.assert_close(gw, want_g[1], rtol=0, atol=1e-11)
    torch.testing.assert_close(gp, want_g[2] if want_g[2] is not None else torch.zeros_like(p), rtol=0, atol=1e-11)
