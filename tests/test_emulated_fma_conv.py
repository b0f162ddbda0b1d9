"""The FMA convolution (forward and input gradient over the whole window, window_fma_conv.h), driven on CPU block
by block and thread by thread over the whole grid, against the float64 oracle."""
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

CONV_FIELDS = ("ok", "ro", "ry", "ny", "ew", "span", "per_warp", "cg", "bj", "warps", "smem_bytes", "transposed")


def _plan(x, w, p, window, padding, stride=None, interp="bilinear"):
    values = E.fma_plan(x, w, p, window, stride or [1] * len(window), padding, interp)
    return dict(zip(CONV_FIELDS, values[12:]))


def _taps_for(window, interp):
    """Enough taps for the cells-per-entry rule to admit the window (at most 3 padded cells per table entry)."""
    return -(-(window[0] + 8) * window[1] // (12 if interp == "bilinear" else 3))


FMA_CONV_CASES = [
    dict(size=[20, 23], window=[17, 17], padding=[8, 8]),     # one row block of 32 rows, 23 of 32 lanes
    dict(size=[7, 7], window=[17, 17], padding=[8, 8]),       # stage 4's plane: 13 x 13 cells, 4 tasks a warp
    dict(size=[56, 40], window=[17, 17], padding=[8, 8]),     # two row blocks of 32, two column passes
    dict(size=[6, 19], window=[5, 5], padding=[0, 4]),        # no padding on one axis, the most on the other
    dict(size=[16, 9], window=[10, 5], padding=[9, 2]),       # padding L - 1
    dict(size=[14, 150], window=[17, 9], padding=[8, 4]),     # five column passes, rows of 16
    dict(size=[300, 100], window=[9, 9], padding=[4, 4]),     # float64: row blocks in several jobs (bands)
]


@pytest.mark.parametrize("case", FMA_CONV_CASES)
@pytest.mark.parametrize("dtype,layout,interp", [(torch.float64, "contiguous", "bilinear"),
                                                 (torch.float32, "channels_last", "bilinear"),
                                                 (torch.float32, "contiguous", "nearest")])
def test_fma_conv_matches_oracle(monkeypatch, case, dtype, layout, interp):
    """DCLS_CONVERT_CUDA_FMA=conv: the output (with bias) and the input gradient against the float64 oracle (float64
    to 1e-12, float32 to 1e-5), the window summed in the accumulation type; two launches each (the window and the
    convolution), the memory format kept (channels_last outputs up to 32 wide stored through shared memory)."""
    window, padding = case["window"], case["padding"]
    C = 3
    x = torch.randn(2, C, *case["size"], dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w, p, _ = random_taps(2, C, 1, _taps_for(window, interp), window, spread=1.4, dtype=dtype)
    if interp == "nearest":
        p = p.round()
    b = torch.randn(C, dtype=dtype)
    plan = _plan(x, w, p, window, padding, interp=interp)
    assert plan["ok"]
    # channels_last outputs of one column pass per thread (up to 32 wide) are stored through shared memory
    assert plan["transposed"] == (layout == "channels_last" and case["size"][1] <= 32 and plan["cg"] > 1)
    monkeypatch.setenv("DCLS_CONVERT_CUDA_FMA", "conv")
    E.take_launches()
    out = E.taps_conv(x, w, p, b, window, [1, 1], padding, interp)
    assert E.take_kernels() == ["fma_window", "fma_conv"]
    assert out.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    g = torch.randn(out.shape, dtype=dtype)
    gin = E.taps_conv_backward(g, x, w, p, window, [1, 1], padding, interp, [True, False, False, False])[0]
    assert E.take_kernels() == ["fma_window", "fma_conv"]
    ref = [x.double().requires_grad_(), w.double(), p.double(), b.double()]
    y = reference.taps_conv(*ref, window, [1, 1], padding, interp)
    want, = torch.autograd.grad(y, ref[0], g.double())
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert max_rel(out.double(), y.detach()) < tol
    assert max_rel(gin.double(), want) < tol


@pytest.mark.parametrize("size,C,want", [
    # ConvNeXt-T stage 1: two blocks of 32 rows, 9-row blocks of cells, 4 channels a job (96 KiB)
    ([56, 56], 96, dict(ro=32, ry=9, ny=2, ew=17, span=32, per_warp=1, cg=4, bj=2, warps=8)),
    # stage 3: one block of 16 rows, two tasks a warp of 16-lane groups
    ([14, 14], 384, dict(ro=16, ry=9, ny=2, ew=17, span=16, per_warp=2, bj=1)),
    # stage 4: 13 x 13 cells reach the plane, four tasks a warp
    ([7, 7], 768, dict(ro=8, ry=7, ny=2, ew=13, span=8, per_warp=4, bj=1)),
])
def test_fma_conv_plans(size, C, want):
    """The plans at ConvNeXt-T's stage planes (window 17, K = 34): at most 12 warps and the 96 KiB target."""
    x = torch.randn(1, C, *size)
    w, p, _ = random_taps(2, C, 1, 34, [17, 17], spread=1.4, dtype=torch.float32)
    plan = _plan(x, w, p, [17, 17], [8, 8])
    assert plan["ok"] and plan["warps"] <= 12 and plan["smem_bytes"] <= 96 * 1024
    assert {k: plan[k] for k in want} == want


@pytest.mark.parametrize("dtype,size,window,stride,padding,K,why", [
    (torch.bfloat16, [12, 12], [7, 7], [1, 1], [3, 3], 20, "16-bit: the tensor cores' or the tables'"),
    (torch.float32, [12, 12], [7, 7], [2, 1], [3, 3], 20, "strided"),
    (torch.float32, [40], [9], [1], [4], 20, "1-D"),
    (torch.float32, [56, 56], [17, 17], [1, 1], [8, 8], 25, "too few taps for the window: 306 cells > 3 x 100"),
])
def test_fma_conv_applies_only_where_it_can(monkeypatch, dtype, size, window, stride, padding, K, why):
    """Where the FMA convolution does not apply, the tables' forward runs (table, forward), whatever
    DCLS_CONVERT_CUDA_FMA says."""
    D = len(window)
    x = torch.randn(2, 3, *size).to(dtype)
    w, p, _ = random_taps(D, 3, 1, K, window, spread=1.4, dtype=torch.float32)
    assert not _plan(x, w, p, window, padding, stride)["ok"], why
    monkeypatch.setenv("DCLS_CONVERT_CUDA_FMA", "conv")
    E.take_launches()
    E.taps_conv(x, w, p, None, window, stride, padding, "bilinear")
    assert E.take_kernels() == ["tables", "tiled_forward"]


def test_fma_all_runs_every_part(monkeypatch):
    """DCLS_CONVERT_CUDA_FMA=all: the forward (2 launches) and the whole backward (window + convolution,
    correlation + finish: 4) by FMA, equal to the parts run alone (bitwise: the same kernels)."""
    x = torch.randn(2, 4, 20, 20)
    w, p, _ = random_taps(2, 4, 1, 40, [17, 17], spread=1.4, dtype=torch.float32)
    b = torch.randn(4)
    monkeypatch.setenv("DCLS_CONVERT_CUDA_FMA", "all")
    E.take_launches()
    out = E.taps_conv(x, w, p, b, [17, 17], [1, 1], [8, 8], "bilinear")
    g = torch.randn(out.shape)
    both = E.taps_conv_backward(g, x, w, p, [17, 17], [1, 1], [8, 8], "bilinear", [True] * 4)
    assert E.take_kernels() == ["fma_window", "fma_conv"] * 2 + ["fma_corr", "fma_corr_finish"]
    parts = []
    for part in ("conv", "corr"):
        monkeypatch.setenv("DCLS_CONVERT_CUDA_FMA", part)
        parts.append(E.taps_conv_backward(g, x, w, p, [17, 17], [1, 1], [8, 8], "bilinear", [True] * 4))
    assert torch.equal(both[0], parts[0][0])
    assert all(torch.equal(a, e) for a, e in zip(both[1:], parts[1][1:]))


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_fma_conv_random_shapes(data):
    """Random stride-1 shapes (windows to 30, paddings inside the window, planes to 40 past the window, either
    memory format, with or without bias) in float64 against the oracle; where the plan does not apply the tables
    run, so both paths are checked."""
    x, w, p, window, padding = draw_stride1_layer(data, max_taps=80)
    C = x.shape[1]
    b = torch.randn(C, dtype=torch.float64) if data.draw(st.booleans()) else None
    with pytest.MonkeyPatch.context() as m:
        m.setenv("DCLS_CONVERT_CUDA_FMA", "conv")
        out = E.taps_conv(x, w, p, b, window, [1, 1], padding, "bilinear")
        g = torch.randn(out.shape, dtype=torch.float64)
        gin = E.taps_conv_backward(g, x, w, p, window, [1, 1], padding, "bilinear", [True, False, False, False])[0]
    ref = x.double().requires_grad_()
    y = reference.taps_conv(ref, w, p, b, window, [1, 1], padding, "bilinear")
    want, = torch.autograd.grad(y, ref, g)
    assert max_rel(out, y.detach()) < 1e-12
    assert max_rel(gin, want) < 1e-12


@pytest.mark.parametrize("part,kernels", [
    ("conv", ["tables", "fma_window", "fma_conv", "tiled_corr", "tiled_corr_finish"]),
    ("corr", ["tables", "tiled_forward", "fma_corr", "fma_corr_finish"]),
])
def test_fma_one_part_with_the_tables(monkeypatch, part, kernels):
    """One part by FMA, the other by the tables: the backward's launches in order (5 or 4), and its gradients
    equal to the tables' to float32 rounding."""
    x = torch.randn(2, 4, 20, 20)
    w, p, _ = random_taps(2, 4, 1, 40, [17, 17], spread=1.4, dtype=torch.float32)
    g = torch.randn(2, 4, 20, 20)
    monkeypatch.setenv("DCLS_CONVERT_CUDA_FMA", part)
    E.take_launches()
    got = E.taps_conv_backward(g, x, w, p, [17, 17], [1, 1], [8, 8], "bilinear", [True, True, True, False])
    assert E.take_kernels() == kernels
    monkeypatch.delenv("DCLS_CONVERT_CUDA_FMA")
    want = E.taps_conv_backward(g, x, w, p, [17, 17], [1, 1], [8, 8], "bilinear", [True, True, True, False])
    for a, e in zip(got[:3], want[:3]):
        assert max_rel(a, e) < 1e-5


def test_fma_conv_input_gradient_with_padding_past_the_window(monkeypatch):
    """Padding past the window (p > L - 1): the forward keeps the tables (its padding is outside the plan), the
    input gradient's own padding L - 1 - p is negative and runs on the FMA convolution, equal to the oracle."""
    x = torch.randn(2, 3, 12, 13, dtype=torch.float64)
    w, p, _ = random_taps(2, 3, 1, 40, [9, 9], spread=1.4)
    padding = [10, 12]
    monkeypatch.setenv("DCLS_CONVERT_CUDA_FMA", "conv")
    E.take_launches()
    out = E.taps_conv(x, w, p, None, [9, 9], [1, 1], padding, "bilinear")
    assert E.take_kernels() == ["tables", "tiled_forward"]
    g = torch.randn(out.shape, dtype=torch.float64)
    gin = E.taps_conv_backward(g, x, w, p, [9, 9], [1, 1], padding, "bilinear", [True, False, False, False])[0]
    assert E.take_kernels() == ["fma_window", "fma_conv"]
    ref = x.clone().requires_grad_()
    want, = torch.autograd.grad(reference.taps_conv(ref, w, p, None, [9, 9], [1, 1], padding, "bilinear"), ref, g)
    assert max_rel(gin, want) < 1e-12
