"""The depthwise tap engine == the dense oracle F.convNd(x, construct(...), groups=C), forward and gradients."""
import pytest
import torch
from hypothesis import given

from dcls_convert import ops
from dcls_convert.ops import reference
from helpers import requires_compiled, check_taps_against_oracle, max_rel, random_taps, taps_cases

pytestmark = requires_compiled


@given(c=taps_cases())
def test_taps_conv_matches_oracle_float64(c):
    check_taps_against_oracle(c, "cpu")


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


def saved_bytes(fn):
    """fn()'s result and the bytes autograd keeps for its backward: the saved tensors' storages, each once (an
    expanded view costs its base)."""
    storages = {}

    def pack(t):
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


@requires_compiled
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_fixed_taps_keep_no_input_for_the_backward(layout):
    """Taps that do not learn (bloom's blur, a frozen layer) save only themselves: the input gradient reads the
    output gradient and the taps, never the input, which would otherwise stay alive until the backward."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(2, 3, 16, 12).contiguous(memory_format=fmt).requires_grad_()
    w, p, _ = random_taps(2, 3, 1, 5, [5, 7], dtype=torch.float32)
    args = ([5, 7], [2, 1], [2, 3])
    y, fixed = saved_bytes(lambda: ops.taps_conv(x, w, p, None, *args))
    assert fixed == w.numel() * 4 + p.numel() * 4
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    X = x.detach().double().requires_grad_()
    want = torch.autograd.grad(reference.taps_conv(X, w.double(), p.double(), None, *args), X, g.double())[0]
    torch.testing.assert_close(gx.double(), want, rtol=1e-5, atol=1e-5)
    assert gx.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    w.requires_grad_()  # learning taps: the correlation reads the input
    _, learning = saved_bytes(lambda: ops.taps_conv(x, w, p, None, *args))
    assert learning == fixed + x.numel() * 4


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


def test_wide_channel_count_matches_the_oracle():
    """768 channels (ConvNeXt stage 4) in one call: the CPU engine's per-plane work split covers every plane."""
    x = torch.randn(1, 768, 9, 9)
    w, p, _ = random_taps(2, 768, 1, 4, [5, 5], dtype=torch.float32)
    got = ops.taps_conv(x, w, p, None, [5, 5], [1, 1], [2, 2])
    assert max_rel(got.double(), reference.taps_conv(x.double(), w.double(), p.double(), None, [5, 5], [1, 1], [2, 2])) < 1e-5


def test_bad_bias_and_gradient_shapes_are_rejected():
    """The op boundary checks what autograd normally guarantees: a wrong bias or gradient would be read out of
    bounds (and on a GPU a host pointer would poison the CUDA context)."""
    x = torch.randn(2, 3, 8, 8)
    w, p, _ = random_taps(2, 3, 1, 4, [5, 5], dtype=torch.float32)
    args = ([5, 5], [1, 1], [2, 2], "bilinear")
    with pytest.raises(RuntimeError, match="bias must be"):
        torch.ops.dcls_convert.taps_conv(x, w, p, torch.randn(4), *args)
    with pytest.raises(RuntimeError, match="gradient must be"):
        torch.ops.dcls_convert.taps_conv_backward(torch.randn(2, 3, 7, 8), x, w, p, *args, [True, True, True, False])
    with pytest.raises(RuntimeError, match="gradient must be"):
        torch.ops.dcls_convert.construct_backward(torch.randn(3, 1, 5, 4), w, p, None, [5, 5], "bilinear", 0.27,
                                                       [True, True, False])


def test_on_grid_taps_match_the_oracle_with_zero_weight_corners_skipped():
    """Taps on the grid (as convert() places them) and zero-weight extras: the kernels skip entries whose
    weight is exactly zero in the forward and input-gradient passes, yet every gradient stays exact."""
    x = torch.randn(2, 3, 15, 15, dtype=torch.float64, requires_grad=True)
    w, p, _ = random_taps(2, 3, 1, 12, [9, 9])
    w[:, :, 8:] = 0  # zero-weight extras still learn: their weight and position gradients are needed
    p = p.round().requires_grad_()
    w.requires_grad_()
    args = ([9, 9], [1, 1], [4, 4], "bilinear")
    got = ops.taps_conv(x, w, p, None, *args)
    ref = [t.detach().clone().requires_grad_() for t in (x, w, p)]
    want = reference.taps_conv(*ref, None, *args)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    g = torch.randn_like(want)
    for a, e in zip(torch.autograd.grad(got, (x, w, p), g), torch.autograd.grad(want, ref, g)):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-10)


