"""Real CUDA kernels vs the CPU op and the reference (skipped only where no GPU is present)."""
import pytest
import torch

from dcls_convert import ops
from dcls_convert.ops import reference
from helpers import max_rel, random_taps

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("interp", ["bilinear", "gaussian", "nearest"])
@pytest.mark.parametrize("window", [[17], [17, 17], [5, 6, 7]])
def test_construct_cuda(interp, window):
    D = len(window)
    w, p, s = random_taps(D, 8, 2, 34, window, sigma=interp == "gaussian")
    leaves = [t.cuda().requires_grad_() for t in (w, p)] + ([s.cuda().requires_grad_()] if s is not None else [])
    out = ops.dcls_kernel(leaves[0], leaves[1], leaves[2] if s is not None else None, window, interp)
    ref_leaves = [t.clone().requires_grad_() for t in (w, p)] + ([s.clone().requires_grad_()] if s is not None else [])
    want = reference.dcls_construct(ref_leaves[0], ref_leaves[1], ref_leaves[2] if s is not None else None, window, interp)
    torch.testing.assert_close(out.cpu(), want, rtol=0, atol=1e-10)
    g = torch.randn_like(want)
    got_g = torch.autograd.grad(out, leaves, g.cuda(), allow_unused=True)
    want_g = torch.autograd.grad(want, ref_leaves, g, allow_unused=True)
    for a, e in zip(got_g, want_g):
        if e is not None:
            torch.testing.assert_close(a.cpu(), e, rtol=0, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", [([17, 17], [1, 1], [8, 8], [33, 30]), ([9, 9], [2, 2], [3, 4], [20, 21]), ([21], [1], [10], [500])])
def test_taps_conv_cuda(dtype, case):
    window, stride, padding, size = case
    D = len(window)
    x = torch.randn(3, 8, *size, dtype=torch.float64)
    w, p, _ = random_taps(D, 8, 1, 20, window)
    b = torch.randn(8, dtype=torch.float64)
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}[dtype]
    leaves = [x.to("cuda", dtype).requires_grad_(), w.to("cuda", dtype).requires_grad_(), p.cuda().float().requires_grad_(),
              b.to("cuda", dtype).requires_grad_()]
    out = ops.taps_conv(*leaves, window, stride, padding)
    ref = [t.clone().requires_grad_() for t in (x, w, p, b)]
    want = reference.taps_conv(*ref, window, stride, padding)
    assert max_rel(out.double().cpu(), want) < tol
    g = torch.randn_like(want)
    for a, e in zip(torch.autograd.grad(out, leaves, g.to("cuda", dtype)), torch.autograd.grad(want, ref, g)):
        assert max_rel(a.double().cpu(), e) < 10 * tol


def test_taps_conv_cuda_deterministic():
    x = torch.randn(4, 16, 40, 40, device="cuda", requires_grad=True)
    w, p, _ = random_taps(2, 16, 1, 34, [17, 17], dtype=torch.float32, device="cuda")
    grads = []
    for _ in range(2):
        w1, p1 = w.clone().requires_grad_(), p.clone().requires_grad_()
        ops.taps_conv(x, w1, p1, None, [17, 17], [1, 1], [8, 8]).square().sum().backward()
        grads.append((w1.grad.clone(), p1.grad.clone()))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
