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
    out = ops.construct(leaves[0], leaves[1], leaves[2] if s is not None else None, window, interp)
    ref_leaves = [t.clone().requires_grad_() for t in (w, p)] + ([s.clone().requires_grad_()] if s is not None else [])
    want = reference.construct(ref_leaves[0], ref_leaves[1], ref_leaves[2] if s is not None else None, window, interp)
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
    pos_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # positions in the accumulation type
    leaves = [x.to("cuda", dtype).requires_grad_(), w.to("cuda", dtype).requires_grad_(),
              p.to("cuda", pos_dtype).requires_grad_(), b.to("cuda", dtype).requires_grad_()]
    out = ops.taps_conv(*leaves, window, stride, padding)
    ref = [t.clone().requires_grad_() for t in (x, w, p, b)]
    want = reference.taps_conv(*ref, window, stride, padding)
    assert max_rel(out.double().cpu(), want) < tol
    g = torch.randn_like(want)
    for a, e in zip(torch.autograd.grad(out, leaves, g.to("cuda", dtype)), torch.autograd.grad(want, ref, g)):
        assert max_rel(a.double().cpu(), e) < 10 * tol


@pytest.mark.parametrize("dtype,channels_last,mma", [(torch.float32, False, None), (torch.bfloat16, True, None),
                                                     (torch.bfloat16, True, "none")])
def test_taps_conv_cuda_deterministic(monkeypatch, dtype, channels_last, mma):
    """ConvNeXt-T stage 1 (64x96x56x56, window 17, K=34): two backward passes are bitwise equal (the bias
    gradient too: the correlation sums it in a fixed order), bfloat16 on the tensor cores (the default there) and
    on the tables' kernels."""
    if mma is None:
        monkeypatch.delenv("DCLS_CONVERT_CUDA_MMA", raising=False)
    else:
        monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA", mma)
    x = torch.randn(64, 96, 56, 56, device="cuda", dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, p, _ = random_taps(2, 96, 1, 34, [17, 17], dtype=torch.float32, device="cuda")
    w, b = w.to(dtype), torch.randn(96, device="cuda", dtype=dtype)
    grads = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (x, w, p, b)]
        ops.taps_conv(*leaves, [17, 17], [1, 1], [8, 8]).float().square().sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def _dense_oracle(x, w, p, window, stride, padding):
    kernel = ops.construct(w.double(), p.double(), None, window)
    conv = F.conv2d if len(window) == 2 else F.conv1d
    return conv(x.double(), kernel, stride=stride, padding=padding, groups=x.shape[1])


@pytest.mark.parametrize("shape,window", [((4, 96, 56, 56), 17), ((4, 96, 56, 56), 51), ((4, 192, 28, 28), 17),
                                          ((4, 384, 14, 14), 17), ((8, 768, 7, 7), 17), ((2, 16, 1, 300), 31)])
@pytest.mark.parametrize("dtype,channels_last,mma", [(torch.float32, False, None), (torch.bfloat16, True, None),
                                                     (torch.bfloat16, True, "none"), (torch.float16, False, None),
                                                     (torch.bfloat16, True, "plane"), (torch.float16, False, "plane"),
                                                     (torch.float32, True, "tf32")])
