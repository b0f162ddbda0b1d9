"""densify -> plain convs with identical outputs; save -> load -> identical outputs; safe loading."""
import copy
import json

import pytest
import torch
import torch.nn as nn

import dcls_convert as dc
from dcls_convert.methods.base import ConvertedConv
from toy_models import Zoo


def _trained_copy(method):
    model = Zoo().eval()
    rules = dc.TargetRules(min_kernel=3, ndims=(1, 2))
    extra = {"share_positions": "stage"} if method == "dcls" else {}
    out, _ = dc.convert(model, method, rules=rules, **extra)
    with torch.no_grad():  # move away from the start so positions are not integers
        for p in out.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, out


@pytest.mark.parametrize("method", ["dcls", "bloom", "partial"])
def test_densify_is_exact_and_plain(method):
    _, out = _trained_copy(method)
    x = torch.randn(2, 3, 20, 20)
    dense = dc.densify(out)
    assert not any(isinstance(m, ConvertedConv) for m in dense.modules())
    assert dense.alias is dense.dw
    with torch.no_grad():
        a, b = out(x), dense(x)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    traced = torch.jit.trace(dense, x)
    torch.testing.assert_close(traced(x), b)


def test_densify_inplace_failure_changes_nothing():
    """densify(inplace=True) that fails on a later layer leaves every layer as it was (build all, then swap)."""
    model = nn.Sequential(nn.Conv2d(4, 4, 5, padding=2, groups=4), nn.Conv2d(4, 4, 5, padding=2, groups=4))
    out, _ = dc.convert(model, "dcls")
    with torch.no_grad():
        out[1].weight[0, 0, 0] = float("nan")
    first = out[0]
    with pytest.raises(ValueError, match="non-finite"):
        dc.densify(out, inplace=True)
    assert out[0] is first and type(out[1]).__name__ == "DclsConv2d"


def test_densify_exports():
    _, out = _trained_copy("dcls")
    dense = dc.densify(out)
    x = torch.randn(2, 3, 20, 20)
    ep = torch.export.export(dense, (x,))
    torch.testing.assert_close(ep.module()(x), dense(x))


@pytest.mark.parametrize("method", ["dcls", "bloom", "partial"])
def test_save_load_round_trip(tmp_path, method):
    _, out = _trained_copy(method)
    dc.save(out, str(tmp_path))
    recipe = json.loads((tmp_path / "recipe.json").read_text())
    assert recipe["format"] == 1 and "dw" in recipe["layers"]
    loaded = dc.load(str(tmp_path), Zoo().eval())
    x = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out(x))
    assert loaded.alias is loaded.dw
    if method == "dcls":
        assert loaded.twice.positions is not None


def test_shared_positions_survive_save_and_load_in_new_and_old_recipes(tmp_path):
    def make():
        return nn.Sequential(nn.Sequential(*[nn.Conv2d(6, 6, 7, padding=3, groups=6) for _ in range(3)])).eval()

    out, _ = dc.convert(make(), "dcls", kernel_count=16, share_positions="stage")
    assert out[0][0].positions is out[0][2].positions
    dc.save(out, str(tmp_path))
    recipe = json.loads((tmp_path / "recipe.json").read_text())
    assert recipe["shared_parameters"] == [{"parameter": "positions", "layers": ["0.0", "0.1", "0.2"]}]
    x = torch.randn(1, 6, 11, 11)
    for form in ("new", "old"):  # recipes written before "shared_parameters" list positions groups
        if form == "old":
            recipe["shared_positions"] = [recipe.pop("shared_parameters")[0]["layers"]]
            (tmp_path / "recipe.json").write_text(json.dumps(recipe))
        loaded = dc.load(str(tmp_path), make())
        assert loaded[0][0].positions is loaded[0][1].positions is loaded[0][2].positions
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), out(x))


@pytest.mark.parametrize("method", ["dcls", "bloom", "partial"])
def test_save_of_a_densified_model_loads(tmp_path, method):
    """save(densify(model)) records the densified convs (their larger kernels), so load rebuilds them."""
    _, out = _trained_copy(method)
    dense = dc.densify(out)
    dc.save(dense, str(tmp_path))
    loaded = dc.load(str(tmp_path), Zoo().eval())
    assert not any(isinstance(m, ConvertedConv) for m in loaded.modules())
    x = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), dense(x))
    dc.save(loaded, str(tmp_path / "again"))  # and again
    with torch.no_grad():
        torch.testing.assert_close(dc.load(str(tmp_path / "again"), Zoo().eval())(x), dense(x))


def test_load_state_dict_into_freshly_converted_model():
    _, out = _trained_copy("dcls")
    fresh, _ = dc.convert(Zoo().eval(), "dcls", rules=dc.TargetRules(min_kernel=3, ndims=(1, 2)), share_positions="stage")
    fresh.load_state_dict(out.state_dict(), strict=True)
    x = torch.randn(1, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), out(x))