def test_autocast_leaves_float64_alone():
    """As autocast does for F.conv2d: float32 arguments run in the autocast dtype, float64 ones stay float64."""
    w, p, _ = random_taps(2, 3, 1, 4, [5, 5])
    args = ([5, 5], [1, 1], [2, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ops.taps_conv(torch.randn(1, 3, 8, 8, dtype=torch.float64), w, p, None, *args).dtype == torch.float64
        assert ops.taps_conv(torch.randn(1, 3, 8, 8), w.float(), p.float(), None, *args).dtype == torch.bfloat16


def test_autocast_keeps_float32_weight_and_bias():
    """Under autocast the compiled op takes the float32 weight and bias as they are (no cast launches; the taps
    are not rounded to 16 bits): gradients come back in float32 without a cast, the output in bfloat16, closer to
    the float64 oracle than with the taps rounded first; opcheck covers the mixed dtypes."""
    x = torch.randn(2, 3, 12, 12)
    w, p, _ = random_taps(2, 3, 1, 9, [7, 7], dtype=torch.float32)
    b = torch.randn(3)
    args = ([7, 7], [1, 1], [3, 3])
    leaves = [t.clone().requires_grad_() for t in (x, w, p, b)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            y = ops.taps_conv(leaves[0], leaves[1], leaves[2], leaves[3], *args)
    assert [e.name for e in prof.events() if e.name == "aten::_to_copy"] == ["aten::_to_copy"]  # the input alone
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    assert [t.grad.dtype for t in leaves] == [torch.float32] * 4  # x's gradient: autograd casts it back
    want = reference.taps_conv(*(t.double() for t in (x.bfloat16(), w, p, b)), *args, "bilinear")
    rounded = reference.taps_conv(*(t.double() for t in (x.bfloat16(), w.bfloat16(), p, b.bfloat16())), *args,
                                  "bilinear")
    assert (y.double() - want).abs().max() <= 0.02 * want.abs().max()
    assert (y.double() - want).abs().mean() < (y.double() - rounded).abs().mean()
    torch.library.opcheck(torch.ops.dcls_convert.taps_conv.default,
                          (x.bfloat16().requires_grad_(), w.requires_grad_(), p, b, [7, 7], [1, 1], [3, 3], "bilinear"))
    with pytest.raises(RuntimeError, match="does not match weight dtype"):
        torch.ops.dcls_convert.taps_conv(x, w.bfloat16(), p, None, *args, "bilinear")  # float32 input, bf16 weight
    with pytest.raises(RuntimeError, match="bias dtype"):
        torch.ops.dcls_convert.taps_conv(x.bfloat16(), w, p, b.double(), *args, "bilinear")


# Absurd geometry (from arguments or an edited recipe) must end in a Python exception, never kill the process:
# each case runs in its own interpreter, so a crash fails the test instead of the whole run.
ABSURD_GEOMETRY = [
    ("window", "[2**32, 2**32]", "[1, 1]", "[2**31, 2**31]"),   # window area wrapped to 0
    ("stride", "[5, 5]", "[2**32 - 1, 69273666]", "[2, 2]"),      # padded-buffer size wrapped to 0
    ("OK (1, 2, 1, 1)", "[3, 3]", "[10**6, 10**6]", "[1, 1]"),    # a buffer sized by the stride: now one output
    ("stride", "[5, 5]", "[2**62, 2**62]", "[2**61, 2**61]"),     # silent overflow of the output geometry
    ("padding", "[3, 3]", "[1, 1]", "[10**6, 10**6]"),            # a terabyte padded plane
]


@pytest.mark.parametrize("what,window,stride,padding", ABSURD_GEOMETRY)
def test_absurd_geometry_raises_instead_of_crashing(what, window, stride, padding):
    import subprocess
    import sys

    code = f"""
import torch
import dcls_convert.ops  # registers the ops
x = torch.randn(1, 2, 4, 4)
w = torch.randn(2, 1, 3)
p = torch.zeros(2, 2, 1, 3)
try:
    y = torch.ops.dcls_convert.taps_conv(x, w, p, None, {window}, {stride}, {padding}, "bilinear")
    print("OK", tuple(y.shape))
except RuntimeError as e:
    print("RAISED", e)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"process died ({r.returncode}): {r.stderr[-500:]}"
    assert what in r.stdout and ("RAISED" in r.stdout) != what.startswith("OK"), r.stdout


def test_one_output_ignores_the_stride():
    """A stride larger than the input gives one output per axis, equal to the oracle (the engines then run at
    stride 1 along that axis)."""
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    w, p, _ = random_taps(2, 3, 1, 4, [5, 5])
    w.requires_grad_(), p.requires_grad_()
    args = ([5, 5], [1000, 7], [1, 0], "bilinear")
    got = ops.taps_conv(x, w, p, None, *args[:3])
    want = reference.taps_conv(x, w, p, None, *args)
    assert got.shape[2] == 1
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    g = torch.randn_like(got)
    for a, e in zip(torch.autograd.grad(got, (x, w, p), g), torch.autograd.grad(want, (x, w, p), g)):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-11)


def test_double_backward_is_refused_not_silently_zero():
    """create_graph=True (a gradient penalty) through the compiled ops raises a clear error instead of returning
    second-order gradients of zero; a first-order backward is unaffected."""
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    w, p, _ = random_taps(2, 3, 1, 4, [5, 5], dtype=torch.float32)
    w.requires_grad_()
    y = ops.taps_conv(x, w, p, None, [5, 5], [1, 1], [2, 2])
    with pytest.raises(RuntimeError, match="gradients of gradients"):
        torch.autograd.grad(y.square().sum(), w, create_graph=True)
    kernel = ops.construct(w, p, None, [5, 5])
    with pytest.raises(RuntimeError, match="gradients of gradients"):
        torch.autograd.grad(kernel.square().sum(), w, create_graph=True)
    (gw,) = torch.autograd.grad(ops.taps_conv(x, w, p, None, [5, 5], [1, 1], [2, 2]).square().sum(), w)
    assert gw.abs().sum() > 0


from hypothesis import settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_ABSURD_INT = st.one_of(st.integers(-3, 40), st.sampled_from([0, 2**24, 2**24 + 1, 2**31, 2**32 - 1, 2**40, 2**62]))


@settings(max_examples=150, deadline=None)
@given(D=st.integers(0, 3), size=st.lists(st.integers(0, 9), min_size=3, max_size=3), C=st.integers(0, 3),
       K=st.integers(0, 4), window=st.lists(_ABSURD_INT, min_size=0, max_size=3),
       stride=st.lists(_ABSURD_INT, min_size=0, max_size=3), padding=st.lists(_ABSURD_INT, min_size=0, max_size=3),
       interp=st.sampled_from(["bilinear", "nearest", "gaussian", "cubic"]), pos_scale=st.sampled_from([1.0, 1e30]))
def test_fuzz_taps_conv_returns_or_raises(D, size, C, K, window, stride, padding, interp, pos_scale):
    """Random, partly absurd arguments: the op returns a tensor of the predicted shape or raises RuntimeError
    naming the op; it never crashes the process or hangs."""
    x = torch.randn(1, C, *size[:D]) if D else torch.randn(1, C)
    w = torch.randn(C, 1, K)
    p = torch.randn(max(D, 1), C, 1, K) * pos_scale
    try:
        y = torch.ops.dcls_convert.taps_conv(x, w, p, None, window, stride, padding, interp)
    except RuntimeError as exc:
        assert "taps_conv" in str(exc) or "interpolation" in str(exc)
        return
    assert y.shape[:2] == x.shape[:2] and y.dim() == x.dim()
    y.sum()  # readable