@pytest.mark.parametrize("on_grid", [False, True])
def test_taps_conv_cuda_stage_shapes(monkeypatch, shape, window, dtype, channels_last, mma, on_grid):
    """The tiled engine at the ConvNeXt stage shapes and large windows, every gradient, against the dense oracle
    (float64 convolution of the constructed kernel on the device): 16-bit layers as the cost rule runs them (the
    tensor cores at the large planes), bfloat16 on the tables' kernels alone (DCLS_CONVERT_CUDA_MMA=none), with
    the small-plane kernels where they apply (DCLS_CONVERT_CUDA_PLANE=all), and float32 channels_last on tensor
    cores as 3xTF32 (DCLS_CONVERT_CUDA_TF32=all: the strips, and the correlation on small planes or rows)."""
    monkeypatch.delenv("DCLS_CONVERT_CUDA_PLANE", raising=False)
    monkeypatch.delenv("DCLS_CONVERT_CUDA_TF32", raising=False)
    if mma == "tf32":
        monkeypatch.delenv("DCLS_CONVERT_CUDA_MMA", raising=False)
        monkeypatch.setenv("DCLS_CONVERT_CUDA_TF32", "all")
    elif mma is None:
        monkeypatch.delenv("DCLS_CONVERT_CUDA_MMA", raising=False)
    elif mma == "plane":
        monkeypatch.delenv("DCLS_CONVERT_CUDA_MMA", raising=False)
        monkeypatch.setenv("DCLS_CONVERT_CUDA_PLANE", "all")
    else:
        monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA", mma)
    N, C, H, W = shape
    Lh = 1 if H == 1 else window
    win, pad = [Lh, window], [Lh // 2, window // 2]
    x = torch.randn(N, C, H, W, device="cuda").to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, p, _ = random_taps(2, C, 1, 34, win, dtype=torch.float32, device="cuda")
    if on_grid:
        p = p.round()
    leaves = [x.requires_grad_(), w.to(dtype).requires_grad_(), p.requires_grad_()]
    y = ops.taps_conv(*leaves, None, win, [1, 1], pad)
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    ref = [t.detach().double().requires_grad_() for t in leaves]
    want = _dense_oracle(*ref, win, [1, 1], pad)
    # float32 as 3xTF32: the card's tensor cores round their float32 sums toward zero, about 2e-6 of the largest
    # output at stage 1 in the emulation (test_float32_tensor_cores_within_device_tolerance_when_sums_truncate); a
    # wrong index shows at 1e-3 or more
    tol = {torch.float32: 3e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}[dtype]
    assert max_rel(y.double(), want) < tol
    g = torch.randn_like(want)
    for a, e in zip(torch.autograd.grad(y, leaves, g.to(dtype)), torch.autograd.grad(want, ref, g)):
        assert max_rel(a.double(), e) < 10 * tol


@pytest.mark.parametrize("stride", [[1, 1], [2, 3]])  # strided: the input gradient by stride phases
def test_taps_conv_cuda_tiled_matches_gather(monkeypatch, stride):
    """The tiled engine and the gather kernels it replaced agree (float64, strided and padded)."""
    x = torch.randn(3, 12, 37, 45, device="cuda", dtype=torch.float64)
    w, p, _ = random_taps(2, 12, 1, 9, [9, 11], device="cuda")
    args = (x, w, p, None, [9, 11], stride, [3, 6])
    outs = []
    for engine in ("", "gather"):
        monkeypatch.setenv("DCLS_CONVERT_CUDA_TAPS", engine)
        leaves = [t.clone().requires_grad_() for t in args[:3]]
        y = ops.taps_conv(*leaves, *args[3:])
        outs.append([y] + list(torch.autograd.grad(y.square().sum(), leaves)))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape,dtype,channels_last", [((8, 96, 56, 56), torch.float32, False),
                                                   ((40, 192, 14, 14), torch.float32, False),
                                                   ((40, 64, 7, 7), torch.bfloat16, True),
                                                   ((8, 96, 56, 56), torch.bfloat16, True),
                                                   ((5, 8, 20, 20), torch.float32, False)])
def test_taps_conv_cuda_tile_choice_changes_no_bit(monkeypatch, shape, dtype, channels_last):
    """Every output sums its bias and table entries in one order whatever the tiles, so the chosen tiles (7 rows,
    fitted widths, image groups, channels_last outputs stored through shared memory) and the first sessions'
    (DCLS_CONVERT_CUDA_TILES=first) give bitwise equal forwards and input gradients with the same (unpaired) tables;
    the weight/position gradients (reductions over tiles) agree to rounding. Staging one load at a time (=one-load)
    and the kernels reading their row pitch at run time (=runtime-pitch) change no bit of anything; paired rows
    change the order of an output's sum."""
    monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA", "none")  # the tables' kernels (16-bit layers: the tensor cores by default)
    x = torch.randn(*shape, device="cuda").to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, p, _ = random_taps(2, shape[1], 1, 34, [17, 17], spread=1.4, device="cuda", dtype=torch.float32)
    b = torch.randn(shape[1], device="cuda")
    args = ([17, 17], [1, 1], [8, 8], "bilinear")
    g = torch.randn_like(ops.taps_conv(x, w, p, b, *args[:3]))
    back = torch.ops.dcls_convert.taps_conv_backward
    runs = []
    for tiles in ("unpaired", "first", "one-load", "runtime-pitch", ""):
        monkeypatch.setenv("DCLS_CONVERT_CUDA_TILES", tiles)
        runs.append([ops.taps_conv(x, w, p, b, *args[:3])] + list(back(g, x, w, p, *args, [True, True, True, False])))
    (y0, gx0, gw0, gp0, _), (y1, gx1, gw1, gp1, _), one_load, runtime_pitch, chosen = runs
    assert torch.equal(y0, y1) and torch.equal(gx0, gx1)  # the same tables, other tiles
    for a, e in ((gw0, gw1), (gp0, gp1)):
        assert max_rel(a.double(), e.double()) < 1e-4
    # loads batched or one at a time: the same values staged, the same results to the bit
    assert all(torch.equal(a, b) for a, b in zip(chosen[:4], one_load[:4]))
    assert all(torch.equal(a, b) for a, b in zip(chosen[:4], runtime_pitch[:4]))
    # paired rows (the default) sum an output's entries in another order: equal to rounding
    for a, e in zip(chosen[:4], runs[0][:4]):
        assert max_rel(a.double(), e.double()) < 1e-4


