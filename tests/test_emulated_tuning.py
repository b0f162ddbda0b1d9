"""Tuning (kernels/include/dcls_convert/path_tuning.h) through the emulated CUDA flow: the first call of a shape
times every path that applies and runs the fastest, later calls run the cached choice. The emulation's timer
charges each launched kernel the cost a test sets (set_kernel_costs), so the tests decide which path wins."""
import pytest
import torch

from dcls_convert.ops import reference
from emulation import emulation_ops
from helpers import max_rel, random_taps

E = emulation_ops()
SWITCHES = ["DCLS_CONVERT_CUDA_MMA", "DCLS_CONVERT_CUDA_PLANE", "DCLS_CONVERT_CUDA_TF32", "DCLS_CONVERT_CUDA_TUNE"]
WINDOW, PADDING, STRIDE = [17, 17], [8, 8], [1, 1]
# each path's kernels, in launch order
KERNELS = {
    ("forward", "plane"): ["window_kernel", "window_plane"],
    ("forward", "mma"): ["window_kernel", "window_conv"],
    ("forward", "tables"): ["tables", "tiled_forward"],
    ("grad_taps", "plane"): ["plane_corr", "window_corr_finish"],
    ("grad_taps", "mma"): ["window_corr", "window_corr_finish"],
    ("grad_taps", "tables"): ["tables", "tiled_corr", "tiled_corr_finish"],
}
# the switches that force each forward path (the reference runs)
FORCE_CONV = {"plane": {"DCLS_CONVERT_CUDA_PLANE": "conv"}, "mma": {"DCLS_CONVERT_CUDA_MMA": "conv"},
              "tables": {"DCLS_CONVERT_CUDA_MMA": "none"}}


@pytest.fixture
def clean(monkeypatch):
    """No switch set, no tuned choice, every kernel costing 1."""
    for var in SWITCHES:
        monkeypatch.delenv(var, raising=False)
    E.clear_tuned_paths()
    E.set_kernel_costs([], [])
    E.take_kernels()
    yield monkeypatch
    E.clear_tuned_paths()
    E.set_kernel_costs([], [])


def _costs(**costs):
    E.set_kernel_costs(list(costs), [float(v) for v in costs.values()])


def _layer(dtype=torch.bfloat16, size=(7, 7), N=3, C=16, channels_last=True, on_grid=False):
    """A ConvNeXt stage-4-like layer in miniature: x, float32 weight, positions, bias."""
    x = torch.randn(N, C, *size).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, p, _ = random_taps(2, C, 1, 6, WINDOW, spread=1.4, dtype=torch.float32)
    return x, w, p.round() if on_grid else p, torch.randn(C)


def _forward(x, w, p, b, stride=STRIDE):
    out = E.taps_conv(x, w, p, b, WINDOW, stride, PADDING, "bilinear")
    return out, E.take_kernels()


def _forced_forward(monkeypatch, path, layer):
    with monkeypatch.context() as m:
        m.delenv("DCLS_CONVERT_CUDA_TUNE", raising=False)
        for var, value in FORCE_CONV[path].items():
            m.setenv(var, value)
        out, kernels = _forward(*layer)
    assert kernels == KERNELS["forward", path]
    return out


def _tuned(part):
    """{tune key: path} of the cached choices whose key starts with part."""
    pairs = [entry.split(" -> ") for entry in E.tuned_paths()]
    return {key: path for key, path in pairs if key.startswith(part)}


def _oracle_forward(x, w, p, b):
    return reference.taps_conv(x.double(), w.double(), p.double(), b.double(), WINDOW, STRIDE, PADDING, "bilinear")


