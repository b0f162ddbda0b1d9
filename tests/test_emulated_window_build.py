"""The dense window of the whole-window kernels (window_build.h: a block per channel, the taps' corners staged in
chunks, each thread's cells summed in tap order), driven on CPU block by block and phase by phase, against the
cell-by-cell reference (window_kernel_thread) and the construct oracle."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dcls_convert.ops import reference
from emulation import emulation_ops
from helpers import random_taps

E = emulation_ops()

CHUNK = 256  # kWindowBuildChunk


def _inputs(dtype, C, K, window, interp, on_grid=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, C, *window, dtype=dtype, generator=g)
    pdtype = torch.float64 if dtype == torch.float64 else torch.float32
    w, p, _ = random_taps(len(window), C, 1, K, window, dtype=pdtype, spread=1.4, gen=g)
    if interp == "nearest" or on_grid:
        p = p.round()
    return x, w, p


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("K", [1, 34, CHUNK, CHUNK + 1, 2 * CHUNK + 77])
@pytest.mark.parametrize("interp", ["bilinear", "nearest"])
@pytest.mark.parametrize("flip", [False, True])
def test_window_build_equals_cell_reference(dtype, K, interp, flip):
    """Bitwise the reference's window: the same sums in the same order, across chunks of taps (K past one and two
    chunks), either interpolation, turned or not, every dtype's output type (16-bit for the tensor cores, the
    accumulation type for float32's 3xTF32 strips; float64 keeps the build exact for the oracle tests below)."""
    window = [19, 23]
    x, w, p = _inputs(dtype, 3, K, window, interp, seed=K)
    args = (x, w, p, window, [1, 1], [9, 11], interp, flip)
    got, want = E.window_kernel(*args), E.window_kernel(*args, reference=True)
    assert got.shape == (3, *window)
    assert got.dtype == (dtype if dtype in (torch.float16, torch.bfloat16) else w.dtype)
    assert torch.equal(got, want)


@pytest.mark.parametrize("window", [[64, 64], [1, 64], [17, 5]])
def test_window_build_matches_construct(window):
    """Against the float64 construct oracle (the kernel a dense layer would be) at the largest window the kernels
    take and at a 1-D one, 600 taps (three chunks), on-grid taps coinciding."""
    x, w, p = _inputs(torch.float64, 2, 600, window, "bilinear", on_grid=True, seed=1)
    got = E.window_kernel(x, w, p, window, [1, 1], [0, 0], "bilinear", False)
    want = reference.construct(w, p, None, window, "bilinear").view(got.shape)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    turned = E.window_kernel(x, w, p, window, [1, 1], [0, 0], "bilinear", True)
    torch.testing.assert_close(turned, want.flip([1, 2]), rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_window_build_random_shapes(data):
    """Random windows (1-64 a side), taps (1-700) and channels: bitwise the reference's window."""
    window = data.draw(st.lists(st.integers(1, 64), min_size=2, max_size=2))
    K = data.draw(st.integers(1, 700))
    C = data.draw(st.integers(1, 3))
    interp = data.draw(st.sampled_from(["bilinear", "nearest"]))
    dtype = data.draw(st.sampled_from([torch.bfloat16, torch.float32]))
    flip = data.draw(st.booleans())
    x, w, p = _inputs(dtype, C, K, window, interp, seed=data.draw(st.integers(0, 1000)))
    args = (x, w, p, window, [1, 1], [0, 0], interp, flip)
    assert torch.equal(E.window_kernel(*args), E.window_kernel(*args, reference=True))