def _window_layer(shape, window, dtype, channels_last, K=34):
    """A depthwise layer for the tensor-core tests: input, K taps (float32, as under autocast), bias, and
    its window and padding (one row for 1-D shapes)."""
    N, C, H, W = shape
    Lh = 1 if H == 1 else window
    x = torch.randn(N, C, H, W, device="cuda").to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, p, _ = random_taps(2, C, 1, K, [Lh, window], dtype=torch.float32, device="cuda")
    return x, w, p, torch.randn(C, device="cuda"), [Lh, window], [Lh // 2, window // 2]


@pytest.mark.parametrize("shape,window,dtype,channels_last", [((64, 96, 56, 56), 17, torch.bfloat16, True),
                                                          ((8, 192, 28, 28), 17, torch.float16, False),
                                                          ((16, 768, 7, 7), 17, torch.bfloat16, True),
                                                          ((4, 96, 56, 56), 51, torch.bfloat16, True),
                                                          ((4, 40, 14, 14), 9, torch.bfloat16, False),
                                                          ((4, 16, 1, 300), 31, torch.bfloat16, False)])
def test_window_corr_cuda(monkeypatch, shape, window, dtype, channels_last):
    """The tensor-core correlation (DCLS_CONVERT_CUDA_MMA=corr): weight, position and bias gradients against the
    dense float64 oracle and against the tables' correlation, and two runs bitwise equal. The first GPU run of
    its mma fragments: the CPU emulation checks the algorithm under the PTX ISA's fragment layouts, this the card."""
    x, w, p, b, win, pad = _window_layer(shape, window, dtype, channels_last)
    g = torch.randn_like(ops.taps_conv(x, w, p, b, win, [1, 1], pad))
    back = torch.ops.dcls_convert.taps_conv_backward
    args = (win, [1, 1], pad, "bilinear", [False, True, True, True])
    runs = {}
    for mode, env in (("mma", "corr"), ("mma again", "corr"), ("tables", "none")):
        monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA", env)
        runs[mode] = back(g, x, w, p, *args)[1:]
    assert all(torch.equal(a, e) for a, e in zip(runs["mma"], runs["mma again"]))
    ref = [x.double(), w.double().requires_grad_(), p.double().requires_grad_()]
    y = _dense_oracle(*ref, win, [1, 1], pad)
    want = list(torch.autograd.grad(y, ref[1:], g.double())) + [g.double().sum((0, 2, 3))]
    for got, tab, e in zip(runs["mma"], runs["tables"], want):
        assert max_rel(got.double(), e) < 1e-4
        assert max_rel(got.double(), tab.double()) < 1e-4


@pytest.mark.parametrize("shape,window,dtype,channels_last", [((64, 384, 14, 14), 17, torch.bfloat16, True),
                                                          ((64, 768, 7, 7), 17, torch.bfloat16, True),
                                                          ((18, 40, 7, 7), 17, torch.float16, False),
                                                          ((3, 24, 16, 16), 7, torch.bfloat16, True),
                                                          ((5, 8, 1, 12), 9, torch.float16, False),
                                                          ((64, 192, 28, 28), 17, torch.bfloat16, True),
                                                          ((7, 12, 20, 23), 9, torch.float16, False),
                                                          ((64, 96, 56, 56), 17, torch.bfloat16, True),
                                                          ((3, 10, 12, 45), 9, torch.float16, False)])
def test_plane_corr_cuda(monkeypatch, shape, window, dtype, channels_last):
    """Small planes' weight, position and bias gradients as tensor-core products per channel and window row
    (window_plane_corr.h, DCLS_CONVERT_CUDA_PLANE=corr; ConvNeXt-T's four stages among them) against the dense
    float64 oracle and the tables' correlation, two runs bitwise equal, the kernel it names launched."""
    x, w, p, b, win, pad = _window_layer(shape, window, dtype, channels_last)
    _check_plane_corr(monkeypatch, x, w, p, b, win, pad)


def test_plane_corr_more_output_columns_cuda(monkeypatch):
    """12 input columns, 26 output columns (padding 20 of a window 27 wide): the correlation's 2 x 4 tiles with the
    second input-column tile past the plane, not computed."""
    x = torch.randn(3, 8, 6, 12, device="cuda").half()
    w, p, _ = random_taps(2, 8, 1, 20, [3, 27], dtype=torch.float32, device="cuda")
    _check_plane_corr(monkeypatch, x, w, p, torch.randn(8, device="cuda"), [3, 27], [1, 20])


def _check_plane_corr(monkeypatch, x, w, p, b, win, pad):
    g = torch.randn_like(ops.taps_conv(x, w, p, b, win, [1, 1], pad))
    back = torch.ops.dcls_convert.taps_conv_backward
    args = (win, [1, 1], pad, "bilinear", [False, True, True, True])
    runs = {}
    for mode, plane, mma in (("plane", "corr", ""), ("plane again", "corr", ""), ("tables", "", "none")):
        monkeypatch.setenv("DCLS_CONVERT_CUDA_PLANE", plane)
        monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA", mma)
        runs[mode] = back(g, x, w, p, *args)[1:]
    monkeypatch.setenv("DCLS_CONVERT_CUDA_PLANE", "corr")
    monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA", "")
    assert "plane_corr_kernel" in _cuda_kernels(lambda: back(g, x, w, p, *args))
    assert all(torch.equal(a, e) for a, e in zip(runs["plane"], runs["plane again"]))
    ref = [x.double(), w.double().requires_grad_(), p.double().requires_grad_()]
    y = _dense_oracle(*ref, win, [1, 1], pad)
    want = list(torch.autograd.grad(y, ref[1:], g.double())) + [g.double().sum((0, 2, 3))]
    for got, tab, e in zip(runs["plane"], runs["tables"], want):
        assert max_rel(got.double(), e) < 1e-4
        assert max_rel(got.double(), tab.double()) < 1e-4


@pytest.mark.parametrize("shape,window,channels_last", [((64, 96, 56, 56), 17, False),
                                                   ((16, 384, 14, 14), 17, False),
                                                   ((16, 768, 7, 7), 17, True),
                                                   ((4, 40, 14, 14), 9, False)])
def test_window_corr_tf32_cuda(monkeypatch, shape, window, channels_last):
    """float32 weight and position gradients on tensor cores (DCLS_CONVERT_CUDA_TF32=corr, 3xTF32) on rows
    (DCLS_CONVERT_CUDA_PLANE=none: window_corr.h): against the dense float64 oracle to float32's accuracy (one
    tf32 product alone would be ~1e-3 off), against the tables, the window_corr kernel launched (not the tables'),
    and two runs bitwise equal."""
    _check_tf32_corr(monkeypatch, shape, window, channels_last, "none", "window_corr_kernel")


@pytest.mark.parametrize("shape,window,channels_last", [((64, 768, 7, 7), 17, True),
                                                   ((64, 384, 14, 14), 17, False),
                                                   ((64, 192, 28, 28), 17, True),
                                                   ((18, 12, 7, 7), 17, True),
                                                   ((3, 10, 20, 23), 9, False),
                                                   ((4, 16, 20, 56), 17, True),
                                                   ((64, 96, 56, 56), 17, True),
                                                   ((5, 24, 45, 50), 31, False)])
def test_plane_corr_tf32_cuda(monkeypatch, shape, window, channels_last):
    """float32's small-plane weight, position and bias gradients (DCLS_CONVERT_CUDA_TF32=corr:
    window_plane_corr.h as 3xTF32; ConvNeXt-T's stages 1-4, stage 1 in bands of rows, a partial channel group, rows
    past 32 columns, a window taller than the last band): as test_window_corr_tf32_cuda, the plane_corr kernel
    launched."""
    _check_tf32_corr(monkeypatch, shape, window, channels_last, None, "plane_corr_kernel")


def _check_tf32_corr(monkeypatch, shape, window, channels_last, plane, kernel):
    monkeypatch.delenv("DCLS_CONVERT_CUDA_TF32", raising=False)  # (the baseline: the tables)
    monkeypatch.delenv("DCLS_CONVERT_CUDA_PLANE", raising=False)
    x, w, p, b, win, pad = _window_layer(shape, window, torch.float32, channels_last)
    g = torch.randn_like(ops.taps_conv(x, w, p, b, win, [1, 1], pad))
    back = torch.ops.dcls_convert.taps_conv_backward
    args = (win, [1, 1], pad, "bilinear", [False, True, True, True])
    tables = back(g, x, w, p, *args)[1:]
    monkeypatch.setenv("DCLS_CONVERT_CUDA_TF32", "corr")
    if plane is not None:
        monkeypatch.setenv("DCLS_CONVERT_CUDA_PLANE", plane)
    assert kernel in _cuda_kernels(lambda: back(g, x, w, p, *args))
    runs = [back(g, x, w, p, *args)[1:] for _ in range(2)]
    assert all(torch.equal(a, e) for a, e in zip(*runs))
    ref = [x.double(), w.double().requires_grad_(), p.double().requires_grad_()]
    y = _dense_oracle(*ref, win, [1, 1], pad)
    want = list(torch.autograd.grad(y, ref[1:], g.double())) + [g.double().sum((0, 2, 3))]
    for got, tab, e in zip(runs[0], tables, want):
        assert max_rel(got.double(), e) < 1e-4
        assert max_rel(got.double(), tab.double()) < 1e-4


@pytest.mark.parametrize("shape,window,channels_last", [((64, 96, 56, 56), 17, False),
                                                   ((64, 192, 28, 28), 17, True),
                                                   ((64, 384, 14, 14), 17, True),
                                                   ((64, 768, 7, 7), 17, False),
                                                   ((3, 12, 20, 23), 9, True),
                                                   ((18, 8, 1, 60), 31, False)])
def test_window_plane_tf32_cuda(monkeypatch, shape, window, channels_last):
    """float32 forward and input gradient on tensor cores (DCLS_CONVERT_CUDA_TF32=conv: window_plane.h's strips as
    3xTF32; ConvNeXt-T's four stages, 8, 4 and 2 channels a block): against the dense float64 oracle to float32's
    accuracy (one tf32 product alone would be ~1e-3 off), against the tables' forward, the strip kernel launched,
    and two runs bitwise equal."""
    monkeypatch.delenv("DCLS_CONVERT_CUDA_TF32", raising=False)  # (the baseline: the tables)
    x, w, p, b, win, pad = _window_layer(shape, window, torch.float32, channels_last)
    g = torch.randn_like(ops.taps_conv(x, w, p, b, win, [1, 1], pad))
    back = torch.ops.dcls_convert.taps_conv_backward
    args = (win, [1, 1], pad, "bilinear", [True, False, False, False])

    def run():
        return ops.taps_conv(x, w, p, b, win, [1, 1], pad), back(g, x, w, p, *args)[0]

    tables = run()
    monkeypatch.setenv("DCLS_CONVERT_CUDA_TF32", "conv")
    assert "window_strip_kernel" in _cuda_kernels(run)
    runs = [run() for _ in range(2)]
    assert all(torch.equal(a, e) for a, e in zip(*runs))
    xd = x.double().requires_grad_()
    y = _dense_oracle(xd, w, p, win, [1, 1], pad) + b.double().view(-1, 1, 1)
    want = (y.detach(), torch.autograd.grad(y, xd, g.double())[0])
    for got, tab, e in zip(runs[0], tables, want):
        assert max_rel(got.double(), e) < 3e-5  # (3xTF32's sums round toward zero on the card: see above)
        assert max_rel(got.double(), tab.double()) < 3e-5
    assert runs[0][0].is_contiguous(memory_format=torch.channels_last) == channels_last


def _cuda_kernels(fn) -> str:
    """The names of the CUDA kernels fn launches (the profiler's): which path ran."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return " ".join(e.name for e in prof.events())


@pytest.mark.parametrize("shape", [(8, 192, 28, 28), (16, 384, 14, 14)])
def test_window_conv_bands_cuda(monkeypatch, shape):
    """The tensor-core convolution's 16-row bands (stages 2-3 on sm_80 and sm_90, whose shared memory holds them;
    the emulated twin asserts the choice) give bitwise the outputs and input gradients of bands of 8
    (DCLS_CONVERT_CUDA_MMA_BAND=8): the same products summed in the same order, more shared memory."""
    x, w, p, b, win, pad = _window_layer(shape, 17, torch.bfloat16, True)
    g = torch.randn_like(ops.taps_conv(x, w, p, b, win, [1, 1], pad))
    back = torch.ops.dcls_convert.taps_conv_backward
    monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA", "conv")
    runs = []
    for cap in ("", "8"):
        monkeypatch.setenv("DCLS_CONVERT_CUDA_MMA_BAND", cap)
        runs.append((ops.taps_conv(x, w, p, b, win, [1, 1], pad),
                     back(g, x, w, p, win, [1, 1], pad, "bilinear", [True, False, False, False])[0]))
    assert all(torch.equal(a, e) for a, e in zip(*runs))


@pytest.mark.parametrize("shape,conv,corr", [((8, 96, 56, 56), True, True), ((8, 768, 7, 7), False, False)])
def test_mma_cost_rule_cuda(monkeypatch, shape, conv, corr):
    """By default (DCLS_CONVERT_CUDA_MMA unset) a bfloat16 layer at stage 1 (K = 34 off-grid taps, window 17) runs
    its forward, input gradient and correlation on tensor cores, the window built by a block per channel; one at
    stage 4 runs the tables' kernels (the cost rule measured on an H200)."""
    monkeypatch.delenv("DCLS_CONVERT_CUDA_MMA", raising=False)
    x, w, p, b, win, pad = _window_layer(shape, 17, torch.bfloat16, True)
    xg, wg, pg = (t.detach().requires_grad_() for t in (x, w, p))
    names = _cuda_kernels(lambda: ops.taps_conv(xg, wg, pg, b, win, [1, 1], pad).float().square().sum().backward())
    assert ("window_conv_kernel" in names) == conv and ("window_build_kernel" in names) == conv
    assert ("window_corr_kernel" in names) == corr
    assert ("tiled_forward_kernel" in names) == (not conv)


