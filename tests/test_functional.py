"""convert(..., functional=True): conv calls written in a module's forward, conv subclasses with their own forward
and reparametrized convs are converted from the weight each computes; what cannot be is reported and left alone."""
import copy
import inspect
import json

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import dcls_convert as dc
from dcls_convert.methods.base import ConvertedConv
from toy_models import DynamicWeights, FunctionalMixer, FunctionalNet, RootCall, StandardisedConv2d, Untraceable

ALL = dc.TargetRules(min_kernel=3)


def _close(a, b, tol=1e-5):
    return float((a - b).abs().max()) <= tol * float(b.abs().max())


def _line_of(cls, text):
    lines, start = inspect.getsourcelines(cls.forward)
    return start + next(i for i, line in enumerate(lines) if text in line)


@pytest.mark.parametrize("method", ["dcls", "partial"])
def test_functional_calls_convert_and_preserve_function(method):
    torch.manual_seed(0)
    model = FunctionalNet().eval()
    x = torch.randn(2, 3, 16, 16)
    out, report = dc.convert(model, method, functional=True, rules=ALL)
    assert type(out) is FunctionalNet and type(model.mixer) is FunctionalMixer  # the original is untouched
    assert isinstance(out.mixer, fx.GraphModule) and type(out.mixer).__name__ == "FunctionalMixer"
    for attr in ("conv2d", "conv2d_1", "conv1d"):
        assert isinstance(getattr(out.mixer, attr), ConvertedConv), attr
    assert isinstance(out.mixer.proj, nn.Conv2d)  # a 1x1 module conv: kept, class and all
    assert isinstance(out.std, ConvertedConv) and isinstance(out.normed, ConvertedConv)  # replaced outright
    rec = {r.name: r for r in report.layers}
    assert rec["mixer.conv2d"].status == "converted"
    assert rec["mixer.conv2d"].conv == f"F.conv2d(8, 8, k=(7, 7), g=8) at toy_models.py:{_line_of(FunctionalMixer, 'self.dw_weight, self.dw_bias')}"
    assert "through mean -> sub" in rec["mixer.conv2d_1"].origin and "s=(2, 2)" in rec["mixer.conv2d_1"].conv
    assert rec["std"].status == "converted" and rec["std"].origin.startswith("StandardisedConv2d: its forward is one")
    assert rec["mixer.proj"].status == "skipped" and rec["mixer.proj"].reason == "1x1 kernel"
    assert "module(s) rewritten as the torch.fx GraphModule" in str(report)
    with torch.no_grad():
        assert _close(out(x), model(x))
    # the weights the calls computed were taken: the standardised kernel, not the raw parameter
    w = model.std.weight
    w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.var(dim=(1, 2, 3), keepdim=True) + 1e-5).sqrt()
    kernel = out.std.to_conv().weight.detach()
    cy, cx = kernel.shape[2] // 2, kernel.shape[3] // 2
    torch.testing.assert_close(kernel[..., cy - 2:cy + 3, cx - 2:cx + 3], w.detach(), rtol=1e-5, atol=1e-6)
    out.train()
    out(x).square().mean().backward()
    for m in out.modules():
        if isinstance(m, ConvertedConv):
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters() if p.requires_grad)


def test_without_functional_calls_are_reported_not_converted():
    model = FunctionalNet().eval()
    out, report = dc.convert(model, "partial", rules=ALL)
    assert type(out.mixer) is FunctionalMixer and type(out.std) is StandardisedConv2d
    line = _line_of(FunctionalMixer, "self.dw_weight, self.dw_bias")
    assert f"mixer.conv2d: F.conv2d(8, 8, k=(7, 7), g=8) at toy_models.py:{line}" in report.functional_convs
    rec = {r.name: r for r in report.layers}
    assert "functional=True" in rec["std"].reason and "functional=True" in rec["normed"].reason
    assert "functional=True converts them" in str(report)
    with pytest.raises(ValueError, match="functional=True"):  # naming a call site asks for the option
        dc.convert(model, "partial", rules=ALL, by_name={"mixer.conv2d": {}})


def test_unconvertible_calls_are_skipped_with_reasons_and_left_alone():
    model = nn.Sequential(DynamicWeights(), Untraceable(), RootCall()).eval()
    x = torch.randn(1, 8, 9, 9)
    out, report = dc.convert(model, "partial", functional=True, rules=ALL)
    assert [type(m) for m in out[:2]] == [DynamicWeights, Untraceable] and isinstance(out[2], fx.GraphModule)
    rec = {r.name: r for r in report.layers}
    assert "computed from the forward's inputs" in rec["0.conv2d"].reason
    assert "1 (Untraceable): " not in (report.trace_error or "") and report.trace_error.startswith("1: FX trace failed")
    assert rec["2.dw"].status == "converted" and rec["2.conv2d"].status == "converted"
    with torch.no_grad():
        assert _close(out(x), model(x))
    # the root's own calls stay: it keeps its class
    root, rep = dc.convert(RootCall(), "partial", functional=True, rules=ALL)
    assert type(root) is RootCall and isinstance(root.dw, ConvertedConv)
    assert "root module's own forward" in {r.name: r for r in rep.layers}["conv2d"].reason


