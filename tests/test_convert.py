"""convert(): targeting, aliasing, all-or-nothing, report, errors."""
import copy

import pytest
import torch
import torch.nn as nn

import dcls_convert as dc
from dcls_convert.methods.base import ConvertedConv
from toy_models import Zoo

ALL_DW = dc.TargetRules(min_kernel=3, depthwise=True)


def _same(a, b, tol=1e-5):
    return (a - b).abs().max() <= tol * b.abs().max()


@pytest.mark.parametrize("method", ["dcls", "bloom", "partial"])
def test_zoo_converts_and_preserves_function(method):
    model = Zoo().eval()
    x = torch.randn(2, 3, 20, 20)
    rules = dc.TargetRules(min_kernel=3, ndims=(1, 2, 3) if method == "dcls" else (1, 2))
    out, report = dc.convert(model, method, rules=rules)
    assert type(out) is Zoo and out is not model
    assert out.alias is out.dw and isinstance(out.dw, ConvertedConv)
    rec = {r.name: r for r in report.layers}
    assert rec["dw"].aliases == ["alias"] and rec["dw"].status == "converted"
    assert isinstance(out.seq1d, ConvertedConv) and isinstance(out.twice, ConvertedConv)
    if method == "dcls":
        assert isinstance(out.vol, dc.DclsConv3d)
    else:
        assert rec["vol"].status == "skipped" and "ndims" in rec["vol"].reason
    assert any("conv2d" in f for f in report.functional_convs), report.functional_convs
    if method != "bloom":  # bloom's start is a least-squares fit, not exact
        with torch.no_grad():
            assert _same(out(x), model(x))
    out(x).sum().backward()
    for m in out.modules():
        if isinstance(m, ConvertedConv):
            assert all(p.grad is not None for p in m.parameters())


def test_dcls_default_rules_pick_depthwise_stride1_odd():
    out, report = dc.convert(Zoo(), "dcls")
    rec = {r.name: r for r in report.layers}
    assert rec["stem"].status == "skipped" and "depthwise" in rec["stem"].reason
    assert rec["strided"].status == "skipped" and "stride" in rec["strided"].reason
    assert rec["dilated"].status == "converted" and rec["dilated"].receptive_field == (9, 9)
    assert rec["reflect"].status == "converted" and out.reflect.padding_mode == "reflect"
    assert rec["block.0"].status == "converted" and out.block[0].padding == "same"


def test_state_dict_keys_outside_converted_convs_are_unchanged():
    model = Zoo()
    out, report = dc.convert(model, "dcls")
    converted = {r.name for r in report.converted} | {a for r in report.converted for a in r.aliases}
    before = {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] not in converted}
    after = out.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def test_precedence_type_regex_name():
    cfg = dc.ConvertConfig(method="dcls", options={"window": 9}, rules=ALL_DW,
                           by_type={nn.Conv2d: {"window": 11}}, by_regex={r"block\..*": {"window": 13}},
                           by_name={"block.0": {"window": 15}, "reflect": None, "strided": {"method": "partial"}})
    out, report = dc.convert(Zoo(), cfg)
    assert out.seq1d.window == (9,)          # global option
    assert out.twice.window == (11, 11)      # by type
    assert out.block[0].window == (15, 15)   # exact name beats regex
    assert not isinstance(out.reflect, ConvertedConv)
    assert isinstance(out.strided, dc.PartialDilatedConv2d)  # named: selected despite stride rule


def test_include_exclude_and_filter_fn():
    out, _ = dc.convert(Zoo(), "dcls", include=[r"dw|twice"])
    assert isinstance(out.dw, ConvertedConv) and isinstance(out.twice, ConvertedConv)
    assert not isinstance(out.block[0], ConvertedConv)
    out, _ = dc.convert(Zoo(), "dcls", exclude=r"d.*")
    assert not isinstance(out.dw, ConvertedConv) and isinstance(out.twice, ConvertedConv)
    rules = dc.TargetRules(depthwise=True, min_kernel=3, filter_fn=lambda name, m: m.kernel_size[0] == 5)
    out, _ = dc.convert(Zoo(), "dcls", rules=rules)
    assert isinstance(out.block[0], ConvertedConv) and not isinstance(out.dw, ConvertedConv)


