"""Table-driven conversion of timm models (pretrained=False, offline): function preservation, state_dict keys,
class and methods kept, a training step reaches every new parameter."""
import time

import pytest
import torch

import dcls_convert as dc
from dcls_convert.methods.base import ConvertedConv

timm = pytest.importorskip("timm")

ANY_CONV = dc.TargetRules(min_kernel=3, odd_kernel=True, stride=1)
# (model name, input size, rules for dcls: None = the method's defaults (depthwise))
MODELS = [
    ("convnext_atto", 64, None),
    ("convnextv2_atto", 64, None),
    ("resnet18", 64, ANY_CONV),
    ("efficientnet_b0", 64, None),
    ("mobilenetv3_small_100", 64, None),
    ("regnetx_002", 64, ANY_CONV),
    ("repvit_m1", 64, None),
    ("fastvit_t8", 64, None),
    ("inception_next_atto", 64, None),
    ("edgenext_xx_small", 64, None),
    ("mobilevit_xxs", 64, None),
    ("ghostnet_100", 64, None),
    ("convmixer_768_32", 32, None),
    ("tf_efficientnet_b0", 64, None),
]


def _cases():
    for name, size, rules in MODELS:
        for method in ("dcls", "partial", "bloom"):
            yield pytest.param(name, size, rules, method, id=f"{name}-{method}")


@pytest.mark.parametrize("name,size,rules,method", list(_cases()))
def test_timm_model(name, size, rules, method):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, size, size)
    kwargs = {"rules": rules} if (rules is not None and method == "dcls") else {}
    out, report = dc.convert(model, method, **kwargs)
    assert type(out) is type(model) and hasattr(out, "forward_features") and not out.training
    assert report.converted, str(report)
    with torch.no_grad():
        ref = model(x)
        got = out(x)
    assert got.shape == ref.shape and torch.isfinite(got).all()
    if method in ("dcls", "partial"):  # function-preserving starts
        assert (got - ref).abs().max() <= 1e-4 * ref.abs().max().clamp_min(1e-6), report
    converted = {r.name for r in report.converted} | {a for r in report.converted for a in r.aliases}
    old_keys = {k for k in model.state_dict() if k.rsplit(".", 1)[0] not in converted}
    assert old_keys <= set(out.state_dict())
    out.train()
    loss = out(x).logsumexp(-1).mean()
    loss.backward()
    for m in out.modules():
        if isinstance(m, ConvertedConv):
            for pname, p in m.named_parameters():
                assert p.grad is not None, f"{pname} of {type(m).__name__} got no gradient"


def test_convnext_real_size_and_convert_time():
    model = timm.create_model("convnext_tiny", pretrained=False).eval()
    t0 = time.perf_counter()
    out, report = dc.convert(model, "dcls", kernel_count=34, share_positions="stage")
    seconds = time.perf_counter() - t0
    assert len(report.converted) == 18 and seconds < 30  # the benchmark records the real figure (< 1 s)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert out(x).shape == (1, 1000)