MMA_CONV = ("DCLS_CONVERT_CUDA_MMA", None)  # the row kernel (window_conv.h), whichever kernel name
PLANE_CONV = ("DCLS_CONVERT_CUDA_PLANE", "window_plane_kernel")  # small planes (window_plane.h)
STRIP_CONV = ("DCLS_CONVERT_CUDA_PLANE", "window_strip_kernel")  # larger planes in strips (window_plane.h)


@pytest.mark.parametrize("path,shape,window,dtype,channels_last", [
    (MMA_CONV, (64, 96, 56, 56), 17, torch.bfloat16, True),
    (MMA_CONV, (8, 192, 28, 28), 17, torch.float16, False),
    (MMA_CONV, (16, 384, 14, 14), 17, torch.bfloat16, True),
    (MMA_CONV, (16, 768, 7, 7), 17, torch.bfloat16, True),
    (MMA_CONV, (4, 96, 56, 56), 51, torch.bfloat16, False),
    (MMA_CONV, (4, 32, 20, 150), 17, torch.bfloat16, True),
    (MMA_CONV, (4, 16, 1, 60), 31, torch.float16, False),
    (PLANE_CONV, (64, 384, 14, 14), 17, torch.bfloat16, True),  # ConvNeXt-T's stages 3 and 4
    (PLANE_CONV, (64, 768, 7, 7), 17, torch.bfloat16, True),
    (PLANE_CONV, (18, 40, 7, 7), 17, torch.float16, False),
    (PLANE_CONV, (3, 24, 16, 16), 7, torch.bfloat16, True),
    (PLANE_CONV, (5, 8, 1, 60), 31, torch.float16, False),
    (STRIP_CONV, (64, 192, 28, 28), 17, torch.bfloat16, True),  # ConvNeXt-T's stage 2
    (STRIP_CONV, (18, 40, 20, 23), 7, torch.float16, False),
    (STRIP_CONV, (4, 16, 12, 64), 5, torch.bfloat16, True),
    (STRIP_CONV, (64, 96, 56, 56), 17, torch.bfloat16, True),  # stage 1: 4 channels a block
    (STRIP_CONV, (18, 10, 20, 56), 17, torch.float16, False)])