def test_per_stage_window_and_position_sharing():
    class Staged(nn.Module):
        def __init__(self):
            super().__init__()
            self.stages = nn.ModuleList([nn.Sequential(*[nn.Conv2d(4, 4, 7, padding=3, groups=4) for _ in range(3)])
                                         for _ in range(2)])

        def forward(self, x):
            for s in self.stages:
                x = s(x)
            return x

    model = Staged().eval()
    out, report = dc.convert(model, "dcls", share_positions="stage", by_regex={r"stages\.1\..*": {"window": 21}})
    s0, s1 = out.stages[0], out.stages[1]
    assert s0[0].positions is s0[1].positions is s0[2].positions
    assert s1[0].positions is s1[2].positions and s1[0].positions is not s0[0].positions
    assert s1[0].window == (21, 21)
    x = torch.randn(1, 4, 24, 24)
    with torch.no_grad():
        assert _same(out(x), model(x))
    params = dc.param_groups(out, lr=1e-3)
    pos = [g for g in params if g["name"] == "positions"][0]["params"]
    assert len(pos) == 2


def test_all_or_nothing_on_error_inplace():
    model = Zoo()
    before = copy.deepcopy(model.state_dict())
    types = [type(m) for m in model.modules()]
    with pytest.raises(dc.ConversionError, match="seq1d"):
        # a 21 window keeps odd parity on 2-D kernels but seq1d (k=5, window 20) fails: even difference
        dc.convert(model, "dcls", inplace=True, by_name={"seq1d": {"window": 20}})
    assert [type(m) for m in model.modules()] == types
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_inplace_returns_same_object():
    model = Zoo()
    out, _ = dc.convert(model, "dcls", inplace=True)
    assert out is model and isinstance(model.dw, ConvertedConv)


def test_errors():
    with pytest.raises(dc.NoTargetError, match="no conv matched"):
        dc.convert(nn.Sequential(nn.Conv2d(3, 3, 1)), "dcls")
    with pytest.raises(ValueError, match="bad regular expression"):
        dc.convert(Zoo(), "dcls", include="(")
    with pytest.raises(TypeError, match="unknown option"):
        dc.convert(Zoo(), "dcls", windw=9)
    with pytest.raises(ValueError, match="unknown method"):
        dc.convert(Zoo(), "lora")
    with pytest.raises(TypeError, match="Convert the plain model first"):
        dc.convert(nn.DataParallel(Zoo()), "dcls")
    with pytest.raises(ValueError, match="kernel_count"):
        dc.convert(Zoo(), "dcls", kernel_count=0)


def test_mode_dtype_requires_grad_preserved():
    model = Zoo().double().eval()
    model.dw.requires_grad_(False)
    out, _ = dc.convert(model, "dcls")
    assert not out.training and out.dw.weight.dtype == torch.float64
    assert not out.dw.weight.requires_grad and out.twice.weight.requires_grad


@pytest.mark.parametrize("method", ["dcls", "bloom", "partial"])
def test_requires_grad_kept_per_parameter(method):
    """A frozen kernel with a trainable bias stays so: weights, positions and sigma follow the source weight,
    the bias follows the source bias (and back through densify)."""
    model = nn.Sequential(nn.Conv2d(4, 4, 5, padding=2, groups=4), nn.Conv2d(4, 4, 3, padding=1, groups=4))
    model[0].weight.requires_grad_(False)
    model[1].bias.requires_grad_(False)
    out, _ = dc.convert(model, method, rules=dc.TargetRules(min_kernel=3))
    flags = {n: p.requires_grad for n, p in out.named_parameters()}
    assert flags["0.bias"] and not flags["1.bias"]
    assert not any(f for n, f in flags.items() if n.startswith("0.") and n != "0.bias")
    assert all(f for n, f in flags.items() if n.startswith("1.") and n != "1.bias")
    dense = dc.densify(out)
    assert not dense[0].weight.requires_grad and dense[0].bias.requires_grad
    assert dense[1].weight.requires_grad and not dense[1].bias.requires_grad


