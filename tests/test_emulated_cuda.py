"""The CUDA kernels' per-thread functions, driven on CPU over the whole launch grid, agree with the reference."""
import itertools
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dcls_convert.ops import reference
from emulation import emulation_ops
from helpers import grad_like, max_rel, random_taps, taps_cases, taps_inputs

E = emulation_ops()


@pytest.mark.parametrize("window, K", [([11, 9], 7), ([17], 34), ([9, 9], 400)])
def test_gaussian_construct_by_plane(window, K):
    """The CUDA gaussian forward's block algorithm (profiles in shared memory, more elements than threads), and
    the per-element gather it falls back to when the profiles exceed shared memory (K=400 on 9x9 in float64)."""
    w, p, s = random_taps(len(window), 3, 2, K, window, spread=1.4, sigma=True)
    torch.testing.assert_close(E.construct(w, p, s, window, "gaussian", 0.27),
                               reference.construct(w, p, s, window, "gaussian"), rtol=0, atol=1e-12)


@pytest.mark.parametrize("interp", ["bilinear", "gaussian", "nearest"])
@pytest.mark.parametrize("window", [[9], [6, 5], [3, 4, 5]])
@pytest.mark.parametrize("integer", [False, True])
def test_construct_threads(interp, window, integer):
    D = len(window)
    w, p, s = random_taps(D, 3, 2, 7, window, spread=1.4, sigma=interp == "gaussian")
    if integer:
        p = p.round()
    torch.testing.assert_close(E.construct(w, p, s, window, interp, 0.27),
                               reference.construct(w, p, s, window, interp), rtol=0, atol=1e-12)
    leaves = [w.clone().requires_grad_(), p.clone().requires_grad_()] + ([s.clone().requires_grad_()] if s is not None else [])
    out = reference.construct(leaves[0], leaves[1], leaves[2] if s is not None else None, window, interp)
    g = torch.randn_like(out)
    want = torch.autograd.grad(out, leaves, g, allow_unused=True)
    gw, gp, gs = E.construct_backward(g, w, p, s, window, interp, 0.27)
    torch.testing.assert_close(gw, want[0], rtol=0, atol=1e-11)
    torch.testing.assert_close(gp, want[1] if want[1] is not None else torch.zeros_like(p), rtol=0, atol=1e-11)
    if s is not None:
        torch.testing.assert_close(gs, want[2], rtol=0, atol=1e-11)


TAPS_CASES = [
    dict(size=[11, 12], window=[7, 6], stride=[1, 1], padding=[3, 2]),
    dict(size=[9, 10], window=[5, 5], stride=[2, 3], padding=[0, 5]),
    dict(size=[17], window=[9], stride=[2], padding=[4]),
    dict(size=[6, 7], window=[1, 3], stride=[1, 2], padding=[0, 1]),
    # tile shapes of the tiled engine: 32-wide tiles over two tile rows/columns, 16- and 8-wide planes
    # grouped in a block, one-row tiles (RY = 1), a 1-D sequence over several tiles, a window wider than the plane
    dict(size=[70, 40], window=[17, 17], stride=[1, 1], padding=[8, 8]),
    dict(size=[14, 14], window=[17, 17], stride=[1, 1], padding=[8, 8]),
    dict(size=[7, 7], window=[17, 17], stride=[1, 1], padding=[8, 8]),
    dict(size=[3, 40], window=[3, 9], stride=[1, 1], padding=[1, 4]),
    dict(size=[90], window=[31], stride=[1], padding=[15]),
    dict(size=[5, 6], window=[11, 13], stride=[1, 1], padding=[7, 9]),
    dict(size=[19, 21], window=[6, 4], stride=[3, 2], padding=[1, 3]),
    dict(size=[16, 9], window=[5, 3], stride=[1, 1], padding=[2, 1]),  # 16 rows: eight per thread
]


def _taps_case_inputs(case, layout, integer, C=3, K=5):
    D = len(case["window"])
    x = torch.randn(2, C, *case["size"], dtype=torch.float64)
    if layout == "channels_last" and D == 2:
        x = x.to(memory_format=torch.channels_last)
    w, p, _ = random_taps(D, C, 1, K, case["window"], spread=1.4)
    if integer:
        p = p.round()
    return x, w, p


@pytest.mark.parametrize("interp", ["bilinear", "nearest"])
@pytest.mark.parametrize("case", TAPS_CASES)
@pytest.mark.parametrize("layout,integer", [("contiguous", False), ("channels_last", True)])
def test_taps_threads(interp, case, layout, integer):
    """The tiled engine (and the gather kernels where it does not apply), block by block, against the oracle."""
    x, w, p = _taps_case_inputs(case, layout, integer, C=10 if layout == "channels_last" else 3)
    b = torch.randn(x.shape[1], dtype=torch.float64)
    args = (case["window"], case["stride"], case["padding"], interp)
    want = reference.taps_conv(x, w, p, b, *args)
    got = E.taps_conv(x, w, p, b, *args)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    if x.dim() == 4 and min(got.shape[1:]) > 1:
        assert got.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    leaves = [t.clone().requires_grad_() for t in (x, w, p, b)]
    out = reference.taps_conv(*leaves, *args)
    g = torch.randn_like(out)
    want_g = torch.autograd.grad(out, leaves, g, allow_unused=True)
    gx, gw, gp, gb = E.taps_conv_backward(g, x, w, p, *args, [True] * 4)
    torch.testing.assert_close(gx, want_g[0], rtol=0, atol=1e-11)
    torch.testing.assert_close(gw, want_g[1], rtol=0, atol=1e-11)
    torch.testing.assert_close(gp, want_g[2] if want_g[2] is not None else torch.zeros_like(p), rtol=0, atol=1e-11)
    torch.testing.assert_close(gb, want_g[3], rtol=0, atol=1e-11)


def _check_against_oracle(x, w, p, b, args):
    """The emulated output and all four gradients equal the float64 oracle's."""
    leaves = [t.clone().requires_grad_() for t in (x, w, p, b)]
    out = reference.taps_conv(*leaves, *args)
    torch.testing.assert_close(E.taps_conv(x, w, p, b, *args), out.detach(), rtol=0, atol=1e-12)
    g = torch.randn_like(out)
    for a, e in zip(E.taps_conv_backward(g, x, w, p, *args, [True] * 4), torch.autograd.grad(out, leaves, g)):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-11)