def test_window_conv_cuda(monkeypatch, path, shape, window, dtype, channels_last):
    """The tensor-core forward and input gradient (DCLS_CONVERT_CUDA_MMA=conv; small planes as one product per
    channel, and larger ones in strips of output rows, DCLS_CONVERT_CUDA_PLANE=conv, the kernel it names launched) against the dense float64 oracle with the
    window rounded to the 16-bit type (as the kernels take it), to a few 16-bit steps; two runs bitwise equal; the
    memory format kept."""
    var, kernel = path
    optin = getattr(torch.cuda.get_device_properties(0), "shared_memory_per_block_optin", 0)
    if path == STRIP_CONV and optin < 218032:  # (28 x 28 needs 213 KiB: an A100's 163 KiB takes the row kernel)
        pytest.skip(f"strips of these planes need more shared memory than this card's {optin} bytes a block")
    x, w, p, b, win, pad = _window_layer(shape, window, dtype, channels_last)
    monkeypatch.setenv(var, "conv")
    back = torch.ops.dcls_convert.taps_conv_backward
    mask = [True, False, False, False]
    y = ops.taps_conv(x, w, p, b, win, [1, 1], pad)
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    g = torch.randn_like(y)
    gin = back(g, x, w, p, win, [1, 1], pad, "bilinear", mask)[0]
    assert torch.equal(y, ops.taps_conv(x, w, p, b, win, [1, 1], pad))
    assert torch.equal(gin, back(g, x, w, p, win, [1, 1], pad, "bilinear", mask)[0])
    if kernel is not None:
        assert kernel in _cuda_kernels(lambda: ops.taps_conv(x, w, p, b, win, [1, 1], pad))
        assert kernel in _cuda_kernels(lambda: back(g, x, w, p, win, [1, 1], pad, "bilinear", mask))
    kern = ops.construct(w.double(), p.double(), None, win).to(dtype).double()
    xd = x.double().requires_grad_()
    want = F.conv2d(xd, kern, b.double(), padding=pad, groups=x.shape[1])
    want_gin, = torch.autograd.grad(want, xd, g.double())
    step = 2.0 ** (-7 if dtype == torch.bfloat16 else -10)
    # (a window cell near a rounding boundary may round the other way than the float64 sum: the emulation tests
    # pin the window itself, see test_window_conv_matches_oracle)
    assert max_rel(y.double(), want.detach()) < 4 * step
    assert max_rel(gin.double(), want_gin) < 4 * step


