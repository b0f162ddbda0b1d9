"""Regression tests for findings of the independent review (each failed before its fix)."""
import copy

import pytest
import torch
import torch.nn as nn

import dcls_convert as dc
from dcls_convert import ops
from dcls_convert.ops import reference


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


def test_higher_precedence_override_beats_lower_none():
    net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 4, 3, padding=1, groups=4))
    out, _ = dc.convert(net, "dcls", by_type={nn.Conv2d: None}, by_name={"0": {"kernel_count": 4}})
    assert isinstance(out[0], dc.DclsConv2d) and out[0].kernel_count == 4 and isinstance(out[1], nn.Conv2d)


def test_method_switch_uses_the_new_methods_rules():
    net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 8, 3, padding=1))
    out, _ = dc.convert(net, "dcls", by_regex={"1": {"method": "bloom"}})
    assert isinstance(out[0], dc.DclsConv2d) and isinstance(out[1], dc.BloomConv2d)


def test_type_overrides_see_the_real_module():
    layers = pytest.importorskip("timm.layers")
    net = nn.Sequential(layers.Conv2dSame(4, 4, 3, groups=4), nn.Conv2d(4, 4, 3, padding=1, groups=4))
    out, report = dc.convert(net, "dcls", by_type={layers.Conv2dSame: None})
    assert not isinstance(out[0], dc.DclsConv2d) and isinstance(out[1], dc.DclsConv2d)


@pytest.mark.parametrize("sigma_min", [0.02, 0.005])
def test_narrow_gaussian_has_no_nan(sigma_min):
    w = torch.ones(1, 1, 1, dtype=torch.float64)
    p = torch.full((1, 1, 1, 1), 0.5, dtype=torch.float64)
    s = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    for k in (ops.dcls_kernel(w, p, s, [5], "gaussian", sigma_min), reference.dcls_construct(w, p, s, [5], "gaussian", sigma_min)):
        assert torch.isfinite(k).all() and k.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(ops.dcls_kernel(w, p, s, [5], "gaussian", sigma_min),
                               reference.dcls_construct(w, p, s, [5], "gaussian", sigma_min))


def test_reflect_padding_on_a_small_input_names_the_module():
    m = dc.DclsConv2d.from_conv(nn.Conv2d(4, 4, 7, padding=3, padding_mode="reflect", groups=4))
    with pytest.raises(ValueError, match="DclsConv2d: reflect padding 8"):
        m(torch.randn(1, 4, 7, 7))


def test_load_inplace_leaves_model_untouched_on_error(tmp_path):
    net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4))
    conv, _ = dc.convert(net, "dcls")
    dc.save(conv, str(tmp_path))
    bigger = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Linear(4, 4))
    before = copy.deepcopy(bigger.state_dict())
    with pytest.raises(ValueError, match="missing"):
        dc.load(str(tmp_path), bigger, inplace=True)
    assert type(bigger[0]) is nn.Conv2d and all(torch.equal(v, bigger.state_dict()[k]) for k, v in before.items())
    fresh = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4))
    assert dc.load(str(tmp_path), fresh, inplace=True) is fresh and isinstance(fresh[0], dc.DclsConv2d)
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(fresh(x), conv(x))


def test_stage_sharing_recognises_layer_and_stage_names():
    class R(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 4, 3, padding=1, groups=4))

        def forward(self, x):
            return self.layer1(x)

    out, _ = dc.convert(R(), "dcls", share_positions="stage")
    assert out.layer1[0].positions is out.layer1[1].positions