def test_buffer_weights_and_runtime_geometry_are_not_converted():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("fixed", torch.randn(8, 1, 3, 3))
            self.weight = nn.Parameter(torch.randn(8, 1, 3, 3))

        def forward(self, x):
            x = nn.functional.conv2d(x, self.fixed, padding=1, groups=8)
            return nn.functional.conv2d(x, self.weight, padding=1, groups=x.shape[1])

    model = nn.Sequential(Odd(), nn.Conv2d(8, 8, 3, padding=1))
    out, report = dc.convert(model, "partial", functional=True, rules=ALL)
    rec = {r.name: r for r in report.layers}
    assert "buffer or constant" in rec["0.conv2d"].reason
    assert "computed at run time" in rec["0.conv2d_1"].reason
    assert type(out[0]) is Odd


def test_functional_save_load_and_densify_round_trip(tmp_path):
    torch.manual_seed(1)
    model = FunctionalNet().eval()
    x = torch.randn(2, 3, 16, 16)
    out, _ = dc.convert(model, "dcls", functional=True, rules=ALL, kernel_count=9)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(0.01 * torch.randn_like(p))
        y = out(x)
    dc.save(out, str(tmp_path / "conv"))
    recipe = dc.serialization.read_recipe(str(tmp_path / "conv"))
    assert recipe["functional"] == [{"module": "mixer", "class": "toy_models.FunctionalMixer",
                                     "calls": [{"node": "conv2d", "attr": "conv2d"}, {"node": "conv2d_1", "attr": "conv2d_1"},
                                               {"node": "conv1d", "attr": "conv1d"}]}]
    loaded = dc.load(str(tmp_path / "conv"), FunctionalNet().eval())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), y)
    base = FunctionalNet().eval()
    same = dc.load(str(tmp_path / "conv"), base, inplace=True)
    assert same is base and isinstance(base.mixer.conv2d, dc.DclsConv2d)
    with torch.no_grad():
        torch.testing.assert_close(base(x), y)
    dense = dc.densify(out)
    assert not any(isinstance(m, ConvertedConv) for m in dense.modules())
    dc.save(dense, str(tmp_path / "dense"))  # the weights; the recipe of the densified model, as the CLI writes it
    (tmp_path / "dense" / "recipe.json").write_text(json.dumps(dc.serialization.dense_recipe_of(out)))
    reloaded = dc.load(str(tmp_path / "dense"), FunctionalNet().eval())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), y, rtol=1e-4, atol=1e-5)
    copied = copy.deepcopy(out)  # the rewritten module survives a deep copy (EMA models, convert itself)
    with torch.no_grad():
        torch.testing.assert_close(copied(x), y)


def test_load_refuses_a_functional_entry_the_code_does_not_have(tmp_path):
    out, _ = dc.convert(FunctionalNet(), "partial", functional=True, rules=ALL)
    dc.save(out, str(tmp_path))
    other = FunctionalNet()
    other.mixer = nn.Identity()  # no conv calls there any more
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match="cannot rewrite 'mixer'"):
        dc.load(str(tmp_path), other, inplace=True)
    assert isinstance(other.mixer, nn.Identity) and other.state_dict().keys() == before.keys()


def test_functional_conversion_is_all_or_nothing_inplace():
    model = FunctionalNet()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="by_name names no conv"):
        dc.convert(model, "dcls", functional=True, rules=ALL, inplace=True, by_name={"mixer.nope": {}})
    with pytest.raises(dc.ConversionError):
        dc.convert(model, "dcls", functional=True, rules=ALL, inplace=True, by_name={"mixer.conv2d": {"window": 3}})
    assert type(model.mixer) is FunctionalMixer and type(model.std) is StandardisedConv2d
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_example_inputs_reach_functional_calls():
    model = FunctionalNet().eval()
    out, report = dc.convert(model, "bloom", functional=True, rules=ALL, include=r"mixer\.conv2d",
                             example_inputs=torch.randn(4, 3, 16, 16))
    rec = {r.name: r for r in report.layers}
    assert rec["mixer.conv2d"].status == "converted" and rec["mixer.conv2d"].calls == 1
    assert rec["mixer.conv2d"].input_shape == (4, 8, 16, 16)
    assert isinstance(out.mixer.conv2d, dc.BloomConv2d) and not hasattr(out.mixer, "conv2d_1")
    assert isinstance(out.mixer.dense_weight, nn.Parameter)  # the calls not chosen keep their weights


def test_timm_scaled_std_conv_network_converts():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("nf_regnet_b0").eval()
    x = torch.randn(2, 3, 64, 64)
    out, report = dc.convert(model, "partial", functional=True, rules=ALL)
    converted = report.converted
    assert len(converted) >= 10 and all(r.origin.startswith("ScaledStdConv2d: ") for r in converted)
    assert not any(isinstance(m, timm.layers.ScaledStdConv2d) and m.kernel_size != (1, 1) for m in out.modules())
    with torch.no_grad():
        assert _close(out(x), model(x))


