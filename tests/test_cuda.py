"""Real CUDA kernels vs the CPU op and the reference (skipped only where no GPU is present)."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings

from dcls_convert import ops
from dcls_convert.ops import reference
from helpers import check_taps_against_oracle, max_rel, random_taps, taps_cases

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


@settings(max_examples=60, deadline=None)
@given(c=taps_cases())
def test_taps_conv_cuda_matches_oracle_float64(c):
    """The CPU property test on the device: 1-D/2-D, strides, paddings, nearest, on-grid taps, batch 0, bias or
    none, channels_last/strided inputs and gradients, frozen arguments (partial backward masks)."""
    check_taps_against_oracle(c, "cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("interp", ["bilinear", "gaussian"])
def test_construct_cuda_low_precision(dtype, interp):
    w, p, s = random_taps(2, 8, 4, 34, [17, 17], sigma=interp == "gaussian")
    want = reference.dcls_construct(w, p, s, [17, 17], interp)
    got = ops.dcls_kernel(w.to("cuda", dtype), p.cuda().float(), s.cuda().float() if s is not None else None,
                          [17, 17], interp)
    assert got.dtype == dtype
    assert max_rel(got.double().cpu(), want) < {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]


def test_taps_conv_cuda_beyond_one_grid():
    """144M outputs: more than the capped grid (524,280 blocks x 256 threads), so the grid-stride loops run a
    second round. Checked against the dense oracle on the device (cuDNN with the constructed kernel)."""
    x = torch.randn(1, 4, 6000, 6000, device="cuda", requires_grad=True)
    w, p, _ = random_taps(2, 4, 1, 3, [5, 5], dtype=torch.float32, device="cuda")
    w.requires_grad_(), p.requires_grad_()
    y = ops.taps_conv(x, w, p, None, [5, 5], [1, 1], [2, 2])
    kernel = ops.dcls_kernel(w, p, None, [5, 5])
    want = F.conv2d(x, kernel, padding=2, groups=4)
    assert max_rel(y.detach(), want.detach()) < 1e-5
    g = torch.randn_like(y)
    for a, e in zip(torch.autograd.grad(y, (x, w, p), g), torch.autograd.grad(want, (x, w, p), g)):
        assert max_rel(a, e) < 1e-3  # float32 sums over 36M terms per tap


def test_taps_conv_cuda_one_pixel_channels_last_strides_match_fake():
    x = torch.randn(2, 3, 5, 5, device="cuda").to(memory_format=torch.channels_last)
    w, p, _ = random_taps(2, 3, 1, 4, [5, 5], dtype=torch.float32, device="cuda")
    y = torch.ops.dcls_convert.taps_conv(x, w, p, None, [5, 5], [1, 1], [0, 0], "bilinear")  # 1 x 1 output
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fy = torch.ops.dcls_convert.taps_conv(*(mode.from_tensor(t) for t in (x, w, p)), None, [5, 5], [1, 1], [0, 0],
                                              "bilinear")
    assert fy.stride() == y.stride()
