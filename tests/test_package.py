"""The package namespace: lazy names that no submodule shadows, method registration, op registration."""
import json
import subprocess
import sys


def _run(code):
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1500:]
    return r.stdout


def test_every_public_name_is_what_it_says_after_any_submodule_import():
    """Importing a submodule never replaces an exported function by a module of the same name."""
    out = _run("""
import importlib, json, pkgutil, types
import dcls_convert as dc
for m in pkgutil.walk_packages(dc.__path__, "dcls_convert."):
    if not m.name.endswith(("cli", "._C")):  # _C is loaded by dcls_convert.ops, after torch
        importlib.import_module(m.name)
print(json.dumps({n: type(getattr(dc, n)).__name__ for n in dc.__all__}))
""")
    kinds = json.loads(out.strip().splitlines()[-1])
    assert kinds["convert"] == kinds["densify"] == "function" and "module" not in kinds.values()


def test_import_is_light_and_registers_ops_once_torch_is_loaded():
    assert _run("import sys, dcls_convert; print('torch' in sys.modules)").strip() == "False"
    assert _run("import torch, dcls_convert; print(torch.ops.dcls_convert.taps_conv)").strip() == \
        "dcls_convert.taps_conv"


def test_a_users_registration_replaces_a_built_in():
    out = _run("""
import dcls_convert as dc
from dcls_convert.registry import get_method
class Mine:
    pass
dc.register_method("dcls", {2: dc.DclsConv2d}, Mine, dc.TargetRules())
print(get_method("dcls").options.__name__, sorted(dc.list_methods()))
""")
    assert out.strip() == "Mine ['bloom', 'dcls', 'partial']"


def test_output_error_with_infinite_logits():
    """A masked output (-inf where masked) converted exactly: error 0, and the JSON stays JSON."""
    import torch
    import torch.nn as nn

    import dcls_convert as dc

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 5, padding=2, groups=4)

        def forward(self, x):
            y = self.conv(x).flatten(1)
            return y.masked_fill(torch.arange(y.shape[1]) % 3 == 0, float("-inf"))

    model = Masked().eval()
    _, report = dc.convert(model, "partial", example_inputs=torch.randn(2, 4, 8, 8))
    assert report.output_error == 0.0 and json.loads(report.to_json())["output_error"] == 0.0