FORCE = {"plane": "DCLS_CONVERT_CUDA_PLANE", "mma": "DCLS_CONVERT_CUDA_MMA", "tables": None}


@pytest.mark.parametrize("shape,dtype,channels_last", [((32, 768, 7, 7), torch.bfloat16, True),
                                                       ((16, 96, 56, 56), torch.bfloat16, True),
                                                       ((8, 192, 28, 28), torch.float32, False)])
def test_tuning_cuda(monkeypatch, shape, dtype, channels_last):
    """Tuning (DCLS_CONVERT_CUDA_TUNE=benchmark with torch.backends.cudnn.benchmark): the first call times the paths on
    the card and runs the fastest; the results are bitwise those of that path forced; later calls reuse the
    choice; no tuning while a CUDA graph is captured, and a captured graph replays the cached choice."""
    for var in list(FORCE.values()) + ["DCLS_CONVERT_CUDA_TF32", "DCLS_CONVERT_CUDA_TUNE", "DCLS_CONVERT_CUDA_TAPS",
                                       "DCLS_CONVERT_CUDA_TILES"]:
        if var:
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DCLS_CONVERT_CUDA_TUNE", "benchmark")  # (unset: off until this test has passed on a card)
    ops.clear_tuned_paths()
    x, w, p, b, win, pad = _window_layer(shape, 17, dtype, channels_last)
    back = torch.ops.dcls_convert.taps_conv_backward
    mask = [True, True, True, True]
    with torch.backends.cudnn.flags(enabled=True, benchmark=True):
        y = ops.taps_conv(x, w, p, b, win, [1, 1], pad)
        g = torch.randn_like(y)
        grads = back(g, x, w, p, win, [1, 1], pad, "bilinear", mask)
        tuned = ops.tuned_paths()
        assert sorted(k.split(" ")[0] for k in tuned) == ["forward", "grad_input", "grad_taps"]
        assert torch.equal(y, ops.taps_conv(x, w, p, b, win, [1, 1], pad))
        assert len(ops.tuned_paths()) == 3
    print(tuned)
    part_of = {"forward": "conv", "grad_input": "conv", "grad_taps": "corr"}
    for key, path in tuned.items():
        part = key.split(" ")[0]
        with monkeypatch.context() as m:  # the chosen path forced: bitwise the tuned results
            if FORCE[path]:
                m.setenv(FORCE[path], part_of[part])
            else:
                m.setenv("DCLS_CONVERT_CUDA_MMA", "none")
            if path in ("mma", "plane") and dtype == torch.float32:  # float32's tensor cores: 3xTF32, opted in
                m.setenv("DCLS_CONVERT_CUDA_TF32", part_of[part])
                if path == "mma":  # (the rows' correlation, not the small planes')
                    m.setenv("DCLS_CONVERT_CUDA_PLANE", "none")
            if part == "forward":
                assert torch.equal(y, ops.taps_conv(x, w, p, b, win, [1, 1], pad))
            else:
                forced = back(g, x, w, p, win, [1, 1], pad, "bilinear", mask)
                pick = [0] if part == "grad_input" else [1, 2, 3]
                assert all(torch.equal(grads[i], forced[i]) for i in pick), (key, path)
    # a shape first met under capture: the cost rule, nothing timed or stored; the cached shape replays its choice
    x2 = x[: shape[0] // 2].clone(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # (warm, untuned: no lazy kernel loading inside the capture)
        ops.taps_conv(x2, w, p, b, win, [1, 1], pad)
        monkeypatch.setenv("DCLS_CONVERT_CUDA_TUNE", "on")
        ops.taps_conv(x, w, p, b, win, [1, 1], pad)
    torch.cuda.current_stream().wait_stream(side)
    assert len(ops.tuned_paths()) == 3
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_graph = ops.taps_conv(x, w, p, b, win, [1, 1], pad)
        y2_graph = ops.taps_conv(x2, w, p, b, win, [1, 1], pad)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y_graph, y)
    assert len(ops.tuned_paths()) == 3
    monkeypatch.delenv("DCLS_CONVERT_CUDA_TUNE")
    assert torch.equal(y2_graph, ops.taps_conv(x2, w, p, b, win, [1, 1], pad))  # the cost rule's path
    ops.clear_tuned_paths()


