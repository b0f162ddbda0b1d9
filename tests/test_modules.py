"""The three module kinds: forward == F.convNd(x, dense_kernel()) oracle, gradients too, to_conv round trip,
from_conv initialisation, bad configuration errors."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import dcls_convert as dc
from dcls_convert import ops
from dcls_convert.methods.bloom import bloom_kernel, bloom_matrix
from dcls_convert.ops import reference
from dcls_convert.padding import side_pads

CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def oracle_kernel(m):
    """The module's dense kernel built independently of the code its forward runs: the pure-PyTorch reference
    construct for dcls and partial (nearest taps), per-axis bloom matrices for bloom."""
    from dcls_convert.ops import reference

    if isinstance(m, dc.methods.bloom._BloomConvNd):
        A = [bloom_matrix(k, f, m.fade, dtype=m.weight.dtype) for k, f in zip(m.kernel_size, m.factors)]
        eq = {1: "oik,ak->oia", 2: "oikl,ak,bl->oiab"}[m.ndim]
        return torch.einsum(eq, m.weight, *A)
    if isinstance(m, dc.methods.partial._PartialDilatedConvNd):
        w, pos = m._taps()
        return reference.construct(w, pos, None, list(m.window), "nearest")
    return reference.construct(m.weight, m._positions(), m.sigma, list(m.window), m.interpolation, m.sigma_min)


def oracle(m, x):
    pads = side_pads(m.padding, m.window)
    flat = [v for b, a in reversed(pads) for v in (b, a)]
    xp = F.pad(x, flat, mode="constant" if m.padding_mode == "zeros" else m.padding_mode)
    return CONV_FN[m.ndim](xp, oracle_kernel(m), m.bias, m.stride, 0, 1, m.groups)


def check_oracle(m, x, atol=1e-10):
    x = x.clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    out = m(x)
    want = oracle(m, x2)
    torch.testing.assert_close(out, want, rtol=0, atol=atol)
    g = torch.randn_like(out)
    params = [p for p in m.parameters() if p.requires_grad]
    got = torch.autograd.grad(out, [x] + params, g, allow_unused=True)
    exp = torch.autograd.grad(want, [x2] + params, g, allow_unused=True)
    for a, e in zip(got, exp):
        if e is None:
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, e, rtol=0, atol=atol)
    torch.testing.assert_close(m.to_conv()(x2), want, rtol=0, atol=atol)


@st.composite
def conv_configs(draw, max_ndim=2):
    ndim = draw(st.integers(1, max_ndim))
    groups = draw(st.sampled_from(["dw", 1, 2]))
    cin = draw(st.sampled_from([2, 4]))
    cout, g = (cin, cin) if groups == "dw" else (draw(st.sampled_from([2, 4])), groups)
    stride = draw(st.integers(1, 2))
    padding = draw(st.sampled_from([0, 1, 3, "same", "valid"]))
    if padding == "same":
        stride = 1
    return dict(ndim=ndim, cin=cin, cout=cout, groups=g, stride=stride, padding=padding,
                padding_mode=draw(st.sampled_from(["zeros", "zeros", "reflect", "circular", "replicate"])),
                bias=draw(st.booleans()))


def _input(c, size=13):
    return torch.randn(2, c["cin"], *([size] * c["ndim"]), dtype=torch.float64)


@given(c=conv_configs(max_ndim=3), K=st.integers(1, 12), L=st.integers(1, 9), interp=st.sampled_from(["bilinear", "gaussian"]),
       engine=st.sampled_from(["auto", "dense", "taps"]))
def test_dcls_matches_oracle(c, K, L, interp, engine):
    m = dc.DclsConv1d if c["ndim"] == 1 else dc.DclsConv2d if c["ndim"] == 2 else dc.DclsConv3d
    mod = m(c["cin"], c["cout"], K, L, stride=c["stride"], padding=c["padding"], groups=c["groups"], bias=c["bias"],
            padding_mode=c["padding_mode"], interpolation=interp, engine=engine, dtype=torch.float64)
    size = 13 if c["ndim"] < 3 else 7
    if c["padding_mode"] != "zeros" and isinstance(c["padding"], int) and c["padding"] >= size:
        return
    check_oracle(mod, _input(c, size))


@given(c=conv_configs(), k=st.integers(1, 4), s=st.integers(2, 3), fade=st.booleans())
def test_bloom_matches_oracle(c, k, s, fade):
    m = dc.BloomConv1d if c["ndim"] == 1 else dc.BloomConv2d
    mod = m(c["cin"], c["cout"], k, factor=s, fade=fade, stride=c["stride"], padding=c["padding"], groups=c["groups"],
            bias=c["bias"], padding_mode=c["padding_mode"], dtype=torch.float64)
    if mod.window[0] > 13 + 2 * (0 if isinstance(c["padding"], str) else c["padding"]):
        return
    check_oracle(mod, _input(c, 15))


@given(c=conv_configs(), m_=st.sampled_from([1, 3, 5]), n=st.integers(0, 3), r=st.integers(1, 3))
def test_partial_matches_oracle(c, m_, n, r):
    m = dc.PartialDilatedConv1d if c["ndim"] == 1 else dc.PartialDilatedConv2d
    mod = m(c["cin"], c["cout"], m_, n, r, stride=c["stride"], padding=c["padding"], groups=c["groups"],
            bias=c["bias"], padding_mode=c["padding_mode"], dtype=torch.float64)
    if mod.window[0] > 14:
        return
    check_oracle(mod, _input(c, 15))


def test_bloom_kernels_match_the_forum_recipe():
    v = torch.arange(1.0, 10.0, dtype=torch.float64).reshape(1, 1, 3, 3)
    big = bloom_kernel(v, 2, True)
    assert big.shape[-2:] == (7, 7)
    # the forum post: conv_transpose2d with [[.25,.5,.25],[.5,1,.5],[.25,.5,.25]], stride 2
    tent = torch.tensor([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]], dtype=torch.float64)
    torch.testing.assert_close(big, F.conv_transpose2d(v, tent[None, None], stride=2))
    small = bloom_kernel(v, 2, False)
    assert small.shape[-2:] == (5, 5)
    torch.testing.assert_close(small, big[..., 1:6, 1:6])
    assert small[0, 0, 0, 0] == 1 and small[0, 0, 0, 1] == 1.5 and small[0, 0, 2, 2] == 5


def test_partial_pattern_of_the_forum_thread():
    m = dc.PartialDilatedConv1d(4, 4, island=5, wing_taps=4, wing_spacing=2, groups=4)
    assert m.pattern() == "101010101111101010101"
    with torch.no_grad():
        m.island_weight.fill_(1.0)
        m.wing_weight.fill_(1.0)
    assert "".join(str(int(v)) for v in (m.dense_kernel()[0, 0] != 0).tolist()) == "101010101111101010101"
    assert m.kernel_count == 13 and m.island_weight.shape == (4, 1, 5) and m.wing_weight.shape == (4, 1, 8)


SOURCES = [
    lambda: nn.Conv2d(6, 6, 7, padding=3, groups=6),
    lambda: nn.Conv2d(6, 8, 3, padding=1),
    lambda: nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=6),
    lambda: nn.Conv2d(6, 6, 5, stride=2, padding=1, groups=3),
    lambda: nn.Conv2d(6, 6, (3, 5), padding=(1, 2), groups=6),
    lambda: nn.Conv2d(6, 6, 3, padding="same", padding_mode="reflect", groups=6),
    lambda: nn.Conv1d(6, 6, 5, padding=2, groups=6),
    lambda: nn.Conv1d(6, 4, 3, padding="valid"),
]


@pytest.mark.parametrize("make", SOURCES)
@pytest.mark.parametrize("cls", ["dcls", "partial"])
def test_from_conv_is_exact(make, cls):
    conv = make()
    ndim = conv.weight.dim() - 2
    klass = {"dcls": {1: dc.DclsConv1d, 2: dc.DclsConv2d}, "partial": {1: dc.PartialDilatedConv1d, 2: dc.PartialDilatedConv2d}}[cls][ndim]
    m = klass.from_conv(conv)
    x = torch.randn(2, conv.in_channels, *([16] * ndim))
    want = conv(x)
    got = m(x)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    assert m.init_error == pytest.approx(0.0, abs=1e-7)
    assert all(L >= k for L, k in zip(m.receptive_field, conv.kernel_size))


def test_from_conv_3d_dcls_and_keeps_device_dtype():
    conv = nn.Conv3d(4, 4, 3, padding=1, groups=4).double()
    m = dc.DclsConv3d.from_conv(conv)
    assert m.weight.dtype == torch.float64 and m.window == (9, 9, 9)
    x = torch.randn(1, 4, 6, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(m(x), conv(x), rtol=0, atol=1e-12)


def test_dcls_default_window_and_padding():
    m = dc.DclsConv2d.from_conv(nn.Conv2d(8, 8, 7, padding=3, groups=8))
    assert m.window == (17, 17) and m.padding == (8, 8) and m.kernel_count == 49


def test_dcls_fewer_taps_keeps_largest_and_reports_error():
    conv = nn.Conv2d(3, 3, 3, padding=1, groups=3).double()
    m = dc.DclsConv2d.from_conv(conv, kernel_count=4)
    w = conv.weight.detach().flatten(2)
    top = w.abs().topk(4, dim=-1).values.sort(dim=-1).values
    assert torch.equal(m.weight.detach().abs().sort(dim=-1).values, top)
    kept = torch.zeros_like(w).scatter(-1, w.abs().topk(4, -1).indices, w.gather(-1, w.abs().topk(4, -1).indices))
    expected = float((w - kept).norm() / w.norm())
    assert m.init_error == pytest.approx(expected, rel=1e-9)


def test_dcls_more_taps_start_at_zero_weight():
    conv = nn.Conv2d(2, 2, 3, padding=1, groups=2)
    m = dc.DclsConv2d.from_conv(conv, kernel_count=12)
    assert torch.all(m.weight[..., 9:] == 0) and m.init_error == pytest.approx(0.0, abs=1e-7)


def test_dcls_gaussian_start_is_close():
    conv = nn.Conv2d(4, 4, 5, padding=2, groups=4)
    m = dc.DclsConv2d.from_conv(conv, interpolation="gaussian")
    assert 0 < m.init_error < 0.05


def _bloom_full_operator(k, L, s, fade, big):
    A = torch.zeros(big, k, dtype=torch.float64)
    off = (big - L) // 2
    A[off: off + L] = bloom_matrix(k, s, fade)
    return A


@pytest.mark.parametrize("ksize,s,fade,keep", [(3, 2, True, "kernel"), (3, 2, False, "kernel"), (5, 3, True, "kernel"),
                                               (7, 2, True, "size"), (5, 2, False, "size")])
def test_bloom_least_squares_is_optimal(ksize, s, fade, keep):
    conv = nn.Conv2d(2, 3, ksize, padding=ksize // 2).double()
    m = dc.BloomConv2d.from_conv(conv, factor=s, fade=fade, keep=keep)
    k, L = m.kernel_size[0], m.window[0]
    big = max(L, ksize)
    A = _bloom_full_operator(k, L, s, fade, big)
    full = torch.kron(A, A)  # operator of the vectorised kernel
    target = torch.zeros(3, 2, big, big, dtype=torch.float64)
    o = (big - ksize) // 2
    target[..., o:o + ksize, o:o + ksize] = conv.weight.detach()
    sol = torch.linalg.lstsq(full, target.reshape(6, -1).T).solution.T
    resid = (full @ sol.T).T - target.reshape(6, -1)
    expected = float(resid.norm() / target.norm())
    assert m.init_error == pytest.approx(expected, rel=1e-6, abs=1e-9)
    x = torch.randn(1, 2, 12, 12, dtype=torch.float64)
    assert m(x).shape == conv(x).shape


def test_bloom_of_a_bloomed_kernel_is_exact():
    src = dc.BloomConv2d(3, 3, 3, factor=2, dtype=torch.float64)
    conv = src.to_conv()
    m = dc.BloomConv2d.from_conv(conv, keep="size")
    assert m.init_error < 1e-10
    x = torch.randn(1, 3, 10, 10, dtype=torch.float64)
    torch.testing.assert_close(m(x), conv(x))


def test_bloom_blur_path_equals_dense_path():
    m = dc.BloomConv2d(8, 16, 3, factor=2, padding=3, stride=2, dtype=torch.float64)
    assert m.uses_blur_path()
    x = torch.randn(2, 8, 17, 17, dtype=torch.float64)
    torch.testing.assert_close(m(x), oracle(m, x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("engine", ["auto", "dense"])
def test_bloom_keeps_one_blurred_input_no_larger_than_the_tent_spreads_it(engine):
    """A depthwise bloom (7 -> 15, the blur + dilated identity) saves for its backward one activation, the blurred
    input, spanning H + 2(s - 1) pixels per axis (the tent spreads the input by s - 1 each side; beyond that the
    padding stays zero, and the dilated conv pads it without storing it); the fixed blur keeps nothing. It used to
    keep the input too, and a blurred input of H + 2P - 2(s - 1) = 19 pixels per axis at 7x7 (ConvNeXt-T stage 4),
    where the dense conv keeps the input alone."""
    from test_taps_conv import saved_bytes

    conv = nn.Conv2d(8, 8, 7, padding=3, groups=8)
    m = dc.BloomConv2d.from_conv(conv, factor=2, engine=engine)
    assert m.engine_name() == ("taps(blur+dilated)" if engine == "auto" and ops.compiled_for("taps_conv", "cpu")
                               else "blur+dilated" if engine == "dense" else m.engine_name())
    x = torch.randn(2, 8, 7, 7, requires_grad=True)
    y, saved = saved_bytes(lambda: m(x))
    params = sum(t.numel() * t.element_size() for t in (m.weight, m.bias))
    blurred = 2 * 8 * 9 * 9 * 4
    assert blurred <= saved - params <= blurred + 4096  # + the fixed taps and their positions (or the tent)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, m.weight, m.bias], g)
    X, W, B = (t.detach().double().requires_grad_() for t in (x, m.weight, m.bias))
    want = torch.autograd.grad(F.conv2d(X, bloom_kernel(W, [2, 2], True), B, padding=m._pads()[0][0], groups=8),
                               [X, W, B], g.double())
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


def test_bloom_blur_on_torch_conv_with_dilated_taps(monkeypatch):
    """The mixed depthwise bloom (bloom.CONV_BLUR_DEVICES: the fixed blur on PyTorch's convolution, the dilated taps
    on the tap engine) equals the bloomed kernel's convolution, gradients included, and keeps one blurred input."""
    from dcls_convert.methods import bloom
    from test_taps_conv import saved_bytes

    monkeypatch.setattr(bloom, "CONV_BLUR_DEVICES", {"cpu"})
    m = dc.BloomConv2d.from_conv(nn.Conv2d(6, 6, 7, padding=3, groups=6, dtype=torch.float64), factor=2)
    x = torch.randn(2, 6, 9, 11, dtype=torch.float64, requires_grad=True)
    y, saved = saved_bytes(lambda: m(x))
    assert saved < 2 * 6 * 11 * 13 * 8 + 4096  # the blurred input, the taps, the tent
    torch.testing.assert_close(y, oracle(m, x), rtol=0, atol=1e-12)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, m.weight], g)
    want = torch.autograd.grad(oracle(m, x), [x, m.weight], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


def test_bloom_blur_path_trains_under_autocast():
    """The dense path's fixed blur under autocast: its forward runs in bfloat16, its backward too."""
    m = dc.BloomConv2d(8, 16, 3, factor=2, padding=3, engine="dense")
    assert m.engine_name() == "blur+dilated"
    x = torch.randn(2, 8, 17, 17, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    y.float().sum().backward()
    X = x.detach().requires_grad_()
    m.weight.grad, wg = None, m.weight.grad
    m(X).sum().backward()
    torch.testing.assert_close(x.grad, X.grad, rtol=0.05, atol=0.05)
    torch.testing.assert_close(wg, m.weight.grad, rtol=0.05, atol=0.5)


@pytest.mark.parametrize("make,match", [
    (lambda: dc.DclsConv2d(4, 4, 0, 7), "kernel_count"),
    (lambda: dc.DclsConv2d(4, 4, 3, 7, sigma_min=0, interpolation="gaussian"), "sigma_min"),
    (lambda: dc.DclsConv2d(4, 4, 3, 7, interpolation="cubic"), "interpolation"),
    (lambda: dc.DclsConv2d(4, 6, 3, 7, groups=4), "groups"),
    (lambda: dc.DclsConv2d(4, 4, 3, 7, padding="full"), "padding"),
    (lambda: dc.DclsConv2d(4, 4, 3, 7, padding_mode="mirror"), "padding_mode"),
    (lambda: dc.BloomConv2d(4, 4, 3, factor=1), "factor"),
    (lambda: dc.PartialDilatedConv1d(4, 4, 4, 2, 2), "island"),
    (lambda: dc.PartialDilatedConv1d(4, 4, 5, 2, 0), "wing_spacing"),
    (lambda: dc.DclsConv2d.from_conv(nn.Conv2d(4, 4, 7, padding=3), window=5), "window"),
    (lambda: dc.DclsConv2d.from_conv(nn.ConvTranspose2d(4, 4, 3)), "transposed"),
    (lambda: dc.DclsConv2d.from_conv(nn.Conv2d(4, 4, 3), kernel_count=-1), "kernel_count"),
    (lambda: dc.DclsConv2d.from_conv(nn.Conv1d(4, 4, 3)), "1-D"),
    (lambda: dc.PartialDilatedConv2d.from_conv(nn.Conv2d(4, 4, 5), island=3), "island"),
    (lambda: dc.DclsConv2d(4, 4, 3, 7, stride=2, padding="same"), "same"),
])
def test_bad_configuration_names_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_from_conv_rejects_non_finite_weights():
    conv = nn.Conv2d(2, 2, 3)
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        dc.DclsConv2d.from_conv(conv)


def test_bad_input_errors_name_the_module():
    m = dc.DclsConv2d(4, 4, 3, 7, groups=4)
    with pytest.raises(ValueError, match="DclsConv2d: expected a 4-D input"):
        m(torch.randn(4, 10, 10))
    with pytest.raises(ValueError, match="DclsConv2d: expected 4 input channels, got 3"):
        m(torch.randn(1, 3, 10, 10))
    with torch.no_grad():
        m.positions[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="positions"):
        m(torch.randn(1, 4, 10, 10))


def test_extra_repr_and_receptive_field():
    m = dc.DclsConv2d(8, 8, 34, 17, padding=8, groups=8)
    r = repr(m)
    assert "kernel_count=34" in r and "window=(17, 17)" in r and "groups=8" in r and "stride" not in r
    assert m.receptive_field == (17, 17)
    assert "factor=2" in repr(dc.BloomConv2d(3, 3, 3))
    assert "island=(5,)" in repr(dc.PartialDilatedConv1d(3, 3, 5, 4, 2))


def test_dilate_kernel_matches_dilated_conv_any_ndim():
    for ndim, conv_fn in ((1, F.conv1d), (2, F.conv2d), (3, F.conv3d)):
        w = torch.randn(3, 2, *([3] * ndim), dtype=torch.float64)
        x = torch.randn(1, 2, *([11] * ndim), dtype=torch.float64)
        big = dc.dilate_kernel(w, 3)
        assert big.shape[2:] == (7,) * ndim
        torch.testing.assert_close(conv_fn(x, big), conv_fn(x, w, dilation=3))
        torch.testing.assert_close(dc.undilate_kernel(big, 3), w)


def test_reset_parameters_keeps_positions_in_window():
    m = dc.DclsConv2d(4, 4, 50, (9, 5), groups=4)
    assert m.positions[0].min() >= -4 and m.positions[0].max() <= 4
    assert m.positions[1].min() >= -2 and m.positions[1].max() <= 2
    bound = 1 / math.sqrt(1 * 50)  # kaiming_uniform(a=sqrt(5)) over the K taps, as nn.ConvNd over its k taps
    assert m.weight.abs().max() <= bound + 1e-7


def test_learn_axes_freezes_positions_on_fixed_axes():
    m = dc.DclsConv2d(4, 4, 6, (1, 21), groups=4, learn_axes=(False, True), dtype=torch.float64)
    assert torch.equal(m.positions[0], m.positions[0].round())
    x = torch.randn(2, 4, 5, 30, dtype=torch.float64)
    check_oracle(m, x)
    m(x).square().sum().backward()
    assert not m.positions.grad[0].any() and m.positions.grad[1].any()
    assert "learn_axes=(False, True)" in repr(m)


def test_dtype_mismatch_names_the_module():
    m = dc.DclsConv2d(4, 4, 3, 7, groups=4)
    with pytest.raises(TypeError, match="DclsConv2d: input dtype torch.float64 does not match"):
        m(torch.randn(1, 4, 10, 10, dtype=torch.float64))


def test_huge_dense_kernel_is_refused_before_allocating():
    with pytest.raises(MemoryError, match="DclsConv2d: a \\(1001, 1001\\) window"):
        dc.DclsConv2d(2048, 2048, 9, 1001, device="meta")
    dc.DclsConv2d(2048, 2048, 9, 1001, groups=2048, device="meta")  # depthwise: the tap engine needs no dense kernel


@pytest.mark.parametrize("ndim,k,factor,padding,stride,mode", [
    (2, 7, 2, 7, 1, "zeros"), (2, 3, 3, "same", 1, "zeros"), (2, 3, 2, 1, 2, "zeros"), (1, 5, 2, 5, 1, "zeros"),
    (2, 3, 2, 3, 1, "reflect"), (1, 3, 2, 0, 1, "zeros")])
def test_depthwise_bloom_blur_identity_matches_the_dense_kernel(ndim, k, factor, padding, stride, mode):
    """Depthwise bloom with the fade runs as a fixed tent blur then the compact kernel dilated by the factor
    (both on the tap engine): equal to the convolution with the bloomed kernel, gradients included."""
    from dcls_convert.methods.bloom import BloomConv1d, BloomConv2d
    from dcls_convert.padding import pad_input

    if not dc.ops.compiled_for("taps_conv", "cpu"):
        pytest.skip("compiled library not built")
    cls, conv = (BloomConv2d, F.conv2d) if ndim == 2 else (BloomConv1d, F.conv1d)
    m = cls(5, 5, k, factor=factor, fade=True, padding=padding, stride=stride, groups=5, padding_mode=mode).double()
    assert m.engine_name() == "taps(blur+dilated)"
    x = torch.randn(2, 5, *([17] * ndim), dtype=torch.float64, requires_grad=True)
    y = m(x)
    xp, sym = pad_input(x, m._pads(), m.padding_mode)
    want = conv(xp, m.dense_kernel(), m.bias, m.stride, sym, 1, m.groups)
    torch.testing.assert_close(y, want, rtol=0, atol=1e-12)
    g = torch.randn_like(want)
    for a, e in zip(torch.autograd.grad(y, (x, m.weight, m.bias), g), torch.autograd.grad(want, (x, m.weight, m.bias), g)):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-11)


def test_bloom_blur_constants_are_cached_safely():
    """The blur path's fixed taps are built once per (device, dtype): not in the state_dict, not frozen into an
    inference tensor (a forward under inference_mode, then a training step), rebuilt after a dtype change."""
    from dcls_convert.padding import pad_input

    if not dc.ops.compiled_for("taps_conv", "cpu"):
        pytest.skip("compiled library not built")
    m = dc.BloomConv2d(4, 4, 3, factor=2, padding=3, groups=4)
    with torch.inference_mode():
        m(torch.randn(1, 4, 9, 9))
    m(torch.randn(1, 4, 9, 9, requires_grad=True)).sum().backward()  # inference tensors would fail here
    assert set(m.state_dict()) == {"weight", "bias"}
    m.double()
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    xp, sym = pad_input(x, m._pads(), m.padding_mode)
    torch.testing.assert_close(m(x), F.conv2d(xp, m.dense_kernel(), m.bias, 1, sym, 1, 4), rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["bloom", "partial"])
def test_bloom_and_partial_engines_agree(method, tmp_path):
    """engine="taps" / "dense" / "auto" give the same layer (outputs and gradients), the choice survives
    save/load and shows in the repr; a bad engine is refused by name."""
    conv = nn.Conv2d(6, 6, 5, padding=2, groups=6, dtype=torch.float64)
    x = torch.randn(2, 6, 15, 15, dtype=torch.float64)
    outs = {}
    for engine in ("taps", "dense", "auto"):
        model = nn.Sequential(conv)
        converted, _ = dc.convert(model, method, engine=engine)
        layer = converted[0]
        with torch.no_grad():  # the same nonzero parameters everywhere (the partial start has zero wings)
            for i, p in enumerate(layer.parameters()):
                p.copy_(torch.linspace(-1, 1, p.numel(), dtype=torch.float64).reshape(p.shape) * (i + 1))
        xg = x.clone().requires_grad_()
        y = layer(xg)
        y.backward(torch.ones_like(y))
        outs[engine] = (y.detach(), xg.grad, [p.grad for p in layer.parameters()])
        assert (engine != "auto") == (f"engine={engine!r}" in repr(layer))
        if engine == "dense":
            dc.save(converted, str(tmp_path / engine))
            assert dc.load(str(tmp_path / engine), nn.Sequential(conv))[0].engine == "dense"
    for engine in ("dense", "auto"):
        torch.testing.assert_close(outs[engine][0], outs["taps"][0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(outs[engine][1], outs["taps"][1], rtol=1e-10, atol=1e-10)
        for a, b in zip(outs[engine][2], outs["taps"][2]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="engine must be one of"):
        dc.convert(nn.Sequential(conv), method, engine="cudnn")


@pytest.mark.parametrize("k,padding", [(2, 0), (4, 1), (4, "same"), (6, 0)])
def test_even_kernels_convert(k, padding):
    """Even kernels: dcls picks a default window of the kernel's parity (exact start, same output shape); bloom
    needs an odd factor unless the source pads 'same', and says so."""
    conv = nn.Conv2d(4, 4, k, padding=padding)
    x = torch.randn(2, 4, 13, 13)
    m = dc.DclsConv2d.from_conv(conv)
    assert (m.window[0] - k) % 2 == 0 and m.init_error == 0
    torch.testing.assert_close(m(x), conv(x), rtol=1e-5, atol=1e-5)
    b = dc.BloomConv2d.from_conv(conv, factor=3)
    assert b(x).shape == conv(x).shape
    if padding != "same":
        with pytest.raises(ValueError, match="odd factor"):
            dc.BloomConv2d.from_conv(conv, factor=2)


@pytest.mark.parametrize("K", [49, 20, 5])
def test_init_error_without_the_dense_kernel(monkeypatch, K):
    """When the dense kernel would be too large to build (a depthwise layer with a huge window), the bilinear
    init error comes from the dropped taps alone and equals the dense computation."""
    import dcls_convert.methods.dcls as dcls_module

    conv = nn.Conv2d(8, 8, 7, padding=3, groups=8)
    dense = dc.DclsConv2d.from_conv(conv, kernel_count=K).init_error
    monkeypatch.setattr(dcls_module, "MAX_DENSE_KERNEL_BYTES", 10)
    sparse = dc.DclsConv2d.from_conv(conv, kernel_count=K).init_error
    assert sparse == pytest.approx(dense, abs=1e-12)


@pytest.mark.parametrize("groups", [4, 1])
def test_factorised_kernels_stay_factorised(groups):
    """A (7, 1) kernel: bloom spreads only the axis with taps ((15, 1), not (15, 3)); dcls keeps a window of 1 on
    the other axis and its positions there get no gradient (they cannot change the kernel). Outputs keep the
    source's shape and match the dense oracle."""
    from dcls_convert.padding import pad_input

    conv = nn.Conv2d(4, 4, (7, 1), padding=(3, 0), groups=groups)
    x = torch.randn(2, 4, 12, 9)
    b = dc.BloomConv2d.from_conv(conv)
    assert b.window == (15, 1) and b.factors == (2, 1)
    xp, sym = pad_input(x, b._pads(), b.padding_mode)
    torch.testing.assert_close(b(x), F.conv2d(xp, b.dense_kernel(), b.bias, b.stride, sym, 1, b.groups),
                               rtol=1e-5, atol=1e-5)
    d = dc.DclsConv2d.from_conv(conv)
    assert d.window == (17, 1) and d.init_error == 0
    torch.testing.assert_close(d(x), conv(x), rtol=1e-5, atol=1e-5)
    d(x).square().sum().backward()
    assert not d.positions.grad[1].any() and d.positions.grad[0].abs().sum() > 0


def test_bloom_data_aware_start_fits_the_outputs():
    """With example inputs, bloom's start minimises the output error on them (not the kernel error): exact when
    the source kernel is itself a bloom, better than the kernel-space fit on held-out inputs of the same kind, and
    init_error is the relative output error on the inputs it saw."""
    torch.manual_seed(0)

    def inputs(n):  # spatially correlated, like activations of a trained network
        return F.avg_pool2d(torch.randn(n, 6, 20, 20, dtype=torch.float64), 3, 1, 1) * 3

    x, held_out = inputs(32), inputs(32)
    for groups in (6, 2):
        conv = nn.Conv2d(6, 6, 5, padding=2, groups=groups).double()
        kernel_fit = dc.BloomConv2d.from_conv(conv)
        output_fit = dc.BloomConv2d.from_conv(conv, inputs=x)
        with torch.no_grad():
            ref, ref_seen = conv(held_out), conv(x)
            err = lambda m, inp, r: float((m(inp) - r).norm() / r.norm())  # noqa: E731
            assert err(output_fit, held_out, ref) < err(kernel_fit, held_out, ref)
            assert output_fit.init_error == pytest.approx(err(output_fit, x, ref_seen), rel=0.05)
        # a source that a bloom represents exactly is recovered exactly
        bloomed = dc.BloomConv2d(6, 6, 3, factor=2, padding=3, groups=groups).double()
        source = bloomed.to_conv()
        back = dc.BloomConv2d.from_conv(source, inputs=x, keep="size")
        assert back.init_error < 1e-6
        torch.testing.assert_close(back.weight, bloomed.weight, rtol=1e-5, atol=1e-6)


def test_convert_passes_example_inputs_to_bloom():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 5, padding=2, groups=6))
    x = torch.randn(8, 3, 16, 16)
    _, blind = dc.convert(model, "bloom", rules=dc.TargetRules(min_kernel=3))
    _, aware = dc.convert(model, "bloom", rules=dc.TargetRules(min_kernel=3), example_inputs=x)
    assert [r.init_error for r in aware.converted] != [r.init_error for r in blind.converted]
    assert all(a < b for a, b in zip([r.init_error for r in aware.converted], [r.init_error for r in blind.converted]))


@pytest.mark.parametrize("K", [16, 34])
def test_dcls_fewer_taps_refit_to_inputs(K):
    """DCLS with K < k*k and example inputs: the taps sit on source cells (chosen by their effect on the outputs)
    with weights minimising the output error on the inputs, which beats the largest source taps on held-out
    inputs of the same kind."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, 7, padding=3, groups=6).double()

    def inputs(n):
        return F.avg_pool2d(torch.randn(n, 6, 20, 20, dtype=torch.float64), 3, 1, 1) * 3

    x, held_out = inputs(32), inputs(32)
    plain = dc.DclsConv2d.from_conv(conv, kernel_count=K)
    refit = dc.DclsConv2d.from_conv(conv, kernel_count=K, inputs=x)
    pos = refit.positions.detach()
    assert torch.equal(pos, pos.round()) and pos.abs().max() <= 3  # on the 7x7 source cells
    with torch.no_grad():
        ref = conv(held_out)
        err = lambda m: float((m(held_out) - ref).norm() / ref.norm())  # noqa: E731
        assert err(refit) < 0.8 * err(plain)
        assert refit.init_error == pytest.approx(float((refit(x) - conv(x)).norm() / conv(x).norm()), rel=0.05)


def test_partial_buffers_follow_the_device():
    m = dc.PartialDilatedConv2d(4, 4, 3, 1, 2, groups=4, device="meta")
    assert m.tap_offsets.device.type == "meta" and m.island_weight.device.type == "meta"


@pytest.mark.parametrize("method", ["dcls", "partial", "bloom"])
def test_float16_on_cpu(method):
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    model = nn.Sequential(conv).half()
    out, _ = dc.convert(model, method)
    x = torch.randn(1, 4, 12, 12)
    got = out(x.half())
    want = conv.float()(x)
    assert got.dtype == torch.float16
    if method != "bloom":
        assert (got.float() - want).abs().max() < 1e-2


def test_half_cast_keeps_positions_float32():
    m = dc.DclsConv2d(4, 4, 5, 9, groups=4).half()
    assert m.weight.dtype == torch.float16 and m.positions.dtype == torch.float32
    m2 = dc.DclsConv2d(4, 4, 5, 9, groups=4).to(torch.bfloat16)
    assert m2.positions.dtype == torch.float32 and m2(torch.randn(1, 4, 10, 10, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert dc.DclsConv2d(4, 4, 5, 9, groups=4).double().positions.dtype == torch.float64


def test_bloom_same_padding_even_window_is_aligned():
    src = dc.BloomConv1d(2, 2, 2, factor=3, dtype=torch.float64)  # window 3 * (2 + 1) - 1 = 8 (even)
    conv = nn.Conv1d(2, 2, 8, padding="same", dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(src.dense_kernel())
    m = dc.BloomConv1d.from_conv(conv, factor=3, keep="size")
    x = torch.randn(2, 2, 20, dtype=torch.float64)
    assert m.init_error < 1e-10
    torch.testing.assert_close(m(x), conv(x))


@pytest.mark.parametrize("sigma_min", [0.02, 0.005])
def test_narrow_gaussian_has_no_nan(sigma_min):
    w = torch.ones(1, 1, 1, dtype=torch.float64)
    p = torch.full((1, 1, 1, 1), 0.5, dtype=torch.float64)
    s = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    for k in (ops.construct(w, p, s, [5], "gaussian", sigma_min), reference.construct(w, p, s, [5], "gaussian", sigma_min)):
        # a tap half-way between cells 2 and 3 (centre 2 + 0.5): all its mass on those two, equally
        assert torch.isfinite(k).all()
        torch.testing.assert_close(k.flatten(), torch.tensor([0, 0, 0.5, 0.5, 0], dtype=torch.float64), atol=1e-12, rtol=0)


def test_reflect_padding_on_a_small_input_names_the_module():
    m = dc.DclsConv2d.from_conv(nn.Conv2d(4, 4, 7, padding=3, padding_mode="reflect", groups=4))
    with pytest.raises(ValueError, match="DclsConv2d: reflect padding 8"):
        m(torch.randn(1, 4, 7, 7))


def test_kernel_longer_than_its_input_trains():
    """A (130, 1) window on a 95-row input with padding 33 (a widened (64, 1) conv in a late layer): PyTorch 2.14's
    CPU weight gradient hangs or crashes with implicit padding; the dense path pads explicitly. In a subprocess, so
    a regression fails on the timeout instead of hanging or killing the test run."""
    import subprocess
    import sys

    code = """
import torch, torch.nn.functional as F
import dcls_convert as dc
m = dc.DclsConv2d(16, 16, kernel_count=8, dilated_kernel_size=(130, 1), padding=(33, 0), engine="dense")
x = torch.randn(8, 16, 95, 1)
y = m(x)
y.square().sum().backward()
want = F.conv2d(F.pad(x, (0, 0, 33, 33)), m.dense_kernel(), m.bias)
assert torch.allclose(y, want, atol=1e-5) and m.positions.grad is not None and m.weight.grad.abs().sum() > 0
print("trained")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "trained" in r.stdout, r.stderr[-800:]


@pytest.mark.skipif(not ops.has_compiled_ops(), reason="compiled library not built")
def test_bloom_blur_tent_reaches_the_op_in_float32_for_16_bit_inputs(monkeypatch):
    """The compiled op takes float32 taps with 16-bit inputs, so bloom's fixed tent (inexact in 16 bits for
    factors 3 and 5) is not rounded: a pure bfloat16 layer passes it in float32, and the output stays close."""
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    layer = dc.BloomConv2d.from_conv(conv, factor=3)
    x = torch.randn(1, 4, 12, 12).bfloat16()
    want = layer.double()(x.double())
    seen = []
    real = ops.taps_conv

    def spy(inp, weight, *args, **kwargs):
        seen.append((inp.dtype, weight.dtype))
        return real(inp, weight, *args, **kwargs)
    monkeypatch.setattr(ops, "taps_conv", spy)
    got = layer.bfloat16()(x)
    assert seen == [(torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16)]  # the tent, then v
    assert (got.double() - want).abs().max() <= 0.02 * want.abs().max()
