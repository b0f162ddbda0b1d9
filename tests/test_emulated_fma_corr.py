"""The FMA correlation (weight, position and bias gradients over the whole window, window_fma_corr.h), driven on
CPU block by block and thread by thread over the whole grid, against the float64 oracle."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dcls_convert.ops import reference
from emulation import emulation_ops
from helpers import draw_stride1_layer, max_rel, random_taps

E = emulation_ops()


@pytest.fixture(autouse=True)
def _tensor_cores_off(monkeypatch):
    """The FMA kernels run where the tensor cores do not (their cost rule would take 16-bit layers here)."""
    monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA", "none")

PLAN_FIELDS = ("ok", "ry", "ny", "nx", "span", "per_warp", "wpc", "splits", "cg", "band", "threads", "smem_bytes")


def _plan(x, w, p, window, padding, stride=None):
    values = E.fma_plan(x, w, p, window, stride or [1] * len(window), padding, "bilinear")
    return dict(zip(PLAN_FIELDS, values))


def _oracle_grads(x, w, p, g, window, padding, interp):
    C = x.shape[1]
    ref = [x.double(), w.double().requires_grad_(), p.double().requires_grad_(),
           torch.zeros(C, dtype=torch.float64, requires_grad=True)]
    y = reference.taps_conv(*ref, window, [1] * len(window), padding, interp)
    return torch.autograd.grad(y, ref[1:], g.double(), allow_unused=True, materialize_grads=True)


def _taps_for(window, interp):
    """Enough taps for the cells-per-entry rule to admit the window (at most 4 padded cells per table entry)."""
    return -(-(window[0] + 8) * (window[1] + 2) // (16 if interp == "bilinear" else 4))


FMA_CASES = [
    dict(size=[20, 23], window=[17, 17], padding=[8, 8]),     # 23 live lanes of 32; two rows of cell blocks
    dict(size=[7, 7], window=[17, 17], padding=[8, 8]),       # stage 4's plane: the window's rim unreached
    dict(size=[9, 40], window=[51, 41], padding=[25, 20]),    # 28 cell blocks: 3 splits; two column passes
    dict(size=[6, 19], window=[5, 5], padding=[0, 4]),        # no padding on one axis, the most on the other
    dict(size=[16, 9], window=[10, 5], padding=[9, 2]),       # padding L - 1: cell rows past the input
    dict(size=[10, 150], window=[17, 9], padding=[8, 4]),     # five column passes
    dict(size=[120, 70], window=[9, 9], padding=[4, 4]),      # float64: two bands of input rows
]

DTYPE_LAYOUT_INTERP = [(torch.float64, "contiguous", "bilinear"), (torch.float32, "channels_last", "bilinear"),
                       (torch.float32, "contiguous", "nearest"), (torch.bfloat16, "channels_last", "bilinear"),
                       (torch.float16, "contiguous", "bilinear")]


@pytest.mark.parametrize("case", FMA_CASES)
@pytest.mark.parametrize("dtype,layout,interp", DTYPE_LAYOUT_INTERP)
def test_fma_corr_matches_oracle(monkeypatch, case, dtype, layout, interp):
    """DCLS_CONVERT_CUDA_FMA=corr: weight, position and bias gradients against the float64 oracle on the same
    input values (to float32 rounding; float64 to 1e-12), in two launches (the correlation and its finish) instead
    of the tables' three (corner table, correlation, finish)."""
    window, padding = case["window"], case["padding"]
    C = 3
    x = torch.randn(2, C, *case["size"]).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    pdtype = torch.float64 if dtype == torch.float64 else torch.float32
    w, p, _ = random_taps(2, C, 1, _taps_for(window, interp), window, spread=1.4, dtype=pdtype)
    if interp == "nearest":
        p = p.round()
    plan = _plan(x, w, p, window, padding)
    assert plan["ok"]
    out = E.taps_conv(x, w, p, None, window, [1, 1], padding, interp)
    g = torch.randn(out.shape).to(dtype)
    if layout == "channels_last":
        g = g.contiguous(memory_format=torch.channels_last)
    monkeypatch.setenv("DCLS_CONVERT_CUDA_FMA", "corr")
    E.take_launches()
    _, gw, gp, gb = E.taps_conv_backward(g, x, w, p, window, [1, 1], padding, interp, [False, True, True, True])
    assert E.take_kernels() == ["fma_corr", "fma_corr_finish"]
    want = _oracle_grads(x, w, p, g, window, padding, interp)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert max_rel(gw.double(), want[0]) < tol
    assert max_rel(gb.double(), want[2]) < tol
    if interp == "bilinear":
        assert max_rel(gp.double(), want[1]) < tol
    else:
        assert not gp.any()