def test_example_inputs_record_calls_and_shapes():
    out, report = dc.convert(Zoo(), "dcls", example_inputs=torch.randn(1, 3, 16, 16))
    rec = {r.name: r for r in report.layers}
    assert rec["twice"].calls == 2 and rec["dw"].calls == 2 and rec["seq1d"].input_shape == (1, 8, 64)


def test_report_gives_the_models_output_error_on_the_example_inputs():
    torch.manual_seed(0)
    model, x = Zoo().eval(), torch.randn(4, 3, 16, 16)
    exact, report = dc.convert(model, "dcls", example_inputs=x)
    assert report.output_error is not None and report.output_error < 1e-6  # K = k*k: exact
    lossy, report = dc.convert(model, "dcls", kernel_count=4, example_inputs=x)
    with torch.no_grad():
        want = float((lossy(x) - model(x)).norm() / model(x).norm())
    assert report.output_error == pytest.approx(want, rel=1e-4) and report.output_error > 1e-3
    assert "model output on the example inputs: relative error" in str(report)
    assert dc.convert(model, "dcls")[1].output_error is None  # no inputs, no claim


def test_report_table_and_dict():
    _, report = dc.convert(Zoo(), "dcls")
    text = str(report)
    assert "converted" in text and "skipped" in text and "7x7 -> 17x17" in text
    d = report.to_dict()
    assert d["totals"]["converted"] == len(report.converted) > 0
    assert all({"name", "status", "init_error"} <= set(layer) for layer in d["layers"])
    import json

    assert json.loads(report.to_json())["method"] == "dcls"


def test_timm_conv2d_same_handled_and_std_conv_skipped():
    timm_layers = pytest.importorskip("timm.layers")
    model = nn.Sequential(timm_layers.Conv2dSame(4, 4, 5, groups=4), timm_layers.ScaledStdConv2d(4, 4, 3, groups=4, padding=1))
    model.eval()
    out, report = dc.convert(model, "dcls")
    rec = {r.name: r for r in report.layers}
    assert rec["0"].status == "converted" and rec["1"].status == "skipped" and "standardises" in rec["1"].reason
    x = torch.randn(1, 4, 13, 13)
    with torch.no_grad():
        assert _same(out(x), model(x))
    # functional=True: the standardised conv converts from its standardised weight; Conv2dSame at stride 2 pads by
    # input size, which no fixed padding reproduces and FX cannot trace: skipped, saying both
    model.append(timm_layers.Conv2dSame(4, 4, 3, stride=2, groups=4)).eval()
    out, report = dc.convert(model, "dcls", functional=True)
    rec = {r.name: r for r in report.layers}
    assert rec["1"].status == "converted" and rec["1"].origin.startswith("ScaledStdConv2d: its forward is one F.conv2d")
    assert rec["2"].status == "skipped" and "pads by input size" in rec["2"].reason and "traced" in rec["2"].reason
    with torch.no_grad():
        assert _same(out(x), model(x))
    _, report = dc.convert(model, "dcls", functional=True, by_type={timm_layers.ScaledStdConv2d: None})
    assert {r.name: r for r in report.layers}["1"].reason == "excluded by an override of None"


class _Staged(nn.Module):
    """One stage of three depthwise 7x7 convs (positions shared per stage)."""

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList([nn.Sequential(*[nn.Conv2d(6, 6, 7, padding=3, groups=6) for _ in range(3)])])

    def forward(self, x):
        return self.stages[0](x)