@pytest.mark.parametrize("costs,path", [
    (dict(window_plane=0.1), "plane"),
    (dict(window_conv=0.1, window_plane=5), "mma"),
    (dict(tables=0.1, tiled_forward=0.1), "tables"),
])
def test_forward_runs_the_cheapest_path_then_only_it(clean, costs, path):
    clean.setenv("DCLS_CONVERT_CUDA_TUNE", "on")
    _costs(**costs)
    layer = _layer()
    out, first = _forward(*layer)
    # every applicable path timed (the plane, the tensor cores' rows, the tables), then the chosen one run
    timed = first[:-len(KERNELS["forward", path])]
    for candidate in ("plane", "mma", "tables"):
        names = KERNELS["forward", candidate]
        assert any(timed[i:i + len(names)] == names for i in range(len(timed)))
    assert first[-len(KERNELS["forward", path]):] == KERNELS["forward", path]
    tuned = _tuned("forward")
    assert list(tuned.values()) == [path]
    key, = tuned
    assert "BFloat16" in key and "N3 C16 7x7->7x7 window 17x17" in key and key.endswith("cl cl")
    again, second = _forward(*layer)
    assert second == KERNELS["forward", path]  # cached: no timing
    assert torch.equal(out, again)
    assert torch.equal(out, _forced_forward(clean, path, layer))  # bitwise what the forced path gives


def _backward(layer, g=None, mask=(True, True, True, True)):
    x, w, p, b = layer
    if g is None:  # (the output's shape and layout: stride 1, padding half the window)
        g = torch.randn(x.shape).to(x.dtype).contiguous(memory_format=torch.channels_last if x.dim() == 4 and
                                                         x.is_contiguous(memory_format=torch.channels_last) and
                                                         not x.is_contiguous() else torch.contiguous_format)
    grads = E.taps_conv_backward(g, x, w, p, WINDOW, STRIDE, PADDING, "bilinear", list(mask))
    return g, grads, E.take_kernels()


def _oracle_grads(x, w, p, g):
    ref = [x.double().requires_grad_(), w.double().requires_grad_(), p.double().requires_grad_(),
           torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)]
    out = reference.taps_conv(*ref, WINDOW, STRIDE, PADDING, "bilinear")
    return torch.autograd.grad(out, ref, g.double())


@pytest.mark.parametrize("on_grid", [False, True])
def test_backward_parts_tuned_apart_and_exact(clean, on_grid):
    """The input gradient on the small-plane kernel, the taps' gradients on the tables (timed on positions moved
    between cells, which the returned gradients must not show): each part its own choice, the result the float64
    oracle's, and later calls launch only the chosen kernels."""
    clean.setenv("DCLS_CONVERT_CUDA_TUNE", "on")
    _costs(window_kernel=0.5, window_plane=0.1, window_conv=5, plane_corr=5, window_corr=5, tables=0.1,
           tiled_forward=5, tiled_corr=0.1, tiled_corr_finish=0.1)
    layer = _layer(on_grid=on_grid)
    g, (gin, gw, gp, gb), first = _backward(layer)
    # the run after the timing: the tables' one launch (the corner table alone), the input gradient, the correlation
    assert first[-5:] == ["tables", "window_kernel", "window_plane", "tiled_corr", "tiled_corr_finish"]
    assert _tuned("grad_input") and list(_tuned("grad_input").values()) == ["plane"]
    assert list(_tuned("grad_taps wpb").values()) == ["tables"]
    with clean.context() as m:  # the same paths forced: bitwise the same gradients
        m.delenv("DCLS_CONVERT_CUDA_TUNE")
        m.setenv("DCLS_CONVERT_CUDA_PLANE", "conv")
        m.setenv("DCLS_CONVERT_CUDA_MMA", "conv")
        _, forced, kernels = _backward(layer, g)
    assert kernels == ["tables", "window_kernel", "window_plane", "tiled_corr", "tiled_corr_finish"]
    for got, want in zip((gin, gw, gp, gb), forced):
        assert torch.equal(got, want)
    # and the taps' gradients the float64 oracle's (the small-plane input gradient rounds the window to 16 bits:
    # its oracle tests are in test_emulated_cuda.py)
    want = _oracle_grads(layer[0], layer[1], layer[2], g)
    for got, exact in zip((gw, gp, gb), want[1:]):
        assert max_rel(got.double(), exact) < 1e-5
    _, again, second = _backward(layer, g)
    for got, cached in zip((gin, gw, gp, gb), again):
        assert torch.equal(got, cached)
    assert second == ["tables", "window_kernel", "window_plane", "tiled_corr", "tiled_corr_finish"]