def test_tensors_created_in_forward_stay_with_the_rewritten_module():
    """torch.tensor(...) in forward: FX reads it by name; the rewritten module keeps it, the original gets none."""
    class WithConstants(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 1, 5, 5))

        def forward(self, x):
            return nn.functional.conv2d(x, self.weight * torch.tensor(0.5), padding=2, groups=8) + torch.tensor(1.0)

    model = nn.Sequential(WithConstants()).eval()
    x = torch.randn(1, 8, 9, 9)
    out, report = dc.convert(model, "dcls", functional=True)
    assert report.converted[0].origin.endswith("through mul as computed at conversion time")
    assert not any(k.startswith("_tensor_constant") for k in vars(model[0]))
    with torch.no_grad():
        assert _close(out(x), model(x))


class _Dropping(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 8, 3, 3) * 0.1)

    def forward(self, x):
        return nn.functional.dropout(nn.functional.conv2d(x, self.weight, padding=1), 0.5, self.training)


class _Optional(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 8, 3, 3) * 0.1)

    def forward(self, x, scale=None):
        y = nn.functional.conv2d(x, self.weight, padding=1)
        if scale is not None:
            y = y * scale
        return y


def test_forwards_a_trace_cannot_stand_for_are_skipped():
    """A forward that reads self.training or branches on an optional argument would be frozen by the rewrite."""
    model = nn.Sequential(_Dropping(), _Optional(), nn.Conv2d(8, 8, 3, padding=1))
    out, report = dc.convert(model, "partial", functional=True, rules=ALL)
    rec = {r.name: r for r in report.layers}
    assert "depends on self.training" in rec["0.conv2d"].reason
    assert "optional argument(s) ['scale']" in rec["1.conv2d"].reason
    assert type(out[0]) is _Dropping and type(out[1]) is _Optional


def test_in_place_ops_and_side_effects_survive_the_rewrite():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 8, 3, 3) * 0.1)
            self.register_buffer("seen", torch.zeros(8))

        def forward(self, x):
            y = nn.functional.conv2d(x, self.weight, padding=1)
            self.seen.add_(y.detach().mean((0, 2, 3)))
            y.add_(x)
            y.relu_()
            return y

    class RelU(nn.Conv2d):  # not "only the call": kept as a module, not replaced outright
        def forward(self, x):
            y = nn.functional.conv2d(x, self.weight, self.bias, self.stride, self.padding)
            y.relu_()
            return y

    model = nn.Sequential(InPlace(), RelU(8, 8, 3, padding=1))
    x = torch.randn(2, 8, 9, 9)
    out, _ = dc.convert(model, "partial", functional=True, rules=ALL)
    with torch.no_grad():
        want, got = model(x), out(x)
    assert _close(got, want) and torch.equal(out[0].seen, model[0].seen) and out[0].seen.abs().sum() > 0
    assert isinstance(out[1], fx.GraphModule)


def test_tracing_leaves_modules_as_they_were():
    class Caching(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)
            self.calls, self.last = 0, None

        def forward(self, x):
            self.calls += 1
            self.last = self.lin(x.mean((2, 3)))
            return x * self.last[:, :, None, None]

    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), Caching())
    out, _ = dc.convert(model, "partial", rules=ALL)  # the analysis pass traces every user forward
    assert out[1].calls == 0 and out[1].last is None and model[1].calls == 0


def test_a_module_under_two_names_is_rewritten_once_in_place():
    class Parent(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = FunctionalMixer()
            self.weight = nn.Parameter(torch.randn(8, 8, 3, 3) * 0.1)

        def forward(self, x):
            return nn.functional.conv2d(self.mix(x), self.weight, padding=1)

    class Root(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = Parent()
            self.inner = self.b.mix  # the nested module again, shallower

        def forward(self, x):
            return self.b(x)

    model = Root().eval()
    x = torch.randn(2, 8, 16, 16)
    out, _ = dc.convert(model, "partial", functional=True, rules=ALL)
    assert out.b.mix is out.inner and isinstance(out.inner.conv2d, ConvertedConv)
    with torch.no_grad():
        assert _close(out(x), model(x))


def test_hooks_and_plain_attributes_carry_over_and_direct_readers_keep_their_conv():
    model = FunctionalNet().eval()
    fired = []
    for name in ("mixer", "std"):
        getattr(model, name).register_forward_hook(lambda m, a, o, name=name: fired.append(name))
    out, _ = dc.convert(model, "partial", functional=True, rules=ALL)
    out(torch.randn(1, 3, 16, 16))
    assert fired == ["mixer", "std"] and out.mixer.c == 8 and copy.deepcopy(out).mixer.c == 8

    class Reader(nn.Module):  # reads its child conv's weight itself: converting that conv would break it
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            return self.conv(x) + nn.functional.conv2d(x, self.conv.weight.flip(-1), padding=1)

    out, report = dc.convert(nn.Sequential(Reader(), nn.Conv2d(8, 8, 3, padding=1)), "partial", rules=ALL)
    rec = {r.name: r for r in report.layers}
    assert "0's forward reads its tensors directly" in rec["0.conv"].reason and isinstance(out[0].conv, nn.Conv2d)