def test_shared_positions_refit_keeps_each_layers_kernel():
    """share_positions="stage" with K < prod(k): the stage's layers share one positions tensor chosen for all of
    them, each layer keeps its own source weights at those cells (its dense kernel is its source kernel masked to
    them), and the choice keeps at least as much of the stage's kernels as reusing one layer's best cells."""
    from dcls_convert.methods.dcls import placed_source_kernel

    torch.manual_seed(0)

    base = _Staged()
    model, report = dc.convert(base, "dcls", kernel_count=16, share_positions="stage")
    layers = list(model.stages[0])
    assert layers[0].positions is layers[1].positions is layers[2].positions
    targets = [placed_source_kernel(m, c) for m, c in zip(layers, base.stages[0])]
    mask = layers[0].dense_kernel().ne(0)
    for m, t, rec in zip(layers, targets, report.layers):
        assert int(mask.flatten(2).sum(-1).max()) == 16
        torch.testing.assert_close(m.dense_kernel(), t * mask, rtol=0, atol=1e-6)
        assert rec.init_error == pytest.approx(float((m.dense_kernel() - t).norm() / t.norm()), rel=1e-5)

    def kept_energy(cells_mask):
        return sum(float(((t * cells_mask).flatten(2).square().sum(-1) / t.flatten(2).square().sum(-1)).sum())
                   for t in targets)

    joint = kept_energy(mask)
    for t in targets:  # any single layer's own 16 largest cells per channel
        top = t.abs().flatten(2).topk(16, dim=-1).indices
        own = torch.zeros_like(t.flatten(2)).scatter_(-1, top, 1.0).view_as(t).bool()
        assert joint >= kept_energy(own) - 1e-9


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_positions_stay_float32_in_16_bit_models(dtype):
    """One rule for 16-bit models: positions are float32 whether the model was 16-bit before converting or cast
    after; weights and outputs take the model's dtype."""
    before, _ = dc.convert(nn.Sequential(nn.Conv2d(4, 4, 7, padding=3, groups=4)).to(dtype), "dcls")
    after, _ = dc.convert(nn.Sequential(nn.Conv2d(4, 4, 7, padding=3, groups=4)), "dcls")
    after = after.to(dtype)
    for m in (before, after):
        assert m[0].weight.dtype == dtype and m[0].positions.dtype == torch.float32
        assert m(torch.randn(1, 4, 10, 10, dtype=dtype)).dtype == dtype


@pytest.mark.parametrize("method,options", [("dcls", {}), ("dcls", {"kernel_count": 16, "share_positions": "stage"}),
                                            ("bloom", {}), ("partial", {})])
def test_convert_on_meta_then_load(method, options):
    """Big models are built on the meta device and get their weights later: convert works there (init errors
    unknown: None), then to_empty + load_state_dict gives the model a CPU conversion gives."""
    def make():
        return nn.Sequential(nn.Conv2d(4, 4, 7, padding=3, groups=4), nn.Conv2d(4, 4, 7, padding=3, groups=4))

    with torch.device("meta"):
        meta_model = make()
    converted, report = dc.convert(meta_model, method, **options)
    assert all(r.init_error is None or (method == "partial" and r.init_error == 0) for r in report.converted)
    assert all(p.is_meta for p in converted.parameters())
    real, _ = dc.convert(make(), method, **options)
    converted = converted.to_empty(device="cpu")
    converted.load_state_dict(real.state_dict())
    x = torch.randn(1, 4, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), real(x))