def test_malformed_recipe_and_wrong_model(tmp_path):
    _, out = _trained_copy("partial")
    dc.save(out, str(tmp_path))
    with pytest.raises(ValueError, match="has no module"):
        dc.load(str(tmp_path), nn.Sequential(nn.Conv2d(3, 3, 3)))
    (tmp_path / "recipe.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        dc.load(str(tmp_path), Zoo())
    (tmp_path / "recipe.json").write_text(json.dumps({"format": 1, "layers": {"dw": {"class": "os.system", "config": {}}}}))
    with pytest.raises(ValueError, match="unknown class"):
        dc.load(str(tmp_path), Zoo())
    with pytest.raises(FileNotFoundError, match="recipe.json"):
        dc.load(str(tmp_path / "missing"), Zoo())


@pytest.mark.parametrize("key,value", [("dilated_kernel_size", [2**32, 2**32]), ("stride", [2**32 - 1, 69273666]),
                                       ("padding", [2**61, 2**61]), ("dilated_kernel_size", [2**13, 2**13])])
def test_recipe_with_absurd_geometry_is_refused(tmp_path, key, value):
    """An edited recipe cannot crash the process: load refuses the geometry with a ValueError naming it (the
    first forward used to kill the process). Runs in its own interpreter so that a crash fails only this test."""
    import subprocess
    import sys

    model, _ = dc.convert(nn.Sequential(nn.Conv2d(4, 4, 7, padding=3, groups=4)), "dcls")
    dc.save(model, str(tmp_path))
    recipe = json.loads((tmp_path / "recipe.json").read_text())
    (entry,) = recipe["layers"].values()
    assert key in entry["config"]
    entry["config"][key] = value
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    code = f"""
import torch, torch.nn as nn, dcls_convert as dc
try:
    m = dc.load({str(tmp_path)!r}, nn.Sequential(nn.Conv2d(4, 4, 7, padding=3, groups=4)))
    m(torch.randn(1, 4, 8, 8))
    print("LOADED")
except ValueError as e:
    print("REFUSED", e)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"process died ({r.returncode}): {r.stderr[-500:]}"
    assert "REFUSED" in r.stdout and key.split("_")[-1] in r.stdout.replace("cells", "size"), r.stdout


@pytest.mark.parametrize("edit,message", [
    (lambda r: r.__setitem__("shared_positions", [[]]), "shared_positions must be a list"),
    (lambda r: r.__setitem__("shared_positions", [["0", 5]]), "unknown layers"),
    (lambda r: r.__setitem__("shared_parameters", [{"parameter": "nope", "layers": ["0", "1"]}]),
     "do not all have a parameter 'nope'"),
    (lambda r: r["layers"]["0"]["config"].__setitem__("kernel_count", 10**12), "kernel_count"),
    (lambda r: r["layers"]["0"]["config"].__setitem__("in_channels", 10**9), "in_channels"),
    (lambda r: r["layers"]["0"]["config"].__setitem__("kernel_count", 20), "size mismatch for 0.weight"),
])
def test_malformed_recipe_fields_are_value_errors(tmp_path, edit, message):
    """Recipe fields that do not fit: a ValueError that names the field (and, for weights, the offending key),
    before any allocation the file could size."""
    def make():
        return nn.Sequential(nn.Conv2d(4, 4, 7, padding=3, groups=4), nn.Conv2d(4, 4, 7, padding=3, groups=4))

    model, _ = dc.convert(make(), "dcls", kernel_count=16)
    dc.save(model, str(tmp_path))
    recipe = json.loads((tmp_path / "recipe.json").read_text())
    edit(recipe)
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    with pytest.raises(ValueError, match=message):
        dc.load(str(tmp_path), make())


def test_corrupt_weights_give_clear_error(tmp_path):
    _, out = _trained_copy("dcls")
    dc.save(out, str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="cannot read"):
        dc.load(str(tmp_path), Zoo())


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=15)
@given(method=st.sampled_from(["dcls", "bloom", "partial"]), k=st.sampled_from([3, 5]), dw=st.booleans(),
       ndim=st.sampled_from([1, 2]), padding=st.sampled_from(["same", 0, 2]), seed=st.integers(0, 2**16))
def test_property_save_load_and_densify_are_identities(method, k, dw, ndim, padding, seed):
    import tempfile

    torch.manual_seed(seed)
    conv_cls = nn.Conv1d if ndim == 1 else nn.Conv2d
    make = lambda: nn.Sequential(conv_cls(4, 4, k, padding=padding, groups=4 if dw else 1))  # noqa: E731
    base = make()
    out, _ = dc.convert(base, method, rules=dc.TargetRules(min_kernel=3))
    with torch.no_grad():
        for p in out.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 4, *([11] * ndim))
    with tempfile.TemporaryDirectory() as d:
        dc.save(out, d)
        loaded = dc.load(d, make())
    with torch.no_grad():
        ref = out(x)
        torch.testing.assert_close(loaded(x), ref)
        torch.testing.assert_close(dc.densify(out)(x), ref, rtol=1e-5, atol=1e-5)


def test_nan_positions_one_rule(tmp_path):
    """NaN positions: the ops give NaN outputs where the reference does (eval too), densify refuses the
    non-finite kernel, load refuses the checkpoint, and a training forward stops early."""
    from dcls_convert.ops import reference

    model, _ = dc.convert(nn.Sequential(nn.Conv2d(4, 4, 5, padding=2, groups=4)), "dcls", kernel_count=9)
    dc.save(model, str(tmp_path))
    with torch.no_grad():
        model[0].positions[0, 1, 0, 3] = float("nan")
    x = torch.randn(2, 4, 11, 11)
    m = model[0].eval()
    with torch.no_grad():
        y = model(x)
        want = reference.taps_conv(x, m.weight, m.positions, m.bias, m.window, m.stride, [L // 2 for L in m.window],
                                   "bilinear")
    assert y[:, 1].isnan().all() and not y[:, [0, 2, 3]].isnan().any()
    assert torch.equal(y.isnan(), want.isnan())
    with pytest.raises(ValueError, match="non-finite"):
        dc.densify(model)
    dc.save(model, str(tmp_path))
    with pytest.raises(ValueError, match="positions .*NaN"):
        dc.load(str(tmp_path), nn.Sequential(nn.Conv2d(4, 4, 5, padding=2, groups=4)))
    model.train()
    with pytest.raises(FloatingPointError, match="NaN"):
        model(x).sum().backward()


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
