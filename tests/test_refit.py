"""refit_linear: the layers after a lossy conversion refitted in output space against the original network."""
import copy

import pytest
import torch
import torch.nn as nn

import dcls_convert as dc
from dcls_convert.analysis import model_output_error, run_eval


class Net(nn.Module):
    def __init__(self, bias=True):
        super().__init__()
        self.dw = nn.Conv2d(6, 6, 5, padding=2, groups=6)
        self.pw = nn.Conv2d(6, 8, 1)
        self.head = nn.Linear(8, 4, bias=bias)

    def forward(self, x):
        return self.head(torch.relu(self.pw(torch.relu(self.dw(x)))).mean((2, 3)))


def _trained_like(bias=True):
    torch.manual_seed(0)
    net = Net(bias)
    with torch.no_grad():  # sharp (not smooth) kernels, as training leaves them
        net.dw.weight.copy_(torch.randn_like(net.dw.weight))
    return net.eval()


def test_head_refit_recovers_what_bloom_loses():
    original = _trained_like()
    x = torch.randn(64, 6, 12, 12)
    converted, _ = dc.convert(copy.deepcopy(original), "bloom", example_inputs=x, sequential=True)
    want = run_eval(original, x)
    before = model_output_error(run_eval(converted, x), want)
    errors = dc.refit_linear(converted, original, x)  # default: the last Linear, the head
    after = model_output_error(run_eval(converted, x), want)
    assert list(errors) == ["head"] and after < 0.8 * before
    assert errors["head"] == pytest.approx(after, rel=1e-3)
    held_out = torch.randn(64, 6, 12, 12)  # not a fit to noise: better on inputs it never saw too
    assert model_output_error(run_eval(converted, held_out), run_eval(original, held_out)) < before


def test_refit_of_a_1x1_conv_finds_the_original_weights():
    original = _trained_like()
    model = copy.deepcopy(original)
    with torch.no_grad():
        model.pw.weight.add_(torch.randn_like(model.pw.weight))
    x = torch.randn(32, 6, 10, 10)
    errors = dc.refit_linear(model, original, x, names=["pw"])
    assert errors["pw"] < 1e-3
    torch.testing.assert_close(model.pw.weight, original.pw.weight, rtol=1e-3, atol=1e-3)


def test_a_layer_that_already_fits_is_kept():
    """After an exact conversion the head already gives the original's logits: refitting leaves it bit for bit."""
    original = _trained_like()
    model, _ = dc.convert(copy.deepcopy(original), "dcls")  # K = k*k: exact
    head = model.head.weight.detach().clone()
    errors = dc.refit_linear(model, original, torch.randn(16, 6, 8, 8))
    assert errors["head"] < 1e-5 and torch.equal(model.head.weight, head)


def test_layers_without_bias_keep_none():
    original = _trained_like(bias=False)
    model = copy.deepcopy(original)
    dc.refit_linear(model, original, torch.randn(16, 6, 8, 8))
    assert model.head.bias is None


def test_bad_names_change_nothing():
    original = _trained_like()
    model = copy.deepcopy(original)
    x = torch.randn(8, 6, 8, 8)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="no module 'nope'"):
        dc.refit_linear(model, original, x, names=["head", "nope"])
    with pytest.raises(ValueError, match="'dw' is a Conv2d"):
        dc.refit_linear(model, original, x, names=["dw"])
    with pytest.raises(ValueError, match="never calls"):
        dc.refit_linear(_Skips(model), _Skips(original), x, names=["extra"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


class _Skips(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.extra = inner, nn.Linear(4, 4)

    def forward(self, x):
        return self.inner(x)


def test_an_error_mid_way_restores_the_earlier_refits(monkeypatch):
    original = _trained_like()
    model = copy.deepcopy(original)
    with torch.no_grad():
        model.pw.weight.add_(1.0)
    before = copy.deepcopy(model.state_dict())
    calls = []
    solve = torch.linalg.solve

    def failing(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("solver failed")
        return solve(*args)

    monkeypatch.setattr(torch.linalg, "solve", failing)
    with pytest.raises(RuntimeError, match="solver failed"):
        dc.refit_linear(model, original, torch.randn(16, 6, 8, 8), names=["pw", "head"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


class _Twice(nn.Module):
    """One head applied to two feature sets (a shared classifier)."""

    def __init__(self):
        super().__init__()
        self.head, self.scale = nn.Linear(4, 3), 1.0

    def forward(self, x):
        return 0.05 * self.head(x * self.scale) + self.head(x)


def test_a_layer_called_twice_is_refused():
    """One fit over both calls would weigh them alike while the output does not (0.05 and 1 here): measured to
    make the model worse, so such a layer is refused and left alone."""
    torch.manual_seed(0)
    original = _Twice().eval()
    model = copy.deepcopy(original)
    model.scale = 1.2
    with pytest.raises(ValueError, match="called 2 times"):
        dc.refit_linear(model, original, torch.randn(256, 4))
    assert torch.equal(model.head.weight, original.head.weight)


def test_non_finite_features_raise_and_change_nothing():
    original = nn.Sequential(nn.Linear(4, 4)).eval()
    model = copy.deepcopy(original)
    x = torch.randn(32, 4)
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        dc.refit_linear(model, original, x, names="0")  # one name as a plain string
    assert torch.equal(model[0].weight, original[0].weight)


def test_the_same_module_object_in_both_models_is_refused():
    net = _trained_like()
    with pytest.raises(ValueError, match="same module object"):
        dc.refit_linear(net, net, torch.randn(16, 6, 8, 8))