@pytest.mark.parametrize("wrap", ["weight_norm", "spectral_norm", "parametrizations.weight_norm"])
def test_reparametrized_weights_are_skipped_with_the_way_out(wrap):
    """A conv whose weight is recomputed before each forward (old-style weight_norm / spectral_norm hooks,
    parametrizations) is not converted from a stale or partial weight: it is skipped, and the reason says how
    to convert it; the other convs convert and the model's output is unchanged for them."""
    import warnings

    fn = torch.nn.utils
    for part in wrap.split("."):
        fn = getattr(fn, part)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = nn.Sequential(fn(nn.Conv2d(4, 4, 5, padding=2, groups=4)), nn.Conv2d(4, 4, 5, padding=2, groups=4))
    x = torch.randn(1, 4, 9, 9)
    want = model.eval()(x)
    if not wrap.startswith("parametrizations"):  # the old-style hooks keep a computed weight: no deepcopy
        with pytest.raises(ValueError, match="remove_weight_norm / remove_spectral_norm"):
            dc.convert(model, "dcls")
        out, report = dc.convert(model, "dcls", inplace=True)
    else:
        out, report = dc.convert(model, "dcls")
    skipped, converted = report.layers
    assert skipped.status == "skipped" and "recomputed each forward" in skipped.reason and "first" in skipped.reason
    assert converted.status == "converted"
    with torch.no_grad():
        torch.testing.assert_close(out.eval()(x), want.detach(), rtol=1e-5, atol=1e-5)


def test_hooks_follow_the_converted_conv():
    """Hooks registered on a conv fire on its replacement (with the replacement as their module), and the
    handles the user holds still remove them."""
    model = nn.Sequential(nn.Conv2d(4, 4, 5, padding=2, groups=4))
    seen = []
    h1 = model[0].register_forward_hook(lambda m, i, o: seen.append(("fwd", type(m).__name__, o.shape)))
    h2 = model[0].register_forward_pre_hook(lambda m, i: seen.append(("pre", type(m).__name__)))
    h3 = model[0].register_full_backward_hook(lambda m, gi, go: seen.append(("bwd", type(m).__name__)))
    out, _ = dc.convert(model, "dcls", inplace=True)
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    out(x).sum().backward()
    assert ("pre", "DclsConv2d") in seen and ("bwd", "DclsConv2d") in seen
    assert ("fwd", "DclsConv2d", torch.Size([1, 4, 8, 8])) in seen
    for h in (h1, h2, h3):
        h.remove()
    seen.clear()
    out(x).sum().backward()
    assert seen == []


def test_small_option_mistakes_are_named():
    """A by_name key that matches no conv, fade='no', an infinite sigma_min: each a ValueError that names it."""
    model = nn.Sequential(nn.Conv2d(4, 4, 5, padding=2, groups=4))
    with pytest.raises(ValueError, match="by_name names no conv.*'1'"):
        dc.convert(model, "dcls", by_name={"1": {"window": 9}})
    with pytest.raises(ValueError, match="fade must be True or False"):
        dc.convert(model, "bloom", fade="no")
    with pytest.raises(ValueError, match="sigma_min must be a finite number"):
        dc.convert(model, "dcls", interpolation="gaussian", sigma_min=float("inf"))
    with pytest.raises(dc.ConversionError, match="window must be an int"):  # was "'float' object is not iterable"
        dc.convert(model, "dcls", window=17.0)


def test_conv_subclass_without_its_own_forward_converts():
    """An nn.Conv2d subclass that only adds attributes computes what nn.Conv2d computes: it converts; one that
    overrides forward is skipped with the reason."""
    class Tagged(nn.Conv2d):
        tag = "mine"

    class Doubled(nn.Conv2d):
        def forward(self, x):
            return 2 * super().forward(x)

    model = nn.Sequential(Tagged(4, 4, 5, padding=2, groups=4), Doubled(4, 4, 5, padding=2, groups=4))
    x = torch.randn(1, 4, 9, 9)
    out, report = dc.convert(model, "dcls")
    assert [r.status for r in report.layers] == ["converted", "skipped"]
    assert "overrides" in report.layers[1].reason
    with torch.no_grad():
        torch.testing.assert_close(out(x), model(x), rtol=1e-5, atol=1e-5)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_ODD_VALUES = st.sampled_from([0, -1, 1, 2, 3, 17, 2**24 + 1, 10**12, 2.5, float("nan"), float("inf"), "17", None,
                               (3,), (3, 3, 3), [17, 17], True])


