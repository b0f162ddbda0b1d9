"""The depthwise tap engine == the dense oracle F.convNd(x, construct(...), groups=C), forward and gradients."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dcls_convert import ops
from dcls_convert.ops import reference
from helpers import max_rel, random_taps
from conftest import requires_compiled

pytestmark = requires_compiled


@st.composite
def taps_cases(draw):
    D = draw(st.integers(1, 2))
    window = draw(st.lists(st.integers(1, 51 if D == 1 else 21), min_size=D, max_size=D))
    stride = draw(st.lists(st.integers(1, 3), min_size=D, max_size=D))
    padding = [draw(st.integers(0, L)) for L in window]
    size = [draw(st.integers(max(1, L - 2 * p), max(1, L - 2 * p) + 12)) for L, p in zip(window, padding)]
    return dict(D=D, window=window, stride=stride, padding=padding, size=size,
                N=draw(st.sampled_from([0, 1, 2])), C=draw(st.integers(1, 4)), K=draw(st.sampled_from([1, 3, 8])),
                interp=draw(st.sampled_from(["bilinear", "nearest"])), integer=draw(st.booleans()),
                bias=draw(st.booleans()), layout=draw(st.sampled_from(["contiguous", "channels_last", "strided"])),
                grad_layout=draw(st.sampled_from(["contiguous", "channels_last", "strided", "expanded"])))


def _grad_like(y, layout):
    """An output gradient in the given layout: the kernels read planes through strides, stride 0 included."""
    if layout == "expanded":  # what .sum().backward() hands over
        return torch.randn((), dtype=y.dtype).expand(y.shape)
    if layout == "channels_last" and y.dim() == 4:
        return torch.randn_like(y).contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        return torch.randn(*y.shape[:-1], 2 * y.shape[-1], dtype=y.dtype)[..., ::2]
    return torch.randn_like(y, memory_format=torch.contiguous_format)


def _inputs(c, dtype):
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


@given(c=taps_cases())
def test_taps_conv_matches_oracle_float64(c):
    x, w, p, b = _inputs(c, torch.float64)
    args = (c["window"], c["stride"], c["padding"], c["interp"])
    leaves = [t.clone().requires_grad_() for t in (x, w, p)] + ([b.clone().requires_grad_()] if b is not None else [])
    ref = [t.clone().detach().requires_grad_() for t in leaves]
    got = ops.taps_conv(leaves[0], leaves[1], leaves[2], leaves[3] if b is not None else None, *args)
    want = reference.taps_conv(ref[0], ref[1], ref[2], ref[3] if b is not None else None, *args)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    if got.numel() > 1 and got.dim() == 4 and min(got.shape[1:]) > 1:  # layouts are ambiguous otherwise
        # channels_last in, channels_last out (as PyTorch's convolutions)
        assert got.is_contiguous(memory_format=torch.channels_last) == want.is_contiguous(
            memory_format=torch.channels_last)
    g = _grad_like(want, c["grad_layout"])
    g_got = torch.autograd.grad(got, leaves, g, allow_unused=True)
    g_want = torch.autograd.grad(want, ref, g, allow_unused=True)
    for a, e in zip(g_got, g_want):
        e = torch.zeros_like(a) if e is None else e
        torch.testing.assert_close(a, e, rtol=0, atol=1e-10)


@pytest.mark.parametrize("window,K", [([17, 17], 34), ([31, 31], 26), ([51, 51], 49), ([21], 13)])
def test_taps_conv_float32(window, K):
    D = len(window)
    size = [24, 24] if D == 2 else [300]
    x = torch.randn(2, 6, *size)
    w, p, _ = random_taps(D, 6, 1, K, window, dtype=torch.float32, spread=1.0)
    pad = [L // 2 for L in window]
    got = ops.taps_conv(x, w, p, None, window, [1] * D, pad)
    want = reference.taps_conv(x.double(), w.double(), p.double(), None, window, [1] * D, pad)
    assert max_rel(got.double(), want) < 1e-4


def test_taps_conv_bfloat16():
    x = torch.randn(2, 4, 20, 20)
    w, p, _ = random_taps(2, 4, 1, 9, [9, 9], dtype=torch.float32)
    want = reference.taps_conv(x.double(), w.double(), p.double(), None, [9, 9], [1, 1], [4, 4])
    got = ops.taps_conv(x.bfloat16(), w.bfloat16(), p, None, [9, 9], [1, 1], [4, 4])
    assert got.dtype == torch.bfloat16 and max_rel(got.double(), want) < 3e-2


def test_frozen_positions_skip_their_gradient():
    x = torch.randn(1, 2, 10, 10, requires_grad=True)
    w, p, _ = random_taps(2, 2, 1, 4, [5, 5], dtype=torch.float32)
    w.requires_grad_()
    ops.taps_conv(x, w, p, None, [5, 5], [1, 1], [2, 2]).sum().backward()
    assert p.grad is None and w.grad is not None and x.grad is not None


@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("interp", ["bilinear", "nearest"])
def test_opcheck_taps_conv(D, interp):
    window = [5] * D
    x = torch.randn(2, 3, *([8] * D), dtype=torch.float64, requires_grad=True)
    w, p, _ = random_taps(D, 3, 1, 4, window)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    args = (x, w.requires_grad_(), p.requires_grad_(), b, window, [1] * D, [2] * D, interp)
    torch.library.opcheck(torch.ops.dcls_convert.taps_conv.default, args)


def test_channels_last_stays_channels_last():
    """Output and input gradient keep the input's memory format (fake kernels included, via opcheck)."""
    x = torch.randn(2, 3, 8, 9, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    w, p, _ = random_taps(2, 3, 1, 4, [5, 5])
    args = (x, w.requires_grad_(), p.requires_grad_(), None, [5, 5], [1, 1], [2, 2], "bilinear")
    torch.library.opcheck(torch.ops.dcls_convert.taps_conv.default, args)
    y = torch.ops.dcls_convert.taps_conv(*args)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    gx, = torch.autograd.grad(y, x, torch.ones(()).double().expand(y.shape))
    assert gx.is_contiguous(memory_format=torch.channels_last) and not gx.is_contiguous()
    fake = torch._subclasses.fake_tensor.FakeTensorMode()
    fx, fw, fp = (fake.from_tensor(t.detach()) for t in (x, w, p))
    with fake:
        fy = torch.ops.dcls_convert.taps_conv(fx, fw, fp, None, [5, 5], [1, 1], [2, 2], "bilinear")
    assert fy.stride() == y.stride()


@pytest.mark.parametrize("D", [1, 2])
def test_gradcheck_taps_conv(D):
    window = [5] * D
    x = torch.randn(2, 2, *([7] * D), dtype=torch.float64, requires_grad=True)
    w, p, _ = random_taps(D, 2, 1, 3, window, spread=0.9)
    p = (p + 0.137).requires_grad_()
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, p, b: ops.taps_conv(x, w, p, b, window, [2] * D, [1] * D)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w.requires_grad_(), p, b))


def test_large_shape_launch_sizes_are_safe_on_cpu():
    """Grid-stride loops make any size safe on CUDA; on CPU check a wide-channel plane count works."""
    x = torch.randn(1, 768, 9, 9)
    w, p, _ = random_taps(2, 768, 1, 4, [5, 5], dtype=torch.float32)
    got = ops.taps_conv(x, w, p, None, [5, 5], [1, 1], [2, 2])
    assert max_rel(got.double(), reference.taps_conv(x.double(), w.double(), p.double(), None, [5, 5], [1, 1], [2, 2])) < 1e-5