# fields of E.tile_config
OK, RY, TW, THREAD_ROWS, GROUPS, PLANES, THREADS, TILES_Y, TILES_X, IMAGES, TRANSPOSED, PITCH, PLANE_STRIDE = range(13)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiles_fit_convnext_stages(layout, dtype):
    """At every ConvNeXt-T stage shape (batch 64, window 17) the forward, the input gradient and the correlation
    compute no row past the plane (7 rows per thread where 8 would overrun: 28, 14 and 7 rows) and, where planes
    may straddle warps (the correlation; the forward of inputs not in channels_last, by image groups), no column
    either (56 -> 2 x 28, 14, 7); a warp never mixes two channels' tables, except at a batch smaller than a
    warp's planes."""
    for hw, C in [(56, 96), (28, 192), (14, 384), (7, 768)]:
        x = torch.empty(64, C, hw, hw, dtype=dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        w, p, _ = random_taps(2, C, 1, 34, [17, 17], spread=1.4, dtype=torch.float32)
        args = ([17, 17], [1, 1], [8, 8], "bilinear")
        for kind in range(3):
            t = E.tile_config(x, w, p, *args, kind)
            assert t[OK] and t[TILES_Y] * t[THREAD_ROWS] * t[RY] == hw, (hw, kind, t)
            assert t[THREADS] % 32 == 0
            per_plane = t[TW] * t[THREAD_ROWS]
            fitted = kind == 2 or layout == "contiguous"
            assert (t[TILES_X] * t[TW] == hw) if fitted else t[TW] in (8, 16, 32), (hw, kind, t)
            if layout == "channels_last" and kind < 2:  # channels staged together: no plane straddles warps
                assert per_plane % 32 == 0 or 32 % per_plane == 0, (hw, kind, t)
            if kind < 2 and per_plane % 32:  # the warp's planes: images of one channel
                assert t[IMAGES] in (32 // per_plane, t[GROUPS]) and t[GROUPS] % t[IMAGES] == 0, (hw, kind, t)
                assert t[IMAGES] * per_plane % 32 == 0 or t[IMAGES] == t[GROUPS], (hw, kind, t)
        one = E.tile_config(x[:1], w, p, *args, 0)  # one image: no image groups, no plane straddling warps
        assert one[IMAGES] == 1 and (one[TW] * one[THREAD_ROWS] % 32 == 0 or one[TW] in (8, 16, 32))


def test_first_tiles_switch(monkeypatch):
    """DCLS_CONVERT_CUDA_TILES=first brings back the first GPU sessions' tiles (8 rows, power-of-two widths, no
    image groups) for benchmarks to compare, still exact."""
    x = torch.randn(4, 3, 7, 7, dtype=torch.float64)
    w, p, _ = random_taps(2, 3, 1, 6, [5, 9], spread=1.4)
    args = ([5, 9], [1, 1], [2, 4], "bilinear")
    chosen = E.tile_config(x, w, p, *args, 0)
    assert chosen[RY] == 7 and chosen[IMAGES] > 1
    monkeypatch.setenv("DCLS_CONVERT_CUDA_TILES", "first")
    for kind in range(3):
        t = E.tile_config(x, w, p, *args, kind)
        assert t[RY] == 8 and t[TW] == 8 and t[IMAGES] == 1, (kind, t)
    torch.testing.assert_close(E.taps_conv(x, w, p, None, *args), reference.taps_conv(x, w, p, None, *args),
                               rtol=0, atol=1e-12)
    # an output sums its entries in one order whatever the tiles: forward and input gradient bitwise equal to the
    # chosen tiles' with the same (unpaired) tables
    xf, wf, pf = x.float(), w.float(), p.float()
    g = torch.randn(4, 3, 7, 7)
    first = [E.taps_conv(xf, wf, pf, None, *args), E.taps_conv_backward(g, xf, wf, pf, *args, [True] * 3 + [False])[0]]
    monkeypatch.setenv("DCLS_CONVERT_CUDA_TILES", "unpaired")
    chosen = [E.taps_conv(xf, wf, pf, None, *args), E.taps_conv_backward(g, xf, wf, pf, *args, [True] * 3 + [False])[0]]
    assert all(torch.equal(a, b) for a, b in zip(first, chosen))


def tiles_mode(monkeypatch, mode):
    """DCLS_CONVERT_CUDA_TILES=mode (an A/B arm of the GPU benchmark), or the default with None."""
    if mode:
        monkeypatch.setenv("DCLS_CONVERT_CUDA_TILES", mode)
    else:
        monkeypatch.delenv("DCLS_CONVERT_CUDA_TILES", raising=False)


@pytest.mark.parametrize("hw, fitted", [(28, 28), (14, 14), (56, 28), (20, 20)])
def test_fitted_tiles_for_channels_last_switch(monkeypatch, hw, fitted):
    """DCLS_CONVERT_CUDA_TILES=fitted-cl lets channels_last forwards and input gradients take fitted tile widths
    (the A/B arm against the power-of-two widths they keep by default): the widths change, no bit of the results."""
    x = torch.randn(8, 8, hw, hw).contiguous(memory_format=torch.channels_last)  # (fitted 14: 8 image groups)
    w, p, _ = random_taps(2, 8, 1, 6, [5, 9], spread=1.4, dtype=torch.float32)
    args = ([5, 9], [1, 1], [2, 4], "bilinear")
    g = torch.randn(8, 8, hw, hw)
    runs = {}
    for mode in ("fitted-cl", None):
        tiles_mode(monkeypatch, mode)
        widths = [E.tile_config(x, w, p, *args, kind)[TW] for kind in (0, 1)]  # forward, input gradient
        assert widths == ([fitted] * 2 if mode else [8 if hw <= 8 else 16 if hw <= 16 else 32] * 2), (mode, widths)
        runs[mode] = [E.taps_conv(x, w, p, None, *args), E.taps_conv_backward(g, x, w, p, *args, [True] + [False] * 3)[0]]
    assert all(torch.equal(a, b) for a, b in zip(runs["fitted-cl"], runs[None]))
    torch.testing.assert_close(runs[None][0].double(), reference.taps_conv(x.double(), w.double(), p.double(), None,
                                                                            *args), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("N, C, size, stride", [(3, 5, [12, 23], [1, 1]), (9, 2, [7, 7], [1, 1]),
                                                (2, 6, [15, 13], [2, 3]), (1, 3, [40], [1]),
                                                (2, 9, [40, 70], [1, 1]), (4, 3, [70, 20], [1, 1])])
def test_batched_staging_matches_one_load(monkeypatch, layout, N, C, size, stride):
    """Staging with several loads in flight per thread (a rectangle walked by constant steps) gives bitwise the
    results of one load at a time (DCLS_CONVERT_CUDA_TILES=one-load): every gradient, both layouts, partly filled
    image groups and correlation rounds, strided phases, 1-D, planes larger than a tile both ways."""
    x = torch.randn(N, C, *size)
    if layout == "channels_last" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    window = [5, 9][:len(size)]
    w, p, _ = random_taps(len(size), C, 1, 6, window, spread=1.4, dtype=torch.float32)
    b = torch.randn(C)
    args = (window, stride, [2, 4][:len(size)], "bilinear")
    y = E.taps_conv(x, w, p, b, *args)
    g = torch.randn_like(y)
    runs = {}
    for mode in ("one-load", None):
        tiles_mode(monkeypatch, mode)
        runs[mode] = [E.taps_conv(x, w, p, b, *args)] + list(E.taps_conv_backward(g, x, w, p, *args, [True] * 4))
    assert all(torch.equal(a, b) for a, b in zip(runs["one-load"], runs[None]))
    X, W, P, B = (t.double().requires_grad_() for t in (x, w, p, b))
    want = reference.taps_conv(X, W, P, B, *args)
    torch.testing.assert_close(runs[None][0].double(), want.detach(), rtol=1e-5, atol=1e-5)
    for got, exp in zip(runs[None][1:], torch.autograd.grad(want, (X, W, P, B), g.double())):
        torch.testing.assert_close(got.double(), exp, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size, stride", [([14, 14], [1, 1]), ([7, 7], [1, 1]), ([15, 13], [2, 3]), ([40, 9], [1, 1])])
@pytest.mark.parametrize("C", [3, 20])
def test_channels_last_outputs_stored_transposed(monkeypatch, size, stride, C):
    """A channels_last output (forward; input gradient of every stride phase) of a block holding several channels
    is kept in shared memory and written neighbouring channels together; bitwise the same as storing each output
    from its thread (DCLS_CONVERT_CUDA_TILES=direct), and equal to the oracle."""
    x = torch.randn(5, C, *size).contiguous(memory_format=torch.channels_last)
    w, p, _ = random_taps(2, C, 1, 6, [5, 3], spread=1.4, dtype=torch.float32)
    b = torch.randn(C)
    args = ([5, 3], stride, [2, 1], "bilinear")
    assert E.tile_config(x, w, p, *args, 0)[TRANSPOSED] and E.tile_config(x, w, p, *args, 1)[TRANSPOSED]
    assert not E.tile_config(x.contiguous(), w, p, *args, 0)[TRANSPOSED]
    y = E.taps_conv(x, w, p, b, *args)
    g = torch.randn_like(y)
    gx = E.taps_conv_backward(g, x, w, p, *args, [True, False, False, False])[0]
    X, W, P, B = (t.double().requires_grad_() for t in (x, w, p, b))
    want = reference.taps_conv(X, W, P, B, *args)
    torch.testing.assert_close(y.double(), want.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx.double(), torch.autograd.grad(want, X, g.double())[0], rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("DCLS_CONVERT_CUDA_TILES", "direct")
    assert not E.tile_config(x, w, p, *args, 0)[TRANSPOSED]
    assert torch.equal(E.taps_conv(x, w, p, b, *args), y)
    assert torch.equal(E.taps_conv_backward(g, x, w, p, *args, [True, False, False, False])[0], gx)


@pytest.mark.parametrize("N", [1, 2, 3, 8])
@pytest.mark.parametrize("size", [[20, 8], [17, 5], [40, 3], [9, 60], [30, 30]])
def test_tile_choice_never_falls_back(N, size):
    """Wherever the first tiles ran the tiled engine, the chosen ones do too (a plane of 8 x 3 threads straddles
    warps: with fewer images than groups it mixes channels, as before, rather than dropping to the gather kernel)."""
    x = torch.randn(N, 5, *size)
    w, p, _ = random_taps(2, 5, 1, 6, [7, 5], spread=1.4, dtype=torch.float32)
    args = ([7, 5], [1, 1], [3, 2], "bilinear")
    chosen = [E.tile_config(x, w, p, *args, kind) for kind in range(3)]
    assert all(t[OK] for t in chosen), chosen
    torch.testing.assert_close(E.taps_conv(x, w, p, None, *args), reference.taps_conv(x, w, p, None, *args),
                               rtol=1e-5, atol=1e-5)


# planes smaller than a warp (8- and 16-thread planes, a 1-D sequence); fitted widths whose planes straddle warps
# (20 x 20: 40-thread planes, four per block; 28 x 28: 112-thread planes, two per block)
@pytest.mark.parametrize("size, window", [([7, 7], [5, 9]), ([6, 12], [3, 5]), ([9], [7]), ([20, 20], [5, 5]),
                                          ([28, 28], [3, 7])])
@pytest.mark.parametrize("N, C", [(4, 3), (5, 10), (9, 2)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_forward_image_groups(size, window, N, C, layout):
    """Planes that do not fill whole warps: the forward and the input gradient stage several images of each
    channel (whole image groups, a partial last group, channel groups past C), against the oracle."""
    D = len(size)
    x = torch.randn(N, C, *size, dtype=torch.float64)
    if layout == "channels_last" and D == 2:
        x = x.contiguous(memory_format=torch.channels_last)
    w, p, _ = random_taps(D, C, 1, 6, window, spread=1.4)
    b = torch.randn(C, dtype=torch.float64)
    args = (window, [1] * D, [L // 2 for L in window], "bilinear")
    for kind in (0, 1):
        t = E.tile_config(x, w, p, *args, kind)
        straddling = t[TW] * t[THREAD_ROWS] % 32 != 0 and 32 % (t[TW] * t[THREAD_ROWS]) != 0
        if size[-1] in (20, 28) and x.is_contiguous() and N == 4:  # (at 5 and 9 images idle slots cost more)
            assert straddling and t[IMAGES] == t[GROUPS] > 1, t
        elif size[-1] not in (20, 28):
            assert t[IMAGES] > 1, t
    _check_against_oracle(x, w, p, b, args)


@pytest.mark.parametrize("case", TAPS_CASES[:1] + TAPS_CASES[4:6])
@pytest.mark.parametrize("integer", [False, True])
def test_taps_threads_weight_only(case, integer):
    """Positions frozen: the correlation skips corners of zero interpolation weight, the weight gradient is exact."""
    x, w, p = _taps_case_inputs(case, "contiguous", integer)
    args = (case["window"], case["stride"], case["padding"], "bilinear")
    wl = w.clone().requires_grad_()
    out = reference.taps_conv(x, wl, p, None, *args)
    g = torch.randn_like(out)
    (want,) = torch.autograd.grad(out, [wl], g)
    gx, gw, gp, gb = E.taps_conv_backward(g, x, w, p, *args, [False, True, False, False])
    torch.testing.assert_close(gw, want, rtol=0, atol=1e-11)
    assert gx.numel() == gp.numel() == gb.numel() == 0  # only what was asked


@pytest.mark.parametrize("window", [[9, 9], [95, 91]])  # the second has too many cells for the table's cell map
def test_taps_threads_merged_and_expanded_gradient(window):
    """Coincident taps (merged entries), zero-weight taps (dropped) and an expanded output gradient (stride 0)."""
    x = torch.randn(2, 4, 20, 23, dtype=torch.float64)
    w, p, _ = random_taps(2, 4, 1, 6, window, spread=0.3)
    p[:, :, :, 3] = p[:, :, :, 2]  # two taps at one position
    p[:, :, :, 4] = p[:, :, :, 2].round() + 0.5  # sharing a cell column with it
    w[:, :, 5] = 0                 # a zero-weight extra
    args = (window, [1, 1], [L // 2 for L in window], "bilinear")
    torch.testing.assert_close(E.taps_conv(x, w, p, None, *args),
                               reference.taps_conv(x, w, p, None, *args), rtol=0, atol=1e-12)
    leaves = [t.clone().requires_grad_() for t in (x, w, p)]
    out = reference.taps_conv(*leaves, None, *args)
    g = torch.randn((), dtype=torch.float64).expand(out.shape)
    want = torch.autograd.grad(out, leaves, g)
    for a, e in zip(E.taps_conv_backward(g, x, w, p, *args, [True, True, True, False]), want):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-11)


@pytest.mark.parametrize("mask", [m for m in itertools.product([False, True], repeat=4) if any(m)])
# all tiled (two tables in one launch) / strided: the input gradient's gather kernel, the corner table alone /
# more taps than the tiles hold: gather kernels and one block per tap, no tables
@pytest.mark.parametrize("stride, K", [(1, 4), (2, 4), (1, 1100)])
def test_taps_backward_masks(mask, stride, K):
    """Each mask gets what it asks and nothing else: one launch builds only the tables the tiled kernels use, the
    bias gradient comes from the correlation when it runs (else a reduction), unasked gradients are empty."""
    x = torch.randn(2, 3, 12, 10, dtype=torch.float64)
    w, p, _ = random_taps(2, 3, 1, K, [7, 7], spread=1.4)
    b = torch.randn(3, dtype=torch.float64)
    args = ([7, 7], [stride, stride], [3, 3], "bilinear")
    leaves = [t.clone().requires_grad_() for t in (x, w, p, b)]
    out = reference.taps_conv(*leaves, *args)
    g = torch.randn_like(out)
    want = torch.autograd.grad(out, leaves, g)
    got = E.taps_conv_backward(g, x, w, p, *args, list(mask))
    for asked, a, e in zip(mask, got, want):
        if asked:
            torch.testing.assert_close(a, e, rtol=0, atol=1e-11)
        else:
            assert a.numel() == 0


def test_taps_backward_without_outputs():
    """No images: every asked gradient is zero (no kernel writes them), shaped like its argument."""
    x = torch.randn(0, 3, 9, 9, dtype=torch.float64)
    w, p, _ = random_taps(2, 3, 1, 4, [7, 7], spread=1.4)
    g = torch.randn(0, 3, 9, 9, dtype=torch.float64)
    gx, gw, gp, gb = E.taps_conv_backward(g, x, w, p, [7, 7], [1, 1], [3, 3], "bilinear", [True] * 4)
    assert gx.shape == x.shape and gw.shape == w.shape and gp.shape == p.shape and gb.shape == (3,)
    assert not (gw.any() or gp.any() or gb.any())


# Leaf ATen ops that launch a device kernel (views, empty and dtype no-ops launch none).
KERNEL_OPS = {"aten::copy_", "aten::fill_", "aten::sum", "aten::add", "aten::add_", "aten::mul", "aten::clone"}


def _launches(fn):
    """(kernels of the engine, ATen kernels) the CUDA op would launch, as the emulation runs its host flow."""
    E.take_launches()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return E.take_launches(), sorted(e.name for e in prof.events() if e.name in KERNEL_OPS)


@pytest.mark.parametrize("dtype,channels_last", [(torch.float32, False), (torch.bfloat16, True)])
def test_cuda_flow_launch_budget(monkeypatch, dtype, channels_last):
    """A converted layer's host cost on a GPU is mostly its launches: the tiled forward makes 2 (table, forward),
    the full backward 4 (both tables in one, input gradient, correlation, finish with the bias) and no ATen
    kernels (no zero fills, no casts, no separate bias reduction), as AMP runs it: 16-bit activations, float32
    weight, bias and positions (kept as they are). At stride 2 the input gradient takes one launch per stride
    phase (4). A model whose parameters are 16-bit pays their conversion to float32 and back (the AMP path, with
    float32 parameters, is the one kept free of it). On tensor cores (16-bit) the same budget: window and
    convolution, then window, convolution, correlation and finish."""
    monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA", "none")  # the tables' flow (16-bit layers may take tensor cores)
    x = torch.randn(2, 16, 14, 14).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, p, _ = random_taps(2, 16, 1, 6, [9, 9], spread=1.4, dtype=torch.float32)
    b = torch.randn(16)
    args = ([9, 9], [1, 1], [4, 4], "bilinear")
    out = None

    def forward():
        nonlocal out
        out = E.taps_conv(x, w, p, b, *args)

    assert _launches(forward) == (2, [])
    g = torch.randn_like(out)
    assert _launches(lambda: E.taps_conv_backward(g, x, w, p, *args, [True] * 4)) == (4, [])
    # stride 2: the input gradient as four stride-1 phases (one launch each), still no ATen kernels
    out2 = E.taps_conv(x, w, p, b, args[0], [2, 2], *args[2:])
    g2 = torch.randn_like(out2)
    assert _launches(lambda: E.taps_conv_backward(g2, x, w, p, args[0], [2, 2], *args[2:], [True] * 4)) == (7, [])
    if dtype == torch.bfloat16:  # a pure bfloat16 model: weight and bias converted, gradients converted back
        wh, bh = w.to(dtype), b.to(dtype)
        assert _launches(lambda: E.taps_conv(x, wh, p, bh, *args)) == (2, ["aten::copy_"] * 2)
        n, aten = _launches(lambda: E.taps_conv_backward(g, x, wh, p, *args, [True] * 4))
        assert n == 4 and aten == ["aten::copy_"] * 3
    # frozen positions and weight, trainable bias: the mirrored table and the input gradient, a reduction for the bias
    n, aten = _launches(lambda: E.taps_conv_backward(g, x, w, p, *args, [True, False, False, True]))
    assert n == 2 and "aten::sum" in aten
    if dtype == torch.bfloat16:  # every part on tensor cores: the same counts, no ATen kernels
        monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA", "all")
        assert _launches(forward) == (2, [])
        assert _launches(lambda: E.taps_conv_backward(g, x, w, p, *args, [True] * 4)) == (4, [])


@pytest.mark.parametrize("size, window, stride, padding, row", [([1, 5], [1, 3], [3, 1], [1, 1], 0.0),
                                                             ([5, 5], [3, 3], [2, 1], [1, 1], 1.0)])
def test_non_finite_tap_on_the_last_window_row_stays_in_the_window(size, window, stride, padding, row):
    """A NaN weight on a tap on the window's last row (one row: its second lies outside the window) gave its
    entry a NaN second row (NaN * 0); where its own row was dead the entry moved down to row L, outside the window
    and the table build's cell map (found by review: a write past the map, run-to-run table counts). The tables
    now stay inside the window; the forward's NaNs are a dense convolution's, the input gradient's among them
    (its tables drop dead rows' weights, NaN or not)."""
    x = torch.randn(1, 1, *size, dtype=torch.float64)
    w = torch.full((1, 1, 1), float("nan"), dtype=torch.float64)
    p = torch.tensor([row, 0.0], dtype=torch.float64).view(2, 1, 1, 1)
    args = (window, stride, padding, "bilinear")
    counts = [[int(E.table_counts(x, w, p, *args, kind)[0]) for kind in range(3)] for _ in range(3)]
    assert counts[0] == counts[1] == counts[2]
    y = E.taps_conv(x, w, p, None, *args)
    g = torch.ones_like(y)
    gx = E.taps_conv_backward(g, x, w, p, *args, [True, False, False, False])[0]
    X = x.clone().requires_grad_()
    want = reference.taps_conv(X, w, p, None, *args)
    (want_gx,) = torch.autograd.grad(want, X, g)
    assert torch.equal(y.isnan(), want.isnan()) and not (gx.isnan() & ~want_gx.isnan()).any()


def test_tables_drop_offsets_that_never_meet_the_input():
    """At 7x7 under a 17x17 window (ConvNeXt-T stage 4) window rows/columns 0, 1, 15 and 16 only ever read the zero
    padding: every table kind drops their entries, and the results stay exact (the stage-shape cases above)."""
    x = torch.randn(1, 1, 7, 7, dtype=torch.float64)
    w = torch.ones(1, 1, 4, dtype=torch.float64)
    # window coordinates (centre 8): a live tap, one in a dead row, one in a dead column, one whose upper row is
    # dead but whose lower row lives (bilinear between rows 1 and 2)
    rows, cols = torch.tensor([8.0, 0.0, 8.0, 1.5]), torch.tensor([8.0, 8.0, 16.0, 8.0])
    p = (torch.stack([rows, cols]) - 8).view(2, 1, 1, 4)
    args = ([17, 17], [1, 1], [8, 8], "bilinear")
    # forward / mirrored: (8, 8) and the lower row of (1.5, 8) alone; corner (positions learn: both columns of
    # each tap): (8, 8), (8, 9), (1, 8), (1, 9)
    assert [int(E.table_counts(x, w, p, *args, kind)[0]) for kind in range(3)] == [2, 2, 4]
    # a NaN weight at a dead offset stays in the forward table: every output is NaN, as in a dense convolution
    w_nan = w.clone()
    w_nan[0, 0, 1] = float("nan")
    assert int(E.table_counts(x, w_nan, p, *args, 0)[0]) == 4  # NaN times a zero interpolation weight: both columns
    # (float32: the tiled engine; float64: tiles of 32 planes exceed shared memory, the gather kernel runs)
    assert E.taps_conv(x.float(), w_nan.float(), p.float(), None, *args).isnan().all()
    assert E.taps_conv(x, w_nan, p, None, *args).isnan().all()
    assert reference.taps_conv(x, w_nan, p, None, *args).isnan().all()
    # the same taps on a plane large enough for every offset: nothing dropped (corner: column 17 lies outside)
    big = torch.randn(1, 1, 20, 20, dtype=torch.float64)
    assert [int(E.table_counts(big, w, p, *args, kind)[0]) for kind in range(3)] == [4, 4, 7]


@pytest.mark.parametrize("stride", [1, 2])
def test_tables_pair_single_rows(monkeypatch, stride):
    """On-grid taps come as single-row entries; the forward and (stride 1) mirrored tables pair rows 2m and 2m + 1 of
    a column into one two-row entry: a dense 7x7 kernel's 49 entries become 28 (21 pairs and row 6 alone). The
    correlation's corner table, and a strided input gradient's phases (every other row), keep theirs. Results equal
    the unpaired tables' (DCLS_CONVERT_CUDA_TILES=unpaired) and the oracle."""
    x = torch.randn(2, 3, 12, 13)
    cells = torch.arange(49)
    p = torch.stack([cells // 7 - 3, cells % 7 - 3]).float().view(2, 1, 1, 49).expand(2, 3, 1, 49).contiguous()
    w = torch.randn(3, 1, 49)
    w[1, 0, 10] = 0.0  # a zero tap: its cell has no entry, its partner stays a single row (48 -> 28)
    args = ([7, 7], [stride, stride], [3, 3], "bilinear")
    paired = [E.table_counts(x, w, p, *args, kind).tolist() for kind in range(3)]
    monkeypatch.setenv("DCLS_CONVERT_CUDA_TILES", "unpaired")
    unpaired = [E.table_counts(x, w, p, *args, kind).tolist() for kind in range(3)]
    y_unpaired = E.taps_conv(x, w, p, None, *args)
    g = torch.randn_like(y_unpaired)
    gx_unpaired = E.taps_conv_backward(g, x, w, p, *args, [True, False, False, False])[0]
    monkeypatch.delenv("DCLS_CONVERT_CUDA_TILES")
    assert unpaired[0] == [49, 48, 49] and paired[0] == [28, 28, 28]
    assert paired[1] == ([28, 28, 28] if stride == 1 else unpaired[1]) and paired[2] == unpaired[2]
    y = E.taps_conv(x, w, p, None, *args)
    gx = E.taps_conv_backward(g, x, w, p, *args, [True, False, False, False])[0]
    torch.testing.assert_close(y, y_unpaired, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, gx_unpaired, rtol=1e-5, atol=1e-5)
    X = x.double().requires_grad_()
    want = reference.taps_conv(X, w.double(), p.double(), None, *args)
    torch.testing.assert_close(y.double(), want.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx.double(), torch.autograd.grad(want, X, g.double())[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, channels_last, dtype", [((2, 3, 56, 56), False, torch.float32),
                                                          ((2, 3, 14, 14), False, torch.float32),
                                                          ((3, 4, 7, 7), False, torch.float32),
                                                          ((2, 16, 28, 28), True, torch.bfloat16),
                                                          ((2, 16, 56, 56), True, torch.bfloat16)])
def test_fixed_pitch_kernels_match_runtime_pitch(monkeypatch, shape, channels_last, dtype):
    """At ConvNeXt-T's tile shapes (window 17) the forward, the input gradient and the correlation run kernels
    compiled for their row pitch (with_ry_pitch: 68, 48, 30, 24, 23 here, 7 and 8 rows per thread); bitwise the
    results of the kernels reading the pitch at run time (DCLS_CONVERT_CUDA_TILES=runtime-pitch), every gradient."""
    monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA", "none")  # the tables' kernels (16-bit layers: the tensor cores by default)
    x = torch.randn(*shape, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, p, _ = random_taps(2, shape[1], 1, 10, [17, 17], spread=1.4, dtype=torch.float32)
    b = torch.randn(shape[1])
    args = ([17, 17], [1, 1], [8, 8], "bilinear")
    assert all(E.tile_config(x, w, p, *args, kind)[PITCH] in (23, 24, 30, 48, 68) for kind in (0, 1, 2))
    g = torch.randn_like(E.taps_conv(x, w, p, b, *args))
    runs = {}
    for mode in ("runtime-pitch", None):
        tiles_mode(monkeypatch, mode)
        runs[mode] = [E.taps_conv(x, w, p, b, *args)] + list(E.taps_conv_backward(g, x, w, p, *args, [True] * 4))
    assert all(torch.equal(a, b) for a, b in zip(runs["runtime-pitch"], runs[None]))
    torch.testing.assert_close(runs[None][0].double(), reference.taps_conv(x.double(), w.double(), p.double(),
                                                                            b.double(), *args), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("interp", ["bilinear", "nearest"])
def test_tables_list_two_row_entries_first(interp):
    """Every table holds its two-row entries (c1 != 0) first, as many as its `pairs` count, so that the forward and
    the correlation run each kind in a loop of its own. Off-grid bilinear taps: forward entries are two-row except
    on the window's last row; the corner table marks every cell whose next row the gradients read (all of them
    where positions learn, but the last row). Nearest taps: one row each; their corner table is all single rows,
    which the correlation reduces 32 at a time."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64)
    w, p, _ = random_taps(2, 3, 1, 6, [7, 7], spread=0.7)
    p = p + 0.37  # off the grid, inside the window (none clamped onto an edge, where a tap has one row)
    args = ([7, 7], [1, 1], [3, 3], interp)
    for kind in (0, 1, 2):
        entries, counts, pairs = E.table_entries(x, w, p, *args, kind)
        assert (counts > 0).all()
        for c in range(3):
            e = entries[c, : counts[c]]
            two = e[:, 3] != 0
            assert two[: pairs[c]].all() and not two[pairs[c]:].any(), (kind, c, e)
            if interp == "nearest":
                assert pairs[c] == (0 if kind == 2 else int(two.sum()))
            else:
                assert two.all(), (kind, c, e)
    # Two taps of one cell whose first rows cancel (weights 2 and -3 at 0.75 and 0.5 of the cell's upper row): one
    # row is left, the lower one, in the forward table and, flipped to the upper one, in the mirrored one.
    w2 = torch.tensor([[[2.0, -3.0]]], dtype=torch.float64)
    p2 = torch.tensor([[[[0.25, 0.5]]], [[[0.0, 0.0]]]], dtype=torch.float64)
    x2 = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    for kind in (0, 1):
        entries, counts, pairs = E.table_entries(x2, w2, p2, [5, 5], [1, 1], [2, 2], interp, kind)
        e = entries[0, : counts[0]]
        assert int(pairs[0]) == int((e[:, 3] != 0).sum()), (kind, e)
        assert (e[: pairs[0], 3] != 0).all() and (e[pairs[0]:, 3] == 0).all(), (kind, e)


@settings(max_examples=80, deadline=None)
@given(c=taps_cases(batches=(0, 1, 2, 5, 9)))
def test_emulated_taps_match_oracle(c):
    """The CPU property test through the CUDA ops' flow: 1-D/2-D, strides, paddings up to the window (planes smaller
    than the window: offsets that never meet the input), nearest, on-grid taps, batch 0, batches that fill image
    groups partly, bias, layouts, and the backward mask of each frozen set."""
    x, w, p, b = taps_inputs(c, torch.float64)
    args = (c["window"], c["stride"], c["padding"], c["interp"])
    torch.testing.assert_close(E.taps_conv(x, w, p, b, *args), reference.taps_conv(x, w, p, b, *args), rtol=0,
                               atol=1e-10)
    leaves = [t.clone().requires_grad_() for t in (x, w, p, b if b is not None else torch.zeros(x.shape[1],
                                                                                                 dtype=x.dtype))]
    want_y = reference.taps_conv(*leaves, *args)
    g = grad_like(want_y.detach(), c["grad_layout"])
    want = torch.autograd.grad(want_y, leaves, g, allow_unused=True)
    mask = [n not in c["frozen"] for n in ("input", "weight", "positions")] + [b is not None]
    for asked, a, e in zip(mask, E.taps_conv_backward(g, x, w, p, *args, mask), want):
        if asked:
            torch.testing.assert_close(a, torch.zeros_like(a) if e is None else e, rtol=0, atol=1e-10)
        else:
            assert a.numel() == 0


@pytest.mark.parametrize("size, window, stride, padding", [
    ([11, 13], [5, 4], [4, 4], [2, 3]),   # sixteen phases
    ([9, 40], [3, 3], [2, 8], [1, 1]),    # 8 x 2 phases, some with no window offset (stride above the window)
    ([50], [7], [16], [3]),               # 1-D, sixteen phases
    ([12, 12], [3, 5], [5, 3], [4, 2]),   # stride 5 x 3: fifteen phases
    ([10, 10], [3, 3], [5, 5], [1, 1]),   # 25 phases: the gather kernel
])
def test_large_strides(size, window, stride, padding):
    """Strides beyond the property test's (1-3): every stride phase, empty phases included, against the oracle."""
    D = len(window)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    w, p, _ = random_taps(D, 3, 1, 6, window, spread=1.4)
    b = torch.randn(3, dtype=torch.float64)
    args = (window, stride, padding, "bilinear")
    _check_against_oracle(x, w, p, b, args)


def _window_case_inputs(case, layout, dtype, interp, N):
    """A case's 16-bit input and float32 taps (on the grid for nearest). channels_last with 10 channels: a
    partial group of 8, staged an element per load; with 16 ("channels_last16"): 16-byte loads of 8 channels."""
    D = len(case["window"])
    C = {"channels_last": 10, "channels_last16": 16}.get(layout, 3)
    x = torch.randn(N, C, *case["size"]).to(dtype)
    if layout.startswith("channels_last") and D == 2:
        x = x.contiguous(memory_format=torch.channels_last)
    w, p, _ = random_taps(D, C, 1, 6, case["window"], spread=1.4, dtype=torch.float32)
    return x, w, p.round() if interp == "nearest" else p


WINDOW_CORR_CASES = [
    dict(size=[11, 12], window=[7, 6], padding=[3, 2]),          # one band, one 16-row tile
    dict(size=[20, 23], window=[17, 17], padding=[8, 8]),        # 3 bands, a ring wrapping, two 16-column steps
    dict(size=[7, 7], window=[17, 17], padding=[8, 8]),          # a plane smaller than the window (stage 4)
    dict(size=[9, 40], window=[51, 41], padding=[25, 20]),       # 2 x 2 window parts, a warp each
    dict(size=[13, 9], window=[33, 9], padding=[16, 0]),         # 2 parts along rows, rows of two warps
    dict(size=[6, 19], window=[3, 5], padding=[0, 4]),           # asymmetric paddings, one output column step
    dict(size=[16, 9], window=[10, 5], padding=[9, 2]),          # a band needing 17 ring rows: a ring of 32
    dict(size=[12, 128], window=[32, 32], padding=[16, 16]),     # 129 columns, 208 KiB of shared memory
    dict(size=[90], window=[31], padding=[15]),                  # 1-D: one row, a window part of 32 columns
]


def _window_grad_like(out, layout, dtype):
    """A random output gradient in the case's 16-bit type and layout."""
    g = torch.randn(out.shape).to(dtype)
    if layout.startswith("channels_last") and out.dim() == 4:
        g = g.contiguous(memory_format=torch.channels_last)
    return g


def _corr_case(monkeypatch, case, layout, dtype, interp, N, var, value):
    """A case's inputs, output gradient and weight, position and bias gradients with the switch var=value, and the
    kernels the backward launched."""
    window, padding = case["window"], case["padding"]
    x, w, p = _window_case_inputs(case, layout, dtype, interp, N=N)
    stride = [1] * len(window)
    g = _window_grad_like(E.taps_conv(x, w, p, None, window, stride, padding, interp), layout, dtype)
    monkeypatch.setenv(var, value)
    E.take_kernels()
    _, gw, gp, gb = E.taps_conv_backward(g, x, w, p, window, stride, padding, interp, [False, True, True, True])
    kernels = E.take_kernels()
    _assert_corr_grads(gw, gp, gb, x, w, p, g, window, stride, padding, interp)
    return kernels


def _assert_corr_grads(gw, gp, gb, x, w, p, g, window, stride, padding, interp):
    """Weight, position and bias gradients against the float64 oracle on the same input values, to float32
    rounding (nearest taps: no position gradient)."""
    ref = [x.double(), w.double().requires_grad_(), p.double().requires_grad_(),
           torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)]
    want = torch.autograd.grad(reference.taps_conv(*ref, window, stride, padding, interp), ref[1:], g.double(),
                               allow_unused=True, materialize_grads=True)
    assert max_rel(gw.double(), want[0]) < 1e-5
    assert max_rel(gb.double(), want[2]) < 1e-5
    if interp == "bilinear":
        assert max_rel(gp.double(), want[1]) < 1e-5
    else:
        assert not gp.any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", WINDOW_CORR_CASES)
@pytest.mark.parametrize("interp,layout", [("bilinear", "contiguous"), ("bilinear", "channels_last"),
                                           ("bilinear", "channels_last16"), ("nearest", "contiguous")])
def test_window_corr_matches_oracle(monkeypatch, dtype, case, interp, layout):
    """The tensor-core correlation (DCLS_CONVERT_CUDA_MMA=corr), block by block with every lane's mma fragments,
    against the float64 oracle on the same 16-bit values: weight, position and bias gradients to float32
    rounding. It replaces the corner table and its correlation: one launch fewer (2 instead of 3). channels_last
    with 10 channels: a partial group, staged an element per load; with 16: 16-byte loads of 8 channels."""
    assert len(_corr_case(monkeypatch, case, layout, dtype, interp, 3, "DCLS_CONVERT_CUDA_MMA", "corr")) == 2


@pytest.mark.parametrize("case", WINDOW_CORR_CASES)
@pytest.mark.parametrize("interp,layout", [("bilinear", "contiguous"), ("bilinear", "channels_last16"),
                                           ("nearest", "contiguous")])
def test_window_corr_tf32_matches_oracle(monkeypatch, case, interp, layout):
    """float32 layers' weight and position gradients on tensor cores (DCLS_CONVERT_CUDA_TF32=corr): the 16-bit
    kernel's block algorithm on mma.m16n8k8 with tf32, each value split into a tf32 head and tail and three
    products summed (3xTF32), against the float64 oracle to float32's accuracy. One tf32 product alone would be
    about 1e-3 off (10 mantissa bits); the tails bring it to float32 rounding. Two launches (correlation, finish)
    instead of the tables' three where the plan fits shared memory; unset, float32 keeps the tables."""
    window, padding = case["window"], case["padding"]
    D = len(window)
    x, w, p = _window_case_inputs(case, layout, torch.float32, interp, N=3)
    stride = [1] * D
    out = E.taps_conv(x, w, p, None, window, stride, padding, interp)
    g = torch.randn(out.shape)
    if layout.startswith("channels_last") and D == 2:
        g = g.contiguous(memory_format=torch.channels_last)
    E.take_launches()
    tables = E.taps_conv_backward(g, x, w, p, window, stride, padding, interp, [False, True, True, True])
    assert E.take_launches() == 3
    monkeypatch.setenv("DCLS_CONVERT_CUDA_TF32", "corr")
    monkeypatch.setenv("DCLS_CONVERT_CUDA_PLANE", "none")  # the rows' kernel (small planes take window_plane_corr.h)
    _, gw, gp, gb = E.taps_conv_backward(g, x, w, p, window, stride, padding, interp, [False, True, True, True])
    # float32 rows take twice the 16-bit ring: the 129-column case's 32x32 window passes the block's shared memory
    fits = case is not WINDOW_CORR_CASES[7]
    assert bool(E.window_plans(x, w, p, window, stride, padding, interp)[2]) == fits
    assert E.take_launches() == (2 if fits else 3)
    _assert_corr_grads(gw, gp, gb, x, w, p, g, window, stride, padding, interp)
    torch.testing.assert_close(gb, tables[3], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tf32,mma,launches", [("corr", None, 2), ("corr", "none", 3), ("corr", "conv", 3),
                                                ("corr", "corr", 2), ("all", None, 2), ("conv", None, 3),
                                                (None, "all", 3)])
def test_tf32_switch(monkeypatch, tf32, mma, launches):
    """float32 correlations on tensor cores only where DCLS_CONVERT_CUDA_TF32=corr (or all) asks, and not where
    DCLS_CONVERT_CUDA_MMA keeps the correlation off (none, or the other part); DCLS_CONVERT_CUDA_MMA alone never
    moves float32."""
    x = torch.randn(2, 4, 12, 12)
    w, p, _ = random_taps(2, 4, 1, 5, [7, 7], spread=1.4, dtype=torch.float32)
    out = E.taps_conv(x, w, p, None, [7, 7], [1, 1], [3, 3], "bilinear")
    for var, value in (("DCLS_CONVERT_CUDA_TF32", tf32), ("DCLS_CONVERT_CUDA_MMA", mma)):
        if value is not None:
            monkeypatch.setenv(var, value)
    E.take_launches()
    E.taps_conv_backward(torch.randn(out.shape), x, w, p, [7, 7], [1, 1], [3, 3], "bilinear", [False, True, True, False])
    assert E.take_launches() == launches


@pytest.mark.parametrize("dtype,stride,padding", [(torch.float32, [1, 1], [3, 3]), (torch.bfloat16, [2, 1], [3, 3]),
                                                  (torch.bfloat16, [1, 1], [7, 3])])
def test_window_corr_applies_only_where_it_can(monkeypatch, dtype, stride, padding):
    """float32, a stride, or a padding past the window (output rows no band would load): the tables' correlation
    (the corner table, the correlation, its finish), whatever DCLS_CONVERT_CUDA_MMA says."""
    x = torch.randn(2, 4, 12, 12).to(dtype)
    w, p, _ = random_taps(2, 4, 1, 5, [7, 7], spread=1.4, dtype=torch.float32)
    out = E.taps_conv(x, w, p, None, [7, 7], stride, padding, "bilinear")
    monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA", "corr")
    E.take_launches()
    E.taps_conv_backward(torch.randn(out.shape).to(dtype), x, w, p, [7, 7], stride, padding, "bilinear",
                         [False, True, True, False])
    assert E.take_launches() == 3


@pytest.mark.parametrize("size,K,interp,env,conv,corr", [
    ([56, 56], 34, "bilinear", None, True, True),      # stage 1 with 4K = 136 entries: both parts pay
    ([56, 56], 10, "bilinear", None, False, True),     # 40 entries: the tables' forward is cheaper
    ([28, 28], 34, "bilinear", None, True, True),      # stage 2: the forward's break-even 99
    ([14, 14], 34, "bilinear", None, False, True),     # stage 3: 184, past 136; the correlation's 63
    ([7, 7], 34, "bilinear", None, False, False),      # stage 4: the tables' correlation too
    ([7, 7], 34, "bilinear", "all", True, True),       # forced on
    ([56, 56], 34, "bilinear", "none", False, False),  # forced off
    ([56, 56], 34, "bilinear", "corr", False, True),   # one part forced, the other off
    ([56, 56], 34, "nearest", None, False, True),      # K = 34 entries
])
def test_mma_cost_rule(monkeypatch, size, K, interp, env, conv, corr):
    """Which parts of a 16-bit stride-1 layer run on tensor cores (mma_wanted): unset, the cost rule measured on an
    H200 at window 17 (break-even entries growing as planes shrink); DCLS_CONVERT_CUDA_MMA forces either way.
    float32 never does."""
    if env is None:
        monkeypatch.delenv("DCLS_CONVERT_CUDA_MMA", raising=False)
    else:
        monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA", env)
    x = torch.randn(1, 2, *size).to(torch.bfloat16)
    w, p, _ = random_taps(2, 2, 1, K, [17, 17], spread=1.4, dtype=torch.float32)
    E.take_kernels()
    out = E.taps_conv(x, w, p, None, [17, 17], [1, 1], [8, 8], interp)
    assert ("window_conv" in E.take_kernels()) == conv
    E.taps_conv_backward(torch.randn(out.shape).to(x.dtype), x, w, p, [17, 17], [1, 1], [8, 8], interp, [True] * 4)
    kernels = E.take_kernels()
    assert ("window_conv" in kernels) == conv and ("window_corr" in kernels) == corr
    E.taps_conv(x.float(), w, p, None, [17, 17], [1, 1], [8, 8], interp)
    assert not any(k.startswith("window") for k in E.take_kernels())


@pytest.mark.parametrize("K,conv", [(3, False), (5, True)])
def test_mma_cost_rule_counts_1d_corners(monkeypatch, K, conv):
    """A 1-D bilinear tap has 2 corners, not 4: a 300-long row in a window of 17 has its forward's break-even at
    8.9 entries, so 3 taps (6 entries) stay on the tables and 5 (10) take the tensor cores."""
    monkeypatch.delenv("DCLS_CONVERT_CUDA_MMA", raising=False)
    x = torch.randn(2, 4, 300).to(torch.bfloat16)
    w, p, _ = random_taps(1, 4, 1, K, [17], spread=1.4, dtype=torch.float32)
    E.take_kernels()
    E.taps_conv(x, w, p, None, [17], [1], [8], "bilinear")
    assert ("window_conv" in E.take_kernels()) == conv


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_window_mma_random_shapes(data):
    """Random stride-1 shapes (windows to 40, paddings inside the window, planes to 30 rows past the window, 1-4
    images, channels in and out of whole groups of 8) with every part on tensor cores (DCLS_CONVERT_CUDA_MMA=all;
    float32: its correlation as 3xTF32 on rows, DCLS_CONVERT_CUDA_TF32=corr; drawn: small planes by window_plane.h
    and window_plane_corr.h, DCLS_CONVERT_CUDA_PLANE=all, and float32's by window_plane.h's strips and
    window_plane_corr.h as 3xTF32, DCLS_CONVERT_CUDA_TF32=all): the correlation's bands, rings and prefetched rounds
    and the convolution's row tiles and k-steps against the float64 oracle."""
    D = data.draw(st.integers(1, 2))
    window = data.draw(st.lists(st.integers(1, 40), min_size=D, max_size=D))
    padding = [data.draw(st.integers(0, L - 1)) for L in window]
    size = [data.draw(st.integers(max(1, L - 2 * p), max(1, L - 2 * p) + 30)) for L, p in zip(window, padding)]
    dtype = data.draw(st.sampled_from([torch.bfloat16, torch.float16, torch.float32]))
    channels_last = D == 2 and data.draw(st.booleans())
    C = data.draw(st.sampled_from([1, 3, 8, 10, 16]))
    N = data.draw(st.integers(1, 4))
    torch.manual_seed(data.draw(st.integers(0, 2 ** 31 - 1)))  # (the values: part of the example, reproducible)
    x = torch.randn(N, C, *size).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    plane = data.draw(st.booleans())  # small planes' parts by window_plane.h and window_plane_corr.h where they fit
    w, p, _ = random_taps(D, C, 1, 4, window, spread=1.4, dtype=torch.float32)
    with pytest.MonkeyPatch.context() as m:
        m.setenv("DCLS_CONVERT_CUDA_MMA", "all")
        m.setenv("DCLS_CONVERT_CUDA_TF32", "all" if plane else "corr")
        m.setenv("DCLS_CONVERT_CUDA_PLANE", "all" if plane else "none")  # (none: float32's correlation on rows)
        out = E.taps_conv(x, w, p, None, window, [1] * D, padding, "bilinear")
        g = torch.randn(out.shape).to(dtype)
        if channels_last:
            g = g.contiguous(memory_format=torch.channels_last)
        gin, gw, gp, gb = E.taps_conv_backward(g, x, w, p, window, [1] * D, padding, "bilinear", [True] * 4)
    ref = [x.double().requires_grad_(), w.double().requires_grad_(), p.double().requires_grad_(),
           torch.zeros(C, dtype=torch.float64, requires_grad=True)]
    y = reference.taps_conv(*ref, window, [1] * D, padding, "bilinear")
    want = torch.autograd.grad(y, ref, g.double())
    # float32 sums: 3e-5 of the largest gradient leaves room for a few channels' cancellation; where the sums cancel
    # to almost nothing (a window of one cell: every tap's gradient the same small sum), float32's rounding of the
    # terms' magnitudes (bounded by every output's |g| times the largest |x| and |w|)
    terms = float(g.double().abs().sum() * x.double().abs().max() * max(1.0, float(w.abs().max())))
    for a, e in zip((gw, gp, gb), want[1:]):
        assert float((a.double() - e).abs().max()) <= 3e-5 * float(e.abs().max()) + 1e-6 * terms
    # the forward and input gradient with the window in 16 bits: each output within a few 16-bit steps of the
    # sum of its products' magnitudes (the same op on |x| and |w|: a bound of it), as the window's rounding allows
    # whatever cancellation the sum has
    # (float32: the tables' kernels, whose corner weights come from float32 positions as large as the window, or
    # the strips' float32 window: a bound relative to the largest sum, not to each)
    step = {torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10, torch.float32: 2.0 ** -17}[dtype]
    xa = x.double().abs().requires_grad_()
    scale = reference.taps_conv(xa, w.double().abs(), p.double(), None, window, [1] * D, padding, "bilinear")
    gin_scale, = torch.autograd.grad(scale, xa, g.double().abs())
    scale = scale.detach()
    if dtype == torch.float32:
        scale, gin_scale = scale.max().expand_as(scale), gin_scale.max().expand_as(gin_scale)
    sub = torch.finfo(dtype).tiny * torch.finfo(dtype).eps  # the output's own subnormal spacing (float16: 6e-8)
    assert ((out.double() - y.detach()).abs() <= 4 * step * scale + sub).all()
    assert ((gin.double() - want[0]).abs() <= 4 * step * gin_scale + sub).all()


def _conv_case(monkeypatch, case, layout, dtype, interp, N, var, value):
    """A case's forward (with a bias) and input gradient with the switch var=value, the kernels each launched, the
    window the kernels build (C, Lh, Lw) and the dense float64 convolution with it (output, input gradient)."""
    window, padding = case["window"], case["padding"]
    D = len(window)
    x, w, p = _window_case_inputs(case, layout, dtype, interp, N=N)
    C = x.shape[1]
    b = torch.randn(C)
    stride = [1] * D
    monkeypatch.setenv(var, value)
    E.take_kernels()
    out = E.taps_conv(x, w, p, b, window, stride, padding, interp)
    fwd_kernels = E.take_kernels()
    assert out.is_contiguous(memory_format=torch.channels_last) == (layout.startswith("channels_last") and D == 2)
    g = torch.randn(out.shape).to(dtype)
    gin = E.taps_conv_backward(g, x, w, p, window, stride, padding, interp, [True, False, False, False])[0]
    bwd_kernels = E.take_kernels()
    kern = E.window_kernel(x, w, p, window, stride, padding, interp, False)
    conv = torch.nn.functional.conv2d if D == 2 else torch.nn.functional.conv1d
    xd = x.double().requires_grad_()
    want = conv(xd, kern.double().view(C, 1, *window), b.double(), padding=padding, groups=C)
    want_gin, = torch.autograd.grad(want, xd, g.double())
    return SimpleNamespace(x=x, w=w, p=p, out=out, gin=gin, fwd_kernels=fwd_kernels, bwd_kernels=bwd_kernels,
                           kern=kern, want=want.detach(), want_gin=want_gin)


def _assert_within_step(got, want, dtype):
    """Each output within one 16-bit step of the exact value (plus the float32 sums' error, relative to the
    scale)."""
    step = 2.0 ** (-7 if dtype == torch.bfloat16 else -10)
    assert ((got.double() - want).abs() <= step * want.abs() + 1e-5 * want.abs().max()).all()


WINDOW_CONV_CASES = [
    dict(size=[11, 12], window=[7, 6], padding=[3, 2]),      # one 16-row tile, one k-step
    dict(size=[40, 23], window=[17, 17], padding=[8, 8]),    # two 32-row tiles, two k-steps, bands of 8 rows
    dict(size=[7, 7], window=[17, 17], padding=[8, 8]),      # stage 4's plane in a 17x17 window
    dict(size=[20, 56], window=[17, 17], padding=[8, 8]),    # 56 columns: seven 8-column tiles
    dict(size=[9, 64], window=[33, 41], padding=[16, 20]),   # three k-steps, eight column tiles
    dict(size=[6, 19], window=[3, 5], padding=[0, 4]),       # paddings from none to the window's edge
    dict(size=[50], window=[31], padding=[15]),              # 1-D
    dict(size=[10, 150], window=[17, 9], padding=[8, 4]),    # three column tiles (64, 64, 22)
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", WINDOW_CONV_CASES)
@pytest.mark.parametrize("interp,layout", [("bilinear", "contiguous"), ("bilinear", "channels_last"),
                                           ("bilinear", "channels_last16"), ("nearest", "contiguous")])
def test_window_conv_matches_oracle(monkeypatch, dtype, case, interp, layout):
    """The tensor-core forward and input gradient (DCLS_CONVERT_CUDA_MMA=conv), block by block with every lane's
    mma fragments, against the float64 oracle: the window the kernels build within one 16-bit step of the exact
    one (a dense convolution under autocast rounds its weight the same way), and the convolution with that window
    to float32 sums and the output's 16-bit rounding. Two launches each (the window, the convolution), no table."""
    window, padding = case["window"], case["padding"]
    r = _conv_case(monkeypatch, case, layout, dtype, interp, 2, "DCLS_CONVERT_CUDA_MMA", "conv")
    assert len(r.fwd_kernels) == 2 and len(r.bwd_kernels) == 2
    # the window as the kernels build it (float32 sums in tap order, one 16-bit rounding): within a 16-bit step
    # of the oracle's; a cell near a rounding boundary may round the other way than the float64 sum would
    exact = reference.construct(r.w.double(), r.p.double(), None, window, interp).view(r.kern.shape)
    step = 2.0 ** (-7 if dtype == torch.bfloat16 else -10)
    assert ((r.kern.double() - exact).abs() <= step * exact.abs() + 1e-6 * exact.abs().max()).all()
    torch.testing.assert_close(E.window_kernel(r.x, r.w, r.p, window, [1] * len(window), padding, interp, True),
                               r.kern.flip([1, 2]), rtol=0, atol=0)
    assert max_rel(r.out.double(), r.want) < 2 ** -7  # the output's own 16-bit rounding
    assert max_rel(r.gin.double(), r.want_gin) < 2 ** -7
    _assert_within_step(r.out, r.want, dtype)


@pytest.mark.parametrize("size,window,padding,conv_ok,corr_ok", [
    ([56, 56], [17, 17], [8, 8], True, True),      # ConvNeXt-T stage 1
    ([8, 64], [64, 64], [32, 32], True, True),     # the forward's 64-row window: 164 KiB of shared memory
    ([40, 128], [32, 32], [16, 16], True, True),   # the correlation at 208 KiB (past an A100's 163)
    ([70, 200], [64, 32], [32, 16], True, False),  # 201 columns: the forward in tiles of 64; the correlation 258 KiB
    ([20, 20], [7, 7], [7, 3], False, False),      # padding past the window (rows no band would reach)
])
def test_window_plans_fit_the_device(size, window, padding, conv_ok, corr_ok):
    """The tensor-core plans apply only where their shared memory fits a block of the device (here an H100's
    227 KiB opt-in limit; on CUDA the device's own): beyond it, or for shapes they do not cover, the tables run.
    Padding past the window (more than L - 1) stops both."""
    x = torch.randn(2, 8, *size).bfloat16()
    w, p, _ = random_taps(2, 8, 1, 5, window, spread=1.4, dtype=torch.float32)
    ok_conv, conv_bytes, ok_corr, corr_bytes = E.window_plans(x, w, p, window, [1, 1], padding, "bilinear")[:4]
    assert (bool(ok_conv), bool(ok_corr)) == (conv_ok, corr_ok)
    for ok, nbytes in ((ok_conv, conv_bytes), (ok_corr, corr_bytes)):
        assert not ok or nbytes <= 227 * 1024


@pytest.mark.parametrize("size,window,padding,N,C", [
    ([20, 23], [17, 17], [8, 8], 2, 16),
    ([9, 40], [51, 41], [25, 20], 2, 16),
    ([7, 7], [17, 17], [8, 8], 2, 16),
    ([7, 7], [17, 17], [8, 8], 5, 72),     # 9 channel groups: jobs of 2 and 3 images, each next image prefetched
    ([40, 12], [17, 17], [8, 8], 3, 48),   # two row tiles, several rounds a job and images a job
    ([6, 70], [9, 9], [4, 4], 3, 40),      # 78 elements a row: rounds past the prefetched loads
])
def test_window_mma_vector_staging_changes_no_bit(monkeypatch, size, window, padding, N, C):
    """channels_last with 8k channels stages a pixel's 8 channels per 16-byte load, the next round's first loads
    issued before the current round's products (Prefetch); one element per load, none ahead
    (DCLS_CONVERT_CUDA_MMA_STAGING=scalar) stages the same values: the output and the input, weight and position
    gradients bitwise equal; the bias gradient, whose per-thread sums group the elements otherwise, to rounding."""
    x = torch.randn(N, C, *size).bfloat16().contiguous(memory_format=torch.channels_last)
    w, p, _ = random_taps(2, C, 1, 6, window, spread=1.4, dtype=torch.float32)
    b = torch.randn(C)
    monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA", "all")
    runs = []
    for staging in ("", "scalar"):
        monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA_STAGING", staging)
        out = E.taps_conv(x, w, p, b, window, [1, 1], padding, "bilinear")
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).bfloat16()
        g = g.contiguous(memory_format=torch.channels_last)
        runs.append([out] + list(E.taps_conv_backward(g, x, w, p, window, [1, 1], padding, "bilinear", [True] * 4)))
    assert all(torch.equal(a, e) for a, e in zip(runs[0][:4], runs[1][:4]))
    torch.testing.assert_close(runs[0][4], runs[1][4], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size,window,padding,band", [
    ([56, 56], [17, 17], [8, 8], 16),   # stage 1: 48 rows a job; 24 would pass the 113 KiB of two blocks an SM
    ([28, 28], [17, 17], [8, 8], 16),   # stage 2: a job's 28 rows in two rounds instead of four
    ([14, 14], [17, 17], [8, 8], 16),   # stage 3: 14 rows, one round instead of two
    ([7, 7], [17, 17], [8, 8], 8),      # stage 4: 7 rows
    ([30, 16], [9, 9], [4, 4], 32),     # a small window: 30 rows in one round
    ([24, 24], [7, 7], [3, 3], 24),     # 24 rows
    ([9, 64], [51, 41], [25, 20], 8),   # a 51-row window: its kernels alone pass the 113 KiB
])
def test_window_conv_bands_change_no_bit(monkeypatch, size, window, padding, band):
    """The tensor-core convolution stages up to 32 input rows per round (window_conv_band; the rows a job reads,
    within the shared memory of two blocks per SM): the output and input gradient bitwise those of bands of 8
    (DCLS_CONVERT_CUDA_MMA_BAND=8: the rows' products are summed in the same order)."""
    x = torch.randn(2, 16, *size).bfloat16().contiguous(memory_format=torch.channels_last)
    w, p, _ = random_taps(2, 16, 1, 34, window, spread=1.4, dtype=torch.float32)
    b = torch.randn(16)
    monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA", "conv")
    assert E.window_plans(x, w, p, window, [1, 1], padding, "bilinear")[4] == band
    g = torch.randn(x.shape).bfloat16().contiguous(memory_format=torch.channels_last)
    runs = []
    for cap in ("", "8"):
        monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA_BAND", cap)
        assert E.window_plans(x, w, p, window, [1, 1], padding, "bilinear")[4] == (8 if cap else band)
        out = E.taps_conv(x, w, p, b, window, [1, 1], padding, "bilinear")
        runs.append([out, E.taps_conv_backward(g, x, w, p, window, [1, 1], padding, "bilinear", [True] + [False] * 3)[0]])
    assert all(torch.equal(a, e) for a, e in zip(*runs))
    ref = reference.taps_conv(x.double(), w.double(), p.double(), b.double(), window, [1, 1], padding, "bilinear")
    assert max_rel(runs[0][0].double(), ref) < 2 ** -5


@pytest.mark.parametrize("size,C", [([56, 56], 16), ([28, 28], 8), ([7, 7], 24)])
def test_window_mma_convnext_stage_shapes(monkeypatch, size, C):
    """ConvNeXt-T's stage planes (56, 28, 7) at window 17 in bfloat16 channels_last, every part on tensor cores:
    the tiles those shapes pick (two 32-row tiles of 7 or 4 column tiles, one 16-row tile at 7x7; rings of 32
    rows; 16-byte staging) against the float64 oracle."""
    x = torch.randn(2, C, *size).bfloat16().contiguous(memory_format=torch.channels_last)
    w, p, _ = random_taps(2, C, 1, 34, [17, 17], spread=1.4, dtype=torch.float32)
    b = torch.randn(C)
    monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA", "all")
    assert E.window_plans(x, w, p, [17, 17], [1, 1], [8, 8], "bilinear")[:4:2] == [1, 1]
    E.take_launches()
    out = E.taps_conv(x, w, p, b, [17, 17], [1, 1], [8, 8], "bilinear")
    g = torch.randn(out.shape).bfloat16().contiguous(memory_format=torch.channels_last)
    gin, gw, gp, gb = E.taps_conv_backward(g, x, w, p, [17, 17], [1, 1], [8, 8], "bilinear", [True] * 4)
    assert E.take_launches() == 2 + 4  # window + conv; window + conv, correlation + finish
    ref = [x.double().requires_grad_(), w.double().requires_grad_(), p.double().requires_grad_(),
           b.double().requires_grad_()]
    y = reference.taps_conv(*ref, [17, 17], [1, 1], [8, 8], "bilinear")
    want = torch.autograd.grad(y, ref, g.double())
    assert max_rel(out.double(), y.detach()) < 2 ** -6  # the window and the output in bfloat16
    assert max_rel(gin.double(), want[0]) < 2 ** -6
    for a, e in zip((gw, gp, gb), want[1:]):
        assert max_rel(a.double(), e) < 1e-5


WINDOW_PLANE_CASES = [
    dict(size=[7, 7], window=[17, 17], padding=[8, 8]),      # stage 4: odd width staged at 8, 4 k-steps
    dict(size=[14, 14], window=[17, 17], padding=[8, 8]),    # stage 3: 13 k-steps of the 16-step kernel
    dict(size=[16, 16], window=[7, 7], padding=[3, 3]),      # 256 pixels, 16 k-steps; tiles skip far k-steps
    dict(size=[11, 12], window=[7, 6], padding=[3, 2]),      # asymmetric window, 9 k-steps
    dict(size=[6, 19], window=[3, 5], padding=[0, 4]),       # paddings from none to the window's edge, odd width
    dict(size=[9, 5], window=[33, 41], padding=[16, 20]),    # a window far past the plane
    dict(size=[50], window=[31], padding=[15]),              # 1-D
    # strips (past 256 pixels): A read from shared memory, a strip of output rows a block job
    dict(size=[28, 28], window=[17, 17], padding=[8, 8]),    # stage 2: 7 strips of 4 rows
    dict(size=[20, 23], window=[7, 6], padding=[3, 2]),      # odd width, asymmetric window, a shorter last strip
    dict(size=[30, 9], window=[33, 5], padding=[16, 2]),     # a window taller than a strip's rows
    dict(size=[19, 40], window=[5, 9], padding=[0, 4]),      # no padding above: a strip reads from its own row
    dict(size=[10, 30], window=[9, 9], padding=[8, 8]),      # more output rows than input rows
    dict(size=[12, 64], window=[5, 5], padding=[2, 2]),      # rows of 64 columns: the widest, strips of 3 rows
    # strips of 4 channels a block (8 do not fit), two warps a channel, each half its tiles
    dict(size=[20, 56], window=[17, 17], padding=[8, 8]),    # stage 1's rows: strips of 5
    dict(size=[23, 50], window=[15, 19], padding=[7, 9]),    # asymmetric window, strips of 7, the last of 2
    dict(size=[30, 62], window=[13, 11], padding=[0, 5]),    # no padding above, fewer output rows than input rows
    # tiles aligned with output rows and k-steps with input rows (Wo a multiple of 8, 16-bit rows of 16k pixels,
    # float32 of 8k): groups down a column block, over the input columns its window reaches
    dict(size=[18, 48], window=[7, 13], padding=[3, 2]),     # 40 output columns: blocks clipped at both edges
    dict(size=[21, 32], window=[17, 17], padding=[8, 8]),    # 32 columns: a block's window reaches every column
    dict(size=[12, 48], window=[5, 11], padding=[2, 1]),     # a block's reach ends on k-step boundaries, both sides
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", WINDOW_PLANE_CASES)
@pytest.mark.parametrize("interp,layout", [("bilinear", "contiguous"), ("bilinear", "channels_last"),
                                           ("bilinear", "channels_last16"), ("nearest", "contiguous")])
def test_window_plane_matches_oracle(monkeypatch, dtype, case, interp, layout):
    """Small planes' forward and input gradient as one matrix product per channel (window_plane.h,
    DCLS_CONVERT_CUDA_PLANE=conv), block by block with every lane's mma fragments, against the dense float64
    convolution with the window the kernels build: 18 images (a job of 16 and one of 2), to float32 sums and the
    output's 16-bit rounding. Two launches each (the window, the product), no table."""
    r = _conv_case(monkeypatch, case, layout, dtype, interp, 18, "DCLS_CONVERT_CUDA_PLANE", "conv")
    assert r.fwd_kernels == r.bwd_kernels == ["window_kernel", "window_plane"]
    _assert_within_step(r.out, r.want, dtype)
    _assert_within_step(r.gin, r.want_gin, dtype)


@pytest.mark.parametrize("size,window,padding,N,C", [
    ([7, 7], [17, 17], [8, 8], 18, 16),
    ([14, 14], [17, 17], [8, 8], 3, 24),
    ([5, 9], [7, 7], [3, 3], 2, 8),
    ([28, 28], [17, 17], [8, 8], 3, 16),   # strips
    ([20, 56], [17, 17], [8, 8], 3, 12),   # strips of 4 channels a block: 8-byte loads and stores
])
def test_window_plane_vector_staging_changes_no_bit(monkeypatch, size, window, padding, N, C):
    """channels_last with 8k channels: a pixel's 8 channels per 16-byte load and store (4 channels, 8 bytes, where
    a block holds 4); one element per load and store (DCLS_CONVERT_CUDA_MMA_STAGING=scalar) stages the same
    values: outputs and input gradients bitwise equal."""
    runs, _ = _plane_staging_runs(monkeypatch, torch.bfloat16, size, window, padding, N, C, "DCLS_CONVERT_CUDA_PLANE",
                                  vec=True)
    assert all(torch.equal(a, e) for a, e in zip(*runs))


def _plane_staging_runs(monkeypatch, dtype, size, window, padding, N, C, switch, vec):
    """A channels_last layer's forward (with a bias) and input gradient by window_plane.h (switch=conv), with
    vector staging where the plan takes it (vec: whether it does) and with one element a load and store
    (DCLS_CONVERT_CUDA_MMA_STAGING=scalar): both runs' (output, input gradient), and the layer's (x, w, p, b)."""
    x = torch.randn(N, C, *size).to(dtype).contiguous(memory_format=torch.channels_last)
    w, p, _ = random_taps(2, C, 1, 6, window, spread=1.4, dtype=torch.float32)
    b = torch.randn(C)
    g = torch.randn(x.shape[:2] + tuple(s + 2 * q - L + 1 for s, q, L in zip(size, padding, window))).to(dtype)
    g = g.contiguous(memory_format=torch.channels_last)
    monkeypatch.setenv(switch, "conv")
    runs = []
    for staging in ("", "scalar"):
        monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA_STAGING", staging)
        E.take_kernels()
        out = E.taps_conv(x, w, p, b, window, [1, 1], padding, "bilinear")
        gin = E.taps_conv_backward(g, x, w, p, window, [1, 1], padding, "bilinear", [True, False, False, False])[0]
        assert E.take_kernels() == ["window_kernel", "window_plane"] * 2
        assert out.is_contiguous(memory_format=torch.channels_last)
        runs.append((out, gin))
        plans = E.window_plans(x, w, p, window, [1, 1], padding, "bilinear")
        assert plans[5] and (bool(plans[17]), bool(plans[18])) == ((vec, vec) if staging == "" else (False, False))
    return runs, (x, w, p, b)


@pytest.mark.parametrize("size,window,padding,ok,ks,strip,cpb", [
    ([7, 7], [17, 17], [8, 8], True, 4, 0, 8),      # ConvNeXt-T stage 4
    ([14, 14], [17, 17], [8, 8], True, 13, 0, 8),   # stage 3
    ([16, 16], [17, 17], [8, 8], True, 16, 0, 8),   # 256 pixels: the most in registers
    ([15, 17], [17, 17], [8, 8], True, 17, 8, 8),   # 15 rows of 18 (odd width staged even): 270 pixels, strips
    ([28, 28], [17, 17], [8, 8], True, 35, 4, 8),   # stage 2: strips of 4 output rows (20 staged rows), 213 KiB
    ([56, 56], [17, 17], [8, 8], True, 70, 4, 4),   # stage 1: 17 staged rows of 56 columns are 244 KiB for 8
                                                    # channels: 4 channels a block, strips of 4 rows, 211 KiB
    ([56, 56], [31, 31], [15, 15], False, 0, 0, 0),  # window 31 at 56 x 56: 31 staged rows do not fit
    ([12, 64], [5, 5], [2, 2], True, 28, 3, 8),     # rows of 64 columns: the widest
    ([9, 80], [17, 17], [8, 8], False, 0, 0, 0),    # rows past 64 columns: the row kernel's (window_conv.h)
    ([7, 7], [65, 5], [32, 2], False, 0, 0, 0),     # a window past 64
])
def test_window_plane_plan(size, window, padding, ok, ks, strip, cpb):
    """Where the small-plane product applies: input planes up to 256 pixels (rows at even width) whole, larger ones
    with rows up to 64 columns in strips of up to 8 output rows (as many as fit the shared memory, 8 channels a
    block, else 4: stage 1's 56 columns under a 17-row window); windows up to 64; its shared memory (two blocks an
    SM on an H100 at stage 3)."""
    x = torch.randn(2, 8, *size).bfloat16()
    w, p, _ = random_taps(2, 8, 1, 5, window, spread=1.4, dtype=torch.float32)
    plans = E.window_plans(x, w, p, window, [1, 1], padding, "bilinear")
    assert bool(plans[5]) == ok
    if ok:
        assert (plans[7], plans[11], plans[12]) == (ks, strip, cpb)
        assert plans[6] <= (113 if strip == 0 else 227) * 1024


@pytest.mark.parametrize("dtype,plane,mma,tf32,expect", [
    (torch.bfloat16, "conv", None, None, True),
    (torch.bfloat16, None, None, None, False),      # opt-in
    (torch.bfloat16, "conv", "none", None, False),  # DCLS_CONVERT_CUDA_MMA keeps the tensor cores off
    (torch.bfloat16, "conv", "corr", None, False),
    (torch.bfloat16, "conv", "conv", None, True),
    (torch.bfloat16, None, None, "conv", False),    # the tf32 switch moves float32 only
    (torch.float32, "conv", None, None, False),     # float32: by DCLS_CONVERT_CUDA_TF32 alone
    (torch.float32, None, None, "conv", True),
    (torch.float32, None, None, "all", True),
    (torch.float32, None, None, "corr", False),
    (torch.float32, "none", None, "conv", False),   # DCLS_CONVERT_CUDA_PLANE=none keeps it off
    (torch.float32, None, "none", "conv", False),
])
def test_window_plane_switch(monkeypatch, dtype, plane, mma, tf32, expect):
    """DCLS_CONVERT_CUDA_PLANE=conv sends 16-bit small planes' forward and input gradient to window_plane.h, and
    DCLS_CONVERT_CUDA_TF32=conv (or all) float32 ones (its strips, as 3xTF32), unless DCLS_CONVERT_CUDA_MMA keeps
    the convolution off the tensor cores (or DCLS_CONVERT_CUDA_PLANE=none the small planes)."""
    for var, value in (("DCLS_CONVERT_CUDA_PLANE", plane), ("DCLS_CONVERT_CUDA_MMA", mma),
                       ("DCLS_CONVERT_CUDA_TF32", tf32)):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)
    x = torch.randn(2, 8, 7, 7).to(dtype)
    w, p, _ = random_taps(2, 8, 1, 34, [17, 17], spread=1.4, dtype=torch.float32)
    E.take_kernels()
    out = E.taps_conv(x, w, p, None, [17, 17], [1, 1], [8, 8], "bilinear")
    E.taps_conv_backward(torch.randn(out.shape).to(dtype), x, w, p, [17, 17], [1, 1], [8, 8], "bilinear",
                         [True, False, False, False])
    assert E.take_kernels().count("window_plane") == (2 if expect else 0)


# float32 strips (3xTF32): whole small planes are one strip here (a float32 plane's fragments do not fit in
# registers), and ConvNeXt-T's 56-column rows take 2 channels a block (and the aligned groups: 20 x 56, 18 x 48,
# 21 x 32, 12 x 48)
WINDOW_PLANE_TF32_CASES = [WINDOW_PLANE_CASES[i] for i in (0, 1, 3, 4, 5, 6, 7, 8, 11, 13, 15, 16, 17, 18)]


@pytest.mark.parametrize("case", WINDOW_PLANE_TF32_CASES)
@pytest.mark.parametrize("interp,layout", [("bilinear", "contiguous"), ("bilinear", "channels_last"),
                                           ("bilinear", "channels_last16"), ("nearest", "contiguous")])
def test_window_plane_tf32_matches_oracle(monkeypatch, case, interp, layout):
    """float32 layers' forward and input gradient on tensor cores (DCLS_CONVERT_CUDA_TF32=conv): window_plane.h's
    strips on mma.m16n8k8 with tf32, each value split into a tf32 head and tail and three products summed
    (3xTF32), block by block with every lane's fragments, against the dense float64 convolution with the window
    the kernels build (float32, no rounding) to float32's accuracy: one tf32 product alone would be about 1e-3 off.
    18 images (a job of 16 and one of 2); channels_last with 16 channels: 16-byte loads and stores of 4 channels.
    Two launches each (the window, the product) instead of the tables' two (the table, the forward)."""
    r = _conv_case(monkeypatch, case, layout, torch.float32, interp, 18, "DCLS_CONVERT_CUDA_TF32", "conv")
    assert r.fwd_kernels == r.bwd_kernels == ["window_kernel", "window_plane"]
    assert r.out.dtype == r.gin.dtype == torch.float32
    exact = reference.construct(r.w.double(), r.p.double(), None, case["window"], interp).view(r.kern.shape)
    assert max_rel(r.kern.double(), exact) < 1e-5  # the window's float32 sums, not rounded further
    assert max_rel(r.out.double(), r.want) < 1e-5
    assert max_rel(r.gin.double(), r.want_gin) < 1e-5


@pytest.mark.parametrize("dtype,switch", [(torch.float32, "DCLS_CONVERT_CUDA_TF32"),
                                          (torch.bfloat16, "DCLS_CONVERT_CUDA_PLANE")])
def test_window_plane_strips_past_the_input_rows(monkeypatch, dtype, switch):
    """A layer of stride 32 keeping one output row runs at stride 1 (make_taps_args), so its input gradient's strips
    of rows 3-19 reach no row of the one-row output gradient: those strips have no input rows (their outputs are
    zero), where they had a negative count and read shared memory out of bounds (a review's case). Against the
    float64 oracle."""
    monkeypatch.setenv(switch, "conv")
    x = torch.randn(2, 8, 20, 56).to(dtype)
    w, p, _ = random_taps(2, 8, 1, 5, [3, 17], spread=1.4, dtype=torch.float32)
    args = ([3, 17], [32, 1], [0, 8], "bilinear")
    out = E.taps_conv(x, w, p, None, *args)
    g = torch.randn(out.shape).to(dtype)
    E.take_kernels()
    gin = E.taps_conv_backward(g, x, w, p, *args, [True, False, False, False])[0]
    assert E.take_kernels() == ["window_kernel", "window_plane"]
    xd = x.double().requires_grad_()
    want, = torch.autograd.grad(reference.taps_conv(xd, w.double(), p.double(), None, *args), xd, g.double())
    assert not gin[:, :, 3:].any()
    assert max_rel(gin.double(), want) < (1e-5 if dtype == torch.float32 else 2e-2)


@pytest.mark.parametrize("size,window,padding,ks,strip,cpb", [
    ([7, 7], [17, 17], [8, 8], 7, 7, 8),      # ConvNeXt-T stage 4: one strip of the 7 rows, 66 KiB
    ([14, 14], [17, 17], [8, 8], 25, 8, 8),   # stage 3: strips of 8 rows, 180 KiB
    ([28, 28], [17, 17], [8, 8], 77, 6, 4),   # stage 2: 4 channels a block, strips of 6 (22 staged rows)
    ([56, 56], [17, 17], [8, 8], 154, 6, 2),  # stage 1: 2 channels a block (4 warps each), strips of 6
    ([50], [31], [15], 7, 1, 8),              # 1-D: one row
])
def test_window_plane_tf32_plan(size, window, padding, ks, strip, cpb):
    """float32 takes the strips at every ConvNeXt-T stage: twice the 16-bit bytes a pixel and half its pixels a
    k-step (mma.m16n8k8), so fewer rows a strip and, at 56 columns, 2 channels a block; within the H200's 227 KiB
    a block (one block an SM). Windows of 31 at 56 x 56 do not fit, as for 16 bits."""
    x = torch.randn(2, 8, *size)
    w, p, _ = random_taps(len(size), 8, 1, 5, window, spread=1.4, dtype=torch.float32)
    plans = E.window_plans(x, w, p, window, [1] * len(size), padding, "bilinear")
    assert plans[5] and (plans[7], plans[11], plans[12]) == (ks, strip, cpb)
    x = torch.randn(2, 8, 56, 56)
    w, p, _ = random_taps(2, 8, 1, 5, [31, 31], spread=1.4, dtype=torch.float32)
    assert not E.window_plans(x, w, p, [31, 31], [1, 1], [15, 15], "bilinear")[5]


@pytest.mark.parametrize("size,window,padding,N,C,vec", [
    ([7, 7], [17, 17], [8, 8], 18, 16, True),    # 8 channels a block: two 16-byte loads a pixel
    ([7, 7], [17, 17], [8, 8], 3, 12, False),    # 8 channels a block, the last group of 4: one element a load
    ([28, 28], [17, 17], [8, 8], 3, 12, True),   # 4 channels a block: one
    ([20, 56], [17, 17], [8, 8], 2, 8, False),   # 2 channels a block: one element a load either way
])
def test_window_plane_tf32_vector_staging_changes_no_bit(monkeypatch, size, window, padding, N, C, vec):
    """float32 channels_last whose blocks hold whole runs of 4 or 8 channels: a pixel's 4 channels per 16-byte load
    and store; one element per load and store (DCLS_CONVERT_CUDA_MMA_STAGING=scalar) stages the same values: outputs
    and input gradients bitwise equal, and equal to the tables' forward to float32's accuracy. Blocks holding a
    partial run (C = 12 under 8 channels a block) or 2 channels take one element a load and store."""
    runs, (x, w, p, b) = _plane_staging_runs(monkeypatch, torch.float32, size, window, padding, N, C,
                                             "DCLS_CONVERT_CUDA_TF32", vec)
    assert all(torch.equal(a, e) for a, e in zip(*runs))
    monkeypatch.delenv("DCLS_CONVERT_CUDA_TF32")
    assert max_rel(runs[0][0], E.taps_conv(x, w, p, b, window, [1, 1], padding, "bilinear")) < 1e-5


PLANE_CORR_CASES = [
    dict(size=[7, 7], window=[17, 17], padding=[8, 8]),      # stage 4: 16 images a job, rows of 8
    dict(size=[14, 14], window=[17, 17], padding=[8, 8]),    # stage 3: 9 images a job (126 of 128 k values)
    dict(size=[16, 16], window=[7, 7], padding=[3, 3]),      # 16 columns: both tiles full
    dict(size=[11, 12], window=[7, 6], padding=[3, 2]),      # asymmetric window
    dict(size=[5, 11], window=[3, 5], padding=[0, 4]),       # paddings from none to the window's edge, odd rows, 15 out
    dict(size=[9, 5], window=[33, 41], padding=[16, 20]),    # a window far past the plane (cells past the diagonals)
    dict(size=[20, 9], window=[5, 3], padding=[4, 0]),       # 24 output rows of 7, 6 images a job
    dict(size=[12], window=[9], padding=[4]),                # 1-D
    dict(size=[3, 10], window=[9, 5], padding=[8, 2]),       # 11 output rows from 3: the k-steps' padding reads far
    dict(size=[1, 14], window=[23, 7], padding=[20, 3]),     # 19 output rows from 1 (a review's failing case)
    # wide rows (17 to 32 columns): two by four tiles, those holding no window cell skipped
    dict(size=[28, 28], window=[17, 17], padding=[8, 8]),    # stage 2: 2 images a job, 6 of 8 tiles
    dict(size=[20, 23], window=[7, 9], padding=[3, 4]),      # asymmetric window, odd width, 3 images a job
    dict(size=[9, 32], window=[5, 31], padding=[2, 15]),     # 32 columns, a window as wide: every J
    dict(size=[6, 12], window=[3, 27], padding=[1, 20]),     # narrow input, 26 output columns (the tiles past W off)
    dict(size=[30, 18], window=[3, 3], padding=[1, 1]),      # a small window, three output-column tiles
    dict(size=[33, 25], window=[5, 5], padding=[4, 0]),      # 37 output rows of 21: one image a job, 3 k-steps
    dict(size=[29], window=[9], padding=[4]),                # 1-D
    # rows of 33 to 64 columns: four by eight tiles, one block an SM
    dict(size=[20, 56], window=[17, 17], padding=[8, 8]),    # stage 1's rows: 13 of 32 tiles, 3 images a job
    dict(size=[12, 45], window=[5, 9], padding=[2, 1]),      # asymmetric window and padding, odd width
    dict(size=[6, 40], window=[3, 63], padding=[1, 31]),     # a window wider than the plane: J from -4 to 4
    dict(size=[60], window=[17], padding=[8]),               # 1-D
    # planes past the k-steps' rows (16-bit: 128 narrow, 64 wide): bands of them, an image a job
    dict(size=[70, 40], window=[9, 17], padding=[4, 8]),     # wide: bands of 64 rows, the second of 6
    dict(size=[130, 9], window=[5, 3], padding=[4, 0]),      # narrow: bands of 128, 134 output rows
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", PLANE_CORR_CASES)
@pytest.mark.parametrize("interp,layout", [("bilinear", "contiguous"), ("bilinear", "channels_last"),
                                           ("bilinear", "channels_last16"), ("nearest", "contiguous")])
def test_plane_corr_matches_oracle(monkeypatch, dtype, case, interp, layout):
    """Small planes' weight and position gradients as one tensor-core product per channel and window row
    (window_plane_corr.h, DCLS_CONVERT_CUDA_PLANE=corr), block by block with every lane's mma fragments, against
    the float64 oracle on the same 16-bit values: weight, position and bias gradients to float32 rounding; 18
    images (jobs of a partial slab). Two launches (the correlation, its finish), no table."""
    kernels = _corr_case(monkeypatch, case, layout, dtype, interp, 18, "DCLS_CONVERT_CUDA_PLANE", "corr")
    assert kernels == ["plane_corr", "window_corr_finish"]


@pytest.mark.parametrize("size,window,padding,N,C", [
    ([7, 7], [17, 17], [8, 8], 18, 16),
    ([14, 14], [17, 17], [8, 8], 3, 24),
    ([5, 9], [7, 7], [3, 3], 2, 8),
    ([28, 28], [17, 17], [8, 8], 3, 16),
    ([20, 56], [17, 17], [8, 8], 2, 16),   # rows past 32 columns: 8 loads in flight
])
def test_plane_corr_vector_staging_changes_no_bit(monkeypatch, size, window, padding, N, C):
    """channels_last with 8k channels stages a pixel's 8 channels per 16-byte load; one element per load
    (DCLS_CONVERT_CUDA_MMA_STAGING=scalar) stages the same values in the same places: weight, position and bias
    gradients bitwise equal."""
    x = torch.randn(N, C, *size).bfloat16().contiguous(memory_format=torch.channels_last)
    w, p, _ = random_taps(2, C, 1, 6, window, spread=1.4, dtype=torch.float32)
    g = torch.randn(x.shape[:2] + tuple(s + 2 * q - L + 1 for s, q, L in zip(size, padding, window))).bfloat16()
    g = g.contiguous(memory_format=torch.channels_last)
    monkeypatch.setenv("DCLS_CONVERT_CUDA_PLANE", "corr")
    runs = []
    for staging in ("", "scalar"):
        monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA_STAGING", staging)
        assert bool(E.window_plans(x, w, p, window, [1, 1], padding, "bilinear")[19]) == (staging == "")
        E.take_kernels()
        runs.append(E.taps_conv_backward(g, x, w, p, window, [1, 1], padding, "bilinear", [False, True, True, True]))
        assert E.take_kernels() == ["plane_corr", "window_corr_finish"]
    assert all(torch.equal(a, e) for a, e in zip(*runs))


@pytest.mark.parametrize("size,window,padding,ok,images,mt,tiles,j", [
    ([7, 7], [17, 17], [8, 8], True, 16, 1, 0b1, (0, 1)),         # ConvNeXt-T stage 4 (one tile: J of 0 and 1)
    ([14, 14], [17, 17], [8, 8], True, 9, 1, 0b11, (-1, 1)),      # stage 3
    ([16, 16], [17, 17], [8, 8], True, 8, 1, 0b11, (-1, 1)),
    ([16, 16], [3, 3], [1, 1], True, 8, 1, 0b11, (-1, 1)),
    ([100, 8], [5, 5], [2, 2], True, 1, 1, 0b1, (0, 1)),          # 100 rows: one image a job
    ([28, 28], [17, 17], [8, 8], True, 2, 2, 0b11100111, (-1, 1)),  # stage 2: tiles (0, 3) and (1, 0) hold no cell
    ([14, 17], [17, 17], [8, 8], True, 4, 2, 0b1100111, (-1, 1)),  # 17 columns: wide, three output-column tiles
    ([28, 28], [3, 3], [1, 1], True, 2, 2, 0b11100111, (-1, 1)),  # a small window: the same tiles (they hold d = 0)
    ([9, 32], [5, 63], [2, 31], True, 5, 2, 0b11111111, (-3, 3)),  # every tile, every J
    ([56, 56], [17, 17], [8, 8], True, 1, 4, 0x60781e07, (-1, 1)),  # stage 1: 4 x 8 tiles, 13 of them (a byte a mi)
    ([56, 56], [31, 31], [15, 15], True, 1, 4, 0x707c3f0f, (-2, 2)),
    ([28, 33], [17, 17], [8, 8], True, 1, 4, 0x181e07, (-1, 1)),  # 33 columns: 4 x 8 tiles, one image a job
    ([66, 20], [5, 5], [2, 2], True, 1, 2, 0b1100111, (-1, 1)),   # wide rows, 66 rows: 2 bands of 64
    ([150, 30], [5, 5], [2, 2], True, 1, 2, 0b11100111, (-1, 1)),  # 3 bands (the output gradient: one block an SM)
    ([256, 8], [5, 5], [2, 2], True, 1, 1, 0b1, (0, 1)),          # narrow: 2 bands of 128, 256 rows the most
    ([257, 8], [5, 5], [2, 2], False, 0, 0, 0, 0),                # past 256 rows
    ([256, 30], [5, 5], [2, 2], False, 0, 0, 0, 0),               # the whole output gradient past 227 KiB
    ([28, 65], [17, 17], [8, 8], False, 0, 0, 0, 0),              # 65 columns
    ([7, 7], [65, 5], [32, 2], False, 0, 0, 0, 0),                # a window past 64
])
def test_plane_corr_plan(size, window, padding, ok, images, mt, tiles, j):
    """Where the small-plane correlation applies: input and output rows up to 64 columns (narrow up to 16), windows
    up to 64, input planes up to 256 rows; as many images a block job as the k-steps hold (8 narrow, 4 wide), within
    two blocks an SM where they fit; taller planes an image a job in bands of the k-steps' rows; the tiles computed
    (bit mi * NT + nt, NT = 2 mt wide) and the J whose diagonals hold window cells."""
    x = torch.randn(16, 8, *size).bfloat16()
    w, p, _ = random_taps(2, 8, 1, 5, window, spread=1.4, dtype=torch.float32)
    plans = E.window_plans(x, w, p, window, [1, 1], padding, "bilinear")
    assert bool(plans[8]) == ok
    if ok:
        assert plans[10] == images and plans[9] <= (113 if mt < 4 and plans[20] == 1 else 227) * 1024
        assert (plans[13], plans[14], (plans[15], plans[16])) == (mt, tiles, j)
        assert plans[20] == -(-size[0] // (128 if mt == 1 else 64))


# float32 takes half the k values a k-step: bands of 64 input rows (narrow), 32 (wide); every 16-bit case (33 x 25
# in bands of 32 and 2 rows, 70 x 40 of 32 with a last of 6, 130 x 9 of 64) and stage 1's rows
PLANE_CORR_TF32_CASES = PLANE_CORR_CASES + [
    dict(size=[56, 56], window=[17, 17], padding=[8, 8]),    # ConvNeXt-T stage 1: bands of 32 and 24 rows
    dict(size=[45, 50], window=[31, 5], padding=[15, 2]),    # a window of 31 rows, the second band of 13 (2 k-steps)
]


@pytest.mark.parametrize("case", PLANE_CORR_TF32_CASES)
@pytest.mark.parametrize("interp,layout", [("bilinear", "contiguous"), ("bilinear", "channels_last"),
                                           ("bilinear", "channels_last16"), ("nearest", "contiguous")])
def test_plane_corr_tf32_matches_oracle(monkeypatch, case, interp, layout):
    """float32's small-plane weight and position gradients (DCLS_CONVERT_CUDA_TF32=corr): window_plane_corr.h's
    block algorithm on mma.m16n8k8 with tf32, 3xTF32, against the float64 oracle to float32's accuracy (one tf32
    product alone is about 1e-3 off); 18 images. Two launches (the correlation, its finish), no table."""
    kernels = _corr_case(monkeypatch, case, layout, torch.float32, interp, 18, "DCLS_CONVERT_CUDA_TF32", "corr")
    assert kernels == ["plane_corr", "window_corr_finish"]


@pytest.mark.parametrize("size,window,padding,ok,images,mt,bands", [
    ([7, 7], [17, 17], [8, 8], True, 8, 1, 1),      # ConvNeXt-T stage 4: 8 images of 8 rows in 8 k-steps of 8
    ([14, 14], [17, 17], [8, 8], True, 4, 1, 1),    # stage 3
    ([28, 28], [17, 17], [8, 8], True, 1, 2, 1),    # stage 2: one image a job
    ([64, 9], [5, 5], [2, 2], True, 1, 1, 1),       # 64 rows: the narrow kernel's k-steps
    ([66, 9], [5, 5], [2, 2], True, 1, 1, 2),       # past them: bands of 64
    ([32, 20], [5, 5], [2, 2], True, 1, 2, 1),      # 32 rows: the wide kernel's
    ([33, 25], [5, 5], [4, 0], True, 1, 2, 2),      # bands of 32
    ([20, 56], [17, 17], [8, 8], True, 1, 4, 1),    # rows past 32 columns, 20 of them
    ([56, 56], [17, 17], [8, 8], True, 1, 4, 2),    # stage 1: bands of 32 and 24 rows, 186 KiB
    ([56, 56], [31, 31], [15, 15], True, 1, 4, 2),  # a window of 31: 189 KiB
    ([257, 9], [5, 5], [2, 2], False, 0, 0, 0),     # past 256 rows
])
def test_plane_corr_tf32_plan(size, window, padding, ok, images, mt, bands):
    """float32's small-plane correlation: k-steps of 8 (one float32 a word), so half the rows a job of the 16-bit
    kernel's registers hold; images a job as many as those fit, and taller planes in bands of those rows (ConvNeXt-T's
    stage 1 within an H100's or H200's 227 KiB a block, one block an SM)."""
    x = torch.randn(16, 8, *size)
    w, p, _ = random_taps(2, 8, 1, 5, window, spread=1.4, dtype=torch.float32)
    plans = E.window_plans(x, w, p, window, [1, 1], padding, "bilinear")
    assert bool(plans[8]) == ok
    if ok:
        assert (plans[10], plans[13], plans[20]) == (images, mt, bands)
        assert plans[9] <= (113 if mt < 4 else 227) * 1024


@pytest.mark.parametrize("dtype,size,window,padding,N", [
    (torch.float32, [56, 56], [17, 17], [8, 8], 5),   # stage 1's bands of 32 and 24 rows
    (torch.float32, [40, 20], [9, 5], [4, 2], 7),     # bands of 32 and 8
    (torch.bfloat16, [70, 40], [9, 17], [4, 8], 3),   # bands of 64 and 6
])
def test_plane_corr_bands_split_between_slabs(monkeypatch, dtype, size, window, padding, N):
    """Banded planes whose images do not divide evenly between the emulated grid's 2 slabs: a slab takes whole
    images (an image's bands share its staged output gradient), so every band is computed once and the bias summed
    once an image; against the float64 oracle."""
    case = dict(size=size, window=window, padding=padding)
    x, w, p = _window_case_inputs(case, "contiguous", dtype, "bilinear", N=N)
    assert E.window_plans(x, w, p, window, [1, 1], padding, "bilinear")[20] == 2
    _band_case(monkeypatch, dtype, case, N)


def _band_case(monkeypatch, dtype, case, N):
    """A case's correlation on the small-plane kernel (float32 as 3xTF32), checked against the float64 oracle."""
    var = "DCLS_CONVERT_CUDA_TF32" if dtype == torch.float32 else "DCLS_CONVERT_CUDA_PLANE"
    assert _corr_case(monkeypatch, case, "contiguous", dtype, "bilinear", N, var, "corr") == ["plane_corr",
                                                                                               "window_corr_finish"]


@pytest.mark.parametrize("dtype,size,window,padding,N", [
    (torch.float32, [158, 16], [56, 3], [0, 2], 1),      # 5 bands of 32 (narrow float32: 64 rows a job)
    (torch.bfloat16, [66, 27], [63, 63], [0, 31], 20),   # 2 bands of 64
])
def test_plane_corr_reads_stay_in_their_region(monkeypatch, dtype, size, window, padding, N):
    """Tall windows without padding above read the output gradient farthest past its last column (rows past the
    last band's, masked): the emulation's index checks (DCLS_EMULATION_CHECK) hold every read inside its channel's
    region, where one past it would return finite values a masked product hides from the oracle."""
    _band_case(monkeypatch, dtype, dict(size=size, window=window, padding=padding), N)


@pytest.mark.parametrize("size,window,padding,N,C", [
    ([7, 7], [17, 17], [8, 8], 18, 16),
    ([14, 14], [17, 17], [8, 8], 5, 24),
    ([28, 28], [17, 17], [8, 8], 2, 8),
    ([20, 56], [17, 17], [8, 8], 2, 16),
])
def test_plane_corr_tf32_vector_staging_changes_no_bit(monkeypatch, size, window, padding, N, C):
    """float32 channels_last with 8k channels stages a pixel's 8 channels in two 16-byte loads of 4; one element
    per load (DCLS_CONVERT_CUDA_MMA_STAGING=scalar) stages the same values: gradients bitwise equal."""
    x = torch.randn(N, C, *size).contiguous(memory_format=torch.channels_last)
    w, p, _ = random_taps(2, C, 1, 6, window, spread=1.4, dtype=torch.float32)
    g = torch.randn(x.shape[:2] + tuple(s + 2 * q - L + 1 for s, q, L in zip(size, padding, window)))
    g = g.contiguous(memory_format=torch.channels_last)
    monkeypatch.setenv("DCLS_CONVERT_CUDA_TF32", "corr")
    runs = []
    for staging, vec in (("", True), ("scalar", False)):
        monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA_STAGING", staging)
        assert bool(E.window_plans(x, w, p, window, [1, 1], padding, "bilinear")[19]) == vec
        E.take_kernels()
        runs.append(E.taps_conv_backward(g, x, w, p, window, [1, 1], padding, "bilinear", [False, True, True, True]))
        assert E.take_kernels() == ["plane_corr", "window_corr_finish"]
    assert all(torch.equal(a, e) for a, e in zip(*runs))


@pytest.mark.parametrize("tf32,plane,mma,kernel", [
    ("corr", None, None, "plane_corr"),
    ("all", None, None, "plane_corr"),
    ("corr", "none", None, "window_corr"),   # the rows' 3xTF32 correlation
    ("corr", "conv", None, "window_corr"),
    ("corr", None, "none", "tiled_corr"),    # the tensor cores off
    ("conv", None, None, "tiled_corr"),
    (None, "all", None, "tiled_corr"),       # DCLS_CONVERT_CUDA_PLANE alone never moves float32
])
def test_plane_corr_tf32_switch(monkeypatch, tf32, plane, mma, kernel):
    """float32's small planes take the 3xTF32 plane correlation where DCLS_CONVERT_CUDA_TF32 opts the correlation
    in, unless DCLS_CONVERT_CUDA_PLANE (the rows' kernel then) or DCLS_CONVERT_CUDA_MMA keeps it off."""
    for var, value in (("DCLS_CONVERT_CUDA_TF32", tf32), ("DCLS_CONVERT_CUDA_PLANE", plane),
                       ("DCLS_CONVERT_CUDA_MMA", mma)):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)
    x = torch.randn(2, 8, 7, 7)
    w, p, _ = random_taps(2, 8, 1, 34, [17, 17], spread=1.4, dtype=torch.float32)
    out = E.taps_conv(x, w, p, None, [17, 17], [1, 1], [8, 8], "bilinear")
    E.take_kernels()
    E.taps_conv_backward(torch.randn(out.shape), x, w, p, [17, 17], [1, 1], [8, 8], "bilinear",
                         [False, True, True, True])
    assert kernel in E.take_kernels()


@pytest.mark.parametrize("plane,mma,conv,corr", [
    ("corr", None, False, True),
    ("all", None, True, True),
    ("conv", None, True, False),
    ("all", "none", False, False),  # DCLS_CONVERT_CUDA_MMA keeps the tensor cores off
    ("all", "corr", False, True),
])
def test_plane_switch_parts(monkeypatch, plane, mma, conv, corr):
    """DCLS_CONVERT_CUDA_PLANE picks the parts (conv: forward and input gradient; corr: weight and position
    gradients; all), and DCLS_CONVERT_CUDA_MMA can still keep a part off the tensor cores."""
    monkeypatch.setenv("DCLS_CONVERT_CUDA_PLANE", plane)
    if mma is None:
        monkeypatch.delenv("DCLS_CONVERT_CUDA_MMA", raising=False)
    else:
        monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA", mma)
    x = torch.randn(2, 8, 7, 7).bfloat16()
    w, p, _ = random_taps(2, 8, 1, 34, [17, 17], spread=1.4, dtype=torch.float32)
    E.take_kernels()
    out = E.taps_conv(x, w, p, None, [17, 17], [1, 1], [8, 8], "bilinear")
    E.taps_conv_backward(torch.randn(out.shape).bfloat16(), x, w, p, [17, 17], [1, 1], [8, 8], "bilinear", [True] * 4)
    kernels = E.take_kernels()
    assert kernels.count("window_plane") == (2 if conv else 0)
    assert ("plane_corr" in kernels) == corr


@pytest.fixture
def truncating_mma():
    """The emulated mma rounding each product's sum toward zero, as the tensor cores do (set_mma_rounding), for
    the duration of a test."""
    E.set_mma_rounding("zero")
    yield
    E.set_mma_rounding("nearest")


@pytest.mark.parametrize("size,window,padding,kernels", [
    ([56, 56], [17, 17], [8, 8], ["window_plane", "plane_corr"]),   # ConvNeXt-T stage 1: strips, bands of rows
    ([14, 14], [17, 17], [8, 8], ["window_plane", "plane_corr"]),   # stage 3
    ([20, 80], [17, 17], [8, 8], ["window_corr"]),  # rows past 64 columns: the rows' correlation (the tables' forward)
])
def test_float32_tensor_cores_within_device_tolerance_when_sums_truncate(monkeypatch, truncating_mma, size, window,
                                                                        padding, kernels):
    """The card's tensor cores round an mma's float32 sum toward zero, which the emulation's default (each product
    added in turn, to nearest) does not show. With every mma of float32's 3xTF32 kernels (DCLS_CONVERT_CUDA_TF32=all)
    rounding that way, every gradient still meets the device tests' tolerances (tests/test_cuda.py: 3e-5 for the
    forward and input gradient, 1e-4 for the weight, position and bias gradients) against the float64 oracle, and
    the weight gradient differs from the default rounding's (the switch took effect)."""
    monkeypatch.setenv("DCLS_CONVERT_CUDA_TF32", "all")
    x = torch.randn(2, 8, *size).contiguous(memory_format=torch.channels_last)
    w, p, _ = random_taps(2, 8, 1, 34, window, spread=1.4, dtype=torch.float32)
    b = torch.randn(8)
    args = (window, [1, 1], padding, "bilinear")
    out = E.taps_conv(x, w, p, b, *args)
    g = torch.randn(out.shape).contiguous(memory_format=torch.channels_last)
    E.take_kernels()
    grads = E.taps_conv_backward(g, x, w, p, *args, [True, True, True, True])
    assert [k for k in E.take_kernels() if k in kernels] == kernels
    leaves = [t.double().requires_grad_() for t in (x, w, p, b)]
    y = reference.taps_conv(*leaves, *args)
    want = (y.detach(), *torch.autograd.grad(y, leaves, g.double()))
    for got, e, tol in zip((out, *grads), want, (3e-5, 3e-5, 1e-4, 1e-4, 1e-4)):
        assert max_rel(got.double(), e) < tol
    E.set_mma_rounding("nearest")
    assert not torch.equal(grads[1], E.taps_conv_backward(g, x, w, p, *args, [False, True, False, False])[1])