@pytest.mark.parametrize("path", ["plane", "mma", "tables"])
def test_tuned_forward_on_grid_is_the_chosen_paths(clean, path):
    """On-grid taps (a fresh conversion): the tables' candidate ran on positions between cells, last, so a flow
    that returned a timed run's output instead of running the choice would differ from the forced path here."""
    clean.setenv("DCLS_CONVERT_CUDA_TUNE", "on")
    _costs(**{KERNELS["forward", path][-1]: 0.01})
    layer = _layer(on_grid=True)
    out, _ = _forward(*layer)
    assert list(_tuned("forward").values()) == [path]
    assert torch.equal(out, _forced_forward(clean, path, layer))
    if path == "tables":  # exact on the grid: the float64 oracle to bfloat16 rounding
        want = _oracle_forward(*layer)
        assert ((out.double() - want).abs() <= 2.0 ** -8 * want.abs() + 1e-5 * want.abs().max()).all()


def test_switches_and_benchmark_mode(clean):
    layer = _layer()
    with torch.backends.cudnn.flags(enabled=True, benchmark=True):
        _forward(*layer)
        assert E.tuned_paths() == []  # unset: the cost rule, cudnn.benchmark or not (until a GPU has run tuning)
    clean.setenv("DCLS_CONVERT_CUDA_TUNE", "benchmark")
    _forward(*layer)
    assert E.tuned_paths() == []  # =benchmark follows torch.backends.cudnn.benchmark, off here
    with torch.backends.cudnn.flags(enabled=True, benchmark=True):
        _forward(*layer)
        assert list(_tuned("forward")) != []
        E.clear_tuned_paths()
        with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=True):
            _forward(*layer)
        assert E.tuned_paths() == []  # the choice could differ between processes
        torch.use_deterministic_algorithms(True)
        try:
            _forward(*layer)
        finally:
            torch.use_deterministic_algorithms(False)
        assert E.tuned_paths() == []
        clean.setenv("DCLS_CONVERT_CUDA_TUNE", "off")
        _forward(*layer)
        assert E.tuned_paths() == []
    clean.setenv("DCLS_CONVERT_CUDA_TUNE", "on")
    clean.setenv("DCLS_CONVERT_CUDA_PLANE", "conv")  # a forced path: that part untuned
    _, kernels = _forward(*layer)
    assert kernels == KERNELS["forward", "plane"] and E.tuned_paths() == []
    clean.setenv("DCLS_CONVERT_CUDA_PLANE", "none")  # a path switched off: not a candidate
    _costs(window_plane=0.01)
    _, kernels = _forward(*layer)
    assert "window_plane" not in kernels and list(_tuned("forward").values()) == ["mma"]
    E.clear_tuned_paths()
    clean.setenv("DCLS_CONVERT_CUDA_MMA", "none")
    _, kernels = _forward(*layer)
    assert kernels == KERNELS["forward", "tables"]  # one candidate left: stored untimed
    assert list(_tuned("forward").values()) == ["tables"]


def test_choices_keyed_by_shape_and_layout(clean):
    clean.setenv("DCLS_CONVERT_CUDA_TUNE", "on")
    for layer in (_layer(N=3), _layer(N=2), _layer(N=2, channels_last=False), _layer(N=2, size=(9, 9))):
        _forward(*layer)
    keys = sorted(_tuned("forward"))
    assert len(keys) == 4
    assert sum(key.endswith("nchw nchw") for key in keys) == 1


def test_strided_layer_has_one_candidate(clean):
    """Stride 2: only the tables apply, so the choice is stored without a timed run."""
    clean.setenv("DCLS_CONVERT_CUDA_TUNE", "on")
    x, w, p, b = _layer(size=(24, 24))
    _, kernels = _forward(x, w, p, b, stride=[2, 2])
    assert kernels == KERNELS["forward", "tables"]
    assert list(_tuned("forward").values()) == ["tables"]