def test_taps_conv_cuda_window_beyond_tiles():
    """A window whose tile does not fit in shared memory runs the gather kernels, still exact."""
    x = torch.randn(1, 2, 160, 170, device="cuda", dtype=torch.float64)
    w, p, _ = random_taps(2, 2, 1, 6, [151, 151], device="cuda")
    check = [t.clone().requires_grad_() for t in (x, w, p)]
    y = ops.taps_conv(*check, None, [151, 151], [1, 1], [75, 75])
    ref = [t.clone().requires_grad_() for t in (x, w, p)]
    want = _dense_oracle(*ref, [151, 151], [1, 1], [75, 75])
    torch.testing.assert_close(y, want, rtol=0, atol=1e-9)
    g = torch.randn_like(want)
    for a, e in zip(torch.autograd.grad(y, check, g), torch.autograd.grad(want, ref, g)):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-8)


def test_taps_conv_cuda_shared_positions():
    """Positions shared by two layers (stage sharing): their gradient is the sum over both layers."""
    x = torch.randn(2, 8, 30, 30, device="cuda", dtype=torch.float64)
    w1, p, _ = random_taps(2, 8, 1, 10, [17, 17], device="cuda")
    w2 = torch.randn_like(w1)

    def two_layers(x, w1, w2, p):
        y = ops.taps_conv(x, w1, p, None, [17, 17], [1, 1], [8, 8])
        return ops.taps_conv(torch.tanh(y), w2, p, None, [17, 17], [1, 1], [8, 8])

    leaves = [t.clone().requires_grad_() for t in (x, w1, w2, p)]
    got = torch.autograd.grad(two_layers(*leaves).square().sum(), leaves)
    ref = [t.detach().cpu().clone().requires_grad_() for t in (x, w1, w2, p)]
    y = reference.taps_conv(ref[0], ref[1], ref[3], None, [17, 17], [1, 1], [8, 8], "bilinear")
    out = reference.taps_conv(torch.tanh(y), ref[2], ref[3], None, [17, 17], [1, 1], [8, 8], "bilinear")
    want = torch.autograd.grad(out.square().sum(), ref)
    for a, e in zip(got, want):
        torch.testing.assert_close(a.cpu(), e, rtol=1e-9, atol=1e-9)


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
    want = reference.construct(w, p, s, [17, 17], interp)
    got = ops.construct(w.to("cuda", dtype), p.cuda().float(), s.cuda().float() if s is not None else None,
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
    kernel = ops.construct(w, p, None, [5, 5])
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


def _converted_atto(method):
    timm = pytest.importorskip("timm")
    import dcls_convert as dc

    torch.manual_seed(0)
    model, _ = dc.convert(timm.create_model("convnext_atto", num_classes=10), method)
    return model.cuda().to(memory_format=torch.channels_last)


def _batch():
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(8, 3, 64, 64, device="cuda", generator=g).contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 10, (8,), device="cuda", generator=g)


