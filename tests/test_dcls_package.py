"""Reference-library checkpoints load into DclsConvNd with the axis order fixed."""
import pytest
import torch

import dcls_convert as dc
from dcls_convert.dcls_package import load_dcls_package_state_dict


def test_hand_built_gauss_state_dict_flips_axes():
    ref = {"weight": torch.randn(4, 1, 3), "P": torch.randn(2, 4, 1, 3), "SIG": torch.rand(2, 4, 1, 3),
           "bias": torch.randn(4)}
    m = dc.DclsConv2d(4, 4, 3, (7, 9), groups=4, interpolation="gaussian")
    load_dcls_package_state_dict(m, ref, "gauss")
    assert torch.equal(m.positions[0], ref["P"][1]) and torch.equal(m.positions[1], ref["P"][0])
    assert torch.equal(m.sigma[0], ref["SIG"][1]) and torch.equal(m.weight, ref["weight"])
    v0 = dc.DclsConv2d(4, 4, 3, 7, groups=4)
    load_dcls_package_state_dict(v0, ref, "v0")
    assert torch.equal(v0.positions, ref["P"])


def test_errors_name_the_problem():
    m = dc.DclsConv2d(4, 4, 3, 7, groups=4)
    with pytest.raises(ValueError, match="version"):
        load_dcls_package_state_dict(m, {}, "max")
    with pytest.raises(ValueError, match="interpolation"):
        load_dcls_package_state_dict(m, {}, "gauss")
    with pytest.raises(ValueError, match="shapes differ"):
        load_dcls_package_state_dict(m, {"weight": torch.randn(4, 1, 5), "P": torch.randn(2, 4, 1, 5), "bias": torch.randn(4)}, "v0")


@pytest.mark.parametrize("bad", ["SIG", "bias"])
def test_wrong_shapes_change_nothing(bad):
    """A wrongly shaped SIG or bias is refused before anything is copied (no partial overwrite, no broadcast)."""
    ref = {"weight": torch.randn(4, 1, 3), "P": torch.randn(2, 4, 1, 3), "SIG": torch.rand(2, 4, 1, 3),
           "bias": torch.randn(4)}
    ref[bad] = torch.randn(1) if bad == "bias" else torch.rand(2, 1, 1, 1)  # would broadcast
    m = dc.DclsConv2d(4, 4, 3, 7, groups=4, interpolation="gaussian")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=bad):
        load_dcls_package_state_dict(m, ref, "gauss")
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("version", ["v0", "v1", "gauss"])
@pytest.mark.parametrize("ndim", [1, 2])
def test_against_the_dcls_package(version, ndim):
    mods = pytest.importorskip("DCLS.construct.modules")
    import logging
    logging.getLogger().setLevel(logging.ERROR)
    torch.manual_seed(0)
    cls = mods.Dcls2d if ndim == 2 else mods.Dcls1d
    ref = cls(6, 6, kernel_count=5, dilated_kernel_size=9, padding=4, groups=6, version=version).double()
    with torch.no_grad():
        ref.P.clamp_(-3.5, 3.5)  # the reference does not clamp in forward; stay inside the window
    ours = (dc.DclsConv2d if ndim == 2 else dc.DclsConv1d)(6, 6, 5, 9, padding=4, groups=6, dtype=torch.float64,
                                                         interpolation="gaussian" if version == "gauss" else "bilinear")
    load_dcls_package_state_dict(ours, ref.state_dict(), version)
    x = torch.randn(2, 6, *([15] * ndim), dtype=torch.float64)
    # the reference computes some constants in float32 even for float64 layers (1e-7-level differences)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)