@pytest.mark.parametrize("size,C,dtype,want", [
    # ConvNeXt-T stage 1 (56x56, window 17): 2 x 6 blocks of 9 x 3 cells, a warp each, one channel per block,
    # every row in one band
    ([56, 56], 4, torch.float32, dict(ry=9, ny=2, nx=6, span=32, per_warp=1, wpc=12, splits=1, cg=1, band=56)),
    # stage 4 (7x7): 13 x 13 cells reach the plane: 2 x 5 blocks of 7 x 3, four to a warp of 8-lane groups
    ([7, 7], 8, torch.float32, dict(ry=7, ny=2, nx=5, span=8, per_warp=4, wpc=3, splits=1, cg=4, band=7)),
    # rows that do not fit the shared memory target: bands
    ([300, 100], 1, torch.float64, dict(ry=9, ny=1, nx=3, span=32, per_warp=1, wpc=3, splits=1, cg=1, band=55)),
])
def test_fma_corr_plans(size, C, dtype, want):
    """The plans at ConvNeXt-T's first and last stage planes and a plane taller than the shared memory target."""
    window = [9, 9] if size[0] == 300 else [17, 17]
    padding = [L // 2 for L in window]
    x = torch.randn(1, C, *size).to(dtype)
    w, p, _ = random_taps(2, C, 1, 34, window, spread=1.4, dtype=dtype)
    plan = _plan(x, w, p, window, padding)
    assert plan["ok"] and plan["threads"] == 32 * plan["wpc"] * plan["cg"] <= 384
    assert plan["smem_bytes"] <= 96 * 1024
    assert {k: plan[k] for k in want} == want


def test_fma_corr_splits_wide_windows():
    """A window whose cell blocks outnumber a block's 12 warps is split over blocks of one channel each; a window
    past 64 per axis keeps the tables."""
    x = torch.randn(1, 2, 9, 40)
    w, p, _ = random_taps(2, 2, 1, 60, [51, 41], spread=1.4, dtype=torch.float32)
    plan = _plan(x, w, p, [51, 41], [25, 20])
    assert plan["ok"] and (plan["ny"], plan["nx"], plan["wpc"], plan["splits"], plan["cg"]) == (2, 14, 12, 3, 1)
    x = torch.randn(1, 2, 70, 70)
    w, p, _ = random_taps(2, 2, 1, 2000, [65, 65], spread=1.4, dtype=torch.float32)
    assert not _plan(x, w, p, [65, 65], [32, 32])["ok"]


@pytest.mark.parametrize("K,interp,ok", [(34, "bilinear", True), (20, "bilinear", False), (81, "nearest", True),
                                         (80, "nearest", False)])
def test_fma_corr_taken_for_enough_taps(K, interp, ok):
    """Window 17 at a 56x56 plane: 18 x 18 padded cells against the tables' 4K entries (bilinear) or K (nearest):
    the whole window is taken at up to 4 cells per entry (324 <= 4 x 4 x 34; 4 x 81), else the tables."""
    x = torch.randn(1, 2, 56, 56)
    w, p, _ = random_taps(2, 2, 1, K, [17, 17], spread=1.4, dtype=torch.float32)
    values = E.fma_plan(x, w, p, [17, 17], [1, 1], [8, 8], interp)
    assert bool(values[0]) == ok


@pytest.mark.parametrize("size,window,stride,padding,why", [
    ([12, 12], [7, 7], [2, 1], [3, 3], "strided"),
    ([40], [9], [1], [4], "1-D: one row of cells"),
    ([12, 1], [7, 3], [1, 1], [3, 1], "one column of cells reaches the input"),
    ([12, 12], [7, 7], [1, 1], [7, 3], "padding past the window"),
])
def test_fma_corr_applies_only_where_it_can(monkeypatch, size, window, stride, padding, why):
    """Where the FMA correlation does not apply, the tables' correlation runs (corner table, correlation,
    finish), whatever DCLS_CONVERT_CUDA_FMA says."""
    D = len(window)
    x = torch.randn(2, 3, *size)
    w, p, _ = random_taps(D, 3, 1, 40, window, spread=1.4, dtype=torch.float32)
    assert not _plan(x, w, p, window, padding, stride)["ok"], why
    out = E.taps_conv(x, w, p, None, window, stride, padding, "bilinear")
    monkeypatch.setenv("DCLS_CONVERT_CUDA_FMA", "corr")
    E.take_launches()
    E.taps_conv_backward(torch.randn(out.shape), x, w, p, window, stride, padding, "bilinear",
                         [False, True, True, False])
    assert E.take_kernels() == ["tables", "tiled_corr", "tiled_corr_finish"]


def test_fma_corr_is_opt_in(monkeypatch):
    """Unset, or set for the forward only ("conv"), the tables' correlation runs."""
    x = torch.randn(2, 3, 20, 20)
    w, p, _ = random_taps(2, 3, 1, 34, [17, 17], spread=1.4, dtype=torch.float32)
    out = E.taps_conv(x, w, p, None, [17, 17], [1, 1], [8, 8], "bilinear")
    g = torch.randn(out.shape)
    for value in (None, "conv"):
        if value is None:
            monkeypatch.delenv("DCLS_CONVERT_CUDA_FMA", raising=False)
        else:
            monkeypatch.setenv("DCLS_CONVERT_CUDA_FMA", value)
        E.take_launches()
        E.taps_conv_backward(g, x, w, p, [17, 17], [1, 1], [8, 8], "bilinear", [False, True, True, False])
        assert E.take_kernels() == ["tables", "tiled_corr", "tiled_corr_finish"]


@pytest.mark.parametrize("mask", [[False, True, False, False], [False, False, True, False],
                                  [False, False, False, True], [True, True, True, True]])
def test_fma_corr_masks(monkeypatch, mask):
    """Only the gradients asked for come back, each equal to the full run's: bitwise (the same sums), except the
    bias gradient alone, which needs no correlation and is summed otherwise (to rounding)."""
    x = torch.randn(2, 4, 15, 18)
    w, p, _ = random_taps(2, 4, 1, 12, [11, 13], spread=1.4, dtype=torch.float32)
    out = E.taps_conv(x, w, p, None, [11, 13], [1, 1], [5, 6], "bilinear")
    g = torch.randn(out.shape)
    monkeypatch.setenv("DCLS_CONVERT_CUDA_FMA", "corr")
    full = E.taps_conv_backward(g, x, w, p, [11, 13], [1, 1], [5, 6], "bilinear", [True] * 4)
    got = E.taps_conv_backward(g, x, w, p, [11, 13], [1, 1], [5, 6], "bilinear", mask)
    for wanted, a, f in zip(mask, got, full):
        if wanted and mask[1:3] == [False, False]:
            torch.testing.assert_close(a, f, rtol=1e-5, atol=1e-5)
        elif wanted:
            assert torch.equal(a, f)
        else:
            assert a.numel() == 0 or not a.any()


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_fma_corr_random_shapes(data):
    """Random stride-1 shapes (windows to 30, paddings inside the window, planes to 40 past the window, up to 10
    channels, either memory format) in float64 against the oracle; where the plan does not apply the tables run,
    so both paths are checked."""
    x, w, p, window, padding = draw_stride1_layer(data, max_taps=40)
    out = E.taps_conv(x, w, p, None, window, [1, 1], padding, "bilinear")
    g = torch.randn(out.shape, dtype=torch.float64)
    with pytest.MonkeyPatch.context() as m:
        m.setenv("DCLS_CONVERT_CUDA_FMA", "corr")
        _, gw, gp, gb = E.taps_conv_backward(g, x, w, p, window, [1, 1], padding, "bilinear",
                                             [False, True, True, True])
    want = _oracle_grads(x, w, p, g, window, padding, "bilinear")
    for a, e in zip((gw, gp, gb), want):
        assert max_rel(a, e) < 1e-12