@pytest.mark.parametrize("method", ["dcls", "partial", "bloom"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("plane", [False, True])
def test_converted_model_trains_under_amp_cuda(monkeypatch, method, dtype, plane):
    """timm's recipe on a GPU: autocast (float16 with a GradScaler, or bfloat16), channels_last; the loss goes
    down and every new parameter gets a finite gradient; also with the small-plane kernels
    (DCLS_CONVERT_CUDA_PLANE=all: convnext_atto at 64x64 has planes of 16x16 and less)."""
    import math

    import dcls_convert as dc

    if plane:
        monkeypatch.setenv("DCLS_CONVERT_CUDA_PLANE", "all")
    else:
        monkeypatch.delenv("DCLS_CONVERT_CUDA_PLANE", raising=False)

    model = _converted_atto(method)
    opt = torch.optim.SGD(dc.param_groups(model, lr=0.05), lr=0.05)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    x, y = _batch()
    losses = []
    for _ in range(8):
        with torch.autocast("cuda", dtype):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        new = [p for m in model.modules() if isinstance(m, dc.methods.base.ConvertedConv) for p in m.parameters()
               if p.requires_grad]
        assert new and all(p.grad is not None for p in new)
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_converted_model_compiles_cuda(mode):
    """torch.compile(fullgraph=True) with inductor, and with CUDA graphs (mode="reduce-overhead"): outputs and
    gradients match eager."""
    model = _converted_atto("dcls")
    x, y = _batch()
    eager_out = model(x)
    F.cross_entropy(eager_out, y).backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, fullgraph=True, mode=mode)
    for _ in range(3):  # CUDA graphs record after warm-up runs
        torch.compiler.cudagraph_mark_step_begin()
        out = compiled(x)
        model.zero_grad(set_to_none=True)
        F.cross_entropy(out, y).backward()
    torch.testing.assert_close(out.detach().clone(), eager_out.detach(), rtol=1e-3, atol=1e-3)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-2, atol=1e-3)


def test_timm_example_runs_on_cuda(tmp_path):
    pytest.importorskip("mlxtend")
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "examples", "timm_convert_finetune.py"), "--device", "cuda",
                        "--amp", "--samples", "256", "--size", "32", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, HF_HUB_OFFLINE="1", DCLS_CONVERT_CUDA_TUNE="benchmark"))
    assert r.returncode == 0 and "test accuracy" in r.stdout, r.stderr[-1000:]


def test_nan_positions_reported_without_a_sync_cuda(monkeypatch):
    """On CUDA the finite check never reads the device in the forward: a NaN position is reported by a later
    training forward of the same layer, once the flag copied at an earlier one has landed (checking every
    forward here; by default every finite_check.CHECK_EVERY-th)."""
    import dcls_convert as dc
    from dcls_convert import finite_check

    monkeypatch.setattr(finite_check, "CHECK_EVERY", 1)

    m = dc.DclsConv2d(4, 4, 3, 7, padding=3, groups=4).cuda().train()
    x = torch.randn(2, 4, 12, 12, device="cuda")
    m(x)  # finite: nothing to report
    torch.cuda.synchronize()
    m(x)  # reads the first flag (finite), issues a second check
    torch.cuda.synchronize()
    with torch.no_grad():
        m.positions[0, 0, 0, 0] = float("nan")
    m(x)  # issues the check that finds the NaN
    torch.cuda.synchronize()
    with pytest.raises(FloatingPointError, match="positions"):
        m(x)