@pytest.mark.parametrize("cheap,path,force", [
    ("window_corr", "mma", {"DCLS_CONVERT_CUDA_TF32": "corr", "DCLS_CONVERT_CUDA_PLANE": "none"}),
    ("plane_corr", "plane", {"DCLS_CONVERT_CUDA_TF32": "corr"}),
    ("tables tiled_corr tiled_corr_finish", "tables", {}),
])
def test_float32_taps_gradients_may_take_3xtf32(clean, cheap, path, force):
    """float32: the weight and position gradients' candidates are the 3xTF32 tensor cores (rows and small planes),
    and the tables; the tuned result is bitwise the forced run's of the path
    that won."""
    clean.setenv("DCLS_CONVERT_CUDA_TUNE", "on")
    _costs(**{name: 0.01 for name in cheap.split()})
    layer = _layer(dtype=torch.float32, channels_last=False)
    g, (_, gw, gp, gb), first = _backward(layer, mask=(False, True, True, True))
    assert first[-len(KERNELS["grad_taps", path]):] == KERNELS["grad_taps", path]
    for candidate in ("plane", "mma", "tables"):
        names = KERNELS["grad_taps", candidate]
        assert any(first[i:i + len(names)] == names for i in range(len(first)))
    assert list(_tuned("grad_taps").values()) == [path]
    with clean.context() as m:
        m.delenv("DCLS_CONVERT_CUDA_TUNE")
        for var, value in force.items():
            m.setenv(var, value)
        _, forced, kernels = _backward(layer, g, mask=(False, True, True, True))
    assert kernels == KERNELS["grad_taps", path]
    for got, want in zip((gw, gp, gb), forced[1:]):
        assert torch.equal(got, want)


@pytest.mark.parametrize("cheap,path", [("window_plane", "plane"), ("tiled_forward", "tables")])
def test_float32_forward_may_take_3xtf32_strips(clean, cheap, path):
    """float32: the forward's candidates are the 3xTF32 strips (window_plane.h) and the tables; the tuned choice
    runs bitwise what its path gives forced; DCLS_CONVERT_CUDA_TF32=corr (the correlation only) leaves the strips
    out."""
    clean.setenv("DCLS_CONVERT_CUDA_TUNE", "on")
    _costs(**{cheap: 0.01})
    layer = _layer(dtype=torch.float32, channels_last=True)
    out, first = _forward(*layer)
    for candidate in ("plane", "tables"):
        names = KERNELS["forward", candidate]
        assert any(first[i:i + len(names)] == names for i in range(len(first) - len(names)))
    assert list(_tuned("forward").values()) == [path]
    assert first[-2:] == KERNELS["forward", path]
    with clean.context() as m:
        m.delenv("DCLS_CONVERT_CUDA_TUNE")
        m.setenv(*(("DCLS_CONVERT_CUDA_TF32", "conv") if path == "plane" else ("DCLS_CONVERT_CUDA_MMA", "none")))
        forced, kernels = _forward(*layer)
    assert kernels == KERNELS["forward", path] and torch.equal(out, forced)
    assert max_rel(out.double(), _oracle_forward(*layer)) < 1e-5
    E.clear_tuned_paths()
    clean.setenv("DCLS_CONVERT_CUDA_TF32", "corr")
    _, first = _forward(*layer)
    assert "window_plane" not in first


