"""Compiled DCLS kernel construction == the pure-PyTorch reference, and its exact properties."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dcls_convert import ops
from dcls_convert.ops import reference
from helpers import requires_compiled, max_rel, random_taps

pytestmark = requires_compiled


def _construct_case(draw_D, window, groups_shape, K, interp, dtype, spread, integer):
    Cout, Cin_g = groups_shape
    w, p, s = random_taps(draw_D, Cout, Cin_g, K, window, dtype=dtype, spread=spread, sigma=interp == "gaussian")
    if integer:
        p = p.round()
    return w, p, s


@given(D=st.integers(1, 3), data=st.data(), interp=st.sampled_from(["bilinear", "gaussian", "nearest"]),
       K=st.sampled_from([1, 2, 5, 100]), integer=st.booleans(), spread=st.sampled_from([0.5, 1.0, 2.5]))
def test_construct_matches_reference_float64(D, data, interp, K, integer, spread):
    window = data.draw(st.lists(st.integers(1, 12 if D < 3 else 6), min_size=D, max_size=D))
    shape = data.draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
    w, p, s = _construct_case(D, window, shape, K, interp, torch.float64, spread, integer)
    got = ops.construct(w, p, s, window, interp)
    want = reference.construct(w, p, s, window, interp)
    assert got.shape == (*shape, *window)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("interp", ["bilinear", "gaussian", "nearest"])
@pytest.mark.parametrize("window", [[17, 17], [9, 3], [8], [5, 6, 4]])
def test_construct_float32_and_bfloat16(interp, window):
    D = len(window)
    w, p, s = random_taps(D, 4, 2, 34, window, dtype=torch.float32, sigma=interp == "gaussian")
    want = reference.construct(w.double(), p.double(), None if s is None else s.double(), window, interp)
    assert max_rel(ops.construct(w, p, s, window, interp).double(), want) < 1e-5
    got16 = ops.construct(w.bfloat16(), p, s, window, interp)  # positions stay float32
    assert got16.dtype == torch.bfloat16
    assert max_rel(got16.double(), want) < 2e-2


def test_bilinear_integer_positions_scatter_weights_exactly():
    window = [7, 5]
    w = torch.randn(3, 2, 4, dtype=torch.float64)
    rows = torch.tensor([-3, 0, 2, 3], dtype=torch.float64)
    cols = torch.tensor([-2, 1, 0, 2], dtype=torch.float64)
    p = torch.stack([rows.expand(3, 2, 4), cols.expand(3, 2, 4)])
    k = ops.construct(w, p, None, window, "bilinear")
    expect = torch.zeros(3, 2, 7, 5, dtype=torch.float64)
    for j in range(4):
        expect[:, :, int(rows[j]) + 3, int(cols[j]) + 2] += w[:, :, j]
    assert torch.equal(k, expect)


def test_positions_outside_window_are_clamped_without_losing_mass():
    w = torch.ones(1, 1, 3, dtype=torch.float64)
    p = torch.tensor([[[[-50.0, 50.0, 2.4]]]], dtype=torch.float64)
    k = ops.construct(w, p, None, [5], "bilinear")
    # -50 -> first cell, +50 and 2.4 (u = 4.4) -> last cell: all three units of mass stay in the window.
    assert torch.equal(k[0, 0], torch.tensor([1.0, 0, 0, 0, 2.0], dtype=torch.float64))


@pytest.mark.parametrize("window", [[9], [11, 7], [5, 4, 6]])
def test_gaussian_sums_to_weight_per_tap(window):
    D = len(window)
    w, p, s = random_taps(D, 2, 3, 1, window, sigma=True)
    k = ops.construct(w, p, s, window, "gaussian")
    torch.testing.assert_close(k.flatten(2).sum(-1), w[..., 0], rtol=1e-12, atol=1e-12)


def test_saved_memory_is_weights_and_positions_only():
    """ConvNeXt-T stage-1 layer (96 channels, K=34, window 17): the reference library saves 14.5-35.5 MiB."""
    w, p, _ = random_taps(2, 96, 1, 34, [17, 17], dtype=torch.float32)
    w.requires_grad_()
    p.requires_grad_()
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ops.construct(w, p, None, [17, 17], "bilinear")
    assert sum(saved) <= (w.numel() + p.numel()) * 4
    assert sum(saved) < 14.5 * 2**20 / 100


@pytest.mark.parametrize("interp", ["bilinear", "gaussian", "nearest"])
@pytest.mark.parametrize("window", [[6], [5, 4], [3, 4, 3]])
def test_opcheck_construct(interp, window):
    D = len(window)
    w, p, s = random_taps(D, 2, 2, 3, window, sigma=interp == "gaussian")
    args = (w.requires_grad_(), p.requires_grad_(), None if s is None else s.requires_grad_(), window, interp, 0.27)
    torch.library.opcheck(torch.ops.dcls_convert.construct.default, args)


@pytest.mark.parametrize("interp", ["bilinear", "gaussian"])
@pytest.mark.parametrize("window", [[7], [5, 6], [3, 4, 5]])
def test_gradcheck_construct(interp, window):
    D = len(window)
    w, p, s = random_taps(D, 2, 2, 3, window, spread=0.9, sigma=interp == "gaussian")
    p = p + 0.123  # away from integers, where the bilinear gradient is one-sided
    inputs = [w.requires_grad_(), p.requires_grad_()] + ([s.requires_grad_()] if s is not None else [])

    def fn(*xs):
        return ops.construct(xs[0], xs[1], xs[2] if len(xs) > 2 else None, window, interp)

    assert torch.autograd.gradcheck(fn, inputs)


def test_gradcheck_construct_nearest_weight():
    w, p, _ = random_taps(2, 2, 2, 3, [5, 5])
    w.requires_grad_()
    assert torch.autograd.gradcheck(lambda w: ops.construct(w, p.round(), None, [5, 5], "nearest"), [w])


def test_bilinear_gradient_is_one_sided_at_integers():
    """d/du at an integer u uses the cell [u, u+1]: it equals the slope between the two grid values."""
    w = torch.ones(1, 1, 1, dtype=torch.float64)
    p = torch.zeros(1, 1, 1, 1, dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[[1.0, 2.0, 7.0, 3.0, 0.0]]], dtype=torch.float64)
    (ops.construct(w, p, None, [5], "bilinear") * g).sum().backward()
    assert p.grad.item() == pytest.approx(3.0 - 7.0)


def test_backend_reported():
    import dcls_convert

    info = dcls_convert.backend_info()
    assert info["compiled_library"] is True
    assert info["ops"]["construct"]["cpu"] == "compiled"