@settings(max_examples=60, deadline=None)
@given(method=st.sampled_from(["dcls", "bloom", "partial", "nope"]),
       options=st.dictionaries(st.sampled_from(["window", "kernel_count", "interpolation", "sigma_min", "factor",
                                                "fade", "keep", "island", "wing_taps", "wing_spacing", "engine",
                                                "share_positions", "learn_axes", "bogus"]), _ODD_VALUES, max_size=3))
def test_fuzz_convert_converts_or_raises_and_never_half_changes(method, options):
    """Random, partly absurd options: convert returns a converted model or raises ValueError / TypeError /
    RuntimeError, and the model passed in is never changed."""
    model = Zoo()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    try:
        out, _ = dc.convert(model, method, inplace=bool(options.get("fade")), **options)
    except (ValueError, TypeError, RuntimeError):
        assert [type(m) for m in model.modules()] == types
        after = model.state_dict()
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
        return
    assert any(isinstance(m, ConvertedConv) for m in out.modules())


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


def test_stage_sharing_recognises_layer_and_stage_names():
    class R(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 4, 3, padding=1, groups=4))

        def forward(self, x):
            return self.layer1(x)

    out, _ = dc.convert(R(), "dcls", share_positions="stage")
    assert out.layer1[0].positions is out.layer1[1].positions


def test_shared_positions_refit_with_example_inputs():
    """With example inputs, the stage still shares one positions tensor, and each layer's weights at the shared
    cells are refitted on its own inputs: the stage's output on held-out inputs is closer to the original's."""
    import torch.nn.functional as F

    torch.manual_seed(0)

    def inputs(n):
        return F.avg_pool2d(torch.randn(n, 6, 20, 20, dtype=torch.float64), 3, 1, 1) * 3

    net = _Staged().double()
    x, held_out = inputs(32), inputs(32)
    blind, _ = dc.convert(net, "dcls", kernel_count=16, share_positions="stage")
    aware, report = dc.convert(net, "dcls", kernel_count=16, share_positions="stage", example_inputs=x)
    layers = list(aware.stages[0])
    assert layers[0].positions is layers[1].positions is layers[2].positions
    assert torch.equal(layers[0].positions, blind.stages[0][0].positions)  # same joint cell choice
    with torch.no_grad():
        ref = net(held_out)
        err = lambda m: float((m(held_out) - ref).norm() / ref.norm())  # noqa: E731
        assert err(aware) < 0.8 * err(blind)