@pytest.mark.parametrize("window", [[17, 17], [7, 9], [1, 9]])
def test_tables_timed_on_positions_between_cells(window):
    """Tuning times the tables' path on positions moved between grid cells (the same cell, clamped into the
    window, then half a cell on): each bilinear tap then makes all its corners, as a layer's taps do once training
    moves them, so that a fresh conversion's on-grid taps (one entry each) do not flatter the tables."""
    C, K = 3, 5
    p = torch.cat([torch.rand(1, C, 1, K) * (L + 4) - (L + 4) / 2 for L in window]).round()  # on the grid
    p[0, 0, 0, 0] = float("nan")
    moved = E.between_cells(p, window)
    for d, L in enumerate(window):
        u = moved[d] + L // 2
        if L == 1:
            assert (moved[d] == 0).all()
            continue
        assert ((u - 0.5) == (u - 0.5).round()).all() and (u >= 0.5).all() and (u <= L - 1.5).all()
        cell = (p[d] + L // 2).nan_to_num(0.0).floor().clamp(0, L - 2)
        assert torch.equal(u - 0.5, cell)
    # taps two cells apart (no shared corners): one table entry each on the grid, every corner once moved
    K = 4
    spaced = torch.arange(K) * 2.0 - 4.0
    p = torch.stack([spaced if L > 1 else torch.zeros(K) for L in window]).view(2, 1, 1, K)
    x, w = torch.randn(1, 1, 30, 30), torch.ones(1, 1, K)
    args = (window, [1, 1], [L // 2 for L in window], "bilinear")
    assert int(E.table_counts(x, w, p, *args, 0)[0]) == K
    # (the forward table's entries: a column's two rows each, so 2 per tap in 2-D as in 1-D)
    assert int(E.table_counts(x, w, E.between_cells(p, window), *args, 0)[0]) == 2 * K


def test_cached_choice_gives_way_to_a_switch(clean):
    """Switches are read at every call: a cached path that a switch has since turned off is not run (the cost rule
    decides while the switch holds), and the cached choice comes back when it is lifted."""
    clean.setenv("DCLS_CONVERT_CUDA_TUNE", "on")
    _costs(window_conv=0.01)
    layer = _layer()
    _forward(*layer)
    assert list(_tuned("forward").values()) == ["mma"]
    clean.setenv("DCLS_CONVERT_CUDA_MMA", "none")
    assert _forward(*layer)[1] == KERNELS["forward", "tables"]
    clean.delenv("DCLS_CONVERT_CUDA_MMA")
    assert _forward(*layer)[1] == KERNELS["forward", "mma"]


def test_candidate_out_of_memory_is_skipped(clean):
    """A path whose run fails for device memory is skipped (as cuDNN's benchmark mode skips an algorithm whose
    workspace does not fit); when every timed path fails, nothing is stored and the call still returns."""
    clean.setenv("DCLS_CONVERT_CUDA_TUNE", "on")
    _costs(window_plane=-1.0, window_conv=0.5)
    layer = _layer()
    out, _ = _forward(*layer)
    assert list(_tuned("forward").values()) == ["mma"]
    assert torch.equal(out, _forced_forward(clean, "mma", layer))
    E.clear_tuned_paths()
    _costs(window_plane=-1.0, window_conv=-1.0, tiled_forward=-1.0)
    out, kernels = _forward(*layer)
    assert E.tuned_paths() == [] and kernels[-2:] == KERNELS["forward", "plane"]
    assert torch.equal(out, _forced_forward(clean, "plane", layer))


def test_shape_without_candidates_is_stored_once(clean):
    """An input gradient of 25 stride phases runs the gather kernel, which tuning does not time: the shape is stored
    (as the tables, whose plans fall back) so later calls do no tuning work."""
    clean.setenv("DCLS_CONVERT_CUDA_TUNE", "on")
    x, w, p, _ = _layer(size=(30, 30))
    g = torch.randn(3, 16, 6, 6, dtype=torch.bfloat16)
    args = (WINDOW, [5, 5], PADDING, "bilinear", [True, False, False, False])
    E.taps_conv_backward(g, x, w, p, *args)
    assert E.take_kernels() == ["gather_grad_input"]
    assert list(_tuned("grad_input").values()) == ["tables"]


def test_forced_switch_that_cannot_apply_keeps_tuning(clean):
    """DCLS_CONVERT_CUDA_MMA=all forces the tensor cores on 16-bit layers; a float32 forward, which they do not
    take, is still tuned."""
    clean.setenv("DCLS_CONVERT_CUDA_TUNE", "on")
    clean.setenv("DCLS_CONVERT_CUDA_MMA", "all")
    _forward(*_layer(dtype=torch.float32, channels_last=False))
    assert list(_tuned("forward")) != []
    E.clear_tuned_paths()
    _forward(*_layer())
    assert E.tuned_paths() == []