def _trained_toy():
    """A small CNN fitted for a few steps to a fixed random teacher, so its kernels are not smooth."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 5, padding=2, groups=8), nn.ReLU(),
                        nn.Conv2d(8, 8, 5, padding=2, groups=8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 4))
    x = torch.randn(64, 3, 16, 16)
    teacher = copy.deepcopy(net)
    for p in teacher.parameters():
        p.data.normal_(0, 0.5)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        (net(x) - teacher(x).detach()).square().mean().backward()
        opt.step()
    return net.eval(), x


@pytest.mark.parametrize("method,options", [("bloom", {}), ("dcls", {"kernel_count": 6})])
def test_sequential_fit_keeps_more_of_the_network(method, options):
    """Each lossy layer fitted with the converted layers before it in place, to what the original computed: the
    model's output error on the inputs is lower than with every layer fitted on the original's inputs."""
    net, x = _trained_toy()
    rules = dc.TargetRules(min_kernel=3, ndims=(2,))
    _, parallel = dc.convert(net, method, rules=rules, example_inputs=x, **options)
    out, sequential = dc.convert(net, method, rules=rules, example_inputs=x, sequential=True, **options)
    assert sequential.output_error < 0.9 * parallel.output_error, (sequential.output_error, parallel.output_error)
    with torch.no_grad():
        want = float((out(x) - net(x)).norm() / net(x).norm())
    assert sequential.output_error == pytest.approx(want, rel=1e-4)
    with pytest.raises(ValueError, match="pass example_inputs"):
        dc.convert(net, method, sequential=True)


def test_sequential_fit_is_all_or_nothing_inplace():
    """Layers are swapped in one by one while fitting; a failure on a later one puts every slot back."""
    net, x = _trained_toy()
    state = copy.deepcopy(net.state_dict())
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    with pytest.raises(dc.ConversionError):
        dc.convert(net, "dcls", rules=dc.TargetRules(min_kernel=3), example_inputs=x, sequential=True, inplace=True,
                   kernel_count=6, by_name={"4": {"window": 4}})  # the last conv cannot take an even window
    assert [m for m in net if isinstance(m, nn.Conv2d)] == convs
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())


def test_dcls_taps_chosen_by_their_effect_on_the_outputs():
    """With example inputs and K < k*k, each channel's taps are the better of a greedy output-space selection and
    the largest-magnitude taps: never a larger layer output error than the largest taps refitted, smaller at
    strong compression; positions on distinct source cells."""
    from dcls_convert.methods.dcls import _refit_to_inputs, placed_source_kernel

    net, x = _trained_toy()
    seen = {}
    handle = net[2].register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    net(x)
    handle.remove()
    for K, strictly in ((3, True), (12, False)):
        chosen = dc.DclsConv2d.from_conv(net[2], kernel_count=K, inputs=seen["x"])
        largest = dc.DclsConv2d.from_conv(net[2], kernel_count=K)
        assert _refit_to_inputs(largest, placed_source_kernel(largest, net[2]), seen["x"])
        assert chosen.init_error <= largest.init_error + 1e-9
        if strictly:
            assert chosen.init_error < 0.97 * largest.init_error, (chosen.init_error, largest.init_error)
        pos = chosen.positions.detach()
        assert torch.equal(pos, pos.round()) and pos.abs().max() <= 2  # on the 5x5 source cells
        cells = (pos[0, :, 0] + 2) * 5 + pos[1, :, 0] + 2
        assert all(len(set(row.tolist())) == K for row in cells)


class _ChecksItsConv(nn.Module):
    """A forward that fails once its first conv is converted (so the output check after the swap fails)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 5, padding=2, groups=4)
        self.b = nn.Conv2d(4, 4, 5, padding=2, groups=4)

    def forward(self, x):
        y = self.a(x)
        if not isinstance(self.a, nn.Conv2d):
            raise AttributeError("needs a plain conv")
        return self.b(y)


def test_example_inputs_keep_all_or_nothing_and_every_modules_mode():
    net = _ChecksItsConv().eval()
    x = torch.randn(8, 4, 12, 12)
    with pytest.raises(AttributeError, match="needs a plain conv"):
        dc.convert(net, "bloom", example_inputs=x, inplace=True)
    assert type(net.a) is nn.Conv2d and type(net.b) is nn.Conv2d
    frozen = nn.Sequential(nn.Conv2d(4, 4, 5, padding=2, groups=4), nn.BatchNorm2d(4), nn.ReLU(),
                           nn.Conv2d(4, 4, 5, padding=2, groups=4), nn.BatchNorm2d(4))
    frozen.train()
    frozen[4].eval()  # a frozen BatchNorm in a model being trained
    for sequential in (False, True):
        out, _ = dc.convert(frozen, "bloom", example_inputs=x, sequential=sequential)
        assert out.training and out[1].training and not out[4].training


def test_stage_sharing_finds_the_stage_under_any_name():
    net = nn.Sequential()
    net.stage1 = nn.Sequential(nn.Conv2d(4, 4, 5, padding=2, groups=4), nn.ReLU(), nn.Conv2d(4, 4, 5, padding=2, groups=4))
    net.alias = net.stage1[0]  # a shallower second name for the first conv
    out, _ = dc.convert(net, "dcls", kernel_count=6, share_positions="stage")
    assert out.stage1[0].positions is out.stage1[2].positions and out.alias is out.stage1[0]
